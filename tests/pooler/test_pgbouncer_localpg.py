"""A real PgBouncer 1.18 on 127.0.0.1 in front of the ``local_pg`` server, configured from the role's own
templates: scram through auth_query, PAUSE/RESUME, the drain-timeout path of the zero-error switchover
(an open transaction blocks PAUSE -> every pooler resumed, exit 4, connections intact) and the paused
state a killed run leaves behind. Every wait is bounded in time and count."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from careflow_ha.cluster.model import ClusterSnapshot, Member
from careflow_ha.cluster.pooler import PgBouncerAdmin, pooler_states
from careflow_ha.cluster.switchover import Limits, paused_poolers, resume_all, run_switchover
from careflow_ha.data.localserver import free_port
from careflow_ha.dsn import pooler_safe
from careflow_ha.errors import NotReady
from careflow_ha.provision import LAB_INVENTORY
from careflow_ha.provision.inventory import load_inventory
from careflow_ha.settings import SECRET_KEYS

pytestmark = pytest.mark.localpg

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
SECRETS = {key: f"{key.lower()}-loopback-{os.getpid()}" for key in SECRET_KEYS}


@dataclass
class Bouncer:
    port: int
    app_dsn: str
    superuser_dsn: str
    admin: PgBouncerAdmin
    log: Path


def _as_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        os.chown(path, pg.pw_uid, pg.pw_gid)


def _wait_listening(port: int, proc: subprocess.Popen, log: Path) -> None:
    for _ in range(100):  # at most ~10 s
        if proc.poll() is not None:
            raise AssertionError(f"pgbouncer exited: {log.read_text()[-800:]}")
        try:
            with psycopg.connect(host="127.0.0.1", port=port, dbname="x", connect_timeout=1):
                pass
        except psycopg.OperationalError as exc:
            if "refused" not in str(exc):
                return  # it answered (with a login error): it listens
        time.sleep(0.1)
    raise AssertionError("pgbouncer did not listen within 10 s")


@pytest.fixture(scope="module")
def bouncer(local_pg) -> Iterator[Bouncer]:
    assert Path(PGBOUNCER).exists(), "pgbouncer is not installed; run scripts/bootstrap.sh"
    # Its own directory under /tmp: pgbouncer runs as postgres, which cannot enter pytest's root-only tmp.
    work = Path(tempfile.mkdtemp(prefix="careflow-pgbouncer-"))
    _as_postgres(work)
    port = free_port()
    inv = load_inventory(LAB_INVENTORY, SECRETS, {
        "pgbouncer_config_dir": str(work), "careflow_pgbouncer_rw_port": str(port),
        "careflow_haproxy_rw_port": str(local_pg.port), "pgbouncer_listen_addr": "127.0.0.1",
        # The loopback server has no certificate (the lab's TLS is tested on the lab: test_tls_cluster.py).
        "careflow_postgresql_tls": "false",
    })
    auth_user = inv.hostvars["lb1"]["careflow_pgbouncer_auth_user"]
    # The server side, as roles/patroni does it: the md5 auth login, its pg_hba line, get_auth().
    hba = local_pg.server.data_dir / "pg_hba.conf"
    original_hba = hba.read_text()
    hba.write_text(f"host careflow {auth_user} 127.0.0.1/32 md5\n" + original_hba)
    from careflow_ha.provision.pgauth import pg_md5

    with psycopg.connect(local_pg.superuser_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")
        conn.execute(f"DROP ROLE IF EXISTS {auth_user}")  # noqa: S608 - a fixed role name
        conn.execute(f"CREATE ROLE {auth_user} LOGIN PASSWORD "
                     f"'{pg_md5(SECRETS['CAREFLOW_PGBOUNCER_AUTH_PASSWORD'], auth_user)}'")
        conn.execute(inv.render_template("patroni", "pgbouncer-auth.sql.j2", "pg1"))
    instance = dict(inv.hostvars["lb1"]["__pgbouncer_instances"][0])
    ini, users = work / "careflow-rw.ini", work / "careflow-users.txt"
    users.write_text(inv.render_template("pgbouncer", "careflow-users.txt.j2", "lb1"))
    ini.write_text(inv.render_template("pgbouncer", "pgbouncer.ini.j2", "lb1", instance))
    for f in (ini, users):
        _as_postgres(f)
    users.chmod(0o600)
    log = work / "pgbouncer.log"
    cmd = [PGBOUNCER, str(ini)]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, proc, log)
        PORT[:] = [port]
        admin = PgBouncerAdmin("local:rw", "127.0.0.1", port, inv.hostvars["lb1"]["careflow_pgbouncer_admin_user"],
                               SECRETS["CAREFLOW_PGBOUNCER_ADMIN_PASSWORD"])
        yield Bouncer(port, local_pg.app_dsn.replace(f":{local_pg.port}/", f":{port}/"),
                      local_pg.superuser_dsn.replace(f":{local_pg.port}/", f":{port}/"), admin, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(work, ignore_errors=True)
        hba.write_text(original_hba)
        with psycopg.connect(local_pg.superuser_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")


PORT: list[int] = []  # the loopback PgBouncer's port, once it runs


def _client(dsn: str, **kw) -> psycopg.Connection:
    """A client connection as the EMR code makes them (``pooler_safe``), to the loopback PgBouncer."""
    kwargs = pooler_safe(dsn, {"connect_timeout": 5, **kw}, ports=tuple(PORT))
    assert kwargs.get("prepare_threshold", 0) is None and "options" not in kwargs
    return psycopg.connect(dsn, **kwargs)


@pytest.fixture(autouse=True)
def _never_left_paused(bouncer):
    yield
    bouncer.admin.resume()
    assert bouncer.admin.paused() is False


def test_the_app_role_logs_in_with_scram_through_auth_query(bouncer):
    with psycopg.connect(bouncer.app_dsn, prepare_threshold=None, autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("careflow_app",)
        for _ in range(10):  # past psycopg's prepare_threshold: nothing is prepared through the pooler
            assert conn.execute("SELECT %s::int + 1", (1,)).fetchone() == (2,)


def test_a_superuser_can_never_log_in_through_the_pooler(bouncer):
    with pytest.raises(psycopg.OperationalError, match="no such user|password authentication failed"):
        psycopg.connect(bouncer.superuser_dsn, connect_timeout=5)


def test_the_options_startup_parameter_is_refused_so_pooled_connections_drop_it(bouncer):
    with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter"):
        psycopg.connect(bouncer.app_dsn, options="-c statement_timeout=1000", connect_timeout=5)
    with _client(bouncer.app_dsn, options="-c statement_timeout=1000", autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_pause_holds_a_query_and_resume_releases_it(bouncer):
    client = _client(bouncer.app_dsn, autocommit=True)
    try:
        bouncer.admin.begin_pause()
        assert bouncer.admin.pause_done(5.0)
        assert bouncer.admin.paused() is True
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(v=client.execute("SELECT 42").fetchone()))
        thread.start()
        thread.join(1.0)
        assert thread.is_alive() and not result  # held at the pooler, not failed
        bouncer.admin.reconnect()
        bouncer.admin.resume()
        thread.join(5.0)
        assert result == {"v": (42,)}
    finally:
        client.close()


def _snapshot() -> ClusterSnapshot:
    return ClusterSnapshot(0.0, (Member("pg1", "leader", "running", 1),
                                 Member("pg2", "sync_standby", "streaming", 1, 0)))


class NeverSwitch:
    switched: list = []

    def cluster(self, timeout=None):
        return _snapshot()

    def switchover(self, leader, candidate, timeout=60.0):
        self.switched.append((leader, candidate))
        raise AssertionError("the switchover must not start when PAUSE did not drain")


def test_an_open_transaction_blocks_the_pause_so_everything_resumes_and_exit_4(bouncer):
    busy = _client(bouncer.app_dsn)  # not autocommit: BEGIN ... holds a server connection
    try:
        busy.execute("SELECT 1")
        api = NeverSwitch()
        limits = Limits(max_lag_bytes=100, drain_s=1.0, leader_s=1, route_s=1, poll_s=0.05)
        started = time.monotonic()
        with pytest.raises(NotReady, match="PAUSE did not drain within 1s on local:rw") as err:
            run_switchover(api, [bouncer.admin], lambda endpoint, leader: True, lambda leader: 0.0, None, True, limits,
                           lambda msg: None)
        assert err.value.exit_code == 4 and time.monotonic() - started < 10
        assert api.switched == []
        assert bouncer.admin.paused() is False  # left as it was
        busy.execute("SELECT 2")  # the open transaction is intact and goes on
        busy.commit()
        with _client(bouncer.app_dsn, autocommit=True) as fresh:  # new clients are served
            assert fresh.execute("SELECT 3").fetchone() == (3,)
    finally:
        busy.close()


def test_a_pause_left_by_a_killed_run_is_seen_by_a_new_process_and_resumed(bouncer):
    bouncer.admin.begin_pause()
    assert bouncer.admin.pause_done(5.0)
    # A new process knows nothing of the old one: only the pooler's own state tells.
    fresh = PgBouncerAdmin("local:rw", bouncer.admin.host, bouncer.admin.port, bouncer.admin.user,
                           bouncer.admin.password)
    assert paused_poolers([fresh]) == ["local:rw"]
    assert [s.state for s in pooler_states([fresh])] == ["PAUSED"]
    with pytest.raises(NotReady, match="PAUSED .*careflow-ha switchover --resume"):
        run_switchover(NeverSwitch(), [fresh], lambda endpoint, leader: True, lambda leader: 0.0, None, True,
                       Limits(max_lag_bytes=100), lambda msg: None)
    assert resume_all([fresh], lambda msg: None) == []
    assert fresh.paused() is False
    assert [s.state for s in pooler_states([fresh])] == ["running"]


def _loopback_settings(local_pg, tmp_path):
    from types import MappingProxyType

    from careflow_ha.settings import PORT_DEFAULTS, SECRET_FOR_ROLE, Settings

    secrets = {SECRET_FOR_ROLE[r]: local_pg.server.passwords[r] for r in ("superuser", "app", "ro", "admin")}
    return Settings(project_dir=tmp_path, ports=MappingProxyType(dict(PORT_DEFAULTS)),
                    secrets=MappingProxyType(secrets))


def test_pgbench_runs_through_the_pooler_as_the_bench_role_in_its_schema(bouncer, local_pg, tmp_path):
    """bench routing's pgbouncer path: no options startup parameter, so the tables are found through the
    role's search_path setting on the server connections PgBouncer opens; -M simple suits transaction pooling."""
    from careflow_ha.routing.bench import BENCH_ROLE, BenchPath, run_pgbench_paths

    paths = [BenchPath("direct", f"host=127.0.0.1 port={local_pg.port}"),
             BenchPath("pgbouncer", f"host=127.0.0.1 port={bouncer.port}")]
    results = run_pgbench_paths(_loopback_settings(local_pg, tmp_path), paths, lambda _m: None, seconds=1,
                                clients=2, scale=1, rounds=1)
    assert sorted((r.mode, r.path) for r in results) == [("select-only", "direct"), ("select-only", "pgbouncer"),
                                                         ("tpcb-like", "direct"), ("tpcb-like", "pgbouncer")]
    assert all(r.tps > 0 for r in results)
    with psycopg.connect(local_pg.superuser_dsn) as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (BENCH_ROLE,)).fetchone() is None


