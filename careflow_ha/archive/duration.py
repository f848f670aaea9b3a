"""Parse the archive CLI's time arguments; bad input fails early with a message that names the fix."""

from __future__ import annotations

import re
from datetime import date, datetime

from careflow_ha.data import clock
from careflow_ha.errors import UsageError

_DURATION = re.compile(r"^\s*(\d+)\s*(months?|mo|m|years?|y)\s*$", re.IGNORECASE)
#: Below this the hot window would lose months that the app reads every day; above it nothing is ever archived.
MIN_MONTHS, MAX_MONTHS = 1, 1200


def parse_older_than(text: str) -> int:
    """'24months', '24 months', '2y' -> a number of whole months (retention)."""
    match = _DURATION.match(text or "")
    if not match:
        raise UsageError(f"--older-than {text!r} is not a duration; use a whole number of months or years, "
                         "e.g. 24months or 2years")
    count = int(match.group(1))
    months = count * 12 if match.group(2).lower().startswith("y") else count
    if not MIN_MONTHS <= months <= MAX_MONTHS:
        raise UsageError(f"--older-than {text!r} is {months} months; use {MIN_MONTHS} to {MAX_MONTHS} months "
                         "(e.g. 24months)")
    return months


def parse_month(text: str, *, what: str = "month", at: datetime | None = None) -> date:
    """'YYYY-MM' -> first day of that month; a real calendar month, not after the Seoul month of ``at`` (now)."""
    try:
        parsed = datetime.strptime((text or "").strip(), "%Y-%m").date()
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a month; use YYYY-MM, e.g. 2024-07") from None
    if clock.is_future_month(parsed, at):
        raise UsageError(f"{what} {text} is in the future; only past months can be archived or restored")
    return parsed


def month_key(first_day: date) -> str:
    """The 'YYYY-MM' key used for manifests, archive paths and partition names."""
    return f"{first_day.year:04d}-{first_day.month:02d}"
