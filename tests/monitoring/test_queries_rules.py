"""Pure logic of the query tools: readiness checks (driver faked), plan summaries, pgbadger summaries, and
fetching the nodes' logs (ssh faked)."""

from __future__ import annotations

import io
import shlex
import subprocess
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from careflow_ha.data.explain import parameter_count, summarise
from careflow_ha.errors import EnvironmentProblem, UsageError
from careflow_ha.monitoring import pgbadger
from careflow_ha.monitoring.pgbadger import NodeLogs, anonymise
from careflow_ha.monitoring.pgbadger import summarise as badger_summary
from careflow_ha.monitoring.queries import check_ready, top_statements


class _Cursor:
    def __init__(self, row: tuple | None) -> None:
        self.row = row

    def fetchone(self) -> tuple | None:
        return self.row


class _FakeConn:
    """Answers the readiness queries from a table; anything else is a test bug."""

    autocommit = True

    def __init__(self, preload: str, extension: bool) -> None:
        self.answers = {"shared_preload_libraries": (preload,), "pg_extension": (1,) if extension else None,
                        "current_database": ("careflow",)}

    def execute(self, query: str, params: Any = None) -> _Cursor:
        for key, row in self.answers.items():
            if key in query:
                return _Cursor(row)
        raise AssertionError(f"unexpected query {query!r}")


@pytest.mark.parametrize(("preload", "extension", "needle"), [
    ("pg_cron", True, "shared_preload_libraries='pg_cron'"),
    ("pg_cron", False, "not preloaded"),  # the restart comes first: it is the slower fix
    ("pg_cron, pg_stat_statements", False, "CREATE EXTENSION pg_stat_statements"),
])
def test_check_ready_names_the_fix(preload: str, extension: bool, needle: str) -> None:
    with pytest.raises(EnvironmentProblem) as info:
        check_ready(_FakeConn(preload, extension))  # type: ignore[arg-type]
    assert needle in str(info.value) and info.value.exit_code == 3


def test_check_ready_passes_when_both_are_there() -> None:
    check_ready(_FakeConn("pg_cron,pg_stat_statements", True))  # type: ignore[arg-type]


@pytest.mark.parametrize(("by", "limit"), [("slowest", 10), ("total", 0)])
def test_top_rejects_bad_arguments_before_any_query(by: str, limit: int) -> None:
    with pytest.raises(UsageError):
        top_statements(_FakeConn("", False), by=by, limit=limit)  # type: ignore[arg-type]


_PLAN = {
    "Plan": {"Node Type": "Aggregate", "Plan Rows": 1, "Actual Rows": 1, "Shared Hit Blocks": 40,
             "Shared Read Blocks": 2, "Plans": [
                 {"Node Type": "Append", "Subplans Removed": 3, "Plans": [
                     {"Node Type": "Seq Scan", "Relation Name": "lab_results_p2026_01_c1", "Schema": "public"},
                     {"Node Type": "Index Scan", "Relation Name": "lab_results_p2026_01_c2", "Schema": "public"},
                 ]}]},
    "Planning Time": 0.51234, "Execution Time": 1.23456,
}


def test_plan_summary_of_an_analyzed_plan() -> None:
    s = summarise(_PLAN, "analyze")
    assert s.node_types == {"Aggregate": 1, "Append": 1, "Seq Scan": 1, "Index Scan": 1}
    assert s.relations == ["public.lab_results_p2026_01_c1", "public.lab_results_p2026_01_c2"]
    assert (s.subplans_removed, s.actual_rows, s.execution_ms, s.planning_ms) == (3, 1, 1.235, 0.512)
    assert (s.shared_hit, s.shared_read) == (40, 2)
    assert "2 relation(s)" in s.one_line() and "1.235 ms" in s.one_line()


def test_plan_summary_of_a_generic_plan_reports_no_execution() -> None:
    s = summarise(_PLAN, "generic")
    assert s.execution_ms is None and s.actual_rows is None and s.shared_hit is None
    assert "est." in s.one_line()


@pytest.mark.parametrize(("statement", "n"), [
    ("SELECT 1", 0), ("SELECT $1", 1), ("SELECT * FROM t WHERE a = $2 AND b = $10", 10), ("SELECT '$x'", 0)])
def test_parameter_count(statement: str, n: int) -> None:
    assert parameter_count(statement) == n


@pytest.mark.parametrize(("raw", "shown"), [
    ("SELECT pg_sleep(0.4)", "SELECT pg_sleep(?)"),
    ("UPDATE owners SET phone = '010-1234-5678' WHERE owner_id = 42", "UPDATE owners SET phone = ? WHERE owner_id = ?"),
    ("ALTER ROLE x PASSWORD 'it''s secret'", "ALTER ROLE x PASSWORD ?"),
    ("SELECT * FROM lab_results_p2024_07 WHERE a = $1", "SELECT * FROM lab_results_p2024_07 WHERE a = $1"),
])
def test_anonymise(raw: str, shown: str) -> None:
    assert anonymise(raw) == shown


