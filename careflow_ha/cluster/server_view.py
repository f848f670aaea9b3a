"""The server's side of a run, from Prometheus on mon1: panels for a report's PNG, and the alerts that fired.

Drill and load reports show what the client saw; this is what the servers
did over the same seconds (TPS, replication lag per replica, connections per
node, WAL bytes per second, sessions waiting on a lock) and which alert rules
(roles/monitoring/files/careflow-alerts.yml) went pending or fired, and when.

Server metrics are an addition, never a condition: when Prometheus cannot
answer, the view says "server metrics unavailable" and why, the panels are
drawn as that sentence (never as an empty chart that reads as zero), and
nothing raises. The first failed query ends the collection, so a down mon1
costs one timeout, not one per panel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from careflow_ha.cluster.prometheus import UNAVAILABLE, PrometheusClient, RangeResult, Series
from careflow_ha.cluster.prometheus import for_settings as prometheus_for
from careflow_ha.settings import PROMETHEUS_PORT_KEY, Settings

#: Prometheus scrapes and evaluates every 5 s (roles/prometheus): a rate needs two samples in its window,
#: and four make it survive one late scrape.
RATE_WINDOW = "20s"
#: Alert states are evaluated every 5 s: a reported moment is up to this late.
EVALUATION_INTERVAL_S = 5.0
#: A report's panels start this long before its run, so they show the cluster at rest first.
LEAD_S = 10.0
#: A panel's line is drawn from at most this many points (a 10-minute load run at 1 s steps is 600).
MAX_STEPS = 1200


@dataclass(frozen=True)
class Panel:
    """One chart under the client timeline: a PromQL query, one line per value of ``legend``."""

    key: str
    title: str
    unit: str  # "bytes", "bytes/s" or a plain count's name
    query: str
    legend: str  # the label that names a line (a node, a replica)


PANELS: tuple[Panel, ...] = (
    Panel("tps", "transactions per second (careflow)", "tx/s",
          f'sum by (instance) (rate(pg_stat_database_xact_commit{{datname="careflow"}}[{RATE_WINDOW}])'
          f' + rate(pg_stat_database_xact_rollback{{datname="careflow"}}[{RATE_WINDOW}]))', "instance"),
    # On the primary, in one query (pg_current_wal_lsn() - replay_lsn): scrape skew cannot fake lag.
    Panel("lag", "replication lag per replica", "bytes",
          "max by (application_name) (pg_stat_replication_pg_wal_lsn_diff)", "application_name"),
    Panel("connections", "connections per node", "sessions",
          "sum by (instance) (pg_stat_database_numbackends)", "instance"),
    # Patroni publishes the primary's current WAL position, and 0 on a replica. The zeros are dropped before
    # the rate (a subquery at the scrape interval): a promoted replica's jump from 0 to its position would
    # otherwise read as gigabytes written (measured on the lab: 14 MiB/s after a failover, not 3 KiB/s).
    Panel("wal", "WAL written per second", "bytes/s",
          f"sum by (instance) (rate((patroni_xlog_location > 0)[{RATE_WINDOW}:5s]))", "instance"),
    # roles/postgres_exporter/templates/careflow-queries.yml.j2: sessions whose wait_event_type is Lock.
    Panel("lock_waits", "sessions waiting on a lock", "sessions",
          "max by (instance) (careflow_lock_waits_sessions)", "instance"),
)

#: Labels that say what an alert is about, most specific first (HAProxy's proxy next to its balancer).
_TARGET_LABELS = ("instance", "application_name", "proxy", "mountpoint")


@dataclass(frozen=True)
class AlertSpan:
    """One alert rule's instance over the window: when it was first seen pending and firing (unix seconds)."""

    alertname: str
    target: str  # e.g. "pg2", "lb1/primary"; "cluster" for a rule about the whole cluster
    severity: str
    pending_at: float | None
    firing_at: float | None
    last_seen: float
    since_start: bool  # already pending or firing when the window opened: not caused by this run

    def about(self, nodes: Sequence[str]) -> bool:
        """Whether the alert names one of ``nodes`` (``pg2`` matches the target ``pg2`` and ``pg2/...``)."""
        return any(self.target == n or self.target.startswith(f"{n}/") for n in nodes)


