"""Where a restore should stop: ``--to TIMESTAMP``, ``--before-xid N`` or ``--latest``, parsed once.

A timestamp is ISO 8601. With an offset (``+09:00``, ``+0900``, ``+09``, ``Z``) it means that instant;
without one it is read on the clinics' clock (Asia/Seoul, careflow_ha.data.clock), because that is the
clock the EMR's users quote ("the DELETE came at 09:14"). The host's own time zone is never used: the
machines run on UTC, and from 15:00 UTC Seoul is already on the next day.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Literal

from careflow_ha.data.clock import KST
from careflow_ha.errors import UsageError

#: What the one-line error shows, so the user can copy a working form.
ACCEPTED_FORMATS = (
    "ISO 8601 with an offset (2026-03-31T23:59:59+09:00, 2026-03-31 14:59:59Z) "
    "or without one, read as Asia/Seoul (2026-03-31 23:59, 2026-03-31T23:59:59.250)"
)

_TIMESTAMP = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[T ](?P<hour>\d{2}):(?P<minute>\d{2})"
    r"(?::(?P<second>\d{2})(?:[.,](?P<fraction>\d{1,6}))?)?"
    r"\s*(?P<offset>Z|[+-]\d{2}(?::?\d{2})?)?",
    re.IGNORECASE,
)
#: Transaction ids 0-2 are reserved (invalid, bootstrap, frozen): no transaction ever has them.
FIRST_NORMAL_XID = 3
#: PostgreSQL accepts a 64-bit, epoch-qualified xid as recovery_target_xid (since 13).
MAX_XID = 2**63 - 1

Kind = Literal["time", "xid", "latest", "immediate"]


def _offset(text: str | None) -> timezone | None:
    if text is None:
        return None
    if text.upper() == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or 0)
    if hours > 23 or minutes > 59:
        raise ValueError("offset out of range")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def parse_timestamp(text: str, option: str = "--to") -> datetime:
    """``text`` as an aware UTC instant; a naive time is Asia/Seoul. Anything else is one UsageError line."""
    found = _TIMESTAMP.fullmatch(text.strip())
    bad = UsageError(f"{option} {text!r} is not a time; use {ACCEPTED_FORMATS}")
    if found is None:
        raise bad
    fraction = (found["fraction"] or "").ljust(6, "0")
    try:
        local = datetime.fromisoformat(found["date"]).replace(
            hour=int(found["hour"]), minute=int(found["minute"]), second=int(found["second"] or 0),
            microsecond=int(fraction or 0), tzinfo=_offset(found["offset"]) or KST,
        )
    except ValueError:  # 2026-02-30, 24:00, +25:00: the shape is right but no such instant exists
        raise bad from None
    return local.astimezone(UTC)


def parse_xid(text: str | int, option: str = "--before-xid") -> int:
    """A transaction id that can exist (3 .. 2^63-1), or one UsageError line."""
    try:
        xid = int(str(text).strip(), 10)
    except ValueError:
        xid = -1
    if not FIRST_NORMAL_XID <= xid <= MAX_XID:
        raise UsageError(
            f"{option} {text!r} is not a transaction id; give a whole number from {FIRST_NORMAL_XID} "
            "(SELECT xmin FROM the row, or txid_current() in the session that did the damage)"
        )
    return xid


def pg_time(at: datetime) -> str:
    """``at`` as recovery_target_time wants it: UTC with an explicit offset, microseconds kept."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def shown(at: datetime) -> str:
    """An instant as users read it: the clinics' clock, with its offset so nobody has to guess."""
    return at.astimezone(KST).isoformat(sep=" ", timespec="seconds")


@dataclass(frozen=True)
class RestoreTarget:
    """Where recovery stops. ``time`` is aware UTC (kind time); ``xid`` the first transaction NOT restored."""

    kind: Kind
    time: datetime | None = None
    xid: int | None = None

    def __post_init__(self) -> None:
        if (self.kind == "time") != (self.time is not None) or (self.kind == "xid") != (self.xid is not None):
            raise ValueError(f"RestoreTarget({self.kind}) needs exactly its own field")
        if self.time is not None and self.time.tzinfo is None:
            raise ValueError("RestoreTarget.time must be aware")

    def pgbackrest_options(self) -> list[str]:
        """The ``pgbackrest restore`` options for this target.

        - time: recovery stops after the last commit at or before the instant (inclusive, PostgreSQL's
          default), then promotes: ``--to`` means "the database as it was at that moment".
        - xid: ``--target-exclusive``, so transaction N itself (the bad DELETE) is not replayed.
        - latest: ``--type=default`` replays every archived WAL segment. Not ``immediate``, which stops
          at the backup's consistency point and would throw away everything archived after it.
        - immediate: the backup itself, no WAL past its end (the restore test of ``backup verify``).
        """
        if self.kind == "time":
            assert self.time is not None
            return ["--type=time", f"--target={pg_time(self.time)}", "--target-action=promote"]
        if self.kind == "xid":
            return ["--type=xid", f"--target={self.xid}", "--target-exclusive", "--target-action=promote"]
        if self.kind == "immediate":
            return ["--type=immediate", "--target-action=promote"]
        return ["--type=default"]

    def describe(self) -> str:
        if self.kind == "time":
            assert self.time is not None
            return f"the database as of {shown(self.time)}"
        if self.kind == "xid":
            return f"the database just before transaction {self.xid}"
        if self.kind == "immediate":
            return "the backup's own consistency point"
        return "the newest archived WAL"


def parse_target(to: str | None = None, before_xid: str | int | None = None, latest: bool = False) -> RestoreTarget:
    """The restore CLI's three mutually exclusive options as one target; none or two is one UsageError line."""
    given = [name for name, value in (("--to", to), ("--before-xid", before_xid)) if value is not None]
    given += ["--latest"] if latest else []
    if len(given) != 1:
        what = "none was given" if not given else f"{' and '.join(given)} were given"
        raise UsageError(f"choose exactly one of --to TIMESTAMP, --before-xid N, --latest ({what})")
    if to is not None:
        return RestoreTarget("time", time=parse_timestamp(to))
    if before_xid is not None:
        return RestoreTarget("xid", xid=parse_xid(before_xid))
    return RestoreTarget("latest")