def test_badger_summary_reads_pgbadger12_nesting_and_sorts() -> None:
    badger = {
        "top_slowest": {"postgres": [["12.5", "t1", "SELECT 'a'", "careflow", "app"],
                                     ["403.0", "t2", "SELECT pg_sleep(0.4)", "careflow", "postgres"]]},
        "normalyzed_info": {"postgres": {"select ?;": {"count": 3, "duration": 30.0, "max": "20"},
                                         "select pg_sleep(?.?);": {"count": 1, "duration": 403.0, "max": "403"}}},
        "overall_stat": {"prepare": 0, "postgres": {"queries_number": 4, "first_log_ts": "a", "last_log_ts": "b",
                                                     "queries_duration": {"execute": 433.0, "bind": 0.5}}},
    }
    s = badger_summary(badger, limit=5)
    assert [e["duration_ms"] for e in s["slowest"]] == [403.0, 12.5]
    assert s["slowest"][1]["query"] == "SELECT ?"
    assert [e["query"] for e in s["by_total_time"]] == ["select pg_sleep(?.?);", "select ?;"]
    assert s["by_total_time"][1]["mean_ms"] == 10.0
    assert (s["queries_logged"], s["queries_total_ms"]) == (4, 433.5)


def test_badger_summary_of_an_empty_log() -> None:
    assert badger_summary({}) == {"queries_logged": 0, "queries_total_ms": 0.0, "first_log": None,
                                  "last_log": None, "slowest": [], "by_total_time": []}


# -- the nodes' logs over SSH (subprocess faked: the ssh boundary) --------------------------------------------


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class FakeSsh:
    """Answers each node's ssh with (rc, stdout, stderr) from ``answers``; records the far command."""

    def __init__(self, answers: dict[str, tuple[int, bytes, bytes]]) -> None:
        self.answers, self.asked = answers, []

    def __call__(self, argv, **kwargs):
        node, far = argv[-2], argv[-1]
        self.asked.append((node, far))
        rc, out, err = self.answers[node]
        return subprocess.CompletedProcess(argv, rc, out, err)


def _node_logs(tmp_path: Path, monkeypatch, answers, lines: list[str]) -> NodeLogs:
    monkeypatch.setattr(pgbadger.subprocess, "run", FakeSsh(answers))
    settings = SimpleNamespace(state_dir=tmp_path)  # ssh_argv reads the ssh_config path from it
    return NodeLogs(settings, ("pg1", "pg2", "pg3"), log=lines.append)  # type: ignore[arg-type]


def test_node_logs_bring_each_reachable_nodes_files_and_name_the_skipped(tmp_path: Path, monkeypatch) -> None:
    lines: list[str] = []
    source = _node_logs(tmp_path, monkeypatch, {
        "pg1": (0, _tar({"postgresql-Thu.log": b"a\n", "postgresql-Wed.log": b"b\n"}), b""),
        "pg2": (255, b"", b"ssh: connect to host 127.0.0.1 port 2222: Connection refused\n"),
        "pg3": (2, b"", b"tar: postgresql-*.log: Cannot stat: No such file or directory\n"),
    }, lines)
    found = source.collect(tmp_path / "logs")
    assert [p.relative_to(tmp_path / "logs").as_posix() for p in found] == ["pg1/postgresql-Thu.log",
                                                                             "pg1/postgresql-Wed.log"]
    assert found[0].read_bytes() == b"a\n"
    assert lines == ["queries: pg2 skipped: ssh: connect to host 127.0.0.1 port 2222: Connection refused",
                     "queries: pg3 skipped: tar: postgresql-*.log: Cannot stat: No such file or directory"]


def test_node_logs_refuse_an_archive_that_writes_outside_its_folder(tmp_path: Path, monkeypatch) -> None:
    lines: list[str] = []
    source = _node_logs(tmp_path, monkeypatch, {
        "pg1": (0, _tar({"../../escaped.log": b"x"}), b""),
        "pg2": (0, _tar({"postgresql-Thu.log": b"ok\n"}), b""),
        "pg3": (0, b"not a tar archive", b""),
    }, lines)
    found = source.collect(tmp_path / "logs")
    assert [p.parent.name for p in found] == ["pg2"]
    assert not (tmp_path / "escaped.log").exists()
    assert [line.split(":")[1].strip() for line in lines] == ["pg1 skipped", "pg3 skipped"]


def test_node_logs_with_no_node_readable_is_one_error_naming_the_way_out(tmp_path: Path, monkeypatch) -> None:
    source = _node_logs(tmp_path, monkeypatch, {n: (255, b"", b"refused\n") for n in ("pg1", "pg2", "pg3")}, [])
    with pytest.raises(EnvironmentProblem, match=r"no PostgreSQL log could be read from pg1, pg2, pg3.*--log FILE"):
        source.collect(tmp_path / "logs")


def test_the_remote_script_asks_the_server_where_its_logs_are(tmp_path: Path) -> None:
    script = NodeLogs(SimpleNamespace(state_dir=tmp_path), ("pg1",), pg_port=5433).remote_script()  # type: ignore[arg-type]
    assert subprocess.run(["sh", "-n", "-c", script], check=False).returncode == 0  # valid shell
    words = shlex.split(script.split('"$(')[1].split(')"')[0])
    assert words[:4] == ["runuser", "-u", "postgres", "--"] and words[words.index("-p") + 1] == "5433"
    assert "current_setting('data_directory')" in words[-1] and script.endswith("tar -cf - postgresql-*.log")
