"""Drill reports: Markdown + JSON + a timeline PNG per run, and ``reports/drills/index.md``.

Reports are for people who were not watching: they say what was broken, what
the client saw, whether data was lost, where the time went and what to make
of it. They never contain secrets: no DSN is written, and every file is
checked against the lab's secrets before it is written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on CI machines without a display
import matplotlib.pyplot as plt  # noqa: E402 - must follow the backend choice

from careflow_ha.cluster import server_view  # noqa: E402
from careflow_ha.drills.analysis import Analysis  # noqa: E402
from careflow_ha.drills.checker import ANOMALY_CLASSES, SetCheck  # noqa: E402
from careflow_ha.drills.runner import DrillRun  # noqa: E402
from careflow_ha.drills.splitbrain import ForeignLeaderWrite, WriteSplitBrain  # noqa: E402
from careflow_ha.drills.targets import Verdict  # noqa: E402
from careflow_ha.settings import check_no_secrets  # noqa: E402

INDEX_NAME = "index.md"
#: Seq lists in result.json stop here: a count says how bad, the first thousand say which.
SEQ_LIST_CAP = 1000
RESULT_NAME = "result.json"
INDEX_ROW = (
    "| {when} | [{drill}]({folder}/report.md) | {preset} | {sync} | {wo} | {ro} | {lost} | {invented} | {ambiguous} "
    "| {sb} | {rj} | {ok} |"
)

ASYNC_TRADE_OFF = (
    "This run had **synchronous_mode off**. A commit was acknowledged as soon as the primary had written it "
    "to its own disk, without waiting for any replica. That keeps commits fast and keeps writes available "
    "when replicas are slow or gone, but at a failover the new primary only has what it had received by "
    "then: every write it had not received is gone, although the application was told it was saved. The "
    "count of lost acknowledged writes above is exactly that loss. With synchronous_mode on, each commit "
    "waits until one standby has it, Patroni only promotes that standby, and the loss is zero; the price is "
    "commit latency and a short write stall whenever the sync standby itself is lost."
)


def _fmt(seconds: float | None, digits: int = 2) -> str:
    return "-" if seconds is None else f"{seconds:.{digits}f} s"


def _rel(at: float | None, origin: float) -> str:
    return "-" if at is None else f"{at - origin:+.2f} s"


def _way(run: DrillRun, endpoint: str) -> str:
    """How the probes reached the cluster, in a report's words."""
    if run.via == "libpq-multihost":
        return "libpq multi-host (" + ("read-write" if endpoint == "rw" else "prefer-standby") + ")"
    if run.via == "leader-vip" and endpoint == "rw":
        return "the leader VIP's 5432"
    if run.via == "pgbouncer":
        return "PgBouncer's " + ("6432" if endpoint == "rw" else "6433")
    return "5000" if endpoint == "rw" else "5001"


#: What a report through PgBouncer says the pooler hides and what it cannot (docs/pooling.md has the why).
POOLER_NOTE = (
    "**Through the pooler.** The probes held their PgBouncer connections throughout. In a planned switchover "
    "(`--via pgbouncer` runs the zero-error one: PAUSE, Patroni switchover, RECONNECT, RESUME) PgBouncer "
    "holds each new transaction until the new primary is routed, so a client sees a delay, never an error; "
    "the stall is the longest gap between acknowledgements. In an unplanned failure nothing is paused: "
    "a transaction in flight on the lost primary fails as it would through 5000, and the pooler only "
    "spares the clients their reconnect."
)


