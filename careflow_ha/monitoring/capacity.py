"""``careflow-ha capacity``: how big the cluster gets, month by month, from measured figures.

Measured on the target database, never assumed:

- bytes per lab_results row (heap, indexes, TOAST) per month partition, and
  the rest of the database next to it;
- WAL per 1,000 lab_results writes: a batch of copies of recent rows is
  inserted inside a transaction that is always rolled back, with
  pg_current_wal_lsn() read around it (concurrent writers inflate it: run it
  on a quiet cluster);
- leaves per month (clinic leaves, the default and the premade spare), from the partition tree;
- the Parquet ratio of archived months from the archive's manifests (read as
  files: this module does not import the archive feature), else
  ``DEFAULT_PARQUET_RATIO``.

- the pgBackRest repository's stored / database ratio, from the newest full
  backup's report (``reports/backup/backup-*/result.json``, read as a file:
  this module does not import the backup feature either).

Growth comes from ``--rows-per-day``, from a load report (the rate at which
the run posted lab panels, sustained all day: an upper bound), or by default
from the rows collected in the database's last 30 days.

The projection itself (:func:`project`) is pure: figures in, months out.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from careflow_ha.data import clock
from careflow_ha.data.db import connect
from careflow_ha.dsn import redact
from careflow_ha.errors import EnvironmentProblem, UsageError
from careflow_ha.monitoring import report_folder

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent
REPORTS_DIR = PROJECT_DIR / "reports" / "capacity"
DEFAULT_ARCHIVE_DIR = PROJECT_DIR / "archive"
#: heap / Parquet (zstd) for a month of lab_results, when no manifest gives a measured one.
DEFAULT_PARQUET_RATIO = 11.0
#: Months kept in the hot database before `archive run --older-than 24months` moves them out.
DEFAULT_RETAIN_MONTHS = 24
DAYS_PER_MONTH = 365.25 / 12
DEFAULT_BACKUP_REPORTS = PROJECT_DIR / "reports" / "backup"
#: The schedule roles/pgbackrest installs: a full backup weekly, a differential on the other days.
DAYS_BETWEEN_FULLS = 7
_MONTH_NAME = re.compile(r"_p(\d{4})_(\d{2})$")


@dataclass(frozen=True)
class MonthSize:
    """One month partition of lab_results as it is now."""

    month: str  # YYYY-MM
    rows: int
    heap: int
    indexes: int
    toast: int
    leaves: int
    forks: int = 0  # free space and visibility maps: on disk too

    @property
    def total(self) -> int:
        return self.heap + self.indexes + self.toast + self.forks


@dataclass(frozen=True)
class Figures:
    """Everything the projection rests on; each figure says where it came from in ``sources``."""

    now_month: str  # YYYY-MM, Seoul calendar
    months: tuple[MonthSize, ...]
    rest_bytes: int  # every other table, index and catalog of the database
    wal_bytes_per_1000_rows: float
    parquet_ratio: float
    leaves_per_month: float
    future_partitions: int  # premade months after now_month
    wal_reserve_bytes: int  # pg_wal headroom per node: max_wal_size + wal_keep_size
    rows_per_day: float
    sources: dict[str, str] = field(default_factory=dict)
    #: stored / database bytes of the newest full backup; None: no full backup report to measure it from.
    backup_ratio: float | None = None
    backup_retention_full: int = 2  # careflow_backup_retention_full
    backup_retention_diff: int = 7  # careflow_backup_retention_diff

    @property
    def lab_rows(self) -> int:
        return sum(m.rows for m in self.months)

    @property
    def bytes_per_row(self) -> float | None:
        rows = self.lab_rows
        return sum(m.total for m in self.months) / rows if rows else None

    @property
    def heap_per_row(self) -> float | None:
        rows = self.lab_rows
        return sum(m.heap for m in self.months) / rows if rows else None


@dataclass(frozen=True)
class MonthProjection:
    """The cluster at the end of one projected month."""

    month: str
    hot_lab_bytes: int
    rest_bytes: int
    node_bytes: int  # what one database node holds: hot database + pg_wal reserve
    archive_bytes: int
    hot_months: int
    partitions: int  # month partitions attached (hot months + premade)
    leaves: int
    wal_bytes: int  # WAL written that month by lab_results inserts
    disk_full: bool
    backup_bytes: int | None = None  # the pgBackRest repository (None: no ratio measured)


def _add_months(month: str, n: int) -> str:
    y, m = map(int, month.split("-"))
    idx = y * 12 + (m - 1) + n
    return f"{idx // 12:04d}-{idx % 12 + 1:02d}"


def _months_between(a: str, b: str) -> int:
    ya, ma = map(int, a.split("-"))
    yb, mb = map(int, b.split("-"))
    return (yb * 12 + mb) - (ya * 12 + ma)


def validate(years: float, rows_per_day: float | None, disk_gb: float | None, retain_months: int) -> None:
    """Bad input fails before any measuring, in one line that names the fix."""
    if not years or years <= 0 or math.isnan(years):
        raise UsageError(f"--years {years:g}: give a positive number of years, e.g. --years 3")
    if years > 50:
        raise UsageError(f"--years {years:g}: at most 50")
    if rows_per_day is not None and (rows_per_day < 0 or math.isnan(rows_per_day)):
        raise UsageError(f"--rows-per-day {rows_per_day:g}: growth cannot be negative; give 0 for no growth")
    if disk_gb is not None and (disk_gb <= 0 or math.isnan(disk_gb)):
        raise UsageError(f"--disk-gb {disk_gb:g}: give the disk size of one database node in GB (> 0)")
    if retain_months < 1:
        raise UsageError(f"--retain-months {retain_months}: keep at least 1 month in the hot database")


def project(fig: Figures, years: float, *, retain_months: int = DEFAULT_RETAIN_MONTHS,
            disk_gb: float | None = None) -> list[MonthProjection]:
    """Month by month for ``years``: months older than ``retain_months`` move to the archive.

    Future months get ``rows_per_day`` rows at the measured bytes per row; the
    rest of the database grows with the lab_results rows added (visits and
    dimensions grow with the results that reference them), in proportion to
    what it is now. One node holds a full copy plus its pg_wal reserve.
    """
    validate(years, fig.rows_per_day, disk_gb, retain_months)
    per_row, heap_per_row = fig.bytes_per_row, fig.heap_per_row
    if per_row is None or heap_per_row is None:
        if fig.rows_per_day:
            raise UsageError("lab_results is empty, so no bytes per row can be measured; load data first "
                             "(careflow-ha data load) and run capacity again")
        per_row = heap_per_row = 0.0
    rest_per_row = fig.rest_bytes / fig.lab_rows if fig.lab_rows else 0.0
    rows_per_month = fig.rows_per_day * DAYS_PER_MONTH
    existing = {m.month: m for m in fig.months}
    disk = disk_gb * 1e9 if disk_gb else None
    out: list[MonthProjection] = []
    added_rows = 0.0
    for i in range(1, int(round(years * 12)) + 1):
        month = _add_months(fig.now_month, i)
        added_rows += rows_per_month
        first_hot = _add_months(month, -(retain_months - 1))
        # Every month up to this one that has data: the measured ones, then the projected ones.
        months: dict[str, tuple[float, float, float]] = {  # month -> (rows, total bytes, heap bytes)
            k: (m.rows, m.total, m.heap) for k, m in existing.items() if k <= month}
        for j in range(1, i + 1):
            future = _add_months(fig.now_month, j)
            rows, total, heap = months.get(future, (0.0, 0.0, 0.0))
            months[future] = (rows + rows_per_month, total + rows_per_month * per_row,
                              heap + rows_per_month * heap_per_row)
        hot = {k: v for k, v in months.items() if k >= first_hot}
        archived = {k: v for k, v in months.items() if k < first_hot}
        hot_lab = sum(v[1] for v in hot.values())
        rest = fig.rest_bytes + rest_per_row * added_rows
        node = hot_lab + rest + fig.wal_reserve_bytes
        hot_months = len({k for k in existing if k >= first_hot and k <= month} | {
            _add_months(fig.now_month, j) for j in range(1, i + 1) if _add_months(fig.now_month, j) >= first_hot})
        partitions = hot_months + fig.future_partitions
        out.append(MonthProjection(
            month=month, hot_lab_bytes=round(hot_lab), rest_bytes=round(rest), node_bytes=round(node),
            archive_bytes=round(sum(v[2] for v in archived.values()) / fig.parquet_ratio) if fig.parquet_ratio
            else 0, hot_months=hot_months, partitions=partitions, leaves=round(partitions * fig.leaves_per_month),
            wal_bytes=round(rows_per_month * fig.wal_bytes_per_1000_rows / 1000),
            disk_full=disk is not None and node > disk,
            backup_bytes=repository_bytes(fig, hot_lab + rest, per_row)))
    return out


def repository_bytes(fig: Figures, database_bytes: float, per_row: float) -> int | None:
    """The pgBackRest repository when the database is ``database_bytes``: fulls, the diffs of one cycle, WAL.

    - ``backup_retention_full`` full backups, each as big as the database now
      (an upper bound: older fulls were smaller) at the measured stored ratio;
    - the differentials of one weekly cycle: the one taken d days after the
      full holds the rows of those d days, so n of them hold 1 + ... + n days;
    - the WAL archive back to the oldest retained full (pgBackRest expires the
      rest), from the measured WAL per row, at the same stored ratio: an
      estimate, since WAL and table files compress differently.
    """
    if fig.backup_ratio is None:
        return None
    ratio = fig.backup_ratio
    diffs = min(fig.backup_retention_diff, DAYS_BETWEEN_FULLS - 1)
    diff_bytes = diffs * (diffs + 1) / 2 * fig.rows_per_day * per_row
    wal_days = fig.backup_retention_full * DAYS_BETWEEN_FULLS
    wal_bytes = wal_days * fig.rows_per_day * fig.wal_bytes_per_1000_rows / 1000
    return round((fig.backup_retention_full * database_bytes + diff_bytes + wal_bytes) * ratio)


def backup_ratio_from_reports(backup_dir: Path) -> tuple[float | None, str]:
    """stored / database bytes of the newest full backup's report, or None (and what to run) when none exists."""
    for path in sorted(backup_dir.glob("backup-*/result.json"), reverse=True):  # folder names sort by UTC time
        try:
            figures = json.loads(path.read_text())["figures"]
            if figures.get("type") != "full":
                continue
            database, stored = float(figures["database_MB"]), float(figures["stored_MB"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if database > 0:
            return stored / database, (f"full backup {figures.get('label', path.parent.name)}: {stored:.1f} MB stored "
                                       f"for {database:.1f} MB of database")
    return None, (f"no full backup report in {backup_dir}: backups are not projected (run careflow-ha backup run "
                  "--type full, then capacity again)")


def runs_out(months: list[MonthProjection]) -> str | None:
    """The first month in which one node's disk is full, or None."""
    return next((m.month for m in months if m.disk_full), None)


# -- growth sources ------------------------------------------------------------------
def rows_per_panel(conn: psycopg.Connection) -> float:
    """Rows one posted panel inserts, on average over species and panels (as load's lab.post_results does)."""
    value = conn.execute(
        "SELECT avg(n) FROM (SELECT count(*) AS n FROM lab_reference_ranges r "
        "JOIN lab_test_catalog c ON c.test_code = r.test_code GROUP BY r.species, c.panel) s").fetchone()[0]
    return float(value or 0.0)


def read_load_report(path: Path) -> tuple[int, float, str]:
    """(lab panels posted, seconds, run id) from a load run's report.json (or its folder)."""
    report_file = path / "report.json" if path.is_dir() else path
    if not report_file.is_file():
        raise UsageError(f"--growth-from-load {path}: no such file; give reports/load/<run>/report.json")
    try:
        rep = json.loads(report_file.read_text())
        seconds = float(rep["summary"]["seconds"])
        ops = {o["op"]: o for o in rep["summary"]["operations"]}
        run_id = str(rep["meta"]["run_id"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UsageError(f"--growth-from-load {path}: not a load report (report.json of `careflow-ha load`); "
                         "run a load first or give --rows-per-day") from None
    post = ops.get("lab.post_results")
    ok = int(post["requests"]) - int(post.get("failures", 0)) if post else 0
    if ok <= 0 or seconds <= 0:
        raise UsageError(f"--growth-from-load {path}: the run posted no lab results; use a profile with lab users "
                         "or give --rows-per-day")
    return ok, seconds, run_id


def growth_from_load(path: Path, panel_rows: float) -> tuple[float, str]:
    """(rows per day, how) from a load run: its lab.post_results rate, sustained all day (an upper bound)."""
    ok, seconds, run_id = read_load_report(path)
    per_day = ok / seconds * panel_rows * 86400
    return per_day, (f"load run {run_id}: {ok} panels in {seconds:g} s x {panel_rows:.1f} rows per panel, "
                     "sustained 24 h a day (an upper bound)")


def growth_from_data(conn: psycopg.Connection) -> tuple[float, str]:
    """(rows per day, how) from the rows collected in the last 30 days."""
    rows = conn.execute("SELECT count(*) FROM lab_results WHERE collected_at >= now() - interval '30 days' "
                        "AND collected_at < now()").fetchone()[0]
    return rows / 30.0, f"rows collected in the database's last 30 days ({rows})"


# -- measuring -------------------------------------------------------------------------
_MONTHS_SQL = """
SELECT m.relname,
       count(l.relid) FILTER (WHERE l.isleaf),
       coalesce(sum(pg_relation_size(l.relid)) FILTER (WHERE l.isleaf), 0),
       coalesce(sum(pg_indexes_size(l.relid)) FILTER (WHERE l.isleaf), 0),
       coalesce(sum(CASE WHEN c.reltoastrelid <> 0 THEN pg_total_relation_size(c.reltoastrelid) ELSE 0 END)
                FILTER (WHERE l.isleaf), 0),
       coalesce(sum(pg_total_relation_size(l.relid)) FILTER (WHERE l.isleaf), 0)
  FROM pg_inherits i
  JOIN pg_class m ON m.oid = i.inhrelid
  CROSS JOIN LATERAL pg_partition_tree(m.oid) l
  JOIN pg_class c ON c.oid = l.relid
 WHERE i.inhparent = 'lab_results'::regclass
 GROUP BY m.relname ORDER BY m.relname
"""


def measure_months(conn: psycopg.Connection) -> list[MonthSize]:
    """Sizes and exact row counts of every lab_results month partition."""
    out = []
    for name, leaves, heap, idx, toast, total in conn.execute(_MONTHS_SQL).fetchall():
        match = _MONTH_NAME.search(name)
        if not match:
            continue
        rows = conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(name))
                            ).fetchone()[0]
        out.append(MonthSize(month=f"{match[1]}-{match[2]}", rows=rows, heap=int(heap), indexes=int(idx),
                             toast=int(toast), leaves=leaves, forks=int(total) - int(heap) - int(idx) - int(toast)))
    return out


def measure_wal_per_1000(conn: psycopg.Connection, sample_rows: int = 1000) -> tuple[float, str]:
    """WAL bytes per 1,000 inserted lab_results rows, from a rolled-back batch of copies of recent rows."""
    if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
        raise UsageError("capacity measures WAL with a rolled-back insert, which a replica cannot do; point --dsn "
                         "at the primary (port 5000)")
    with conn.transaction(force_rollback=True):
        before = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
        cur = conn.execute(
            "INSERT INTO lab_results (clinic_id, collected_at, pet_id, visit_id, test_code, value, flag) "
            "SELECT clinic_id, collected_at, pet_id, visit_id, test_code, value, flag FROM lab_results "
            "WHERE collected_at < now() ORDER BY collected_at DESC LIMIT %s", (sample_rows,))
        inserted = cur.rowcount
        wal = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", (before,)).fetchone()[0]
    if inserted <= 0:
        return 0.0, "not measured: lab_results has no rows to copy"
    fpw = conn.execute("SELECT current_setting('full_page_writes'), current_setting('wal_compression')").fetchone()
    return (float(wal) * 1000 / inserted,
            f"{inserted} rows inserted and rolled back: {int(wal)} WAL bytes (full_page_writes={fpw[0]}, "
            f"wal_compression={fpw[1]}; other writers at the same time would add to it)")


def parquet_ratio_from_manifests(archive_dir: Path) -> tuple[float, str]:
    """heap / Parquet over archived months whose manifests hold both sizes, else the default."""
    heap = parquet = months = 0
    for path in sorted((archive_dir / "lab_results").glob("month=*/manifest.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("heap_bytes") and data.get("file_bytes") and data.get("state") in {"verified", "dropped",
                                                                                    "detached", "archived"}:
            heap += int(data["heap_bytes"])
            parquet += int(data["file_bytes"])
            months += 1
    if months and parquet:
        return heap / parquet, f"{months} archived month(s) in {archive_dir}: heap / Parquet"
    return DEFAULT_PARQUET_RATIO, (f"no archived month with sizes in {archive_dir}: the default "
                                   f"{DEFAULT_PARQUET_RATIO:g}x")


def measure(dsn: str, *, rows_per_day: float | None = None, load_report: Path | None = None,
            archive_dir: Path = DEFAULT_ARCHIVE_DIR, backup_dir: Path = DEFAULT_BACKUP_REPORTS,
            backup_retention: tuple[int, int] = (2, 7), wal_sample_rows: int = 1000,
            at: datetime | None = None, log: Callable[[str], None] = lambda _: None) -> Figures:
    """Measure every figure on ``dsn`` (read-only apart from the rolled-back WAL batch)."""
    if rows_per_day is not None and load_report is not None:
        raise UsageError("give either --rows-per-day or --growth-from-load, not both")
    if load_report is not None:
        read_load_report(load_report)  # a bad file fails before anything is measured
    now_month = clock.seoul_month_start(at or clock.now()).strftime("%Y-%m")
    sources: dict[str, str] = {}
    with connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('lab_results')").fetchone()[0] is None:
            raise EnvironmentProblem(f"{redact(dsn)} has no lab_results table; run careflow-ha data migrate first")
        log("capacity: lab_results partitions (sizes, exact row counts)")
        months = measure_months(conn)
        lab_total = sum(m.total for m in months)
        db_size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        log("capacity: WAL per 1,000 rows (rolled-back insert)")
        wal, sources["wal_bytes_per_1000_rows"] = measure_wal_per_1000(conn, wal_sample_rows)
        max_wal, keep = conn.execute(
            "SELECT pg_size_bytes(current_setting('max_wal_size')), pg_size_bytes(current_setting('wal_keep_size'))"
        ).fetchone()
        if load_report is not None:
            rows_per_day, sources["rows_per_day"] = growth_from_load(load_report, rows_per_panel(conn))
        elif rows_per_day is None:
            rows_per_day, sources["rows_per_day"] = growth_from_data(conn)
        else:
            sources["rows_per_day"] = "--rows-per-day"
    ratio, sources["parquet_ratio"] = parquet_ratio_from_manifests(archive_dir)
    backup_ratio, sources["backup_ratio"] = backup_ratio_from_reports(backup_dir)
    with_data = [m for m in months if m.leaves]
    leaves = sum(m.leaves for m in with_data) / len(with_data) if with_data else 0.0
    future = sum(1 for m in months if m.month > now_month)
    sources["bytes_per_row"] = (f"{len(months)} month partition(s) of lab_results: pg_total_relation_size "
                                "(heap, indexes, TOAST, free space and visibility maps) / rows")
    sources["rest_bytes"] = "pg_database_size minus lab_results"
    sources["wal_reserve_bytes"] = "max_wal_size + wal_keep_size of the server"
    return Figures(now_month=now_month, months=tuple(months), rest_bytes=max(0, db_size - lab_total),
                   wal_bytes_per_1000_rows=wal, parquet_ratio=ratio, leaves_per_month=leaves,
                   future_partitions=future, wal_reserve_bytes=int(max_wal) + int(keep),
                   rows_per_day=float(rows_per_day), sources=sources, backup_ratio=backup_ratio,
                   backup_retention_full=backup_retention[0], backup_retention_diff=backup_retention[1])


# -- report ----------------------------------------------------------------------------
def _gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def build_report(fig: Figures, months: list[MonthProjection], *, years: float, retain_months: int,
                 disk_gb: float | None, target: str) -> dict[str, Any]:
    full = runs_out(months)
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"), "target": target, "years": years,
        "retain_months": retain_months, "disk_gb": disk_gb, "runs_out": full,
        "figures": {**{k: v for k, v in asdict(fig).items() if k != "months"},
                    "lab_rows": fig.lab_rows, "bytes_per_row": fig.bytes_per_row, "heap_per_row": fig.heap_per_row,
                    "months": [{**asdict(m), "bytes_per_row": round(m.total / m.rows, 1) if m.rows else None}
                               for m in fig.months]},
        "projection": [asdict(m) for m in months],
    }


def verdict(report: dict[str, Any]) -> str:
    """One sentence: when one node's disk runs out, or that it does not within the horizon."""
    if report["disk_gb"] is None:
        last = report["projection"][-1] if report["projection"] else None
        return ("no --disk-gb given: " + (f"one node needs {_gb(last['node_bytes'])} GB by {last['month']}"
                                          if last else "nothing projected"))
    if report["runs_out"]:
        return f"a {report['disk_gb']:g} GB disk per node runs out in {report['runs_out']}"
    return f"a {report['disk_gb']:g} GB disk per node does not run out within {report['years']:g} years"


def render_markdown(report: dict[str, Any]) -> str:
    f = report["figures"]
    bpr = f["bytes_per_row"]
    backup_ratio = "-" if f["backup_ratio"] is None else f"{f['backup_ratio']:.3f}"
    lines = [f"# Capacity projection ({report['generated_at']})", "", f"Target: `{report['target']}`", "",
             f"**{verdict(report)}.**", "", "## Measured figures", "",
             "| figure | value | from |", "|---|---:|---|",
             f"| lab_results rows now | {f['lab_rows']} | exact count over the month partitions |",
             f"| bytes per row (everything on disk) | {'-' if bpr is None else f'{bpr:.1f}'} | "
             f"{f['sources'].get('bytes_per_row', '')} |",
             f"| rest of the database | {_gb(f['rest_bytes'])} GB | {f['sources'].get('rest_bytes', '')} |",
             f"| WAL per 1,000 rows | {f['wal_bytes_per_1000_rows']:.0f} B | "
             f"{f['sources'].get('wal_bytes_per_1000_rows', '')} |",
             f"| Parquet ratio (heap / Parquet) | {f['parquet_ratio']:.1f}x | "
             f"{f['sources'].get('parquet_ratio', '')} |",
             f"| leaves per month | {f['leaves_per_month']:.1f} | partition tree (clinic leaves, the default and "
             "the premade spare) |",
             f"| growth | {f['rows_per_day']:.0f} rows/day | {f['sources'].get('rows_per_day', '')} |",
             f"| pg_wal reserve per node | {_gb(f['wal_reserve_bytes'])} GB | "
             f"{f['sources'].get('wal_reserve_bytes', '')} |",
             f"| backup stored ratio | {backup_ratio} | "
             f"{f['sources'].get('backup_ratio', '')}; retention {f['backup_retention_full']} full, "
             f"{f['backup_retention_diff']} diff |", "",
             "## Month partitions now", "", "| month | rows | leaves | heap MB | indexes MB | TOAST MB | bytes/row |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {m['month']} | {m['rows']} | {m['leaves']} | {m['heap'] / 1e6:.2f} | {m['indexes'] / 1e6:.2f} | "
              f"{m['toast'] / 1e6:.2f} | {m['bytes_per_row'] if m['bytes_per_row'] is not None else '-'} |"
              for m in f["months"]]
    lines += ["", f"## Projection (hot database keeps {report['retain_months']} months; older ones are archived)",
              "", "| month | one node GB | hot lab_results GB | rest GB | archive GB | hot months | partitions | "
              "leaves | WAL GB/month | backup repository GB | disk |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {p['month']} | {_gb(p['node_bytes'])} | {_gb(p['hot_lab_bytes'])} | {_gb(p['rest_bytes'])} | "
              f"{_gb(p['archive_bytes'])} | {p['hot_months']} | {p['partitions']} | {p['leaves']} | "
              f"{_gb(p['wal_bytes'])} | {'-' if p['backup_bytes'] is None else _gb(p['backup_bytes'])} | "
              f"{'FULL' if p['disk_full'] else ''} |" for p in report["projection"]]
    lines += ["", "Assumptions: one node holds a full copy (every replica is the same size) plus its pg_wal "
              "reserve; the rest of the database grows in proportion to the lab_results rows added; WAL counts "
              "lab_results inserts only (no updates, vacuum or checkpoints' full-page images beyond what the "
              "sample saw); the backup repository keeps its retention's full backups at the database's size of that "
              "month, one weekly cycle of differentials and the WAL back to the oldest full, all at the measured "
              "stored ratio (for WAL an estimate); GB = 10^9 bytes.", "", "![capacity](capacity.png)", ""]
    return "\n".join(lines)


def _chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    proj = report["projection"]
    labels = [p["month"] for p in proj]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ax.plot(labels, [p["node_bytes"] / 1e9 for p in proj], label="one database node", color="tab:blue")
    ax.plot(labels, [p["hot_lab_bytes"] / 1e9 for p in proj], label="hot lab_results", color="tab:cyan")
    ax.plot(labels, [p["archive_bytes"] / 1e9 for p in proj], label="archive (Parquet)", color="tab:green")
    if proj and proj[0]["backup_bytes"] is not None:
        ax.plot(labels, [p["backup_bytes"] / 1e9 for p in proj], label="backup repository", color="tab:orange")
    if report["disk_gb"]:
        ax.axhline(report["disk_gb"], color="tab:red", linestyle="--", label=f"disk {report['disk_gb']:g} GB")
    ax.set(ylabel="GB", title=f"Capacity: {verdict(report)}")
    ax2 = ax.twinx()
    ax2.step(labels, [p["leaves"] for p in proj], where="post", color="grey", alpha=0.6, label="leaves")
    ax2.set_ylabel("leaves (partitions)", color="grey")
    ax2.set_ylim(bottom=0)
    step = max(1, len(labels) // 12)
    ax.set_xticks(range(0, len(labels), step), labels[::step], rotation=60, fontsize=7)
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict[str, Any], out_dir: Path | None = None) -> Path:
    """capacity.md, capacity.json and capacity.png in ``<out_dir>/<UTC time>/``; returns the folder."""
    folder = report_folder(out_dir or REPORTS_DIR)
    (folder / "capacity.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (folder / "capacity.md").write_text(render_markdown(report))
    _chart(report, folder / "capacity.png")
    return folder

