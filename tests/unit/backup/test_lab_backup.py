"""The lab side of backups without a lab: the SSH command lines, the restore test's result, archiving health,
the reports, and the CLI's refusals (exit 2 before anything is touched)."""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

import pytest

import careflow_ha.backup.lab as lab_mod
from careflow_ha.backup.lab import Archiver, LabRepository, RestoreTest, archiving_status
from careflow_ha.backup.remote import SshRunner
from careflow_ha.backup.report import BackupReport, Check, Marks, Step, write_report
from careflow_ha.errors import CheckFailed, CommandFailed
from careflow_ha.settings import PORT_DEFAULTS, SECRET_KEYS, Settings
from tests.cli import run_cli

NOW = datetime(2026, 12, 31, 15, 30, tzinfo=UTC)  # 2027-01-01 00:30 in Seoul


def _settings(tmp_path) -> Settings:
    return Settings(project_dir=tmp_path, ports=MappingProxyType(dict(PORT_DEFAULTS)),
                    secrets=MappingProxyType({k: f"secret-{i}-value-long" for i, k in enumerate(SECRET_KEYS)}))


def test_ssh_runs_pgbackrest_as_postgres_with_its_arguments_quoted_once(tmp_path):
    argv = SshRunner(_settings(tmp_path), "backup1").argv(["pgbackrest", "--stanza=careflow", "info", "--output=json"])
    assert argv[:2] == ["ssh", "-F"] and argv[-2] == "backup1"
    assert shlex.split(argv[-1]) == ["runuser", "-u", "postgres", "--", "pgbackrest", "--stanza=careflow", "info",
                                     "--output=json"]
    tricky = SshRunner(_settings(tmp_path), "pg1", "root").argv(["sh", "-c", "echo 'a b'; echo $HOME"])
    assert shlex.split(tricky[-1]) == ["sh", "-c", "echo 'a b'; echo $HOME"]  # the far shell sees one argument


def test_the_restore_test_result_is_read_or_the_failure_names_the_node():
    got = RestoreTest.parse("pg3", "databases=3\ntables=57 bytes=48234496\nrestore_s=4.21 start_s=1.70\n")
    assert (got.tables, got.bytes, got.restore_s, got.start_s) == (57, 48234496, 4.21, 1.70)
    with pytest.raises(CheckFailed, match="the restore test on pg3 printed no result"):
        RestoreTest.parse("pg3", "pg_ctl: could not start server")


def _archiver(**kw) -> Archiver:
    base = dict(primary="192.168.56.11", archived_count=10, last_archived_wal="000000010000000000000009",
                last_archived_at=NOW - timedelta(seconds=30), failed_count=0, last_failed_wal=None,
                last_failed_at=None, waiting_segments=0)
    return Archiver(**{**base, **kw})


class _Lab:
    def __init__(self, archiver: Archiver, check_error: str | None = None) -> None:
        self._a, self._err = archiver, check_error

    def archiver(self) -> Archiver:
        return self._a

    def archive_check(self, timeout: float = 120) -> float:
        if self._err:
            raise CommandFailed(self._err)
        return 1.25


def test_healthy_archiving_shows_the_last_segment_and_its_age():
    row, problems = archiving_status(_Lab(_archiver()))  # type: ignore[arg-type]
    assert problems == [] and row["last_archived_wal"] == "000000010000000000000009"
    assert row["check"] == "ok in 1.2s" and row["waiting_segments"] == 0
    assert _archiver().age_s(NOW) == 30


def test_a_failing_archive_command_is_a_problem_that_counts_the_waiting_wal():
    failing = _archiver(failed_count=3, last_failed_wal="00000001000000000000000A",
                        last_failed_at=NOW - timedelta(seconds=5), waiting_segments=2)
    assert failing.failing
    _, problems = archiving_status(_Lab(failing, check_error="pgbackrest check on backup1 failed (82): timeout"))  # type: ignore[arg-type]
    assert "WAL archiving fails on the primary (00000001000000000000000A" in problems[0]
    assert "2 segment(s) wait in pg_wal" in problems[0]
    assert problems[1].startswith("pgbackrest check failed")
    recovered = _archiver(failed_count=3, last_failed_at=NOW - timedelta(hours=1))  # failed once, archives again
    assert not recovered.failing


