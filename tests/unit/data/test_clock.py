"""The clinics' clock at the instants where UTC and Asia/Seoul disagree: month ends, the year end, leap day."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from careflow_ha.archive.duration import parse_month as parse_archive_month
from careflow_ha.data import clock
from careflow_ha.data.partitions import parse_month as parse_from_month
from careflow_ha.errors import UsageError

#: (UTC instant, its Seoul date): the last Seoul second of a month, the first, the year end, leap day, and an
#: hour where the UTC date is still the old day.
AWKWARD = [
    (datetime(2026, 11, 30, 14, 59, 59, tzinfo=UTC), date(2026, 11, 30)),
    (datetime(2026, 11, 30, 15, 0, 0, tzinfo=UTC), date(2026, 12, 1)),
    (datetime(2026, 12, 31, 14, 59, 59, tzinfo=UTC), date(2026, 12, 31)),
    (datetime(2026, 12, 31, 15, 0, 0, tzinfo=UTC), date(2027, 1, 1)),
    (datetime(2028, 2, 28, 15, 30, tzinfo=UTC), date(2028, 2, 29)),
    (datetime(2028, 2, 29, 15, 0, tzinfo=UTC), date(2028, 3, 1)),
    (datetime(2026, 12, 1, 23, 0, tzinfo=UTC), date(2026, 12, 2)),
]


@pytest.mark.parametrize(("at", "seoul_day"), AWKWARD)
def test_the_seoul_date_of_an_instant(at, seoul_day):
    assert clock.clinic_date(at) == seoul_day


@pytest.mark.parametrize(("at", "seoul_day"), AWKWARD)
def test_month_starts_count_from_the_seoul_month(at, seoul_day):
    this = clock.seoul_month_start(at)
    assert this.date() == seoul_day.replace(day=1)
    assert this.utcoffset().total_seconds() == 9 * 3600
    assert clock.seoul_month_start(at, -12).date() == date(seoul_day.year - 1, seoul_day.month, 1)
    assert clock.seoul_month_start(at, 1) > at >= this  # the instant lies inside its own month
    assert clock.seoul_month_start(at, 0) == this  # no-op offset


@pytest.mark.parametrize(("at", "offset", "first"), [
    (datetime(2026, 12, 31, 15, 0, tzinfo=UTC), -1, date(2026, 12, 1)),  # Seoul's January 2027, one back
    (datetime(2026, 12, 31, 14, 0, tzinfo=UTC), 1, date(2027, 1, 1)),
    (datetime(2026, 1, 15, tzinfo=UTC), -13, date(2024, 12, 1)),
    (datetime(2026, 1, 15, tzinfo=UTC), 24, date(2028, 1, 1)),
])
def test_month_offsets_cross_year_ends(at, offset, first):
    assert clock.seoul_month_start(at, offset).date() == first


@pytest.mark.parametrize("parse", [parse_from_month, lambda text, at: parse_archive_month(text, at=at)])
@pytest.mark.parametrize(("text", "at", "accepted"), [
    # At 15:00 UTC on 30 November it is already December in Seoul: December is this month, not the future.
    ("2026-12", datetime(2026, 11, 30, 15, 0, tzinfo=UTC), True),
    ("2026-12", datetime(2026, 11, 30, 14, 59, tzinfo=UTC), False),
    ("2027-01", datetime(2026, 12, 31, 15, 0, tzinfo=UTC), True),
    ("2027-01", datetime(2026, 12, 31, 14, 59, tzinfo=UTC), False),
    ("2026-11", datetime(2026, 11, 30, 14, 59, tzinfo=UTC), True),
])
def test_a_month_is_in_the_future_only_after_the_seoul_month(parse, text, at, accepted):
    if accepted:
        assert parse(text, at) == date(int(text[:4]), int(text[5:]), 1)
    else:
        with pytest.raises(UsageError, match="in the future"):
            parse(text, at)


@pytest.mark.parametrize(("at", "seoul_day"), AWKWARD)
def test_today_bounds_are_the_seoul_day_that_holds_the_instant(at, seoul_day):
    start, end = clock.clinic_day_bounds(at)
    assert start.date() == seoul_day and (start.hour, start.minute, start.second) == (0, 0, 0)
    assert start.utcoffset().total_seconds() == 9 * 3600
    assert start <= at < end  # the instant is inside "today", whatever the UTC date says
    assert (end - start).total_seconds() == 24 * 3600  # no DST in Seoul: every day is 24 hours
    assert end.date() == date.fromordinal(seoul_day.toordinal() + 1)  # month and year ends roll over
