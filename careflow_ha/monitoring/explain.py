"""EXPLAIN evidence for a statement: its plan, summarised to what a DBA decides on.

Two modes, because pg_stat_statements keeps statement shapes, not values:

- A statement without parameters runs under ``EXPLAIN (ANALYZE, BUFFERS,
  FORMAT JSON)`` inside a READ ONLY transaction with a statement timeout that
  is always rolled back: the plan is measured, and nothing is ever written.
- A statement with ``$n`` parameters gets its generic plan, not executed.
  PostgreSQL 15 has no ``EXPLAIN (GENERIC_PLAN)`` (that is 16), so it is
  ``PREPARE`` + ``plan_cache_mode = force_generic_plan`` + ``EXPLAIN EXECUTE``
  with NULL for every parameter, and ``enable_partition_pruning = off``:
  otherwise the executor's initial pruning runs with those NULLs and removes
  every leaf (seen on lab_results: 96 of 96), which describes no real call.
  What remains is the shape the server reuses for every call (node types,
  join order, every leaf it may read); which leaves a real call reads is
  decided per call by run-time pruning, and only ANALYZE with real values
  shows it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

#: Node types that read a relation (their "Relation Name" is a table or a partition).
_SCANS = ("Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Tid Scan", "Tid Range Scan",
          "Sample Scan")


@dataclass(frozen=True)
class PlanSummary:
    """What a plan does, in the figures a decision rests on."""

    mode: str  # "analyze" (executed, rolled back), "generic" (not executed) or "skipped"
    node_types: dict[str, int] = field(default_factory=dict)
    relations: list[str] = field(default_factory=list)  # tables/partitions read, in plan order
    subplans_removed: int = 0
    plan_rows: float | None = None  # planner's estimate at the top node
    actual_rows: float | None = None  # analyze only
    planning_ms: float | None = None
    execution_ms: float | None = None  # analyze only
    shared_hit: int | None = None
    shared_read: int | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def one_line(self) -> str:
        """A short human summary for a table cell."""
        if self.mode == "skipped":
            return f"skipped: {self.note}"
        nodes = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in self.node_types.items())
        parts = [f"{self.mode}: {nodes}", f"{len(self.relations)} relation(s)"]
        if self.mode == "analyze":
            parts += [f"{self.actual_rows:g} rows", f"{self.execution_ms} ms",
                      f"buffers hit {self.shared_hit} read {self.shared_read}"]
        else:
            parts.append(f"~{self.plan_rows:g} rows est.")
        return "; ".join(parts)


def summarise(plan_json: dict[str, Any], mode: str, note: str = "") -> PlanSummary:
    """Walk one EXPLAIN (FORMAT JSON) document into a PlanSummary."""
    top = plan_json["Plan"]
    types: Counter[str] = Counter()
    relations: list[str] = []
    removed = 0
    stack = [top]
    while stack:
        node = stack.pop(0)
        types[node["Node Type"]] += 1
        if node["Node Type"] in _SCANS and "Relation Name" in node:
            name = node["Relation Name"]
            relations.append(f"{node['Schema']}.{name}" if node.get("Schema") else name)
        removed += int(node.get("Subplans Removed", 0))
        stack += node.get("Plans", [])
    analyzed = mode == "analyze"
    return PlanSummary(
        mode=mode, node_types=dict(types), relations=relations, subplans_removed=removed,
        plan_rows=top.get("Plan Rows"), actual_rows=top.get("Actual Rows") if analyzed else None,
        planning_ms=round(plan_json["Planning Time"], 3) if "Planning Time" in plan_json else None,
        execution_ms=round(plan_json["Execution Time"], 3) if analyzed and "Execution Time" in plan_json else None,
        shared_hit=top.get("Shared Hit Blocks") if analyzed else None,
        shared_read=top.get("Shared Read Blocks") if analyzed else None, note=note)


def parameter_count(statement: str) -> int:
    """The highest ``$n`` in a normalised statement (0 when it has none)."""
    return max((int(n) for n in re.findall(r"\$(\d+)", statement)), default=0)


def _read_only_kind(statement: str) -> bool:
    head = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else ""
    return head in {"SELECT", "WITH", "VALUES", "TABLE"}


def explain(conn: psycopg.Connection, statement: str, *, timeout_ms: int = 30_000) -> PlanSummary:
    """The statement's plan: measured if it has no parameters, generic if it has; never writes.

    ``conn`` must not be inside a transaction; it is left outside one.
    """
    if not _read_only_kind(statement):
        return PlanSummary(mode="skipped", note="not a read-only statement (EXPLAIN ANALYZE would run the write)")
    n = parameter_count(statement)
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET TRANSACTION READ ONLY")
            conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(timeout_ms)))
            if n == 0:
                doc = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ") + sql.SQL(statement)
                                   ).fetchone()[0][0]
                return summarise(doc, "analyze", "executed in a READ ONLY transaction, rolled back")
            conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            conn.execute("SET LOCAL enable_partition_pruning = off")
            conn.execute(sql.SQL("PREPARE careflow_explain AS ") + sql.SQL(statement))
            nulls = sql.SQL(", ").join([sql.NULL] * n)
            doc = conn.execute(sql.SQL("EXPLAIN (SUMMARY, FORMAT JSON) EXECUTE careflow_explain ({})").format(nulls)
                               ).fetchone()[0][0]
            return summarise(doc, "generic", f"generic plan for {n} parameter(s), not executed; relations are every "
                             "leaf the plan may read, run-time pruning narrows them per call")
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, psycopg.errors.SyntaxError) and n:
            first += (" (pg_stat_statements' normalised text is not always SQL: interval '30 days' becomes "
                      "interval $n; EXPLAIN the statement with its values)")
        return PlanSummary(mode="skipped", note=f"EXPLAIN failed: {first}")
    finally:
        # A prepared statement outlives the rolled-back transaction: drop it, so the next one can PREPARE.
        if n and conn.execute("SELECT 1 FROM pg_prepared_statements WHERE name = 'careflow_explain'").fetchone():
            conn.execute("DEALLOCATE careflow_explain")
