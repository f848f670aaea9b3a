"""``bench routing``'s arithmetic and report: ratios to direct in the same run, medians, and the advice."""

from __future__ import annotations

import json

import pytest

from careflow_ha.routing.bench import (
    BENCH_SCHEMA,
    CREATE_BENCH_ROLE,
    BenchRole,
    PathResult,
    bench_paths,
    summarise_outages,
    summarise_pgbench,
)
from careflow_ha.routing.report import render_markdown, verdict_lines, with_targets, write_report
from careflow_ha.settings import BENCH_ROLE, PROJECT_DIR, WAYS_IN, load_settings

RUNS = [
    PathResult("tpcb-like", "direct", 1000.0, 8.0), PathResult("tpcb-like", "direct", 900.0, 9.0),
    PathResult("tpcb-like", "haproxy-vip", 760.0, 10.5), PathResult("tpcb-like", "haproxy-vip", 700.0, 11.0),
    PathResult("tpcb-like", "leader-vip", 960.0, 8.3), PathResult("tpcb-like", "leader-vip", 940.0, 8.5),
    PathResult("select-only", "direct", 5000.0, 1.6), PathResult("select-only", "libpq-multihost", 4600.0, 1.7),
]  # fmt: skip


def test_ratios_are_medians_against_direct_in_the_same_mode():
    rows = {(r["mode"], r["path"]): r for r in summarise_pgbench(RUNS)}
    assert rows[("tpcb-like", "direct")]["ratio_to_direct"] == 1.0
    assert rows[("tpcb-like", "haproxy-vip")]["tps"] == 730.0  # median of 760 and 700
    assert rows[("tpcb-like", "haproxy-vip")]["ratio_to_direct"] == round(730 / 950, 3)
    assert rows[("tpcb-like", "leader-vip")]["ratio_to_direct"] == 1.0  # 950 / 950
    assert rows[("select-only", "libpq-multihost")]["ratio_to_direct"] == 0.92
    assert rows[("tpcb-like", "haproxy-vip")]["runs"] == 2


def test_a_mode_without_a_direct_run_has_no_ratio():
    rows = summarise_pgbench([PathResult("tpcb-like", "haproxy-vip", 700.0, 11.0)])
    assert rows == [{"mode": "tpcb-like", "path": "haproxy-vip", "runs": 1, "tps": 700.0, "latency_ms": 11.0,
                     "ratio_to_direct": None}]


def test_outage_rows_keep_unmeasured_runs_visible():
    rows = summarise_outages({"leader-vip": {"switchover": [
        {"write_outage_s": 2.4, "lost_acked": 0}, {"write_outage_s": 1.6, "lost_acked": 0},
        {"write_outage_s": None, "lost_acked": 0}, {"write_outage_s": 2.0, "lost_acked": 1},
    ]}})
    assert rows == [{"path": "leader-vip", "drill": "switchover", "runs": 4, "measured": 3,
                     "median_write_outage_s": 2.0, "max_write_outage_s": 2.4, "lost_acked": 1}]


def test_the_verdict_names_the_winner_and_what_misses_the_target():
    pgbench = summarise_pgbench([*RUNS, PathResult("tpcb-like", "libpq-multihost", 800.0, 10.0)])
    outages = summarise_outages({
        "haproxy-vip": {"switchover": [{"write_outage_s": 2.1, "lost_acked": 0}]},
        "leader-vip": {"switchover": [{"write_outage_s": 1.4, "lost_acked": 0}]},
    })
    lines = verdict_lines(pgbench, outages)
    assert "Least overhead on tpcb-like writes: **leader-vip** at 1.0x direct." in lines[0]
    assert "libpq-multihost (0.842x)" in lines[1] and "haproxy-vip" not in lines[1]  # HAProxy has no 0.95 target
    assert "Shortest switchover write outage: **leader-vip** (median 1.4 s over 1 runs)" in lines[2]
    assert lines[-1] == "- Acknowledged writes lost over every drill run: **0**."


def test_report_has_markdown_json_and_png_and_advice_for_every_way(tmp_path):
    meta = {"started_utc": "2026-12-01 23:00:00 UTC", "leader": "pg1", "clients": 8, "seconds": 20, "rounds": 2,
            "preset": "fast", "drill_runs": 0}
    pgbench = summarise_pgbench(RUNS)
    md = write_report(tmp_path, meta, [r.__dict__ for r in RUNS], pgbench, [])
    text = md.read_text()
    for way in WAYS_IN:
        assert f"- **{way}** (not measured here):" in text  # meta names no paths
    meta = {**meta, "paths": {"direct": "", "haproxy-vip": ""}}
    assert "- **haproxy-vip**: " in render_markdown(meta, pgbench, [])
    assert "Drills were not run" in text and "| tpcb-like | haproxy-vip | 2 | 730.0 |" in text
    assert json.loads((tmp_path / "report.json").read_text())["pgbench"] == [{**r, "target": None} for r in pgbench]
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert render_markdown({**meta, "paths": {}}, pgbench, []) == text


