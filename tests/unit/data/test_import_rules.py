"""CSV row validation, table-driven: every kind of bad row is caught with a reason that says why."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from careflow_ha.data.importer import Reference, read_rows, validate_row
from careflow_ha.errors import UsageError

SEOUL = ZoneInfo("Asia/Seoul")
NOW = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
REF = Reference(
    pets={7: (2, "cat", date(2015, 3, 1)), 8: (3, "dog", date(2026, 6, 1))},
    tests={"CREA": (0.05, 30.0), "ALT": (0.0, 10000.0)},
    ranges={("CREA", "cat"): (0.8, 2.4), ("CREA", "dog"): (0.5, 1.8), ("ALT", "cat"): (12, 130),
            ("ALT", "dog"): (10, 125)},
    months=[(datetime(2026, m, 1, tzinfo=SEOUL), datetime(2026, m + 1, 1, tzinfo=SEOUL)) for m in range(1, 12)]
    + [(datetime(2026, 12, 1, tzinfo=SEOUL), datetime(2027, 1, 1, tzinfo=SEOUL))],
    now=NOW,
)


def row(pet="7", code="CREA", at="2026-10-02 10:15", value="3.1", visit=""):
    return {"pet_id": pet, "test_code": code, "collected_at": at, "value": value, "visit_id": visit}


def test_a_good_row_is_loaded_with_its_clinic_and_flag():
    good, reasons = validate_row(row(), REF)
    assert reasons == []
    assert good is not None
    assert (good.clinic_id, good.pet_id, good.test_code, good.value, good.flag) == (2, 7, "CREA", 3.1, "H")
    assert good.collected_at == datetime(2026, 10, 2, 10, 15, tzinfo=SEOUL)  # naive means Seoul time


def test_lower_case_codes_and_explicit_offsets_are_accepted():
    good, reasons = validate_row(row(code="alt", at="2026-10-02T01:15:00Z", value="55"), REF)
    assert reasons == [] and good is not None
    assert (good.test_code, good.flag, good.collected_at) == ("ALT", "N", datetime(2026, 10, 2, 1, 15, tzinfo=UTC))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"pet": "999"}, "unknown pet 999"),
        ({"pet": "seven"}, "pet_id 'seven' is not an integer"),
        ({"code": "XYZ"}, "unknown test code 'XYZ'"),
        ({"value": "-4"}, "impossible value -4 for CREA (plausible 0.05 to 30)"),
        ({"value": "450"}, "impossible value 450 for CREA"),
        ({"value": "nan"}, "impossible value 'nan' (not a finite number)"),
        ({"value": "high"}, "value 'high' is not a number"),
        ({"at": "2026-02-30 09:00"}, "2026-02-30"),
        ({"at": ""}, "collected_at is empty"),
        ({"at": (NOW + timedelta(days=3)).isoformat()}, "is in the future"),
        ({"at": "2019-05-01 09:00"}, "outside every partition (oldest month starts 2026-01; extend with"),
        ({"pet": "8", "at": "2026-03-02 09:00"}, "before pet 8 was born"),
        ({"visit": "v12"}, "visit_id 'v12' is not an integer"),
    ],
)
def test_each_bad_field_is_named(fields, expected):
    good, reasons = validate_row(row(**fields), REF)
    assert good is None
    assert any(expected in r for r in reasons), reasons


def test_a_row_with_several_faults_reports_all_of_them():
    good, reasons = validate_row(row(pet="999", code="XYZ", value="abc", at="2026-13-01"), REF)
    assert good is None
    assert len(reasons) == 4


def test_malformed_lines_are_yielded_for_quarantine_not_dropped():
    lines = ["pet_id,test_code,collected_at,value\n", "7,CREA,2026-10-02 10:15,1.2\n", "7,CREA\n", "\n",
             '7,"ALT",2026-10-02 10:15,40\n']
    out = list(read_rows(lines, "x.csv"))
    assert [(n, f is None) for n, _, f in out] == [(2, False), (3, True), (5, False)]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "x.csv is empty; expected a header line"),
        (["pet,test,when,value\n"], "missing ['pet_id', 'test_code', 'collected_at']"),
        (["pet_id,test_code,collected_at,value,comment\n"], "unknown ['comment']"),
    ],
)
def test_a_wrong_header_stops_the_import_before_any_row(lines, message):
    with pytest.raises(UsageError) as err:
        list(read_rows(lines, "x.csv"))
    assert message in str(err.value)
    assert "pet_id,test_code,collected_at,value[,visit_id]" in str(err.value)  # the fix: the expected header