def run_dir_name(run: DrillRun) -> str:
    """``<UTC start>-<drill>-<preset>[-async][-<way in>]``: sorts by time, says what ran."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(run.started_at))
    mode = "" if run.synchronous else "-async"
    way = "" if run.via == "haproxy-vip" else f"-{run.via}"
    return f"{stamp}-{run.name}-{run.preset}{mode}{way}"


def result_json(run: DrillRun) -> dict[str, Any]:
    """Everything measured, machine-readable (times as epoch seconds and as offsets from the fault)."""
    a = run.analysis
    origin = run.fault_at
    rec = run.recording
    return {
        "drill": run.name,
        "title": run.title,
        "run_id": run.run_id,
        "preset": run.preset,
        "via": run.via,
        "timing": {"ttl": run.timing.ttl, "loop_wait": run.timing.loop_wait, "retry_timeout": run.timing.retry_timeout},
        "synchronous_mode": run.synchronous,
        "failsafe_mode": run.failsafe_mode,
        "under_load": run.under_load,
        "targets": list(run.targets),
        "old_primary": a.old_primary,
        "new_primary": a.new_primary,
        "fault": {"at": run.fault_at, "note": run.inject_note},
        "heal": {"at": run.heal_at, "note": run.heal_note},
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "passed": run.passed,
        "recovered": run.recovered,
        "recovery_problem": run.recovery_problem,
        "write_outage_s": a.write_outage.seconds,
        "write_outage_total_s": a.write_outage.total_seconds,
        "write_outage_recovered": a.write_outage.recovered,
        "read_outage_s": a.read_outage.seconds,
        "read_outage_recovered": a.read_outage.recovered,
        "acked_writes": a.acked_writes,
        "write_attempts": a.attempted_writes,
        "ambiguous_writes": a.ambiguous_writes,
        "failed_writes": a.failed_writes,
        "failed_reads": a.failed_reads,
        "longest_write_wait_s": a.longest_write_wait_s,
        "lost_acked_writes": None if a.lost_writes is None else len(a.lost_writes),
        "lost_acked_seqs": None if a.lost_writes is None else list(a.lost_writes[:SEQ_LIST_CAP]),
        "set_check": set_check_json(a.set_check),
        "split_brain": [{"start": s.start, "end": s.end, "nodes": list(s.nodes)} for s in a.split_brain],
        "sampling_coverage": dict(a.sampling_coverage),
        "coverage_window": list(rec.observed_window),  # the probes' run: coverage is a share of it
        "split_brain_by_writes": write_split_brain_json(a.write_split_brain),
        "rejoin_s": a.rejoin_seconds,
        "promotions_after_fault": promotions_after(run),
        "moments_from_fault_s": {
            "leaderless": None if a.leaderless_at is None else a.leaderless_at - origin,
            "promotion": None if a.promoted_at is None else a.promoted_at - origin,
            "haproxy_switch": None if a.haproxy_switch_at is None else a.haproxy_switch_at - origin,
            "first_ack": None if a.write_outage.first_ack_after is None else a.write_outage.first_ack_after - origin,
            "rejoined": None if a.rejoined_at is None else a.rejoined_at - origin,
        },
        "phases": [{"name": p.name, "seconds": p.seconds} for p in a.phases],
        "figures": dict(run.figures),
        "server": server_view.to_json(run.server, origin),
        "verdicts": [{"target": v.target, "ok": v.ok, "detail": v.detail} for v in run.verdicts],
        "events": [{"at": e.at, "kind": e.kind, "detail": e.detail} for e in a.events],
        "history": [
            {"timeline": h.timeline, "lsn": h.lsn, "reason": h.reason, "at": h.at, "new_leader": h.new_leader}
            for h in rec.history
        ],
        "writes": [[w.seq, round(w.sent_at, 4), round(w.acked_at, 4), w.server] for w in rec.writes],
        "write_errors": [[e.seq, round(e.at, 4), e.kind, e.message] for e in rec.write_errors],
        "writes_in_flight": list(rec.writes_in_flight),
        "reads": [[r.seq, round(r.acked_at, 4), r.server] for r in rec.reads],
        "read_errors": [[e.seq, round(e.at, 4), e.kind, e.message] for e in rec.read_errors],
        "node_samples": [[s.node, round(s.at, 4), s.writable, s.via] for s in rec.node_samples],
        "node_writes": [
            [w.node, w.seq, round(w.sent_at, 4), round(w.done_at, 4), w.outcome, w.via] for w in rec.node_writes
        ],
    }


def set_check_json(check: SetCheck | None) -> dict[str, Any] | None:
    """Every class's size, and its seqs (capped) for the classes a person would look up."""
    if check is None:
        return None
    listed = (*ANOMALY_CLASSES, "ambiguous_present", "ambiguous_absent")
    return {
        "counts": check.counts(),
        "anomalies": check.anomalies,
        **{name: list(getattr(check, name)[:SEQ_LIST_CAP]) for name in listed},
    }


