"""After a load run: the slowest operations, their plans, and index advice backed by EXPLAIN.

The N operations with the highest client-side p95 (the report's per-operation
table) are planned with values drawn as the load draws them (emr.STATEMENTS,
the operations' own builders; a fixed seed; the median of a few draws by
execution time):

- reads by ``EXPLAIN (ANALYZE, BUFFERS)`` on the read-only target, where the
  load sent them, in a READ ONLY transaction with a statement timeout that is
  always rolled back;
- writes by plain ``EXPLAIN`` on the read-write target: never executed.

Then each plan's filtered scans are tried as hypothetical indexes
(data/index_advice.py). Everything is bounded (a statement timeout, a time
budget per operation), and any failure becomes one line of the report: this
never fails the load run, and no DSN is shown unredacted.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg

from careflow_ha.data import index_advice
from careflow_ha.data.explain import counted, explain_values, plan_transaction, summarise, tree
from careflow_ha.dsn import pooler_safe, redact
from careflow_ha.errors import first_line
from careflow_ha.load import emr

DEFAULT_COUNT = 3
#: Draws of values per operation; the plan shown is the median one by execution time (estimated cost for writes).
DRAWS = 5
#: Fixed, so two reports over the same data draw the same values (the id pool is sampled with it too).
SEED = 16
STATEMENT_TIMEOUT_MS = 2000
#: Time for one operation's draws and index trials; what is left over is not started.
OPERATION_BUDGET_S = 6.0
CONNECT_TIMEOUT_S = 5


def slowest(operations: Sequence[Mapping[str, Any]], n: int = DEFAULT_COUNT) -> list[Mapping[str, Any]]:
    """The ``n`` EMR operations with the highest p95 of successful requests (setup requests are not EMR)."""
    known = set(emr.STATEMENTS) | set(emr.NOT_EXPLAINED)
    ran = [o for o in operations if o.get("op") in known and o.get("p95_ms") is not None]
    return sorted(ran, key=lambda o: (-float(o["p95_ms"]), o["op"]))[:n]


def unavailable(why: str) -> dict[str, Any]:
    return {"status": "unavailable", "note": f"plans unavailable: {why}", "operations": []}


def collect(operations: Sequence[Mapping[str, Any]], dsn_rw: str, dsn_ro: str, n: int = DEFAULT_COUNT,
            progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """The JSON of the report's plans section (with each plan's EXPLAIN document under ``raw``)."""
    top = slowest(operations, n)
    if not top:
        return {"status": "none", "note": "no EMR operation completed a request", "operations": []}
    try:
        return _collect(top, dsn_rw, dsn_ro, progress)
    except (psycopg.Error, OSError, emr.NoData) as exc:
        return unavailable(first_line(exc))
    except Exception as exc:  # noqa: BLE001 - this section must never cost the run its report
        return unavailable(f"{type(exc).__name__}: {first_line(exc)}")


def _collect(top: Sequence[Mapping[str, Any]], dsn_rw: str, dsn_ro: str,
             progress: Callable[[str], None]) -> dict[str, Any]:
    targets = {"ro": dsn_ro, "rw": dsn_rw}
    conns: dict[str, psycopg.Connection] = {}
    try:
        for endpoint, dsn in targets.items():
            try:
                conns[endpoint] = psycopg.connect(
                    dsn, autocommit=True, **pooler_safe(dsn, {"connect_timeout": CONNECT_TIMEOUT_S}))
            except psycopg.Error as exc:
                return unavailable(f"cannot connect to {redact(dsn)}: {first_line(exc)}")
        pool = emr.load_ids(dsn_ro, sample=500, seed=SEED)
        hypopg = {ep: index_advice.hypopg_installed(c) for ep, c in conns.items()}
        entries = []
        for op in top:
            progress(f"load: planning {op['op']} (p95 {op['p95_ms']} ms)")
            entries.append(_operation(op, pool, conns))
    finally:
        for c in conns.values():
            c.close()
    notes = [index_advice.HYPOPG_MISSING] if not all(hypopg.values()) else []
    return {"status": "ok", "note": " ".join(notes), "hypopg": hypopg, "seed": SEED, "draws": DRAWS,
            "threshold": index_advice.THRESHOLD, "targets": {ep: redact(d) for ep, d in targets.items()},
            "operations": entries}


def _operation(op: Mapping[str, Any], pool: emr.IdPool, conns: Mapping[str, psycopg.Connection]) -> dict[str, Any]:
    name = op["op"]
    entry: dict[str, Any] = {"op": name, "p95_ms": op["p95_ms"], "requests": op.get("requests")}
    stmt = emr.STATEMENTS.get(name)
    if stmt is None:
        return {**entry, "skipped": emr.NOT_EXPLAINED[name]}
    endpoint = "ro" if stmt.read_only else "rw"
    conn = conns[endpoint]
    deadline = time.monotonic() + OPERATION_BUDGET_S
    rng = random.Random(f"{SEED}:{name}")  # per operation: one operation's draws do not shift another's
    drawn: list[tuple[float, dict, str, Any]] = []
    error = ""
    for _ in range(DRAWS):
        if time.monotonic() > deadline:
            break
        query, params = stmt.build(pool, rng)
        try:
            with plan_transaction(conn, STATEMENT_TIMEOUT_MS):
                doc = explain_values(conn, query, params, analyze=stmt.read_only)
        except psycopg.Error as exc:
            error = first_line(exc)
            continue
        key = doc.get("Execution Time") if stmt.read_only else doc["Plan"]["Total Cost"]
        drawn.append((float(key or 0.0), doc, query, params))
    entry.update(endpoint=endpoint, mode="analyze" if stmt.read_only else "plan", note=stmt.note)
    if not drawn:
        return {**entry, "skipped": f"EXPLAIN failed: {error}"}
    drawn.sort(key=lambda d: d[0])
    _, doc, query, params = drawn[len(drawn) // 2]
    summary = summarise(doc, entry["mode"], stmt.note)
    advice = index_advice.advise(conn, query, params, doc, timeout_ms=STATEMENT_TIMEOUT_MS,
                                 deadline=max(deadline, time.monotonic() + 1.0))
    return {**entry, "draws": len(drawn), "statement": " ".join(query.split()), "params": _jsonable(params),
            "plan": summary.to_dict(), "plan_line": summary.one_line(), "advice": advice.to_dict(),
            "raw": {"plan": doc}}


def write_files(folder: Path, plans: dict[str, Any]) -> dict[str, Any]:
    """Write plans.md and plans.json (the EXPLAIN documents) when there are plans; return the JSON without them."""
    slim = {**plans, "operations": [{k: v for k, v in e.items() if k != "raw"} for e in plans["operations"]]}
    raw = {e["op"]: e["raw"] for e in plans["operations"] if "raw" in e}
    if raw:
        (folder / "plans.json").write_text(json.dumps(raw, indent=1, default=str))
        (folder / "plans.md").write_text("\n".join(_plans_md(plans)) + "\n")
    return slim


def markdown(plans: Mapping[str, Any]) -> list[str]:
    """The report's section "Slowest operations and their plans"."""
    lines = ["## Slowest operations and their plans", ""]
    if plans.get("status") != "ok":
        return [*lines, plans.get("note") or "Not collected.", ""]
    lines += [
        f"The {len(plans['operations'])} EMR operations with the highest client-side p95, each planned with the "
        f"median of up to {plans['draws']} draws of its values (seed {plans['seed']}). Reads: `EXPLAIN (ANALYZE, "
        "BUFFERS)` on the read-only target, in a READ ONLY transaction that is rolled back; writes: plain "
        "`EXPLAIN` on the read-write target, never executed. Index candidates come from the scans that filter "
        "rows, tried as HypoPG hypothetical indexes on the leaves the plan reads; one is recommended when the "
        f"planner uses it and its estimated cost falls by at least {plans['threshold']:.0%}. Plan trees: "
        "`plans.md`, EXPLAIN documents: `plans.json`.", ""]
    if plans.get("note"):
        lines += [plans["note"], ""]
    for e in plans["operations"]:
        lines.append(f"### {e['op']} (p95 {e['p95_ms']} ms, {e.get('requests')} requests)")
        lines.append("")
        if "skipped" in e:
            lines += [f"Not planned: {e['skipped']}.", ""]
            continue
        where = "the read-only target" if e["endpoint"] == "ro" else "the read-write target"
        lines += [f"- values: `{_values(e['params'])}` (median of {e['draws']} draws, on {where})",
                  f"- plan: {e['plan_line']}; total cost {e['plan']['total_cost']}"]
        if e.get("note"):
            lines.append(f"- note: {e['note']}")
        lines += [*_advice_lines(e["advice"]), ""]
    return lines


