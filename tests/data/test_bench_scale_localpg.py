"""The scale benchmark's mechanics at a tiny size: every scheme built, loaded, measured, archived, dropped.

The figures at network scale live in partitioning/DECISION.md; this only proves the benchmark still runs
and that what it reports is the right kind of thing (leaf counts per scheme, one leaf for a clinic-month,
the same rows in each table, the server gone afterwards).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from careflow_ha.data.bench_scale import (
    DATA_COLD_QUERIES,
    SCHEMES,
    parse_schemes,
    render,
    resolve_scale,
    run_scale,
    write_checkpoint,
)
from careflow_ha.data.generator import DataSpec
from careflow_ha.errors import UsageError
from tests.cli import run_cli

pytestmark = pytest.mark.localpg

CLINICS, MONTHS = 40, 3


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench-partitioning")
    seen: list[list[str]] = []

    def checkpoint(out: dict) -> None:
        seen.append(list(out["schemes"]))
        write_checkpoint(folder, out)

    out = run_scale(DataSpec(rows=12_000, clinics=CLINICS, months=MONTHS, seed=4), list(SCHEMES.values()),
                    repeat=1, cold_repeat=1, progress=lambda _line: None, checkpoint=checkpoint)
    assert not Path(out["local_server_dir"]).exists(), "the throwaway server and its data dir are removed"
    names = list(SCHEMES)
    assert seen == [names[:k] for k in range(1, len(names) + 1)], "the figures so far, after each scheme"
    assert json.loads((folder / "result.json").read_text())["schemes"].keys() == out["schemes"].keys()
    assert "== months-only" in (folder / "report.md").read_text()
    return out


def test_every_scheme_is_measured_with_the_leaves_it_should_have(result):
    s = result["schemes"]
    assert list(s) == list(SCHEMES)
    months = MONTHS + 3  # partman premakes 3 months
    assert s["months-only"]["leaves"] == months
    assert s["per-clinic"]["leaves"] >= months * CLINICS
    assert s["per-clinic"]["leaves"] > s["clinic-range-16"]["leaves"] > s["clinic-range-64"]["leaves"] > months
    assert s["clinic-range-16"]["leaves"] <= months * (CLINICS // 16 + 3)


def test_queries_are_timed_warm_and_cold_against_the_plain_table(result):
    for name, s in result["schemes"].items():
        a = s["queries"]["a"]
        assert a["part"]["scans"] == 1, f"{name}: a clinic-month reads one leaf"
        for q in s["queries"].values():
            for key in ("flat", "part", "flat_cold", "part_cold"):
                assert q[key]["total_ms"] > 0 and q[key]["exec_ms"] > 0
        assert s["queries"]["c"]["part"]["scans"] == s["leaves"] // (MONTHS + 3) or name != "per-clinic"


def test_pet_history_is_also_measured_data_cold_after_another_pets_history(result):
    assert result["params"]["other_pet"] != result["params"]["pet"]
    assert result["params"]["other_pet_clinic"] != result["params"]["pet_clinic"]
    for name, s in result["schemes"].items():
        for q, m in s["queries"].items():
            if q not in DATA_COLD_QUERIES:
                assert "part_data_cold" not in m
                continue
            for side in ("flat", "part"):
                primed, cold = m[f"{side}_data_cold"], m[f"{side}_cold"]
                assert primed["total_ms"] > 0, (name, q, side)
                # What the other pet's history cached is not read again; this pet's own pages still are.
                assert primed["pages_read"] <= cold["pages_read"], (name, q, side, primed, cold)


def test_a_clustered_month_is_measured_where_a_leaf_holds_many_clinics(result):
    for name, s in result["schemes"].items():
        if name == "per-clinic":  # a clinic-month is its own leaf already
            assert "cluster_month" not in s and "part_clustered" not in s["queries"]["a"]
            continue
        assert s["cluster_month"]["rows"] > 0 and s["cluster_month"]["cluster_s"] > 0
        assert s["cluster_month"]["month"].startswith(SCHEMES[name].table + "_p")
        for q in ("a", "a_small"):
            for key in ("part_clustered", "part_clustered_cold"):
                assert s["queries"][q][key]["total_ms"] > 0
            assert s["queries"][q]["part_clustered"]["scans"] == 1


def test_operations_are_measured(result):
    for s in result["schemes"].values():
        assert s["copy_s"] > 0 and s["rows_per_s"] > 0 and s["vacuum_analyze_s"] > 0
        assert s["maintenance"]["steady_s"] > 0 and s["maintenance"]["new_month_leaves"] >= 1
        assert s["archive"]["detach_concurrently_s"] > 0 and s["archive"]["drop_s"] > 0
        assert s["pg_dump_schema_only"]["mb"] > 0 and "error" not in s["pg_dump_schema_only"]
        assert s["catalog"]["total_mb"] > 0 and s["backend_mb_after_keyless_plan"] > 0
    per_clinic, months_only = result["schemes"]["per-clinic"], result["schemes"]["months-only"]
    assert per_clinic["catalog"]["relations"] > months_only["catalog"]["relations"]
    assert per_clinic["maintenance"]["new_month_leaves"] > months_only["maintenance"]["new_month_leaves"]


def test_render_prints_every_scheme_and_ratios(result):
    text = render(result)
    for name in SCHEMES:
        assert f"== {name}" in text
    assert "x " in text and "cold" in text and "pg_dump" in text and "clustered cold" in text
    assert "data cold" in text


def test_a_query_past_the_limit_is_reported_as_such_and_never_as_a_ratio(monkeypatch):
    """The per-clinic keyless plan at 63,000 leaves: one EXPLAIN is cut at QUERY_LIMIT_S, not waited on."""
    from careflow_ha.data import bench_scale
    from careflow_ha.data.localserver import start_local_server

    monkeypatch.setattr(bench_scale, "QUERY_LIMIT_S", 0.2)
    monkeypatch.setattr(bench_scale, "query_text", lambda name, lab, p: (f"SELECT pg_sleep({lab})", {}, False))
    params = bench_scale.Params(clinic=1, small_clinic=1, month=(datetime(2026, 1, 1, tzinfo=UTC),) * 2,
                                pet=1, pet_clinic=1, pet_first_visit=datetime(2026, 1, 1, tzinfo=UTC))
    server = start_local_server()
    try:
        with bench_scale.connect(server.dsn("superuser"), autocommit=True) as conn:
            slow = bench_scale.measure_warm(conn, "b_pet", "5", params, [], 3)
            fast = bench_scale.measure_warm(conn, "b_pet", "0.01", params, [], 3)
    finally:
        server.stop()
        server.remove()
    assert slow["total_ms"] is None and slow["timed_out_s"] == 0.2
    assert fast["total_ms"] >= 10, "a query under the limit is measured as before"
    fake = {"description": "d", "queries": {"b_pet": {"flat": fast, "part": slow}}}
    row = next(line for line in bench_scale.render_scheme("x", fake) if "pet_id only" in line)
    assert ">0.2 s" in row and "x " not in row


@pytest.mark.parametrize(("args", "message"), [
    (["--scale", "galaxy"], "--scale 'galaxy' is unknown; use one of: lab, network"),
    (["--scale", "network", "--schemes", "per-clinic,nope"], "unknown nope"),
    (["--scale", "network", "--clinics", "5000"], "--clinics 5000 is out of range"),
    (["--scale", "network", "--cold-repeat", "-1"], "--cold-repeat -1"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    code, out, err = run_cli("bench", "partitioning", *args)
    assert code == 2, (out, err)
    assert message in err and len(err.strip().splitlines()) == 1 and not out


def test_scale_resolution():
    assert resolve_scale("network", None, None, None).clinics == 1000
    assert resolve_scale("network", 1000, None, 12).rows == 1000
    with pytest.raises(UsageError):
        parse_schemes("")
