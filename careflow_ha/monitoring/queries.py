"""Top statements from pg_stat_statements: what the server spends its time on.

pg_stat_statements normalises constants to ``$1, $2 ...``, so one row is one
statement shape with its calls, time, rows and buffer hits. The checks before
the query turn the two usual set-up gaps (library not preloaded, extension not
created) into one line that names the fix instead of a driver traceback.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import psycopg

from careflow_ha.errors import EnvironmentProblem, UsageError

SortKey = Literal["total", "mean", "calls"]
_ORDER = {"total": "total_exec_time", "mean": "mean_exec_time", "calls": "calls"}

_TOP = """
SELECT s.queryid, s.query, s.toplevel, r.rolname, s.calls, s.total_exec_time, s.mean_exec_time, s.rows,
       s.shared_blks_hit, s.shared_blks_read
  FROM pg_stat_statements s
  LEFT JOIN pg_roles r ON r.oid = s.userid
 WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND s.query NOT LIKE '%%pg_stat_statements%%'
 ORDER BY {order} DESC, s.queryid
 LIMIT %s
"""


@dataclass(frozen=True)
class Statement:
    """One normalised statement and its cumulative figures since the last reset."""

    queryid: int
    query: str
    toplevel: bool  # False: run inside a function or procedure (pg_stat_statements.track = all)
    role: str | None
    calls: int
    total_ms: float
    mean_ms: float
    rows: int
    shared_hit: int
    shared_read: int

    @property
    def hit_ratio(self) -> float | None:
        """Share of shared-buffer reads served from cache; None when it touched no buffer."""
        touched = self.shared_hit + self.shared_read
        return round(self.shared_hit / touched, 4) if touched else None

    @property
    def has_parameters(self) -> bool:
        """Whether the normalised text has ``$n`` placeholders (constants that were folded away)."""
        import re

        return re.search(r"\$\d+", self.query) is not None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_ms": round(self.total_ms, 3), "mean_ms": round(self.mean_ms, 3),
                "hit_ratio": self.hit_ratio}


_NOT_PRELOADED = ("pg_stat_statements is not preloaded (shared_preload_libraries={preload}); add it next to "
                  "pg_cron (careflow_postgresql_parameters in inventory/group_vars/all.yml) and restart the server "
                  "(patronictl restart careflow)")


def check_ready(conn: psycopg.Connection) -> None:
    """Raise EnvironmentProblem naming the fix if pg_stat_statements cannot answer here.

    Reading shared_preload_libraries needs pg_read_all_settings; without it the
    query itself tells (``top_statements`` maps that error to the same message).
    """
    try:
        preload = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()[0]
    except psycopg.errors.InsufficientPrivilege:
        if not conn.autocommit:
            conn.rollback()
        preload = None
    if preload is not None and "pg_stat_statements" not in [p.strip() for p in preload.split(",")]:
        raise EnvironmentProblem(_NOT_PRELOADED.format(preload=repr(preload)))
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'").fetchone() is None:
        db = conn.execute("SELECT current_database()").fetchone()[0]
        raise EnvironmentProblem(
            f"extension pg_stat_statements is not created in database {db}; run CREATE EXTENSION "
            "pg_stat_statements there as a superuser")


def top_statements(conn: psycopg.Connection, by: SortKey = "total", limit: int = 10) -> list[Statement]:
    """The ``limit`` statements of this database with the most total time, mean time or calls."""
    if by not in _ORDER:
        raise UsageError(f"--by {by!r}: choose one of {', '.join(_ORDER)}")
    if limit < 1:
        raise UsageError(f"--limit {limit}: give at least 1")
    check_ready(conn)
    try:
        cur = conn.execute(_TOP.format(order=_ORDER[by]), (limit,))  # type: ignore[arg-type]
    except psycopg.errors.ObjectNotInPrerequisiteState:
        raise EnvironmentProblem(_NOT_PRELOADED.format(preload="unknown to this role")) from None
    return [Statement(queryid=r[0], query=r[1], toplevel=r[2], role=r[3], calls=r[4], total_ms=r[5], mean_ms=r[6],
                      rows=r[7], shared_hit=r[8], shared_read=r[9]) for r in cur]


def privileged_text_missing(statements: list[Statement]) -> bool:
    """True when some statement texts are hidden from this role (it lacks pg_read_all_stats)."""
    return any(s.query == "<insufficient privilege>" for s in statements)


def one_line(query: str, width: int = 90) -> str:
    """The statement on one line, cut to ``width`` characters for a table."""
    flat = " ".join(query.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
