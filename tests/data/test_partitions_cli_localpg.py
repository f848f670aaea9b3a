"""``careflow-ha partitions status|check|maintain`` on the session server."""

from __future__ import annotations

import json

import psycopg
import pytest

from careflow_ha.data.generator import MAX_CLINICS
from tests.cli import run_cli

pytestmark = pytest.mark.localpg


def test_status_lists_months_and_leaves(emr):
    result = run_cli("partitions", "status", "--dsn", emr.app_dsn, "--format", "json")
    assert result.code == 0, result.err
    status = json.loads(result.out)
    assert status["months"] >= emr.spec.months + 3
    assert status["leaves"] == sum(p["leaves"] + (p["default"] == "yes") for p in status["partitions"])
    assert sum(p["est_rows"] for p in status["partitions"]) >= emr.spec.rows * 0.9  # after ANALYZE
    assert {j["job"] for j in status["jobs"]} == {"careflow-partman-maintenance", "careflow-lab-results-daily"}


def test_check_catches_a_parked_row_and_maintain_moves_it_into_a_new_leaf(emr):
    ok = run_cli("partitions", "check", "--dsn", emr.app_dsn)
    assert ok.code == 0, ok.out + ok.err
    with psycopg.connect(emr.app_dsn) as conn:
        # Clinic 71 has no leaf (it is not in `clinics`): partman's clinic default catches the row.
        parked_in = conn.execute(
            "INSERT INTO lab_results (clinic_id, collected_at, pet_id, test_code, value, flag) "
            "VALUES (71, now() - interval '2 days', 1, 'ALT', 40, 'N') RETURNING tableoid::regclass::text"
        ).fetchone()[0]
        conn.commit()
    assert parked_in.endswith("_default")
    try:
        bad = run_cli("partitions", "check", "--dsn", emr.app_dsn)
        assert bad.code == 5
        assert "clinic defaults empty" in bad.out and "FAIL" in bad.out
        assert f"{parked_in}: 1" in bad.out and "partitions maintain" in bad.out

        fixed = run_cli("partitions", "maintain", "--dsn", emr.app_dsn, "--format", "json")
        assert fixed.code == 0, fixed.err
        assert json.loads(fixed.out)["rows_moved_from_defaults"] == 1
        with psycopg.connect(emr.app_dsn) as conn:
            leaf = conn.execute("SELECT tableoid::regclass::text FROM lab_results WHERE clinic_id = 71").fetchone()[0]
        assert leaf.endswith("_p71")
        assert run_cli("partitions", "check", "--dsn", emr.app_dsn).code == 0
    finally:
        with psycopg.connect(emr.app_dsn) as conn:
            conn.execute("DELETE FROM lab_results WHERE clinic_id = 71")


def test_maintain_extends_the_window_back_on_request(emr):
    with psycopg.connect(emr.app_dsn) as conn:
        first = conn.execute("SELECT min(month) FROM (SELECT partition_tablename AS month FROM "
                             "partman.show_partitions('public.lab_results')) s").fetchone()[0]
    year, month = int(first[13:17]), int(first[18:20])
    y, m = divmod(year * 12 + month - 1 - 2, 12)
    wanted = f"{y}-{m + 1:02d}"
    result = run_cli("partitions", "maintain", "--from", wanted, "--dsn", emr.app_dsn, "--format", "json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["months_created_for_window"] == 2
    with psycopg.connect(emr.app_dsn) as conn:
        leaves = conn.execute("SELECT count(*) FROM partman.show_partitions(%s)",
                              (f"public.lab_results_p{y}_{m + 1:02d}",)).fetchone()[0]
    assert leaves >= 4, "the new month has a leaf per clinic"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "load", "--rows", "0"], "--rows 0 is out of range"),
        (["data", "load", "--rows", "10", "--months", "0"], "--months 0 is out of range"),
        (["data", "load", "--rows", "10", "--clinics", str(MAX_CLINICS + 1)], f"--clinics {MAX_CLINICS + 1} is out"),
        (["partitions", "maintain", "--from", "2026-13"], "use YYYY-MM"),
        (["partitions", "maintain", "--from", "2999-01"], "is in the future"),
        (["bench", "partitioning", "--repeat", "0"], "--repeat 0 must be at least 1"),
        (["data", "migrate", "--dsn", "not a dsn"], "is not a libpq URI"),
        (["data", "load", "--rows", "10", "--replace", "--dsn", "postgresql://x@127.0.0.1:1/x"], "add --force"),
        (["bench", "partitioning", "--local", "--dsn", "postgresql://x@127.0.0.1:1/x"], "pick one target"),
    ],
)
def test_bad_flags_fail_early_with_exit_2_and_no_traceback(argv, message):
    result = run_cli(*argv)
    assert result.code == 2, result
    assert message in result.err
    assert "Traceback" not in result.err
