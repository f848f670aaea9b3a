"""Load-run reports: Markdown + JSON + PNG charts next to Locust's own CSV and HTML.

Charts: throughput, latency percentiles per operation, errors, reads per node;
cluster role changes are drawn on every timeline. Nothing here prints a DSN:
the report names targets by their redacted form, and every text file of the
run folder is checked for the run's passwords before the report is done.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on CI machines without a display
import matplotlib.pyplot as plt  # noqa: E402 - must follow the backend choice

from careflow_ha.cluster import server_view  # noqa: E402
from careflow_ha.cluster.server_view import ServerView  # noqa: E402
from careflow_ha.errors import CheckFailed  # noqa: E402
from careflow_ha.load import plans as plans_section  # noqa: E402
from careflow_ha.load.analysis import Request, series, summarize  # noqa: E402

#: A read answered by a primary this soon after a role change is the switch itself, not a routing fault.
ROLE_CHANGE_GRACE_S = 15.0


def routing_violations(rows: Iterable[Request], role_changes: Sequence[Mapping[str, Any]],
                       grace_s: float = ROLE_CHANGE_GRACE_S) -> list[Request]:
    """Reads through the read-only endpoint that a primary answered while the replicas were settled."""
    moments = [float(e["at"]) for e in role_changes]
    return [r for r in rows if r.endpoint == "ro" and r.ok and r.recovery is False
            and not any(m - 1.0 <= r.ts <= m + grace_s for m in moments)]


def _mark_events(ax: Any, events: Sequence[Mapping[str, Any]], t0: float, label: bool = True) -> None:
    for i, e in enumerate(events):
        x = float(e["at"]) - t0
        ax.axvline(x, color="tab:purple", linestyle="--", linewidth=0.8, alpha=0.8)
        if label:
            ax.annotate(str(e["detail"])[:40], (x, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                        fontsize=6, va="top", ha="right", color="tab:purple", xytext=(-2, -2 - 0 * i),
                        textcoords="offset points")


def _charts(folder: Path, s: dict, summary: dict, events: Sequence[Mapping[str, Any]], t0: float) -> list[str]:
    t = s["t"]
    made = []
    # throughput
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for ep, colour in (("rw", "tab:blue"), ("ro", "tab:green")):
        ax.plot(t, [v / s["width_s"] for v in s["ok"][ep]], color=colour, label=f"{ep} ok/s")
        ax.plot(t, [v / s["width_s"] for v in s["failed"][ep]], color=colour, linestyle=":", label=f"{ep} failed/s")
    _mark_events(ax, events, t0)
    ax.set(xlabel="seconds since start", ylabel="requests/s", title="Throughput (per-request log) and users")
    ax.legend(fontsize=7, loc="upper left")
    if s.get("users"):
        ax2 = ax.twinx()
        ax2.step([u[0] for u in s["users"]], [u[1] for u in s["users"]], where="post", color="grey", alpha=0.6,
                 linewidth=1.0)
        ax2.set_ylabel("users (Locust)", color="grey")
        ax2.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "throughput.png", dpi=110)
    plt.close(fig)
    made.append("throughput.png")
    # latency per op
    ops = sorted(s["latency"])
    if ops:
        cols = 2
        rows = (len(ops) + 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(11, 2.3 * rows), sharex=True, squeeze=False)
        for ax, op in zip([a for row in axes for a in row], ops, strict=False):
            for q, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
                ys = [float("nan") if v is None else v for v in s["latency"][op][q]]
                ax.plot(s["tl"], ys, linestyle=style, label=q)
            _mark_events(ax, events, t0, label=False)
            ax.set_title(op, fontsize=8)
            ax.set_ylabel("ms", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        for ax in [a for row in axes for a in row][len(ops):]:
            ax.set_visible(False)
        axes[0][0].legend(fontsize=6)
        fig.suptitle(f"Latency p50/p95/p99 per operation ({s['lat_width_s']:.0f}-second bins, successful requests)",
                     fontsize=9)
        fig.tight_layout()
        fig.savefig(folder / "latency.png", dpi=110)
        plt.close(fig)
        made.append("latency.png")
    # errors
    fig, ax = plt.subplots(figsize=(10, 3.2))
    for op, counts in sorted(s["failed_by_op"].items()):
        ax.plot(t, counts, label=op, marker=".", markersize=3, linewidth=0.8)
    _mark_events(ax, events, t0)
    ax.set(xlabel="seconds since start", ylabel="failed requests", title="Errors over time")
    if s["failed_by_op"]:
        ax.legend(fontsize=7, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no errors", transform=ax.transAxes, ha="center")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "errors.png", dpi=110)
    plt.close(fig)
    made.append("errors.png")
    # reads per node
    nodes = summary["reads_by_node"]
    fig, ax = plt.subplots(figsize=(6, 3))
    if nodes:
        labels = [f"{n['node']}\n({n['role']})" for n in nodes]
        colours = ["tab:red" if n["role"] == "PRIMARY" else "tab:green" for n in nodes]
        ax.bar(labels, [n["reads"] for n in nodes], color=colours)
    ax.set(ylabel="successful reads", title="Reads through the read-only endpoint, by answering node")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(folder / "reads_by_node.png", dpi=110)
    plt.close(fig)
    made.append("reads_by_node.png")
    return made


def _table(rows: list[dict], cols: list[str]) -> list[str]:
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    out += ["| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |" for r in rows]
    return out


def build_report(rows: Sequence[Request], meta: dict, events: Sequence[Mapping[str, Any]], t0: float,
                 t1: float, users: Sequence[tuple[float, int]] = ()) -> dict:
    """The JSON report: run metadata, summary, routing verdict, role changes and the time series."""
    summary = summarize(rows, t0, t1)
    s = series(rows, t0, t1, 1.0)
    lat = series(rows, t0, t1, 5.0)
    # latency points sit mid-bin: a 5-second percentile describes the whole bin, not its start
    s["tl"] = [round(t + lat["width_s"] / 2, 3) for t in lat["t"]]
    s["lat_width_s"], s["latency"] = lat["width_s"], lat["latency"]
    s["users"] = [(round(t - t0, 3), n) for t, n in users]
    violations = routing_violations(rows, events) if meta.get("check_routing") else []
    return {
        "meta": meta,
        "summary": summary,
        "routing": {
            "checked": bool(meta.get("check_routing")),
            "reads_on_primary": summary["reads_on_primary"],
            "violations": len(violations),
            "violation_examples": [{"t_s": round(r.ts - t0, 3), "op": r.op, "node": r.server} for r in violations[:5]],
            "note": meta.get("routing_note", ""),
        },
        "role_changes": [{"t_s": round(float(e["at"]) - t0, 3), **e} for e in events],
        "series": s,
    }


def render_markdown(rep: dict, charts: list[str], server_lines: Sequence[str] = ()) -> str:
    m, s, r = rep["meta"], rep["summary"], rep["routing"]
    lines = [
        f"# Load run {m['run_id']}",
        "",
        f"{m['started_utc']} · profile **{m['profile']}** ({m['profile_description']}) · "
        f"{m['users']} users, spawn rate {m['spawn_rate']}/s, {m['duration_s']} s, "
        f"{m['processes']} Locust process(es), think time ×{m['think_scale']}",
        "",
        f"- read-write: `{m['target_rw']}`",
        f"- read-only: `{m['target_ro']}`",
        f"- Locust CPU: {m.get('locust_cpu_cores', '?')} cores on average "
        f"({m.get('host_cpus', '?')} on this machine); exit code {m.get('locust_exit_code')}",
        "",
        "## Result",
        "",
        f"**{s['requests']}** requests in {s['seconds']} s (**{s['ok_rps']}/s** succeeded), "
        f"**{s['failures']}** failed; latency of successful requests p50 {s['p50_ms']} ms, "
        f"p95 {s['p95_ms']} ms, p99 {s['p99_ms']} ms. {s['users']} users made requests.",
        "",
    ]
    lines += _table(s["operations"], ["op", "endpoint", "requests", "failures", "rps", "p50_ms", "p95_ms", "p99_ms",
                                      "max_ms"])
    lines += ["", "Figures come from the per-request log (`requests-*.csv`); Locust's own figures are in "
              "`locust.html` and `locust_stats*.csv`.", "", "## Outages", ""]
    if rep["summary"]["outages"]:
        lines.append("Groups of failed requests that include a lost or refused connection, per endpoint. "
                     "`start_s`/`end_s`: the endpoint's last success before and first success after them; "
                     "`gap_s`: the longest time inside that window in which the endpoint answered nobody (the "
                     "outage every client saw); `worst_user_s`: the longest one user waited from its last success "
                     "to its next one (connection lost, reconnect with backoff).")
        lines.append("")
        lines += _table(rep["summary"]["outages"],
                        ["endpoint", "start_s", "end_s", "gap_s", "worst_user_s", "failures", "users", "first_error"])
        worst = ", ".join(f"{ep} {v} s" for ep, v in rep["summary"]["outage_s"].items())
        lines += ["", f"Longest outage per endpoint (gap_s): {worst}."]
    else:
        lines.append("None: no request lost its connection or failed to connect.")
    if s["error_kinds"]:
        kinds = ", ".join(f"{k or 'other'}: {n}" for k, n in sorted(s["error_kinds"].items()))
        lines += ["", f"Failures by kind: {kinds} (connect: no connection; lost: the connection broke; "
                  "query: the statement failed on a healthy connection)."]
    lines += ["", "## Read routing", ""]
    lines += _table(s["reads_by_node"], ["node", "role", "reads", "share"])
    lines.append("")
    if r["checked"]:
        verdict = "**OK**: no read through the read-only endpoint was answered by a primary while the " \
                  "cluster was settled." if r["violations"] == 0 else \
            f"**VIOLATION**: {r['violations']} read(s) through the read-only endpoint were answered by a primary " \
            "outside a role change."
        lines.append(verdict)
    lines += [f"{r['note']}", "", "## Cluster role changes", ""]
    if rep["role_changes"]:
        lines += [f"- t={e['t_s']} s: {e['detail']}" for e in rep["role_changes"]]
    else:
        lines.append(m.get("events_note") or "None seen.")
    lines += ["", *server_lines, *plans_section.markdown(rep.get("plans") or {}), "## Charts", ""]
    lines += [f"![{c}]({c})" for c in charts]
    lines += ["", "## Files", "", "- `report.json`: everything above, plus the time series",
              "- `locust.html`, `locust_stats.csv`, `locust_stats_history.csv`, `locust_failures.csv`: Locust's own",
              "- `requests-<pid>.csv`: one line per request (ts, op, endpoint, user, ok, latency_ms, server, "
              "recovery, error)", "- `locust.log`: Locust's log",
              "- `plans.md`, `plans.json`: the slowest operations' plan trees and EXPLAIN documents (when planned)",
              ""]
    return "\n".join(lines)


def check_no_secrets(folder: Path, secrets: Iterable[str]) -> None:
    """Fail loudly if any text file of the run folder contains a password."""
    values = [v for v in secrets if v and len(v) >= 6]
    for path in folder.iterdir():
        if path.suffix in {".md", ".json", ".csv", ".html", ".log"}:
            text = path.read_text(errors="replace")
            if any(v in text for v in values):
                path.unlink()
                raise CheckFailed(f"{path.name} contained a password and was deleted; please report this bug")


def users_over_time(folder: Path) -> list[tuple[float, int]]:
    """(wall-clock time, running users) from Locust's ``locust_stats_history.csv``."""
    import csv

    out: list[tuple[float, int]] = []
    path = folder / "locust_stats_history.csv"
    if path.exists():
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("Name") == "Aggregated":
                    try:
                        out.append((float(row["Timestamp"]), int(row["User Count"])))
                    except (KeyError, ValueError):
                        continue
    return out


