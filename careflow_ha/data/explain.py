"""EXPLAIN evidence for a statement: its plan, summarised to what a DBA decides on.

Here, below the features, because two of them read plans: ``queries top
--explain`` (monitoring) and the load report's slowest operations (load).

For a statement with its values (the load's operations), :func:`explain_values`:
``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`` for a read, plain ``EXPLAIN
(FORMAT JSON)`` for a write (never executed), both in :func:`plan_transaction`.

For a pg_stat_statements text, :func:`explain`, in two modes, because
pg_stat_statements keeps statement shapes, not values:

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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from careflow_ha.errors import first_line

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
    total_cost: float | None = None  # planner's estimate at the top node
    indexes: list[str] = field(default_factory=list)  # indexes the plan scans, in plan order

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def one_line(self) -> str:
        """A short human summary for a table cell."""
        if self.mode == "skipped":
            return f"skipped: {self.note}"
        parts = [f"{self.mode}: {counted(self.node_types)}", f"{len(self.relations)} relation(s)"]
        if self.mode == "analyze":
            parts += [f"{self.actual_rows:g} rows", f"{self.execution_ms} ms",
                      f"buffers hit {self.shared_hit} read {self.shared_read}"]
        else:
            parts.append(f"~{self.plan_rows:g} rows est.")
        return "; ".join(parts)


def counted(counts: Mapping[str, int]) -> str:
    """Node types with their counts as a report prints them: "Seq Scan x4, Index Scan"."""
    return ", ".join(f"{k} x{v}" if v > 1 else k for k, v in counts.items())


def walk(plan_json: Mapping[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(depth, node) for every node of one EXPLAIN (FORMAT JSON) document, in the order EXPLAIN prints them."""
    stack: list[tuple[int, dict[str, Any]]] = [(0, plan_json["Plan"])]
    while stack:
        depth, node = stack.pop()
        yield depth, node
        stack += [(depth + 1, child) for child in reversed(node.get("Plans", []))]


def is_scan(node: Mapping[str, Any]) -> bool:
    """Whether ``node`` reads a relation (a table or a partition)."""
    return node["Node Type"] in _SCANS and "Relation Name" in node


def relation_of(node: Mapping[str, Any]) -> str:
    """A scan node's relation, schema-qualified when EXPLAIN gives the schema."""
    return f"{node['Schema']}.{node['Relation Name']}" if node.get("Schema") else node["Relation Name"]


def summarise(plan_json: dict[str, Any], mode: str, note: str = "") -> PlanSummary:
    """Walk one EXPLAIN (FORMAT JSON) document into a PlanSummary."""
    top = plan_json["Plan"]
    types: Counter[str] = Counter()
    relations: list[str] = []
    indexes: list[str] = []
    removed = 0
    for _, node in walk(plan_json):
        types[node["Node Type"]] += 1
        if is_scan(node):
            relations.append(relation_of(node))
        if "Index Name" in node:
            indexes.append(node["Index Name"])
        removed += int(node.get("Subplans Removed", 0))
    analyzed = mode == "analyze"
    return PlanSummary(
        mode=mode, node_types=dict(types), relations=relations, subplans_removed=removed,
        plan_rows=top.get("Plan Rows"), actual_rows=top.get("Actual Rows") if analyzed else None,
        planning_ms=round(plan_json["Planning Time"], 3) if "Planning Time" in plan_json else None,
        execution_ms=round(plan_json["Execution Time"], 3) if analyzed and "Execution Time" in plan_json else None,
        shared_hit=top.get("Shared Hit Blocks") if analyzed else None,
        shared_read=top.get("Shared Read Blocks") if analyzed else None, note=note,
        total_cost=top.get("Total Cost"), indexes=indexes)


#: The node fields a reader of a plan tree needs, in EXPLAIN's order.
_TREE_DETAILS = ("Index Name", "Index Cond", "Recheck Cond", "Hash Cond", "Join Filter", "Filter",
                 "Rows Removed by Filter", "Subplans Removed")


