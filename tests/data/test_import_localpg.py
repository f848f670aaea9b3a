"""``careflow-ha data import``: bad rows are quarantined with their reasons, good rows load, a summary prints."""

from __future__ import annotations

import json
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
        f"{cat},crea,{when},1.1",                 # 3: good, lower-case code, normal
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
    assert summary["reasons"] == {"unknown pet": 1, "unknown test code": 1, "impossible value": 1,
                                  "collected_at invalid": 1, "collected_at in the future": 1,
                                  "collected_at outside every partition": 1,
                                  "wrong number of fields for the header": 1}
    secret = conninfo_to_dict(emr.app_dsn)["password"]
    assert secret not in result.err + result.out and "password=***" in result.err  # target shown, redacted
    with psycopg.connect(emr.app_dsn) as conn:
        after = conn.execute("SELECT count(*) FROM lab_results WHERE pet_id = %s", (cat,)).fetchone()[0]
        flags = sorted(r[0] for r in conn.execute(
            "SELECT test_code || ':' || flag::text FROM lab_results WHERE pet_id = %s AND visit_id IS NULL", (cat,)))
        quarantined = dict(conn.execute(
            "SELECT line_no, array_to_string(reasons, ' | ') FROM lab_results_quarantine WHERE batch_id = %s",
            (summary["batch_id"],)).fetchall())
        batch = conn.execute("SELECT rows_total, rows_loaded, rows_quarantined FROM lab_import_batches "
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
    assert batch == (10, 3, 7)


def test_a_file_with_a_wrong_header_is_refused_whole(emr, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("pet,test,value\n1,ALT,3\n")
    with psycopg.connect(emr.app_dsn) as conn:
        batches = conn.execute("SELECT count(*) FROM lab_import_batches").fetchone()[0]
    result = run_cli("data", "import", str(path), "--dsn", emr.app_dsn)
    assert result.code == 2
    assert "header" in result.err and "use pet_id,test_code,collected_at,value" in result.err
    assert "Traceback" not in result.err
    with psycopg.connect(emr.app_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM lab_import_batches").fetchone()[0] == batches


def test_a_missing_file_is_a_usage_error(emr, tmp_path):
    result = run_cli("data", "import", str(tmp_path / "nope.csv"), "--dsn", emr.app_dsn)
    assert result.code == 2 and "does not exist" in result.err
