"""A series of drill runs summed up: per drill, the write outage's p50/p95/max against its target, and every
set-check class summed over all runs.

A single run says what happened once; the targets are promises about every run, so a repeated run
(``drill run --repeat N``, ``drill all``, the long suite's 30-run series) leaves this summary in
``reports/drill-series/<UTC>/`` (Markdown, JSON, PNG); ``reports/drills/`` keeps each run's own report.

Percentiles are nearest-rank: p95 of 10 runs is the worst of them, never a value between two runs that
no client saw.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - must follow the backend choice

from careflow_ha.drills.checker import CLASSES  # noqa: E402
from careflow_ha.drills.runner import DrillRun  # noqa: E402
from careflow_ha.drills.targets import TUNED_PRESET, WRITE_OUTAGE_TARGETS_S  # noqa: E402
from careflow_ha.settings import check_no_secrets  # noqa: E402


def nearest_rank(values: Sequence[float], p: float) -> float | None:
    """The smallest value with at least ``p`` (0..1] of the values at or below it; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p * len(ordered))) - 1]


@dataclass(frozen=True)
class DrillFigures:
    """One drill's runs in a series."""

    drill: str
    preset: str
    synchronous: bool
    runs: int
    write_outages_s: tuple[float, ...]  # the runs whose writes resumed, in run order
    never_recovered: int
    passed: int
    target_s: float | None  # the published write-outage target, for the tuned preset

    @property
    def p50_s(self) -> float | None:
        return nearest_rank(self.write_outages_s, 0.50)

    @property
    def p95_s(self) -> float | None:
        return nearest_rank(self.write_outages_s, 0.95)

    @property
    def max_s(self) -> float | None:
        return max(self.write_outages_s) if self.write_outages_s else None

    @property
    def p95_within_target(self) -> bool | None:
        if self.target_s is None or self.p95_s is None:
            return None
        return self.never_recovered == 0 and self.p95_s <= self.target_s


@dataclass(frozen=True)
class SeriesSummary:
    """Every drill of a series, and the safety figures over all of its runs."""

    drills: tuple[DrillFigures, ...]
    runs: int
    failovers: int  # runs in which another node became the primary
    synchronous_failovers: int
    set_check: Mapping[str, int]  # every class, summed; ``unmeasured`` runs are counted apart
    unmeasured: int  # runs whose rows could not be read back
    split_brain: int  # intervals with two writable primaries, summed

    @property
    def lost_in_synchronous_mode(self) -> int:
        return self.set_check.get("lost_sync", 0)


def summarize(runs: Sequence[DrillRun]) -> SeriesSummary:
    groups: dict[tuple[str, str, bool], list[DrillRun]] = {}
    for run in runs:
        groups.setdefault((run.name, run.preset, run.synchronous), []).append(run)
    drills = []
    for (name, preset, sync), group in groups.items():
        outages = tuple(r.analysis.write_outage.seconds for r in group if r.analysis.write_outage.seconds is not None)
        drills.append(DrillFigures(
            drill=name, preset=preset, synchronous=sync, runs=len(group), write_outages_s=outages,
            never_recovered=len(group) - len(outages), passed=sum(1 for r in group if r.passed),
            target_s=WRITE_OUTAGE_TARGETS_S.get(name) if preset == TUNED_PRESET else None,
        ))
    totals = dict.fromkeys(CLASSES, 0)
    totals["lost_sync"] = 0
    unmeasured = 0
    for run in runs:
        check = run.analysis.set_check
        if check is None:
            unmeasured += 1
            continue
        for cls, n in check.counts().items():
            totals[cls] = totals.get(cls, 0) + n
        if run.synchronous:
            totals["lost_sync"] += len(check.lost)
    return SeriesSummary(
        drills=tuple(drills), runs=len(runs),
        failovers=sum(1 for r in runs if r.analysis.failed_over),
        synchronous_failovers=sum(1 for r in runs if r.analysis.failed_over and r.synchronous),
        set_check=totals, unmeasured=unmeasured,
        split_brain=sum(len(r.analysis.split_brain) for r in runs),
    )


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


def render_lines(summary: SeriesSummary) -> list[str]:
    """The summary for a terminal: one line per drill, then the safety totals."""
    out = []
    for d in summary.drills:
        verdict = {None: "", True: " (within target)", False: " (**target missed**)"}[d.p95_within_target]
        target = "" if d.target_s is None else f", target {d.target_s:g} s"
        gone = f", {d.never_recovered} never recovered" if d.never_recovered else ""
        out.append(f"{d.drill} ({d.preset}, sync {'on' if d.synchronous else 'off'}): {d.runs} run(s), write "
                   f"outage p50 {_s(d.p50_s)}, p95 {_s(d.p95_s)}, max {_s(d.max_s)}{target}{gone}{verdict}")
    c = summary.set_check
    out.append(f"{summary.runs} run(s), {summary.failovers} failover(s) ({summary.synchronous_failovers} in "
               f"synchronous mode): lost {c['lost']} (in synchronous mode {c['lost_sync']}), unexpected "
               f"{c['unexpected']}, duplicated {c['duplicated']}, refused yet present {c['refused_present']}, "
               f"ambiguous {c['ambiguous_present'] + c['ambiguous_absent']} ({c['ambiguous_present']} present), "
               f"two writable primaries {summary.split_brain}"
               + (f", {summary.unmeasured} run(s) not verifiable" if summary.unmeasured else ""))
    return out


