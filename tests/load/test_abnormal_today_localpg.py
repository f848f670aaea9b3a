"""vet.abnormal_today: the Seoul day as bound values prunes at plan time, and returns what the now() shape did."""

from __future__ import annotations

import random
from datetime import timedelta

import psycopg
import pytest

from careflow_ha.data import clock
from careflow_ha.load import emr

pytestmark = pytest.mark.localpg

#: The shape the operation had before: "today" from the server's clock, in the database's time zone (Seoul).
NOW_SHAPE = emr.ABNORMAL_TODAY.replace(
    "r.collected_at >= %(day_start)s AND r.collected_at < %(day_end)s", "r.collected_at >= date_trunc('day', now())")


def planned_relations(conn: psycopg.Connection, query: str, params: dict) -> tuple[list[str], int]:
    """(lab_results partitions left in the plan, partitions the planner planned that executor start removed).

    EXPLAIN shows the plan after executor-start pruning; "Subplans Removed" counts what the planner had
    planned (and paid for) before that.
    """
    plan = conn.execute("EXPLAIN (FORMAT JSON) " + query, params).fetchone()[0][0]["Plan"]
    found, removed, stack = [], 0, [plan]
    while stack:
        node = stack.pop()
        if node.get("Relation Name", "").startswith("lab_results_p"):
            found.append(node["Relation Name"])
        removed += node.get("Subplans Removed", 0)
        stack += node.get("Plans", [])
    return sorted(found), removed


def test_the_literal_day_plans_one_partition_where_now_plans_every_month(emr_pg):
    day_start, day_end = clock.clinic_day_bounds()
    params = {"clinic": 2, "day_start": day_start, "day_end": day_end}
    with psycopg.connect(emr_pg.dsn("app")) as conn:
        literal = planned_relations(conn, emr.ABNORMAL_TODAY, params)
        with_now = planned_relations(conn, NOW_SHAPE, {"clinic": 2})
        months = conn.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'lab_results'::regclass"
                              ).fetchone()[0]
    # Today's month, clinic 2's leaf: the only one planned.
    assert literal == ([f"lab_results_p{day_start:%Y_%m}_p2"], 0)
    # now(): clinic 2 in every month was planned; executor start then dropped the months before today, and
    # the premade future months stay in (no upper bound).
    kept, removed = with_now
    assert len(kept) + removed == months
    assert removed >= months - 4 and f"lab_results_p{day_start:%Y_%m}_p2" in kept


def test_it_returns_today_by_the_seoul_calendar_like_the_now_shape(emr_pg):
    day_start, _ = clock.clinic_day_bounds()
    with psycopg.connect(emr_pg.dsn("app")) as conn:
        pet = conn.execute("SELECT pet_id FROM pets WHERE clinic_id = 1 LIMIT 1").fetchone()[0]
        # Seoul midnight (in), one second before it (yesterday in Seoul; the same UTC date after 15:00 UTC), now.
        for at, code in ((day_start, "ZZ_MIDNIGHT"), (day_start - timedelta(seconds=1), "ZZ_YESTERDAY"),
                         (clock.now(), "ZZ_NOW")):
            conn.execute("INSERT INTO lab_results (clinic_id, collected_at, pet_id, test_code, value, flag) "
                         "VALUES (1, %s, %s, %s, 99, 'H')", (at, pet, code))
        pool = emr.IdPool([1], {1: [1]}, [(pet, 1)], [], ["CREA"])
        rows = emr.abnormal_today(conn, pool, random.Random(1))
        before = conn.execute(NOW_SHAPE, {"clinic": 1}).fetchall()
        conn.rollback()
    codes = {r[3] for r in rows}
    assert {"ZZ_MIDNIGHT", "ZZ_NOW"} <= codes and "ZZ_YESTERDAY" not in codes
    assert rows == before
