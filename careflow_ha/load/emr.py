"""The EMR operations the load users run, and the ids they draw from the loaded data set.

Each operation is one function ``(conn, pool, rng) -> rows`` on an autocommit
connection; writes that need several statements use one explicit
transaction, so every acknowledged write is committed.

An operation with one statement worth planning takes it from a builder
``(pool, rng) -> (sql, params)``, and :data:`STATEMENTS` names each builder
as the load report names the operation: the report EXPLAINs what the load
ran, from the same source (load/plans.py).

Rows the load creates (owners, pets, visits) get ids from LOAD_ID_MIN
upwards: the data set's natural ids stay small, so load rows are easy to
tell apart (and to delete) afterwards.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from careflow_ha.data import clock
from careflow_ha.dsn import pooler_safe, prepares

#: Ids of rows created by load tests start here (the generator's ids are dense from 1).
LOAD_ID_MIN = 1 << 50
LOAD_ID_MAX = (1 << 62) - 1

PANELS = ("CBC", "CHEM")
SPECIES_BREEDS = {
    "dog": ("Maltese", "Poodle", "Pomeranian", "Mixed", "Shih Tzu", "Bichon Frise", "Welsh Corgi", "Jindo"),
    "cat": ("Korean Shorthair", "Russian Blue", "Persian", "Scottish Fold", "Siamese", "Bengal"),
}
REASONS = ("정기 건강검진 (annual wellness)", "예방접종 전 검사 (pre-vaccination check)",
           "수술 전 검사 (pre-anaesthetic bloodwork)", "구토/설사 (vomiting, diarrhoea)", "식욕 부진 (inappetence)")


class NoData(Exception):
    """The EMR tables are empty or missing: load the demo data set first."""


@dataclass
class IdPool:
    """Ids sampled once per Locust process from the loaded data set."""

    clinics: list[int]
    vets_by_clinic: dict[int, list[int]]
    pets: list[tuple[int, int]]  # (pet_id, clinic_id)
    visits: list[int]  # recent visits: what a lab posts results for
    test_codes: list[str]
    opened: list[int] = field(default_factory=list)  # visits this process opened (bounded)

    def pet(self, rng: random.Random) -> tuple[int, int]:
        return rng.choice(self.pets)

    def vet(self, rng: random.Random, clinic_id: int) -> int:
        return rng.choice(self.vets_by_clinic[clinic_id])

    def visit(self, rng: random.Random) -> int:
        if self.opened and rng.random() < 0.7:
            return rng.choice(self.opened)
        return rng.choice(self.visits)

    def remember_visit(self, visit_id: int) -> None:
        self.opened.append(visit_id)
        if len(self.opened) > 500:
            del self.opened[:250]


def load_ids(dsn: str, sample: int = 5000, seed: int | None = None) -> IdPool:
    """Sample ids from the data set (a few small queries, once per process).

    With ``seed``, the same data gives the same sample (the report's plans draw from it): the queries then
    run in one transaction after ``setseed``, so through PgBouncer they share the backend that was seeded.
    """
    with psycopg.connect(dsn, autocommit=True, **pooler_safe(dsn, {"connect_timeout": 10})) as conn, (
            conn.transaction() if seed is not None else contextlib.nullcontext()):
        if seed is not None:
            conn.execute("SELECT setseed(%s)", (random.Random(seed).uniform(-1, 1),))
        if conn.execute("SELECT to_regclass('public.visits')").fetchone()[0] is None:
            raise NoData("the EMR schema is missing; run `careflow-ha data migrate` and load data first")
        vets: dict[int, list[int]] = {}
        for vet_id, clinic_id in conn.execute("SELECT vet_id, clinic_id FROM vets"):
            vets.setdefault(clinic_id, []).append(vet_id)
        pets = [(r[0], r[1]) for r in conn.execute(
            "SELECT pet_id, clinic_id FROM pets WHERE pet_id < %s ORDER BY random() LIMIT %s", (LOAD_ID_MIN, sample))]
        pets = [p for p in pets if p[1] in vets]
        visits = [r[0] for r in conn.execute(
            "SELECT visit_id FROM visits WHERE visit_id < %s ORDER BY visited_at DESC LIMIT %s",
            (LOAD_ID_MIN, max(100, sample // 5)))]
        codes = [r[0] for r in conn.execute("SELECT test_code FROM lab_test_catalog ORDER BY test_code")]
    if not pets or not visits or not codes:
        raise NoData("the EMR tables hold no pets, visits or lab tests; load the demo data (`careflow-ha up` "
                     "or `careflow-ha data load`) first")
    return IdPool(sorted(vets), vets, pets, visits, codes)


def new_id(rng: random.Random) -> int:
    return rng.randint(LOAD_ID_MIN, LOAD_ID_MAX)


# -- reception (port 5000) ---------------------------------------------------------
def register_owner_pet(conn: psycopg.Connection, pool: IdPool, rng: random.Random) -> int:
    """A new client: owner, pet and the first visit, in one transaction. Returns the visit id."""
    clinic = rng.choice(pool.clinics)
    owner_id, pet_id, visit_id = new_id(rng), new_id(rng), new_id(rng)
    species = rng.choice(("dog", "dog", "cat"))
    with conn.transaction():
        conn.execute(
            "INSERT INTO owners (owner_id, clinic_id, name, phone, address, email) VALUES (%s, %s, %s, %s, %s, %s)",
            (owner_id, clinic, f"보호자 {owner_id % 10000}", f"010-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}",
             "서울 (load test)", None))
        conn.execute(
            "INSERT INTO pets (pet_id, owner_id, clinic_id, name, species, breed, sex, birth_date, weight_kg) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, current_date - %s, %s)",
            (pet_id, owner_id, clinic, "새손님", species, rng.choice(SPECIES_BREEDS[species]),
             rng.choice(("M", "F", "MN", "FS")), rng.randint(60, 5000), round(rng.uniform(2.0, 30.0), 2)))
        conn.execute(
            "INSERT INTO visits (visit_id, clinic_id, pet_id, vet_id, visited_at, reason, notes) "
            "VALUES (%s, %s, %s, %s, now(), %s, %s)",
            (visit_id, clinic, pet_id, pool.vet(rng, clinic), REASONS[0], "신규 등록 (new patient)"))
    pool.remember_visit(visit_id)
    return visit_id


def open_visit(conn: psycopg.Connection, pool: IdPool, rng: random.Random) -> int:
    """A returning patient checks in: one visit row (committed on return)."""
    pet_id, clinic = pool.pet(rng)
    visit_id = new_id(rng)
    conn.execute(
        "INSERT INTO visits (visit_id, clinic_id, pet_id, vet_id, visited_at, reason, notes) "
        "VALUES (%s, %s, %s, %s, now(), %s, %s)",
        (visit_id, clinic, pet_id, pool.vet(rng, clinic), rng.choice(REASONS), "접수 (checked in)"))
    pool.remember_visit(visit_id)
    return visit_id


# -- lab (port 5000) ---------------------------------------------------------------
#: One panel for one visit, flagged against the species' reference range, in one statement.
_POST_PANEL = """
INSERT INTO lab_results (clinic_id, collected_at, pet_id, visit_id, test_code, value, flag)
SELECT v.clinic_id, now(), v.pet_id, v.visit_id, r.test_code, x.value,
       CASE WHEN x.value < r.ref_low THEN 'L' WHEN x.value > r.ref_high THEN 'H' ELSE 'N' END
  FROM visits v
  JOIN pets p ON p.pet_id = v.pet_id
  JOIN lab_reference_ranges r ON r.species = p.species
  JOIN lab_test_catalog c ON c.test_code = r.test_code
 CROSS JOIN LATERAL (
       SELECT round((r.ref_low + (r.ref_high - r.ref_low) * (random() * 1.3 - 0.15))::numeric,
                    c.decimals)::double precision AS value) x
 WHERE v.visit_id = %s AND c.panel = %s
"""


def post_results_statement(pool: IdPool, rng: random.Random) -> tuple[str, tuple]:
    return _POST_PANEL, (pool.visit(rng), rng.choice(PANELS))


def post_results(conn: psycopg.Connection, pool: IdPool, rng: random.Random) -> int:
    """The analyser's batch for one visit (a CBC or chemistry panel). Returns the rows inserted."""
    cur = conn.execute(*post_results_statement(pool, rng))
    return cur.rowcount


# -- vet (port 5001) ---------------------------------------------------------------
#: A result is collected at or after its visit, and within this long (send-out labs included). The history
#: query relies on it: each visit's results are looked for in that window only.
RESULT_WINDOW = "31 days"
#: A pet's history: its visits (a plain table, one index probe), then each visit's results in a nested
#: loop whose inner side is pruned at run time to the leaf of that visit's month(s). Same rows as a join
#: on visit_id alone, as long as results keep to RESULT_WINDOW. (Measured against the other shapes in
#: partitioning/DECISION.md, "Pet history".)
PATIENT_HISTORY = (
    "SELECT v.visited_at, v.reason, r.test_code, r.value, r.flag FROM visits v "
    "LEFT JOIN LATERAL (SELECT test_code, value, flag FROM lab_results r "
    " WHERE r.clinic_id = %(clinic)s AND r.pet_id = v.pet_id AND r.visit_id = v.visit_id"
    f"   AND r.collected_at >= v.visited_at AND r.collected_at < v.visited_at + interval '{RESULT_WINDOW}') r"
    " ON true WHERE v.pet_id = %(pet)s ORDER BY v.visited_at DESC, r.test_code LIMIT 200")


def patient_history_statement(pool: IdPool, rng: random.Random) -> tuple[str, dict]:
    pet_id, clinic = pool.pet(rng)
    return PATIENT_HISTORY, {"pet": pet_id, "clinic": clinic}


def patient_history(conn: psycopg.Connection, pool: IdPool, rng: random.Random) -> list[tuple]:
    """A pet's visits with their results, newest first, as a prepared statement with a generic plan:
    nothing is planned per call (planning the leaves was most of the cost), and run-time pruning picks
    each visit's leaf. One round trip: the SET LOCAL, the statement and the commit go in one pipeline.
    Through PgBouncer (transaction pooling) the statement is not prepared: the next transaction may run
    on another server connection (docs/pooling.md); it is then planned per call."""
    query, params = patient_history_statement(pool, rng)
    with conn.pipeline(), conn.transaction():
        conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        return conn.execute(query, params, prepare=prepares(conn)).fetchall()


#: One pet's values of one test, oldest first (the trend chart in the consulting room).
LAB_TREND = ("SELECT collected_at, value, flag FROM lab_results "
             " WHERE clinic_id = %s AND pet_id = %s AND test_code = %s ORDER BY collected_at")


def lab_trend_statement(pool: IdPool, rng: random.Random) -> tuple[str, tuple]:
    pet_id, clinic = pool.pet(rng)
    return LAB_TREND, (clinic, pet_id, rng.choice(pool.test_codes))


def lab_trend(conn: psycopg.Connection, pool: IdPool, rng: random.Random) -> list[tuple]:
    return conn.execute(*lab_trend_statement(pool, rng)).fetchall()


#: Today's abnormal results of one clinic. "Today" comes as the Seoul day's bounds, not as
#: ``date_trunc('day', now())``: now() is not a constant when the query is planned, so the planner
#: planned every month of the clinic and pruned only at executor start; bound values are, and it plans
#: the one month that holds today (figures: partitioning/DECISION.md, "Today's abnormal results").
ABNORMAL_TODAY = (
    "SELECT r.collected_at, p.name, p.species, r.test_code, r.value, r.flag "
    "  FROM lab_results r JOIN pets p ON p.pet_id = r.pet_id "
    " WHERE r.clinic_id = %(clinic)s AND r.collected_at >= %(day_start)s AND r.collected_at < %(day_end)s "
    "   AND r.flag <> 'N' "
    " ORDER BY r.collected_at DESC LIMIT 200")


def abnormal_today_statement(pool: IdPool, rng: random.Random) -> tuple[str, dict]:
    day_start, day_end = clock.clinic_day_bounds()
    return ABNORMAL_TODAY, {"clinic": rng.choice(pool.clinics), "day_start": day_start, "day_end": day_end}


def abnormal_today(conn: psycopg.Connection, pool: IdPool, rng: random.Random) -> list[tuple]:
    """Today's (the clinics' day: Asia/Seoul) abnormal results of one clinic."""
    return conn.execute(*abnormal_today_statement(pool, rng)).fetchall()


# -- analyst (port 5001) -----------------------------------------------------------
#: One clinic's daily aggregates for the last 30 days.
CLINIC_DAILY = ("SELECT day, test_code, n_results, n_abnormal, mean_value FROM lab_results_daily "
                " WHERE clinic_id = %s AND day >= current_date - 30 ORDER BY day, test_code")


def clinic_daily_statement(pool: IdPool, rng: random.Random) -> tuple[str, tuple]:
    return CLINIC_DAILY, (rng.choice(pool.clinics),)


def clinic_daily(conn: psycopg.Connection, pool: IdPool, rng: random.Random) -> list[tuple]:
    return conn.execute(*clinic_daily_statement(pool, rng)).fetchall()


#: Abnormal rate by breed and age band for one test in one clinic over 90 days.
BREED_AGE_PATTERNS = (
    "SELECT p.breed, width_bucket(extract(year FROM age(p.birth_date)), 0, 20, 5) AS age_band, "
    "       count(*), avg(r.value), avg((r.flag <> 'N')::int) "
    "  FROM lab_results r JOIN pets p ON p.pet_id = r.pet_id "
    " WHERE r.clinic_id = %s AND r.test_code = %s AND r.collected_at >= now() - interval '90 days' "
    " GROUP BY 1, 2 ORDER BY 1, 2")


def breed_age_patterns_statement(pool: IdPool, rng: random.Random) -> tuple[str, tuple]:
    return BREED_AGE_PATTERNS, (rng.choice(pool.clinics), rng.choice(pool.test_codes))


def breed_age_patterns(conn: psycopg.Connection, pool: IdPool, rng: random.Random) -> list[tuple]:
    """Abnormal rate by breed and age band for one test in one clinic over 90 days."""
    return conn.execute(*breed_age_patterns_statement(pool, rng)).fetchall()


# -- what the load report can EXPLAIN ----------------------------------------------
Builder = Callable[[IdPool, random.Random], tuple[str, Sequence[Any] | Mapping[str, Any]]]


@dataclass(frozen=True)
class Statement:
    """How to plan one operation: its builder, and whether EXPLAIN ANALYZE may run it (reads only)."""

    build: Builder
    read_only: bool
    note: str = ""


#: Operation name as the load report names it (users.py's operation tables) -> its statement.
#: tests/unit/load/test_plans.py proves that these and NOT_EXPLAINED name every operation of users.py.
STATEMENTS: Mapping[str, Statement] = {
    "lab.post_results": Statement(post_results_statement, read_only=False,
                                  note="INSERT ... SELECT: planned only (plain EXPLAIN), never executed"),
    "vet.patient_history": Statement(
        patient_history_statement, read_only=True,
        note="planned here for the drawn values; the load runs it as a prepared generic plan where it can "
             "prepare (not through PgBouncer), whose leaves are pruned when it runs instead"),
    "vet.lab_trend": Statement(lab_trend_statement, read_only=True),
    "vet.abnormal_today": Statement(abnormal_today_statement, read_only=True),
    "analyst.clinic_daily": Statement(clinic_daily_statement, read_only=True),
    "analyst.breed_age_patterns": Statement(breed_age_patterns_statement, read_only=True),
}
#: Operations the report does not EXPLAIN, and why.
NOT_EXPLAINED: Mapping[str, str] = {
    "reception.register_owner_pet": "three single-row INSERTs by primary key: no plan to choose",
    "reception.open_visit": "one single-row INSERT: no plan to choose",
}