def write_split_brain_json(judged: WriteSplitBrain | None) -> dict[str, Any] | None:
    if judged is None:
        return None

    def rows(found: tuple[ForeignLeaderWrite, ...]) -> list[dict[str, Any]]:
        return [
            {"node": f.node, "leader": f.leader, "seq": f.seq, "sent_at": f.sent_at, "done_at": f.done_at}
            for f in found[:SEQ_LIST_CAP]
        ]

    return {
        "acknowledged_count": len(judged.acknowledged),
        "ambiguous_count": len(judged.ambiguous),
        "nodes": list(judged.nodes),
        "acknowledged": rows(judged.acknowledged),
        "ambiguous": rows(judged.ambiguous),
        "coverage": dict(judged.coverage),
        "leader_known": judged.leader_known,
    }


def _coverage_measures(a: Analysis) -> str:
    return "role sampling / per-node writes" if a.write_split_brain is not None else "role sampling"


def coverage_cell(a: Analysis) -> str:
    """``pg1 99% / 97%`` per node: role sampling, then per-node writes when the run had them."""
    by_writes = a.write_split_brain.coverage if a.write_split_brain is not None else {}
    nodes = sorted(set(a.sampling_coverage) | set(by_writes))
    cells = []
    for node in nodes:
        sampled = a.sampling_coverage.get(node)
        text = f"{node} {'-' if sampled is None else f'{100 * sampled:.0f}%'}"
        if a.write_split_brain is not None:
            written = by_writes.get(node)
            text += f" / {'-' if written is None else f'{100 * written:.0f}%'}"
        cells.append(text)
    return ", ".join(cells) or "-"


def _by_writes_cell(a: Analysis) -> str:
    judged = a.write_split_brain
    if judged is None:
        return "not measured (no per-node writers in this run)"
    text = f"{len(judged.acknowledged)}"
    if judged.acknowledged:
        text += f" (on {', '.join(judged.nodes)})"
    if judged.ambiguous:
        text += f"; {len(judged.ambiguous)} ambiguous (timed out mid-commit), not counted"
    return text + f"; leader key known for {100 * judged.leader_known:.0f}% of the run"


def set_check_cell(check: SetCheck | None) -> str:
    if check is None:
        return "not verifiable (the primary never answered the read-back)"
    return (
        f"ok {len(check.ok)} · lost {len(check.lost)} · duplicated {len(check.duplicated)} · "
        f"unexpected {len(check.unexpected)} · refused yet present {len(check.refused_present)} · "
        f"ambiguous {check.ambiguous} ({len(check.ambiguous_present)} turned up, "
        f"{len(check.ambiguous_absent)} did not)"
    )


def promotions_after(run: DrillRun) -> int:
    """New timelines Patroni recorded after the fault (one per promotion; more than one is worth a look)."""
    return sum(1 for h in run.recording.history if h.at is not None and h.at >= run.fault_at)


def _verdict_mark(v: Verdict) -> str:
    return {True: "PASS", False: "**MISS**", None: "n/a"}[v.ok]


