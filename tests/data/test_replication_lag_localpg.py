"""The replication-lag watch against a real streaming standby: it sees the standby, measures the lag a paused
replay builds up, and the catch-up wait tells "not yet" from "caught up"."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from careflow_ha.data.localserver import free_port, start_local_server
from careflow_ha.data.replication_lag import ReplicationWatch, load_watching, summarize, wait_caught_up

pytestmark = pytest.mark.localpg
STANDBY = "walreceiver"  # the application_name a standby made by pg_basebackup -R reports


@pytest.fixture(scope="module")
def pair():
    primary = start_local_server()
    standby = None
    try:
        standby = primary.standby(Path(tempfile.mkdtemp(prefix="careflow-lag-standby-")), free_port())
        standby.start()
        yield primary, standby
    finally:
        for server in (standby, primary):
            if server is not None:
                server.stop()
                server.remove()


def _write_mb(dsn: str, mb: int) -> str:
    """About ``mb`` MB of WAL in one transaction; the primary's WAL position after its commit."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS lag_probe (id bigint, pad text)")
        conn.execute("INSERT INTO lag_probe SELECT g, repeat('x', 1000) FROM generate_series(1, %s) g",
                     (mb * 1000,))
        return conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]


def test_a_paused_replay_is_measured_as_lag_and_the_wait_sees_when_it_caught_up(pair):
    primary, standby = pair
    admin = primary.dsn("admin")
    watch = ReplicationWatch(admin, interval_s=0.2, max_seconds=120)
    started = time.time()
    watch.start()
    try:
        with psycopg.connect(standby.dsn("superuser"), autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")
        lsn = _write_mb(admin, 40)
        committed = time.time()
        assert wait_caught_up(admin, lsn, [STANDBY], timeout_s=2) == {STANDBY: None}, "replay is paused"
        time.sleep(0.5)  # samples of the paused state
        lagging = summarize(watch.samples, started, time.time(), {})
        assert lagging[STANDBY]["max_replay_mb"] >= 35, lagging
        assert lagging[STANDBY]["max_flush_mb"] < lagging[STANDBY]["max_replay_mb"], "WAL still arrives"
        with psycopg.connect(standby.dsn("superuser"), autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")
        caught = wait_caught_up(admin, lsn, [STANDBY], timeout_s=60)
    finally:
        watch.stop()
    assert caught[STANDBY] is not None and 0 <= caught[STANDBY] < 60
    assert watch.failure is None and watch.missed == 0 and not watch.hidden
    states = {s.state for s in watch.samples}
    assert states == {"streaming"}
    out = summarize(watch.samples, started, committed, caught)
    assert out[STANDBY]["sync_states"] == ["async"] and out[STANDBY]["caught_up_s"] == caught[STANDBY]


def test_a_role_without_pg_monitor_is_told_apart_from_no_lag(pair):
    primary, _ = pair
    watch = ReplicationWatch(primary.dsn("app"), interval_s=0.1, max_seconds=1)
    watch.start()
    watch.join(5)
    assert watch.hidden and watch.samples == (), "the app role sees the standby but none of its positions"


def test_load_watching_reports_the_standby_and_its_catch_up(pair, tmp_path):
    from careflow_ha.data.db import migrate
    from careflow_ha.data.generator import DataSpec

    primary, _ = pair
    migrate(primary.dsn("app"))
    lines: list[str] = []
    summary, standbys, report = load_watching(
        primary.dsn("app"), primary.dsn("admin"), DataSpec(rows=20_000, clinics=2, months=2, seed=3),
        replace=False, reports_dir=tmp_path, secrets=dict(primary.passwords), progress=lines.append)
    assert summary.rows == 20_000 and summary.commit_lsn
    assert list(standbys) == [STANDBY] and standbys[STANDBY]["caught_up_s"] is not None, standbys
    assert standbys[STANDBY]["samples"] >= 1 and standbys[STANDBY]["sync_states"] == ["async"]
    assert lines == [f"committed; waiting until {STANDBY} replayed it"]
    assert report.parent.parent == tmp_path / "data-load"
    assert sorted(p.name for p in report.parent.iterdir()) == ["lag.png", "report.md", "result.json"]
