"""The benchmark's mechanics (not its timings): same rows on both sides, the expected plans, ratios printed."""

from __future__ import annotations

import psycopg
import pytest

from careflow_ha.data.bench import render, run_bench
from careflow_ha.data.generator import DataSpec

pytestmark = pytest.mark.localpg


def test_bench_compares_identical_tables_and_prints_ratios(emr):
    result = run_bench(emr.app_dsn, DataSpec(rows=20_000, clinics=3, months=4, seed=9), repeat=1)

    assert result["rows_loaded"] == {"bench.lab_results_flat": 20_000, "bench.lab_results_part": 20_000}
    q = result["queries"]
    assert q["a"]["part"]["scans"] == 1, "clinic + month reads one leaf"
    assert q["b+clinic"]["part"]["planned_rels"] < q["b"]["part"]["planned_rels"], "the clinic key prunes"
    per_month = result["partitions"]["leaves_incl_defaults"] // result["partitions"]["months"]
    assert q["c"]["part"]["scans"] == per_month, "a month-wide query reads that month's leaves only"
    assert q["c"]["part"]["planned_rels"] == per_month
    assert all(q[name]["flat"]["scans"] == 1 for name in q)
    text = render(result)
    assert "partitioned is" in text and "partitioned/plain time" in text and "rows/s" in text
    assert "password=***" in text and emr.app_dsn not in text
    with psycopg.connect(emr.app_dsn) as conn:
        assert conn.execute("SELECT to_regnamespace('bench')").fetchone()[0] is None, "bench schema dropped"
        assert conn.execute("SELECT count(*) FROM partman.part_config WHERE parent_table LIKE 'bench.%'"
                            ).fetchone()[0] == 0
