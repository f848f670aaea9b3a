"""Schema and partitioning against a real PostgreSQL 15 with pg_partman: idempotent, covered, routed, pruned."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg import sql

from careflow_ha.data import migrate, prepare_database
from careflow_ha.data.clock import seoul_month_start
from careflow_ha.data.partitions import layout

pytestmark = pytest.mark.localpg
SEOUL = ZoneInfo("Asia/Seoul")


def data_month(emr, offset: int) -> datetime:
    """First instant (Seoul) of the month ``offset`` months from the loaded window's last month.

    Anchored to the data, not to the wall clock: the window ends "yesterday 16:00 UTC", which is a
    different Seoul month from "now" on some hours of a month's first and last days.
    """
    return seoul_month_start(emr.spec.end, offset)


def db_month(conn: psycopg.Connection, offset: int) -> datetime:
    """Like ``data_month``, from the database's own clock (which pg_partman premakes from)."""
    return seoul_month_start(conn.execute("SELECT now()").fetchone()[0], offset)


def relations_scanned(conn: psycopg.Connection, query: str, params: tuple = ()) -> set[str]:
    plan = conn.execute("EXPLAIN (FORMAT JSON) " + query, params).fetchone()[0][0]["Plan"]
    found, stack = set(), [plan]
    while stack:
        node = stack.pop()
        if "Relation Name" in node:
            found.add(node["Relation Name"])
        stack += node.get("Plans", [])
    return found


def test_migrations_and_prepare_are_idempotent(emr, local_pg):
    assert migrate(emr.app_dsn) == []
    assert prepare_database(local_pg.server.dsn("superuser", "postgres")) == []
    with psycopg.connect(emr.app_dsn) as conn:
        applied = [r[0] for r in conn.execute("SELECT migration_id FROM _yoyo_migration ORDER BY migration_id")]
    assert applied == ["0001_emr_dimensions", "0002_lab_test_catalog", "0003_lab_results_partitioned",
                       "0004_daily_aggregate_and_quarantine", "0005_scheduled_jobs", "0006_clinic_leaf_coverage",
                       "0007_import_batches_rerun_safe", "0008_partition_scheme", "0009_refresh_daily_serialized",
                       "0010_cluster_closed_months"]


