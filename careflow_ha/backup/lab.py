"""The lab's pgBackRest: the repository on backup1, the stanza, backups, verification, archiving health.

The database nodes and the repository host are reached over the lab's SSH (``remote.SshRunner``); every
pgBackRest command runs as postgres with the configuration the role wrote (/etc/pgbackrest/pgbackrest.conf),
so the CLI, the timers and the drills take the same backups.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from careflow_ha.backup import operations
from careflow_ha.backup.commands import BACKUP_TYPES, Pgbackrest
from careflow_ha.backup.remote import SshRunner, remote_wal_reader
from careflow_ha.backup.repository import Backup, RestorableRange, Stanza
from careflow_ha.backup.target import RestoreTarget
from careflow_ha.backup.verify import VerifyResult
from careflow_ha.errors import CareflowError, CheckFailed, NotReady, UsageError
from careflow_ha.settings import BACKUP_NODES, PG_NODES, Settings

#: The repository host (the inventory's backup_repository group).
REPO_HOST = BACKUP_NODES[0]
#: The stanza: group_vars' careflow_pgbackrest_stanza, which is the Patroni scope (a unit test holds them together).
STANZA = "careflow"
#: Patroni's data directory and PostgreSQL's binaries on every database node (roles/postgresql).
PGDATA = "/var/lib/postgresql/15/main"
PG_BIN = "/usr/lib/postgresql/15/bin"
#: Where ``backup verify`` restores its test copy on a database node, and the port that copy listens on
#: (the node's own socket directory only: nothing outside the node can reach it).
VERIFY_DIR = "/var/lib/postgresql/careflow-verify"
VERIFY_PORT = 5499
Progress = Callable[[str], None]


def _quiet(_line: str) -> None:
    return None


@dataclass(frozen=True)
class BackupRun:
    """One backup this CLI took: pgBackRest's record of it, and the wall time from command to exit."""

    backup: Backup
    seconds: float

    @property
    def mb_per_s(self) -> float:
        """Bytes copied (a diff or incr copies only changed files) per second of the whole command."""
        copied = self.backup.delta if self.backup.delta is not None else self.backup.size
        return copied / 1e6 / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Archiver:
    """WAL archiving on the primary (``pg_stat_archiver``) and what waits in pg_wal to be archived."""

    primary: str
    archived_count: int
    last_archived_wal: str | None
    last_archived_at: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_at: datetime | None
    waiting_segments: int  # .ready files: segments PostgreSQL keeps until archive_command succeeds

    def age_s(self, now: datetime | None = None) -> float | None:
        if self.last_archived_at is None:
            return None
        return ((now or datetime.now(UTC)) - self.last_archived_at).total_seconds()

    @property
    def failing(self) -> bool:
        """The newest attempt failed: a failure after the last success."""
        return self.last_failed_at is not None and (
            self.last_archived_at is None or self.last_failed_at > self.last_archived_at)


#: Segments waiting for archive_command (.ready files) above which status calls archiving stuck. With
#: archive-async a segment is handed over within seconds, so more than a few means pushes are not keeping up.
WAITING_SEGMENTS_MAX = 8

ARCHIVER_SQL = (
    "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, "
    "last_failed_time, (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') "
    "FROM pg_stat_archiver"
)


