"""One exception hierarchy for every error a user can cause or fix.

The CLI turns any ``CareflowError`` into a one-line message on stderr and the
subclass's ``exit_code``; anything else is a bug and keeps its traceback.

Exit codes (documented in the README):
  1  unexpected failure (a bug: please report it)
  2  bad input: flags, inventory, CSV, dates
  3  environment: missing root, engine, disk space, port in use
  4  the lab or cluster did not reach the expected state in time
  5  a check failed: data verification, drill assertion, archive mismatch
"""

from __future__ import annotations


class CareflowError(Exception):
    """Base class: a message that names the fix, and an exit code."""

    exit_code = 1


class UsageError(CareflowError):
    """The user asked for something malformed (flag, inventory, CSV, date)."""

    exit_code = 2


class EnvironmentProblem(CareflowError):
    """The machine lacks something: root, a container engine, disk, a free port."""

    exit_code = 3


class PortInUse(EnvironmentProblem):
    """A port the lab wants to publish on 127.0.0.1 is already taken."""


class NotReady(CareflowError):
    """A deadline passed before the lab or cluster reached the wanted state."""

    exit_code = 4


class CheckFailed(CareflowError):
    """A verification found a real problem (checksums, lost writes, two primaries)."""

    exit_code = 5


class CommandFailed(CareflowError):
    """An external command (engine, ansible, pyinfra) exited non-zero."""

    exit_code = 1


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (libpq's come with DETAIL and HINT lines), or its type's name."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