def markdown(run: DrillRun, png_name: str) -> str:
    """The human report."""
    a = run.analysis
    wo, ro = a.write_outage, a.read_outage
    origin = run.fault_at
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(run.started_at))
    lost = (
        "not verifiable (the primary never answered the read-back)"
        if a.lost_writes is None
        else str(len(a.lost_writes))
    )
    lines = [
        f"# Drill: {run.title} (`{run.name}`)",
        "",
        f"{when} · preset `{run.preset}` (ttl {run.timing.ttl}, loop_wait {run.timing.loop_wait}, "
        f"retry_timeout {run.timing.retry_timeout}) · synchronous_mode **{'on' if run.synchronous else 'off'}**"
        f"{'' if run.failsafe_mode is None else ' · failsafe_mode **' + ('on' if run.failsafe_mode else 'off') + '**'}"
        f"{' · under load' if run.under_load else ''} · via `{run.via}`"
        f" · result **{'PASS' if run.passed else 'MISS'}**",
        "",
        f"**What was broken:** {run.description}",
        "",
        f"Target node(s): {', '.join(run.targets)}. Injected: {run.inject_note}. "
        f"Healed: {run.heal_note or 'nothing to heal'}.",
        "",
        "## What the client saw",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| write outage via {_way(run, 'rw')} (last ack before -> first ack after) | {_fmt(wo.seconds)}"
        f"{'' if wo.recovered else ' (writes never resumed)'} |",
        f"| all write gaps above threshold | {_fmt(wo.total_seconds)} in {len(wo.gaps)} gap(s) |",
        f"| read outage via {_way(run, 'ro')} | {_fmt(ro.seconds)}{'' if ro.recovered else ' (reads never resumed)'} |",
        f"| acknowledged writes | {a.acked_writes} of {a.attempted_writes} attempts "
        f"({a.ambiguous_writes} ambiguous: outcome unknown to the client, never counted as acked) |",
        f"| acknowledged writes lost | {lost} |",
        f"| failed transactions the client saw | {a.failed_writes} write(s), {a.failed_reads} read(s) |",
        f"| longest single write, sent to acknowledged | {_fmt(a.longest_write_wait_s)} |",
        f"| set check of every attempt against the table after healing | {set_check_cell(a.set_check)} |",
        f"| moments with two writable primaries (role sampling) | {len(a.split_brain)} |",
        f"| writes acknowledged on a node while another held the leader key | {_by_writes_cell(a)} |",
        f"| share of the run each node was observed ({_coverage_measures(a)}) | {coverage_cell(a)} |",
        f"| old primary {a.old_primary} back as a streaming replica | {_fmt(a.rejoin_seconds, 1)} after "
        f"{'healing' if run.heal_at is not None else 'the fault (nothing to heal)'} |",
        f"| leader | {a.old_primary} -> {a.new_primary or a.old_primary} |",
        f"| promotions in Patroni's timeline history after the fault | {promotions_after(run)} |",
        "",
        *([POOLER_NOTE, ""] if run.via == "pgbouncer" else []),
        "## Targets",
        "",
        "| target | result | measured |",
        "| --- | --- | --- |",
        *[f"| {v.target} | {_verdict_mark(v)} | {v.detail} |" for v in run.verdicts],
        "",
        "## Timeline (seconds from the fault)",
        "",
        f"![timeline]({png_name})",
        "",
        "| moment | at |",
        "| --- | --- |",
        f"| last write acknowledged before the outage | {_rel(wo.last_ack_before, origin)} |",
        "| fault injected | +0.00 s |",
        f"| leader key gone (expired or released), as observed | {_rel(a.leaderless_at, origin)} |",
        f"| promotion of {a.new_primary or '-'} | {_rel(a.promoted_at, origin)} |",
        f"| route switch: first ack via {_way(run, 'rw')} from the new primary | {_rel(a.haproxy_switch_at, origin)} |",
        f"| first write acknowledged after the outage | {_rel(wo.first_ack_after, origin)} |",
        f"| fault healed | {_rel(run.heal_at, origin)} |",
        f"| old primary streaming again | {_rel(a.rejoined_at, origin)} |",
        "",
    ]
    if run.figures:
        lines += ["## The fault's own figures", "", "| figure | value |", "| --- | --- |"]
        lines += [f"| {key.replace('_', ' ')} | {'-' if v is None else v} |" for key, v in run.figures.items()]
        lines.append("")
    if a.phases:
        total = sum(p.seconds for p in a.phases) or 1.0
        lines += ["## Where the time went", "", "| phase | seconds | share |", "| --- | --- | --- |"]
        lines += [f"| {p.name} | {p.seconds:.2f} | {100 * p.seconds / total:.0f}% |" for p in a.phases]
        biggest = max(a.phases, key=lambda p: p.seconds)
        missed = any(v.ok is False and v.target.startswith("write outage") for v in run.verdicts)
        lead = "The outage target was missed; most" if missed else "Most"
        lines += ["", f"{lead} of the outage went to **{biggest.name}** ({biggest.seconds:.2f} s).", ""]
    if a.split_brain:
        lines += ["## Two writable primaries", ""]
        lines += [
            f"- {', '.join(s.nodes)} both accepted writes from {_rel(s.start, origin)} to {_rel(s.end, origin)}"
            for s in a.split_brain
        ]
        lines.append("")
    if a.set_check is not None and a.set_check.anomalies:
        lines += ["## Writes the table contradicts", ""]
        for name in ANOMALY_CLASSES:
            seqs = getattr(a.set_check, name)
            if seqs:
                shown = ", ".join(str(q) for q in seqs[:20]) + (" ..." if len(seqs) > 20 else "")
                lines.append(f"- {name.replace('_', ' ')}: {len(seqs)} (seqs {shown})")
        lines.append("")
    if a.write_split_brain is not None and a.write_split_brain.acknowledged:
        found = a.write_split_brain.acknowledged
        lines += ["## Writes acknowledged under another node's leadership", ""]
        lines += [
            f"- {f.node} acknowledged seq {f.seq} ({_rel(f.sent_at, origin)} to {_rel(f.done_at, origin)}) "
            f"while {f.leader} held the leader key"
            for f in found[:20]
        ]
        lines += [f"- ... and {len(found) - 20} more" if len(found) > 20 else "", ""]
    if not run.synchronous:
        lines += ["## Synchronous vs asynchronous: the trade-off", "", ASYNC_TRADE_OFF, ""]
    if run.recovery_problem:
        lines += ["## Recovery problem", "", run.recovery_problem, ""]
    lines += server_view.markdown(run.server, origin, "the fault")
    lines += ["Raw data (every ack, error, sample, Patroni event and server series): `result.json`.", ""]
    return "\n".join(lines)


