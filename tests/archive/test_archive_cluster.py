"""On the cluster: archive a month through HAProxy port 5000 (the primary), see it gone on a replica (5001),
restore it, and see the restore replicated. The month is always given back, even when an assertion fails."""

from __future__ import annotations

import json

import psycopg
import pytest

from careflow_ha.archive import rowhash
from careflow_ha.archive.archiver import TABLE, Archiver, month_partitions, relation_state
from careflow_ha.archive.manifest import load_manifest
from careflow_ha.archive.store import LocalStore
from tests.archive.conftest import month_snapshot
from tests.cli import run_cli
from tests.plugins.timeouts import wait_until

pytestmark = pytest.mark.cluster


def replica_view(ro_dsn: str, partition: str, lower, upper) -> tuple[str, int, str | None]:
    """(catalog state, rows in the month's range, checksum of the month table) as a replica sees them."""
    with psycopg.connect(ro_dsn) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0], "port 5001 must reach a replica"
        state = relation_state(conn, partition)
        rows = conn.execute("SELECT count(*) FROM lab_results WHERE collected_at >= %s AND collected_at < %s",
                            (lower, upper)).fetchone()[0]
        checksum = None
        if state == "attached":
            checksum = rowhash.checksum_in_postgres(conn, rowhash.table_columns(conn, TABLE), partition)[0]
    return state, rows, checksum


def test_archive_through_the_primary_is_seen_on_a_replica_and_restore_replicates(cluster, tmp_path):
    app, ro = cluster.dsn("rw", role="app"), cluster.dsn("ro", role="ro")
    root = tmp_path / "archive"
    with psycopg.connect(app) as conn:
        months = [p for p in month_partitions(conn)
                  if conn.execute(f"SELECT EXISTS (SELECT 1 FROM {p.name})").fetchone()[0]]  # noqa: S608
    assert months, "the demo data set should be loaded on the cluster"
    month = months[0].month
    before = month_snapshot(app, month)
    assert before["count"] > 0
    try:
        res = run_cli("archive", "run", "--month", month, "--archive-dir", str(root), "--dsn", app, "--force",
                      "--format", "json")
        assert res.code == 0, res.err
        assert json.loads(res.out)[0]["state"] == "archived"
        gone = wait_until(lambda: (v := replica_view(ro, before["partition"], before["lower"], before["upper"]))
                          [:2] == ("absent", 0) and v, 60, what="the archived month to be gone on the replica")
        assert gone[:2] == ("absent", 0)

        res = run_cli("archive", "restore", month, "--archive-dir", str(root), "--dsn", app, "--format", "json")
        assert res.code == 0, res.err
        assert json.loads(res.out)["attach_scan_skipped"] is True
        back = wait_until(lambda: (v := replica_view(ro, before["partition"], before["lower"], before["upper"]))
                          [0] == "attached" and v[1] == before["count"] and v, 60,
                          what="the restored month to replicate")
        assert back == ("attached", before["count"], before["checksum"])
    finally:  # never leave the shared cluster without its month
        manifest = load_manifest(LocalStore(root), TABLE, month)
        with psycopg.connect(app) as conn:
            state = relation_state(conn, before["partition"])
        if manifest is not None and state != "attached":
            archiver = Archiver(app, LocalStore(root), progress=False)
            if manifest.state not in ("archived", "kept", "restoring", "restored"):
                archiver.archive_month(month)
            archiver.restore(month)
    assert month_snapshot(app, month)["checksum"] == before["checksum"]