def tree(plan_json: Mapping[str, Any]) -> list[str]:
    """The plan as indented text, close to EXPLAIN's own: one line per node, then its conditions."""
    out = []
    for depth, node in walk(plan_json):
        pad = "  " * depth
        head = node["Node Type"] + (f" on {relation_of(node)}" if is_scan(node) else "")
        if node.get("Alias") and node.get("Alias") != node.get("Relation Name"):
            head += f" {node['Alias']}"
        head += f"  (cost={node.get('Startup Cost')}..{node.get('Total Cost')} rows={node.get('Plan Rows')})"
        if "Actual Total Time" in node:
            head += f" (actual time={node['Actual Total Time']} rows={node.get('Actual Rows')} " \
                    f"loops={node.get('Actual Loops')})"
        out.append(pad + ("-> " if depth else "") + head)
        out += [f"{pad}     {key}: {node[key]}" for key in _TREE_DETAILS if key in node]
    if "Execution Time" in plan_json:
        out.append(f"Planning: {plan_json.get('Planning Time')} ms, execution: {plan_json['Execution Time']} ms")
    return out


def parameter_count(statement: str) -> int:
    """The highest ``$n`` in a normalised statement (0 when it has none)."""
    return max((int(n) for n in re.findall(r"\$(\d+)", statement)), default=0)


def _read_only_kind(statement: str) -> bool:
    head = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else ""
    return head in {"SELECT", "WITH", "VALUES", "TABLE"}


@contextmanager
def plan_transaction(conn: psycopg.Connection, timeout_ms: int) -> Iterator[None]:
    """A READ ONLY transaction with a statement timeout, always rolled back: EXPLAIN ANALYZE in it writes nothing.

    ``conn`` must not be inside a transaction. SET LOCAL, not SET: through PgBouncer in transaction pooling the
    next transaction may run on another server connection, so nothing may outlive this one.
    """
    with conn.transaction(force_rollback=True):
        conn.execute("SET TRANSACTION READ ONLY")
        conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(int(timeout_ms))))
        yield


def explain_values(conn: psycopg.Connection, query: str, params: Sequence[Any] | Mapping[str, Any], *,
                   analyze: bool) -> dict[str, Any]:
    """One EXPLAIN (FORMAT JSON) document for ``query`` with its values; call it inside :func:`plan_transaction`.

    ``analyze``: executed, with buffers (a read: the transaction is READ ONLY and rolled back). Otherwise only
    planned, which is also what HypoPG's hypothetical indexes need (it shows them to plain EXPLAIN only).
    """
    options = "ANALYZE, BUFFERS, FORMAT JSON" if analyze else "FORMAT JSON"
    return conn.execute(f"EXPLAIN ({options}) {query}", params).fetchone()[0][0]


def explain(conn: psycopg.Connection, statement: str, *, timeout_ms: int = 30_000) -> PlanSummary:
    """The statement's plan: measured if it has no parameters, generic if it has; never writes.

    ``conn`` must not be inside a transaction; it is left outside one.
    """
    if not _read_only_kind(statement):
        return PlanSummary(mode="skipped", note="not a read-only statement (EXPLAIN ANALYZE would run the write)")
    n = parameter_count(statement)
    try:
        with plan_transaction(conn, timeout_ms):
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
        first = first_line(exc)
        if isinstance(exc, psycopg.errors.SyntaxError) and n:
            first += (" (pg_stat_statements' normalised text is not always SQL: interval '30 days' becomes "
                      "interval $n; EXPLAIN the statement with its values)")
        return PlanSummary(mode="skipped", note=f"EXPLAIN failed: {first}")
    finally:
        # A prepared statement outlives the rolled-back transaction: drop it, so the next one can PREPARE.
        if n and conn.execute("SELECT 1 FROM pg_prepared_statements WHERE name = 'careflow_explain'").fetchone():
            conn.execute("DEALLOCATE careflow_explain")
