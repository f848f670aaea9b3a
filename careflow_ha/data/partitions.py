"""Partition layout, coverage and health of ``lab_results`` (months, then clinics; or months only).

All partition DDL goes through pg_partman (``create_partition_time``,
``create_partition_id``, ``run_maintenance_proc``, ``partition_data_id``);
this module only decides what is missing and reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql

from careflow_ha.data import clock
from careflow_ha.errors import EnvironmentProblem, UsageError

PARENT = "public.lab_results"
JOB_NAMES = ("careflow-partman-maintenance", "careflow-lab-results-daily")

_LAYOUT_SQL = r"""
SELECT m.relname,
       (regexp_match(pg_get_expr(m.relpartbound, m.oid), 'FROM \(''([^'']+)''\)'))[1]::timestamptz,
       (regexp_match(pg_get_expr(m.relpartbound, m.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz,
       pg_get_expr(m.relpartbound, m.oid) = 'DEFAULT',
       l.relname,
       (regexp_match(pg_get_expr(l.relpartbound, l.oid), 'FROM \((-?\d+)\)'))[1]::bigint,
       (regexp_match(pg_get_expr(l.relpartbound, l.oid), 'TO \((-?\d+)\)'))[1]::bigint,
       pg_get_expr(l.relpartbound, l.oid) = 'DEFAULT',
       greatest(l.reltuples, 0)::bigint,
       coalesce(pg_total_relation_size(l.oid), 0),
       m.relkind = 'p',
       greatest(m.reltuples, 0)::bigint,
       coalesce(pg_total_relation_size(m.oid), 0)
  FROM pg_inherits im
  JOIN pg_class m ON m.oid = im.inhrelid
  LEFT JOIN pg_inherits il ON il.inhparent = m.oid
  LEFT JOIN pg_class l ON l.oid = il.inhrelid
 WHERE im.inhparent = %s::regclass
 ORDER BY 2 NULLS FIRST, 6 NULLS FIRST
"""


@dataclass
class Leaf:
    table: str
    clinic_lo: int | None  # None for the month's default partition
    clinic_hi: int | None
    est_rows: int
    bytes: int


@dataclass
class Month:
    table: str
    start: datetime | None  # None: a month-level DEFAULT partition (must not exist)
    end: datetime | None
    leaves: list[Leaf] = field(default_factory=list)
    #: False for a months-only month (careflow_partition_scheme: months-only): one table, every clinic, no leaves.
    partitioned: bool = True
    est_rows: int = 0  # of a months-only month (a partitioned month's are its leaves')
    bytes: int = 0

    @property
    def is_default(self) -> bool:
        return self.start is None

    @property
    def default_leaf(self) -> Leaf | None:
        return next((leaf for leaf in self.leaves if leaf.clinic_lo is None), None)

    def clinics(self) -> set[int]:
        out: set[int] = set()
        for leaf in self.leaves:
            if leaf.clinic_lo is not None and leaf.clinic_hi is not None:
                out.update(range(leaf.clinic_lo, leaf.clinic_hi))
        return out


def layout(conn: psycopg.Connection, parent: str = PARENT) -> list[Month]:
    """The partition tree of ``parent`` (months, and their clinic leaves if per-clinic), oldest month first."""
    if conn.execute("SELECT to_regclass(%s)", (parent,)).fetchone()[0] is None:
        raise EnvironmentProblem(f"{parent} does not exist; run `careflow-ha data migrate` first")
    months: dict[str, Month] = {}
    for (mt, start, end, m_default, lt, lo, hi, l_default, est, size, m_partitioned, m_est, m_size) in conn.execute(
            _LAYOUT_SQL, (parent,)):
        month = months.setdefault(mt, Month(mt, None if m_default else start, None if m_default else end,
                                            partitioned=m_partitioned, est_rows=m_est, bytes=m_size))
        if lt is not None:
            month.leaves.append(Leaf(lt, None if l_default else lo, None if l_default else hi, est, size))
    return sorted(months.values(), key=lambda m: (m.start is not None, m.start or datetime.min.replace(tzinfo=UTC)))


def month_starts(first: date, last: date) -> list[date]:
    """First days of the months from ``first`` to ``last`` inclusive."""
    out, y, m = [], first.year, first.month
    while (y, m) <= (last.year, last.month):
        out.append(date(y, m, 1))
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def ensure_coverage(conn: psycopg.Connection, first_month: date, clinic_ids: list[int] | None = None,
                    parent: str = PARENT) -> dict[str, int]:
    """Make sure every month from ``first_month`` on, and every clinic in it, has a leaf.

    Missing months are created with ``partman.create_partition_time``, missing
    clinic leaves by the schema's ``ensure_clinic_leaves`` (which asks
    ``partman.create_partition_id``); ``clinic_ids`` defaults to the
    ``clinics`` table. Returns counts of what was created.
    """
    created = {"months": 0, "leaves": 0}
    tz = _tz(conn)
    have = {m.start.astimezone(tz).date().replace(day=1) for m in layout(conn, parent) if m.start}
    last = max(have) if have else first_month
    wanted = [d for d in month_starts(first_month, last) if d not in have]
    if wanted:
        conn.execute("SELECT partman.create_partition_time(%s, %s::timestamptz[])",
                     (parent, [datetime(d.year, d.month, d.day) for d in wanted]))
        created["months"] = len(wanted)
    created["leaves"] = conn.execute("SELECT ensure_clinic_leaves(%s, %s)", (parent, clinic_ids)).fetchone()[0]
    return created


def _tz(conn: psycopg.Connection) -> tzinfo:
    """The session time zone (the database's: Asia/Seoul), in which partition months are cut."""
    return ZoneInfo(conn.execute("SHOW timezone").fetchone()[0])


def covering_months(conn: psycopg.Connection, parent: str = PARENT) -> list[tuple[datetime, datetime]]:
    """[start, end) of every month partition: what an inserted row's collected_at must fall in."""
    return [(m.start, m.end) for m in layout(conn, parent) if m.start is not None and m.end is not None]


def parse_month(text: str, at: datetime | None = None) -> date:
    """'YYYY-MM' -> first day of that month, or a UsageError naming the format; ``at``: now (Seoul months)."""
    try:
        parsed = datetime.strptime(text, "%Y-%m")
    except ValueError:
        raise UsageError(f"--from {text!r} is not a month; use YYYY-MM, e.g. 2024-01") from None
    if clock.is_future_month(parsed.date(), at):
        raise UsageError(f"--from {text} is in the future; partitions for the future are premade by maintenance")
    return parsed.date()


@dataclass
class Check:
    name: str
    status: str  # ok | FAIL | info
    detail: str


def status(conn: psycopg.Connection) -> dict:
    """Months, leaves, sizes, partman settings and the scheduled jobs' last runs."""
    months = layout(conn)
    cfg = conn.execute(
        "SELECT premake, retention, retention_keep_table, infinite_time_partitions FROM partman.part_config "
        "WHERE parent_table = %s", (PARENT,)).fetchone()
    sub = conn.execute("SELECT sub_premake FROM partman.part_config_sub WHERE sub_parent = %s", (PARENT,)).fetchone()
    # Months-only months that migration 0010 rewrote in clinic order (CLUSTER marks the index it used).
    in_clinic_order = {r[0] for r in conn.execute(
        "SELECT i.indrelid::regclass::text FROM pg_index i JOIN pg_inherits h ON h.inhrelid = i.indrelid "
        "WHERE h.inhparent = %s::regclass AND i.indisclustered", (PARENT,))}
    rows = []
    for m in months:
        clinics = sorted(m.clinics())
        rows.append({
            "month": m.start.astimezone(_tz(conn)).strftime("%Y-%m") if m.start else "DEFAULT",
            "table": m.table,
            "leaves": len([leaf for leaf in m.leaves if leaf.clinic_lo is not None]) if m.partitioned else 1,
            "clinics": (f"{clinics[0]}-{clinics[-1]}" if clinics else "-") if m.partitioned else "all",
            "default": "yes" if m.default_leaf else "no",
            "est_rows": sum(leaf.est_rows for leaf in m.leaves) if m.partitioned else m.est_rows,
            "mb": round((sum(leaf.bytes for leaf in m.leaves) if m.partitioned else m.bytes) / 2**20, 1),
            "clinic_order": "-" if m.partitioned else ("yes" if m.table in in_clinic_order else "no"),
        })
    return {
        "parent": PARENT,
        "scheme": "per-clinic" if sub else ("converting" if any(m.partitioned for m in months) else "months-only"),
        "months": len([m for m in months if not m.is_default]),
        "leaves": sum(len(m.leaves) if m.partitioned else 1 for m in months),
        "premake_months": cfg[0] if cfg else None,
        "clinic_premake": sub[0] if sub else None,
        "retention": cfg[1] if cfg else None,
        "retention_keep_table": cfg[2] if cfg else None,
        "infinite_time_partitions": cfg[3] if cfg else None,
        "jobs": jobs(conn),
        "partitions": rows,
    }


def jobs(conn: psycopg.Connection) -> list[dict]:
    """Our pg_cron jobs with their last run (status, start)."""
    if conn.execute("SELECT to_regclass('cron.job')").fetchone()[0] is None:
        return []
    return [
        {"job": name, "schedule": schedule, "active": active, "last_status": st, "last_start": started,
         "last_message": message}
        for name, schedule, active, st, started, message in conn.execute(
            """SELECT j.jobname, j.schedule, j.active, d.status, d.start_time, d.return_message
                 FROM cron.job j
                 LEFT JOIN LATERAL (SELECT status, start_time, return_message FROM cron.job_run_details r
                                     WHERE r.jobid = j.jobid ORDER BY start_time DESC NULLS LAST LIMIT 1) d ON true
                WHERE j.jobname = ANY(%s) ORDER BY j.jobname""", (list(JOB_NAMES),))
    ]


def check(conn: psycopg.Connection) -> list[Check]:
    """Health checks for ``partitions check``; any FAIL names its fix."""
    out: list[Check] = []
    months = layout(conn)
    tz = _tz(conn)
    top_default = [m for m in months if m.is_default]
    out.append(Check("no month-level default", "FAIL" if top_default else "ok",
                     f"{top_default[0].table} exists: it blocks DETACH CONCURRENTLY; move its rows with "
                     "partman.partition_data_proc and drop it" if top_default else
                     "rows outside every month are rejected, never parked"))
    parked = []
    for m in months:
        leaf = m.default_leaf
        if leaf is not None:
            n = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier("public", leaf.table))
                             ).fetchone()[0]
            if n:
                parked.append(f"{leaf.table}: {n}")
    out.append(Check("clinic defaults empty", "FAIL" if parked else "ok",
                     ("rows for clinics without a leaf: " + ", ".join(parked) +
                      "; run `careflow-ha partitions maintain` to move them into new leaves") if parked else
                     f"{sum(1 for m in months if m.default_leaf)} month defaults hold no rows"))
    real = [m for m in months if not m.is_default and m.end is not None]
    cfg = conn.execute("SELECT premake FROM partman.part_config WHERE parent_table = %s", (PARENT,)).fetchone()
    premake = cfg[0] if cfg else 0
    now = datetime.now(tz)
    horizon = (now.replace(day=1) + timedelta(days=32 * premake)).replace(day=1)
    last_end = max((m.end for m in real), default=None)
    ahead_ok = last_end is not None and last_end.astimezone(tz) >= horizon
    out.append(Check("future months premade", "ok" if ahead_ok else "FAIL",
                     f"last month ends {last_end.astimezone(tz):%Y-%m-%d} (want >= {horizon:%Y-%m-%d}, premake "
                     f"{premake})" + ("" if ahead_ok else "; run `careflow-ha partitions maintain` and check the "
                                      "careflow-partman-maintenance job") if last_end else
                     "no month partitions at all; run `careflow-ha data migrate`"))
    clinic_ids = [r[0] for r in conn.execute("SELECT clinic_id FROM clinics ORDER BY 1")]
    # A months-only month holds every clinic: only clinic-partitioned months can lack a leaf.
    gaps = [f"{m.start.astimezone(tz):%Y-%m} lacks {sorted(set(clinic_ids) - m.clinics())[:5]}"
            for m in real if m.start and m.partitioned and set(clinic_ids) - m.clinics()]
    plain = sum(1 for m in real if not m.partitioned)
    out.append(Check("every clinic has a leaf in every month", "FAIL" if gaps else "ok",
                     ("; ".join(gaps[:3]) + (f" (+{len(gaps) - 3} more)" if len(gaps) > 3 else "") +
                      "; run `careflow-ha partitions maintain`") if gaps else
                     f"{len(clinic_ids)} clinics x {len(real)} months" +
                     (f" ({plain} months-only months: one table holds every clinic)" if plain else "")))
    job_rows = jobs(conn)
    found = {j["job"] for j in job_rows}
    bad = [j for j in job_rows if not j["active"] or j["last_status"] == "failed"]
    missing = [n for n in JOB_NAMES if n not in found]
    job_ok = not bad and not missing
    if job_ok:
        detail = ", ".join(f"{j['job']} ({j['schedule']}, last: {j['last_status'] or 'not run yet'})" for j in job_rows)
    elif any((j["last_message"] or "").startswith("connection failed") for j in bad):
        detail = (f"{[j['job'] for j in bad]} failed with 'connection failed': pg_cron connects over libpq unless "
                  "the server sets cron.use_background_workers = on; set it (and restart)")
    else:
        detail = (f"missing {missing} / failing {[(j['job'], j['last_message']) for j in bad]}; see "
                  "cron.job_run_details, and re-run `careflow-ha data migrate` for a missing job")
    out.append(Check("scheduled jobs", "ok" if job_ok else "FAIL", detail))
    q = conn.execute("SELECT count(*) FROM lab_results_quarantine").fetchone()[0]
    out.append(Check("quarantined CSV rows", "info", f"{q} rows in lab_results_quarantine (see their reasons)"))
    return out


def maintain(conn: psycopg.Connection, first_month: date | None = None) -> dict[str, int]:
    """Cover every clinic and ``first_month`` on, move parked rows, then run the scheduled maintenance now.

    ``conn`` must be in autocommit mode: run_maintenance_proc commits per parent.
    """
    before = layout(conn)
    firsts = [m.start.astimezone(_tz(conn)).date() for m in before if m.start]
    start = first_month or (min(firsts) if firsts else clock.clinic_date().replace(day=1))
    with conn.transaction():
        created = ensure_coverage(conn, start)
        moved = conn.execute("SELECT move_parked_rows()").fetchone()[0]
    conn.execute("CALL run_partition_maintenance()")  # exactly what the scheduled job runs
    after = layout(conn)
    return {
        "months_before": len(before), "months_after": len(after),
        "leaves_before": sum(len(m.leaves) if m.partitioned else 1 for m in before),
        "leaves_after": sum(len(m.leaves) if m.partitioned else 1 for m in after),
        "months_created_for_window": created["months"], "clinic_leaves_created": created["leaves"],
        "rows_moved_from_defaults": moved,
    }
