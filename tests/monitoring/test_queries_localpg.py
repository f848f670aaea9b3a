"""``queries top`` and ``queries report`` against the local server, and EXPLAIN evidence on the EMR data."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
import yaml

from careflow_ha.data.explain import explain
from careflow_ha.monitoring.pgbadger import LOG_LINE_PREFIX
from careflow_ha.monitoring.rules import PROJECT_DIR
from tests.cli import run_cli
from tests.monitoring.conftest import reset_statements

pytestmark = pytest.mark.localpg

#: The cluster's parameters (Patroni's DCS config), as the inventory sets them.
FRAGMENT = yaml.safe_load((PROJECT_DIR / "inventory" / "group_vars" / "all.yml").read_text())[
    "careflow_postgresql_parameters"]


def _password(dsn: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(dsn)["password"]


def test_local_server_runs_the_clusters_logging_and_preload(local_pg) -> None:
    with psycopg.connect(local_pg.superuser_dsn) as conn:
        prefix = conn.execute("SHOW log_line_prefix").fetchone()[0]
        preload = conn.execute("SHOW shared_preload_libraries").fetchone()[0]
        track = conn.execute("SHOW pg_stat_statements.track").fetchone()[0]
    assert prefix == LOG_LINE_PREFIX == FRAGMENT["log_line_prefix"]
    assert preload.split(",") == FRAGMENT["shared_preload_libraries"].split(",")
    assert track == FRAGMENT["pg_stat_statements.track"]


def test_top_puts_a_query_run_n_times_first_with_its_calls(local_pg, pgss) -> None:
    calls = 37
    reset_statements(pgss)
    with psycopg.connect(local_pg.app_dsn, autocommit=True) as conn:
        for i in range(calls):
            conn.execute("SELECT %s::int * 7 AS careflow_top_probe", (i,))
    code, out, err = run_cli("queries", "top", "--by", "calls", "--limit", "3", "--format", "json",
                             "--explain", "--dsn", local_pg.app_dsn)
    assert code == 0, err
    data = json.loads(out)
    first = data["statements"][0]
    assert "careflow_top_probe" in first["query"] and "$1" in first["query"]
    assert first["calls"] == calls and first["rows"] == calls
    assert first["toplevel"] is True and first["mean_ms"] >= 0
    # A parameterised statement gets its generic plan, not an execution.
    assert first["plan"]["mode"] == "generic" and first["plan"]["execution_ms"] is None
    assert "Result" in first["plan"]["node_types"]
    assert _password(local_pg.app_dsn) not in out + err
    assert "***" in err  # the target is shown, redacted

    code, out, err = run_cli("queries", "top", "--by", "calls", "--limit", "3", "--dsn", local_pg.app_dsn)
    assert code == 0, err
    assert "careflow_top_probe" in out and f"| {calls} " in out


def test_top_names_the_fix_when_the_extension_is_missing(local_pg, pgss) -> None:
    dsn = local_pg.server.dsn("superuser", "postgres")  # pg_stat_statements is created in careflow only
    code, out, err = run_cli("queries", "top", "--dsn", dsn)
    assert code == 3
    message = [line for line in err.splitlines() if line.startswith("careflow-ha: error:")]
    assert len(message) == 1 and "CREATE EXTENSION pg_stat_statements" in message[0]
    assert "Traceback" not in err and _password(dsn) not in err


def test_explain_measures_a_pruned_query_and_never_writes(emr, local_pg) -> None:
    with psycopg.connect(emr.app_dsn, autocommit=True) as conn:
        leaves = conn.execute("SELECT count(*) FROM pg_partition_tree('lab_results') WHERE isleaf").fetchone()[0]
        clinic, month = conn.execute(
            "SELECT clinic_id, date_trunc('month', collected_at) FROM lab_results ORDER BY result_id LIMIT 1"
        ).fetchone()
        before = conn.execute("SELECT count(*) FROM lab_results").fetchone()[0]
        plan = explain(conn, f"SELECT count(*), avg(value) FROM lab_results WHERE clinic_id = {clinic} "
                             f"AND collected_at >= '{month.isoformat()}' AND collected_at < "
                             f"'{month.isoformat()}'::timestamptz + interval '1 month'")
        assert plan.mode == "analyze", plan.note
        assert plan.execution_ms is not None and plan.actual_rows == 1
        # Pruning: one clinic in one month reads one leaf (maybe its default sibling), not all of them.
        assert 1 <= len(plan.relations) <= 2 < leaves
        assert all(r.startswith("lab_results_") for r in plan.relations)
        assert plan.shared_hit is not None and plan.shared_hit + plan.shared_read > 0

        generic = explain(conn, "SELECT count(*) FROM lab_results WHERE clinic_id = $1 AND pet_id = $2")
        assert generic.mode == "generic", generic.note
        assert generic.execution_ms is None and generic.planning_ms is not None
        # Every leaf the generic plan may read (run-time pruning picks per call), none removed by NULLs.
        assert len(generic.relations) == leaves and generic.subplans_removed == 0

        # Normalised text that is not SQL (a typed literal became $1): skipped with the reason, and the
        # next statement still gets its plan (nothing is left prepared or in a failed transaction).
        broken = explain(conn, "SELECT count(*) FROM lab_results WHERE collected_at >= now() - interval $1")
        assert broken.mode == "skipped" and "interval $n" in broken.note
        again = explain(conn, "SELECT count(*) FROM lab_results WHERE clinic_id = $1")
        assert again.mode == "generic", again.note

        write = explain(conn, "INSERT INTO lab_results SELECT * FROM lab_results LIMIT 5")
        assert write.mode == "skipped"
        sneaky = explain(conn, "SELECT nextval(pg_get_serial_sequence('lab_results', 'result_id'))")
        assert sneaky.mode == "skipped" and "read-only" in sneaky.note
        assert conn.execute("SELECT count(*) FROM lab_results").fetchone()[0] == before
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_report_names_the_slow_query_from_the_server_log(local_pg, tmp_path: Path) -> None:
    with psycopg.connect(local_pg.superuser_dsn, autocommit=True) as conn:
        conn.execute("SET log_min_duration_statement = 100")
        conn.execute("SELECT pg_sleep(0.4) AS careflow_report_probe, 'Kim Minsu 010-9876-5432' AS owner")
        conn.execute("SELECT 1 AS careflow_fast_probe")  # under the threshold: not logged
    code, out, err = run_cli("queries", "report", "--log", str(local_pg.server.log_file), "--out",
                             str(tmp_path), "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    folder = Path(data["report_dir"])
    assert folder.parent == tmp_path
    probe = [e for e in data["slowest"] if "careflow_report_probe" in e["query"]]
    assert len(probe) == 1 and probe[0]["duration_ms"] >= 400
    assert probe[0]["query"].startswith("SELECT pg_sleep(?)")  # literals anonymised
    assert sorted(p.name for p in folder.iterdir()) == ["pgbadger.html", "report.json", "report.md"]
    for path in folder.iterdir():  # an owner's name in a literal never reaches the report
        assert "Kim Minsu" not in path.read_text(errors="replace"), path.name
    assert not [e for e in data["slowest"] if "careflow_fast_probe" in e["query"]]
    md = (folder / "report.md").read_text()
    assert "careflow_report_probe" in md.split("## Slowest statements")[1].split("##")[0]
    assert "careflow_report_probe" in (folder / "pgbadger.html").read_text(errors="replace")
    assert json.loads((folder / "report.json").read_text())["summary"]["slowest"][0]["duration_ms"] >= 400


@pytest.mark.parametrize(("args", "needle"), [
    (("--log", "/nonexistent/postgresql.log"), "no such file"),
])
def test_report_bad_input_is_one_line_exit_2(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    code, out, err = run_cli("queries", "report", "--out", str(tmp_path), *args)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