def timeline_png(run: DrillRun, path: Path) -> None:
    """Writes, reads and per-node writability over time, with the fault, expiry, promotion and switch marked."""
    rec, a, origin = run.recording, run.analysis, run.fault_at
    nodes = sorted({s.node for s in rec.node_samples} | {w.node for w in rec.node_writes})
    lanes = ["writes 5000", "reads 5001", *[f"{n} writable" for n in nodes]]
    # The server's panels under the client's lanes, on the same x axis (seconds from the fault).
    heights = [1.2 + 0.55 * len(lanes), *[server_view.PANEL_HEIGHT_IN] * server_view.panel_rows(run.server)]
    fig, axes = plt.subplots(len(heights), 1, figsize=(11, sum(heights)), dpi=110, sharex=True,
                             gridspec_kw={"height_ratios": heights})
    ax = axes[0]
    try:
        servers = sorted({w.server or "?" for w in rec.writes} | {r.server or "?" for r in rec.reads})
        colours = {s: f"C{i % 10}" for i, s in enumerate(servers)}
        for lane, acks in ((0, rec.writes), (1, rec.reads)):
            for server in servers:
                xs = [x.acked_at - origin for x in acks if (x.server or "?") == server]
                if xs:
                    ax.scatter(xs, [lane] * len(xs), s=6, color=colours[server], label=server if lane == 0 else None)
        errs = [(0, e.at - origin) for e in rec.write_errors] + [(1, e.at - origin) for e in rec.read_errors]
        if errs:
            ax.scatter([x for _, x in errs], [y for y, _ in errs], s=10, marker="x", color="red", label="error")
        for i, node in enumerate(nodes, start=2):
            ok = [s.at - origin for s in rec.node_samples if s.node == node and s.writable is True]
            unknown = [s.at - origin for s in rec.node_samples if s.node == node and s.writable is None]
            ax.scatter(ok, [i] * len(ok), s=6, color="black")
            ax.scatter(unknown, [i] * len(unknown), s=6, color="lightgrey")
            # Per-node writes just above the samples: what the node did, next to what it said.
            took = [w.done_at - origin for w in rec.node_writes if w.node == node and w.outcome == "acked"]
            ax.scatter(took, [i + 0.2] * len(took), s=4, marker="|", color="tab:blue")
        if a.write_split_brain is not None and a.write_split_brain.acknowledged:
            found = a.write_split_brain.acknowledged
            ax.scatter(
                [f.done_at - origin for f in found], [nodes.index(f.node) + 2.2 for f in found],
                s=30, marker="x", color="magenta", label="acked under another leader",
            )  # fmt: skip
        if a.write_outage.seconds is not None and a.write_outage.interrupted:
            ax.axvspan(
                a.write_outage.last_ack_before - origin,
                a.write_outage.first_ack_after - origin,
                color="red",
                alpha=0.08,
            )
        marks = [
            (0.0, "fault", "red"),
            (None if run.heal_at is None else run.heal_at - origin, "heal", "green"),
            (None if a.leaderless_at is None else a.leaderless_at - origin, "leader key gone", "orange"),
            (None if a.promoted_at is None else a.promoted_at - origin, "promotion", "purple"),
            (None if a.haproxy_switch_at is None else a.haproxy_switch_at - origin, "HAProxy switch", "blue"),
            (
                None if a.write_outage.first_ack_after is None else a.write_outage.first_ack_after - origin,
                "first ack",
                "teal",
            ),
        ]
        marks.append((None if a.rejoined_at is None else a.rejoined_at - origin, "old primary streaming", "brown"))
        marks.append((run.figures.get("vip_takeover_s"), f"VIP to {run.figures.get('vip_takeover_by')}", "darkcyan"))
        drawn: list[float] = []
        for x, label, colour in marks:
            if x is not None and any(abs(x - d) < 0.1 for d in drawn):
                continue  # e.g. HAProxy switch and first ack are one moment: one label is enough
            if x is not None:
                drawn.append(x)
                ax.axvline(x, color=colour, linestyle="--", linewidth=1)
                ax.text(x, len(lanes) - 0.4, f" {label}", rotation=90, va="top", fontsize=7, color=colour)
        for sb in a.split_brain:
            ax.axvspan(sb.start - origin, max(sb.end - origin, sb.start - origin + 0.05), color="magenta", alpha=0.3)
        ax.set_yticks(range(len(lanes)), lanes)
        ax.set_ylim(-0.7, len(lanes) - 0.3)
        server_view.draw(axes[1:], run.server, origin,
                         marks=[(0.0, "red"), *([] if run.heal_at is None else [(run.heal_at - origin, "green")])])
        axes[-1].set_xlabel("seconds from the fault")
        ax.set_title(f"{run.title} · preset {run.preset} · synchronous_mode {'on' if run.synchronous else 'off'}")
        ax.grid(axis="x", alpha=0.3)
        if servers or errs:
            ax.legend(loc="lower right", fontsize=7, title="answered by", title_fontsize=7)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def write_report(run: DrillRun, reports_dir: Path, secrets: Mapping[str, str]) -> Path:
    """Write the run's folder under ``reports_dir/drills`` and refresh the index; return the folder."""
    drills_dir = reports_dir / "drills"
    out = drills_dir / run_dir_name(run)
    for n in range(2, 100):  # two runs in one second (repeat) get distinct folders; bounded
        if not out.exists():
            break
        out = drills_dir / f"{run_dir_name(run)}-{n}"
    png = "timeline.png"
    data = json.dumps(result_json(run), indent=1, default=str)
    md = markdown(run, png)
    check_no_secrets([data, md], secrets)
    out.mkdir(parents=True)
    (out / RESULT_NAME).write_text(data, encoding="utf-8")
    (out / "report.md").write_text(md, encoding="utf-8")
    timeline_png(run, out / png)
    write_index(drills_dir)
    return out


