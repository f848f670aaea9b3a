"""Migration 0008 against a real PostgreSQL 15 with pg_partman: today's per-clinic lab -> months-only.

Each scenario gets a server of its own (the conversion changes lab_results for good, which the shared
``local_pg`` tests must never see). The main one is an existing lab: migrated to 0007 and loaded with
per-clinic leaves, then ``data migrate`` with ``careflow_partition_scheme: months-only``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from careflow_ha.archive.archiver import Archiver
from careflow_ha.archive.bench import BENCH_TEST, Sample, WriteLoad
from careflow_ha.archive.store import LocalStore
from careflow_ha.data import db
from careflow_ha.data.clock import KST, seoul_month_start
from careflow_ha.data.db import MIGRATIONS_DIR, migrate
from careflow_ha.data.generator import DataSpec
from careflow_ha.data.loader import load
from careflow_ha.data.localserver import LocalPostgres, start_local_server
from careflow_ha.data.partitions import check, maintain, status
from careflow_ha.errors import CheckFailed, NotReady, UsageError

pytestmark = pytest.mark.localpg

#: Ends at 16:00 UTC yesterday, 01:00 the next day in Seoul: a UTC/Seoul day mix-up moves rows.
_END = (datetime.now(UTC) - timedelta(days=1)).replace(hour=16, minute=0, second=0, microsecond=0)
SPEC = DataSpec(rows=12_000, clinics=3, months=8, seed=7, end=_END)


def fingerprint(dsn: str) -> tuple[int, str]:
    """Row count and an md5 over every row in result_id order (the write load's own rows aside): equal means
    every row kept, unchanged."""
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*), md5(string_agg(r::text, '|' ORDER BY result_id)) FROM lab_results r "
                            "WHERE test_code <> %s", (BENCH_TEST,)).fetchone()


def months(conn: psycopg.Connection) -> list[tuple[str, str, int]]:
    """(month table, relkind, oid) of every month, oldest first."""
    return conn.execute("SELECT c.relname, c.relkind::text, c.oid::int FROM pg_inherits i "
                        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'lab_results'::regclass "
                        "ORDER BY c.relname").fetchall()


def index_columns(conn: psycopg.Connection, table: str) -> set[str]:
    """The column lists of ``table``'s indexes that are attached to an index of lab_results."""
    return {r[0] for r in conn.execute(
        "SELECT regexp_replace(pg_get_indexdef(i.indexrelid), '.* USING btree ', '') FROM pg_index i "
        "JOIN pg_inherits h ON h.inhrelid = i.indexrelid "
        "JOIN pg_index p ON p.indexrelid = h.inhparent AND p.indrelid = 'lab_results'::regclass AND p.indisvalid "
        "WHERE i.indrelid = %s::regclass", (table,))}


def layout(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT lab_results_layout()").fetchone()[0]


@dataclass
class Lab:
    server: LocalPostgres = field(repr=False)
    before: tuple[int, str]
    months_before: list[str]
    done: list[str]
    lines: list[str]
    writes: list[Sample]  # a write load's inserts, paced through the whole conversion
    conversion: tuple[float, float]

    @property
    def dsn(self) -> str:
        return self.server.dsn("app")


def _server() -> LocalPostgres:
    return start_local_server(durable=False)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    """An existing lab (0001-0007, per-clinic, loaded), then `data migrate` with months-only: 0008 converts."""
    server = _server()
    try:
        old = tmp_path_factory.mktemp("migrations-0007")
        for path in sorted(MIGRATIONS_DIR.glob("000[1-7]_*")):
            shutil.copy(path, old)
        dsn = server.dsn("app")
        migrate(dsn, old)
        load(dsn, SPEC, progress=False)
        with psycopg.connect(dsn) as conn:
            assert {kind for _, kind, _ in months(conn)} == {"p"}, "the starting point is per-clinic"
            names = [name for name, _, _ in months(conn)]
        before = fingerprint(dsn)
        lines: list[str] = []
        writes = WriteLoad(dsn, writers=2, rate=200, clinic_id=1)  # into today's month, as the EMR writes
        writes.start()
        try:
            t0 = time.monotonic()
            done = migrate(dsn, scheme="months-only", progress=lines.append)
            t1 = time.monotonic()
            time.sleep(0.5)
        finally:
            samples = writes.stop()
        yield Lab(server, before, names, done, lines, samples, (t0, t1))
    finally:
        server.stop()
        server.remove()


def test_the_upgrade_applies_0008_and_converts_every_month(lab):
    assert lab.done == ["0008_partition_scheme", "0009_refresh_daily_serialized", "0010_cluster_closed_months",
                        "lab_results layout: per-clinic -> months-only"]
    assert len(lab.lines) == len(lab.months_before)
    assert all(f"lab_results: {m} is months-only" in line for m, line in zip(lab.months_before, lab.lines,
                                                                                    strict=True))
    assert layout(lab.dsn) == "months-only"


def test_every_row_is_kept_and_in_its_seoul_month(lab):
    assert fingerprint(lab.dsn) == lab.before
    assert lab.before[0] == SPEC.rows
    with psycopg.connect(lab.dsn) as conn:
        misplaced = conn.execute(
            "SELECT count(*) FROM lab_results WHERE 'lab_results_p' || to_char(collected_at AT TIME ZONE "
            "'Asia/Seoul', 'YYYY_MM') <> tableoid::regclass::text").fetchone()[0]
    assert misplaced == 0


def test_writes_go_on_through_the_conversion_and_none_fails_or_is_lost(lab):
    t0, t1 = lab.conversion
    assert len([s for s in lab.writes if t0 <= s.started <= t1]) >= 10, "the load overlapped the conversion"
    assert [s.error for s in lab.writes if not s.ok] == []  # e.g. no deadlock with the swap's lock
    with psycopg.connect(lab.dsn) as conn:
        written = conn.execute("SELECT count(*) FROM lab_results WHERE test_code = %s", (BENCH_TEST,)).fetchone()[0]
    assert written == len(lab.writes)


def test_every_month_is_one_table_with_both_indexes_and_partman_keeps_one_set(lab):
    with psycopg.connect(lab.dsn) as conn:
        now = months(conn)
        assert [name for name, _, _ in now] == lab.months_before
        assert {kind for _, kind, _ in now} == {"r"}
        assert conn.execute("SELECT count(*) FROM pg_partition_tree('lab_results')").fetchone()[0] == len(now) + 1
        for name, _, _ in now:
            assert index_columns(conn, name) == {"(pet_id, collected_at)", "(clinic_id, collected_at)"}, name
        assert conn.execute("SELECT array_agg(parent_table) FROM partman.part_config").fetchone()[0] == [
            "public.lab_results"]
        assert conn.execute("SELECT count(*) FROM partman.part_config_sub").fetchone()[0] == 0
        # partman's template for the set survives (the months shared it).
        assert conn.execute("SELECT to_regclass(template_table) IS NOT NULL FROM partman.part_config").fetchone()[0]
        shown = status(conn)  # what `partitions status` prints
        assert (shown["scheme"], shown["leaves"], shown["months"]) == ("months-only", len(now), len(now))
        assert {row["clinics"] for row in shown["partitions"]} == {"all"}
        # The read-only role still reads the new tables (default privileges).
        assert conn.execute("SELECT bool_and(has_table_privilege('careflow_ro', c.oid, 'SELECT')) FROM pg_inherits i "
                            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'lab_results'::regclass"
                            ).fetchone()[0]


def test_a_rerun_changes_nothing(lab):
    with psycopg.connect(lab.dsn) as conn:
        before = months(conn)
    assert migrate(lab.dsn, scheme="months-only") == []
    with psycopg.connect(lab.dsn) as conn:
        assert months(conn) == before  # same tables (oids): nothing rebuilt
    assert fingerprint(lab.dsn) == lab.before


def test_going_back_to_per_clinic_is_refused_by_name(lab):
    with pytest.raises(UsageError) as err:
        migrate(lab.dsn, scheme="per-clinic")
    assert "going back to per-clinic leaves is not supported; set careflow_partition_scheme: months-only" in str(
        err.value)
    assert "\n" not in str(err.value)
    assert layout(lab.dsn) == "months-only"


def test_a_clinic_month_query_reads_one_month_through_the_clinic_index(lab):
    start = seoul_month_start(SPEC.end, -1)
    with psycopg.connect(lab.dsn) as conn:
        conn.execute("SET enable_seqscan = off")  # tiny tables: show that the index is there and used
        plan = conn.execute("EXPLAIN (FORMAT JSON) SELECT count(*) FROM lab_results WHERE clinic_id = 2 "
                            "AND collected_at >= %s AND collected_at < %s", (start, seoul_month_start(start, 1))
                            ).fetchone()[0][0]["Plan"]
    text = str(plan)
    assert f"lab_results_p{start:%Y_%m}_clinic_id_collected_at_idx" in text
    assert text.count("'Relation Name'") == 1


def test_maintenance_still_makes_future_months_and_they_are_months_only(lab):
    with psycopg.connect(lab.dsn, autocommit=True) as conn:
        before = {name for name, _, _ in months(conn)}
        conn.execute("UPDATE partman.part_config SET premake = premake + 2 WHERE parent_table = 'public.lab_results'")
        try:
            conn.execute("CALL run_partition_maintenance()")  # what the pg_cron job runs
        finally:
            conn.execute("UPDATE partman.part_config SET premake = premake - 2 "
                         "WHERE parent_table = 'public.lab_results'")
        new = [(name, kind) for name, kind, _ in months(conn) if name not in before]
        assert len(new) == 2
        assert {kind for _, kind in new} == {"r"}
        for name, _ in new:
            assert index_columns(conn, name) == {"(pet_id, collected_at)", "(clinic_id, collected_at)"}
        failed = [(c.name, c.detail) for c in check(conn) if c.status == "FAIL"]
    assert failed == []


def _in_clinic_order(conn: psycopg.Connection, month: str) -> bool:
    """The month's rows, in the order they lie on disk, by clinic: never a clinic id lower than the one before."""
    return conn.execute(f"SELECT coalesce(bool_and(clinic_id >= prev), true) FROM (SELECT clinic_id, "  # noqa: S608
                        f"lag(clinic_id) OVER (ORDER BY ctid) AS prev FROM {month}) t").fetchone()[0]


def _closed(conn: psycopg.Connection) -> tuple[list[str], list[str]]:
    """(months that ended more than 31 days ago, the others), by name, oldest first."""
    rows = conn.execute(
        "SELECT c.relname, (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]::timestamptz "
        "< now() - interval '31 days' FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'lab_results'::regclass ORDER BY c.relname").fetchall()
    return [n for n, closed in rows if closed], [n for n, closed in rows if not closed]


def test_closed_months_are_put_in_clinic_order_one_lock_at_a_time_and_keep_every_row(lab):
    from careflow_ha.load.emr import RESULT_WINDOW

    assert f"interval '{RESULT_WINDOW}'" in (MIGRATIONS_DIR / "0010_cluster_closed_months.sql").read_text(), \
        "a month is closed once RESULT_WINDOW has passed: the migration must say the same window"
    with psycopg.connect(lab.dsn, autocommit=True) as conn:
        closed, open_ = _closed(conn)
        assert len(closed) >= 4 and len(open_) >= 4, (closed, open_)  # 8 loaded months + premade ones
        pending = [m for m in closed if not conn.execute(
            "SELECT bool_or(indisclustered) FROM pg_index WHERE indrelid = %s::regclass", (m,)).fetchone()[0]]
        mixed = [m for m in pending if conn.execute(
            f"SELECT count(DISTINCT clinic_id) > 1 FROM {m}").fetchone()[0]]  # noqa: S608
        assert mixed, (closed, pending)
        # 0008 copied each month clinic leaf by clinic leaf, in clinic order; late results arrive after that.
        # Five of the lowest clinic's, appended (as BENCH rows, which the fingerprint leaves out).
        conn.execute(f"INSERT INTO lab_results (clinic_id, collected_at, pet_id, visit_id, test_code, value, flag) "
                     f"SELECT clinic_id, collected_at, pet_id, visit_id, %s, value, flag FROM {mixed[0]} "  # noqa: S608
                     f"WHERE clinic_id = (SELECT min(clinic_id) FROM {mixed[0]}) LIMIT 5", (BENCH_TEST,))
        assert not _in_clinic_order(conn, mixed[0]), "late rows lie after every clinic's"
        # A reader holding the month: the rewrite gives up within its lock timeout and leaves it for later.
        with psycopg.connect(lab.dsn) as reader:
            reader.execute(f"SELECT count(*) FROM {pending[0]}")  # noqa: S608 - holds ACCESS SHARE until rollback
            t0 = time.monotonic()
            conn.execute("SET statement_timeout = '10s'")  # without the lock timeout this would wait forever
            assert conn.execute("SELECT cluster_closed_months(1, '300ms')").fetchone()[0] == []
            conn.execute("RESET statement_timeout")
            assert time.monotonic() - t0 < 5
            reader.rollback()
        done = conn.execute("SELECT cluster_closed_months(1)").fetchone()[0]
        assert done == [pending[0]], "one month per call, the oldest first"  # (empty months included)
        rest = conn.execute("SELECT cluster_closed_months(100)").fetchone()[0]
        assert done + rest == pending
        for month in closed:
            assert _in_clinic_order(conn, month), month
        assert conn.execute("SELECT cluster_closed_months(100)").fetchone()[0] == [], "nothing is done twice"
        for month in open_:  # still written to: left in arrival order
            assert not conn.execute("SELECT bool_or(indisclustered) FROM pg_index WHERE indrelid = %s::regclass",
                                    (month,)).fetchone()[0], month
        failed = [(c.name, c.detail) for c in check(conn) if c.status == "FAIL"]
        shown = {row["table"].removeprefix("public."): row["clinic_order"] for row in status(conn)["partitions"]}
    assert failed == []
    assert shown == {**{m: "yes" for m in closed}, **{m: "no" for m in open_}}, "what `partitions status` prints"
    assert fingerprint(lab.dsn) == lab.before, "every row kept, unchanged"


def test_months_added_for_old_imports_cover_the_year_end_and_seoul_day_edges(lab):
    # `partitions maintain --from` before importing old results: the months it adds are months-only too.
    with psycopg.connect(lab.dsn, autocommit=True) as conn:
        oldest_year = int(months(conn)[0][0][-7:-3])  # lab_results_pYYYY_MM, the oldest month
        december = date(oldest_year - 1, 12, 1)
        made = maintain(conn, december)
        assert made["months_created_for_window"] >= 1
        y = december.year
        edges = {
            datetime(y, 12, 31, 23, 30, tzinfo=KST): f"lab_results_p{y}_12",       # 14:30 UTC, Dec 31
            datetime(y + 1, 1, 1, 0, 30, tzinfo=KST): f"lab_results_p{y + 1}_01",  # 15:30 UTC, still Dec 31 in UTC
            datetime(y + 1, 1, 31, 23, 59, 59, tzinfo=KST): f"lab_results_p{y + 1}_01",
            datetime(y + 1, 2, 1, 0, 0, tzinfo=KST): f"lab_results_p{y + 1}_02",   # Jan 31 15:00 UTC
        }
        with conn.transaction(force_rollback=True):
            landed = {at: conn.execute(
                "INSERT INTO lab_results (clinic_id, collected_at, pet_id, test_code, value, flag) "
                "VALUES (2, %s, 1, 'ALT', 40, 'N') RETURNING tableoid::regclass::text", (at,)).fetchone()[0]
                for at in edges}
        kinds = dict((name, kind) for name, kind, _ in months(conn))
    assert landed == edges
    assert {kinds[name] for name in edges.values()} == {"r"}


def test_archive_and_restore_a_month_on_the_new_layout(lab, tmp_path):
    month_start = seoul_month_start(SPEC.end, -(SPEC.months - 2))  # an old, fully loaded month
    month, table = f"{month_start:%Y-%m}", f"lab_results_p{month_start:%Y_%m}"
    archiver = Archiver(lab.dsn, LocalStore(tmp_path / "archive"), progress=False)
    with psycopg.connect(lab.dsn) as conn:
        rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608 - our own name
    assert rows > 0
    archived = archiver.archive_month(month)
    assert archived.rows == rows
    with psycopg.connect(lab.dsn) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None
    assert fingerprint(lab.dsn)[0] == lab.before[0] - rows
    archiver.restore(month)
    assert fingerprint(lab.dsn) == lab.before
    with psycopg.connect(lab.dsn) as conn:
        assert dict((n, k) for n, k, _ in months(conn))[table] == "r"
        assert index_columns(conn, table) == {"(pet_id, collected_at)", "(clinic_id, collected_at)"}
        assert conn.execute("SELECT count(*) FROM partman.part_config WHERE parent_table <> 'public.lab_results'"
                            ).fetchone()[0] == 0


def test_per_clinic_is_a_no_op_then_a_later_flip_converts_and_a_stopped_run_resumes(monkeypatch):
    """A lab migrated with per-clinic (0008 changes nothing), refused on the unexpected, stopped half-way by a
    lock, and finished by the next run; every row kept throughout."""
    server = _server()
    try:
        dsn = server.dsn("app")
        done = migrate(dsn, scheme="per-clinic")
        assert "0008_partition_scheme" in done and done[-1] == "lab_results layout: new -> per-clinic"
        load(dsn, SPEC, progress=False)
        before = fingerprint(dsn)
        with psycopg.connect(dsn) as conn:
            tree = conn.execute("SELECT array_agg(relid::text ORDER BY relid::text) FROM pg_partition_tree("
                                "'lab_results')").fetchone()[0]
        assert migrate(dsn, scheme="per-clinic") == []
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT array_agg(relid::text ORDER BY relid::text) FROM pg_partition_tree("
                                "'lab_results')").fetchone()[0] == tree
        assert layout(dsn) == "per-clinic"

        # Something the conversion was not written for: refused before anything moves.
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE lab_results_default PARTITION OF lab_results DEFAULT")
        with pytest.raises(CheckFailed, match="month-level default partition .lab_results_default.; move its rows"):
            migrate(dsn, scheme="months-only")
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM partman.part_config_sub").fetchone()[0] == 1
            assert {kind for name, kind, _ in months(conn) if name != "lab_results_default"} == {"p"}
            conn.execute("DROP TABLE lab_results_default")
        assert layout(dsn) == "per-clinic"
        assert fingerprint(dsn) == before

        # A writer holds one clinic leaf of a loaded month in the middle: the run stops there.
        with psycopg.connect(dsn) as conn:
            names = [name for name, _, _ in months(conn)]
        middle = f"lab_results_p{seoul_month_start(SPEC.end, -3):%Y_%m}"
        holder = psycopg.connect(dsn)
        try:
            holder.execute(f"LOCK TABLE {middle}_p2 IN ROW EXCLUSIVE MODE")
            monkeypatch.setattr(db, "SCHEME_LOCK_TIMEOUT", "1s")
            with pytest.raises(NotReady, match="months already converted are kept; run `careflow-ha data migrate` "
                                               "again"):
                migrate(dsn, scheme="months-only")
            assert layout(dsn) == "converting"
            with psycopg.connect(dsn) as conn:
                kinds = {name: kind for name, kind, _ in months(conn)}
            assert all(kinds[n] == "r" for n in names[:names.index(middle)])
            assert all(kinds[n] == "p" for n in names[names.index(middle):])
            assert fingerprint(dsn) == before
            with pytest.raises(UsageError, match="lab_results is half-way to months-only and the setting says "
                                                 "per-clinic"):
                migrate(dsn, scheme="per-clinic")
        finally:
            holder.close()
        assert migrate(dsn, scheme="months-only") == ["lab_results layout: converting -> months-only"]
        assert layout(dsn) == "months-only"
        assert fingerprint(dsn) == before
    finally:
        server.stop()
        server.remove()
