"""The clinics' clock: which day and which month an instant is in.

Months are Asia/Seoul months everywhere (the database's time zone, partition boundaries, the
generator's window, the CLI's YYYY-MM arguments), while the machines run on UTC. From 15:00 UTC Seoul
is already on the next day, and on a month's last day in the next month, so nothing that means
"today" or "this month" may read the host's local date. Everything here takes the instant it is
about, so that tests can pin the awkward ones.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

#: Asia/Seoul has had no daylight saving time since 1988: a fixed offset is exact for the EMR's dates
#: and needs no tz database on the control host.
KST = timezone(timedelta(hours=9), "KST")
#: The name the database is configured with (ALTER DATABASE ... SET timezone).
CLINIC_TIMEZONE = "Asia/Seoul"


def now() -> datetime:
    """The current instant, aware (UTC), to the second."""
    return datetime.now(UTC).replace(microsecond=0)


def clinic_date(at: datetime | None = None) -> date:
    """The Seoul calendar date of ``at`` (default: now)."""
    return (at or now()).astimezone(KST).date()


def clinic_day_bounds(at: datetime | None = None) -> tuple[datetime, datetime]:
    """[first instant, first instant of the next day) of the Seoul day that holds ``at`` (default: now).

    What "today" means for a query, as literal bounds: unlike ``date_trunc('day', now())`` they are
    constants when the query is planned, so the planner prunes to the one month that holds today.
    """
    day = clinic_date(at)
    start = datetime(day.year, day.month, day.day, tzinfo=KST)
    return start, start + timedelta(days=1)


def seoul_month_start(at: datetime, offset: int = 0) -> datetime:
    """First instant (Seoul) of the month ``offset`` months from the Seoul month that holds ``at``."""
    local = at.astimezone(KST)
    year, month0 = divmod(local.year * 12 + local.month - 1 + offset, 12)
    return datetime(year, month0 + 1, 1, tzinfo=KST)


def is_future_month(first_day: date, at: datetime | None = None) -> bool:
    """Whether the month of ``first_day`` lies after the Seoul month of ``at`` (default: now)."""
    today = clinic_date(at)
    return (first_day.year, first_day.month) > (today.year, today.month)
