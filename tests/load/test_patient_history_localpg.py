"""vet.patient_history's query: the same rows as the plain join on visit_id, and the benchmark's shape."""

from __future__ import annotations

import random

import psycopg
import pytest

from careflow_ha.data.bench_scale import history_through_visits
from careflow_ha.load import emr

pytestmark = pytest.mark.localpg

PLAIN_JOIN = ("SELECT v.visited_at, v.reason, r.test_code, r.value, r.flag FROM visits v "
              "LEFT JOIN lab_results r ON r.pet_id = v.pet_id AND r.visit_id = v.visit_id "
              "WHERE v.pet_id = %s ORDER BY v.visited_at DESC, r.test_code LIMIT 200")


def test_history_returns_every_result_of_every_visit(emr_pg):
    with psycopg.connect(emr_pg.dsn("app"), autocommit=True) as conn:
        pool = emr.load_ids(emr_pg.dsn("app"), sample=50)
        rng = random.Random(3)
        checked = 0
        for _ in range(10):  # the generic plan is built on the first call and reused after
            state = rng.getstate()
            rows = emr.patient_history(conn, pool, rng)
            rng.setstate(state)
            pet_id, _clinic = pool.pet(rng)
            expected = conn.execute(PLAIN_JOIN, (pet_id,)).fetchall()
            assert rows == expected
            checked += sum(1 for r in rows if r[2] is not None)
        assert checked > 0, "some histories carry results"
        assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0] >= 1, "prepared"


def test_a_result_outside_the_window_is_not_found_so_the_window_is_the_contract(emr_pg):
    """What the RESULT_WINDOW invariant costs if broken: a result dated after the window stays out."""
    with psycopg.connect(emr_pg.dsn("app")) as conn:
        pet, clinic, visit, at = conn.execute(
            "SELECT pet_id, clinic_id, visit_id, visited_at FROM visits ORDER BY visited_at LIMIT 1").fetchone()
        conn.execute("INSERT INTO lab_results (clinic_id, collected_at, pet_id, visit_id, test_code, value, flag) "
                     "VALUES (%s, %s + interval '40 days', %s, %s, 'ZZLATE', 1, 'N')", (clinic, at, pet, visit))
        pool = emr.IdPool([clinic], {clinic: [1]}, [(pet, clinic)], [visit], ["CREA"])
        codes = {r[2] for r in emr.patient_history(conn, pool, random.Random(1))}
        assert "ZZLATE" not in codes
        conn.rollback()


def test_the_load_query_is_the_shape_the_benchmark_measured():
    assert history_through_visits("lab_results", "visits") == emr.PATIENT_HISTORY
