"""``careflow-ha capacity`` end to end on the loaded EMR database of the local server."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from tests.cli import run_cli

pytestmark = pytest.mark.localpg


def _password(dsn: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(dsn)["password"]


def test_capacity_measures_projects_and_writes_the_report(emr, tmp_path: Path) -> None:
    with psycopg.connect(emr.app_dsn) as conn:
        rows_before = conn.execute("SELECT count(*) FROM lab_results").fetchone()[0]
        lab_bytes = conn.execute("SELECT sum(pg_total_relation_size(relid))::bigint "
                                 "FROM pg_partition_tree('lab_results') WHERE isleaf").fetchone()[0]
        leaves, months = conn.execute(
            "SELECT count(*) FILTER (WHERE isleaf), count(*) FILTER (WHERE level = 1) "
            "FROM pg_partition_tree('lab_results')").fetchone()
    code, out, err = run_cli("capacity", "--years", "2", "--rows-per-day", "5000", "--disk-gb", "1",
                             "--out", str(tmp_path), "--format", "json", "--dsn", emr.app_dsn)
    assert code == 0, err
    data = json.loads(out)
    folder = Path(data["report_dir"])
    assert sorted(p.name for p in folder.iterdir()) == ["capacity.json", "capacity.md", "capacity.png"]
    report = json.loads((folder / "capacity.json").read_text())
    fig = report["figures"]
    # Measured: exact rows, and bytes per row from the same relations PostgreSQL reports.
    assert fig["lab_rows"] == rows_before == emr.spec.rows
    assert fig["bytes_per_row"] == pytest.approx(lab_bytes / rows_before, rel=1e-6)
    assert fig["leaves_per_month"] == pytest.approx(leaves / months)
    assert 50 < fig["wal_bytes_per_1000_rows"] / 1000 < 2000, "WAL per row: a few hundred bytes, not 0 or MBs"
    assert fig["rows_per_day"] == 5000 and fig["sources"]["rows_per_day"] == "--rows-per-day"
    # The WAL sample was rolled back.
    with psycopg.connect(emr.app_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM lab_results").fetchone()[0] == rows_before
    proj = report["projection"]
    assert len(proj) == 24
    growth = [b["node_bytes"] - a["node_bytes"] for a, b in zip(proj, proj[1:], strict=False)]
    assert all(g > 0 for g in growth), "5000 rows a day and nothing archived yet: one node only grows"
    assert proj[0]["wal_bytes"] == pytest.approx(5000 * 365.25 / 12 * fig["wal_bytes_per_1000_rows"] / 1000, abs=1)
    md = (folder / "capacity.md").read_text()
    assert data["verdict"] in md
    assert f"| {proj[0]['month']} | " in md and f"| {proj[-1]['month']} | " in md
    assert (folder / "capacity.png").stat().st_size > 10_000
    for text in (out, err, md, (folder / "capacity.json").read_text()):
        assert _password(emr.app_dsn) not in text


def test_capacity_default_growth_is_the_last_30_days(emr, tmp_path: Path) -> None:
    with psycopg.connect(emr.app_dsn) as conn:
        recent = conn.execute("SELECT count(*) FROM lab_results WHERE collected_at >= now() - interval '30 days' "
                              "AND collected_at < now()").fetchone()[0]
    code, out, err = run_cli("capacity", "--years", "1", "--out", str(tmp_path), "--format", "json",
                             "--dsn", emr.app_dsn)
    assert code == 0, err
    assert recent > 0, "the test data set covers the last 30 days"
    assert json.loads(out)["rows_per_day"] == pytest.approx(recent / 30)


@pytest.mark.parametrize(("args", "needle"), [
    (("--years", "0"), "--years 0"),
    (("--rows-per-day", "-1"), "cannot be negative"),
    (("--growth-from-load", "/nonexistent/report.json"), "no such file"),
    (("--rows-per-day", "10", "--growth-from-load", "x.json"), "not both"),
])
def test_capacity_bad_input_is_exit_2_in_one_line(emr, tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    code, out, err = run_cli("capacity", "--out", str(tmp_path), "--dsn", emr.app_dsn, *args)
    assert code == 2 and needle in err
    assert len(err.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_capacity_rejects_a_file_that_is_not_a_load_report(emr, tmp_path: Path) -> None:
    storage_like = tmp_path / "storage.json"
    storage_like.write_text(json.dumps({"generated_at": "x", "tables": []}))
    code, out, err = run_cli("capacity", "--growth-from-load", str(storage_like), "--out", str(tmp_path / "o"),
                             "--dsn", emr.app_dsn)
    assert code == 2 and "not a load report" in err and len(err.strip().splitlines()) == 1