@dataclass(frozen=True)
class ServerView:
    """What Prometheus knew about the servers from ``start`` to ``end`` (unix seconds)."""

    start: float
    end: float
    step_s: float
    panels: tuple[tuple[Panel, RangeResult], ...] = ()
    alerts: tuple[AlertSpan, ...] = ()
    unavailable: str | None = None

    @property
    def available(self) -> bool:
        return self.unavailable is None

    @property
    def note(self) -> str:
        return "" if self.unavailable is None else f"{UNAVAILABLE}: {self.unavailable}"

    def fired(self, alertname: str, nodes: Sequence[str] = ()) -> AlertSpan | None:
        """The earliest firing of ``alertname`` caused within the window (about one of ``nodes``, if given)."""
        spans = [a for a in self.alerts if a.alertname == alertname and a.firing_at is not None
                 and not a.since_start and (not nodes or a.about(nodes))]
        return min(spans, key=lambda a: a.firing_at or 0.0, default=None)

    def raised(self, alertname: str, nodes: Sequence[str] = ()) -> AlertSpan | None:
        """The earliest span of ``alertname`` caused within the window, pending or firing (about ``nodes``).

        Pending is the rule seeing its condition; whether it then fires depends on the condition outlasting
        the rule's ``for:``, which a fault healed within seconds of its effect (a node loss) may not.
        """
        spans = [a for a in self.alerts if a.alertname == alertname and not a.since_start
                 and (not nodes or a.about(nodes))]
        return min(spans, key=lambda a: a.pending_at if a.pending_at is not None else a.firing_at or 0.0,
                   default=None)

    def firing(self, severity: str | None = None) -> tuple[AlertSpan, ...]:
        """Every alert that fired because of something in the window (of one ``severity``, if given)."""
        return tuple(a for a in self.alerts if a.firing_at is not None and not a.since_start
                     and (severity is None or a.severity == severity))


def step_for(start: float, end: float) -> float:
    """1 s, or coarser so that a long run stays within MAX_STEPS points per line."""
    return max(1.0, math.ceil((end - start) / MAX_STEPS))


def collect(client: PrometheusClient, start: float, end: float, panels: Sequence[Panel] = PANELS) -> ServerView:
    """Every panel and the alerts from ``start`` to ``end``; one unreachable answer ends it (never raises)."""
    step = step_for(start, end)
    # Alert state lags the fault by a scrape and an evaluation: look one evaluation past the end.
    alerts = client.range_query("ALERTS", start, end + EVALUATION_INTERVAL_S, step)
    if not alerts.available:
        return ServerView(start, end, step, unavailable=alerts.unavailable)
    got: list[tuple[Panel, RangeResult]] = []
    for panel in panels:
        result = client.range_query(panel.query, start, end, step)
        if not result.available:
            return ServerView(start, end, step, unavailable=result.unavailable)
        got.append((panel, result))
    return ServerView(start, end, step, tuple(got), alert_spans(alerts.series, start, step))


def collect_lab(settings: Settings, start: float, end: float) -> ServerView:
    """:func:`collect` from the lab's Prometheus; settings that name no monitoring host (a test's local
    server) give a view that says so, without a request."""
    if PROMETHEUS_PORT_KEY not in settings.ports:
        return ServerView(start, end, step_for(start, end), unavailable="these settings name no monitoring host")
    return collect(prometheus_for(settings), start, end)


def _target(labels: Any) -> str:
    parts = [str(labels[k]) for k in _TARGET_LABELS if labels.get(k)]
    return "/".join(parts) or str(labels.get("scope") or "cluster")


def alert_spans(series: Sequence[Series], start: float, step_s: float) -> tuple[AlertSpan, ...]:
    """Prometheus' ``ALERTS`` series (one per alert and state) folded into one span per alert and target."""
    spans: dict[tuple[str, str], dict[str, Any]] = {}
    for s in series:
        points = [t for t, v in s.points if not math.isnan(v)]
        if not points:
            continue
        key = (str(s.labels.get("alertname", "?")), _target(s.labels))
        span = spans.setdefault(key, {"severity": str(s.labels.get("severity", "")), "pending": None,
                                      "firing": None, "last": points[-1], "first": points[0]})
        state = "firing" if s.labels.get("alertstate") == "firing" else "pending"
        span[state] = points[0] if span[state] is None else min(span[state], points[0])
        span["last"], span["first"] = max(span["last"], points[-1]), min(span["first"], points[0])
    return tuple(sorted(
        (AlertSpan(name, target, v["severity"], v["pending"], v["firing"], v["last"],
                   since_start=v["first"] < start + step_s) for (name, target), v in spans.items()),
        key=lambda a: (a.pending_at if a.pending_at is not None else a.firing_at or 0.0, a.alertname, a.target),
    ))