@dataclass(frozen=True)
class LabRepository:
    """pgBackRest on the lab: commands run on the repository host, WAL is read on a database node."""

    settings: Settings
    repo_host: str = REPO_HOST
    stanza: str = STANZA

    @property
    def pgbr(self) -> Pgbackrest:
        return Pgbackrest(self.stanza)

    @property
    def repo(self) -> SshRunner:
        return SshRunner(self.settings, self.repo_host)

    def node(self, name: str, user: str = "postgres") -> SshRunner:
        return SshRunner(self.settings, name, user)

    def read_stanza(self) -> Stanza:
        return operations.read_stanza(self.repo, self.pgbr)

    def restorable_range(self, reader_node: str | None = None) -> RestorableRange:
        """The range, with the newest archived commit read on ``reader_node`` (default: the first that answers)."""
        return operations.repository_range(self.repo, self.pgbr, self.wal_reader(reader_node))

    def wal_reader(self, reader_node: str | None = None) -> operations.WalReader:
        return remote_wal_reader(self.node(reader_node or self.reachable_node()), self.stanza, PG_BIN)

    def reachable_node(self, nodes: tuple[str, ...] = PG_NODES) -> str:
        """The first database node that answers over SSH (its pgBackRest reaches the repository)."""
        for name in nodes:
            if self.node(name, "root")(["true"], timeout=15, check=False).returncode == 0:
                return name
        raise NotReady(f"no database node answers over SSH ({', '.join(nodes)}); is the lab up? (careflow-ha lab up)")

    def check_target(self, target: RestoreTarget, reader_node: str | None = None) -> RestorableRange:
        return operations.check_target(self.repo, self.pgbr, target, self.wal_reader(reader_node))

    def archive_check(self, timeout: float = 120) -> float:
        """``pgbackrest check`` from the repository host: switch the primary's WAL and wait for it in the
        repository. Returns the seconds it took; fails (exit 1) naming pgBackRest's error."""
        started = time.monotonic()
        self.repo(self.pgbr.check(), timeout=timeout)
        return time.monotonic() - started

    def backup(self, type_: str = "incr", from_standby: bool | None = None, log: Progress = _quiet,
               timeout: float = 3600) -> BackupRun:
        """Take a backup on the repository host, streaming pgBackRest's progress lines to ``log``.

        ``from_standby`` None keeps the configuration's choice (backup-standby=y in the lab); False takes it from
        the primary, which a cluster without a running standby needs (right after a restore).
        """
        if type_ not in BACKUP_TYPES:
            raise UsageError(f"--type {type_!r} is not one of {', '.join(BACKUP_TYPES)}")
        before = {b.label for b in self.read_stanza().backups}
        argv = self.pgbr.backup(type_) + ["--log-level-console=info"]
        if from_standby is False:
            argv.append("--no-backup-standby")
        started = time.monotonic()
        self.repo(argv, timeout=timeout, on_line=lambda line: log(f"pgbackrest: {_short(line)}"))
        seconds = time.monotonic() - started
        new = [b for b in self.read_stanza().backups if b.label not in before]
        if not new:
            raise CheckFailed("pgbackrest backup exited 0 but no new backup is in the repository; "
                              "look at /var/log/pgbackrest on backup1")
        return BackupRun(new[-1], seconds)

    def verify(self) -> VerifyResult:
        return operations.verify(self.repo, self.pgbr)

    def archiver(self) -> Archiver:
        """Archiving as the primary sees it (through the read-write endpoint, as the admin role)."""
        with psycopg.connect(self.settings.dsn("rw", role="admin", dbname="postgres"), connect_timeout=5,
                             autocommit=True) as conn:
            row = conn.execute(ARCHIVER_SQL).fetchone()
            primary = conn.execute("SELECT host(inet_server_addr())").fetchone()
        assert row is not None
        return Archiver(str(primary[0] if primary else "?"), int(row[0]), row[1], row[2], int(row[3]), row[4],
                        row[5], int(row[6]))

    def restore_test(self, node: str, backup: Backup | None = None, log: Progress = _quiet,
                     timeout: float = 1800) -> RestoreTest:
        """Restore ``backup`` (default the newest) into a scratch directory on ``node``, start it on a private
        socket, count what it holds, stop it and delete it: the proof that the backup can be restored.

        The copy runs with archive_mode off (it must never push its own timeline into the repository) and
        without shared_preload_libraries (pg_cron would run the cluster's jobs in it). It listens on no TCP
        address. The directory is removed whatever happens.
        """
        target = RestoreTarget("immediate")
        restore = self.pgbr.restore(target, pg_path=Path(VERIFY_DIR), set_label=backup.label if backup else None)
        options = " ".join([
            f"-p {VERIFY_PORT}", "-c listen_addresses=''", f"-c unix_socket_directories={VERIFY_DIR}",
            "-c archive_mode=off", "-c shared_preload_libraries=''", "-c logging_collector=off",
            "-c hot_standby=on",
            # The restored postgresql.conf is the backed-up node's (Patroni's), naming that node's certificate;
            # the copy takes no TCP connection, so it needs none.
            "-c ssl=off",
        ])
        script = "\n".join([
            "set -e",
            f"rm -rf {VERIFY_DIR}; trap 'rm -rf {VERIFY_DIR}' EXIT; mkdir -m 0700 {VERIFY_DIR}",
            "t0=$(date +%s.%N)",
            shlex.join(restore) + " --log-level-console=warn",
            "t1=$(date +%s.%N)",
            f"{PG_BIN}/pg_ctl -D {VERIFY_DIR} -l {VERIFY_DIR}.log -w -t {int(timeout)} -o {shlex.quote(options)} start"
            " >/dev/null",
            # Recovery to the backup's consistency point ends with a promotion; wait for it (bounded).
            f"for i in $(seq 1 {int(timeout)}); do "
            f"[ \"$({PG_BIN}/psql -XAtq -h {VERIFY_DIR} -p {VERIFY_PORT} -d postgres -c 'SELECT pg_is_in_recovery()')\""
            " = f ] && break; sleep 1; done",
            "t2=$(date +%s.%N)",
            f"{PG_BIN}/psql -XAtq -h {VERIFY_DIR} -p {VERIFY_PORT} -d postgres -c "
            "\"SELECT 'databases=' || count(*) FROM pg_database WHERE datallowconn\"",
            f"{PG_BIN}/psql -XAtq -h {VERIFY_DIR} -p {VERIFY_PORT} -d careflow -c "
            "\"SELECT 'tables=' || count(*) || ' bytes=' || pg_database_size('careflow') FROM pg_class "
            "WHERE relkind IN ('r', 'p')\"",
            f"{PG_BIN}/pg_ctl -D {VERIFY_DIR} -m fast -w stop >/dev/null",
            'awk -v a="$t0" -v b="$t1" -v c="$t2" \'BEGIN { printf "restore_s=%.2f start_s=%.2f\\n", b - a, c - b }\'',
            f"rm -f {VERIFY_DIR}.log",
        ])
        log(f"restore test: restoring {'the newest backup' if backup is None else backup.label} on {node}")
        got = self.node(node)(["bash", "-c", script], timeout=timeout, check=False)
        if got.returncode != 0:
            raise CheckFailed(f"backup verify: the restore test on {node} failed ({got.returncode}): "
                              f"{(got.stderr.strip().splitlines() or ['no output'])[-1]}")
        return RestoreTest.parse(node, got.stdout)


