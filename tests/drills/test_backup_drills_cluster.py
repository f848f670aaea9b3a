"""The restore drills against the real lab (issue 14): the same code ``careflow-ha drill run`` runs.

CI runs ``accidental-delete`` and ``replica-rebuild`` (``test_ci_*``); ``cluster-loss`` destroys every
node's data and runs in the long suite (CAREFLOW_DRILL_SUITE=long). Each leaves its report under
``reports/backup/`` and must leave a healthy cluster behind.
"""

from __future__ import annotations

import json

import pytest

from careflow_ha.backup.drills import accidental_delete, cluster_loss, replica_rebuild
from careflow_ha.cluster.health import cluster_status
from careflow_ha.settings import Settings

pytestmark = pytest.mark.drill


def _checks(report) -> dict[str, bool | None]:  # noqa: ANN001 - a BackupReport
    return {c.name: c.ok for c in report.checks}


def _healthy_after(settings: Settings) -> None:
    status = cluster_status(settings)
    assert status.healthy, f"the drill left the cluster unhealthy: {status.problems}"


def test_ci_accidental_delete_is_undone_to_the_row(cluster):
    report, folder = accidental_delete(cluster, print)
    f = report.figures
    assert f["deleted_rows"] > 0, "the DELETE hit an empty table: nothing was proven"
    assert f["acked_before_T"] >= 40 and f["lost"] == 0, f"{f['lost']} rows acknowledged before T are missing"
    assert f["resurrected"] == 0, f"{f['resurrected']} rows sent after T came back"
    assert f["gap_writes"] > 0, "no write after T: the restore's precision was not tested"
    assert report.passed, _checks(report)
    assert f["fresh_backup"], "no full backup of the restored timeline was taken"
    assert json.loads((folder / "result.json").read_text())["passed"] is True
    assert (folder / "timeline.png").stat().st_size > 0
    _healthy_after(cluster)


def test_ci_replica_rebuild_comes_from_the_repository(cluster):
    report, folder = replica_rebuild(cluster, print)
    f = report.figures
    assert report.passed, _checks(report)
    assert f["lost"] == 0 and f["failed_writes"] == 0
    assert f["pgbackrest_rebuild_s"] > 0 and f["basebackup_rebuild_s"] > 0
    assert (folder / "report.md").exists()
    _healthy_after(cluster)


def test_cluster_loss_restores_the_latest_within_archive_timeout(cluster):
    report, _ = cluster_loss(cluster, print)
    f = report.figures
    assert report.passed, _checks(report)
    assert f["rpo_span_s"] <= f["archive_timeout_s"] + 5
    assert f["rto_s"] > 0
    _healthy_after(cluster)