# -- what a report prints ----------------------------------------------------------------------------------------------


def human(value: float, unit: str) -> str:
    """``3.2 MiB``, ``12.5 MiB/s``, ``41 tx/s``: a panel's value as a DBA reads it."""
    if unit.startswith("bytes"):
        divisor, shown = _scale(abs(value), unit)
        return f"{value / divisor:.1f} {shown}" if divisor > 1 else f"{value:.0f} {shown}"
    return f"{value:.1f} {unit}" if abs(value) < 10 and value != int(value) else f"{value:.0f} {unit}"


def _rel(at: float | None, origin: float) -> str:
    return "-" if at is None else f"{at - origin:+.0f} s"


def peaks(view: ServerView) -> list[tuple[Panel, str, float, float]]:
    """(panel, line, peak value, when) for every line with a sample, in panel order."""
    out = []
    for panel, result in view.panels:
        for s in result.series:
            pts = [(t, v) for t, v in s.points if not math.isnan(v)]
            if pts:
                t, v = max(pts, key=lambda p: p[1])
                out.append((panel, str(s.labels.get(panel.legend, "?")), v, t))
    return out


def markdown(view: ServerView | None, origin: float, origin_name: str) -> list[str]:
    """The report's "Server view" section: alerts with their delays, then each panel's peak per line."""
    lines = ["## Server view (Prometheus on mon1)", ""]
    if view is None:
        return [*lines, f"{UNAVAILABLE}: not collected for this run", ""]
    if not view.available:
        return [*lines, view.note, ""]
    lines += [f"Scraped every 5 s; times are from {origin_name}, an alert's up to "
              f"{EVALUATION_INTERVAL_S:g} s late (evaluation interval).", ""]
    if view.alerts:
        lines += ["| alert | on | severity | pending | firing | last seen |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {a.alertname} | {a.target} | {a.severity} | {_rel(a.pending_at, origin)} "
                  f"| {_rel(a.firing_at, origin)} | {_rel(a.last_seen, origin)}"
                  f"{' (already active at the start)' if a.since_start else ''} |" for a in view.alerts]
    else:
        lines.append("No alert rule was pending or firing.")
    lines += ["", "| panel | line | peak | at |", "| --- | --- | --- | --- |"]
    for panel, result in view.panels:
        if result.note:
            lines.append(f"| {panel.title} | - | {result.note} | - |")
    lines += [f"| {p.title} | {line} | {human(v, p.unit)} | {_rel(t, origin)} |" for p, line, v, t in peaks(view)]
    return [*lines, ""]


def to_json(view: ServerView | None, origin: float) -> dict[str, Any]:
    """The view for result.json: times in seconds from ``origin``, NaN as null."""
    if view is None or not view.available:
        return {"available": False, "unavailable": UNAVAILABLE if view is None else view.note}

    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - origin, 3)

    return {
        "available": True,
        "window_s": [rel(view.start), rel(view.end)],
        "step_s": view.step_s,
        "alerts": [{"alert": a.alertname, "on": a.target, "severity": a.severity, "pending_s": rel(a.pending_at),
                    "firing_s": rel(a.firing_at), "last_seen_s": rel(a.last_seen), "since_start": a.since_start}
                   for a in view.alerts],
        "panels": {p.key: {"title": p.title, "unit": p.unit, "query": p.query, "note": r.note,
                           "series": [{"line": str(s.labels.get(p.legend, "?")),
                                       "points": [[rel(t), None if math.isnan(v) else v] for t, v in s.points]}
                                      for s in r.series]}
                   for p, r in view.panels},
    }


# -- what a report draws -----------------------------------------------------------------------------------------------