def write_index(drills_dir: Path) -> Path:
    """Rebuild ``index.md`` from every run folder's result.json (newest first); idempotent."""
    rows = []
    for result in sorted(drills_dir.glob(f"*/{RESULT_NAME}"), reverse=True):
        try:
            r = json.loads(result.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        lost = r.get("lost_acked_writes")
        counts = (r.get("set_check") or {}).get("counts")  # runs written before the set checker have none
        invented = "?" if not counts else counts["unexpected"] + counts["duplicated"] + counts["refused_present"]
        rows.append(
            INDEX_ROW.format(
                when=time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.get("started_at", 0))),
                drill=r.get("drill"),
                folder=result.parent.name,
                preset=r.get("preset"),
                sync="on" if r.get("synchronous_mode") else "off",
                wo=_fmt(r.get("write_outage_s")),
                ro=_fmt(r.get("read_outage_s")),
                lost="?" if lost is None else lost,
                invented=invented,
                ambiguous="?" if not counts else counts["ambiguous_present"] + counts["ambiguous_absent"],
                sb=len(r.get("split_brain") or []),
                rj=_fmt(r.get("rejoin_s"), 1),
                ok="PASS" if r.get("passed") else "**MISS**",
            )
        )
    text = "\n".join(
        [
            "# Failover drill runs",
            "",
            "Client-observed figures; newest first. Each link opens the run's report (Markdown, JSON, timeline).",
            "",
            "| started (UTC) | drill | preset | sync | write outage | read outage | lost acked "
            "| unexpected / dup / refused yet present | ambiguous | two primaries | old primary back | result |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
        ]
    )
    drills_dir.mkdir(parents=True, exist_ok=True)
    index = drills_dir / INDEX_NAME
    index.write_text(text, encoding="utf-8")
    return index
