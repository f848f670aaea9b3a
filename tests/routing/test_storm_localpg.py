"""The storm against a real PostgreSQL 15 started with a small max_connections, straight (no PgBouncer): a
storm larger than the server's slots must count the refused logins; one within them, none."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from careflow_ha.data.localserver import LocalPostgres, start_local_server
from careflow_ha.routing.storm import StormConfig, run_storm, summarise_storm

pytestmark = pytest.mark.localpg

MAX_CONNECTIONS = 20
RESERVED = 3  # superuser_reserved_connections' default: the backend counter keeps one of them
OPEN_SLOTS = MAX_CONNECTIONS - RESERVED


@pytest.fixture(scope="module")
def small_pg() -> Iterator[LocalPostgres]:
    server = start_local_server(extra_conf={"max_connections": str(MAX_CONNECTIONS)})
    try:
        yield server
    finally:
        server.stop()
        server.remove()


def _storm(server: LocalPostgres, clients: int, **cfg) -> dict:
    config = StormConfig(clients=clients, hold_s=1.0, connect_timeout_s=10, query_timeout_s=5, total_s=60, **cfg)
    result = run_storm("direct", server.dsn("app"), {"autocommit": True}, config, server.dsn("superuser", "postgres"))
    return summarise_storm(result)


def test_a_storm_past_max_connections_counts_every_refused_login(small_pg):
    row = _storm(small_pg, 40)
    assert row["attempted"] == 40
    assert row["connected"] + row["connection_errors"] == 40
    assert row["connected"] <= OPEN_SLOTS and row["connection_errors"] >= 40 - OPEN_SLOTS
    assert set(row["connection_error_messages"]) <= {
        "remaining connection slots are reserved for non-replication superuser connections",
        "sorry, too many clients already",
    }
    assert row["query_errors"] == 0 and row["errors_target_met"] is False
    assert row["peak_open_clients"] == row["connected"]  # every connected client held its connection 1 s
    assert row["pg_backends_max"] <= MAX_CONNECTIONS
    assert row["max_connections"] == MAX_CONNECTIONS  # read from the server, not assumed


def test_a_storm_within_max_connections_has_no_errors_and_counts_its_backends(small_pg):
    row = _storm(small_pg, 10)
    assert (row["attempted"], row["connected"], row["connection_errors"], row["query_errors"]) == (10, 10, 0, 0)
    assert row["errors_target_met"] is True and row["timed_out"] is False
    assert row["peak_open_clients"] == 10
    assert row["pg_backends_at_peak"] == 11  # the 10 clients and the counting superuser connection
    assert row["txn_ms_p50"] is not None and row["txn_ms_p50"] <= row["txn_ms_p95"] <= row["txn_ms_max"]
    assert row["connect_ms_p50"] <= row["connect_ms_p95"] <= row["connect_ms_max"]


def test_the_storm_deadline_ends_clients_that_hold_on_too_long(small_pg):
    config = StormConfig(clients=3, hold_s=30.0, connect_timeout_s=10, query_timeout_s=5, total_s=2.0)
    result = run_storm("direct", small_pg.dsn("app"), {"autocommit": True}, config)
    row = summarise_storm(result)
    assert row["timed_out"] is True and row["errors_target_met"] is False
    assert row["query_error_messages"] == {"storm deadline": 3}
    assert row["elapsed_s"] < 10