@dataclass(frozen=True)
class RestoreTest:
    """What ``backup verify``'s restore test saw in its copy."""

    node: str
    restore_s: float
    start_s: float
    databases: int
    tables: int
    bytes: int

    @classmethod
    def parse(cls, node: str, output: str) -> RestoreTest:
        fields: dict[str, str] = {}
        for token in output.split():
            key, sep, value = token.partition("=")
            if sep:
                fields[key] = value
        try:
            return cls(node, float(fields["restore_s"]), float(fields["start_s"]), int(fields["databases"]),
                       int(fields["tables"]), int(fields["bytes"]))
        except (KeyError, ValueError):
            raise CheckFailed(f"backup verify: the restore test on {node} printed no result; its output: "
                              f"{output.strip()[-200:]!r}") from None


def _short(line: str) -> str:
    """pgBackRest's console line without its timestamp and process id (``2026-... P00   INFO: ...``)."""
    parts = line.split(None, 3)
    return parts[3] if len(parts) == 4 and parts[2].startswith("P") else line


def archiving_status(lab: LabRepository) -> tuple[dict[str, object], list[str]]:
    """For ``status``: the primary's archiver, WAL waiting in pg_wal, and ``pgbackrest check``; and the problems."""
    problems: list[str] = []
    try:
        a = lab.archiver()
    except psycopg.Error as exc:
        return {"check": "not run"}, [f"WAL archiving unknown: cannot ask the primary ({str(exc).splitlines()[0]})"]
    age = a.age_s()
    row: dict[str, object] = {"last_archived_wal": a.last_archived_wal or "none yet",
                              "age_s": None if age is None else round(age), "failed": a.failed_count,
                              "waiting_segments": a.waiting_segments}
    if a.failing:
        problems.append(f"WAL archiving fails on the primary ({a.last_failed_wal} at {a.last_failed_at:%H:%M:%S} UTC; "
                        f"{a.waiting_segments} segment(s) wait in pg_wal); the primary's PostgreSQL log and "
                        "/var/log/pgbackrest name the cause")
    elif a.waiting_segments > WAITING_SEGMENTS_MAX:
        problems.append(f"{a.waiting_segments} WAL segments wait in pg_wal for archiving (more than "
                        f"{WAITING_SEGMENTS_MAX}); the repository is slow or full")
    try:
        row["check"] = f"ok in {lab.archive_check(timeout=60):.1f}s"
    except CareflowError as exc:
        row["check"] = "FAILED"
        problems.append(f"pgbackrest check failed: {exc}")
    return row, problems