def test_wal_piling_up_without_a_failure_is_still_a_problem():
    _, problems = archiving_status(_Lab(_archiver(waiting_segments=lab_mod.WAITING_SEGMENTS_MAX + 1)))  # type: ignore[arg-type]
    assert problems and "wait in pg_wal for archiving" in problems[0]


def _report(started: float, kind: str = "backup", ok: bool | None = True) -> BackupReport:
    return BackupReport(kind=kind, title=f"{kind} run", started_at=started, finished_at=started + 9.5,
                        summary="what happened", figures={"seconds": 9.5, "label": "20261231-150500F"},
                        steps=[Step("pgbackrest backup", started, started + 9.0), Step("never ended", started + 9.0)],
                        checks=[Check("rows back", "0 lost", "0 lost", ok)],
                        marks=Marks(acks=[started + 1, started + 2], moments={"T": started + 3}))


def test_a_report_has_markdown_json_and_a_timeline_and_an_index_newest_first(tmp_path):
    settings = _settings(tmp_path)
    old = write_report(_report(NOW.timestamp() - 60), tmp_path, settings.secrets)
    new = write_report(_report(NOW.timestamp(), kind="accidental-delete", ok=False), tmp_path, settings.secrets)
    assert {p.name for p in new.iterdir()} == {"report.md", "result.json", "timeline.png"}
    data = json.loads((new / "result.json").read_text())
    assert data["passed"] is False and data["steps"][1]["ended"] is None
    assert "| rows back | 0 lost | 0 lost | **MISS** |" in (new / "report.md").read_text()
    index = (tmp_path / "backup" / "index.md").read_text().splitlines()
    rows = [ln for ln in index if ln.startswith("| 2026")]
    assert new.name in rows[0] and old.name in rows[1]


def test_a_report_that_would_hold_a_secret_is_not_written(tmp_path):
    settings = _settings(tmp_path)
    leaked = _report(NOW.timestamp())
    leaked = BackupReport(**{**leaked.__dict__, "summary": f"dsn with {settings.secrets['CAREFLOW_APP_PASSWORD']}"})
    with pytest.raises(CheckFailed, match="would contain a secret"):
        write_report(leaked, tmp_path, settings.secrets)
    assert not (tmp_path / "backup").exists() or not list((tmp_path / "backup").glob("*/report.md"))


@pytest.mark.parametrize(("argv", "says"), [
    (["restore", "--force"], "choose exactly one of --to TIMESTAMP, --before-xid N, --latest (none was given)"),
    (["restore", "--latest", "--before-xid", "12", "--force"], "--before-xid and --latest were given"),
    (["restore", "--to", "yesterday", "--force"], "--to 'yesterday' is not a time; use ISO 8601"),
    (["restore", "--to", "2026-02-30 10:00", "--force"], "--to '2026-02-30 10:00' is not a time"),
    (["restore", "--before-xid", "2", "--force"], "--before-xid"),
    (["backup", "run", "--type", "weekly"], "'weekly' is not one of 'full', 'diff', 'incr'"),
    (["drill", "run", "accidental-delete", "--async", "--force"], "--async does not apply to it"),
    (["drill", "run", "replica-rebuild", "--via", "pgbouncer", "--force"], "--via does not apply"),
])
def test_bad_input_is_one_line_and_exit_2_before_the_lab_is_touched(monkeypatch, argv, says):
    import careflow_ha.backup.restore as restore_mod

    monkeypatch.setattr(restore_mod, "restore_cluster", lambda *a, **k: pytest.fail("must not start a restore"))
    monkeypatch.setattr(LabRepository, "backup", lambda *a, **k: pytest.fail("must not take a backup"))
    code, out, err = run_cli(*argv)
    assert code == 2, err
    # One line says what is wrong and how to fix it (click adds its usage lines around a bad flag value).
    assert any(says in line for line in err.splitlines()) and "Traceback" not in err + out


def test_drill_list_names_the_restore_drills_and_which_run_in_ci():
    code, out, _ = run_cli("drill", "list", "--format", "json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0
    assert rows["accidental-delete"]["ci"] == "yes" and rows["replica-rebuild"]["ci"] == "yes"
    assert rows["cluster-loss"]["ci"] == "" and rows["cluster-loss"]["failover"] == "restore"
