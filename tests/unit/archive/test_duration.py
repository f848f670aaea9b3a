"""Argument parsing for the archive CLI: table-driven, including the no-op and boundary cases."""

from __future__ import annotations

from datetime import date

import pytest

from careflow_ha.archive.duration import month_key, parse_month, parse_older_than
from careflow_ha.errors import UsageError


@pytest.mark.parametrize(("text", "months"), [
    ("24months", 24), ("24 months", 24), ("1month", 1), ("2y", 24), ("3 years", 36), ("18mo", 18), ("6M", 6),
    ("1200months", 1200),
])
def test_durations_in_months(text: str, months: int) -> None:
    assert parse_older_than(text) == months


@pytest.mark.parametrize(("text", "fix"), [
    ("", "e.g. 24months"), ("24", "e.g. 24months"), ("24days", "e.g. 24months"), ("-3months", "e.g. 24months"),
    ("0months", "use 1 to 1200 months"), ("101years", "use 1 to 1200 months"), ("2.5y", "e.g. 24months"),
])
def test_impossible_durations_name_the_fix(text: str, fix: str) -> None:
    with pytest.raises(UsageError, match=fix) as err:
        parse_older_than(text)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("text", "first"), [("2024-07", date(2024, 7, 1)), (" 2020-01 ", date(2020, 1, 1))])
def test_months(text: str, first: date) -> None:
    assert parse_month(text) == first
    assert month_key(first) == text.strip()


@pytest.mark.parametrize("text", ["2024-13", "2024-7-01", "July 2024", "", "2999-01"])
def test_impossible_months(text: str) -> None:
    with pytest.raises(UsageError, match="YYYY-MM|future"):
        parse_month(text)
