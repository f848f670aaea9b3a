"""The writers against real local servers: what the client knows of each commit, and split brain by writes.

- A backend killed while its commit waits for the sync standby has committed
  locally: the writer must call it ambiguous (present), never refused.
- A read-only server's refusal is a definite failure (absent).
- Two loopback servers stand in for two nodes: per-node writers on both, one
  made read-only and then stopped, judged against a leader timeline that says
  the other one led. Its acknowledged writes are split brain, its refusals and
  its silence are not, and its coverage shows the silence.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from careflow_ha.cluster.model import ClusterSnapshot, Member
from careflow_ha.cluster.probes import (
    NODE_PROBE_TABLE,
    NodeWriter,
    ProbeWriter,
    ensure_node_probe_table,
    ensure_probe_table,
    fetch_seqs,
)
from careflow_ha.cluster.records import Recording
from careflow_ha.drills.checker import attempts_of, check_set
from careflow_ha.drills.splitbrain import judge_node_writes
from tests.plugins.timeouts import scaled, wait_until

pytestmark = pytest.mark.localpg


def _set(dsn: str, setting: str, value: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET {setting} = '{value}'")
        conn.execute("SELECT pg_reload_conf()")


def test_a_backend_killed_in_its_sync_wait_is_ambiguous_and_turns_up(restartable_pg):
    ensure_probe_table(restartable_pg.dsn)
    _set(restartable_pg.dsn, "synchronous_standby_names", "nobody")
    writer = ProbeWriter(restartable_pg.dsn, "killed-1", rate_hz=20, max_seconds=scaled(30), op_timeout_s=20.0)
    killed: list[int] = []

    def kill_one_waiting_backend() -> bool:
        with psycopg.connect(restartable_pg.dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE wait_event = 'SyncRep' AND application_name = 'careflow-ha-drill'"
            ).fetchall()
            for (pid,) in rows:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                killed.append(pid)
        return len(killed) >= 2

    writer.start()
    try:
        wait_until(kill_one_waiting_backend, 20, 0.2, "two writer backends terminated in their sync wait")
        wait_until(lambda: len(writer.errors) >= 2, 20, 0.1, "the writer recorded both")
    finally:
        _set(restartable_pg.dsn, "synchronous_standby_names", "")  # frees the commit still waiting
        writer.stop()
    acks, errors, in_flight = writer.outcomes()
    assert [e.kind for e in errors[:2]] == ["ambiguous", "ambiguous"], errors
    check = check_set(attempts_of(Recording(writes=acks, write_errors=errors, writes_in_flight=in_flight)),
                      fetch_seqs(restartable_pg.dsn, "killed-1"))
    assert {e.seq for e in errors[:2]} <= set(check.ambiguous_present), "terminated after the local commit"
    assert check.anomalies == 0, check


def test_a_read_only_refusal_is_a_definite_failure_and_absent(restartable_pg):
    ensure_probe_table(restartable_pg.dsn)
    _set(restartable_pg.dsn, "default_transaction_read_only", "on")  # what a replica answers
    writer = ProbeWriter(restartable_pg.dsn, "refused-1", rate_hz=20, max_seconds=scaled(30))
    writer.start()
    try:
        wait_until(lambda: len(writer.errors) >= 5, 20, 0.1, "refusals recorded")
    finally:
        writer.stop()
        _set(restartable_pg.dsn, "default_transaction_read_only", "off")
    acks, errors, in_flight = writer.outcomes()
    assert acks == () and {e.kind for e in errors} == {"query"}
    assert all("read-only" in e.message for e in errors)
    check = check_set(attempts_of(Recording(write_errors=errors, writes_in_flight=in_flight)),
                      fetch_seqs(restartable_pg.dsn, "refused-1"))
    assert len(check.refused_absent) == len(errors) and check.anomalies == 0


def leader_polls(leader: str, start: float, stop: float, step: float = 0.25) -> list[ClusterSnapshot]:
    members = (Member("pg1", "replica", "running", 1), Member("pg2", "leader", "running", 1))
    assert leader == "pg2"
    return [ClusterSnapshot(start + i * step, members) for i in range(int((stop - start) / step) + 2)]


def test_per_node_writers_judge_split_brain_by_what_each_server_acknowledged(restartable_pg, local_pg):
    """pg1 (restartable) acks, then refuses (read-only), then is gone; pg2 (local_pg) acks throughout."""
    ensure_node_probe_table(restartable_pg.dsn)
    ensure_node_probe_table(local_pg.superuser_dsn, grant_to="careflow_app")
    run_id = f"node-writers-{time.time_ns()}"
    pg1 = NodeWriter("pg1", restartable_pg.dsn, run_id, interval_s=0.1, max_seconds=scaled(60))
    pg2 = NodeWriter("pg2", local_pg.app_dsn, run_id, interval_s=0.1, max_seconds=scaled(60))
    started = time.time()
    for w in (pg1, pg2):
        w.start()
    try:
        wait_until(lambda: sum(x.outcome == "acked" for x in pg1.writes) >= 10, 20, 0.1, "pg1 acknowledged")
        read_only_at = time.time()
        _set(restartable_pg.dsn, "default_transaction_read_only", "on")
        wait_until(lambda: sum(x.outcome == "refused" for x in pg1.writes) >= 10, 20, 0.1, "pg1 refused")
        stopped_at = time.time()
        restartable_pg.stop("fast")
        wait_until(lambda: sum(x.outcome == "unreachable" for x in pg1.writes) >= 3, 30, 0.1, "pg1 unreachable")
        wait_until(lambda: time.time() - stopped_at >= 2.0, 10, 0.1, "pg1 gone for 2 s")
    finally:
        for w in (pg1, pg2):
            w.stop()
        with psycopg.connect(local_pg.superuser_dsn, autocommit=True) as conn:
            conn.execute(f"DELETE FROM {NODE_PROBE_TABLE} WHERE run_id = %s", (run_id,))  # a shared server
    ended = time.time()
    assert [w.failure for w in (pg1, pg2)] == [None, None]
    history = pg1.writes + pg2.writes
    outcomes = [w.outcome for w in pg1.writes]
    first = {o: outcomes.index(o) for o in ("acked", "refused", "unreachable")}
    assert first["acked"] < first["refused"] < first["unreachable"], "acked, then refused, then unreachable"
    assert {w.outcome for w in pg2.writes} == {"acked"}

    judged = judge_node_writes(history, leader_polls("pg2", started - 1.0, ended + 1.0), started, ended)
    assert judged.nodes == ("pg1",), "only pg1 acknowledged while pg2 held the key"
    acked_pg1 = [w for w in pg1.writes if w.outcome == "acked"]
    assert len(judged.acknowledged) == len(acked_pg1), "every one of pg1's acks was split brain"
    assert all(f.done_at <= read_only_at + scaled(2) for f in judged.acknowledged)
    assert judged.coverage["pg2"] > 0.8
    assert judged.coverage["pg1"] < judged.coverage["pg2"], "pg1's silence after the stop is not coverage"
