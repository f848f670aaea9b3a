"""``careflow-ha bench partitioning``: the same lab results in a partitioned and a plain table, side by side.

One run, one server, one data set (generated once to a temporary CSV file,
then COPYed chunk by chunk alternately into both tables so that checkpoints
and cache hit both alike). Then three queries, each run ``repeat`` times per
table from ``EXPLAIN (ANALYZE, FORMAT JSON)``; medians of planning and
execution time are compared:

(a) one clinic, one month: target partitioned >= 5x faster than the best plain-table plan;
(b) one pet's full history: target partitioned <= 2x the plain table (with and without the clinic key);
(c) a month-wide aggregate over all clinics: measured.

For the plain table, "best plan" is the fastest of the planner's own choice
and the plans it makes with seq scan, bitmap scan or index scan disabled.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql

from careflow_ha.data.db import connect, migrate
from careflow_ha.data.generator import RESULT_COLUMNS, DataSpec, build_world, iter_chunks
from careflow_ha.data.localserver import LocalPostgres
from careflow_ha.data.partitions import ensure_coverage, layout
from careflow_ha.dsn import redact
from careflow_ha.errors import EnvironmentProblem

SCHEMA = "bench"
FLAT, PART = "bench.lab_results_flat", "bench.lab_results_part"
FLAT_VARIANTS = {
    "planner's choice": [],
    "no seq scan": ["SET LOCAL enable_seqscan = off"],
    "no bitmap scan": ["SET LOCAL enable_bitmapscan = off"],
    "seq scan only": ["SET LOCAL enable_indexscan = off", "SET LOCAL enable_bitmapscan = off",
                      "SET LOCAL enable_indexonlyscan = off"],
}


def drop_bench(conn: psycopg.Connection) -> None:
    """Remove the bench schema and its pg_partman configuration."""
    conn.execute("DELETE FROM partman.part_config_sub WHERE sub_parent LIKE 'bench.%'")
    conn.execute("DELETE FROM partman.part_config WHERE parent_table LIKE 'bench.%'")
    conn.execute("DROP SCHEMA IF EXISTS bench CASCADE")
    conn.execute("DROP TABLE IF EXISTS partman.template_bench_lab_results_part")


def create_tables(conn: psycopg.Connection, spec: DataSpec, clinic_ids: list[int]) -> None:
    """The plain table with its best indexes, and the partitioned one exactly as the migrations make it."""
    start = spec.window_start
    conn.execute("CREATE SCHEMA bench")
    conn.execute(f"CREATE TABLE {FLAT} (LIKE public.lab_results INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    conn.execute(f"CREATE INDEX ON {FLAT} (clinic_id, collected_at)")
    conn.execute(f"CREATE INDEX ON {FLAT} (pet_id, collected_at)")
    conn.execute(f"CREATE TABLE {PART} (LIKE public.lab_results INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
                 "PARTITION BY RANGE (collected_at)")
    conn.execute(f"CREATE INDEX ON {PART} (pet_id, collected_at)")
    with conn.transaction():
        conn.execute("SELECT partman.create_parent(p_parent_table := %s, p_control := 'collected_at', "
                     "p_type := 'native', p_interval := 'monthly', p_premake := 3, p_start_partition := %s, "
                     "p_jobmon := false)", (PART, start.strftime("%Y-%m-%d %H:%M:%S")))
        conn.execute("SELECT partman.create_sub_parent(p_top_parent := %s, p_control := 'clinic_id', "
                     "p_type := 'native', p_interval := '1', p_native_check := 'yes', p_premake := 1, "
                     "p_jobmon := false)", (PART,))
        conn.execute(f"DROP TABLE {PART}_default")
        ensure_coverage(conn, start.astimezone().date().replace(day=1), clinic_ids, parent=PART)


def _walk(plan: dict) -> list[dict]:
    out = [plan]
    for child in plan.get("Plans", []):
        out += _walk(child)
    return out


def explain(conn: psycopg.Connection, query: sql.Composed, settings: list[str]) -> dict:
    """One EXPLAIN ANALYZE: planning ms, execution ms, plan shape, relations actually scanned."""
    with conn.transaction():
        for s in settings:
            conn.execute(s)
        doc = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ") + query).fetchone()[0]
    doc = doc[0] if isinstance(doc, list) else json.loads(doc)[0]
    nodes = _walk(doc["Plan"])
    scans = {n["Relation Name"] for n in nodes if "Relation Name" in n and n.get("Actual Loops", 0) > 0}
    kinds = sorted({n["Node Type"] for n in nodes if "Scan" in n["Node Type"] and n.get("Actual Loops", 0) > 0})
    top = doc["Plan"]
    return {"plan_ms": doc["Planning Time"], "exec_ms": doc["Execution Time"], "scans": len(scans),
            "shape": "+".join(kinds), "planned_rels": len({n["Relation Name"] for n in nodes if "Relation Name" in n}),
            "pages": top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0),
            "pages_read": top.get("Shared Read Blocks", 0)}


def measure(conn: psycopg.Connection, query: sql.Composed, settings: list[str], repeat: int) -> dict:
    explain(conn, query, settings)  # warm the cache: we compare plans, not disks
    runs = [explain(conn, query, settings) for _ in range(repeat)]
    return _summary(runs)


def _summary(runs: list[dict]) -> dict:
    plan, exe = statistics.median(r["plan_ms"] for r in runs), statistics.median(r["exec_ms"] for r in runs)
    return {"plan_ms": round(plan, 3), "exec_ms": round(exe, 3), "total_ms": round(plan + exe, 3),
            "scans": runs[-1]["scans"], "planned_rels": runs[-1]["planned_rels"], "shape": runs[-1]["shape"],
            "pages": runs[-1]["pages"], "pages_read": runs[-1]["pages_read"]}


def evict_os_cache(data_dir: Path) -> None:
    """Drop this server's files (and only them) from the OS page cache."""
    for path in data_dir.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def measure_cold(server: LocalPostgres, dsn: str, query: sql.Composed, settings: list[str], repeat: int) -> dict:
    """Data not in memory: restart the server (empty shared buffers), evict its files from the OS cache,
    warm only the catalogs (plain EXPLAIN), then EXPLAIN ANALYZE once; the median over ``repeat`` rounds."""
    runs = []
    for _ in range(repeat):
        server.stop()
        evict_os_cache(server.data_dir)
        server.start()
        with connect(dsn, autocommit=True) as conn:
            with conn.transaction():
                for s in settings:
                    conn.execute(s)
                conn.execute(sql.SQL("EXPLAIN ") + query)  # relcache and catalogs, not table data
            runs.append(explain(conn, query, settings))
    return _summary(runs)


