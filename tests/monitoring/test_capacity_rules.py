"""The capacity projection (pure: figures in, months out) and its input checks, table-driven."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from careflow_ha.errors import UsageError
from careflow_ha.monitoring.capacity import (
    DAYS_PER_MONTH,
    Figures,
    MonthSize,
    backup_ratio_from_reports,
    project,
    read_load_report,
    repository_bytes,
    runs_out,
    validate,
)

RESERVE = 1_000_000_000


def _fig(rows_per_day: float, months: tuple[MonthSize, ...], rest: int = 0, wal: float = 0.0,
         ratio: float = 10.0) -> Figures:
    return Figures(now_month="2026-12", months=months, rest_bytes=rest, wal_bytes_per_1000_rows=wal,
                   parquet_ratio=ratio, leaves_per_month=5.0, future_partitions=1, wal_reserve_bytes=RESERVE,
                   rows_per_day=rows_per_day)


# 100 bytes a row: 60 heap, 30 indexes, 10 TOAST; 1,000 rows a month.
NOV = MonthSize("2026-11", rows=1000, heap=60_000, indexes=30_000, toast=10_000, leaves=5)
DEC = MonthSize("2026-12", rows=1000, heap=60_000, indexes=30_000, toast=10_000, leaves=5)
JAN = MonthSize("2027-01", rows=0, heap=0, indexes=0, toast=0, leaves=5)  # premade
OLD = MonthSize("2020-01", rows=1000, heap=60_000, indexes=30_000, toast=10_000, leaves=5)  # past retention


def test_no_growth_keeps_everything_flat() -> None:
    months = project(_fig(0, (NOV, DEC, JAN), rest=50_000, wal=120_000), years=1)
    assert len(months) == 12 and months[0].month == "2027-01" and months[-1].month == "2027-12"
    assert {m.hot_lab_bytes for m in months} == {200_000}
    assert {m.rest_bytes for m in months} == {50_000}
    assert {m.node_bytes for m in months} == {200_000 + 50_000 + RESERVE}
    assert {m.archive_bytes for m in months} == {0} and {m.wal_bytes for m in months} == {0}
    assert not any(m.disk_full for m in months) and runs_out(months) is None


@pytest.mark.parametrize(("rows_per_day", "month_index", "hot_lab", "rest", "wal"), [
    # one month in: 2 measured months + one projected month of rows_per_day x 30.44 rows at 100 B
    (100, 0, 200_000 + 100 * DAYS_PER_MONTH * 100, 50_000 + 100 * DAYS_PER_MONTH * 25, 100 * DAYS_PER_MONTH * 120),
    # twelve months in
    (100, 11, 200_000 + 12 * 100 * DAYS_PER_MONTH * 100, 50_000 + 12 * 100 * DAYS_PER_MONTH * 25,
     100 * DAYS_PER_MONTH * 120),
    (0, 11, 200_000, 50_000, 0),
])
def test_growth_adds_measured_bytes_per_row(rows_per_day: float, month_index: int, hot_lab: float, rest: float,
                                            wal: float) -> None:
    # rest grows with the rows: 50,000 B for 2,000 rows now = 25 B per added row; WAL 120 B a row
    m = project(_fig(rows_per_day, (NOV, DEC), rest=50_000, wal=120_000), years=1)[month_index]
    assert m.hot_lab_bytes == round(hot_lab)
    assert m.rest_bytes == round(rest)
    assert m.wal_bytes == round(wal)
    assert m.node_bytes == m.hot_lab_bytes + m.rest_bytes + RESERVE


def test_retention_moves_old_months_to_the_archive_at_the_parquet_ratio() -> None:
    months = project(_fig(0, (OLD, NOV, DEC)), years=1, retain_months=3)
    first = months[0]  # 2027-01 keeps 2026-11..2027-01; 2020-01 is archived
    assert first.hot_lab_bytes == 200_000 and first.archive_bytes == 60_000 // 10
    assert first.hot_months == 3  # 2026-11, 2026-12, 2027-01 (projected, empty)
    second = months[1]  # 2027-02: 2026-11 ages out too
    assert second.hot_lab_bytes == 100_000 and second.archive_bytes == 120_000 // 10
    assert {m.hot_months for m in months[2:]} == {3}
    assert all(m.partitions == m.hot_months + 1 for m in months)
    assert all(m.leaves == m.partitions * 5 for m in months)


def test_growing_retained_window_levels_off() -> None:
    months = project(_fig(1000, (DEC,)), years=3, retain_months=12)
    per_month = round(1000 * DAYS_PER_MONTH * 100)
    assert months[-1].hot_lab_bytes == pytest.approx(12 * per_month, rel=1e-6)
    assert months[-1].hot_lab_bytes == months[-2].hot_lab_bytes
    assert months[-1].archive_bytes > months[-2].archive_bytes > 0


@pytest.mark.parametrize(("disk_gb", "full_in"), [
    # reserve 1 GB + 200 kB now + 304 kB a month: 1.000504 GB in 2027-01, 1.000809 GB in 2027-02
    (1.0007, "2027-02"),
    (2.0, None),
])
def test_disk_runs_out(disk_gb: float, full_in: str | None) -> None:
    months = project(_fig(100, (NOV, DEC)), years=1, disk_gb=disk_gb)
    assert runs_out(months) == full_in
    if full_in:
        before = [m for m in months if m.month < full_in]
        assert before and not any(m.disk_full for m in before)
        assert all(m.disk_full for m in months if m.month >= full_in)


def test_empty_table_with_growth_asks_for_data() -> None:
    with pytest.raises(UsageError, match="data load"):
        project(_fig(100, ()), years=1)
    assert project(_fig(0, ()), years=1)[0].hot_lab_bytes == 0


@pytest.mark.parametrize(("years", "rows", "disk", "retain", "needle"), [
    (0, None, None, 24, "--years 0"),
    (-1, None, None, 24, "--years -1"),
    (float("nan"), None, None, 24, "--years"),
    (51, None, None, 24, "at most 50"),
    (3, -10, None, 24, "cannot be negative"),
    (3, None, 0, 24, "--disk-gb"),
    (3, None, None, 0, "--retain-months"),
])
def test_validate_rejects_impossible_input(years: float, rows: float | None, disk: float | None, retain: int,
                                           needle: str) -> None:
    with pytest.raises(UsageError) as info:
        validate(years, rows, disk, retain)
    assert needle in str(info.value) and "\n" not in str(info.value) and info.value.exit_code == 2


def _load_report(tmp_path: Path, ops: list[dict], seconds: float = 60.0) -> Path:
    path = tmp_path / "run" / "report.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"meta": {"run_id": "20261201T000000Z"},
                                "summary": {"seconds": seconds, "operations": ops}}))
    return path


def test_load_report_gives_the_panel_rate(tmp_path: Path) -> None:
    path = _load_report(tmp_path, [{"op": "lab.post_results", "requests": 130, "failures": 10},
                                   {"op": "vet.patient_history", "requests": 999, "failures": 0}])
    assert read_load_report(path) == (120, 60.0, "20261201T000000Z")
    assert read_load_report(path.parent) == (120, 60.0, "20261201T000000Z")  # the run folder works too


@pytest.mark.parametrize(("content", "needle"), [
    ('{"a": 1}', "not a load report"),
    ("not json", "not a load report"),
    ('{"meta": {"run_id": "x"}, "summary": {"seconds": 10, "operations": '
     '[{"op": "vet.patient_history", "requests": 5}]}}', "posted no lab results"),
])
def test_bad_load_reports_are_one_line_usage_errors(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "report.json"
    path.write_text(content)
    with pytest.raises(UsageError) as info:
        read_load_report(path)
    assert needle in str(info.value)


def test_missing_load_report(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        read_load_report(tmp_path / "nope.json")


# -- the backup repository -----------------------------------------------------------------------------------


def test_the_repository_holds_its_fulls_one_cycle_of_diffs_and_the_wal_back_to_the_oldest_full() -> None:
    # 100 bytes a row, 10 rows a day, 500 WAL bytes per 1,000 rows; stored at a ratio of 0.2; 2 fulls, 7 diffs.
    fig = replace(_fig(10.0, (NOV, DEC), wal=500.0), backup_ratio=0.2, backup_retention_full=2,
                  backup_retention_diff=7)
    first = project(fig, 1 / 12)[0]
    database = first.hot_lab_bytes + first.rest_bytes  # the database, not the node's pg_wal reserve
    fulls, diffs, wal = 2 * database, (1 + 2 + 3 + 4 + 5 + 6) * 10 * 100, 14 * 10 * 500 / 1000
    assert first.backup_bytes == round((fulls + diffs + wal) * 0.2)
    assert repository_bytes(replace(fig, backup_retention_diff=2), database, 100.0) == round(
        (fulls + (1 + 2) * 10 * 100 + wal) * 0.2)  # fewer diffs kept than a cycle has days


def test_without_a_measured_ratio_backups_are_not_projected_and_the_report_says_what_to_run(tmp_path) -> None:
    assert project(_fig(10.0, (NOV, DEC)), 1)[0].backup_bytes is None
    ratio, how = backup_ratio_from_reports(tmp_path)
    assert ratio is None and "careflow-ha backup run --type full" in how


def _backup_report(folder: Path, name: str, kind: str, database: float, stored: float) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "result.json").write_text(json.dumps(
        {"kind": "backup", "figures": {"label": name, "type": kind, "database_MB": database, "stored_MB": stored}}))


def test_the_ratio_comes_from_the_newest_full_backup_report(tmp_path) -> None:
    _backup_report(tmp_path, "backup-20261201T010000Z", "full", 80.0, 16.0)
    _backup_report(tmp_path, "backup-20261203T010000Z", "full", 78.0, 11.7)
    _backup_report(tmp_path, "backup-20261203T020000Z", "diff", 78.0, 0.5)  # newer, but not a full
    (tmp_path / "backup-20261204T010000Z").mkdir()
    (tmp_path / "backup-20261204T010000Z" / "result.json").write_text("{not json")  # skipped, not fatal
    ratio, how = backup_ratio_from_reports(tmp_path)
    assert ratio == pytest.approx(11.7 / 78.0) and "backup-20261203T010000Z" in how
