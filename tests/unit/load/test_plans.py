"""The load report's plans section: which operations, one source for their statements, failure as one line."""

from __future__ import annotations

import ast
import functools
import json
import random

import pytest

from careflow_ha.errors import UsageError
from careflow_ha.load import emr, plans
from careflow_ha.load.analysis import Request
from careflow_ha.load.report import write_report
from careflow_ha.load.runner import LoadConfig
from careflow_ha.settings import PROJECT_DIR
from tests.unit.load.test_load_report import META, T0

USERS = PROJECT_DIR / "careflow_ha" / "load" / "users.py"


def _user_operation_names() -> set[str]:
    """The names in users.py's ``operations = {...}`` tables, read with ast (importing it patches for gevent)."""
    names = set()
    for node in ast.walk(ast.parse(USERS.read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "operations" for t in node.targets) \
                and isinstance(node.value, ast.Dict):
            names |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    return names


def test_every_operation_the_users_run_is_planned_or_says_why_not() -> None:
    assert set(emr.STATEMENTS) | set(emr.NOT_EXPLAINED) == _user_operation_names()
    assert not set(emr.STATEMENTS) & set(emr.NOT_EXPLAINED)


def test_the_builders_draw_real_values_from_the_pool() -> None:
    pool = emr.IdPool([1, 2], {1: [10], 2: [20]}, [(101, 1), (202, 2)], [5001, 5002], ["ALT", "BUN"])
    for name, stmt in emr.STATEMENTS.items():
        query, params = stmt.build(pool, random.Random(1))
        values = list(params.values()) if isinstance(params, dict) else list(params)
        assert values and all(v is not None for v in values), name
        assert query.count("%s") + query.count("%(") == len(values), name
    assert [s.read_only for s in emr.STATEMENTS.values()].count(False) == 1  # post_results: plain EXPLAIN only


OPS = [{"op": "vet.lab_trend", "p95_ms": 12.0, "requests": 40}, {"op": "reception.open_visit", "p95_ms": 30.0},
       {"op": "setup.load_ids", "p95_ms": 900.0}, {"op": "analyst.clinic_daily", "p95_ms": None},
       {"op": "vet.patient_history", "p95_ms": 12.0}, {"op": "lab.post_results", "p95_ms": 2.0}]


def test_slowest_are_the_emr_operations_with_the_highest_p95() -> None:
    assert [o["op"] for o in plans.slowest(OPS, 3)] == ["reception.open_visit", "vet.lab_trend",
                                                         "vet.patient_history"]
    assert plans.slowest([], 3) == [] and plans.slowest(OPS, 0) == []


def test_an_unreachable_target_is_one_line_without_the_password(tmp_path) -> None:
    dsn = "postgresql://careflow_ro:s3cretPassw0rd@127.0.0.1:1/careflow?connect_timeout=2"
    section = plans.collect(OPS, dsn, dsn)
    assert section["status"] == "unavailable" and section["operations"] == []
    assert section["note"].startswith("plans unavailable: cannot connect to ") and "\n" not in section["note"]
    assert "s3cretPassw0rd" not in section["note"] and "password=***" in section["note"]
    # Through the report: the section is there, the run's report is written, and no file holds the password.
    emr_rows = [Request(T0 + i, "vet.lab_trend", "ro", 1, True, 9.0, "pg2", True) for i in range(20)]
    rep = write_report(tmp_path, emr_rows, dict(META), [], T0, T0 + 30, secrets=["s3cretPassw0rd"],
                       plans=functools.partial(plans.collect, dsn_rw=dsn, dsn_ro=dsn))
    md = (tmp_path / "report.md").read_text()
    assert "## Slowest operations and their plans\n\nplans unavailable: cannot connect to " in md
    assert json.loads((tmp_path / "report.json").read_text())["plans"]["status"] == "unavailable" == \
        rep["plans"]["status"]
    assert not (tmp_path / "plans.json").exists()


def test_a_report_without_a_collector_says_so(tmp_path) -> None:
    write_report(tmp_path, [], dict(META), [], T0, T0 + 30)
    assert "## Slowest operations and their plans\n\nNot collected for this run" in (tmp_path / "report.md").read_text()


def test_a_collector_that_breaks_costs_the_section_not_the_report(monkeypatch) -> None:
    monkeypatch.setattr(plans, "_collect", lambda *a: 1 / 0)
    assert plans.collect(OPS, "postgresql://x@h/db", "postgresql://x@h/db")["note"] == \
        "plans unavailable: ZeroDivisionError: division by zero"


@pytest.mark.parametrize("n", [-1, 99])
def test_the_plan_count_is_checked(tmp_path, n: int) -> None:
    with pytest.raises(UsageError, match="--plans"):
        LoadConfig(users=1, spawn_rate=1, duration_s=5, dsn_rw="postgresql://h/db", dsn_ro="postgresql://h/db",
                   reports_dir=tmp_path, plans=n).validated()
