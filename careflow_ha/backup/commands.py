"""The pgBackRest command lines, built in one place so the CLI, the drills, the timer and the tests agree.

Only argv lists are built here (no shell), and no secret is ever on a command line: pgBackRest reads
its TLS keys and repository settings from its configuration file (mode 0640, root:postgres), and
PostgreSQL's password from the postgres user's environment or a 0600 passfile.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from careflow_ha.backup.target import RestoreTarget
from careflow_ha.errors import CommandFailed, EnvironmentProblem, NotReady, UsageError

BackupType = Literal["full", "diff", "incr"]
BACKUP_TYPES: tuple[BackupType, ...] = ("full", "diff", "incr")
#: The executable, resolved from PATH unless overridden (Debian's package puts it in /usr/bin).
PGBACKREST = os.environ.get("CAREFLOW_PGBACKREST", "pgbackrest")


@dataclass(frozen=True)
class Pgbackrest:
    """pgBackRest commands for one stanza and configuration file.

    ``config`` None means pgBackRest's default (/etc/pgbackrest/pgbackrest.conf, which the role writes).
    """

    stanza: str
    config: Path | None = None
    executable: str = PGBACKREST
    #: Options every command gets, e.g. ``--log-level-console=info`` (never a secret: argv is visible in ps).
    extra: tuple[str, ...] = ()

    def _base(self, command: str) -> list[str]:
        argv = [self.executable]
        if self.config is not None:
            argv.append(f"--config={self.config}")
        return [*argv, f"--stanza={self.stanza}", *self.extra, command]

    def stanza_create(self) -> list[str]:
        return self._base("stanza-create")

    def check(self) -> list[str]:
        """Proves archiving works end to end: forces a WAL switch and waits for the segment in the repository."""
        return self._base("check")

    def info(self) -> list[str]:
        return self._base("info") + ["--output=json"]

    def verify(self) -> list[str]:
        """INFO level, or the damaged files are not named; the verbose text summary, or a clean repository
        prints no verdict at all (see verify.py)."""
        return self._base("verify") + ["--log-level-console=info", "--output=text", "--verbose"]

    def backup(self, type_: str = "full", from_standby: bool = False) -> list[str]:
        """A backup of ``type_``; ``from_standby`` copies the files from a replica (only the start/stop
        calls touch the primary), which is how the timer spares the primary."""
        if type_ not in BACKUP_TYPES:
            raise UsageError(f"backup type {type_!r} is not one of {', '.join(BACKUP_TYPES)}")
        argv = self._base("backup") + [f"--type={type_}"]
        return argv + ["--backup-standby=y"] if from_standby else argv

    def restore(self, target: RestoreTarget, pg_path: Path | None = None, delta: bool = False,
                set_label: str | None = None) -> list[str]:
        """Restore into ``pg_path`` (default: the configured pg1-path) up to ``target``.

        ``delta`` reuses matching files of an existing data directory (a rebuild); without it the
        directory must be empty, which is the safe default for a restore.
        """
        argv = self._base("restore")
        if pg_path is not None:
            argv.append(f"--pg1-path={pg_path}")
        if delta:
            argv.append("--delta")
        if set_label:
            argv.append(f"--set={set_label}")
        return argv + target.pgbackrest_options()

    def archive_get(self, segment: str, dest: Path) -> list[str]:
        """One segment to ``dest``, synchronously: reading a segment is not a recovery, so no prefetch queue."""
        return self._base("archive-get") + ["--no-archive-async", segment, str(dest)]

    def repo_ls(self, path: str) -> list[str]:
        return self._base("repo-ls") + [path]

    # PostgreSQL's side: what Patroni puts into the DCS (archive_command) and into recovery (restore_command).
    def archive_command(self) -> str:
        """archive_command for postgresql.conf: pushes ``%p`` (async when the config says archive-async=y)."""
        return shlex.join(self._base("archive-push")) + " %p"

    def restore_command(self) -> str:
        return shlex.join(self._base("archive-get")) + ' %f "%p"'


#: pgBackRest's command words this module uses (for messages: "pgbackrest backup failed ...").
_COMMANDS = frozenset({"archive-get", "archive-push", "backup", "check", "info", "repo-ls", "restore",
                       "stanza-create", "verify"})


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass(frozen=True)
class LocalRunner:
    """Runs pgBackRest on this machine as the database's OS user (``runuser`` when we are root).

    pgBackRest refuses to read a data directory it does not own, and as root it would write
    root-owned files into the repository; so it always runs as ``user``.
    """

    user: str = "postgres"
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # may carry PGPASSFILE: never shown

    def __call__(self, argv: Sequence[str], timeout: float = 600, check: bool = True) -> Result:
        cmd = list(argv)
        if os.geteuid() == 0 and self.user != "root":
            # runuser without --login keeps the environment, so PGPASSFILE reaches pgBackRest's libpq
            # through env, never through argv (which ps shows to everyone).
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        env = {**os.environ, **self.env}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env)
        except FileNotFoundError:
            raise EnvironmentProblem(
                f"{argv[0]} not found; install pgbackrest (apt-get install pgbackrest, or ./careflow-ha)"
            ) from None
        except subprocess.TimeoutExpired:
            raise NotReady(f"pgbackrest {command_word(argv)} did not finish within {timeout:.0f}s") from None
        if proc.returncode == 127:
            raise EnvironmentProblem(f"{argv[0]} not found; install pgbackrest (apt-get install pgbackrest)")
        result = Result(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise CommandFailed(f"pgbackrest {command_word(argv)} failed ({proc.returncode}): {last_error(result)}")
        return result


def command_word(argv: Sequence[str]) -> str:
    """The pgBackRest command word (``backup``, ``restore``...) of an argv, for messages."""
    return next((a for a in argv[1:] if a in _COMMANDS), "?")


def last_error(result: Result) -> str:
    lines = [ln.strip() for ln in result.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR:" in ln]
    return (errors or lines or ["no output"])[-1]
