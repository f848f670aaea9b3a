"""The bench's reading of pgBackRest's backup log (the copy phase, apart from checkpoint and archive waits)."""

from __future__ import annotations

import pytest

from careflow_ha.backup.bench import copy_seconds

#: pgBackRest 2.45, --log-level-console=info (captured).
LOG = """\
2026-12-01 22:26:16.290 P00   INFO: execute non-exclusive backup start: backup begins after the requested immediate checkpoint completes
2026-12-01 22:26:16.613 P00   INFO: backup start archive = 000000010000000000000002, lsn = 0/2000028
2026-12-01 22:26:16.613 P00   INFO: check archive for prior segment 000000010000000000000001
2026-12-01 22:26:22.529 P00   INFO: execute non-exclusive backup stop and wait for all WAL segments to archive
2026-12-01 22:26:22.744 P00   INFO: backup stop archive = 000000010000000000000002, lsn = 0/2000100
"""  # noqa: E501 (pgBackRest's own lines, verbatim)


def test_the_copy_runs_from_the_start_archive_line_to_the_stop_call():
    assert copy_seconds(LOG) == pytest.approx(5.916)


@pytest.mark.parametrize("log", ["", LOG.splitlines()[1], LOG.splitlines()[3]])
def test_without_both_lines_there_is_no_copy_time(log):
    assert copy_seconds(log) is None
