"""Replication lag while data goes in through port 5000 with synchronous replication (issue 17, item 4).

The 10M-row figures are in partitioning/DECISION.md ("On the cluster"); here the mechanism at the lab's size:
the synchronous standby has flushed every commit before the commit returns, and `data load` reports each
standby's lag and its catch-up in a report.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from careflow_ha.data.loader import DEMO_SPEC
from careflow_ha.data.replication_lag import ReplicationWatch, summarize, wait_caught_up
from careflow_ha.settings import PG_NODES
from tests.cli import run_cli

pytestmark = pytest.mark.cluster


def test_the_sync_standby_flushed_the_commit_before_it_returned_and_both_replay_it(cluster):
    admin = cluster.dsn("rw", "admin")
    watch = ReplicationWatch(admin, interval_s=0.2, max_seconds=120)
    watch.start()
    try:
        with psycopg.connect(admin) as conn:
            conn.execute("DROP TABLE IF EXISTS careflow_lag_probe")
            conn.execute("CREATE TABLE careflow_lag_probe (id bigint, pad text)")
            conn.execute("INSERT INTO careflow_lag_probe SELECT g, repeat('x', 1000) FROM generate_series(1, 30000) g")
            before_commit = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
            conn.commit()
            # Read at once, on the same session: what the primary knew when COMMIT returned.
            seen = conn.execute("SELECT application_name, sync_state, pg_wal_lsn_diff(flush_lsn, %s::pg_lsn) >= 0 "
                                "FROM pg_stat_replication", (before_commit,)).fetchall()
            conn.execute("DROP TABLE careflow_lag_probe")
            conn.commit()
        standbys = sorted(name for name, _, _ in seen)
        caught = wait_caught_up(admin, before_commit, standbys, timeout_s=60)
    finally:
        watch.stop()
    assert len(standbys) == len(PG_NODES) - 1 and set(standbys) < set(PG_NODES), seen
    sync = [name for name, state, _ in seen if state == "sync"]
    assert len(sync) == 1, f"synchronous_mode names one synchronous standby: {seen}"
    assert all(flushed for name, _, flushed in seen if name in sync), f"COMMIT returned before the sync flush: {seen}"
    assert all(s is not None for s in caught.values()), caught
    out = summarize(watch.samples, 0, float("inf"), caught)
    assert set(out) == set(standbys) and all(s["samples"] > 0 for s in out.values())
    assert watch.failure is None and not watch.hidden


def test_data_load_reports_each_standbys_lag_and_catch_up(cluster):
    # The demo data set again (what `up` loaded), so the suites after this one find what they expect.
    code, out, err = run_cli("data", "load", "--rows", str(DEMO_SPEC.rows), "--clinics", str(DEMO_SPEC.clinics),
                             "--months", str(DEMO_SPEC.months), "--seed", str(DEMO_SPEC.seed), "--replace",
                             "--force", "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert data["rows"] == DEMO_SPEC.rows
    standbys = data["replication"]
    assert len(standbys) == len(PG_NODES) - 1, standbys
    assert sorted(s for v in standbys.values() for s in v["sync_states"]).count("sync") >= 1, standbys
    for name, s in standbys.items():
        assert s["caught_up_s"] is not None and s["samples"] > 0 and s["max_replay_mb"] is not None, (name, s)
    folder = Path(data["report"]).parent
    assert sorted(p.name for p in folder.iterdir()) == ["lag.png", "report.md", "result.json"]
    assert all(name in Path(data["report"]).read_text() for name in standbys)
