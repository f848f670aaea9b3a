"""CSV row validation, table-driven: every kind of bad row is caught with a reason that says why."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest

from careflow_ha.data import importer
from careflow_ha.data.importer import Reference, parse_csv, validate_row
from careflow_ha.errors import EnvironmentProblem, UsageError

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
    visits={501: (7, 2), 502: (8, 3), 503: (7, 3)},  # visit_id -> (pet_id, clinic_id); 503: a data error
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
        ({"pet": "seven"}, "pet_id: 'seven' is not an integer"),
        ({"code": "XYZ"}, "unknown test code 'XYZ'"),
        ({"value": "-4"}, "impossible value -4 for CREA (plausible 0.05 to 30)"),
        ({"value": "450"}, "impossible value 450 for CREA"),
        ({"value": "nan"}, "impossible value 'nan' (not a finite number)"),
        ({"value": "9" * 400}, "value: impossible value '" + "9" * 200 + "' (not a finite number)"),  # quoted cut
        ({"value": "high"}, "value: 'high' is not a number"),
        ({"at": "2026-02-30 09:00"}, "collected_at: '2026-02-30 09:00' is not a valid ISO 8601 date-time"),
        ({"at": ""}, "collected_at: empty"),
        ({"at": (NOW + timedelta(days=3)).isoformat()}, "is in the future"),
        ({"at": "2019-05-01 09:00"}, "outside every partition (oldest month starts 2026-01; extend with"),
        ({"pet": "8", "at": "2026-03-02 09:00"}, "before pet 8 was born"),
        ({"visit": "v12"}, "visit_id: 'v12' is not an integer"),
        ({"visit": "999"}, "visit_id: unknown visit 999"),
        ({"visit": "502"}, "visit_id: visit 502 is pet 8's, not pet 7's"),
        ({"visit": "503"}, "visit_id: visit 503 was at clinic 3; pet 7 belongs to clinic 2"),
        ({"pet": "1_000"}, "pet_id: '1_000' is not an integer"),
        ({"value": "1_0"}, "value: '1_0' is not a number"),  # float() takes it
        ({"value": "infinity"}, "value: 'infinity' is not a number"),
        ({"at": "2026-10-02\n10:15"}, "is not a valid ISO 8601"),  # fromisoformat takes any separator
        ({"at": "2026-10-02x10:15"}, "is not a valid ISO 8601"),
    ],
)
def test_each_bad_field_is_named(fields, expected):
    good, reasons = validate_row(row(**fields), REF)
    assert good is None
    assert any(expected in r for r in reasons), reasons
    assert all(r.startswith(r.column + ": ") and r.column in row() for r in reasons)  # each names its column


def test_a_visit_of_the_same_pet_and_clinic_is_accepted():
    good, reasons = validate_row(row(visit="501"), REF)
    assert reasons == [] and good is not None and good.visit_id == 501


def test_a_row_with_several_faults_reports_all_of_them():
    good, reasons = validate_row(row(pet="999", code="XYZ", value="abc", at="2026-13-01"), REF)
    assert good is None
    assert len(reasons) == 4


def parse(text: str | bytes):
    data = text.encode() if isinstance(text, str) else text
    return parse_csv(data, "x.csv").records


HEADER = "pet_id,test_code,collected_at,value\n"


def test_malformed_lines_are_kept_for_quarantine_not_dropped():
    records = parse(HEADER + "7,CREA,2026-10-02 10:15,1.2\n7,CREA\n\n,,,\n7,\"ALT\",2026-10-02 10:15,40,9\n")
    assert [(r.line_no, r.fields is None) for r in records] == [(2, False), (3, True), (6, True)]
    assert records[1].problems[0] == ("collected_at: missing: the line has 2 of the header's 4 fields "
                                      "(no collected_at, value)")
    assert records[2].problems[0].startswith("value: followed by 1 extra field(s)")


def test_a_quoted_field_with_a_newline_is_one_record_and_keeps_line_numbers():
    records = parse(HEADER + '7,CREA,2026-10-02 10:15,"1.2\nsecond line"\n7,ALT,2026-10-02 10:15,40\n')
    assert [(r.line_no, r.fields["value"] if r.fields else None) for r in records] == [
        (2, "1.2\nsecond line"), (4, "40")]
    assert records[0].raw == '7,CREA,2026-10-02 10:15,"1.2\nsecond line"'


def test_bom_and_crlf_are_read_like_plain_utf8():
    records = parse(b"\xef\xbb\xbfpet_id,test_code,collected_at,value\r\n7,CREA,2026-10-02 10:15,1.2\r\n"
                    b"8,ALT,2026-10-02 10:15,40\r\n")
    assert [r.fields for r in records] == [
        {"pet_id": "7", "test_code": "CREA", "collected_at": "2026-10-02 10:15", "value": "1.2"},
        {"pet_id": "8", "test_code": "ALT", "collected_at": "2026-10-02 10:15", "value": "40"}]
    assert records[0].raw == "7,CREA,2026-10-02 10:15,1.2"


def test_nul_and_undecodable_bytes_are_quarantined_with_their_column_and_line():
    records = parse(HEADER.encode() + b"7,CREA,2026-10-02 10:15,1.2\n7,CR\x00EA,2026-10-02 10:15,1.2\n"
                    b'7,CREA,"2026-10-02\n10:15\xe9",1.2\n')
    assert records[0].problems == ()
    assert records[1].fields is None
    assert records[1].problems == ("test_code: a NUL byte (line 3); remove it and re-import the line",)
    assert records[2].fields is None and records[2].line_no == 4
    assert records[2].problems[0].startswith("collected_at: bytes that are not UTF-8 (b'\\xe9', line 5)")


def test_the_whole_raw_line_is_kept_however_long():
    long_value = "9" * 5000
    records = parse(HEADER + f"7,CREA,2026-10-02 10:15,{long_value}\n")
    assert records[0].raw == f"7,CREA,2026-10-02 10:15,{long_value}"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "x.csv is empty; expected a header line"),
        (b"\xef\xbb\xbf", "x.csv is empty"),
        (b"pet,test,when,value\n", "missing ['pet_id', 'test_code', 'collected_at']"),
        (b"pet_id,test_code,collected_at,value,comment\n", "unknown ['comment']"),
        (b"pet_id,test_code,collected_at,value,value\n1,ALT,2026-10-02,3,4\n", "duplicated ['value']"),
        (b"pet_id,test_code,collected_at,value\n", "x.csv has a header but no rows"),
        (b"pet_id,test_code,collected_at,value\n\n,,,\n", "x.csv has a header but no rows"),
        ("pet_id,test_code,collected_at,value\n".encode("utf-16"), "the header line is not UTF-8 text"),
    ],
)
def test_a_wrong_header_stops_the_import_before_any_row(data, message):
    with pytest.raises(UsageError) as err:
        parse_csv(data, "x.csv")
    assert message in str(err.value)
    if "header" in message and "no rows" not in message and "UTF-8" not in message:
        assert "pet_id,test_code,collected_at,value[,visit_id]" in str(err.value)  # the fix: the expected header


def test_columns_may_come_in_any_order_and_case():
    records = parse("Value, visit_id ,PET_ID,test_code,collected_at\n1.2,,7,CREA,2026-10-02 10:15\n")
    assert records[0].fields == {"value": "1.2", "visit_id": "", "pet_id": "7", "test_code": "CREA",
                                 "collected_at": "2026-10-02 10:15"}


class ReadOnlyConn:
    """A connection that reached a standby (the old primary, mid-failover): every statement is refused."""

    def __enter__(self) -> ReadOnlyConn:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def cursor(self) -> ReadOnlyConn:
        return self

    def execute(self, *_args: object) -> None:
        raise psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction")


def test_a_standby_behind_port_5000_mid_failover_is_an_environment_problem_not_a_traceback(monkeypatch, tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("pet_id,test_code,collected_at,value\n7,CREA,2026-10-02 10:15,1.2\n")
    monkeypatch.setattr(importer, "connect", lambda _dsn: ReadOnlyConn())  # the driver is the boundary
    with pytest.raises(EnvironmentProblem, match="read-only transaction.*nothing was committed. Run the same command"):
        importer.import_csv("host=127.0.0.1", path)
