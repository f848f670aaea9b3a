"""Index advice backed by EXPLAIN: a candidate index is tried as a HypoPG hypothetical index, never built.

From a statement's plan, every scan that filters rows (a Seq Scan with a
Filter, a Bitmap Heap Scan with a Recheck Cond or Filter, an Index Scan whose
Filter removes rows) gives a candidate on that relation: its equality columns
in the order the plan names them, then one range column. A column that holds
one value in the leaf (the key of a one-value list partition, such as the
clinic of a per-clinic leaf) is left out: it narrows nothing there.

HypoPG 1.3 cannot index a partitioned parent, so the candidate is created on
every leaf of it the plan reads, the statement is planned again with plain
EXPLAIN (HypoPG shows hypothetical indexes to plain EXPLAIN only), and the
indexes are dropped with ``hypopg_reset()``: all three in one transaction,
because hypothetical indexes belong to the server backend, and through
PgBouncer in transaction pooling the next transaction may run on another.

A candidate is recommended when the planner uses it and the estimated total
cost falls by at least :data:`THRESHOLD`; the recommendation is the
``CREATE INDEX`` on the parent, which creates it on every leaf.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from careflow_ha.data.explain import counted, explain_values, is_scan, plan_transaction, relation_of, walk
from careflow_ha.errors import first_line

#: Recommend an index only when the estimated total cost falls by at least this share.
THRESHOLD = 0.30
#: Candidates tried per statement: each trial is two plain EXPLAINs; the report must stay quick.
MAX_CANDIDATES = 3
HYPOPG_MISSING = ("hypopg is not installed in this database: install postgresql-15-hypopg on the database nodes "
                  "(roles/postgresql) and run `careflow-ha data prepare`")

_OP = r"(<=|>=|<>|!=|=|<|>)"
_NAME = r"(?:[a-z_][a-z0-9_$]*\.)?[a-z_][a-z0-9_$]*"
_COLUMN_LEFT = re.compile(rf"(?<![\w.'$])({_NAME})\s*{_OP}")
_COLUMN_RIGHT = re.compile(rf"{_OP}\s*({_NAME})(?![\w.(])")
_KINDS = {"=": "eq", "<": "range", "<=": "range", ">": "range", ">=": "range"}


@dataclass(frozen=True)
class FilteredScan:
    """A scan node that reads rows it then throws away, with the conditions it evaluates."""

    schema: str
    relation: str  # the leaf (or plain table) the node reads
    alias: str
    node_type: str
    conditions: tuple[str, ...]  # its Index Cond / Recheck Cond, then its Filter

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.relation}" if self.schema else self.relation


@dataclass(frozen=True)
class Leaf:
    """What the advisor needs to know of one relation a plan reads (from pg_catalog)."""

    root: str  # the top partitioned table, schema-qualified (the relation itself when not a partition)
    columns: frozenset[str]
    one_value_columns: frozenset[str] = frozenset()  # keys of one-value list partitions on the way to root
    indexes: tuple[tuple[str, ...], ...] = ()  # column lists of its existing indexes


@dataclass(frozen=True)
class Candidate:
    root: str
    columns: tuple[str, ...]
    leaves: tuple[str, ...]  # schema-qualified leaves the plan reads, where the trial creates it

    @property
    def statement(self) -> str:
        return f"CREATE INDEX ON {_display(self.root)} ({', '.join(_quote(c) for c in self.columns)});"


@dataclass(frozen=True)
class Trial:
    """One candidate, planned before and after its hypothetical index was created."""

    statement: str
    relations: tuple[str, ...]
    used: bool
    before_cost: float
    after_cost: float
    before_nodes: dict[str, int]
    after_nodes: dict[str, int]
    error: str = ""

    @property
    def ratio(self) -> float:
        return round(self.after_cost / self.before_cost, 3) if self.before_cost else 1.0

    def passes(self, threshold: float = THRESHOLD) -> bool:
        return not self.error and self.used and self.ratio <= 1 - threshold

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


@dataclass(frozen=True)
class Advice:
    """``recommended`` (with the index), ``none`` (with the reason) or ``unavailable`` (HypoPG missing)."""

    verdict: str
    reason: str = ""
    recommended: list[Trial] = field(default_factory=list)
    trials: list[Trial] = field(default_factory=list)
    threshold: float = THRESHOLD

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reason": self.reason, "threshold": self.threshold,
                "recommended": [t.to_dict() for t in self.recommended], "trials": [t.to_dict() for t in self.trials]}


# -- from the plan: pure ---------------------------------------------------------------
def filtered_scans(plan_json: Mapping[str, Any]) -> list[FilteredScan]:
    """The scans of a plan that filter rows, in plan order."""
    found = []
    for _, node in walk(plan_json):
        if not is_scan(node):
            continue
        kind, filt = node["Node Type"], node.get("Filter")
        if kind == "Seq Scan" and filt:
            conds = [filt]
        elif kind == "Bitmap Heap Scan" and (filt or node.get("Recheck Cond")):
            conds = [c for c in (node.get("Recheck Cond"), filt) if c]
        elif kind in ("Index Scan", "Index Only Scan") and filt and node.get("Rows Removed by Filter", 1) > 0:
            # Plain EXPLAIN has no "Rows Removed by Filter": a Filter is taken to remove rows.
            conds = [c for c in (node.get("Index Cond"), filt) if c]
        else:
            continue
        found.append(FilteredScan(node.get("Schema", ""), node["Relation Name"], node.get("Alias", ""), kind,
                                  tuple(conds)))
    return found


def condition_columns(condition: str, alias: str, columns: frozenset[str] | set[str]) -> list[tuple[str, str]]:
    """(column, "eq" | "range") for each comparison of this relation's own columns with something else.

    ``<>`` compares too, but no btree narrows on it, so it is left out. A column is this relation's when it
    is unqualified or qualified with the scan's alias, and ``columns`` (pg_attribute) holds it.
    """
    text = re.sub(r"'(?:[^']|'')*'", "''", condition.lower())  # literals first: they may hold anything
    text = re.sub(r"::[a-z_][a-z0-9_ ]*(?:\[\])?", "", text)  # casts: `(flag)::text`, `'...'::timestamp ...`
    text = re.sub(r"(?<![\w.])\((" + _NAME + r")\)", r"\1", text)  # `(flag)` -> `flag`
    hits: list[tuple[int, str, str]] = []
    for m in _COLUMN_LEFT.finditer(text):
        hits.append((m.start(), m.group(1), m.group(2)))
    for m in _COLUMN_RIGHT.finditer(text):
        hits.append((m.start(2), m.group(2), m.group(1)))
    out: list[tuple[str, str]] = []
    for _, ref, op in sorted(hits):
        qualifier, _, name = ref.rpartition(".")
        if (qualifier and qualifier != alias.lower()) or name not in columns or op not in _KINDS:
            continue
        if (name, _KINDS[op]) not in out:
            out.append((name, _KINDS[op]))
    return out


def candidate_columns(found: Sequence[tuple[str, str]], exclude: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """Equality columns first (in the plan's order), then one range column; () when nothing is left."""
    eq = [c for c, kind in found if kind == "eq" and c not in exclude]
    rng = [c for c, kind in found if kind == "range" and c not in exclude and c not in eq]
    return tuple(dict.fromkeys(eq)) + tuple(rng[:1])


def candidates(scans: Sequence[FilteredScan], leaves: Mapping[str, Leaf]) -> tuple[list[Candidate], list[str]]:
    """The candidates of a plan's filtered scans, one per (parent, columns), and why others were dropped
    (one line per parent and reason: a plan over 15 months says it once, not 15 times)."""
    grouped: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    dropped: dict[tuple[str, str], list[FilteredScan]] = {}
    for scan in scans:
        leaf = leaves[scan.qualified]
        found = [hit for cond in scan.conditions for hit in condition_columns(cond, scan.alias, leaf.columns)]
        cols = candidate_columns(found, leaf.one_value_columns)
        if not cols:
            dropped.setdefault((leaf.root, "no indexable condition on its own columns"), []).append(scan)
            continue
        covering = next((ix for ix in leaf.indexes if ix[:len(cols)] == cols), None)
        if covering is not None:
            why = f"({', '.join(cols)}) is already indexed ({', '.join(covering)})"
            dropped.setdefault((leaf.root, why), []).append(scan)
            continue
        group = grouped.setdefault((leaf.root, cols), [])
        if scan.qualified not in group:
            group.append(scan.qualified)
    return ([Candidate(root, cols, tuple(names)) for (root, cols), names in grouped.items()],
            [f"{_scans_of(root, found)}: {why}" for (root, why), found in dropped.items()])


def _scans_of(root: str, scans: Sequence[FilteredScan]) -> str:
    """'Seq Scan on lab_results_p2026_11_p1', or '15 leaves of public.lab_results (Seq Scan x3, ...)'."""
    names = list(dict.fromkeys(s.qualified for s in scans))
    if len(names) == 1:
        return f"{scans[0].node_type} on {names[0]}"
    return f"{len(names)} leaves of {root} ({counted(Counter(s.node_type for s in scans))})"


def scan_types(plan_json: Mapping[str, Any], relations: Sequence[str]) -> dict[str, int]:
    """How the plan reads ``relations``: node type -> count (a Bitmap Heap Scan stands for its index scan)."""
    wanted = set(relations)
    return dict(Counter(node["Node Type"] for _, node in walk(plan_json) if is_scan(node)
                        and relation_of(node) in wanted))


def uses_index(plan_json: Mapping[str, Any], names: Sequence[str]) -> bool:
    """Whether any node of the plan scans one of the indexes ``names`` (Bitmap Index Scans included)."""
    wanted = set(names)
    return any(node.get("Index Name") in wanted for _, node in walk(plan_json))


def nothing_to_index(plan_json: Mapping[str, Any]) -> str:
    """Why a plan without filtered scans gets no index, in the plan's own words."""
    reads = Counter(node["Node Type"] for _, node in walk(plan_json) if is_scan(node))
    if not reads:
        return "the plan reads no table (nothing to index)"
    return f"no scan filters rows: the plan already reads its relations by {counted(reads)} with nothing thrown away"


# -- against the server ------------------------------------------------------------------
def hypopg_installed(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'hypopg'").fetchone() is not None


#: A leaf's parent, columns, single-value partition keys and index columns. A key holds one value in the leaf
#: when its bound there is a one-value list, or an integer range one wide (partman's per-clinic leaves:
#: FROM (3) TO (4)).
_LEAF_INFO = r"""
SELECT coalesce(pg_partition_root(c.oid), c.oid)::regclass::text,
       array(SELECT attname FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped),
       array(SELECT a.attname
               FROM pg_partition_ancestors(c.oid) anc
               JOIN pg_class p ON p.oid = anc.relid
               JOIN pg_inherits i ON i.inhrelid = p.oid
               JOIN pg_partitioned_table pt ON pt.partrelid = i.inhparent AND pt.partnatts = 1
               JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
              CROSS JOIN LATERAL (SELECT pg_get_expr(p.relpartbound, p.oid) AS bound) b
              CROSS JOIN LATERAL (SELECT regexp_match(b.bound, '^FOR VALUES FROM \((-?\d+)\) TO \((-?\d+)\)$') AS r) m
              WHERE (pt.partstrat = 'l' AND b.bound ~ '^FOR VALUES IN \([^,]*\)$')
                 OR (pt.partstrat = 'r' AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
                     AND m.r[2]::numeric - m.r[1]::numeric = 1)),
       array(SELECT array_to_string(array(
                      SELECT a.attname FROM unnest(x.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                        JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum ORDER BY k.ord), ',')
               FROM pg_index x WHERE x.indrelid = c.oid)
  FROM pg_class c WHERE c.oid = %s::regclass
"""


def leaf_info(conn: psycopg.Connection, relation: str) -> Leaf:
    root, columns, one_value, indexes = conn.execute(_LEAF_INFO, (relation,)).fetchone()
    if "." not in root:  # regclass text omits a schema on the search path; the report names it
        schema = conn.execute("SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = %s::regclass",
                              (root,)).fetchone()[0]
        root = f"{schema}.{root}"
    return Leaf(root, frozenset(columns), frozenset(one_value),
                tuple(tuple(ix.split(",")) for ix in indexes if ix))


def advise(conn: psycopg.Connection, query: str, params: Sequence[Any] | Mapping[str, Any],
           plan_json: Mapping[str, Any], *, threshold: float = THRESHOLD, timeout_ms: int = 2000,
           deadline: float | None = None) -> Advice:
    """Try each candidate of ``plan_json`` (the plan of ``query`` with ``params``) as hypothetical indexes.

    ``conn`` must not be inside a transaction. Nothing is written and nothing is executed: plain EXPLAIN only.
    ``deadline`` (time.monotonic()) bounds the trials; the ones past it are not run.
    """
    if not hypopg_installed(conn):
        return Advice("unavailable", HYPOPG_MISSING, threshold=threshold)
    scans = filtered_scans(plan_json)
    if not scans:
        return Advice("none", nothing_to_index(plan_json), threshold=threshold)
    leaves = {s.qualified: leaf_info(conn, s.qualified) for s in scans}
    found, dropped = candidates(scans, leaves)
    if not found:
        return Advice("none", "; ".join(dropped), threshold=threshold)
    trials = []
    for cand in found[:MAX_CANDIDATES]:
        if deadline is not None and time.monotonic() > deadline:
            break
        trials.append(_trial(conn, cand, query, params, timeout_ms))
    passed = sorted((t for t in trials if t.passes(threshold)), key=lambda t: t.ratio)
    if passed:
        return Advice("recommended", recommended=passed, trials=trials, threshold=threshold)
    return Advice("none", _why_not(trials, threshold) or "the trials ran out of time", trials=trials,
                  threshold=threshold)


def _trial(conn: psycopg.Connection, cand: Candidate, query: str, params: Sequence[Any] | Mapping[str, Any],
           timeout_ms: int) -> Trial:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in cand.columns)
    try:
        with plan_transaction(conn, timeout_ms):
            before = explain_values(conn, query, params, analyze=False)
            names = []
            for leaf in cand.leaves:
                schema, _, name = leaf.rpartition(".")
                ddl = sql.SQL("CREATE INDEX ON {} ({})").format(
                    sql.Identifier(schema, name) if schema else sql.Identifier(name), cols).as_string(conn)
                names.append(conn.execute("SELECT indexname FROM hypopg_create_index(%s)", (ddl,)).fetchone()[0])
            after = explain_values(conn, query, params, analyze=False)
            conn.execute("SELECT hypopg_reset()")
    except psycopg.Error as exc:
        _reset_after_error(conn)
        return Trial(cand.statement, cand.leaves, False, 0.0, 0.0, {}, {}, error=first_line(exc))
    return Trial(cand.statement, cand.leaves, uses_index(after, names), before["Plan"]["Total Cost"],
                 after["Plan"]["Total Cost"], scan_types(before, cand.leaves), scan_types(after, cand.leaves))


def _reset_after_error(conn: psycopg.Connection) -> None:
    """Drop hypothetical indexes a failed trial left on the backend (best effort: it is outside the transaction)."""
    with contextlib.suppress(psycopg.Error):
        conn.execute("SELECT hypopg_reset()")


def _why_not(trials: Sequence[Trial], threshold: float) -> str:
    reasons = []
    for t in trials:
        if t.error:
            reasons.append(f"candidate `{t.statement}` could not be tried: {t.error}")
        elif not t.used:
            reasons.append(f"candidate `{t.statement}` is not used by the planner (cost {t.before_cost:g} -> "
                           f"{t.after_cost:g})")
        else:
            reasons.append(f"candidate `{t.statement}` is used, but the cost only falls from {t.before_cost:g} to "
                           f"{t.after_cost:g} (ratio {t.ratio:.2f}; a recommendation needs {1 - threshold:.2f} "
                           "or less)")
    return "; ".join(reasons)


def _quote(name: str) -> str:
    return name if re.fullmatch(r"[a-z_][a-z0-9_]*", name) else '"' + name.replace('"', '""') + '"'


def _display(qualified: str) -> str:
    return ".".join(_quote(part) for part in qualified.split(".", 1))