def plan_lines(plans: Mapping[str, Any]) -> list[str]:
    """One line per planned operation, for the terminal: its index verdict."""
    if plans.get("status") != "ok":
        return [plans["note"]] if plans.get("status") == "unavailable" else []
    out = []
    for e in plans["operations"]:
        a = e.get("advice") or {}
        if "skipped" in e:
            verdict = f"not planned ({e['skipped']})"
        elif a.get("verdict") == "recommended":
            verdict = "; ".join(f"{t['statement']} (cost ratio {t['ratio']:.2f})" for t in a["recommended"])
        else:
            verdict = "no index recommended" if a.get("verdict") == "none" else "index advice unavailable"
        out.append(f"slowest: {e['op']} p95 {e['p95_ms']} ms: {verdict}")
    return out


def _advice_lines(a: Mapping[str, Any]) -> list[str]:
    if a["verdict"] == "unavailable":
        return ["- index advice unavailable: hypopg is not installed where this operation was planned"]
    if a["verdict"] == "none":
        return [f"- no index recommended: {a['reason']}"]
    out = []
    for t in a["recommended"]:
        out += [f"- **index recommended**: `{t['statement']}`",
                f"  - evidence: {_nodes(t['before_nodes'])} -> {_nodes(t['after_nodes'])}; total cost "
                f"{t['before_cost']:g} -> {t['after_cost']:g} (ratio {t['ratio']:.2f}, threshold "
                f"{1 - a['threshold']:.2f})",
                f"  - relations: {_relations(t['relations'])}"]
    return out


