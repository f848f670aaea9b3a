"""``bench routing``'s pgbench login on a real PostgreSQL 15: the throwaway role and schema, pgbench's tables
landing in that schema through the role's search_path, and the cleanup (after a failure, and of a leftover)."""

from __future__ import annotations

from types import MappingProxyType

import psycopg
import pytest

from careflow_ha.cluster.bench import pgbench_conninfo
from careflow_ha.routing.bench import (
    BENCH_ROLE,
    BENCH_SCHEMA,
    CREATE_BENCH_ROLE,
    BenchPath,
    BenchRole,
    bench_role,
    run_pgbench_paths,
)
from careflow_ha.settings import PORT_DEFAULTS, SECRET_FOR_ROLE, Settings

pytestmark = pytest.mark.localpg

PGBENCH_TABLES = {"pgbench_accounts", "pgbench_branches", "pgbench_history", "pgbench_tellers"}


def _settings(local_pg, tmp_path) -> Settings:
    secrets = {SECRET_FOR_ROLE[r]: local_pg.server.passwords[r] for r in ("superuser", "app", "ro", "admin")}
    return Settings(project_dir=tmp_path, ports=MappingProxyType(dict(PORT_DEFAULTS)),
                    secrets=MappingProxyType(secrets))


def _leftovers(superuser_dsn: str) -> tuple[list, list]:
    with psycopg.connect(superuser_dsn) as conn:
        roles = conn.execute("SELECT rolname FROM pg_roles WHERE rolname = %s", (BENCH_ROLE,)).fetchall()
        schemas = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname = %s", (BENCH_SCHEMA,)).fetchall()
    return roles, schemas


def test_pgbench_init_lands_in_the_bench_schema_as_a_scram_non_superuser(local_pg, tmp_path):
    settings = _settings(local_pg, tmp_path)
    where = f"host=127.0.0.1 port={local_pg.port}"
    with bench_role(local_pg.superuser_dsn) as role:
        pgbench_conninfo(settings, ["-i", "-q", "-s", "1"], where, timeout=120, user=role.name,
                         dbname=role.dbname, password=role.password)
        with psycopg.connect(local_pg.superuser_dsn) as conn:
            tables = conn.execute("SELECT table_schema, table_name FROM information_schema.tables "
                                  "WHERE table_name LIKE 'pgbench%%'").fetchall()
            login = conn.execute("SELECT rolsuper, rolcreaterole, rolcreatedb, rolpassword FROM pg_authid "
                                 "WHERE rolname = %s", (role.name,)).fetchone()
        assert {schema for schema, _ in tables} == {BENCH_SCHEMA}  # none in public
        assert {name for _, name in tables} == PGBENCH_TABLES
        assert login[:3] == (False, False, False)
        assert login[3].startswith("SCRAM-SHA-256$") and role.password not in login[3]
        # The search_path comes from the role setting, with no client option (PgBouncer refuses options).
        with psycopg.connect(host="127.0.0.1", port=local_pg.port, dbname=role.dbname, user=role.name,
                             password=role.password) as conn:
            assert conn.execute("SHOW search_path").fetchone() == (BENCH_SCHEMA,)
            assert conn.execute("SELECT count(*) FROM pgbench_branches").fetchone() == (1,)
    assert _leftovers(local_pg.superuser_dsn) == ([], [])


def test_a_failure_inside_still_drops_the_role_and_schema_and_a_leftover_is_cleaned_first(local_pg):
    with pytest.raises(RuntimeError, match="pgbench died"), bench_role(local_pg.superuser_dsn) as role:
        with psycopg.connect(local_pg.superuser_dsn) as conn:
            assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role.name,)).fetchone() == (1,)
        raise RuntimeError("pgbench died")
    assert _leftovers(local_pg.superuser_dsn) == ([], [])
    # A killed run leaves the role, its schema with a table in it, and a session of the role still open.
    stale = BenchRole(password="stale-password-of-a-killed-run")
    with psycopg.connect(local_pg.superuser_dsn, autocommit=True) as conn:
        verifier = conn.pgconn.encrypt_password(stale.password.encode(), stale.name.encode(), b"scram-sha-256")
        conn.execute(CREATE_BENCH_ROLE, (verifier.decode(),))
    session = psycopg.connect(host="127.0.0.1", port=local_pg.port, dbname=stale.dbname, user=stale.name,
                              password=stale.password, autocommit=True)
    try:
        session.execute("CREATE TABLE pgbench_branches (bid int)")
        with bench_role(local_pg.superuser_dsn) as fresh:
            assert fresh.password != stale.password
            with psycopg.connect(local_pg.superuser_dsn) as conn:
                assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s",
                                    (BENCH_SCHEMA,)).fetchone() == (0,)
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(host="127.0.0.1", port=local_pg.port, dbname=stale.dbname, user=stale.name,
                                password=stale.password, connect_timeout=5)
        assert _is_dead(session)  # the killed run's session was ended before its role was dropped
    finally:
        session.close()
    assert _leftovers(local_pg.superuser_dsn) == ([], [])


def _is_dead(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def test_run_pgbench_paths_measures_every_path_as_the_bench_role_and_cleans_up(local_pg, tmp_path):
    settings = _settings(local_pg, tmp_path)
    where = f"host=127.0.0.1 port={local_pg.port}"
    seen: list[str] = []
    results = run_pgbench_paths(settings, [BenchPath("direct", where), BenchPath("again", where)], seen.append,
                                seconds=1, clients=2, scale=1, rounds=1)
    assert [(r.mode, r.path) for r in results] == [("select-only", "direct"), ("select-only", "again"),
                                                   ("tpcb-like", "direct"), ("tpcb-like", "again")]
    assert all(r.tps > 0 and r.latency_ms > 0 for r in results)
    assert seen[0] == f"bench: pgbench -i -s 1 via direct as {BENCH_ROLE}"
    assert _leftovers(local_pg.superuser_dsn) == ([], [])


def test_the_first_path_must_be_direct(local_pg, tmp_path):
    with pytest.raises(ValueError, match="direct"):
        run_pgbench_paths(_settings(local_pg, tmp_path), [BenchPath("pgbouncer", "host=127.0.0.1 port=1")],
                          lambda _m: None)
    assert _leftovers(local_pg.superuser_dsn) == ([], [])


def test_the_admin_role_makes_the_bench_role_only_through_the_functions(local_pg):
    admin = local_pg.server.dsn("admin")
    with bench_role(admin) as role, psycopg.connect(local_pg.superuser_dsn) as conn:
        assert conn.execute("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = %s",
                            (role.name,)).fetchone() == (False, False)
    assert _leftovers(local_pg.superuser_dsn) == ([], [])
    with psycopg.connect(admin, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # no CREATEROLE of its own
            conn.execute("CREATE ROLE careflow_not_allowed LOGIN")
        with pytest.raises(psycopg.errors.RaiseException, match="SCRAM-SHA-256 verifier"):
            conn.execute(CREATE_BENCH_ROLE, ("a-plain-password",))
    # Nobody else may call them (EXECUTE revoked from PUBLIC).
    with psycopg.connect(local_pg.app_dsn, autocommit=True) as conn, pytest.raises(
            psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT careflow_tools.drop_bench_role()")
    assert _leftovers(local_pg.superuser_dsn) == ([], [])
