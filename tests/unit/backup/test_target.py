"""Restore targets: the accepted timestamp forms, the clinics' clock for naive times, and one-line refusals.

Pinned at the instants where UTC and Asia/Seoul disagree (month end, year end, leap day, the hours from
15:00 UTC when Seoul is already on the next day), then the same rules as properties (Hypothesis).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from careflow_ha.backup.target import ACCEPTED_FORMATS, RestoreTarget, parse_target, parse_timestamp, parse_xid, pg_time
from careflow_ha.data.clock import KST
from careflow_ha.errors import UsageError
from tests.plugins.timeouts import scaled

BOUNDED = settings(max_examples=200, deadline=timedelta(seconds=scaled(2)),
                   suppress_health_check=[HealthCheck.too_slow], database=None)


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        # naive = Seoul: the first Seoul minute of a month is still the previous month in UTC
        ("2026-12-01 00:00", datetime(2026, 11, 30, 15, 0, tzinfo=UTC)),
        ("2027-01-01T00:00:00", datetime(2026, 12, 31, 15, 0, tzinfo=UTC)),  # year end
        ("2026-12-31 23:59:59.999999", datetime(2026, 12, 31, 14, 59, 59, 999999, tzinfo=UTC)),
        ("2028-02-29 08:59", datetime(2028, 2, 28, 23, 59, tzinfo=UTC)),  # leap day, UTC still on the 28th
        ("2028-03-01 00:30", datetime(2028, 2, 29, 15, 30, tzinfo=UTC)),
        ("2026-11-30 09:00", datetime(2026, 11, 30, 0, 0, tzinfo=UTC)),  # same date in both zones
        # explicit offsets mean exactly that instant
        ("2026-11-30T15:00:00Z", datetime(2026, 11, 30, 15, 0, tzinfo=UTC)),
        ("2026-11-30 15:00:00z", datetime(2026, 11, 30, 15, 0, tzinfo=UTC)),
        ("2026-12-01T00:00:00+09:00", datetime(2026, 11, 30, 15, 0, tzinfo=UTC)),
        ("2026-12-01T00:00+0900", datetime(2026, 11, 30, 15, 0, tzinfo=UTC)),
        ("2026-12-01 00:00 +09", datetime(2026, 11, 30, 15, 0, tzinfo=UTC)),
        ("2026-11-30T10:00:00-05:00", datetime(2026, 11, 30, 15, 0, tzinfo=UTC)),
        ("2026-11-30T15:00:00,5+00:00", datetime(2026, 11, 30, 15, 0, 0, 500000, tzinfo=UTC)),
        ("  2026-11-30T15:00:00Z  ", datetime(2026, 11, 30, 15, 0, tzinfo=UTC)),  # shell quoting leftovers
    ],
)
def test_accepted_timestamps(text, utc):
    assert parse_timestamp(text) == utc


@pytest.mark.parametrize(
    "text",
    [
        "", "yesterday", "2026-12-01",  # a date alone is ambiguous (which second of it?)
        "2026-02-30 10:00", "2026-13-01 10:00", "2026-12-01 24:00", "2026-12-01 10:60",
        "2026-12-01 10:00:61", "2026-12-01T10:00+25:00", "2026-12-01T10:00+09:60",
        "1796163976", "12/01/2026 10:00", "2026-12-01 10:00 KST", "2026-12-01 10:00:00.1234567",
        "2026-12-01T10", "2026-12-01 10:00:00+09:00 extra",
    ],
)
def test_malformed_timestamps_are_one_line_naming_the_formats(text):
    with pytest.raises(UsageError) as err:
        parse_timestamp(text)
    message = str(err.value)
    assert "\n" not in message and ACCEPTED_FORMATS in message and repr(text) in message
    assert err.value.exit_code == 2


@pytest.mark.parametrize(
    ("kwargs", "target"),
    [
        ({"to": "2026-12-01 00:00"}, RestoreTarget("time", time=datetime(2026, 11, 30, 15, tzinfo=UTC))),
        ({"before_xid": "735"}, RestoreTarget("xid", xid=735)),
        ({"before_xid": 735}, RestoreTarget("xid", xid=735)),
        ({"latest": True}, RestoreTarget("latest")),
        ({"to": None, "before_xid": None, "latest": True}, RestoreTarget("latest")),
    ],
)
def test_exactly_one_target_option(kwargs, target):
    assert parse_target(**kwargs) == target


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        ({}, "none was given"),
        ({"latest": False}, "none was given"),
        ({"to": "2026-12-01 00:00", "latest": True}, "--to and --latest were given"),
        ({"to": "2026-12-01 00:00", "before_xid": "9"}, "--to and --before-xid were given"),
        ({"to": "", "before_xid": 0, "latest": True}, "--to and --before-xid and --latest were given"),
    ],
)
def test_none_or_several_targets_is_one_line(kwargs, said):
    with pytest.raises(UsageError, match="choose exactly one of --to TIMESTAMP, --before-xid N, --latest") as err:
        parse_target(**kwargs)
    assert said in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["0", "1", "2", "-5", "abc", "3.5", "", str(2**63), "0x10"])
def test_impossible_xids_are_refused(text):
    with pytest.raises(UsageError, match="is not a transaction id; give a whole number from 3"):
        parse_xid(text)


@pytest.mark.parametrize("text", ["3", " 735 ", str(2**63 - 1), "4294967296"])
def test_possible_xids_are_accepted(text):
    assert parse_xid(text) == int(text)


@pytest.mark.parametrize(
    ("target", "options"),
    [
        (RestoreTarget("time", time=datetime(2026, 11, 30, 15, 0, 0, 250, tzinfo=UTC)),
         ["--type=time", "--target=2026-11-30 15:00:00.000250+00", "--target-action=promote"]),
        (RestoreTarget("time", time=datetime(2026, 12, 1, 0, 0, tzinfo=KST)),  # converted, never local
         ["--type=time", "--target=2026-11-30 15:00:00.000000+00", "--target-action=promote"]),
        (RestoreTarget("xid", xid=735),
         ["--type=xid", "--target=735", "--target-exclusive", "--target-action=promote"]),
        (RestoreTarget("latest"), ["--type=default"]),  # replays all archived WAL; target-action is invalid here
        (RestoreTarget("immediate"), ["--type=immediate", "--target-action=promote"]),
    ],
)
def test_pgbackrest_options_per_target(target, options):
    assert target.pgbackrest_options() == options


@pytest.mark.parametrize(
    "kwargs", [{"kind": "time"}, {"kind": "xid"}, {"kind": "latest", "xid": 5},
               {"kind": "time", "time": datetime(2026, 1, 1)}]
)
def test_a_target_holds_exactly_its_own_field(kwargs):
    with pytest.raises(ValueError):
        RestoreTarget(**kwargs)


def test_describe_uses_the_clinics_clock():
    at = datetime(2026, 12, 31, 15, 0, tzinfo=UTC)
    assert RestoreTarget("time", time=at).describe() == "the database as of 2027-01-01 00:00:00+09:00"


# --- the same rules as properties ---------------------------------------------------------------------

instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31, 23, 59, 59))
offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))


@BOUNDED
@given(instants, offsets, st.sampled_from(["T", " "]))
def test_an_instant_with_any_offset_reads_back_exactly(naive, tz, sep):
    aware = naive.replace(tzinfo=tz)
    assert parse_timestamp(aware.isoformat(sep=sep)) == aware.astimezone(UTC)


@BOUNDED
@given(instants, st.sampled_from(["seconds", "milliseconds", "microseconds"]))
def test_a_naive_time_is_seoul_whatever_the_host_zone(naive, spec):
    text = naive.isoformat(sep=" ", timespec=spec)
    parsed = parse_timestamp(text)
    assert parsed == datetime.fromisoformat(text).replace(tzinfo=KST).astimezone(UTC)
    assert parsed.astimezone(KST).replace(tzinfo=None) == datetime.fromisoformat(text)


@BOUNDED
@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(
    lambda d: d.replace(hour=d.hour % 9)))
def test_before_nine_in_seoul_the_utc_date_is_the_day_before(naive):
    """00:00-08:59 Seoul is 15:00-23:59 UTC of the previous day: across month and year ends too."""
    parsed = parse_timestamp(naive.isoformat(sep=" "))
    assert parsed.date() == naive.date() - timedelta(days=1)
    assert 15 <= parsed.hour <= 23
    if naive.day == 1:  # the first Seoul hours of a month are the previous month in UTC
        assert (parsed.year, parsed.month) != (naive.year, naive.month)


@BOUNDED
@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)))
def test_the_recovery_target_string_is_the_same_instant(at):
    assert datetime.strptime(pg_time(at) + "00", "%Y-%m-%d %H:%M:%S.%f%z") == at


@BOUNDED
@given(st.text(max_size=40))
def test_any_text_is_an_instant_or_one_line_never_a_traceback(text):
    try:
        parsed = parse_timestamp(text)
    except UsageError as err:
        assert "\n" not in str(err).replace(repr(text), "")
    else:
        assert parsed.tzinfo is UTC
