"""Slow-query analysis on the lab cluster: the parameters are live, `queries top` and `queries report` find a
slow statement sent through HAProxy 5000, and the report reads every database node's log over SSH."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from careflow_ha.settings import PG_NODES
from tests.cli import run_cli

pytestmark = pytest.mark.cluster

#: Over the cluster's log_min_duration_statement (250 ms in inventory/group_vars/all.yml): it must be logged.
SLOW_S = 0.4


def test_the_cluster_preloads_pg_stat_statements_and_logs_for_pgbadger(cluster):
    with psycopg.connect(cluster.dsn("rw", "admin", "careflow"), autocommit=True) as conn:  # pg_monitor reads them
        show = {name: conn.execute(f"SHOW {name}").fetchone()[0]
                for name in ("shared_preload_libraries", "logging_collector", "log_min_duration_statement")}
        has_extension = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'").fetchone()
    assert show["shared_preload_libraries"].split(",") == ["pg_cron", "pg_stat_statements", "auto_explain"]
    assert show["logging_collector"] == "on" and show["log_min_duration_statement"] == "250ms"
    assert has_extension, "provisioning (emr-prepare.sql.j2) did not create pg_stat_statements in careflow"


def test_a_slow_statement_through_5000_is_in_queries_top_and_in_the_nodes_logs(cluster, tmp_path: Path):
    with psycopg.connect(cluster.dsn("rw", "app"), autocommit=True) as conn:
        conn.execute(f"SELECT pg_sleep({SLOW_S}) AS careflow_lab_report_probe, 'Kim Minsu 010-9876-5432' AS owner")
    code, out, err = run_cli("queries", "top", "--by", "mean", "--limit", "20", "--format", "json")
    assert code == 0, err
    top = [s for s in json.loads(out)["statements"] if "careflow_lab_report_probe" in s["query"]]
    assert len(top) == 1 and top[0]["mean_ms"] >= SLOW_S * 1000, top
    assert "Kim Minsu" not in top[0]["query"]  # pg_stat_statements keeps the shape: $1, $2

    code, out, err = run_cli("queries", "report", "--out", str(tmp_path), "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    probe = [e for e in data["slowest"] if "careflow_lab_report_probe" in e["query"]]
    assert len(probe) == 1 and probe[0]["duration_ms"] >= SLOW_S * 1000, data["slowest"]
    report = json.loads((Path(data["report_dir"]) / "report.json").read_text())
    assert {Path(p).parts[1] for p in report["logs"]} == set(PG_NODES)  # logs/<node>/postgresql-<day>.log
    folder = Path(data["report_dir"])
    assert sorted(p.name for p in folder.iterdir()) == ["pgbadger.html", "report.json", "report.md"]  # no raw log
    for path in folder.iterdir():
        assert "Kim Minsu" not in path.read_text(errors="replace"), path.name
