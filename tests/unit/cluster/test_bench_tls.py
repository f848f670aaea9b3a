"""``bench tls``'s summary: medians per side, and TLS/plain per mode."""

from __future__ import annotations

from careflow_ha.cluster.bench_tls import TlsRun, summarise_tls


def test_the_summary_takes_medians_and_divides_tls_by_plain():
    runs = [TlsRun("select-only", "plain", k, tps, 1.0) for k, tps in enumerate((1000.0, 900.0, 5000.0))]
    runs += [TlsRun("select-only", "tls", k, tps, 2.0) for k, tps in enumerate((800.0, 10.0, 850.0))]
    (row,) = summarise_tls(runs)
    assert (row["tps_plain"], row["tps_tls"], row["ratio_tls_to_plain"]) == (1000.0, 800.0, 0.8)
    assert (row["latency_ms_plain"], row["latency_ms_tls"], row["runs_per_side"]) == (1.0, 2.0, 3)


def test_a_mode_with_one_side_missing_gives_no_row():
    assert summarise_tls([TlsRun("tpcb-like", "plain", 0, 100.0, 1.0)]) == []