def server_png(folder: Path, view: ServerView | None, events: Sequence[Mapping[str, Any]], t0: float) -> str:
    """The server's panels (alerts, TPS, lag, connections, WAL, lock waits) on the charts' time axis."""
    rows = server_view.panel_rows(view)
    fig, axes = plt.subplots(rows, 1, figsize=(10, 0.6 + server_view.PANEL_HEIGHT_IN * rows), sharex=True,
                             squeeze=False)
    try:
        server_view.draw(axes[:, 0], view, t0)
        for ax in axes[1:, 0]:
            _mark_events(ax, events, t0, label=False)
        axes[-1, 0].set_xlabel("seconds since start")
        fig.suptitle("Server view (Prometheus on mon1)", fontsize=9)
        fig.tight_layout()
        fig.savefig(folder / "server.png", dpi=110)
    finally:
        plt.close(fig)
    return "server.png"


#: What plans the run's slowest operations: the per-operation table in, the plans section's JSON out.
PlanCollector = Callable[[Sequence[Mapping[str, Any]]], dict]


def write_report(folder: Path, rows: Sequence[Request], meta: dict, events: Sequence[Mapping[str, Any]],
                 t0: float, t1: float, secrets: Iterable[str] = (), server: ServerView | None = None,
                 plans: PlanCollector | None = None) -> dict:
    """Write report.json, report.md and the charts into ``folder``; return the JSON report.

    ``plans`` (load/plans.py's ``collect`` bound to the run's targets) adds "Slowest operations and their
    plans"; without it the section says it was not collected.
    """
    rep = build_report(rows, meta, events, t0, t1, users_over_time(folder))
    rep["server"] = server_view.to_json(server, t0)
    collected = plans(rep["summary"]["operations"]) if plans is not None else {
        "status": "skipped", "note": "Not collected for this run (`careflow-ha load --plans N` collects them).",
        "operations": []}
    rep["plans"] = plans_section.write_files(folder, collected)
    charts = [*_charts(folder, rep["series"], rep["summary"], events, t0), server_png(folder, server, events, t0)]
    (folder / "report.json").write_text(json.dumps(rep, indent=1, default=str))
    (folder / "report.md").write_text(render_markdown(rep, charts, server_view.markdown(server, t0, "the start")))
    check_no_secrets(folder, secrets)
    return rep
