"""The backup bench runs end to end on a tiny data set (its figures are in the README, from a 200 MB run)."""

from __future__ import annotations

import pytest

from careflow_ha.backup.bench import render, run_bench
from careflow_ha.errors import UsageError

pytestmark = pytest.mark.localpg


def test_the_bench_measures_both_tools_and_their_ratios():
    result = run_bench(mb=10, rounds=1)
    for tool in (result.pgbackrest, result.pg_basebackup):
        assert tool.backup_s > 0 and tool.restore_s > 0 and tool.stored_mb > 0
        # The figures are rounded for the report (MB/s to 0.1, ratios to 0.01): the tolerance covers that rounding,
        # or a fast tool on a small set fails on it (CI rehearsal: 0.09 against 0.0855).
        assert tool.backup_mb_s == pytest.approx(result.database_mb / tool.backup_s, rel=0.05, abs=0.06)
    speedup = result.pg_basebackup.backup_s / result.pgbackrest.backup_s
    assert result.backup_speedup == pytest.approx(speedup, rel=0.05, abs=0.006)
    # compressed with zstd either way: the stored bytes are a fraction of the database
    assert result.pgbackrest.stored_mb < result.database_mb and result.pg_basebackup.stored_mb < result.database_mb
    assert 0 < result.diff_stored_mb < result.pgbackrest.stored_mb  # only the new month's files (and catalogs)
    assert "pgBackRest vs pg_basebackup" in render(result)


@pytest.mark.parametrize("mb", [0, 9, 20_001])
def test_an_impossible_size_is_one_line(mb):
    with pytest.raises(UsageError, match="is out of range; give 10 to 20000"):
        run_bench(mb=mb)
