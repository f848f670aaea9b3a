"""``careflow-ha bench partitioning --scale network``: partitioning schemes side by side at network scale.

One throwaway local server, one data set (generated once: visits and pets into plain tables, lab
results to temporary CSV files), one plain ``lab_results`` table with its best indexes as the
baseline. Then each scheme in turn is built with pg_partman, loaded with the very same bytes,
measured, archived one month, and dropped (at 100M rows a copy is 10-15 GB, so schemes never
coexist). For each scheme:

- leaves, build time, COPY time, VACUUM ANALYZE time, size;
- the EMR's queries (``careflow_ha/load/emr.py``), warm (median of ``repeat``) and cold (median of
  ``cold_repeat`` server restarts with the server's files evicted from the OS cache), planning and
  execution time, leaves and pages touched, each against the plain table (its best plan among the
  planner's choice and the plans with seq or bitmap scans disabled);
- ``partman.run_maintenance`` with nothing to do and when it creates the next month;
- ANALYZE of one month; archive of the oldest month (DETACH ... CONCURRENTLY, then DROP);
- ``pg_dump --schema-only`` time and size; catalog size (pg_class, pg_attribute, pg_statistic, ...)
  and the memory a backend keeps after planning a keyless query.

The plain table's figures, warm and cold, are re-measured next to each scheme's, query by query.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg import sql

from careflow_ha.data.bench import _summary, evict_os_cache, explain
from careflow_ha.data.db import connect, migrate
from careflow_ha.data.generator import (
    RESULT_COLUMNS,
    VISIT_COLUMNS,
    DataSpec,
    build_world,
    iter_chunks_ahead,
    month_budgets,
)
from careflow_ha.data.localserver import PG_BIN, LocalPostgres
from careflow_ha.errors import UsageError

S = "bench_scale"
FLAT = f"{S}.lab_results_flat"
#: The plain table's plans to choose the best from. (No "seq scan only": over 100M rows it is never the
#: best plan for a selective query and would take minutes per run.)
FLAT_VARIANTS = {
    "planner's choice": [],
    "no seq scan": ["SET LOCAL enable_seqscan = off"],
    "no bitmap scan": ["SET LOCAL enable_bitmapscan = off"],
}
GENERIC = ["SET LOCAL plan_cache_mode = force_generic_plan"]
#: One EXPLAIN ANALYZE may take this long; past it the query is reported as "> N s" and not repeated.
#: (A keyless query over per-clinic's 63,000 leaves did not finish planning in minutes at 9,018.)
QUERY_LIMIT_S = 60
#: A query whose warm-up run took longer than this is repeated only this many times.
SLOW_QUERY_S, SLOW_QUERY_REPEAT = 10.0, 3


@dataclass(frozen=True)
class Scheme:
    """One way to partition lab_results: months, then ``clinic_interval`` clinic ids per leaf (None: months only)."""

    name: str
    clinic_interval: int | None
    description: str

    @property
    def table(self) -> str:
        return f"{S}.lab_results_{self.name.replace('-', '_')}"


SCHEMES = {s.name: s for s in (
    Scheme("per-clinic", 1, "months, then one leaf per clinic (today's product)"),
    Scheme("clinic-range-16", 16, "months, then one leaf per 16 clinic ids (pg_partman id interval 16)"),
    Scheme("clinic-range-64", 64, "months, then one leaf per 64 clinic ids (pg_partman id interval 64)"),
    Scheme("months-only", None, "months only, with a (clinic_id, collected_at) index"),
)}


@dataclass(frozen=True)
class Scale:
    rows: int
    clinics: int
    months: int


SCALES = {"lab": Scale(5_000_000, 8, 24), "network": Scale(100_000_000, 1000, 60)}


def resolve_scale(name: str, rows: int | None, clinics: int | None, months: int | None) -> Scale:
    """A named scale with any of its sizes overridden; a one-line error naming the fix otherwise."""
    if name not in SCALES:
        raise UsageError(f"--scale {name!r} is unknown; use one of: {', '.join(SCALES)}")
    base = SCALES[name]
    return Scale(rows or base.rows, clinics or base.clinics, months or base.months)


def parse_schemes(text: str) -> list[Scheme]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCHEMES]
    if unknown or not names:
        raise UsageError(f"--schemes {text!r}: unknown {', '.join(unknown) or '(empty)'}; use a comma-separated "
                         f"subset of {', '.join(SCHEMES)}")
    return [SCHEMES[n] for n in names]


# -- the EMR's queries -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Params:
    clinic: int  # the biggest clinic
    small_clinic: int  # a clinic of median size
    month: tuple[datetime, datetime]
    pet: int
    pet_clinic: int
    pet_first_visit: datetime
    today: tuple[datetime, datetime] = (datetime.min, datetime.min)  # the Seoul day, as clock.clinic_day_bounds
    #: The same, with another pet as frequent, of another clinic: its history primes a "data cold" run.
    other: Params | None = None


#: name -> (label, builder(table, params) -> (sql, prepared?)). "prepared" queries run as a prepared
#: statement with a generic plan (psycopg prepares a statement run 5 times; the generic plan skips
#: planning, and partitions are pruned at run time).
QUERIES: dict[str, str] = {
    "a": "(a) one clinic, one month (biggest clinic)",
    "a_small": "(a) one clinic, one month (median clinic)",
    "today": "today's abnormal results of one clinic, >= date_trunc('day', now())",
    "today_literal": "today's abnormal results, the Seoul day as literal bounds (emr.abnormal_today)",
    "b_pet": "(b) pet history, pet_id only (no key)",
    "b_clinic": "(b) pet history, pet_id + clinic_id (emr.lab_trend shape)",
    "hist_emr": "(b) patient history as emr.py runs it today (visits -> results, clinic key)",
    "hist_first": "(b) patient history, pet_id + clinic + from the pet's first visit",
    "hist_visits": "(b) patient history through visits, run-time pruning per visit",
    "hist_visits_prep": "(b) same, prepared (generic plan)",
    "c": "(c) month-wide aggregate, all clinics",
}
#: Results are collected at or after their visit, and within this long (send-out labs included).
RESULT_WINDOW = "31 days"


def history_through_visits(lab: str, visits: str) -> str:
    """Pet history: the pet's visits (plain table), then each visit's results in a nested loop whose
    inner side is pruned at run time to the month(s) of that visit (``%(pet)s``, ``%(clinic)s``)."""
    return (f"SELECT v.visited_at, v.reason, r.test_code, r.value, r.flag FROM {visits} v "
            f"LEFT JOIN LATERAL (SELECT test_code, value, flag FROM {lab} r "
            " WHERE r.clinic_id = %(clinic)s AND r.pet_id = v.pet_id AND r.visit_id = v.visit_id"
            f"   AND r.collected_at >= v.visited_at AND r.collected_at < v.visited_at + interval '{RESULT_WINDOW}') r"
            " ON true WHERE v.pet_id = %(pet)s ORDER BY v.visited_at DESC, r.test_code LIMIT 200")


def query_text(name: str, lab: str, p: Params) -> tuple[str, dict, bool]:
    """(SQL with %(name)s placeholders, values, prepared?) of query ``name`` against table ``lab``."""
    visits, pets = f"{S}.visits", f"{S}.pets"
    m0, m1 = p.month
    month = {"m0": m0, "m1": m1}
    agg = (f"SELECT test_code, count(*), avg(value), count(*) FILTER (WHERE flag <> 'N') FROM {lab} "
           "WHERE clinic_id = %(clinic)s AND collected_at >= %(m0)s AND collected_at < %(m1)s GROUP BY test_code")
    texts = {
        "a": (agg, {"clinic": p.clinic, **month}, False),
        "a_small": (agg, {"clinic": p.small_clinic, **month}, False),
        "today": (f"SELECT r.collected_at, p.name, p.species, r.test_code, r.value, r.flag FROM {lab} r "
                  f"JOIN {pets} p ON p.pet_id = r.pet_id WHERE r.clinic_id = %(clinic)s "
                  "AND r.collected_at >= date_trunc('day', now()) AND r.flag <> 'N' "
                  "ORDER BY r.collected_at DESC LIMIT 200", {"clinic": p.clinic}, False),
        "today_literal": (f"SELECT r.collected_at, p.name, p.species, r.test_code, r.value, r.flag FROM {lab} r "
                          f"JOIN {pets} p ON p.pet_id = r.pet_id WHERE r.clinic_id = %(clinic)s "
                          "AND r.collected_at >= %(d0)s AND r.collected_at < %(d1)s AND r.flag <> 'N' "
                          "ORDER BY r.collected_at DESC LIMIT 200",
                          {"clinic": p.clinic, "d0": p.today[0], "d1": p.today[1]}, False),
        "b_pet": (f"SELECT collected_at, test_code, value, flag FROM {lab} WHERE pet_id = %(pet)s "
                  "ORDER BY collected_at", {"pet": p.pet}, False),
        "b_clinic": (f"SELECT collected_at, test_code, value, flag FROM {lab} WHERE clinic_id = %(clinic)s "
                     "AND pet_id = %(pet)s ORDER BY collected_at", {"pet": p.pet, "clinic": p.pet_clinic}, False),
        "hist_emr": (f"SELECT v.visited_at, v.reason, r.test_code, r.value, r.flag FROM {visits} v "
                     f"LEFT JOIN {lab} r ON r.clinic_id = %(clinic)s AND r.pet_id = v.pet_id "
                     "AND r.visit_id = v.visit_id WHERE v.pet_id = %(pet)s "
                     "ORDER BY v.visited_at DESC, r.test_code LIMIT 200", {"pet": p.pet, "clinic": p.pet_clinic},
                     False),
        "hist_first": (f"SELECT collected_at, test_code, value, flag FROM {lab} WHERE clinic_id = %(clinic)s "
                       "AND pet_id = %(pet)s AND collected_at >= %(first)s ORDER BY collected_at",
                       {"pet": p.pet, "clinic": p.pet_clinic, "first": p.pet_first_visit}, False),
        "hist_visits": (history_through_visits(lab, visits), {"pet": p.pet, "clinic": p.pet_clinic}, False),
        "hist_visits_prep": (history_through_visits(lab, visits), {"pet": p.pet, "clinic": p.pet_clinic}, True),
        "c": (f"SELECT clinic_id, test_code, count(*), avg(value), count(*) FILTER (WHERE flag <> 'N') FROM {lab} "
              "WHERE collected_at >= %(m0)s AND collected_at < %(m1)s GROUP BY 1, 2", month, False),
    }
    return texts[name]


class Runner:
    """Runs one query on one connection: literal SQL, or EXECUTE of a statement prepared once per connection."""

    def __init__(self, conn: psycopg.Connection, name: str, lab: str, params: Params) -> None:
        text, values, self.prepared = query_text(name, lab, params)
        if self.prepared:
            keys = list(values)
            stmt = f"p_{name}_{abs(hash(lab)) % 10**8}"
            body = text
            for i, k in enumerate(keys, 1):
                body = body.replace(f"%({k})s", f"${i}")
            if conn.execute("SELECT 1 FROM pg_prepared_statements WHERE name = %s", (stmt,)).fetchone():
                conn.execute(f"DEALLOCATE {stmt}")  # a fresh generic plan, built under this run's settings
            conn.execute(f"PREPARE {stmt} AS {body}")  # noqa: S608 - our own fixed text
            self.query = sql.SQL("EXECUTE {}({})").format(
                sql.Identifier(stmt), sql.SQL(", ").join(sql.Literal(values[k]) for k in keys))
        else:
            self.query = sql.SQL(psycopg.ClientCursor(conn).mogrify(text, values))  # type: ignore[arg-type]

    def settings(self, extra: list[str]) -> list[str]:
        return [*extra, *(GENERIC if self.prepared else [])]


def timed_out() -> dict:
    return {"timed_out_s": QUERY_LIMIT_S, "plan_ms": None, "exec_ms": None, "total_ms": None, "scans": "-",
            "planned_rels": None, "shape": "", "pages": "-", "pages_read": None}


def limited(settings: list[str]) -> list[str]:
    return [*settings, f"SET LOCAL statement_timeout = '{QUERY_LIMIT_S}s'"]


def measure_warm(conn: psycopg.Connection, name: str, lab: str, params: Params, settings: list[str],
                 repeat: int) -> dict:
    runner = Runner(conn, name, lab, params)
    s = limited(runner.settings(settings))
    try:
        first = explain(conn, runner.query, s)  # warm the cache (and build the generic plan)
        if first["plan_ms"] + first["exec_ms"] > SLOW_QUERY_S * 1000:
            repeat = min(repeat, SLOW_QUERY_REPEAT)
        return _summary([explain(conn, runner.query, s) for _ in range(repeat)])
    except psycopg.errors.QueryCanceled:
        return timed_out()


def measure_cold(server: LocalPostgres, dsn: str, name: str, lab: str, params: Params, settings: list[str],
                 rounds: int, *, primed: bool = False) -> dict:
    """Restart (empty shared buffers), evict the server's files from the OS cache, warm only the catalogs
    (a plain EXPLAIN, which also builds a prepared statement's plan), then one EXPLAIN ANALYZE; median.

    ``primed`` ("data cold"): first run the same query once for another pet of another clinic. What that
    caches is what any running server has cached (the upper levels of every month's index, the catalogs),
    not this pet's rows: their index leaves and heap pages are still read from disk."""
    runs = []
    for _ in range(rounds):
        server.stop()
        evict_os_cache(server.data_dir)
        server.start()
        with connect(dsn, autocommit=True) as conn:
            runner = Runner(conn, name, lab, params)
            s = limited(runner.settings(settings))
            try:
                if primed:
                    assert params.other is not None, "pick_params sets the other pet"
                    other = Runner(conn, name, lab, params.other)
                    explain(conn, other.query, limited(other.settings(settings)))
                with conn.transaction():
                    for x in s:
                        conn.execute(x)
                    conn.execute(sql.SQL("EXPLAIN ") + runner.query)
                runs.append(explain(conn, runner.query, s))
            except psycopg.errors.QueryCanceled:
                return timed_out()
    return _summary(runs)


# -- building --------------------------------------------------------------------------------------
def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return round(time.perf_counter() - t0, 3)


def create_base(conn: psycopg.Connection) -> None:
    """Schema, the plain lab_results with its best indexes, plain visits and pets as the EMR has them."""
    conn.execute(f"DROP SCHEMA IF EXISTS {S} CASCADE")
    conn.execute(f"CREATE SCHEMA {S}")
    conn.execute(f"CREATE TABLE {FLAT} (LIKE public.lab_results INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    conn.execute(f"CREATE INDEX ON {FLAT} (clinic_id, collected_at)")
    conn.execute(f"CREATE INDEX ON {FLAT} (pet_id, collected_at)")
    conn.execute(f"CREATE TABLE {S}.visits (LIKE public.visits INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    conn.execute(f"CREATE TABLE {S}.pets (LIKE public.pets INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    # The product's parent-level settings: no maintenance of public.lab_results during the bench.
    conn.execute("UPDATE partman.part_config SET automatic_maintenance = 'off' WHERE parent_table LIKE 'public.%'")


def index_base(conn: psycopg.Connection) -> None:
    conn.execute(f"ALTER TABLE {S}.visits ADD PRIMARY KEY (visit_id)")
    conn.execute(f"CREATE INDEX ON {S}.visits (pet_id, visited_at)")
    conn.execute(f"ALTER TABLE {S}.pets ADD PRIMARY KEY (pet_id)")


def create_scheme(conn: psycopg.Connection, scheme: Scheme, start: datetime, clinic_ids: list[int]) -> None:
    """The scheme's table through pg_partman, as migrations 0003/0006 build the product's (month premake 3,
    no month-level default), with every clinic covered in every month."""
    t = scheme.table
    conn.execute(f"CREATE TABLE {t} (LIKE public.lab_results INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
                 "PARTITION BY RANGE (collected_at)")
    conn.execute(f"CREATE INDEX ON {t} (pet_id, collected_at)")
    if scheme.clinic_interval != 1:  # a leaf holds several clinics: it needs the clinic index
        conn.execute(f"CREATE INDEX ON {t} (clinic_id, collected_at)")
    with conn.transaction():
        conn.execute("SELECT partman.create_parent(p_parent_table := %s, p_control := 'collected_at', "
                     "p_type := 'native', p_interval := 'monthly', p_premake := 3, p_start_partition := %s, "
                     "p_jobmon := false)", (t, start.strftime("%Y-%m-%d %H:%M:%S")))
        conn.execute("UPDATE partman.part_config SET infinite_time_partitions = true WHERE parent_table = %s", (t,))
        if scheme.clinic_interval is not None:
            conn.execute("SELECT partman.create_sub_parent(p_top_parent := %s, p_control := 'clinic_id', "
                         "p_type := 'native', p_interval := %s, p_native_check := 'yes', p_premake := 1, "
                         "p_jobmon := false)", (t, str(scheme.clinic_interval)))
        conn.execute(f"DROP TABLE {t}_default")
    if scheme.clinic_interval is not None:
        ensure_leaves(conn, scheme, clinic_ids)


def ensure_leaves(conn: psycopg.Connection, scheme: Scheme, clinic_ids: list[int]) -> int:
    """Migration 0006's ensure_clinic_leaves, month by month (one transaction each keeps locks bounded)."""
    months = [r[0] for r in conn.execute(
        "SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass AND c.relkind = 'p' ORDER BY 1", (scheme.table,))]
    made = 0
    for m in months:
        made += _ensure_month(conn, m, scheme, clinic_ids)
    return made


def _ensure_month(conn: psycopg.Connection, month: str, scheme: Scheme, clinic_ids: list[int]) -> int:
    assert scheme.clinic_interval is not None
    have = {r[0] for r in conn.execute(
        r"SELECT (regexp_match(pg_get_expr(l.relpartbound, l.oid), 'FROM \((-?\d+)\)'))[1]::bigint "
        "FROM pg_inherits li JOIN pg_class l ON l.oid = li.inhrelid WHERE li.inhparent = %s::regclass", (month,))}
    step = scheme.clinic_interval
    missing = sorted({c - c % step for c in clinic_ids} - have)
    if missing:
        with conn.transaction():
            conn.execute("SELECT partman.create_partition_id(%s, %s::bigint[])", (month, missing))
    return len(missing)


def drop_scheme(conn: psycopg.Connection, scheme: Scheme) -> None:
    like = scheme.table + "%"
    conn.execute("DELETE FROM partman.part_config_sub WHERE sub_parent LIKE %s", (like,))
    conn.execute("DELETE FROM partman.part_config WHERE parent_table LIKE %s", (like,))
    months = [r[0] for r in conn.execute(
        "SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(%s)", (scheme.table,))]
    for m in months:  # month by month: one DROP of 60,000 leaves would need a lock table that size
        conn.execute(f"DROP TABLE {m}")
    conn.execute(f"DROP TABLE IF EXISTS {scheme.table}")
    conn.execute(f"DROP TABLE IF EXISTS partman.template_{scheme.table.replace('.', '_')}")


def leaves(conn: psycopg.Connection, table: str) -> dict:
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE isleaf), count(*) FILTER (WHERE NOT isleaf AND level > 0), "
        "pg_size_pretty(sum(pg_total_relation_size(relid))), sum(pg_total_relation_size(relid)) "
        "FROM pg_partition_tree(%s::regclass)", (table,)).fetchone()
    return {"leaves": row[0], "sub_parents": row[1], "size": row[2], "bytes": int(row[3] or 0)}


CATALOGS = ("pg_class", "pg_attribute", "pg_statistic", "pg_index", "pg_inherits", "pg_depend", "pg_constraint",
            "pg_type")


def catalog_size(conn: psycopg.Connection) -> dict:
    """Catalog sizes once compacted: dropped schemes leave dead catalog rows that are not this scheme's."""
    conn.execute(f"VACUUM FULL {', '.join(CATALOGS)}")
    sizes = {c: conn.execute("SELECT pg_total_relation_size(%s::regclass)", (c,)).fetchone()[0] for c in CATALOGS}
    return {"mb": {c: round(b / 2**20, 1) for c, b in sizes.items()}, "total_mb": round(sum(sizes.values()) / 2**20, 1),
            "relations": conn.execute("SELECT count(*) FROM pg_class").fetchone()[0]}


def maintenance(conn: psycopg.Connection, scheme: Scheme, clinic_ids: list[int]) -> dict:
    """partman.run_maintenance over the scheme's partition sets (the product's job also covers clinic
    leaves, timed with it), with nothing to do, then with one more month to premake."""
    def run() -> None:
        conn.execute("SELECT partman.run_maintenance(p_analyze := false, p_jobmon := false)")
        if scheme.clinic_interval is not None:
            ensure_leaves(conn, scheme, clinic_ids)

    steady = _timed(run)
    conn.execute("UPDATE partman.part_config SET premake = premake + 1 WHERE parent_table = %s", (scheme.table,))
    before = leaves(conn, scheme.table)["leaves"]
    new_month = _timed(run)
    return {"steady_s": steady, "new_month_s": new_month, "new_month_leaves": leaves(conn, scheme.table)["leaves"]
            - before}


def archive_oldest(conn: psycopg.Connection, scheme: Scheme) -> dict:
    """What the archiver does to a month once its Parquet copy is verified: detach concurrently, then drop."""
    oldest = conn.execute(
        r"SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass ORDER BY c.relname LIMIT 1", (scheme.table,)).fetchone()[0]
    detach = _timed(lambda: conn.execute(f"ALTER TABLE {scheme.table} DETACH PARTITION {oldest} CONCURRENTLY"))
    drop = _timed(lambda: conn.execute(f"DROP TABLE {oldest}"))
    conn.execute("DELETE FROM partman.part_config_sub WHERE sub_parent = %s", (oldest,))
    conn.execute("DELETE FROM partman.part_config WHERE parent_table = %s", (oldest,))
    return {"month": oldest, "detach_concurrently_s": detach, "drop_s": drop}


def pg_dump_schema(server: LocalPostgres) -> dict:
    env = {**os.environ, "PGPASSWORD": server.passwords["superuser"]}
    t0 = time.perf_counter()
    proc = subprocess.run([str(PG_BIN / "pg_dump"), "--schema-only", "-h", "127.0.0.1", "-p", str(server.port),
                           "-U", "postgres", "careflow"], capture_output=True, env=env, check=False, timeout=3600)
    seconds = round(time.perf_counter() - t0, 2)
    if proc.returncode != 0:
        return {"seconds": seconds, "error": proc.stderr.decode(errors="replace").strip()[-200:]}
    return {"seconds": seconds, "mb": round(len(proc.stdout) / 2**20, 1)}


def backend_memory_after(conn: psycopg.Connection, query: sql.Composable) -> float | None:
    """MB a fresh backend holds after planning ``query`` (relcache and plan of every planned leaf); None if
    planning alone outlasted QUERY_LIMIT_S."""
    try:
        with conn.transaction():
            conn.execute(limited([])[0])
            conn.execute(sql.SQL("EXPLAIN ") + query)
    except psycopg.errors.QueryCanceled:
        return None
    return round(conn.execute("SELECT sum(total_bytes) FROM pg_backend_memory_contexts").fetchone()[0] / 2**20, 1)


# -- the run ---------------------------------------------------------------------------------------
def run_scale(spec: DataSpec, schemes: list[Scheme], *, repeat: int = 5, cold_repeat: int = 3,
              progress: Callable[[str], None] = print, checkpoint: Callable[[dict], None] | None = None) -> dict:
    """The whole scale benchmark on a throwaway local server (always removed, also on failure).

    ``checkpoint`` gets the figures so far after each scheme: a run of hours stopped half-way keeps them."""
    from careflow_ha.data.localserver import start_local_server

    spec = spec.validated()
    if repeat < 1 or cold_repeat < 0:
        raise UsageError(f"--repeat {repeat} / --cold-repeat {cold_repeat}: use at least 1 and 0")
    # A keyless query over 60,000 leaves locks every leaf and index: the lock table must hold them.
    server = start_local_server(durable=True, extra_conf={"max_locks_per_transaction": "4096",
                                                         "max_wal_size": "16GB", "checkpoint_timeout": "30min"})
    try:
        dsn = server.dsn("superuser")
        migrate(server.dsn("app"))
        with tempfile.TemporaryDirectory(prefix="careflow-bench-scale-") as tmp:
            out = _run(server, dsn, spec, schemes, repeat, cold_repeat, Path(tmp), progress, checkpoint)
        out["local_server_dir"] = str(server.base_dir)
        return out
    finally:
        try:  # a shutdown checkpoint after a big load can outlast pg_ctl's wait: stop harder, remove anyway
            server.stop(timeout=600)
        finally:
            server.remove()


def _run(server: LocalPostgres, dsn: str, spec: DataSpec, schemes: list[Scheme], repeat: int, cold_repeat: int,
         tmp: Path, progress: Callable[[str], None], checkpoint: Callable[[dict], None] | None) -> dict:
    from tqdm import tqdm

    t_world = time.perf_counter()
    world = build_world(spec)
    clinic_ids = [c[0] for c in world.clinics]
    out: dict = {"rows": spec.rows, "clinics": spec.clinics, "months": spec.months, "seed": spec.seed,
                 "repeat": repeat, "cold_repeat": cold_repeat, "schemes": {}}
    with connect(dsn, autocommit=True) as conn:
        create_base(conn)
        with conn.cursor() as cur, cur.copy(f"COPY {S}.pets (pet_id, owner_id, clinic_id, name, species, breed, "
                                            "sex, birth_date, weight_kg) FROM STDIN") as copy:
            for row in world.pets:
                copy.write_row(row)
        out["world_s"] = round(time.perf_counter() - t_world, 1)
        # Generate once: visits straight into the plain visits table, results to files (then into each table).
        files: list[Path] = []
        flat_s, t_gen = 0.0, time.perf_counter()
        cols = ", ".join(RESULT_COLUMNS)
        with tqdm(total=spec.rows, unit="rows", unit_scale=True, desc="generate + COPY plain", smoothing=0.05) as bar:
            for chunk in iter_chunks_ahead(world, spec):
                path = tmp / f"{chunk.index:07d}.csv"
                path.write_bytes(chunk.results_csv)
                files.append(path)
                with conn.cursor() as cur:
                    with cur.copy(f"COPY {S}.visits ({', '.join(VISIT_COLUMNS)}) FROM STDIN") as copy:
                        for row in chunk.visits:
                            copy.write_row(row)
                    t0 = time.perf_counter()
                    with cur.copy(f"COPY {FLAT} ({cols}) FROM STDIN (FORMAT csv)") as copy:
                        copy.write(chunk.results_csv)
                    flat_s += time.perf_counter() - t0
                bar.update(chunk.n_results)
        out["generate_and_copy_plain_s"] = round(time.perf_counter() - t_gen, 1)
        out["plain"] = {"copy_s": round(flat_s, 3), "rows_per_s": round(spec.rows / flat_s)}
        index_base(conn)
        out["plain"]["vacuum_analyze_s"] = _timed(lambda: conn.execute(f"VACUUM ANALYZE {FLAT}, {S}.visits, {S}.pets"))
        out["plain"]["size"] = conn.execute("SELECT pg_size_pretty(pg_total_relation_size(%s::regclass))",
                                            (FLAT,)).fetchone()[0]
        out["catalog_baseline"] = catalog_size(conn)
        params = pick_params(conn, spec)
        out["params"] = {k: (str(v) if not isinstance(v, int) else v) for k, v in params.__dict__.items()
                         if k != "other"} | {"other_pet": params.other.pet, "other_pet_clinic": params.other.pet_clinic}
        progress(f"plain table loaded: {spec.rows:,} rows in {out['plain']['copy_s']} s of COPY "
                 f"({out['plain']['rows_per_s']:,} rows/s); generation + COPY {out['generate_and_copy_plain_s']} s")
        variants: dict[str, str] = {}
        for name in QUERIES:
            runs = {v: measure_warm(conn, name, FLAT, params, s, repeat) for v, s in FLAT_VARIANTS.items()}
            variants[name] = min(runs, key=lambda v: runs[v]["total_ms"])
    for scheme in schemes:
        progress(f"scheme {scheme.name}: {scheme.description}")
        out["schemes"][scheme.name] = r = {"description": scheme.description}
        with connect(dsn, autocommit=True) as conn:
            r["create_s"] = _timed(lambda s=scheme: create_scheme(conn, s, spec.window_start, clinic_ids))
            r |= leaves(conn, scheme.table)
            progress(f"  built {r['leaves']:,} leaves in {r['create_s']} s; loading")
            copy_s = 0.0
            with tqdm(total=spec.rows, unit="rows", unit_scale=True, desc=f"COPY {scheme.name}", leave=False) as bar:
                for path in files:
                    data = path.read_bytes()
                    t0 = time.perf_counter()
                    with conn.cursor() as cur, cur.copy(f"COPY {scheme.table} ({cols}) FROM STDIN (FORMAT csv)") as cp:
                        cp.write(data)
                    copy_s += time.perf_counter() - t0
                    bar.update(data.count(b"\n"))
            r["copy_s"], r["rows_per_s"] = round(copy_s, 3), round(spec.rows / copy_s)
            r["vacuum_analyze_s"] = _timed(lambda s=scheme: conn.execute(f"VACUUM ANALYZE {s.table}"))
            r |= leaves(conn, scheme.table)
            progress(f"  COPY {r['copy_s']} s ({r['rows_per_s']:,} rows/s), VACUUM ANALYZE {r['vacuum_analyze_s']} s")
            r["queries"] = {}
            for name in tqdm(list(QUERIES), desc=f"{scheme.name} warm", leave=False):
                v = variants[name]
                flat = {**measure_warm(conn, name, FLAT, params, FLAT_VARIANTS[v], repeat), "variant": v}
                part = measure_warm(conn, name, scheme.table, params, [], repeat)
                r["queries"][name] = {"flat": flat, "part": part}
        with connect(dsn, autocommit=True) as conn:  # a fresh backend: what one keyless query costs it
            r["backend_mb_after_keyless_plan"] = backend_memory_after(
                conn, Runner(conn, "b_pet", scheme.table, params).query)
        with connect(dsn, autocommit=True) as conn:
            r["catalog"] = catalog_size(conn)
            mid = month_of(conn, scheme.table, params)
            r["analyze_month_s"] = _timed(lambda m=mid: conn.execute(f"ANALYZE {m}"))
            r["maintenance"] = maintenance(conn, scheme, clinic_ids)
        r["pg_dump_schema_only"] = pg_dump_schema(server)
        progress(f"  maintenance {r['maintenance']}, pg_dump --schema-only {r['pg_dump_schema_only']}")
        if cold_repeat:  # the plain table again next to each scheme: the box's load moves over hours
            for name in tqdm(list(QUERIES), desc=f"{scheme.name} cold", leave=False):
                v = variants[name]
                r["queries"][name]["flat_cold"] = {
                    **measure_cold(server, dsn, name, FLAT, params, FLAT_VARIANTS[v], cold_repeat), "variant": v}
                r["queries"][name]["part_cold"] = measure_cold(server, dsn, name, scheme.table, params, [],
                                                               cold_repeat)
            for name in tqdm(list(DATA_COLD_QUERIES), desc=f"{scheme.name} data cold", leave=False):
                v = variants[name]
                r["queries"][name]["flat_data_cold"] = {
                    **measure_cold(server, dsn, name, FLAT, params, FLAT_VARIANTS[v], cold_repeat, primed=True),
                    "variant": v}
                r["queries"][name]["part_data_cold"] = measure_cold(server, dsn, name, scheme.table, params, [],
                                                                    cold_repeat, primed=True)
        if scheme.clinic_interval != 1:  # a leaf holds many clinics: does ordering a closed month by clinic pay?
            with connect(dsn, autocommit=True) as conn:
                r["cluster_month"] = cluster_month(conn, month_of(conn, scheme.table, params))
            progress(f"  clustered the measured month: {r['cluster_month']}")
            for name in CLUSTERED_QUERIES:
                q = r["queries"][name]
                with connect(dsn, autocommit=True) as conn:
                    q["part_clustered"] = measure_warm(conn, name, scheme.table, params, [], repeat)
                if cold_repeat:
                    q["part_clustered_cold"] = measure_cold(server, dsn, name, scheme.table, params, [], cold_repeat)
        with connect(dsn, autocommit=True) as conn:
            r["archive"] = archive_oldest(conn, scheme)
            r["drop_s"] = _timed(lambda s=scheme: drop_scheme(conn, s))
        progress(f"  archived {r['archive']}; dropped in {r['drop_s']} s")
        progress("\n".join([*render_scheme(scheme.name, r), OPERATIONS_HEADER, render_operations(scheme.name, r)]))
        if checkpoint is not None:
            checkpoint(out)
    return out


def write_checkpoint(folder: Path, result: dict) -> None:
    """result.json and report.md (the rendered tables) of the schemes measured so far."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps(result, indent=2, default=str))
    (folder / "report.md").write_text("# bench partitioning --scale network\n\n"
                                      f"Schemes measured so far: {', '.join(result['schemes'])}.\n\n"
                                      f"```\n{render(result)}\n```\n")


def month_of(conn: psycopg.Connection, table: str, params: Params) -> str:
    """The month partition of ``table`` that holds the measured month."""
    return conn.execute(
        "SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass AND c.relname LIKE %s", (table, f"%{params.month[0]:_p%Y_%m}"),
    ).fetchone()[0]


#: The pet-history queries, also measured "data cold" (measure_cold's ``primed``).
DATA_COLD_QUERIES = ("b_pet", "b_clinic", "hist_emr", "hist_first", "hist_visits", "hist_visits_prep")
#: The queries that a month ordered by clinic can speed up.
CLUSTERED_QUERIES = ("a", "a_small")


def cluster_month(conn: psycopg.Connection, month: str) -> dict:
    """CLUSTER one (closed) month on its (clinic_id, collected_at) index, then ANALYZE it: a clinic's month
    becomes a run of adjacent pages instead of one page per row. CLUSTER holds ACCESS EXCLUSIVE on the month
    while it rewrites it (readers of that month wait), so this is for months nobody writes any more."""
    index = conn.execute(
        "SELECT quote_ident(c.relname) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
        "WHERE i.indrelid = %s::regclass AND a.attname = 'clinic_id'", (month,),
    ).fetchone()[0]  # unqualified: CLUSTER ... USING takes the index's name in the table's schema
    rows = conn.execute(f"SELECT count(*) FROM {month}").fetchone()[0]  # noqa: S608 - our own relation name
    return {"month": month, "rows": rows, "cluster_s": _timed(lambda: conn.execute(f"CLUSTER {month} USING {index}")),
            "analyze_s": _timed(lambda: conn.execute(f"ANALYZE {month}"))}


def pick_params(conn: psycopg.Connection, spec: DataSpec) -> Params:
    """A mid-window month, the biggest and a median clinic, a frequent pet (the 95th percentile) with its
    home clinic and first visit."""
    budgets = month_budgets(spec)
    lo, hi, _ = budgets[len(budgets) // 2]
    pets = conn.execute(
        f"SELECT pet_id, min(clinic_id) FROM {S}.visits GROUP BY pet_id ORDER BY count(*) DESC, pet_id "
        f"LIMIT 50 OFFSET (SELECT count(DISTINCT pet_id) / 20 FROM {S}.visits)").fetchall()
    pet, pet_clinic = pets[0]
    # The next pet as frequent at another clinic (any other pet if the network has one clinic).
    other_pet, other_clinic = next((p for p in pets[1:] if p[1] != pet_clinic), pets[-1])
    first, other_first = (conn.execute(f"SELECT min(visited_at) FROM {S}.visits WHERE pet_id = %s", (p,)).fetchone()[0]
                          for p in (pet, other_pet))
    from careflow_ha.data.clock import KST, clinic_day_bounds

    base = Params(clinic=1, small_clinic=max(1, spec.clinics // 2),
                  month=(datetime.fromtimestamp(lo, KST), datetime.fromtimestamp(hi, KST)),
                  pet=other_pet, pet_clinic=other_clinic, pet_first_visit=other_first,
                  today=clinic_day_bounds(conn.execute("SELECT now()").fetchone()[0]))
    return replace(base, pet=pet, pet_clinic=pet_clinic, pet_first_visit=first, other=base)


# -- report ----------------------------------------------------------------------------------------
def ratio(part: dict, flat: dict) -> float | None:
    """partitioned / plain total time; None when either outlasted QUERY_LIMIT_S."""
    if part["total_ms"] is None or flat["total_ms"] is None:
        return None
    return round(part["total_ms"] / flat["total_ms"], 2) if flat["total_ms"] else float("inf")


def _ms(m: dict, key: str, width: int) -> str:
    if m[key] is None:
        return f"{'>' + str(m['timed_out_s']) + ' s':>{width}}" if key == "total_ms" else f"{'-':>{width}}"
    return f"{m[key]:>{width}.3f}"


def render_scheme(name: str, s: dict) -> list[str]:
    """One scheme's query table: each query warm and cold, plain vs partitioned, with the ratio."""
    lines = [f"== {name}: {s['description']}", f"{'query':62} {'cache':14} {'plain ms':>9} {'plan':>8} "
             f"{'part ms':>9} {'plan':>8} {'ratio':>7} {'leaves':>6} {'pages plain/part':>17}"]
    for q, m in s["queries"].items():
        first = True
        for cache, fk, pk in CACHE_ROWS:
            if fk not in m or pk not in m:
                continue
            f, p = m[fk], m[pk]
            r = ratio(p, f)
            lines.append(f"{QUERIES[q] if first else '':62} {cache:14} {_ms(f, 'total_ms', 9)} "
                         f"{_ms(f, 'plan_ms', 8)} {_ms(p, 'total_ms', 9)} {_ms(p, 'plan_ms', 8)} "
                         f"{'-' if r is None else f'{r:.2f}x':>7} {p['scans']:>6} {f['pages']:>8}/{p['pages']:<8}")
            first = False
    return [*lines, ""]


#: (label, plain key, partitioned key) of the rows a query can have.
CACHE_ROWS = (("warm", "flat", "part"), ("cold", "flat_cold", "part_cold"),
              ("data cold", "flat_data_cold", "part_data_cold"),
              ("clustered warm", "flat", "part_clustered"), ("clustered cold", "flat_cold", "part_clustered_cold"))


def render_operations(name: str, s: dict) -> str:
    mt, ar, dump = s.get("maintenance", {}), s.get("archive", {}), s.get("pg_dump_schema_only", {})
    return (f"{name:16} {s['leaves']:>7,} {s['create_s']:>8} {s['copy_s']:>8} {s['rows_per_s']:>9,} "
            f"{s['vacuum_analyze_s']:>8} {s['size']:>8} {s['catalog']['total_mb']:>10} "
            f"{s['backend_mb_after_keyless_plan'] or '-':>10} {mt.get('steady_s', '-'):>8} "
            f"{mt.get('new_month_s', '-'):>11} {s['analyze_month_s']:>15} "
            f"{ar.get('detach_concurrently_s', '-'):>8} {ar.get('drop_s', '-'):>7} "
            f"{dump.get('seconds', '-'):>9} {dump.get('mb', '-'):>7}")


OPERATIONS_HEADER = (f"{'scheme':16} {'leaves':>7} {'build s':>8} {'COPY s':>8} {'rows/s':>9} {'VAC AN s':>8} "
                     f"{'size':>8} {'catalog MB':>10} {'backend MB':>10} {'maint s':>8} {'new month s':>11} "
                     f"{'ANALYZE month s':>15} {'detach s':>8} {'drop s':>7} {'pg_dump s':>9} {'dump MB':>7}")


def render(r: dict) -> str:
    """Per scheme: build and load, operations, and each query warm and cold against the plain table."""
    lines = [f"bench partitioning --scale network: {r['rows']:,} lab results, {r['clinics']:,} clinics, "
             f"{r['months']} months, seed {r['seed']}; medians of {r['repeat']} warm runs and {r['cold_repeat']} "
             "cold runs (server restarted, its files evicted from the OS cache)",
             f"plain table: COPY {r['plain']['copy_s']} s ({r['plain']['rows_per_s']:,} rows/s), "
             f"VACUUM ANALYZE {r['plain']['vacuum_analyze_s']} s, size {r['plain']['size']}; generation + COPY "
             f"{r['generate_and_copy_plain_s']} s (world {r['world_s']} s); catalogs "
             f"{r['catalog_baseline']['total_mb']} MB", f"query parameters: {r['params']}", ""]
    for name, s in r["schemes"].items():
        lines += render_scheme(name, s)
    lines.append("ratio = partitioned / plain total time (plan + execution); < 1 is faster than the plain table")
    lines += ["", OPERATIONS_HEADER, *(render_operations(n, s) for n, s in r["schemes"].items())]
    return "\n".join(lines)