def test_per_clinic_months_are_never_clustered(emr):
    """A per-clinic leaf is one clinic-month already: 0010 leaves per-clinic labs alone."""
    with psycopg.connect(emr.app_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT cluster_closed_months(1000)").fetchone()[0] == []
        conn.execute("CALL run_partition_maintenance()")
        assert conn.execute("SELECT count(*) FROM pg_index i JOIN pg_partition_tree('lab_results') t "
                            "ON t.relid = i.indrelid WHERE i.indisclustered").fetchone()[0] == 0


def test_every_month_of_the_window_and_every_clinic_has_a_leaf(emr):
    with psycopg.connect(emr.app_dsn) as conn:
        months = layout(conn)
        clinics = {r[0] for r in conn.execute("SELECT clinic_id FROM clinics")}
        premade = {db_month(conn, k) for k in range(4)}  # this month + 3 premade
    starts = {m.start.astimezone(SEOUL) for m in months}
    wanted = {data_month(emr, -k) for k in range(emr.spec.months)} | premade  # the loaded window + premade
    assert wanted <= starts
    assert clinics == {1, 2, 3, 4}
    assert all(clinics <= m.clinics() for m in months)
    assert not any(m.is_default for m in months), "no month-level default partition"


def test_a_row_lands_in_its_month_and_clinic_leaf(emr):
    last_day = data_month(emr, -1) - timedelta(minutes=30)  # 23:30 Seoul, the last day of a month in the data
    with psycopg.connect(emr.app_dsn) as conn:
        pet = conn.execute("SELECT pet_id FROM pets WHERE clinic_id = 3 LIMIT 1").fetchone()[0]
        leaves = [
            conn.execute(
                "INSERT INTO lab_results (clinic_id, collected_at, pet_id, test_code, value, flag) "
                "VALUES (3, %s, %s, 'ALT', 40, 'N') RETURNING tableoid::regclass::text", (at, pet)).fetchone()[0]
            for at in (last_day, last_day + timedelta(hours=1))  # 00:30 Seoul next day = next month
        ]
        conn.rollback()
    before, after = data_month(emr, -2), data_month(emr, -1)
    assert leaves == [f"lab_results_p{before:%Y_%m}_p3", f"lab_results_p{after:%Y_%m}_p3"]


def test_a_row_outside_every_month_is_rejected_not_parked(emr):
    with psycopg.connect(emr.app_dsn) as conn, pytest.raises(psycopg.errors.CheckViolation, match="no partition"):
        conn.execute("INSERT INTO lab_results (clinic_id, collected_at, pet_id, test_code, value, flag) "
                     "VALUES (1, '2001-01-01 09:00+09', 1, 'ALT', 40, 'N')")


def test_clinic_and_month_query_is_pruned_to_one_leaf(emr):
    month, next_month = data_month(emr, -1), data_month(emr, 0)  # the window's last whole month
    with psycopg.connect(emr.app_dsn) as conn:
        scanned = relations_scanned(
            conn, "SELECT test_code, count(*) FROM lab_results WHERE clinic_id = 2 AND collected_at >= %s "
                  "AND collected_at < %s GROUP BY 1", (month, next_month))
        all_leaves = relations_scanned(conn, "SELECT count(*) FROM lab_results WHERE value > 0")
        n = conn.execute("SELECT count(*) FROM lab_results WHERE clinic_id = 2 AND collected_at >= %s "
                         "AND collected_at < %s", (month, next_month)).fetchone()[0]
    assert scanned == {f"lab_results_p{month:%Y_%m}_p2"}
    assert n > 0, "the pruned leaf holds that clinic's month"
    assert len(all_leaves) > 20, "a query without keys plans every leaf"


def test_read_only_role_reads_but_cannot_write(emr):
    with psycopg.connect(emr.ro_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM lab_results").fetchone()[0] >= emr.spec.rows
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM lab_results")


def test_daily_aggregate_matches_the_fact_table(emr):
    with psycopg.connect(emr.app_dsn) as conn:
        agg = conn.execute("SELECT sum(n_results), sum(n_abnormal) FROM lab_results_daily").fetchone()
        facts = conn.execute("SELECT count(*), count(*) FILTER (WHERE flag <> 'N') FROM lab_results").fetchone()
        day = conn.execute("SELECT clinic_id, day, test_code, n_results, mean_value FROM lab_results_daily "
                           "ORDER BY n_results DESC LIMIT 1").fetchone()
        direct = conn.execute(
            "SELECT count(*), avg(value) FROM lab_results WHERE clinic_id = %s AND test_code = %s "
            "AND (collected_at AT TIME ZONE 'Asia/Seoul')::date = %s", (day[0], day[2], day[1])).fetchone()
    assert agg == facts
    assert direct[0] == day[3] and direct[1] == pytest.approx(day[4])


def test_overlapping_refreshes_wait_for_each_other_instead_of_failing(emr):
    """The scheduled refresh and an import's refresh of the same days (CI failed on this race): the second one
    waits for the first to commit, then replaces the days; before migration 0009 it failed on the primary key."""
    last = emr.spec.end.astimezone(SEOUL).date()
    days = (last - timedelta(days=2), last + timedelta(days=1))
    refresh = "SELECT refresh_lab_results_daily(%s, %s)"
    second: dict[str, object] = {}

    def run_second() -> None:
        try:
            with psycopg.connect(emr.app_dsn) as conn:
                second["rows"] = conn.execute(refresh, days).fetchone()[0]
        except psycopg.Error as exc:
            second["error"] = exc

    with psycopg.connect(emr.app_dsn) as first, psycopg.connect(emr.app_dsn, autocommit=True) as watcher:
        rows = first.execute(refresh, days).fetchone()[0]  # its transaction stays open
        thread = threading.Thread(target=run_second, daemon=True)
        thread.start()
        blocked = False
        for _ in range(200):  # up to 10 s for the second refresh to queue behind the first
            blocked = watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                                      (first.info.backend_pid,)).fetchone()[0] == 1
            if blocked or not thread.is_alive():
                break
            time.sleep(0.05)
        first.commit()
        thread.join(timeout=30)
        agg = first.execute("SELECT coalesce(sum(n_results), 0) FROM lab_results_daily WHERE day >= %s AND day < %s",
                            days).fetchone()[0]
        facts = first.execute("SELECT count(*) FROM lab_results WHERE (collected_at AT TIME ZONE 'Asia/Seoul')::date "
                              ">= %s AND (collected_at AT TIME ZONE 'Asia/Seoul')::date < %s", days).fetchone()[0]
    assert blocked, "the second refresh did not wait for the first"
    assert not thread.is_alive()
    assert "error" not in second, second.get("error")
    assert second["rows"] == rows > 0
    assert agg == facts > 0


def test_a_new_clinic_gets_a_leaf_in_every_month(emr):
    with psycopg.connect(emr.app_dsn) as conn:
        conn.execute("INSERT INTO clinics VALUES (57, 'test clinic', 'x', 'x', '0', '2020-01-01')")
        covered = all(57 in m.clinics() for m in layout(conn))
        pet_owner = conn.execute("SELECT owner_id FROM owners LIMIT 1").fetchone()[0]
        conn.execute("INSERT INTO pets VALUES (990001, %s, 57, 'n', 'cat', 'Persian', 'F', '2020-01-01', 4)",
                     (pet_owner,))
        leaf = conn.execute(
            "INSERT INTO lab_results (clinic_id, collected_at, pet_id, test_code, value, flag) "
            "VALUES (57, now() - interval '1 day', 990001, 'ALT', 40, 'N') RETURNING tableoid::regclass::text"
        ).fetchone()[0]
        conn.rollback()  # leave the shared data set as it was
    assert covered
    assert leaf.endswith("_p57")


def test_scheduled_jobs_are_registered_as_the_app_role(emr):
    with psycopg.connect(emr.superuser_dsn) as conn:
        jobs = dict(conn.execute("SELECT jobname, command FROM cron.job WHERE username = 'careflow_app'").fetchall())
    assert jobs == {"careflow-partman-maintenance": "CALL run_partition_maintenance()",
                    "careflow-lab-results-daily": "SELECT refresh_lab_results_daily_recent()"}


def test_explain_json_helper_sees_nested_plans(emr):
    """Guard for the helper above: a join's relations are all found."""
    with psycopg.connect(emr.app_dsn) as conn:
        found = relations_scanned(conn, "SELECT * FROM pets p JOIN owners o USING (owner_id) WHERE p.pet_id = 1")
    assert found == {"pets", "owners"}


def test_prepare_refuses_a_non_superuser(emr):
    from careflow_ha.errors import UsageError

    with pytest.raises(UsageError, match="needs a superuser DSN"):
        prepare_database(emr.app_dsn)


def test_a_month_can_be_detached_concurrently_for_archiving(emr):
    """No month-level default partition, so archiving can DETACH ... CONCURRENTLY (then we re-attach it)."""
    with psycopg.connect(emr.app_dsn, autocommit=True) as conn:
        month = max((m for m in layout(conn) if m.start), key=lambda m: m.start)  # a premade, empty month
        conn.execute(sql.SQL("ALTER TABLE lab_results DETACH PARTITION {} CONCURRENTLY").format(
            sql.Identifier(month.table)))
        try:
            assert month.table not in {m.table for m in layout(conn)}
        finally:
            conn.execute(sql.SQL("ALTER TABLE lab_results ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(month.table), sql.Literal(month.start), sql.Literal(month.end)))
        assert month.table in {m.table for m in layout(conn)}


def test_the_admin_role_owns_probe_tables_reads_statistics_and_no_emr_data(emr, local_pg):
    # What the control host's tooling does as careflow_admin on the cluster, where the superuser has no TCP login.
    from careflow_ha.cluster.probes import PROBE_TABLE, ensure_probe_table

    admin = local_pg.server.dsn("admin")
    ensure_probe_table(admin, grant_to="careflow_app")
    ensure_probe_table(admin, grant_to="careflow_app")  # idempotent, grant included
    with psycopg.connect(emr.app_dsn, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {PROBE_TABLE} (run_id, seq, client_ts) VALUES ('admin-1', 1, now())")
    with psycopg.connect(admin, autocommit=True) as conn:
        assert conn.execute(f"SELECT count(*) FROM {PROBE_TABLE} WHERE run_id = 'admin-1'").fetchone() == (1,)
        # pg_monitor: another role's session shows its query (a plain role sees "<insufficient privilege>").
        with psycopg.connect(emr.app_dsn, autocommit=True) as other:
            pid = other.execute("SELECT pg_backend_pid()").fetchone()[0]
            seen = conn.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        assert seen is not None and seen[0] == "SELECT pg_backend_pid()"
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # no EMR data
            conn.execute("SELECT count(*) FROM pets")
        conn.execute(f"DELETE FROM {PROBE_TABLE} WHERE run_id = 'admin-1'")
