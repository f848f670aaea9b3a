"""Archive, verify, drop, restore and query old months against a real PostgreSQL 15 with pg_partman.

Each test works on its own month (or restores what it archived), with its own archive directory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from careflow_ha.archive.archiver import TABLE, Archiver, month_partitions
from careflow_ha.archive.bench import WriteLoad
from careflow_ha.archive.manifest import all_manifests, load_manifest
from careflow_ha.archive.query import offline_connection
from careflow_ha.archive.store import LocalStore
from tests.archive.conftest import (
    attached_months,
    month_snapshot,
    populated_old_months,
    rows_in_range,
    run_cli_process,
)
from tests.cli import run_cli

pytestmark = pytest.mark.localpg


@pytest.fixture
def store(tmp_path: Path, archive_db) -> Iterator[LocalStore]:
    """A fresh archive directory; whatever a test leaves archived is restored afterwards."""
    store = LocalStore(tmp_path / "archive")
    yield store
    archiver = Archiver(archive_db.app_dsn, store, progress=False)
    for manifest in all_manifests(store, TABLE):
        if manifest.month in attached_months(archive_db.app_dsn):
            continue
        if manifest.state not in ("archived", "kept", "restoring", "restored"):
            archiver.archive_month(manifest.month)  # finish a half-done run first
        archiver.restore(manifest.month)


def error_line(err: str) -> str:
    """The one error line the CLI prints (other stderr lines are the target and progress)."""
    lines = [line for line in err.splitlines() if line.startswith("careflow-ha: error:")]
    assert len(lines) == 1, err
    return lines[0]


def password_of(dsn: str) -> str:
    return conninfo_to_dict(dsn)["password"]


def archive_cli(dsn: str, store: LocalStore, *args: str):
    return run_cli("archive", *args, "--archive-dir", str(store.root), "--dsn", dsn, "--format", "json")


def test_round_trip_gives_back_identical_rows_and_checksums(archive_db, store):
    month = populated_old_months(archive_db.app_dsn)[0]
    before = month_snapshot(archive_db.app_dsn, month)
    assert before["count"] > 100

    res = run_cli("archive", "run", "--month", month, "--archive-dir", str(store.root), "--dsn",
                  archive_db.app_dsn, "--force", "--format", "json")
    assert res.code == 0, res.err
    assert json.loads(res.out)[0]["state"] == "archived"
    assert month not in attached_months(archive_db.app_dsn)
    assert rows_in_range(archive_db.app_dsn, before["lower"], before["upper"]) == 0
    manifest = load_manifest(store, "public.lab_results", month)
    assert manifest.checksum_postgres == manifest.checksum_parquet == before["checksum"]
    assert manifest.rows == before["count"] and manifest.clinics == before["clinics"]
    assert manifest.file_key.endswith(f"month={month}/data.parquet") and len(manifest.file_sha256) == 64
    assert [c["name"] for c in manifest.schema][:3] == ["result_id", "clinic_id", "collected_at"]
    assert manifest.partman_config and manifest.partman_config["control"] == "clinic_id"
    with psycopg.connect(archive_db.app_dsn) as conn:  # pg_partman forgets the dropped month
        assert conn.execute("SELECT count(*) FROM partman.part_config WHERE parent_table = %s",
                            (before["partition"],)).fetchone()[0] == 0

    res = archive_cli(archive_db.app_dsn, store, "restore", month)
    assert res.code == 0, res.err
    out = json.loads(res.out)
    assert out["state"] == "restored" and out["attach_scan_skipped"] is True  # the CHECK made the attach instant
    after = month_snapshot(archive_db.app_dsn, month)
    assert after["rows"] == before["rows"]
    assert after["checksum"] == before["checksum"]
    assert after["leaves"] == before["leaves"]
    with psycopg.connect(archive_db.app_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM partman.part_config WHERE parent_table = %s",
                            (before["partition"],)).fetchone()[0] == 1
        # the restored month is a normal member again: the parent's index covers it, maintenance finds it
        idx = conn.execute("SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                           "WHERE i.inhparent = 'lab_results_pet_idx'::regclass AND c.relname LIKE %s",
                           (before["partition"].split(".")[1] + "%",)).fetchone()[0]
        assert idx == 1
        assert conn.execute("SELECT ensure_clinic_leaves()").fetchone()[0] == 0
        conn.rollback()
    assert load_manifest(store, "public.lab_results", month).state == "restored"


def test_dry_run_changes_nothing_then_duckdb_matches_postgres_aggregates(archive_db, store):
    old = populated_old_months(archive_db.app_dsn)
    assert len(old) >= 4
    agg_sql = ("SELECT strftime(collected_at, '%Y-%m') AS m, clinic_id, test_code, count(*) AS n, "
               "round(sum(value), 4) AS s, min(collected_at) AS lo, max(flag) AS f FROM lab_results "
               "GROUP BY ALL ORDER BY ALL")
    with psycopg.connect(archive_db.app_dsn) as conn:
        lower = min(p.lower for p in month_partitions(conn) if p.month in old)
        upper = max(p.upper for p in month_partitions(conn) if p.month in old)
        pg_agg = [(to_char, c, t, n, round(float(s), 4), lo, f) for to_char, c, t, n, s, lo, f in conn.execute(
            "SELECT to_char(collected_at, 'YYYY-MM'), clinic_id, test_code, count(*), round(sum(value)::numeric, 4),"
            " min(collected_at), max(flag::text) FROM lab_results WHERE collected_at >= %s AND collected_at < %s "
            "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3", (lower, upper))]
    months_before = attached_months(archive_db.app_dsn)

    dry = archive_cli(archive_db.app_dsn, store, "run", "--older-than", "24months", "--dry-run")
    assert dry.code == 0, dry.err
    planned = json.loads(dry.out)
    assert set(old) <= {r["month"] for r in planned}
    assert all(r["would"].startswith("export") and r["in_database"] == "attached" for r in planned)
    assert attached_months(archive_db.app_dsn) == months_before
    assert not list(store.keys("lab_results"))

    res = archive_cli(archive_db.app_dsn, store, "run", "--older-than", "24months", "--force")
    assert res.code == 0, res.err
    archived = {r["month"] for r in json.loads(res.out)}
    assert set(old) <= archived
    assert not archived & set(attached_months(archive_db.app_dsn))

    q = run_cli("archive", "query", agg_sql, "--archive-dir", str(store.root), "--format", "json")
    assert q.code == 0, q.err
    duck = [(r["m"], r["clinic_id"], r["test_code"], r["n"], round(r["s"], 4), r["lo"], r["f"])
            for r in json.loads(q.out)]
    assert [d[:5] for d in duck] == [p[:5] for p in pg_agg]
    assert [d[6] for d in duck] == [p[6] for p in pg_agg]
    # timestamps agree to the microsecond (DuckDB in Asia/Seoul, like the database)
    assert [d[5][:26] for d in duck] == [p[5].isoformat(sep=" ")[:26] for p in pg_agg]

    listed = archive_cli(archive_db.app_dsn, store, "list")
    assert listed.code == 0
    assert {r["month"]: (r["state"], r["in_database"]) for r in json.loads(listed.out)} == {
        m: ("archived", "absent") for m in archived}
    for month in sorted(archived):
        assert archive_cli(archive_db.app_dsn, store, "restore", month).code == 0
    assert attached_months(archive_db.app_dsn) == months_before


def test_duckdb_never_loads_extensions_by_itself():
    conn = offline_connection()
    settings = dict(conn.execute("SELECT name, value FROM duckdb_settings() WHERE name IN "
                                 "('autoinstall_known_extensions', 'autoload_known_extensions')").fetchall())
    assert settings == {"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"}
    with pytest.raises(duckdb.Error):
        conn.execute("SELECT * FROM read_csv('https://example.invalid/x.csv')")  # httpfs is not loadable


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_a_damaged_or_missing_file_blocks_the_drop_and_the_month_stays(archive_db, store, damage):
    month = populated_old_months(archive_db.app_dsn)[1 if damage == "corrupt" else 2]
    before = month_snapshot(archive_db.app_dsn, month)
    killed = run_cli_process(archive_db.app_dsn, "archive", "run", "--month", month, "--archive-dir",
                             str(store.root), "--force", failpoint="verified")
    assert killed.returncode == -9, killed.stderr
    path = store.local_path(load_manifest(store, "public.lab_results", month).file_key)
    if damage == "corrupt":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.unlink()

    res = archive_cli(archive_db.app_dsn, store, "run", "--month", month, "--force")
    assert res.code == 5
    message = error_line(res.err)
    assert "stays in the database" in message
    assert ("corrupted" if damage == "corrupt" else "missing") in message
    assert month in attached_months(archive_db.app_dsn)
    assert month_snapshot(archive_db.app_dsn, month)["checksum"] == before["checksum"]
    assert load_manifest(store, "public.lab_results", month).state == "invalid"

    # The next run exports again from the database and finishes.
    res = archive_cli(archive_db.app_dsn, store, "run", "--month", month, "--force")
    assert res.code == 0, res.err
    assert month not in attached_months(archive_db.app_dsn)
    assert load_manifest(store, "public.lab_results", month).checksum_parquet == before["checksum"]
    assert archive_cli(archive_db.app_dsn, store, "restore", month).code == 0
    assert month_snapshot(archive_db.app_dsn, month)["rows"] == before["rows"]


def test_a_row_written_into_the_month_after_the_export_is_archived_not_lost(archive_db, store):
    month = populated_old_months(archive_db.app_dsn)[3]
    before = month_snapshot(archive_db.app_dsn, month)
    killed = run_cli_process(archive_db.app_dsn, "archive", "run", "--month", month, "--archive-dir",
                             str(store.root), "--force", failpoint="verified")
    assert killed.returncode == -9
    with psycopg.connect(archive_db.app_dsn) as conn:
        late_id = conn.execute(
            "INSERT INTO lab_results (clinic_id, collected_at, pet_id, test_code, value, flag) "
            "VALUES (1, %s, 1, 'GLU', 5.5, 'N') RETURNING result_id", (before["lower"],)).fetchone()[0]
    res = archive_cli(archive_db.app_dsn, store, "run", "--month", month, "--force")
    assert res.code == 0, res.err
    manifest = load_manifest(store, "public.lab_results", month)
    assert manifest.rows == before["count"] + 1
    assert archive_cli(archive_db.app_dsn, store, "restore", month).code == 0
    with psycopg.connect(archive_db.app_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM lab_results WHERE result_id = %s", (late_id,)).fetchone()[0] == 1
        conn.execute("DELETE FROM lab_results WHERE result_id = %s", (late_id,))
    assert month_snapshot(archive_db.app_dsn, month)["checksum"] == before["checksum"]


def test_writes_continue_without_a_failure_while_a_month_is_archived_and_restored(archive_db, store):
    month = populated_old_months(archive_db.app_dsn)[4]
    before = month_snapshot(archive_db.app_dsn, month)
    load = WriteLoad(archive_db.app_dsn, writers=2, rate=300, clinic_id=1)
    archiver = Archiver(archive_db.app_dsn, store, progress=False)
    load.start()
    try:
        t0 = time.monotonic()
        archiver.run([month])
        archiver.restore(month)
        t1 = time.monotonic()
    finally:
        samples = load.stop()
    with psycopg.connect(archive_db.app_dsn) as conn:
        conn.execute("DELETE FROM lab_results WHERE pet_id = 0 AND test_code = 'BENCH'")
    during = [s for s in samples if t0 <= s.started <= t1]
    assert len(during) >= 10, f"only {len(during)} writes overlapped the archive run"
    assert [s.error for s in samples if not s.ok] == []
    assert month_snapshot(archive_db.app_dsn, month)["checksum"] == before["checksum"]


def test_usage_errors_are_one_line_with_the_fix(archive_db, store):
    cases = [
        (("run", "--older-than", "two years", "--force"), 2, "e.g. 24months"),
        (("run", "--force"), 2, "--older-than DURATION"),
        (("run", "--month", "2031-01", "--force"), 2, "future"),
        (("restore", "2024-02"), 2, "archive list"),
    ]
    for args, code, fix in cases:
        res = archive_cli(archive_db.app_dsn, store, *args)
        assert res.code == code, (args, res.err)
        assert fix in error_line(res.err), (args, res.err)
        assert password_of(archive_db.app_dsn) not in res.err + res.out
    res = run_cli("archive", "query", "SELECT 1", "--archive-dir", str(store.root))
    assert res.code == 2 and "archive run" in res.err


def test_nothing_to_archive_is_a_no_op(archive_db, store):
    months_before = attached_months(archive_db.app_dsn)
    res = archive_cli(archive_db.app_dsn, store, "run", "--older-than", "100years", "--force")
    assert res.code == 0 and json.loads(res.out) == []
    assert "nothing to archive" in res.err
    assert attached_months(archive_db.app_dsn) == months_before


def test_storage_report_renders_markdown_png_json(archive_db, tmp_path):
    res = run_cli("storage", "report", "--dsn", archive_db.app_dsn, "--out", str(tmp_path), "--sample-months", "2",
                  "--archive-dir", str(tmp_path / "none"), "--format", "json")
    assert res.code == 0, res.err
    folder = Path(json.loads(res.out)["report_dir"])
    report = json.loads((folder / "storage.json").read_text())
    assert (folder / "storage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (folder / "storage.md").read_text()
    for section in ("## Tables", "B-tree vs BRIN", "TOAST compression", "Parquet (zstd) vs heap"):
        assert section in md
    assert {t["table"] for t in report["tables"]} >= {"lab_results", "visits", "pets"}
    lab = next(t for t in report["tables"] if t["table"] == "lab_results")
    assert lab["heap"] > 0 and lab["indexes"] > 0 and lab["leaves"] > 30
    assert report["btree_vs_brin"]["brin"]["bytes"] < report["btree_vs_brin"]["btree"]["bytes"]
    assert report["toast"]["pet_history"]["lz4"]["compressed_values"] > 0
    assert all(r["heap_per_parquet"] > 1 for r in report["parquet_vs_heap"])
    assert len(report["recommendations"]) >= 4
    assert password_of(archive_db.app_dsn) not in md + json.dumps(report) + res.err
