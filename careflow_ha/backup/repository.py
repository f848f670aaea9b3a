"""What the repository can give back: its backups (``pgbackrest info --output=json``) and the restorable range.

The range runs from the oldest usable backup's *stop* time to the newest commit in the archived WAL:

- not from the backup's start: a restore is consistent only once it has replayed to the end of the backup
  (its stop point), so no target before that can be reached. And one second after it: pgBackRest records
  the stop time in whole seconds and picks a backup only when that is strictly before the target
  ("unable to find backup set with stop time less than ...");
- up to the last commit in the archived WAL, not to the segment's archive time nor the newest backup's
  end: recovery to a time stops at the first commit after it, and PostgreSQL (13+) fails a recovery
  that runs out of WAL before meeting one ("recovery ended before configured recovery target was
  reached"). When that commit cannot be read, the newest backup's stop time stands in for it.

A refusal names the range, so the user can pick a time inside it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from careflow_ha.backup.target import RestoreTarget, shown
from careflow_ha.errors import CommandFailed, UsageError

#: ``pgbackrest info`` status codes: ok, and "no valid backups" (a stanza that exists but is empty).
STATUS_OK, STATUS_NO_BACKUP = 0, 2
#: pgBackRest's backup times are whole seconds, and a time target needs a backup that stopped strictly before it.
PGBACKREST_TIME_RESOLUTION = timedelta(seconds=1)
#: pg_waldump's description of a commit record, printed with TZ=UTC (compat.c's timestamptz_to_str).
_COMMIT = re.compile(r"desc: COMMIT (\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?) UTC\b")


@dataclass(frozen=True)
class Backup:
    """One backup in the repository, as ``pgbackrest info`` reports it (times aware UTC)."""

    label: str
    type: str  # full | diff | incr
    start: datetime
    stop: datetime
    wal_start: str
    wal_stop: str
    size: int  # bytes of the database it holds
    repo_size: int  # bytes it takes in the repository (compressed)
    error: bool  # pgBackRest found a page checksum error while copying
    prior: str | None
    #: What this backup itself copied and stored (a diff or incr holds only the files changed since its prior).
    delta: int | None = None
    repo_delta: int | None = None

    @property
    def stored(self) -> int:
        """Bytes this backup added to the repository."""
        return self.repo_delta if self.repo_delta is not None else self.repo_size


@dataclass(frozen=True)
class Stanza:
    """One stanza of ``pgbackrest info``: its status, backups (oldest first) and archived WAL span."""

    name: str
    status_code: int
    status_message: str
    backups: tuple[Backup, ...]
    wal_min: str | None
    wal_max: str | None

    @property
    def usable_backups(self) -> tuple[Backup, ...]:
        """Backups a restore can start from: no copy error, and their WAL is within the archive."""
        if self.wal_min is None or self.wal_max is None:
            return ()
        return tuple(
            b for b in self.backups
            if not b.error and _seg_key(self.wal_min) <= _seg_key(b.wal_start) and
            _seg_key(b.wal_stop) <= _seg_key(self.wal_max)
        )


def _seg_key(segment: str) -> tuple[int, int]:
    """Order segments by (log, seg), ignoring the timeline: a promotion keeps the WAL position."""
    return int(segment[8:16], 16), int(segment[16:24], 16)


def _int_or_none(value: object) -> int | None:
    return int(value) if isinstance(value, int) else None


def _epoch(value: object, what: str) -> datetime:
    if not isinstance(value, int):
        raise CommandFailed(f"pgbackrest info: {what} is not a number of seconds; is this pgBackRest 2.x?")
    return datetime.fromtimestamp(value, UTC)


def parse_info(text: str, stanza: str) -> Stanza:
    """``stanza`` from ``pgbackrest info --output=json``. Unreadable output or a missing stanza is one line."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandFailed(f"pgbackrest info printed no JSON ({exc.msg} at {exc.pos}); run it by hand") from None
    entry = next((s for s in data if isinstance(s, dict) and s.get("name") == stanza), None) if isinstance(
        data, list) else None
    if entry is None:
        raise UsageError(f"the repository has no stanza {stanza!r}; create it (pgbackrest stanza-create) first")
    try:
        backups = tuple(
            Backup(
                label=b["label"], type=b["type"],
                start=_epoch(b["timestamp"]["start"], "timestamp.start"),
                stop=_epoch(b["timestamp"]["stop"], "timestamp.stop"),
                wal_start=b["archive"]["start"], wal_stop=b["archive"]["stop"],
                size=int(b["info"]["size"]), repo_size=int(b["info"]["repository"]["size"]),
                error=bool(b.get("error", False)), prior=b.get("prior"),
                delta=_int_or_none(b["info"].get("delta")),
                repo_delta=_int_or_none(b["info"]["repository"].get("delta")),
            )
            for b in entry.get("backup", [])
        )
        # The archive of the current database (the newest db id): an older id belongs to a cluster since replaced.
        archives = sorted(entry.get("archive", []), key=lambda a: a["database"]["id"])
        status = entry["status"]
    except (KeyError, TypeError) as exc:
        raise CommandFailed(f"pgbackrest info: unexpected JSON (no {exc}); is this pgBackRest 2.x?") from None
    wal_min = archives[-1].get("min") if archives else None
    wal_max = archives[-1].get("max") if archives else None
    return Stanza(stanza, int(status["code"]), str(status["message"]),
                  tuple(sorted(backups, key=lambda b: b.stop)), wal_min, wal_max)