#: Height of one panel under a timeline, in inches.
PANEL_HEIGHT_IN = 1.35


def panel_rows(view: ServerView | None) -> int:
    """How many axes ``draw`` needs: an alert lane and one per panel, or one line saying why there are none."""
    return 1 + len(PANELS) if view is not None and view.available else 1


def draw(axes: Sequence[Any], view: ServerView | None, origin: float, marks: Sequence[tuple[float, str]] = ()) -> None:
    """Fill ``panel_rows(view)`` matplotlib axes (sharing the timeline's x axis, seconds from ``origin``).

    ``marks`` are (seconds, colour) lines drawn on every panel (the fault, the heal) to line them up by eye.
    """
    if view is None or not view.available:
        ax = axes[0]
        ax.text(0.5, 0.5, view.note if view is not None else f"{UNAVAILABLE}: not collected",
                transform=ax.transAxes, ha="center", va="center", fontsize=9, color="dimgrey")
        ax.set_yticks([])
        return
    _draw_alerts(axes[0], view, origin)
    for x, colour in marks:
        axes[0].axvline(x, color=colour, linestyle="--", linewidth=0.8)
    for ax, (panel, result) in zip(axes[1:], view.panels, strict=True):
        ax.set_ylabel(panel.unit, fontsize=7)
        ax.set_title(panel.title, fontsize=8, loc="left")
        if result.note:
            ax.text(0.5, 0.5, result.note, transform=ax.transAxes, ha="center", va="center", fontsize=8,
                    color="dimgrey")
            ax.set_yticks([])
        values = [v for s in result.series for _, v in s.points if not math.isnan(v)]
        divisor, unit = _scale(max(values, default=0.0), panel.unit)
        for i, s in enumerate(sorted(result.series, key=lambda s: str(s.labels.get(panel.legend, "")))):
            ax.plot([t - origin for t, _ in s.points], [v / divisor for _, v in s.points],
                    color=f"C{i % 10}", linewidth=1.1, label=str(s.labels.get(panel.legend, "?")))
        if result.series:
            ax.legend(fontsize=6, loc="upper right", ncol=min(len(result.series), 4))
            ax.set_ylabel(unit, fontsize=7)
            # Every panel counts something non-negative: a flat zero sits on the axis, not mid-panel.
            ax.set_ylim(bottom=0, top=max(values, default=0.0) / divisor * 1.15 or 1.0)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        for x, colour in marks:
            ax.axvline(x, color=colour, linestyle="--", linewidth=0.8)


def _scale(peak: float, unit: str) -> tuple[float, str]:
    """(divisor, axis unit) for a panel whose highest value is ``peak``: bytes in B, KiB, MiB or GiB."""
    if not unit.startswith("bytes"):
        return 1.0, unit
    suffix = unit[len("bytes"):]
    for name, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if peak >= size:
            return float(size), f"{name}{suffix}"
    return 1.0, f"B{suffix}"


def _draw_alerts(ax: Any, view: ServerView, origin: float) -> None:
    """One row per alert: pending light, firing dark, up to when it was last seen."""
    ax.set_title("alerts (pending light, firing dark)", fontsize=8, loc="left")
    if not view.alerts:
        ax.text(0.5, 0.5, "no alert pending or firing", transform=ax.transAxes, ha="center", va="center",
                fontsize=8, color="dimgrey")
        ax.set_yticks([])
        return
    for row, a in enumerate(view.alerts):
        colour = "red" if a.severity == "critical" else "darkorange"
        first = a.pending_at if a.pending_at is not None else a.firing_at
        fire_from = a.firing_at if a.firing_at is not None else a.last_seen
        if first is not None and first < fire_from:
            ax.barh(row, fire_from - first, left=first - origin, color=colour, alpha=0.25, height=0.6)
        if a.firing_at is not None:
            ax.barh(row, max(a.last_seen - a.firing_at, view.step_s), left=a.firing_at - origin, color=colour,
                    height=0.6)
    ax.set_yticks(range(len(view.alerts)), [f"{a.alertname} {a.target}" for a in view.alerts], fontsize=6)
    ax.set_ylim(-0.6, len(view.alerts) - 0.4)
    ax.grid(axis="x", alpha=0.3)