def result_json(summary: SeriesSummary, folders: Sequence[str]) -> dict[str, Any]:
    return {
        "runs": summary.runs,
        "failovers": summary.failovers,
        "synchronous_failovers": summary.synchronous_failovers,
        "set_check": dict(summary.set_check),
        "unmeasured": summary.unmeasured,
        "split_brain": summary.split_brain,
        "percentiles": "nearest-rank",
        "drills": [
            {"drill": d.drill, "preset": d.preset, "synchronous_mode": d.synchronous, "runs": d.runs,
             "passed": d.passed, "write_outages_s": [round(s, 3) for s in d.write_outages_s],
             "never_recovered": d.never_recovered, "p50_s": d.p50_s, "p95_s": d.p95_s, "max_s": d.max_s,
             "target_s": d.target_s, "p95_within_target": d.p95_within_target}
            for d in summary.drills
        ],
        "reports": list(folders),
    }


def markdown(summary: SeriesSummary, folders: Sequence[str], png: str) -> str:
    rows = []
    for d in summary.drills:
        verdict = {None: "-", True: "yes", False: "**no**"}[d.p95_within_target]
        rows.append(f"| {d.drill} | {d.preset} | {'on' if d.synchronous else 'off'} | {d.runs} | {d.passed} "
                    f"| {_s(d.p50_s)} | {_s(d.p95_s)} | {_s(d.max_s)} | {d.never_recovered} "
                    f"| {'-' if d.target_s is None else f'{d.target_s:g} s'} | {verdict} |")
    c = summary.set_check
    return "\n".join([
        f"# Drill series: {summary.runs} runs, {summary.failovers} failovers",
        "",
        "Write outage as the probe writer saw it through the cluster's way in, per drill (nearest-rank "
        "percentiles). The targets are for the tuned preset; the series passes a target when p95 is within it "
        "and every run's writes resumed.",
        "",
        "| drill | preset | sync | runs | passed | p50 | p95 | max | never recovered | target | p95 within |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        "## Every write of every run",
        "",
        "| lost (synchronous mode) | lost (all) | unexpected | duplicated | refused yet present | ambiguous present "
        "| ambiguous absent | two writable primaries | not verifiable |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {c['lost_sync']} | {c['lost']} | {c['unexpected']} | {c['duplicated']} | {c['refused_present']} "
        f"| {c['ambiguous_present']} | {c['ambiguous_absent']} | {summary.split_brain} | {summary.unmeasured} |",
        "",
        "Ambiguous writes timed out or were cut mid-commit: the client cannot know their fate, so they are "
        "reported by what the read-back found and never counted as lost.",
        "",
        f"![write outage per run]({png})",
        "",
        "## Runs",
        "",
        *[f"- [{f}](../../drills/{f}/report.md)" for f in folders],
        "",
    ])


def outage_png(summary: SeriesSummary, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.6 * max(1, len(summary.drills))))
    try:
        for i, d in enumerate(summary.drills):
            ax.scatter(d.write_outages_s, [i] * len(d.write_outages_s), s=18, alpha=0.7)
            if d.target_s is not None:
                ax.plot([d.target_s, d.target_s], [i - 0.35, i + 0.35], color="red", linewidth=2)
            if d.p95_s is not None:
                ax.plot([d.p95_s, d.p95_s], [i - 0.25, i + 0.25], color="black", linewidth=1, linestyle=":")
        ax.set_yticks(range(len(summary.drills)), [f"{d.drill} ({d.runs})" for d in summary.drills])
        ax.set_xlabel("write outage (s); red: target, dotted: p95")
        ax.set_xlim(left=0)
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def write_series_report(runs: Sequence[DrillRun], folders: Sequence[str], reports_dir: Path,
                        secrets: Mapping[str, str]) -> Path:
    """Write ``reports_dir/drill-series/<UTC>/`` for these runs (``folders``: their own report folders)."""
    summary = summarize(runs)
    out = reports_dir / "drill-series" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(2, 100):  # bounded: two series in one second get distinct folders
        if not out.exists():
            break
        out = out.with_name(f"{out.name.split('~')[0]}~{n}")
    names = [Path(f).name for f in folders]
    data = json.dumps(result_json(summary, names), indent=1)
    md = markdown(summary, names, "outage.png")
    check_no_secrets([data, md], secrets)
    out.mkdir(parents=True)
    (out / "result.json").write_text(data, encoding="utf-8")
    (out / "report.md").write_text(md, encoding="utf-8")
    outage_png(summary, out / "outage.png")
    return out