def test_the_pooler_absorbs_a_storm_that_max_connections_refuses_straight(bouncer, local_pg):
    """The same storm, larger than the server's max_connections (100), straight and through PgBouncer: the
    straight one is refused past the server's slots, the pooled one is served with no error while the
    server never sees more than max_db_connections of the pooler's backends."""
    from careflow_ha.routing.storm import StormConfig, run_storm, summarise_storm

    with psycopg.connect(local_pg.superuser_dsn) as conn:
        max_connections = int(conn.execute("SHOW max_connections").fetchone()[0])
    clients = max_connections + 50
    cfg = StormConfig(clients=clients, hold_s=1.0, connect_timeout_s=20, query_timeout_s=20, total_s=90)
    monitor = local_pg.server.dsn("superuser", "postgres")
    straight = summarise_storm(run_storm("direct", local_pg.app_dsn, {"autocommit": True}, cfg, monitor))
    pooled = summarise_storm(run_storm("pgbouncer", bouncer.app_dsn,
                                       pooler_safe(bouncer.app_dsn, {"autocommit": True}, ports=tuple(PORT)), cfg,
                                       monitor))
    assert straight["connection_errors"] >= 50 and straight["connected"] < max_connections
    assert (pooled["connected"], pooled["connection_errors"], pooled["query_errors"]) == (clients, 0, 0)
    assert pooled["errors_target_met"] is True and pooled["peak_open_clients"] == clients
    assert pooled["pg_backends_max"] < max_connections