def last_commit(waldump_output: str) -> datetime | None:
    """The newest commit time in ``pg_waldump --rmgr=Transaction`` output (run with TZ=UTC), or None."""
    times = [datetime.fromisoformat(m[1]).replace(tzinfo=UTC) for m in _COMMIT.finditer(waldump_output)]
    return max(times, default=None)


@dataclass(frozen=True)
class RestorableRange:
    """The instants a time target may name: ``earliest`` .. ``latest`` (aware UTC, inclusive)."""

    earliest: datetime
    latest: datetime
    oldest_backup: str
    newest_backup: str

    def __str__(self) -> str:
        return f"{shown(self.earliest)} .. {shown(self.latest)}"

    def check(self, target: RestoreTarget) -> None:
        """Refuse a time target outside the range, printing the range (UsageError: exit 2).

        An xid target cannot be placed on the clock without reading the WAL; recovery itself refuses an
        xid it never meets, before the cluster is touched (the restore goes to a fresh directory first).
        """
        if target.kind != "time":
            return
        assert target.time is not None
        if self.latest < self.earliest:
            raise UsageError(
                f"no time can be restored to: nothing was committed after the oldest backup ended "
                f"({shown(self.earliest)}); restore with --latest instead"
            )
        if not self.earliest <= target.time <= self.latest:
            early = target.time < self.earliest
            side = "before the oldest backup's end" if early else "after the newest archived commit"
            raise UsageError(f"--to {shown(target.time)} is {side}; the restorable range is {self} (Asia/Seoul): "
                             "pick a time inside it")


def restorable_range(stanza: Stanza, newest_commit: datetime | None = None) -> RestorableRange:
    """The range a restore from ``stanza`` can reach; ``newest_commit`` is the last commit in archived WAL."""
    usable = stanza.usable_backups
    if not stanza.backups and stanza.status_code not in (STATUS_OK, STATUS_NO_BACKUP):
        raise UsageError(f"stanza {stanza.name!r}: {stanza.status_message}; check the repository path and its "
                         "permissions (pgbackrest info), or create the stanza")
    if not usable:
        why = "has no backup" if not stanza.backups else "has no backup whose WAL is complete in the archive"
        raise UsageError(f"stanza {stanza.name!r} {why}; take a full backup first "
                         f"(pgbackrest --stanza={stanza.name} backup --type=full)")
    oldest, newest = usable[0], usable[-1]
    latest = newest_commit if newest_commit is not None else newest.stop
    return RestorableRange(oldest.stop + PGBACKREST_TIME_RESOLUTION, latest, oldest.label, newest.label)
