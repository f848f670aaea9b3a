"""The connection storm's statistics and report rows, without a network."""

from __future__ import annotations

import psycopg
import pytest

from careflow_ha.routing.report import render_markdown, storm_lines
from careflow_ha.routing.storm import (
    ClientOutcome,
    StormConfig,
    StormResult,
    percentile,
    short_error,
    summarise_storm,
)


@pytest.mark.parametrize(("q", "expected"), [(50, 5.0), (95, 10.0), (90, 9.0), (10, 1.0), (100, 10.0)])
def test_percentile_is_nearest_rank_on_measured_values(q, expected):
    assert percentile([float(v) for v in (7, 3, 10, 1, 5, 2, 9, 4, 8, 6)], q) == expected


def test_percentile_of_nothing_is_none_and_of_one_value_is_that_value():
    assert percentile([], 95) is None
    assert percentile([0.25], 50) == 0.25 and percentile([0.25], 95) == 0.25


@pytest.mark.parametrize(("error", "expected"), [
    (psycopg.OperationalError('connection failed: connection to server at "192.168.56.100", port 5000 failed: '
                              "FATAL:  sorry, too many clients already"), "sorry, too many clients already"),
    (psycopg.OperationalError('connection to server at "10.0.0.1", port 6432 failed: FATAL:  no more '
                              "connections allowed (max_client_conn)\nsecond line"),
     "no more connections allowed (max_client_conn)"),
    (TimeoutError(), "timeout"),
    (psycopg.OperationalError(""), "OperationalError"),
    ("x" * 200, "x" * 97 + "..."),
])  # fmt: skip
def test_errors_are_shortened_to_the_same_gist_for_every_client(error, expected):
    assert short_error(error) == expected


def _result(clients: list[ClientOutcome], **kw) -> StormResult:
    defaults = {"peak_open": 3, "pg_backends_at_peak": 41, "pg_backends_max": 52, "elapsed_s": 4.321,
                "timed_out": False, "max_connections": 200}
    return StormResult("pgbouncer", StormConfig(clients=len(clients)), clients, **{**defaults, **kw})


def test_summary_counts_errors_by_message_and_latencies_in_ms():
    clients = [
        ClientOutcome(connect_s=0.010, txn_s=[0.001, 0.002, 0.003]),
        ClientOutcome(connect_s=0.030, txn_s=[0.004, 0.005, 0.006]),
        ClientOutcome(connect_s=0.020, txn_s=[0.007, 0.008], query_error="timeout"),
        ClientOutcome(connect_error="sorry, too many clients already"),
        ClientOutcome(connect_error="sorry, too many clients already"),
        ClientOutcome(connect_error="timeout"),
    ]
    row = summarise_storm(_result(clients))
    assert row == {
        "target": "pgbouncer", "attempted": 6, "connected": 3, "connection_errors": 3,
        "connection_error_messages": {"sorry, too many clients already": 2, "timeout": 1},
        "query_errors": 1, "query_error_messages": {"timeout": 1},
        "connect_ms_p50": 20.0, "connect_ms_p95": 30.0, "connect_ms_max": 30.0,
        "txn_ms_p50": 4.0, "txn_ms_p95": 8.0, "txn_ms_max": 8.0,
        "peak_open_clients": 3, "pg_backends_at_peak": 41, "pg_backends_max": 52, "max_connections": 200,
        "under_max_connections": True,
        "elapsed_s": 4.32, "timed_out": False, "errors_target_met": False,
    }  # fmt: skip


def test_the_target_is_zero_connection_errors_within_the_deadline_and_under_max_connections():
    ok = [ClientOutcome(connect_s=0.01, txn_s=[0.001])] * 4
    assert summarise_storm(_result(ok))["errors_target_met"] is True
    assert summarise_storm(_result(ok, timed_out=True))["errors_target_met"] is False
    assert summarise_storm(_result(ok, pg_backends_max=200))["under_max_connections"] is False
    assert summarise_storm(_result(ok, pg_backends_max=199))["under_max_connections"] is True
    assert summarise_storm(_result(ok, pg_backends_max=None))["under_max_connections"] is None
    one_error = [*ok, ClientOutcome(connect_error="timeout")]
    assert summarise_storm(_result(one_error))["errors_target_met"] is False


def test_the_report_puts_the_pooler_and_the_control_side_by_side_with_the_why():
    pooled = summarise_storm(_result([ClientOutcome(connect_s=0.01, txn_s=[0.002])] * 3))
    control = summarise_storm(StormResult(
        "haproxy-vip", StormConfig(clients=3), [ClientOutcome(connect_s=0.01, txn_s=[0.002]),
                                                 *[ClientOutcome(connect_error="sorry, too many clients already")] * 2],
        1, 198, 198, 2.0, False))
    lines = storm_lines([pooled, control])
    assert lines[0].startswith("- Connection storm via pgbouncer: 3 clients, **0 connection errors**, peak 3 open")
    assert lines[0].endswith("(target: 0 errors: pass).")
    assert "**2 connection errors** (2 x 'sorry, too many clients already')" in lines[1]
    assert "target" not in lines[1]  # the control has no target: it shows the failure the pooler avoids
    meta = {"started_utc": "t", "leader": "pg1", "clients": 8, "seconds": 20, "rounds": 2, "preset": "fast",
            "drill_runs": 0}
    md = render_markdown(meta, [], [], [pooled, control])
    assert "## Connection storm" in md and "| pgbouncer | 3 | 3 | 0 | 0 | 10.0 |" in md
    assert "| haproxy-vip | 3 | 1 | 2 | 0 |" in md
    assert "- haproxy-vip: 2 x `sorry, too many clients already`" in md
    assert "queue at the pooler" in md and "max_db_connections" in md
    assert "## Connection storm" not in render_markdown(meta, [], [], [])
