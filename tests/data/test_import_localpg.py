"""``careflow-ha data import``: bad rows are quarantined with their reasons, good rows load, a summary prints."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.cli import run_cli

pytestmark = pytest.mark.localpg
SEOUL = ZoneInfo("Asia/Seoul")


@pytest.fixture
def csv_file(emr, tmp_path):
    """A file mixing good rows and one of each kind of bad row; returns (path, expectations)."""
    with psycopg.connect(emr.app_dsn) as conn:
        cat = conn.execute("SELECT pet_id FROM pets WHERE species = 'cat' AND birth_date < now() - interval '2 years' "
                           "ORDER BY pet_id LIMIT 1").fetchone()[0]
        oldest = conn.execute("SELECT min(collected_at) FROM lab_results").fetchone()[0]
    when = (datetime.now(SEOUL) - timedelta(days=3)).strftime("%Y-%m-%d %H:%M")
    future = (datetime.now(SEOUL) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S+09:00")
    lines = [
        "pet_id,test_code,collected_at,value",
        f"{cat},CREA,{when},4.8",                 # 2: good, high for a cat
        f"{cat},crea,{when}:01,1.1",              # 3: good, lower-case code, normal (not a repeat of 2)
        f"{cat},ALT,{when}:00+09:00,55",           # 4: good
        f"999999,CREA,{when},1.0",                # 5: unknown pet
        f"{cat},K9X,{when},1.0",                  # 6: unknown test code
        f"{cat},CREA,{when},-3",                  # 7: impossible value
        f"{cat},CREA,2026-02-30 09:00,1.0",       # 8: impossible date
        f"{cat},CREA,{future},1.0",               # 9: in the future
        f"{cat},CREA,{oldest - timedelta(days=400):%Y-%m-%d %H:%M},1.0",  # 10: before every partition
        f"{cat},CREA",                            # 11: too few fields
    ]
    path = tmp_path / "lab_export.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, cat


def test_bad_rows_are_quarantined_with_reasons_and_good_rows_load(emr, csv_file):
    path, cat = csv_file
    with psycopg.connect(emr.app_dsn) as conn:
        before = conn.execute("SELECT count(*) FROM lab_results WHERE pet_id = %s", (cat,)).fetchone()[0]

    result = run_cli("data", "import", str(path), "--dsn", emr.app_dsn, "--format", "json")

    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert (summary["rows"], summary["loaded"], summary["quarantined"]) == (10, 3, 7)
    assert summary["reasons"] == {"unknown pet_id": 1, "unknown test_code": 1, "impossible value": 1,
                                  "collected_at invalid": 1, "collected_at in the future": 1,
                                  "collected_at outside every partition": 1, "missing fields": 1}
    secret = conninfo_to_dict(emr.app_dsn)["password"]
    assert secret not in result.err + result.out and "password=***" in result.err  # target shown, redacted
    with psycopg.connect(emr.app_dsn) as conn:
        after = conn.execute("SELECT count(*) FROM lab_results WHERE pet_id = %s", (cat,)).fetchone()[0]
        flags = sorted(r[0] for r in conn.execute(
            "SELECT test_code || ':' || flag::text FROM lab_results WHERE pet_id = %s AND visit_id IS NULL", (cat,)))
        quarantined = dict(conn.execute(
            "SELECT line_no, array_to_string(reasons, ' | ') FROM lab_results_quarantine WHERE batch_id = %s",
            (summary["batch_id"],)).fetchall())
        batch = conn.execute("SELECT rows_total, rows_loaded, rows_quarantined, sha256 FROM lab_import_batches "
                             "WHERE batch_id = %s", (summary["batch_id"],)).fetchone()
    assert after - before == 3
    assert flags == ["ALT:N", "CREA:H", "CREA:N"]
    assert sorted(quarantined) == [5, 6, 7, 8, 9, 10, 11]
    assert "unknown pet 999999" in quarantined[5]
    assert "unknown test code 'K9X'" in quarantined[6]
    assert "impossible value -3 for CREA" in quarantined[7]
    assert "2026-02-30" in quarantined[8]
    assert "in the future" in quarantined[9]
    assert "outside every partition" in quarantined[10] and "partitions maintain --from" in quarantined[10]
    assert batch == (10, 3, 7, summary["sha256"])


def test_a_file_with_a_wrong_header_is_refused_whole(emr, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("pet,test,value\n1,ALT,3\n")
    with psycopg.connect(emr.app_dsn) as conn:
        batches = conn.execute("SELECT count(*) FROM lab_import_batches").fetchone()[0]
    result = run_cli("data", "import", str(path), "--dsn", emr.app_dsn)
    assert result.code == 2
    assert "header" in result.err and "use pet_id,test_code,collected_at,value[,visit_id]" in result.err
    assert "Traceback" not in result.err
    with psycopg.connect(emr.app_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM lab_import_batches").fetchone()[0] == batches


def test_a_missing_file_is_a_usage_error(emr, tmp_path):
    result = run_cli("data", "import", str(tmp_path / "nope.csv"), "--dsn", emr.app_dsn)
    assert result.code == 2 and "does not exist" in result.err


# -- issue 11: careless input, and re-import safety ----------------------------------------------------------
_SEQ = iter(range(1, 10**6))
_BASE_S = random.randrange(0, 86_400 * 20)  # this session's rows do not collide with an earlier session's keys


def fresh_when() -> str:
    """A collected_at (Seoul) 3 to 23 days ago that no other row of this session uses."""
    at = datetime.now(SEOUL).replace(microsecond=0) - timedelta(days=23) + timedelta(seconds=_BASE_S + next(_SEQ))
    return at.strftime("%Y-%m-%d %H:%M:%S")


@pytest.fixture(scope="module")
def pets(emr) -> list[tuple[int, int, int]]:
    """(pet_id, clinic_id, a visit of that pet) for pets born more than two years ago."""
    with psycopg.connect(emr.app_dsn) as conn:
        return conn.execute(
            "SELECT DISTINCT ON (p.pet_id) p.pet_id, p.clinic_id, v.visit_id FROM pets p "
            "JOIN visits v ON v.pet_id = p.pet_id AND v.clinic_id = p.clinic_id "
            "WHERE p.birth_date < now() - interval '2 years' ORDER BY p.pet_id, v.visit_id LIMIT 50").fetchall()


def count_results(dsn: str, pet_id: int, when: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM lab_results WHERE pet_id = %s AND collected_at = %s::timestamp "
                            "AT TIME ZONE 'Asia/Seoul'", (pet_id, when)).fetchone()[0]


def quarantine_of(dsn: str, batch_id: int) -> dict[int, tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        return {n: (raw, " | ".join(r)) for n, raw, r in conn.execute(
            "SELECT line_no, raw, reasons FROM lab_results_quarantine WHERE batch_id = %s", (batch_id,))}


def import_json(emr, path, *extra):
    result = run_cli("data", "import", str(path), "--dsn", emr.app_dsn, "--format", "json", *extra)
    assert "Traceback" not in result.err
    return result, (json.loads(result.out) if result.code == 0 else None)


def test_a_nul_byte_is_quarantined_with_its_line_not_a_traceback(emr, pets, tmp_path):
    pet, when = pets[0][0], fresh_when()
    path = tmp_path / "nul.csv"
    path.write_bytes(f"pet_id,test_code,collected_at,value\n{pet},ALT,{when},40\n{pet},ALT,{fresh_when()},4\x002\n"
                     .encode())
    result, summary = import_json(emr, path)
    assert result.code == 0, result.err
    assert (summary["loaded"], summary["quarantined"]) == (1, 1)
    raw, reasons = quarantine_of(emr.app_dsn, summary["batch_id"])[3]
    assert reasons == "value: a NUL byte (line 3); remove it and re-import the line"
    assert raw.endswith(",4\\x002")


def test_undecodable_bytes_are_quarantined_and_the_rest_loads(emr, pets, tmp_path):
    pet = pets[1][0]
    path = tmp_path / "latin1.csv"
    path.write_bytes(f"pet_id,test_code,collected_at,value\n{pet},ALT,{fresh_when()},40\n".encode()
                     + f"{pet},ALT,{fresh_when()},41 caf\xe9\n".encode("latin-1"))
    result, summary = import_json(emr, path)
    assert result.code == 0, result.err
    assert (summary["loaded"], summary["quarantined"]) == (1, 1)
    raw, reasons = quarantine_of(emr.app_dsn, summary["batch_id"])[3]
    assert reasons.startswith("value: bytes that are not UTF-8 (b'\\xe9', line 3)")
    assert raw.endswith("41 caf\\xe9")


def test_the_same_file_twice_is_refused_naming_the_batch_and_force_never_doubles(emr, pets, tmp_path):
    rows = [(p, fresh_when()) for p, _, _ in pets[2:7]]
    path = tmp_path / "twice.csv"
    path.write_text("pet_id,test_code,collected_at,value\n" + "".join(f"{p},CREA,{w},1.3\n" for p, w in rows))
    first, summary = import_json(emr, path)
    assert first.code == 0 and summary["loaded"] == 5

    again = run_cli("data", "import", str(path), "--dsn", emr.app_dsn)
    assert again.code == 2
    assert f"as batch {summary['batch_id']}, imported " in again.err and "(5 rows: 5 loaded" in again.err
    assert "add --force" in again.err.lower() and "Traceback" not in again.err
    assert all(count_results(emr.app_dsn, p, w) == 1 for p, w in rows)

    forced, fsum = import_json(emr, path, "--force")
    assert forced.code == 0, forced.err
    assert (fsum["loaded"], fsum["duplicates"], fsum["duplicates_of_batches"]) == (
        0, 5, {str(summary["batch_id"]): 5})
    assert all(count_results(emr.app_dsn, p, w) == 1 for p, w in rows)


def test_an_overlapping_file_loads_only_the_new_results(emr, pets, tmp_path):
    old = [(p, fresh_when()) for p, _, _ in pets[7:10]]
    new = [(p, fresh_when()) for p, _, _ in pets[10:12]]
    first, second = tmp_path / "week1.csv", tmp_path / "week1-and-2.csv"
    first.write_text("pet_id,test_code,collected_at,value\n" + "".join(f"{p},ALT,{w},50\n" for p, w in old))
    second.write_text("value,collected_at,test_code,pet_id\n" + "".join(f"50,{w},ALT,{p}\n" for p, w in old + new))
    assert import_json(emr, first)[0].code == 0
    result, summary = import_json(emr, second)
    assert result.code == 0, result.err
    assert (summary["rows"], summary["loaded"], summary["duplicates"], summary["quarantined"]) == (5, 2, 3, 0)
    assert all(count_results(emr.app_dsn, p, w) == 1 for p, w in old + new)


def test_a_result_repeated_inside_a_file_loads_once_and_the_repeat_is_quarantined(emr, pets, tmp_path):
    pet, when = pets[12][0], fresh_when()
    path = tmp_path / "repeat.csv"
    path.write_text(f"pet_id,test_code,collected_at,value\n{pet},ALT,{when},50\n{pet},alt,{when},51\n")
    result, summary = import_json(emr, path)
    assert result.code == 0, result.err
    assert (summary["loaded"], summary["quarantined"]) == (1, 1)
    assert quarantine_of(emr.app_dsn, summary["batch_id"])[3][1] == (
        "collected_at: same pet_id, test_code and collected_at as line 2; keep one of the two")
    assert count_results(emr.app_dsn, pet, when) == 1


def test_visit_ids_are_checked_against_visits_pet_and_clinic(emr, pets, tmp_path):
    (pet, _, visit), (other_pet, _, other_visit) = pets[13], pets[14]
    with psycopg.connect(emr.app_dsn) as conn:
        missing = conn.execute("SELECT max(visit_id) + 1000 FROM visits").fetchone()[0]
    path = tmp_path / "visits.csv"
    path.write_text("pet_id,test_code,collected_at,value,visit_id\n"
                    f"{pet},ALT,{fresh_when()},50,{visit}\n"         # 2: the pet's own visit
                    f"{pet},ALT,{fresh_when()},50,{missing}\n"       # 3: no such visit
                    f"{pet},ALT,{fresh_when()},50,{other_visit}\n")  # 4: another pet's visit
    result, summary = import_json(emr, path)
    assert result.code == 0, result.err
    assert (summary["loaded"], summary["quarantined"]) == (1, 2)
    bad = quarantine_of(emr.app_dsn, summary["batch_id"])
    assert bad[3][1] == f"visit_id: unknown visit {missing}"
    assert bad[4][1] == f"visit_id: visit {other_visit} is pet {other_pet}'s, not pet {pet}'s"


def test_quoted_newlines_bom_crlf_and_a_long_raw_line(emr, pets, tmp_path):
    pet = pets[15][0]
    long_bad = "x" * 5000
    path = tmp_path / "excel.csv"
    path.write_bytes(("\ufeffpet_id,test_code,collected_at,value,visit_id\r\n"
                      f'{pet},"ALT",{fresh_when()},"50",\r\n'
                      f'{pet},ALT,"{fresh_when()}\r\nsecond line",51,\r\n'
                      f"{pet},ALT,{fresh_when()},{long_bad},\r\n").encode())
    result, summary = import_json(emr, path)
    assert result.code == 0, result.err
    assert (summary["rows"], summary["loaded"], summary["quarantined"]) == (3, 1, 2)
    bad = quarantine_of(emr.app_dsn, summary["batch_id"])
    assert sorted(bad) == [3, 5]  # the quoted newline spans lines 3-4
    assert bad[3][0].endswith('second line",51,') and "\r\n" in bad[3][0]
    assert bad[5][0] == f"{pet},ALT,{path.read_text(encoding='utf-8-sig').splitlines()[4].split(',')[2]},{long_bad},"
    assert len(bad[5][0]) > 5000


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty.csv is empty; expected a header line"),
        (b"pet_id,test_code,value\n1,ALT,3\n", "missing ['collected_at']"),
        (b"pet_id,test_code,collected_at,value,value\n", "duplicated ['value']"),
    ],
)
def test_file_problems_are_named_before_connecting_even_to_a_stopped_database(tmp_path, content, message):
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    result = run_cli("data", "import", str(path), "--dsn", "host=127.0.0.1 port=1 user=x connect_timeout=2")
    assert result.code == 2, result.err
    assert message in result.err and "cannot connect" not in result.err


def test_truncating_lab_results_forgets_the_import_keys_too(emr):
    """`data load --replace` truncates lab_results; a stale key would skip a real re-import as "present"."""
    with psycopg.connect(emr.app_dsn) as conn:
        batch = conn.execute("INSERT INTO lab_import_batches (file_name, rows_total, rows_loaded, rows_quarantined) "
                             "VALUES ('k.csv', 0, 0, 0) RETURNING batch_id").fetchone()[0]
        conn.execute("INSERT INTO lab_import_keys VALUES (1, 'ALT', now(), %s, 2)", (batch,))
        conn.execute("TRUNCATE lab_results, lab_results_daily")
        assert conn.execute("SELECT count(*) FROM lab_import_keys").fetchone()[0] == 0
        conn.rollback()  # leave the shared data set as it was


def test_force_on_a_first_import_is_an_ordinary_batch_that_later_imports_respect(emr, pets, tmp_path):
    path = tmp_path / "first-forced.csv"
    path.write_text(f"pet_id,test_code,collected_at,value\n{pets[16][0]},ALT,{fresh_when()},50\n")
    result, summary = import_json(emr, path, "--force")
    assert result.code == 0 and summary["loaded"] == 1
    again = run_cli("data", "import", str(path), "--dsn", emr.app_dsn)
    assert again.code == 2 and f"as batch {summary['batch_id']}," in again.err
