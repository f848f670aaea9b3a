"""A soak's report: ``reports/soak/<UTC>-seed<S>/`` with report.md, result.json and timeline.png.

Readable in a minute: the verdict and the anomaly counts first, then one line per fault (planned and actual
times, targets, the longest write and read gap after it), then the timeline with every fault as a band. Like
the drill reports, no DSN is written and every file is checked against the lab's secrets first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on CI machines without a display
import matplotlib.pyplot as plt  # noqa: E402 - must follow the backend choice

from careflow_ha.drills.report import coverage_cell, set_check_cell, set_check_json, write_split_brain_json  # noqa: E402
from careflow_ha.drills.soak import SoakFault, SoakRun  # noqa: E402
from careflow_ha.settings import check_no_secrets  # noqa: E402

LAYER_COLOURS = {"database": "tab:red", "balancer": "tab:purple"}


def _s(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _at(run: SoakRun, at: float | None) -> str:
    return "-" if at is None else f"{at - run.started_at:+.1f}"


def fault_json(run: SoakRun, f: SoakFault) -> dict[str, Any]:
    return {
        "fault": f.planned.fault, "layer": f.planned.layer, "planned_start_s": f.planned.start_s,
        "planned_heal_s": f.planned.heal_s, "targets": list(f.targets),
        "injected_s": None if f.injected_at is None else round(f.injected_at - run.started_at, 2),
        "healed_s": None if f.healed_at is None else round(f.healed_at - run.started_at, 2),
        "inject_note": f.inject_note, "heal_note": f.heal_note, "problem": f.problem,
        "write_outage_s": f.write_outage_s, "read_outage_s": f.read_outage_s, "writes_resumed": f.writes_resumed,
    }


def result_json(run: SoakRun) -> dict[str, Any]:
    a = run.analysis
    return {
        "kind": "soak", "run_id": run.run_id, "seed": run.schedule.seed, "minutes": run.schedule.minutes,
        "nemesis": run.schedule.nemesis, "preset": run.preset, "synchronous": run.synchronous, "via": run.via,
        "under_load": run.under_load, "started_at": run.started_at, "finished_at": run.finished_at,
        "passed": run.passed, "anomalies": run.anomalies, "recovered": run.recovered,
        "recovery_problem": run.recovery_problem,
        "acked_writes": a.acked_writes, "attempted_writes": a.attempted_writes, "ambiguous_writes": a.ambiguous_writes,
        "failed_writes": a.failed_writes, "failed_reads": a.failed_reads,
        "set_check": set_check_json(a.set_check), "write_split_brain": write_split_brain_json(a.write_split_brain),
        "split_brain": [{"start": s.start, "end": s.end, "nodes": list(s.nodes)} for s in a.split_brain],
        "sampling_coverage": dict(a.sampling_coverage),
        "faults": [fault_json(run, f) for f in run.faults], "figures": run.figures,
    }


def markdown(run: SoakRun, png_name: str) -> str:
    a, sched = run.analysis, run.schedule
    verdict = "**PASS**" if run.passed else "**FAIL**"
    lines = [
        f"# Soak: seed {sched.seed}, {sched.minutes:g} min, nemesis `{sched.nemesis}`",
        "",
        f"{verdict} · preset `{run.preset}` · synchronous_mode **{'on' if run.synchronous else 'off'}** · "
        f"via `{run.via}`{' · under load' if run.under_load else ''} · {len(run.injected)} of {len(run.faults)} "
        f"faults injected · replay: `careflow-ha soak run --minutes {sched.minutes:g} --nemesis {sched.nemesis} "
        f"--seed {sched.seed}`",
        "",
        "## What must be 0",
        "",
        "| anomaly | count |",
        "| --- | --- |",
        *[f"| {name.replace('_', ' ')} | {count} |" for name, count in run.anomalies.items()],
        "",
        "## Every write of the run",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| acknowledged writes | {a.acked_writes} of {a.attempted_writes} attempts ({a.ambiguous_writes} ambiguous: "
        "outcome unknown to the client, never counted as lost) |",
        f"| set check against the table after healing | {set_check_cell(a.set_check)} |",
        f"| failed transactions the client saw | {a.failed_writes} write(s), {a.failed_reads} read(s) |",
        f"| share of the run each node was observed | {coverage_cell(a)} |",
        f"| cluster healthy at the end | {'yes' if run.recovered else f'NO: {run.recovery_problem}'} |",
    ]
    if "load_requests" in run.figures:
        lines.append(f"| background load | {run.figures['load_requests']} requests, {run.figures['load_failures']} "
                     f"failed ({run.figures['load_report']}) |")
    lines += [
        "",
        "## The faults (seconds from the soak's start; outage: the longest gap between acknowledgements after the "
        "injection, until the next one)",
        "",
        "| fault | layer | planned | injected | healed | targets | write gap s | read gap s | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in run.faults:
        planned = f"{f.planned.start_s:.0f}" + (f"-{f.planned.heal_s:.0f}" if f.planned.duration_s else "")
        note = f.problem or f.inject_note
        lines.append(f"| {f.planned.fault} | {f.planned.layer} | {planned} | {_at(run, f.injected_at)} | "
                     f"{_at(run, f.healed_at)} | {', '.join(f.targets) or '-'} | {_s(f.write_outage_s)} | "
                     f"{_s(f.read_outage_s)} | {note.replace('|', '/')} |")
    lines += ["", "## Timeline", "", f"![timeline]({png_name})", ""]
    return "\n".join(lines)


def timeline_png(run: SoakRun, path: Path) -> None:
    """Acknowledged writes per second through 5000, failed writes as marks, every fault as a band."""
    t0 = run.started_at
    fig, ax = plt.subplots(figsize=(12, 4.5))
    acks = [w.acked_at - t0 for w in run.recording.writes]
    end = max([run.finished_at - t0, *acks, 1.0])
    bins = [float(s) for s in range(int(end) + 2)]
    if acks:
        ax.hist(acks, bins=bins, color="tab:blue", alpha=0.8, label="writes acknowledged per second")
    errors = [e.at - t0 for e in run.recording.write_errors]
    if errors:
        ax.plot(errors, [0.5] * len(errors), "x", color="black", label="failed write")
    top = max(ax.get_ylim()[1], 1.0)
    for n, f in enumerate(run.faults):
        if f.injected_at is None:
            continue
        start = f.injected_at - t0
        stop = (f.healed_at - t0) if f.healed_at is not None else start + 2.0
        ax.axvspan(start, max(stop, start + 1.0), color=LAYER_COLOURS.get(f.planned.layer, "tab:gray"), alpha=0.18)
        ax.text(start, top * (0.95 - 0.08 * (n % 4)), f.planned.fault, fontsize=7, rotation=0, va="top")
    ax.set(xlabel="seconds since the soak started", ylabel="writes per second",
           title=f"Soak seed {run.schedule.seed} ({run.schedule.nemesis}): bands are faults "
                 "(red database, purple balancer)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_soak_report(run: SoakRun, reports_dir: Path, secrets: Mapping[str, str]) -> Path:
    """Write the run's folder under ``reports_dir/soak`` and return it."""
    name = f"{run.run_id.split('-soak-')[0]}-seed{run.schedule.seed}-{run.schedule.nemesis}"
    out = reports_dir / "soak" / name
    for n in range(2, 100):  # two soaks in one second get distinct folders; bounded
        if not out.exists():
            break
        out = reports_dir / "soak" / f"{name}-{n}"
    data = json.dumps(result_json(run), indent=1, default=str)
    md = markdown(run, "timeline.png")
    check_no_secrets([data, md], secrets)
    out.mkdir(parents=True)
    (out / "result.json").write_text(data, encoding="utf-8")
    (out / "report.md").write_text(md, encoding="utf-8")
    timeline_png(run, out / "timeline.png")
    return out
