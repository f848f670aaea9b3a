"""Backups on the lab (issue 14): pgBackRest on every node and backup1, WAL archiving from the primary,
the timers, and the ``backup`` verbs and ``status`` as a user runs them (in-process CLI)."""

from __future__ import annotations

import json

import pytest

from careflow_ha.backup.lab import REPO_HOST
from careflow_ha.settings import PG_NODES
from tests.cli import run_cli
from tests.plugins.timeouts import wait_until
from tests.promql import instant

pytestmark = pytest.mark.cluster

HOSTS = (*PG_NODES, REPO_HOST)


@pytest.mark.parametrize("name", HOSTS)
def test_pgbackrest_is_configured_and_its_tls_server_listens(host_of, name):
    host = host_of(name)
    conf = host.file("/etc/pgbackrest/pgbackrest.conf")
    assert (conf.user, conf.group, conf.mode) == ("root", "postgres", 0o640)
    key = host.file(f"/etc/careflow/tls/postgres/{name}.key")
    assert (key.user, key.mode) == ("postgres", 0o600)
    assert host.service("pgbackrest").is_running and host.service("pgbackrest").is_enabled
    ip = host.check_output("getent ahostsv4 %s | awk 'NR==1 {print $1}'", name)
    assert host.socket(f"tcp://{ip}:8432").is_listening


@pytest.mark.parametrize("name", HOSTS)
def test_no_private_key_or_secret_is_readable_by_everyone(host_of, name):
    host = host_of(name)
    # World-readable files under the backup and TLS configuration that hold a key or a password.
    found = host.run("find /etc/pgbackrest /etc/careflow /var/lib/pgbackrest -maxdepth 3 -type f -perm -o=r "
                     "-exec grep -lE 'PRIVATE KEY|password|pass=' {} + 2>/dev/null")
    assert found.stdout.strip() == "", f"world-readable secrets on {name}: {found.stdout}"


def test_the_repository_host_runs_the_scheduled_backups(host_of):
    host = host_of(REPO_HOST)
    for kind in ("full", "diff", "metrics"):
        timer = host.service(f"careflow-backup-{kind}.timer")
        assert timer.is_enabled and timer.is_running, f"careflow-backup-{kind}.timer is not active"
    listed = host.check_output("systemctl list-timers careflow-backup-*.timer --all --no-pager")
    assert "careflow-backup-full.timer" in listed and "careflow-backup-diff.timer" in listed
    unit = host.check_output("systemctl cat careflow-backup@.service")
    assert "pgbackrest --stanza=careflow backup --type=%i" in unit and "User=postgres" in unit


def test_backup_run_list_and_verify_as_a_user_runs_them(cluster):
    code, out, err = run_cli("backup", "run", "--type", "incr", "--format", "json")
    assert code == 0, err
    taken = json.loads(out)
    assert taken["type"] == "incr" and taken["seconds"] > 0 and "report: reports/backup/backup-" in err
    code, out, err = run_cli("backup", "list", "--format", "json")
    assert code == 0, err
    listed = json.loads(out)
    assert taken["label"] in [b["label"] for b in listed["backups"]]
    assert listed["restorable"]["from"] < listed["restorable"]["to"]
    code, out, err = run_cli("backup", "verify", "--format", "json")
    assert code == 0, err
    verified = json.loads(out)
    assert verified["ok"] is True and verified["status"] == "ok" and verified["bad_files"] == 0
    assert verified["restored_tables"] > 10, "the test restore holds fewer tables than the EMR schema"


def test_status_shows_archiving_from_the_primary_and_a_passing_check(cluster):
    code, out, err = run_cli("status", "--format", "json")
    data = json.loads(out)
    assert code == 0, err
    archiving = data["archiving"]
    assert archiving["check"].startswith("ok"), archiving
    assert archiving["last_archived_wal"] != "none yet" and archiving["waiting_segments"] <= 8
    assert not [p for p in data["problems"] if "archiv" in p]


def _prometheus_backup_stops(prometheus_url: str) -> dict[str, float]:
    expr = f'careflow_backup_last_stop_timestamp_seconds{{instance="{REPO_HOST}"}}'
    return {labels["type"]: value for labels, value in instant(prometheus_url, expr)}


def test_prometheus_knows_when_the_newest_full_backup_ended(cluster, host_of):
    """pgbackrest info -> careflow-backup-metrics (timer, 60 s) -> node exporter's textfile -> Prometheus: the
    value CareflowBackupTooOld reads is the repository's own newest full backup."""
    info = json.loads(host_of(REPO_HOST).check_output(
        "runuser -u postgres -- pgbackrest --stanza=careflow info --output=json"))
    newest_full = max(b["timestamp"]["stop"] for b in info[0]["backup"] if b["type"] == "full")
    # At most one timer period and one scrape behind (roles/pgbackrest: pgbackrest_metrics_interval 60s).
    wait_until(lambda: _prometheus_backup_stops(cluster.prometheus_url).get("full") == newest_full, 70 * 1.5,
               interval=2, what="Prometheus to have the newest full backup's end from pgbackrest info")
