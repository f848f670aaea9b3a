"""The repository read through pgBackRest: its stanza, the restorable range, verification.

Each function takes a runner (``LocalRunner`` for the loopback tests, ``remote.SshRunner`` on backup1) and
the ``Pgbackrest`` command builder, so the same code serves the CLI, the drills and the tests.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from careflow_ha.backup.commands import Pgbackrest, Result
from careflow_ha.backup.repository import RestorableRange, Stanza, last_commit, parse_info, restorable_range
from careflow_ha.backup.target import RestoreTarget
from careflow_ha.backup.verify import VerifyResult, parse_verify

Runner = Callable[..., Result]
PG_BIN = Path(os.environ.get("CAREFLOW_PG_BIN", "/usr/lib/postgresql/15/bin"))
#: How many of the newest archived segments to read for the last commit: the newest is often a bare
#: switch segment (archive_timeout, a backup's stop) with no commit in it.
SEGMENTS_SCANNED = 4


#: Segments per WAL "log" file number with the default 16 MB segment (0x100000000 / 16 MiB).
SEGMENTS_PER_LOG = 0x100


def previous_segments(newest: str, count: int) -> list[str]:
    """``newest`` and the ``count - 1`` segments before it on its timeline, newest first (never below 0)."""
    timeline, log, seg = newest[:8], int(newest[8:16], 16), int(newest[16:24], 16)
    absolute = log * SEGMENTS_PER_LOG + seg
    return [f"{timeline}{a // SEGMENTS_PER_LOG:08X}{a % SEGMENTS_PER_LOG:08X}"
            for a in range(absolute, max(absolute - count, -1), -1)]


def read_stanza(run: Runner, pgbr: Pgbackrest) -> Stanza:
    return parse_info(run(pgbr.info()).stdout, pgbr.stanza)


#: Reads one archived WAL segment: ``pg_waldump --rmgr=Transaction`` output (TZ=UTC), or None when the
#: segment is not in the archive. Local (a tmp directory here) or on a database node (backup/remote.py).
WalReader = Callable[[str], "str | None"]


def local_wal_reader(run: Runner, pgbr: Pgbackrest, scratch: Path, pg_bin: Path = PG_BIN) -> WalReader:
    """Fetch a segment with ``archive-get`` into ``scratch`` (writable by the runner's user) and read it here."""

    def read(segment: str) -> str | None:
        with tempfile.TemporaryDirectory(dir=scratch, prefix="wal-") as tmp:
            os.chmod(tmp, 0o777)  # the runner's user (postgres) writes here; the directory is ours and short-lived
            got = run(pgbr.archive_get(segment, Path(tmp) / segment), check=False)
            if got.returncode != 0:
                return None
            dump = subprocess.run(
                [str(pg_bin / "pg_waldump"), "--rmgr=Transaction", f"--path={tmp}", segment],
                capture_output=True, text=True, timeout=120, env={**os.environ, "TZ": "UTC"}, check=False,
            )
            # pg_waldump exits 1 at the end of the segment's valid records; what it printed is still right.
            return dump.stdout

    return read


def newest_archived_commit(stanza: Stanza, read_wal: WalReader) -> datetime | None:
    """The last commit time in the archived WAL: the newest segments that hold one, read newest first."""
    if stanza.wal_max is None:
        return None
    for segment in previous_segments(stanza.wal_max, SEGMENTS_SCANNED):
        dump = read_wal(segment)
        if dump is None:
            continue  # not in the archive (the timeline switched, or expired): try the one before
        found = last_commit(dump)
        if found is not None:
            return found
    return None


def repository_range(run: Runner, pgbr: Pgbackrest, read_wal: WalReader) -> RestorableRange:
    """The restorable range of the repository right now (see repository.py for its two ends)."""
    stanza = read_stanza(run, pgbr)
    return restorable_range(stanza, newest_archived_commit(stanza, read_wal))


def check_target(run: Runner, pgbr: Pgbackrest, target: RestoreTarget, read_wal: WalReader) -> RestorableRange:
    """Refuse (exit 2, the range printed) a time target outside what the repository can restore."""
    span = repository_range(run, pgbr, read_wal)
    span.check(target)
    return span


def verify(run: Runner, pgbr: Pgbackrest) -> VerifyResult:
    got = run(pgbr.verify(), check=False)
    return parse_verify(got.returncode, got.output)

