"""The cluster as clients see it: roles, replication, routing through HAProxy (on the VIP by default)."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from careflow_ha.cluster.health import cluster_status
from careflow_ha.cluster.patroni import PatroniApi
from tests.inventory import host_vars
from tests.plugins.timeouts import wait_until

pytestmark = pytest.mark.cluster


def test_exactly_one_leader_two_streaming_replicas_one_sync_standby(cluster):
    def with_sync_standby():
        snap = PatroniApi(cluster).cluster()
        return snap if len(snap.sync_standbys) == 1 else None

    # The sync standby appears one Patroni loop after the replicas stream.
    snap = wait_until(with_sync_standby, timeout=60, what="a sync standby to be listed")
    roles = sorted(m.role for m in snap.members)
    assert len([m for m in snap.members if m.is_leader and m.state == "running"]) == 1
    assert sum(m.is_streaming_replica for m in snap.members) == 2
    assert roles.count("sync_standby") == 1, roles


def test_haproxy_routes_agree_with_patroni(cluster):
    def healthy():
        status = cluster_status(cluster)
        return status if status.healthy else None

    status = wait_until(healthy, timeout=60, what="HAProxy's routing to match Patroni's roles")
    assert status.problems == ()


def test_port_5000_lands_on_the_primary(cluster):
    with psycopg.connect(cluster.dsn("rw", "app"), autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False


def test_port_5001_lands_on_a_replica_and_refuses_writes(cluster):
    with psycopg.connect(cluster.dsn("ro", "ro"), autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
    # Even a role allowed to write cannot write through 5001: it is a standby.
    with psycopg.connect(cluster.dsn("ro", "app"), autocommit=True) as conn, pytest.raises(
        psycopg.errors.ReadOnlySqlTransaction
    ):
        conn.execute("CREATE TABLE careflow_should_not_exist (id int)")


def test_row_written_through_5000_is_readable_through_5001(cluster):
    marker = uuid.uuid4().hex
    with psycopg.connect(cluster.dsn("rw", "app"), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS ha_smoke (marker text PRIMARY KEY, at timestamptz DEFAULT now())")
        conn.execute("INSERT INTO ha_smoke (marker) VALUES (%s)", (marker,))

    def visible() -> bool:
        with psycopg.connect(cluster.dsn("ro", "ro"), autocommit=True) as conn:
            return conn.execute("SELECT count(*) FROM ha_smoke WHERE marker = %s", (marker,)).fetchone()[0] == 1

    wait_until(visible, timeout=15, interval=0.2, what="the row to replicate to a replica behind 5001")


def test_demo_data_is_loaded_and_readable_on_replicas(cluster):
    with psycopg.connect(cluster.dsn("ro", "ro"), autocommit=True) as conn:
        rows = conn.execute("SELECT count(*) FROM lab_results").fetchone()[0]
    assert rows > 100_000


def _server_node(conn: psycopg.Connection) -> str:
    """The lab node that answered on ``conn`` (its careflow_node_ip as PostgreSQL sees it)."""
    addr = conn.execute("SELECT host(inet_server_addr())").fetchone()[0]
    return {hv["careflow_node_ip"]: name for name, hv in host_vars().items()}[addr]


def test_writes_through_the_vip_land_on_the_primary(cluster):
    assert cluster.vip is not None and cluster.dsn("rw").count(f"@{cluster.vip.address}:") == 1
    leader = PatroniApi(cluster).cluster().leader
    marker = uuid.uuid4().hex
    with psycopg.connect(cluster.dsn("rw", "app"), autocommit=True) as conn:
        assert _server_node(conn) == leader
        conn.execute("CREATE TABLE IF NOT EXISTS ha_smoke (marker text PRIMARY KEY, at timestamptz DEFAULT now())")
        conn.execute("INSERT INTO ha_smoke (marker) VALUES (%s)", (marker,))
    # The row is on the leader itself, asked directly (not through any balancer).
    with psycopg.connect(cluster.node_dsn(leader, "app", "careflow"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM ha_smoke WHERE marker = %s", (marker,)).fetchone()[0] == 1


def test_reads_through_the_vip_land_on_replicas(cluster):
    snap = PatroniApi(cluster).cluster()
    replicas = {m.name for m in snap.members if m.is_streaming_replica}
    seen = set()
    for _ in range(6):  # roundrobin: a few connections meet more than one replica
        with psycopg.connect(cluster.dsn("ro", "ro"), autocommit=True) as conn:
            seen.add(_server_node(conn))
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
    assert seen <= replicas and snap.leader not in seen, f"reads via the VIP reached {seen}, replicas are {replicas}"


def test_the_published_loopback_ports_still_reach_the_primary(cluster):
    port = cluster.port("CAREFLOW_RW_PORT")
    dsn = cluster.dsn("rw", "app").replace(f"@{cluster.vip.address}:{cluster.vip.ports['CAREFLOW_RW_PORT']}/",
                                            f"@127.0.0.1:{port}/")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False


def test_libpq_multihost_writes_on_the_primary_and_reads_on_a_replica(cluster):
    """--via libpq-multihost: libpq itself finds the primary for writes and a standby for reads, no proxy."""
    routed = cluster.with_via("libpq-multihost")
    snap = PatroniApi(cluster).cluster()
    replicas = {m.name for m in snap.members if m.is_streaming_replica}
    writes, reads = set(), set()
    for _ in range(4):  # load_balance_hosts=random: a few connections try more than one order
        with psycopg.connect(routed.dsn("rw", "app"), autocommit=True) as conn:
            writes.add(_server_node(conn))
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        with psycopg.connect(routed.dsn("ro", "ro"), autocommit=True) as conn:
            reads.add(_server_node(conn))
    assert writes == {snap.leader}, f"writes reached {writes}, the leader is {snap.leader}"
    assert reads <= replicas, f"reads reached {reads}, replicas are {replicas}"


def test_leader_vip_writes_on_the_primary_with_no_proxy_hop(cluster):
    """--via leader-vip: PostgreSQL itself answers on the leader VIP (no HAProxy between), and it is the primary."""
    routed = cluster.with_via("leader-vip")
    vip = cluster.routing.leader_vip
    assert routed.dsn("rw", "app").count(f"@{vip}:{cluster.routing.pg_port}/") == 1
    with psycopg.connect(routed.dsn("rw", "app"), autocommit=True) as conn:
        # inet_server_addr() is the address PostgreSQL accepted on: the VIP itself, not a proxy's.
        assert conn.execute("SELECT host(inet_server_addr()), pg_is_in_recovery()").fetchone() == (vip, False)
    # Reads stay on HAProxy's read-only port: the leader VIP has no standby side.
    assert routed.dsn("ro", "ro") == cluster.dsn("ro", "ro")
