"""``bench tls`` on a real PostgreSQL 15: both sides run (the plain one in clear, the TLS one verified against
the throwaway CA), every mode gives a ratio, and the server and its files are gone afterwards."""

from __future__ import annotations

import glob
import tempfile

import pytest

from careflow_ha.cluster.bench_tls import SIDES, TLS_MODES, run_tls_bench, summarise_tls

pytestmark = pytest.mark.localpg


def test_the_bench_runs_every_mode_on_both_sides_and_cleans_up():
    lines: list[str] = []
    before = set(glob.glob(f"{tempfile.gettempdir()}/careflow-tlsbench-*"))
    runs = run_tls_bench(lines.append, seconds=2, clients=2, scale=1, rounds=2)
    assert {(r.mode, r.side) for r in runs} == {(m, s) for m in TLS_MODES for s in SIDES}
    assert all(r.tps > 0 and r.latency_ms > 0 for r in runs)
    # The order flips each round: drift hits both sides alike.
    firsts = [next(r.side for r in runs if r.mode == "tpcb-like" and r.round == k) for k in (0, 1)]
    assert firsts == ["plain", "tls"]
    rows = summarise_tls(runs)
    assert [r["mode"] for r in rows] == list(TLS_MODES)
    assert all(abs(r["ratio_tls_to_plain"] - r["tps_tls"] / r["tps_plain"]) < 0.01 for r in rows)
    assert any("pgbench -i" in line for line in lines)
    assert set(glob.glob(f"{tempfile.gettempdir()}/careflow-tlsbench-*")) == before
