"""The pgBackRest command lines: one builder for the CLI, the drills, the timer and the tests."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from careflow_ha.backup.commands import LocalRunner, Pgbackrest
from careflow_ha.backup.target import RestoreTarget
from careflow_ha.errors import CommandFailed, EnvironmentProblem, UsageError

PGBR = Pgbackrest("careflow", Path("/etc/pgbackrest/pgbackrest.conf"))
BASE = ["pgbackrest", "--config=/etc/pgbackrest/pgbackrest.conf", "--stanza=careflow"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (PGBR.backup("full"), [*BASE, "backup", "--type=full"]),
        (PGBR.backup("diff", from_standby=True), [*BASE, "backup", "--type=diff", "--backup-standby=y"]),
        (PGBR.backup("incr"), [*BASE, "backup", "--type=incr"]),
        (PGBR.check(), [*BASE, "check"]),
        (PGBR.info(), [*BASE, "info", "--output=json"]),
        (PGBR.verify(), [*BASE, "verify", "--log-level-console=info", "--output=text", "--verbose"]),
        (PGBR.stanza_create(), [*BASE, "stanza-create"]),
        (PGBR.restore(RestoreTarget("time", time=datetime(2026, 11, 30, 15, tzinfo=UTC)), Path("/scratch")),
         [*BASE, "restore", "--pg1-path=/scratch", "--type=time", "--target=2026-11-30 15:00:00.000000+00",
          "--target-action=promote"]),
        (PGBR.restore(RestoreTarget("xid", xid=900), delta=True, set_label="20261201-030616F"),
         [*BASE, "restore", "--delta", "--set=20261201-030616F", "--type=xid", "--target=900", "--target-exclusive",
          "--target-action=promote"]),
        (PGBR.restore(RestoreTarget("latest")), [*BASE, "restore", "--type=default"]),
        (Pgbackrest("s").info(), ["pgbackrest", "--stanza=s", "info", "--output=json"]),  # the default config
    ],
)
def test_command_lines(argv, expected):
    assert argv == expected


def test_a_bad_backup_type_is_one_line():
    with pytest.raises(UsageError, match="backup type 'weekly' is not one of full, diff, incr"):
        PGBR.backup("weekly")


def test_postgresql_commands_quote_the_config_path():
    pgbr = Pgbackrest("careflow", Path("/tmp/my repo/pgbackrest.conf"))
    assert pgbr.archive_command() == (
        "pgbackrest '--config=/tmp/my repo/pgbackrest.conf' --stanza=careflow archive-push %p")
    assert pgbr.restore_command().endswith('--stanza=careflow archive-get %f "%p"')


def test_a_missing_pgbackrest_binary_is_an_environment_problem():
    run = LocalRunner(user="root")
    with pytest.raises(EnvironmentProblem, match="not found; install pgbackrest"):
        run(["/nonexistent/pgbackrest", "info"])


def test_a_failed_command_names_its_last_error_line():
    run = LocalRunner(user="root")
    with pytest.raises(CommandFailed, match=r"pgbackrest info failed \(3\): ERROR: \[056\]: no stanza") as err:
        run(["sh", "-c", "echo 'P00 INFO: begin'; echo 'ERROR: [056]: no stanza' >&2; exit 3", "info"])
    assert "\n" not in str(err.value)


def test_the_runner_environment_stays_out_of_its_repr():
    assert "s3cr3t" not in repr(LocalRunner(env={"PGPASSFILE": "/x", "PGPASSWORD": "s3cr3t"}))


def test_the_cluster_archive_and_restore_commands_use_the_default_config():
    """What Patroni's DCS gets (docs/backup.md, Integration): the role writes the default config file."""
    pgbr = Pgbackrest("careflow")
    assert pgbr.archive_command() == "pgbackrest --stanza=careflow archive-push %p"
    assert pgbr.restore_command() == 'pgbackrest --stanza=careflow archive-get %f "%p"'