def queries(table: str, clinic: int, m0: datetime, m1: datetime, pet: int, pet_clinic: int) -> dict[str, sql.Composed]:
    t = sql.SQL(table)
    c, a, b = sql.Literal(clinic), sql.Literal(m0), sql.Literal(m1)
    return {
        "a": sql.SQL("SELECT test_code, count(*), avg(value), count(*) FILTER (WHERE flag <> 'N') FROM {} "
                     "WHERE clinic_id = {} AND collected_at >= {} AND collected_at < {} GROUP BY test_code"
                     ).format(t, c, a, b),
        "b": sql.SQL("SELECT collected_at, test_code, value, flag FROM {} WHERE pet_id = {} ORDER BY collected_at"
                     ).format(t, sql.Literal(pet)),
        "b+clinic": sql.SQL("SELECT collected_at, test_code, value, flag FROM {} WHERE pet_id = {} AND clinic_id = {} "
                            "ORDER BY collected_at").format(t, sql.Literal(pet), sql.Literal(pet_clinic)),
        "c": sql.SQL("SELECT clinic_id, test_code, count(*), avg(value), count(*) FILTER (WHERE flag <> 'N') "
                     "FROM {} WHERE collected_at >= {} AND collected_at < {} GROUP BY 1, 2").format(t, a, b),
    }


def run_bench(dsn: str | None, spec: DataSpec, *, repeat: int = 7, keep: bool = False) -> dict:
    """Run the benchmark against ``dsn`` (app role), or a throwaway local server if ``dsn`` is None.

    Cache-cold timings need to restart the server, so they are measured only on the local one.
    """
    server = None
    if dsn is None:
        from careflow_ha.data.localserver import start_local_server

        server = start_local_server(durable=True)
        dsn = server.dsn("app")
        migrate(dsn)
    try:
        result = _run(dsn, spec, repeat, keep, server)
        result["target"] = "throwaway local PostgreSQL 15 (fsync on, shared_buffers 512MB)" if server else redact(dsn)
        return result
    finally:
        if server is not None:
            server.stop()
            server.remove()


