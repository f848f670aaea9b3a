"""pgbench output parsing and the side-by-side summary (no database)."""

from __future__ import annotations

import pytest

from careflow_ha.cluster.bench import PgbenchResult, parse_pgbench, summarise
from careflow_ha.errors import CommandFailed

OUTPUT = """pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
latency average = 1.234 ms
initial connection time = 12.3 ms
tps = 6480.123456 (without initial connection time)
"""


def test_parse_pgbench_reads_tps_and_latency():
    assert parse_pgbench(OUTPUT) == (6480.123456, 1.234)


def test_parse_pgbench_without_summary_fails_clearly():
    with pytest.raises(CommandFailed, match="no tps/latency summary"):
        parse_pgbench("pgbench: error: connection refused")


def test_summarise_takes_medians_and_the_ratio_per_mode():
    results = [
        PgbenchResult("select-only", "haproxy:5000", 800, 10),
        PgbenchResult("select-only", "direct:pg1", 1000, 8),
        PgbenchResult("select-only", "haproxy:5000", 900, 9),
        PgbenchResult("select-only", "direct:pg1", 1000, 8),
        PgbenchResult("tpcb-like", "haproxy:5000", 300, 20),
        PgbenchResult("tpcb-like", "direct:pg1", 300, 20),
    ]
    rows = {r["mode"]: r for r in summarise(results)}
    assert rows["select-only"]["tps_haproxy"] == 850
    assert rows["select-only"]["ratio_haproxy_to_direct"] == 0.85
    assert rows["tpcb-like"]["ratio_haproxy_to_direct"] == 1.0


def test_summarise_skips_a_mode_with_one_side_missing():
    assert summarise([PgbenchResult("tpcb-like", "haproxy:5000", 300, 20)]) == []
