"""The load report's slowest operations: their plans, and index advice that EXPLAIN (with HypoPG) backs.

A server of this module's own: the tests drop and create indexes on lab_results.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from careflow_ha.data.localserver import LocalPostgres
from careflow_ha.load import plans
from careflow_ha.load.analysis import Request
from careflow_ha.load.report import write_report
from careflow_ha.load.runner import passwords
from tests.load.conftest import emr_server
from tests.unit.load.test_load_report import META, T0

pytestmark = pytest.mark.localpg

NEEDED = "CREATE INDEX ON public.lab_results (pet_id, test_code);"


@pytest.fixture(scope="module")
def advisor_pg() -> Iterator[LocalPostgres]:
    """20,000 lab results (3 clinics, 2 months): enough rows per leaf for an index to pay."""
    with emr_server(20_000) as server:
        yield server


def _plan(server: LocalPostgres, op: str) -> dict:
    section = plans.collect([{"op": op, "p95_ms": 10.0, "requests": 5}], server.dsn("app"), server.dsn("ro"), n=1)
    assert section["status"] == "ok", section["note"]
    (entry,) = section["operations"]
    return entry


def _sql(server: LocalPostgres, statement: str) -> None:
    with psycopg.connect(server.dsn("app"), autocommit=True) as conn:
        conn.execute(statement)


def test_an_operation_an_index_already_serves_gets_none_with_the_evidence(advisor_pg) -> None:
    e = _plan(advisor_pg, "vet.patient_history")
    assert e["endpoint"] == "ro" and e["plan"]["mode"] == "analyze" and e["plan"]["execution_ms"] is not None
    assert any(ix.endswith("pet_id_collected_at_idx") for ix in e["plan"]["indexes"]), e["plan"]
    assert e["advice"]["verdict"] == "none" and e["advice"]["reason"], e["advice"]
    assert e["advice"]["recommended"] == []


def test_without_the_pet_index_lab_trend_is_advised_exactly_the_index_it_needs(advisor_pg, tmp_path: Path) -> None:
    _sql(advisor_pg, "DROP INDEX lab_results_pet_idx")
    try:
        e = _plan(advisor_pg, "vet.lab_trend")
        advice = e["advice"]
        assert advice["verdict"] == "recommended", advice
        (rec,) = advice["recommended"]
        # The clinic is left out: a per-clinic leaf holds one clinic. test_code is what the old index lacked.
        assert rec["statement"] == NEEDED
        assert rec["used"] and rec["ratio"] <= 0.7 and rec["after_cost"] < rec["before_cost"]
        assert set(rec["before_nodes"]) == {"Seq Scan"}
        assert {"Index Scan", "Bitmap Heap Scan"} & set(rec["after_nodes"]), rec
        assert rec["relations"] and all(r.startswith("lab_results_p") for r in rec["relations"])
        # Nothing of the trial survives it: no index was built.
        with psycopg.connect(advisor_pg.dsn("app")) as conn:
            assert conn.execute("SELECT count(*) FROM pg_indexes WHERE indexdef LIKE '%(pet_id, test_code)%'"
                                ).fetchone()[0] == 0

        # The same, through the report: section, plan tree, EXPLAIN documents, and no password anywhere.
        reqs = [Request(T0 + i, op, ep, 1, True, ms, "pg", ep == "ro")
                for i, (op, ep, ms) in enumerate([("vet.lab_trend", "ro", 40.0), ("vet.patient_history", "ro", 9.0),
                                                  ("lab.post_results", "rw", 7.0), ("reception.open_visit", "rw", 1.0)]
                                                 * 5)]
        rw, ro = advisor_pg.dsn("app"), advisor_pg.dsn("ro")
        rep = write_report(tmp_path, reqs, dict(META), [], T0, T0 + 30, secrets=passwords(rw, ro),
                           plans=functools.partial(plans.collect, dsn_rw=rw, dsn_ro=ro, n=3))
        md = (tmp_path / "report.md").read_text()
        section = md[md.index("## Slowest operations and their plans"):md.index("## Charts")]
        print(section)  # the sample in the change's description
        assert [e["op"] for e in rep["plans"]["operations"]] == ["vet.lab_trend", "vet.patient_history",
                                                                 "lab.post_results"]
        assert f"- **index recommended**: `{NEEDED}`" in section and "ratio 0." in section
        assert "### lab.post_results" in section and "plan: plan: ModifyTable" in section  # planned, not run
        assert "Seq Scan on lab_results_p" in (tmp_path / "plans.md").read_text()
        assert set(json.loads((tmp_path / "plans.json").read_text())) == {"vet.lab_trend", "vet.patient_history",
                                                                          "lab.post_results"}

        # Built for real, the index serves the operation, and the advisor asks for nothing more.
        _sql(advisor_pg, NEEDED)
        after = _plan(advisor_pg, "vet.lab_trend")
        assert after["advice"]["verdict"] == "none", after["advice"]
        assert any(ix.endswith("pet_id_test_code_idx") for ix in after["plan"]["indexes"]), after["plan"]
    finally:
        _sql(advisor_pg, "DROP INDEX IF EXISTS lab_results_pet_id_test_code_idx")
        _sql(advisor_pg, "CREATE INDEX IF NOT EXISTS lab_results_pet_idx ON lab_results (pet_id, collected_at)")


def test_without_hypopg_the_plans_are_listed_and_one_line_names_the_fix(advisor_pg) -> None:
    with psycopg.connect(advisor_pg.dsn("superuser"), autocommit=True) as conn:
        conn.execute("DROP EXTENSION hypopg")
    try:
        section = plans.collect([{"op": "vet.lab_trend", "p95_ms": 10.0}], advisor_pg.dsn("app"),
                                advisor_pg.dsn("ro"), n=1)
        assert section["note"].startswith("hypopg is not installed") and "postgresql-15-hypopg" in section["note"]
        (e,) = section["operations"]
        assert e["plan"]["mode"] == "analyze" and e["advice"]["verdict"] == "unavailable"
        md = "\n".join(plans.markdown(section))
        assert md.count("postgresql-15-hypopg") == 1 and "- plan: analyze:" in md
    finally:
        with psycopg.connect(advisor_pg.dsn("superuser"), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION hypopg")