def _run(dsn: str, spec: DataSpec, repeat: int, keep: bool, server: LocalPostgres | None) -> dict:
    from tqdm import tqdm

    spec = spec.validated()
    world = build_world(spec)
    clinic_ids = [c[0] for c in world.clinics]
    with connect(dsn, autocommit=True) as conn, tempfile.TemporaryDirectory(prefix="careflow-bench-") as tmp:
        if conn.execute("SELECT to_regclass('public.lab_results')").fetchone()[0] is None:
            raise EnvironmentProblem("the EMR schema is missing; run `careflow-ha data migrate` first")
        sync = conn.execute("SHOW synchronous_standby_names").fetchone()[0]
        drop_bench(conn)
        create_tables(conn, spec, clinic_ids)
        # Generate once; both tables get the very same bytes.
        chunks: list[Path] = []
        for chunk in tqdm(iter_chunks(world, spec), desc="generate", unit="chunk", leave=False):
            path = Path(tmp) / f"{chunk.index:06d}.csv"
            path.write_bytes(chunk.results_csv)
            chunks.append(path)
        copy_s = {FLAT: 0.0, PART: 0.0}
        cols = ", ".join(RESULT_COLUMNS)
        with tqdm(total=spec.rows * 2, unit="rows", unit_scale=True, desc="COPY both") as bar:
            for i, path in enumerate(chunks):
                data = path.read_bytes()
                order = (FLAT, PART) if i % 2 == 0 else (PART, FLAT)  # alternate: no table always goes first
                for table in order:
                    t0 = time.perf_counter()
                    with conn.cursor() as cur, cur.copy(f"COPY {table} ({cols}) FROM STDIN (FORMAT csv)") as copy:
                        copy.write(data)
                    copy_s[table] += time.perf_counter() - t0
                    bar.update(data.count(b"\n"))
        t0 = time.perf_counter()
        conn.execute(f"VACUUM ANALYZE {FLAT}")
        conn.execute(f"VACUUM ANALYZE {PART}")
        vacuum_s = time.perf_counter() - t0

        # The parameters: a mid-window month, the biggest clinic, a frequent patient.
        months = [m for m in layout(conn, PART) if m.start is not None]
        mid = months[len([m for m in months if m.start < spec.end]) // 2]  # type: ignore[operator]
        clinic = 1
        pet, pet_clinic = conn.execute(
            f"SELECT pet_id, min(clinic_id) FROM {FLAT} GROUP BY pet_id ORDER BY count(*) DESC, pet_id "
            f"LIMIT 1 OFFSET (SELECT count(DISTINCT pet_id) / 20 FROM {FLAT})").fetchone()
        qf = queries(FLAT, clinic, mid.start, mid.end, pet, pet_clinic)  # type: ignore[arg-type]
        qp = queries(PART, clinic, mid.start, mid.end, pet, pet_clinic)  # type: ignore[arg-type]
        results = {}
        for name in tqdm(list(qf), desc="queries", leave=False):
            flat_runs = {v: measure(conn, qf[name], s, repeat) for v, s in FLAT_VARIANTS.items()}
            best_variant = min(flat_runs, key=lambda v: flat_runs[v]["total_ms"])
            part = measure(conn, qp[name], [], repeat)
            flat = flat_runs[best_variant]
            results[name] = {"flat": {**flat, "variant": best_variant}, "part": part,
                             "flat_planner": flat_runs["planner's choice"],
                             "speedup_total": round(flat["total_ms"] / part["total_ms"], 2),
                             "speedup_exec": round(flat["exec_ms"] / part["exec_ms"], 2)}
        sizes = {FLAT: conn.execute("SELECT pg_size_pretty(pg_total_relation_size(%s::regclass))",
                                    (FLAT,)).fetchone()[0],
                 PART: conn.execute("SELECT pg_size_pretty(sum(pg_total_relation_size(relid))) FROM "
                                    "pg_partition_tree(%s::regclass)", (PART,)).fetchone()[0]}
        rows_check = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in (FLAT, PART)}  # noqa: S608
        leaves = sum(len(m.leaves) for m in layout(conn, PART))
    if server is not None:
        cold_rounds = max(3, repeat // 2)
        for name in tqdm(list(qf), desc="cold queries", leave=False):
            variant = results[name]["flat"]["variant"]
            results[name]["flat_cold"] = {**measure_cold(server, dsn, qf[name], FLAT_VARIANTS[variant], cold_rounds),
                                          "variant": variant}
            results[name]["part_cold"] = measure_cold(server, dsn, qp[name], [], cold_rounds)
    if not keep:
        with connect(dsn, autocommit=True) as conn:
            drop_bench(conn)
    return {
        "rows": spec.rows, "clinics": spec.clinics, "months": spec.months, "seed": spec.seed, "repeat": repeat,
        "synchronous_standby_names": sync or "(none)",
        "rows_loaded": rows_check,
        "load": {t: {"seconds": round(s, 2), "rows_per_s": round(spec.rows / s)} for t, s in copy_s.items()},
        "load_ratio_part_vs_flat": round(copy_s[FLAT] / copy_s[PART], 2),
        "vacuum_analyze_s": round(vacuum_s, 1),
        "sizes": sizes,
        "partitions": {"months": len(months), "leaves_incl_defaults": leaves},
        "params": {"clinic": clinic, "month": f"{mid.start:%Y-%m-%d}..{mid.end:%Y-%m-%d}", "pet": pet,  # type: ignore
                   "pet_clinic": pet_clinic},
        "queries": results,
    }


TARGETS = {"a": ("speedup_total", ">= 5x faster", lambda r: r >= 5),
           "b": ("slowdown", "<= 2x slower", lambda r: r <= 2),
           "b+clinic": ("slowdown", "<= 2x slower", lambda r: r <= 2),
           "c": ("speedup_total", "measure", lambda r: True)}
LABELS = {"a": "(a) one clinic, one month", "b": "(b) one pet's history, pet_id only",
          "b+clinic": "(b) one pet's history, pet_id + clinic_id", "c": "(c) month-wide aggregate, all clinics"}


def render(r: dict) -> str:
    """The benchmark as text: load, partition counts, and per query flat vs partitioned with the ratio."""
    lines = [f"bench partitioning: {r['rows']:,} lab results, {r['clinics']} clinics, {r['months']} months, seed "
             f"{r['seed']}, median of {r['repeat']} runs", f"target: {r['target']}; synchronous_standby_names: "
             f"{r['synchronous_standby_names']}", ""]
    lf, lp = r["load"][FLAT], r["load"][PART]
    lines += [f"COPY plain table:        {lf['rows_per_s']:>10,} rows/s ({lf['seconds']} s)",
              f"COPY partitioned table:  {lp['rows_per_s']:>10,} rows/s ({lp['seconds']} s)",
              f"partitioned / plain load speed: {r['load_ratio_part_vs_flat']}x; sizes {r['sizes']}; "
              f"VACUUM ANALYZE {r['vacuum_analyze_s']} s",
              f"partitions: {r['partitions']['months']} months, {r['partitions']['leaves_incl_defaults']} leaves "
              f"(incl. one clinic default per month); query params {r['params']}", ""]
    hdr = (f"{'query':44} {'table':12} {'cache':5} {'plan ms':>9} {'exec ms':>10} {'total ms':>10} {'leaves':>6} "
           f"{'pages':>7}  plan")
    lines += [hdr, "-" * len(hdr)]
    for name, q in r["queries"].items():
        first = True
        for cache, flat_key, part_key in (("warm", "flat", "part"), ("cold", "flat_cold", "part_cold")):
            if flat_key not in q:
                continue
            for label, m in (("plain", q[flat_key]), ("partitioned", q[part_key])):
                shape = m["shape"] + (f" [{m['variant']}]" if "variant" in m else "")
                lines.append(f"{LABELS[name] if first else '':44} {label:12} {cache:5} {m['plan_ms']:>9.3f} "
                             f"{m['exec_ms']:>10.3f} {m['total_ms']:>10.3f} {m['scans']:>6} {m['pages']:>7}  {shape}")
                first = False
            lines.append(f"{'':44} -> {cache}: {_verdict(name, q[flat_key], q[part_key])}")
    return "\n".join(lines)


def _verdict(name: str, flat: dict, part: dict) -> str:
    kind, target, ok = TARGETS[name]
    if kind == "slowdown":
        ratio = round(part["total_ms"] / flat["total_ms"], 2)
        return f"partitioned/plain time = {ratio}x (target {target}: {'met' if ok(ratio) else 'NOT met'})"
    ratio = round(flat["total_ms"] / part["total_ms"], 2)
    exec_ratio = round(flat["exec_ms"] / part["exec_ms"], 2)
    verdict = f": {'met' if ok(ratio) else 'NOT met'}" if target != "measure" else ""
    speed = f"{ratio}x faster" if ratio >= 1 else f"{round(1 / ratio, 2)}x slower"
    return f"partitioned is {speed} (plain/partitioned time {ratio}, exec only {exec_ratio}; target {target}{verdict})"


__all__ = ["render", "run_bench", "timedelta"]
