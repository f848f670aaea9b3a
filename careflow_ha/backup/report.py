"""Reports for backups, restores and the restore drills: Markdown + JSON + a timeline PNG per run.

Folder: ``reports/backup/<kind>-<UTC time>/`` with ``report.md``, ``result.json`` and ``timeline.png``, and
``reports/backup/index.md`` listing every run, newest first. The timeline shows each step as a bar and,
for the drills, every acknowledged probe write as a dot, so the gap a restore leaves is visible. Every
file is checked against the lab's secrets before it is written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on CI machines without a display
import matplotlib.pyplot as plt  # noqa: E402 - must follow the backend choice

from careflow_ha.settings import check_no_secrets  # noqa: E402

RESULT_NAME = "result.json"
INDEX_NAME = "index.md"


@dataclass
class Step:
    """One timed step of a run (epoch seconds); ``ended`` None: it did not finish."""

    name: str
    started: float
    ended: float | None = None
    note: str = ""

    @property
    def seconds(self) -> float | None:
        return None if self.ended is None else self.ended - self.started


@dataclass(frozen=True)
class Check:
    """One verdict of a run: what was required, what was seen, whether it held (None: not measured)."""

    name: str
    required: str
    observed: str
    ok: bool | None


@dataclass(frozen=True)
class Marks:
    """Acknowledged probe writes (epoch seconds) and named moments, for the timeline."""

    acks: Sequence[float] = ()
    moments: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class BackupReport:
    kind: str  # backup | verify | restore | accidental-delete | cluster-loss | replica-rebuild
    title: str
    started_at: float
    finished_at: float
    summary: str  # one paragraph: what was done and what came of it
    figures: Mapping[str, Any]
    steps: Sequence[Step] = ()
    checks: Sequence[Check] = ()
    notes: Sequence[str] = ()
    marks: Marks = Marks()

    @property
    def passed(self) -> bool:
        return all(c.ok is not False for c in self.checks)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return "-" if value is None else str(value)


def result_json(report: BackupReport) -> dict[str, Any]:
    return {
        "kind": report.kind,
        "title": report.title,
        "started_at": report.started_at,
        "finished_at": report.finished_at,
        "seconds": round(report.finished_at - report.started_at, 2),
        "passed": report.passed,
        "summary": report.summary,
        "figures": dict(report.figures),
        "steps": [{"name": s.name, "started": s.started, "ended": s.ended,
                   "seconds": None if s.ended is None else round(s.ended - s.started, 2), "note": s.note}
                  for s in report.steps],
        "checks": [{"name": c.name, "required": c.required, "observed": c.observed, "ok": c.ok}
                   for c in report.checks],
        "notes": list(report.notes),
    }


def markdown(report: BackupReport, png: str) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.started_at))
    lines = [f"# {report.title}", "", f"Started {when}; {report.finished_at - report.started_at:.1f} s in all. "
             f"Result: **{'PASS' if report.passed else 'MISS'}**.", "", report.summary, ""]
    if report.checks:
        lines += ["## Checks", "", "| check | required | observed | result |", "| --- | --- | --- | --- |"]
        lines += [f"| {c.name} | {c.required} | {c.observed} | "
                  f"{'PASS' if c.ok else ('not measured' if c.ok is None else '**MISS**')} |" for c in report.checks]
        lines.append("")
    lines += ["## Figures", "", "| figure | value |", "| --- | --- |"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in report.figures.items()]
    lines.append("")
    if report.steps:
        lines += ["## Steps", "", "| step | from start | took | note |", "| --- | --- | --- | --- |"]
        for s in report.steps:
            took = "did not finish" if s.ended is None else f"{s.ended - s.started:.1f} s"
            lines.append(f"| {s.name} | {s.started - report.started_at:.1f} s | {took} | {s.note} |")
        lines.append("")
    lines += [f"![timeline]({png})", ""]
    if report.notes:
        lines += ["## Notes", "", *[f"- {n}" for n in report.notes], ""]
    return "\n".join(lines)


def timeline_png(report: BackupReport, path: Path) -> None:
    origin = report.started_at
    steps = list(report.steps)
    lanes = len(steps) + (1 if report.marks.acks else 0)
    fig, ax = plt.subplots(figsize=(11, 1.6 + 0.45 * max(lanes, 1)), dpi=110)
    try:
        for i, s in enumerate(steps):
            end = s.ended if s.ended is not None else report.finished_at
            ax.barh(i, max(end - s.started, 0.05), left=s.started - origin, height=0.5,
                    color="tab:red" if s.ended is None else f"C{i % 10}")
        labels = [s.name for s in steps]
        if report.marks.acks:
            xs = [a - origin for a in report.marks.acks]
            ax.scatter(xs, [len(steps)] * len(xs), s=5, color="black")
            labels.append("acknowledged writes")
        for name, at in report.marks.moments.items():
            ax.axvline(at - origin, color="purple", linestyle="--", linewidth=1)
            ax.text(at - origin, max(lanes, 1) - 0.4, f" {name}", rotation=90, va="top", fontsize=7, color="purple")
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_ylim(-0.7, max(lanes, 1) - 0.3)
        ax.invert_yaxis()
        ax.set_xlabel("seconds from the start")
        ax.set_title(report.title)
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def write_report(report: BackupReport, reports_dir: Path, secrets: Mapping[str, str]) -> Path:
    """Write the run's folder under ``reports_dir/backup`` and refresh the index; return the folder."""
    base = reports_dir / "backup"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(report.started_at))
    out = base / f"{report.kind}-{stamp}"
    for n in range(2, 100):  # two runs in one second get distinct folders; bounded
        if not out.exists():
            break
        out = base / f"{report.kind}-{stamp}-{n}"
    data = json.dumps(result_json(report), indent=1, default=str)
    md = markdown(report, "timeline.png")
    check_no_secrets([data, md], secrets)
    out.mkdir(parents=True)
    (out / RESULT_NAME).write_text(data, encoding="utf-8")
    (out / "report.md").write_text(md, encoding="utf-8")
    timeline_png(report, out / "timeline.png")
    write_index(base)
    return out


def write_index(base: Path) -> Path:
    runs = []
    for result in base.glob(f"*/{RESULT_NAME}"):
        try:
            runs.append((json.loads(result.read_text(encoding="utf-8")), result.parent.name))
        except (OSError, json.JSONDecodeError):
            continue
    rows = []
    for r, folder in sorted(runs, key=lambda run: run[0].get("started_at", 0), reverse=True):
        rows.append(f"| {time.strftime('%Y-%m-%d %H:%M', time.gmtime(r.get('started_at', 0)))} "
                    f"| [{r.get('kind')}]({folder}/report.md) | {_fmt(r.get('seconds'))} s "
                    f"| {'PASS' if r.get('passed') else '**MISS**'} |")
    text = "\n".join(["# Backups, restores and restore drills", "", "Newest first.", "",
                      "| started (UTC) | run | took | result |", "| --- | --- | --- | --- |", *rows, ""])
    base.mkdir(parents=True, exist_ok=True)
    index = base / INDEX_NAME
    index.write_text(text, encoding="utf-8")
    return index
