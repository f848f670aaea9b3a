"""Crash safety: ``careflow-ha archive run|restore`` SIGKILLed at every step, then rerun: no row lost or duplicated.

The child process kills itself with SIGKILL at a named point (``CAREFLOW_ARCHIVE_FAILPOINT``), so
nothing in it gets to clean up, exactly as after ``kill -9`` or a power cut of the control host.
One more scenario kills a run while PostgreSQL is inside ``DETACH ... CONCURRENTLY`` (the
partition is left "detach pending" by the server, not by us).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from careflow_ha.archive.archiver import FAILPOINTS, Archiver, relation_state
from careflow_ha.archive.manifest import load_manifest
from careflow_ha.archive.store import LocalStore
from tests.archive.conftest import (
    REPO,
    attached_months,
    month_snapshot,
    populated_old_months,
    rows_in_range,
    run_cli_process,
)
from tests.cli import run_cli
from tests.plugins.timeouts import wait_until

pytestmark = pytest.mark.localpg

ARCHIVE_POINTS = [p for p in FAILPOINTS if not p.startswith("restore.")]
RESTORE_POINTS = [p for p in FAILPOINTS if p.startswith("restore.")]


def archive_run(dsn: str, root: Path, month: str):
    return run_cli("archive", "run", "--month", month, "--archive-dir", str(root), "--dsn", dsn, "--force",
                   "--format", "json")


def restore(dsn: str, root: Path, month: str):
    return run_cli("archive", "restore", month, "--archive-dir", str(root), "--dsn", dsn, "--format", "json")


def staging_leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp-*")]


def test_every_failpoint_is_exercised():
    assert set(ARCHIVE_POINTS) | set(RESTORE_POINTS) == set(FAILPOINTS)
    assert len(ARCHIVE_POINTS) >= 6


@pytest.mark.parametrize("point", ARCHIVE_POINTS)
def test_archive_killed_at_each_step_then_rerun_loses_and_duplicates_nothing(archive_db, tmp_path, point):
    dsn, root = archive_db.app_dsn, tmp_path / "archive"
    month = populated_old_months(dsn)[0]
    before = month_snapshot(dsn, month)

    killed = run_cli_process(dsn, "archive", "run", "--month", month, "--archive-dir", str(root), "--force",
                             failpoint=point)
    assert killed.returncode == -9, f"{point}: exit {killed.returncode}\n{killed.stderr[-2000:]}"
    # At the kill, every row is still in the database (attached or detached), or the month is dropped
    # only after its file was verified.
    with psycopg.connect(dsn) as conn:
        where = relation_state(conn, before["partition"])
    manifest = load_manifest(LocalStore(root), "public.lab_results", month)
    if where == "attached":
        assert rows_in_range(dsn, before["lower"], before["upper"]) == before["count"]
    elif where == "absent":
        assert manifest is not None and manifest.checksum_parquet == before["checksum"], point

    rerun = archive_run(dsn, root, month)
    assert rerun.code == 0, f"{point}: {rerun.err}"
    assert json.loads(rerun.out)[0]["state"] == "archived"
    assert month not in attached_months(dsn)
    assert rows_in_range(dsn, before["lower"], before["upper"]) == 0
    manifest = load_manifest(LocalStore(root), "public.lab_results", month)
    assert manifest.checksum_postgres == manifest.checksum_parquet == before["checksum"]
    assert staging_leftovers(root) == []

    back = restore(dsn, root, month)
    assert back.code == 0, back.err
    after = month_snapshot(dsn, month)
    assert after["rows"] == before["rows"] and after["checksum"] == before["checksum"]
    assert after["leaves"] == before["leaves"]


@pytest.mark.parametrize("point", RESTORE_POINTS)
def test_restore_killed_then_rerun_gives_the_month_back_once(archive_db, tmp_path, point):
    dsn, root = archive_db.app_dsn, tmp_path / "archive"
    month = populated_old_months(dsn)[1]
    before = month_snapshot(dsn, month)
    assert archive_run(dsn, root, month).code == 0

    killed = run_cli_process(dsn, "archive", "restore", month, "--archive-dir", str(root), failpoint=point)
    assert killed.returncode == -9, killed.stderr[-2000:]
    # restore.loaded dies before the commit: nothing of it may remain; after the commit the month is whole.
    expected_rows = 0 if point == "restore.loaded" else before["count"]
    assert rows_in_range(dsn, before["lower"], before["upper"]) == expected_rows

    rerun = restore(dsn, root, month)
    assert rerun.code == 0, rerun.err
    after = month_snapshot(dsn, month)
    assert after["rows"] == before["rows"] and after["checksum"] == before["checksum"]
    assert load_manifest(LocalStore(root), "public.lab_results", month).state == "restored"


def test_run_killed_inside_detach_concurrently_is_finalized_by_the_rerun(archive_db, tmp_path):
    """The server leaves the partition 'detach pending' when the session dies mid-DETACH; the rerun FINALIZEs."""
    dsn, root = archive_db.app_dsn, tmp_path / "archive"
    month = populated_old_months(dsn)[2]
    before = month_snapshot(dsn, month)
    blocker = psycopg.connect(dsn)  # an open transaction on the parent: DETACH CONCURRENTLY waits for it
    blocker.execute("SELECT count(*) FROM lab_results WHERE collected_at >= now() - interval '1 day'")
    proc = subprocess.Popen([sys.executable, "-c", "from careflow_ha.cli import main; main()", "archive", "run",
                             "--month", month, "--archive-dir", str(root), "--force"],
                            env={**os.environ, "CAREFLOW_DSN": dsn}, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            wait_until(lambda: relation_state(conn, before["partition"]) == "detach_pending", 60,
                       what="the detach to reach its waiting phase")
            proc.kill()
            proc.wait(timeout=30)
            # The client is gone; end its server session too, as a crash or failover would.
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                         "AND query ILIKE '%%DETACH PARTITION%%CONCURRENTLY%%'")
            wait_until(lambda: not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE "
                                                "query ILIKE '%%DETACH PARTITION%%CONCURRENTLY%%' "
                                                "AND pid <> pg_backend_pid()").fetchone()[0], 30,
                       interval=0.2, what="the killed detach session to end")
            blocker.rollback()
            assert relation_state(conn, before["partition"]) == "detach_pending"
    finally:
        blocker.close()
        if proc.poll() is None:
            proc.kill()
    assert load_manifest(LocalStore(root), "public.lab_results", month).state == "detaching"

    t0 = time.monotonic()
    rerun = archive_run(dsn, root, month)
    assert rerun.code == 0, rerun.err
    assert time.monotonic() - t0 < 60
    assert month not in attached_months(dsn)
    assert restore(dsn, root, month).code == 0
    after = month_snapshot(dsn, month)
    assert after["rows"] == before["rows"] and after["checksum"] == before["checksum"]


def test_keep_detached_leaves_the_table_and_restore_reattaches_it(archive_db, tmp_path):
    dsn, root = archive_db.app_dsn, tmp_path / "archive"
    month = populated_old_months(dsn)[3]
    before = month_snapshot(dsn, month)
    res = run_cli("archive", "run", "--month", month, "--keep-detached", "--archive-dir", str(root), "--dsn", dsn,
                  "--force", "--format", "json")
    assert res.code == 0, res.err
    assert json.loads(res.out)[0]["state"] == "kept"
    with psycopg.connect(dsn) as conn:
        assert relation_state(conn, before["partition"]) == "detached"
        assert conn.execute(f"SELECT count(*) FROM {before['partition']}").fetchone()[0] == before["count"]  # noqa: S608
    assert rows_in_range(dsn, before["lower"], before["upper"]) == 0
    archiver = Archiver(dsn, LocalStore(root), progress=False)
    assert archiver.restore(month).state == "restored"
    assert archiver.last_attach_skipped_scan is True
    after = month_snapshot(dsn, month)
    assert after["rows"] == before["rows"] and after["checksum"] == before["checksum"]
