"""Probes against a throwaway local PostgreSQL: outages are measured, the writer recovers, nothing acked is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psycopg
import pytest

from careflow_ha.cluster.probes import (
    NodeSampler,
    ProbeReader,
    ProbeWriter,
    Watchdog,
    connect,
    ensure_probe_table,
    fetch_seqs,
)
from careflow_ha.cluster.records import Recording
from careflow_ha.drills.analysis import measure_outage
from careflow_ha.drills.checker import attempts_of, check_set
from careflow_ha.drills.faults import PGDATA
from careflow_ha.drills.runner import exec_writable_check
from tests.plugins.timeouts import scaled, wait_until

pytestmark = pytest.mark.localpg


def test_probe_table_is_created_idempotently_and_granted_to_the_app_role(restartable_pg):
    with psycopg.connect(restartable_pg.dsn, autocommit=True) as conn:
        conn.execute("CREATE ROLE careflow_app LOGIN")
    ensure_probe_table(restartable_pg.dsn, grant_to="careflow_app")
    ensure_probe_table(restartable_pg.dsn, grant_to="careflow_app")
    app_dsn = restartable_pg.dsn.replace("postgres@", "careflow_app@", 1)
    with psycopg.connect(app_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO drill_probe (run_id, seq, client_ts) VALUES ('grant-1', 1, now())")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM drill_probe")  # the drill role may add and read, never remove
    assert fetch_seqs(app_dsn, "grant-1") == (1,)
    assert fetch_seqs(app_dsn, "nothing-yet") == ()


def test_restart_is_measured_as_an_outage_and_the_writer_recovers(restartable_pg):
    ensure_probe_table(restartable_pg.dsn)
    names = {"127.0.0.1": "local"}
    writer = ProbeWriter(restartable_pg.dsn, "restart-1", rate_hz=20, max_seconds=scaled(90), server_names=names)
    reader = ProbeReader(restartable_pg.dsn, rate_hz=10, max_seconds=scaled(90), server_names=names)
    sampler = NodeSampler("local", restartable_pg.dsn, interval_s=0.2, max_seconds=scaled(90), tcp_backoff_s=0.5)
    for probe in (writer, reader, sampler):
        probe.start()
    try:
        wait_until(lambda: len(writer.acks) >= 10 and len(reader.acks) >= 5, 20, 0.1, "probes acknowledged")
        fault_at = time.time()
        restartable_pg.stop("immediate")  # a crash: no checkpoint, clients cut off
        # Keep it down long enough (2 s) that both probes must notice, whatever their phase.
        wait_until(
            lambda: time.time() - fault_at >= 2.0 and len([e for e in writer.errors if e.at > fault_at]) >= 3,
            20,
            0.1,
            "writer saw errors while the server was down",
        )
        down_until = time.time()
        restartable_pg.start()
        healed_at = time.time()
        wait_until(lambda: writer.last_ack_after(healed_at) is not None, 30, 0.1, "writer acked after restart")
        settled = len(writer.acks)
        wait_until(lambda: len(writer.acks) >= settled + 10, 20, 0.1, "writer kept writing")
    finally:
        for probe in (writer, reader, sampler):
            probe.stop()
    assert not any(p.is_alive() for p in (writer, reader, sampler)), "probes must stop when asked"
    assert [p.failure for p in (writer, reader, sampler)] == [None, None, None]

    out = measure_outage([a.acked_at for a in writer.acks], fault_at, writer.interval_s)
    assert out.interrupted and out.recovered
    # The server was down at least from the fault until we started it again ...
    assert out.seconds >= down_until - fault_at
    # ... and the writer came back within its connect timeout after the restart.
    assert out.first_ack_after <= healed_at + scaled(5)
    assert {e.kind for e in writer.errors} & {"connect", "query"}
    assert all(a.server == "local" for a in writer.acks)

    read_out = measure_outage([a.acked_at for a in reader.acks], fault_at, reader.interval_s)
    assert read_out.interrupted and read_out.recovered and read_out.seconds >= down_until - fault_at

    # Every acknowledged insert survived the crash (synchronous_commit is on), and the table holds
    # nothing the writer did not attempt: the set checker over the real table, not a synthetic one.
    acks, errors, in_flight = writer.outcomes()
    rec = Recording(writes=acks, write_errors=errors, writes_in_flight=in_flight)
    check = check_set(attempts_of(rec), fetch_seqs(restartable_pg.dsn, "restart-1"))
    assert (check.lost, check.unexpected, check.duplicated, check.refused_present) == ((), (), (), ())
    assert len(check.ok) == len(acks)

    states = [s.writable for s in sampler.samples]
    assert True in states and None in states, "sampler saw the node writable, then not answering"
    assert states[-1] is True, "sampler saw the node writable again"


def test_commit_stuck_on_sync_standby_is_cancelled_and_never_counted_as_acked(restartable_pg):
    """A commit waiting for a sync standby that never comes returns 'success' with a warning once
    cancelled; the writer must classify it as ambiguous, not as an acknowledgement."""
    ensure_probe_table(restartable_pg.dsn)
    with psycopg.connect(restartable_pg.dsn, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
        conn.execute("SELECT pg_reload_conf()")
    writer = ProbeWriter(restartable_pg.dsn, "stuck-1", rate_hz=20, max_seconds=scaled(30), op_timeout_s=0.5)
    writer.start()
    try:
        wait_until(lambda: len(writer.errors) >= 3, 20, 0.1, "stuck commits cancelled")
    finally:
        writer.stop()
    assert writer.acks == ()
    assert {e.kind for e in writer.errors} == {"ambiguous"}
    # The rows are there (committed locally): the checker reports them as ambiguous writes that turned
    # up, never as lost and never as unexpected.
    rec = Recording(write_errors=writer.errors, writes_in_flight=writer.in_flight)
    check = check_set(attempts_of(rec), fetch_seqs(restartable_pg.dsn, "stuck-1"))
    assert {e.seq for e in writer.errors} <= set(check.ambiguous_present)
    assert check.anomalies == 0


def test_probes_stop_by_themselves_at_their_time_bound(restartable_pg):
    ensure_probe_table(restartable_pg.dsn)
    writer = ProbeWriter(restartable_pg.dsn, "bounded-1", rate_hz=20, max_seconds=1.0)
    started = time.monotonic()
    writer.start()
    writer.join(scaled(10))
    assert not writer.is_alive()
    assert time.monotonic() - started < scaled(5)
    assert 1 <= len(writer.acks) <= 21


class HostExec:
    """Runs the in-node command on this host, with the node's PGDATA mapped to the test server's."""

    def __init__(self, datadir) -> None:
        self.datadir = str(datadir)

    def exec(self, node, argv, **kw):
        argv = [a.replace(PGDATA, self.datadir) for a in argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=kw.get("timeout"), check=False)


def test_unix_socket_fallback_reads_socket_dir_and_port_from_postmaster_pid(restartable_pg):
    """The split-brain sampler's path to a partitioned node: psql over the socket named in postmaster.pid."""
    check = exec_writable_check(HostExec(restartable_pg.datadir), "local")
    assert check() is True
    with psycopg.connect(restartable_pg.dsn, autocommit=True) as conn:
        conn.execute("SELECT 1")
    restartable_pg.stop("immediate")
    assert check() is None  # no postmaster: unknown, never "writable"


def test_watchdog_frees_a_client_stuck_on_a_frozen_backend(restartable_pg):
    """A frozen server (container paused) keeps TCP alive but never answers: the watchdog must cut loose."""
    conn = connect(restartable_pg.dsn, 60_000)
    backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    os.kill(backend, signal.SIGSTOP)
    started = time.monotonic()
    try:
        with pytest.raises(psycopg.OperationalError), Watchdog(conn, 0.5, grace=0.5) as dog:
            conn.execute("SELECT 1")
    finally:
        os.kill(backend, signal.SIGCONT)
        conn.close()
    assert dog.fired
    assert time.monotonic() - started < scaled(5)