def _relations(names: Sequence[str], shown: int = 4) -> str:
    """A long list of leaves, shortened for the report (plans.md and plans.json keep every name)."""
    if len(names) <= shown:
        return ", ".join(names)
    return f"{len(names)} leaves: {', '.join(names[:shown - 1])}, ..., {names[-1]}"


def _plans_md(plans: Mapping[str, Any]) -> list[str]:
    out = ["# Plans of the slowest operations", ""]
    for e in plans["operations"]:
        out += [f"## {e['op']}", ""]
        if "raw" not in e:
            out += [f"Not planned: {e.get('skipped', '')}", ""]
            continue
        out += ["```sql", e["statement"], "```", "", f"values: `{_values(e['params'])}`", "", "```text",
                *tree(e["raw"]["plan"]), "```", ""]
        for t in e["advice"]["trials"]:
            verdict = "error: " + t["error"] if t["error"] else (
                f"{'used' if t['used'] else 'not used'}, cost {t['before_cost']:g} -> {t['after_cost']:g} "
                f"(ratio {t['ratio']:.2f}), {_nodes(t['before_nodes'])} -> {_nodes(t['after_nodes'])}")
            out.append(f"- trial `{t['statement']}` on {', '.join(t['relations'])}: {verdict}")
        out += [*_advice_lines(e["advice"]), ""]
    return out


def _nodes(counts: Mapping[str, int]) -> str:
    return counted(counts) or "none"


def _values(params: Any) -> str:
    return json.dumps(params, default=str, ensure_ascii=False)


def _jsonable(params: Any) -> Any:
    return json.loads(json.dumps(params, default=str))

