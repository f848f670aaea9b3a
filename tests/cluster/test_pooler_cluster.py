"""PgBouncer as clients see it: pooled read-write (6432) lands on the primary, pooled read-only (6433)
never does, the application role logs in with scram through auth_query and a superuser cannot."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from careflow_ha.cluster.patroni import PatroniApi
from careflow_ha.cluster.pooler import lab_poolers, pooler_states
from careflow_ha.dsn import pooler_safe
from careflow_ha.lab.vip import vip_holders
from careflow_ha.settings import LB_NODES
from tests.inventory import host_vars, hosts
from tests.plugins.timeouts import wait_until
from tests.promql import instant

pytestmark = pytest.mark.cluster


def _pooled(cluster, port: int, role: str = "app", host: str | None = None) -> str:
    """The DSN of ``role`` through PgBouncer on ``port``: the VIP, or one balancer's own address."""
    where = host or cluster.vip.address
    rw = cluster.dsn("rw", role)
    at = rw.split("@", 1)[1].split("/", 1)[0]
    return rw.replace(f"@{at}/", f"@{where}:{port}/")


def _connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, **pooler_safe(dsn, {"connect_timeout": 5}))


def _server_node(conn: psycopg.Connection) -> str:
    addr = conn.execute("SELECT host(inet_server_addr())").fetchone()[0]
    return {hv["careflow_node_ip"]: name for name, hv in host_vars().items()}[addr]


def test_every_pooler_answers_and_none_is_paused(cluster):
    states = pooler_states(lab_poolers(cluster))
    assert len(states) == 2 * len(hosts("balancers"))
    assert all(s.state == "running" for s in states), states


@pytest.mark.parametrize("balancer", [None, *hosts("balancers")])
def test_pooled_writes_land_on_the_primary(cluster, balancer):
    host = None if balancer is None else host_vars()[balancer]["careflow_node_ip"]
    leader = PatroniApi(cluster).cluster().leader
    marker = uuid.uuid4().hex
    with _connect(_pooled(cluster, 6432, host=host)) as conn:
        assert _server_node(conn) == leader
        assert conn.execute("SELECT current_user").fetchone() == ("careflow_app",)
        conn.execute("CREATE TABLE IF NOT EXISTS ha_smoke (marker text PRIMARY KEY, at timestamptz DEFAULT now())")
        conn.execute("INSERT INTO ha_smoke (marker) VALUES (%s)", (marker,))
    with psycopg.connect(cluster.node_dsn(leader, "app", "careflow"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM ha_smoke WHERE marker = %s", (marker,)).fetchone()[0] == 1


def test_pooled_reads_never_reach_the_primary(cluster):
    snap = PatroniApi(cluster).cluster()
    replicas = {m.name for m in snap.members if m.is_streaming_replica}
    seen = set()
    for _ in range(6):  # a few connections, so HAProxy's roundrobin behind the pooler meets both replicas
        with _connect(_pooled(cluster, 6433, role="ro")) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
            seen.add(_server_node(conn))
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), _connect(_pooled(cluster, 6433, role="ro")) as c:
            c.execute("CREATE TABLE pooled_ro_must_fail (x int)")
    assert seen and seen <= replicas and snap.leader not in seen, f"pooled reads reached {seen}"


def test_a_superuser_cannot_log_in_through_the_pooler(cluster):
    rw = cluster.dsn("rw", "superuser")
    at = rw.split("@", 1)[1].split("/", 1)[0]
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(rw.replace(f"@{at}/", f"@{cluster.vip.address}:6432/"), connect_timeout=5)


def test_a_balancer_whose_pooler_died_hands_the_vip_on(cluster, engine):
    """keepalived's balancer check covers PgBouncer's ports too: HAProxy alone still running is not healthy."""
    vip = cluster.vip.address
    (holder,) = vip_holders(engine, LB_NODES, vip)
    try:
        engine.exec(holder, ["systemctl", "stop", "careflow-pgbouncer@rw"])
        # check interval 1 s x fall 2, then the peer's master-down interval (3 x 0.5 s adverts): ~4 s
        moved = wait_until(lambda: (now := vip_holders(engine, LB_NODES, vip)) != (holder,) and len(now) == 1 and now,
                           8, what=f"the VIP off {holder}")
        assert moved != (holder,)
        with _connect(_pooled(cluster, 6432)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        engine.exec(holder, ["systemctl", "start", "careflow-pgbouncer@rw"])


@pytest.mark.parametrize("balancer", hosts("balancers"))
def test_pooled_traffic_reaches_prometheus_and_the_stats_user_cannot_pause(cluster, host_of, balancer):
    """Queries through one balancer's PgBouncer -> careflow-pgbouncer-metrics (10 s) -> node exporter ->
    Prometheus: the figures the PgBouncer alerts read are this pooler's own, and both instances are up."""
    def pooled_queries() -> float:
        expr = (f'pgbouncer_stats_totals_queries_pooled_total{{instance="{balancer}",pgbouncer="rw",'
                'database="careflow"}')
        return sum(value for _, value in instant(cluster.prometheus_url, expr))

    before = pooled_queries()
    with _connect(_pooled(cluster, 6432, host=host_vars()[balancer]["careflow_node_ip"])) as conn:
        for _ in range(20):
            conn.execute("SELECT 1")
    def counted() -> bool:
        # The previous test kills this PgBouncer: "before" may still be the dead instance's total, and the
        # restarted one counts from 0. A total below "before" is that reset; then it must hold our 20.
        now = pooled_queries()
        return now >= before + 20 or 20 <= now < before

    # One timer period (10 s) and one scrape (5 s) behind, with the 1.5 margin.
    wait_until(counted, (10 + 5) * 1.5, interval=1,
               what=f"Prometheus to count the 20 queries pooled on {balancer}")
    up = {labels["pgbouncer"]: value for labels, value in instant(cluster.prometheus_url,
                                                                 f'pgbouncer_up{{instance="{balancer}"}}')}
    assert up == {"rw": 1.0, "ro": 1.0}
    # SHOW only: the stats user the timer logs in as cannot pause the pool (that is the admin's).
    paused = host_of(balancer).run("PGPASSFILE=/etc/pgbouncer/careflow-stats.pgpass psql -X -h 127.0.0.1 -p 6432 "
                                   "-U pgbouncer_stats -d pgbouncer -c 'PAUSE careflow'")
    assert paused.rc != 0 and "admin access needed" in paused.stderr, paused.stderr