@pytest.mark.parametrize("leader", ["pg1", "pg3"])
def test_bench_paths_go_direct_to_the_leader_on_the_cluster_network(tmp_path, leader):
    (tmp_path / "inventory").symlink_to(PROJECT_DIR / "inventory")
    settings = load_settings(tmp_path, environ={})
    paths = {p.name: p.where for p in bench_paths(settings, leader)}
    assert list(paths) == ["direct", "haproxy-vip", "leader-vip", "libpq-multihost", "pgbouncer"]
    assert paths["direct"] == f"host={settings.routing.node_ips[leader]} port=5432"
    assert paths["haproxy-vip"] == "host=192.168.56.100 port=5000"
    assert paths["leader-vip"] == "host=192.168.56.101 port=5432"
    assert paths["libpq-multihost"] == (
        "host=192.168.56.11,192.168.56.12,192.168.56.13 port=5432,5432,5432 target_session_attrs=read-write"
    )
    assert paths["pgbouncer"] == "host=192.168.56.100 port=6432"  # PgBouncer's read-write port on the VIP
    assert all(settings.password(r) not in " ".join(paths.values()) for r in ("superuser", "app", "ro"))


def test_bench_paths_keep_only_the_ways_asked_for(tmp_path):
    (tmp_path / "inventory").symlink_to(PROJECT_DIR / "inventory")
    settings = load_settings(tmp_path, environ={})
    paths = [p.name for p in bench_paths(settings, "pg1", ("leader-vip", "haproxy-vip"))]
    assert paths == ["direct", "haproxy-vip", "leader-vip"]  # direct always, then WAYS_IN order


def test_pgbouncer_is_left_out_when_the_inventory_has_no_balancers(tmp_path):
    (tmp_path / "inventory").mkdir()
    lab = (PROJECT_DIR / "inventory" / "lab.yml").read_text()
    (tmp_path / "inventory" / "lab.yml").write_text(lab.replace("    balancers:", "    no_balancers:", 1))
    settings = load_settings(tmp_path, environ={})
    assert "pgbouncer" not in [p.name for p in bench_paths(settings, "pg1")]
    assert "pgbouncer" in [p.name for p in bench_paths(load_settings(PROJECT_DIR, environ={}), "pg1")]


def test_the_bench_role_is_made_by_functions_that_grant_nothing_beyond_its_schema():
    from careflow_ha.data.db import prepare_sql

    sql = prepare_sql()
    create = sql[sql.index("FUNCTION careflow_tools.create_bench_role"):sql.index("REVOKE ALL ON FUNCTION")]
    assert f"CREATE ROLE {BENCH_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION " in create
    assert "'PASSWORD %L', verifier)" in create  # the verifier as a quoted literal, never spliced in
    assert f"CREATE SCHEMA {BENCH_SCHEMA} AUTHORIZATION {BENCH_ROLE};" in create
    assert f"ALTER ROLE {BENCH_ROLE} IN DATABASE careflow SET search_path = {BENCH_SCHEMA};" in create
    assert "GRANT" not in create  # no membership, no privilege: it owns its schema, nothing else
    # Both run as their owner, the superuser: pinned search_path, callable by the admin role only.
    assert sql.count("SECURITY DEFINER\nSET search_path = pg_catalog, pg_temp") == 2
    for function in ("drop_bench_role()", "create_bench_role(text)"):
        assert f"REVOKE ALL ON FUNCTION careflow_tools.{function} FROM PUBLIC;" in sql
        assert f"GRANT EXECUTE ON FUNCTION careflow_tools.{function} TO careflow_admin;" in sql
    assert CREATE_BENCH_ROLE.count("%s") == 1 and "careflow_tools.create_bench_role(" in CREATE_BENCH_ROLE


def test_the_bench_role_password_is_random_per_run_and_not_in_its_repr():
    one, two = BenchRole(), BenchRole()
    assert one.password != two.password and len(one.password) >= 32
    assert one.password not in repr(one) and one.password not in str(one)


def test_the_pgbouncer_row_shows_the_085_target_pass_or_miss():
    runs = [PathResult("tpcb-like", "direct", 1000.0, 8.0), PathResult("tpcb-like", "pgbouncer", 860.0, 9.3),
            PathResult("select-only", "direct", 5000.0, 1.6), PathResult("select-only", "pgbouncer", 3000.0, 2.6)]
    rows = {(r["mode"], r["path"]): r for r in with_targets(summarise_pgbench(runs))}
    assert rows[("tpcb-like", "pgbouncer")]["target"] == ">= 0.85x: pass"
    assert rows[("select-only", "pgbouncer")]["target"] is None  # the target is on tpcb-like only
    assert rows[("tpcb-like", "direct")]["target"] is None
    missed = with_targets(summarise_pgbench([runs[0], PathResult("tpcb-like", "pgbouncer", 840.0, 9.5)]))
    assert missed[1]["target"] == ">= 0.85x: miss"
    lines = verdict_lines(summarise_pgbench(runs), [])
    assert "- pgbouncer on tpcb-like: 0.86x direct, target >= 0.85x: pass." in lines
    assert not any("0.95x target" in line for line in lines)  # PgBouncer is a proxy: 0.85x is its target
    md = render_markdown({"started_utc": "t", "leader": "pg1", "clients": 8, "seconds": 20, "rounds": 2,
                          "preset": "fast", "drill_runs": 0}, summarise_pgbench(runs), [])
    assert "| tpcb-like | pgbouncer | 1 | 860.0 | 9.3 | 0.86 | >= 0.85x: pass |" in md
