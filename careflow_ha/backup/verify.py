"""``pgbackrest verify``, read: which backup or WAL file is damaged or missing.

pgBackRest 2.45 exits 0 even when verify finds damage: the verdict is only in its output ("status: error"
in the summary, and one INFO line per bad file, e.g. ``P01 INFO: invalid checksum
'20261201-222616F/pg_data/base/5/1255.zst'``). So the exit code alone proves nothing; this module reads
both, and run it with ``--log-level-console=info`` (``Pgbackrest.verify`` does) or the file lines are not
printed at all. A clean repository prints its "status: ok" summary only with ``--output=text --verbose``,
so those are on too: no verdict in the output is a failure, never a pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from careflow_ha.errors import CheckFailed

#: verifyErrorMsg() in pgBackRest's command/verify/verify.c: the results that mean a bad file.
_BAD_FILE = re.compile(
    r"\bP\d+\s+INFO: (?P<kind>file missing|invalid checksum|invalid size|invalid result \w+|invalid verify) "
    r"'(?P<path>[^']+)'"
)
_STATUS = re.compile(r"^\s*(?:.*INFO: )?status: (?P<status>\w+)\s*$", re.MULTILINE)
_BACKUP_STATUS = re.compile(r"backup: (?P<label>\S+), status: (?P<status>[\w-]+)")
_ERROR = re.compile(r"^(?:.*\s)?(?P<line>ERROR: \[\d+\]: .*)$", re.MULTILINE)


@dataclass(frozen=True)
class BadFile:
    """One file verify rejected, with its path in the repository (``<backup label>/pg_data/...`` or WAL)."""

    kind: str
    path: str

    @property
    def backup(self) -> str | None:
        """The backup label the file belongs to, or None for a WAL segment (``15-1/...``)."""
        head = self.path.split("/", 1)[0]
        return head if re.fullmatch(r"\d{8}-\d{6}F(?:_\d{8}-\d{6}[DI])?", head) else None


@dataclass(frozen=True)
class VerifyResult:
    """What ``pgbackrest verify`` found. ``ok`` only when it exited 0, said ok and named no bad file."""

    exit_code: int
    status: str | None
    bad_files: tuple[BadFile, ...]
    invalid_backups: tuple[str, ...]
    error: str | None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.status == "ok" and not self.bad_files and not self.invalid_backups

    def summary(self) -> str:
        """One line: what is wrong, which files, what to do."""
        if self.ok:
            return "pgbackrest verify: every backup and WAL file checks out"
        if self.error and not self.bad_files:
            return f"pgbackrest verify failed ({self.error}); fix the repository or its configuration"
        if not self.bad_files:
            found = f"backups {', '.join(self.invalid_backups)} invalid" if self.invalid_backups else (
                f"status {self.status or 'missing'} (exit {self.exit_code})")
            return f"pgbackrest verify: {found}; run it with --log-level-console=info to see the files"
        shown = "; ".join(f"{f.kind} {f.path}" for f in self.bad_files[:5])
        more = f" and {len(self.bad_files) - 5} more" if len(self.bad_files) > 5 else ""
        return (f"pgbackrest verify: {len(self.bad_files)} damaged or missing file(s): {shown}{more}; "
                "do not restore from that backup: take a new full backup (pgbackrest backup --type=full)")

    def require_ok(self) -> None:
        """Raise CheckFailed (exit 5) naming the bad files, so a restore stops before touching anything."""
        if not self.ok:
            raise CheckFailed(self.summary())


def parse_verify(exit_code: int, output: str) -> VerifyResult:
    """``pgbackrest verify --log-level-console=info`` (stdout and stderr together) and its exit code."""
    bad = tuple(dict.fromkeys(BadFile(m["kind"], m["path"]) for m in _BAD_FILE.finditer(output)))
    statuses = [m["status"] for m in _STATUS.finditer(output)]
    invalid = tuple(dict.fromkeys(m["label"] for m in _BACKUP_STATUS.finditer(output) if m["status"] != "valid"))
    error = next((m["line"].strip() for m in _ERROR.finditer(output)), None)
    status = "error" if "error" in statuses else (statuses[-1] if statuses else None)
    return VerifyResult(exit_code, status, bad, invalid, error)
