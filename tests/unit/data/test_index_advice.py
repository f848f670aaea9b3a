"""Index candidates from EXPLAIN (FORMAT JSON) plans: which scans filter, which columns, in which order (no server)."""

from __future__ import annotations

import pytest

from careflow_ha.data.explain import summarise, tree
from careflow_ha.data.index_advice import (
    Candidate,
    FilteredScan,
    Leaf,
    Trial,
    candidate_columns,
    candidates,
    condition_columns,
    filtered_scans,
    nothing_to_index,
    scan_types,
    uses_index,
)

LAB_COLUMNS = frozenset({"result_id", "clinic_id", "collected_at", "pet_id", "visit_id", "test_code", "value", "flag"})


def _scan(node_type: str, relation: str, alias: str = "r", **extra) -> dict:
    return {"Node Type": node_type, "Relation Name": relation, "Alias": alias, "Total Cost": 10.0, **extra}


def _plan(*scans: dict, cost: float = 100.0) -> dict:
    return {"Plan": {"Node Type": "Sort", "Total Cost": cost, "Plan Rows": 1,
                     "Plans": [{"Node Type": "Append", "Total Cost": cost, "Plans": list(scans)}]}}


# -- which scans filter ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("node", "conditions"),
    [
        (_scan("Seq Scan", "lab_results_p2026_11_p1", Filter="((clinic_id = 1) AND (pet_id = 5))"),
         ("((clinic_id = 1) AND (pet_id = 5))",)),
        (_scan("Seq Scan", "pets", "p"), None),  # reads every row on purpose: nothing filtered
        (_scan("Bitmap Heap Scan", "lab_results_p2026_11_p1", **{"Recheck Cond": "(pet_id = 5)",
                                                                 "Filter": "(test_code = 'ALT'::text)"}),
         ("(pet_id = 5)", "(test_code = 'ALT'::text)")),
        (_scan("Index Scan", "lab_results_p2026_11_p1", **{"Index Cond": "(pet_id = 5)",
                                                           "Filter": "(test_code = 'ALT')",
                                                           "Rows Removed by Filter": 40}),
         ("(pet_id = 5)", "(test_code = 'ALT')")),
        # The filter removed nothing (ANALYZE says so): the index already serves the scan.
        (_scan("Index Scan", "lab_results_p2026_11_p1", **{"Index Cond": "(pet_id = 5)", "Filter": "(clinic_id = 1)",
                                                           "Rows Removed by Filter": 0}), None),
        # Plain EXPLAIN has no removal count: a Filter is taken to remove rows.
        (_scan("Index Scan", "lab_test_catalog", "c", **{"Index Cond": "(test_code = r.test_code)",
                                                        "Filter": "(panel = 'CHEM'::text)"}),
         ("(test_code = r.test_code)", "(panel = 'CHEM'::text)")),
        (_scan("Index Only Scan", "visits", "v", **{"Index Cond": "(pet_id = 5)"}), None),
    ],
)  # fmt: skip
def test_filtered_scans(node: dict, conditions: tuple[str, ...] | None) -> None:
    found = filtered_scans(_plan(node))
    if conditions is None:
        assert found == []
    else:
        assert found == [FilteredScan("", node["Relation Name"], node["Alias"], node["Node Type"], conditions)]


# -- which columns -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("condition", "alias", "expected"),
    [
        ("((clinic_id = '1'::smallint) AND (pet_id = '1093'::bigint) AND (test_code = 'BUN'::text))", "lab_results_1",
         [("clinic_id", "eq"), ("pet_id", "eq"), ("test_code", "eq")]),
        # A range, a <> (no btree narrows on it) and a literal that looks like a comparison.
        ("((collected_at >= '2026-12-03 00:00:00+09'::timestamp with time zone) AND (flag <> 'N'::\"char\") "
         "AND (test_code = 'a = b'::text))", "r", [("collected_at", "range"), ("test_code", "eq")]),
        # Qualified by the scan's alias: ours; by another alias: the outer side of a join, not ours.
        ("((r.pet_id = v.pet_id) AND (r.collected_at < (v.visited_at + '31 days'::interval)))", "r",
         [("pet_id", "eq"), ("collected_at", "range")]),
        # The column on the right, a cast column on the left, ANY().
        ("(('5'::bigint = pet_id) AND ((test_code)::text = ANY ('{ALT,AST}'::text[])))", "r",
         [("pet_id", "eq"), ("test_code", "eq")]),
        ("(value > $1)", "r", [("value", "range")]),
        ("(lower(name) = 'bo'::text)", "p", []),  # an expression, not a column: not this advisor's job
        ("(flag <> 'N'::bpchar)", "r", []),
        ("(owner_name = 'x')", "r", []),  # not a column of the relation (pg_attribute says)
    ],
)  # fmt: skip
def test_condition_columns(condition: str, alias: str, expected: list[tuple[str, str]]) -> None:
    assert condition_columns(condition, alias, LAB_COLUMNS | {"name"}) == expected


@pytest.mark.parametrize(
    ("found", "exclude", "expected"),
    [
        ([("collected_at", "range"), ("pet_id", "eq"), ("test_code", "eq")], frozenset(),
         ("pet_id", "test_code", "collected_at")),  # equality first, then one range column
        ([("clinic_id", "eq"), ("pet_id", "eq")], frozenset({"clinic_id"}), ("pet_id",)),
        ([("collected_at", "range"), ("value", "range")], frozenset(), ("collected_at",)),
        ([("pet_id", "eq"), ("pet_id", "range")], frozenset(), ("pet_id",)),
        ([("clinic_id", "eq")], frozenset({"clinic_id"}), ()),
        ([], frozenset(), ()),
    ],
)  # fmt: skip
def test_candidate_columns(found, exclude, expected) -> None:
    assert candidate_columns(found, exclude) == expected


# -- candidates of a whole plan ----------------------------------------------------------
def _leaf(indexes: tuple[tuple[str, ...], ...] = ()) -> Leaf:
    return Leaf("public.lab_results", LAB_COLUMNS, frozenset({"clinic_id"}), indexes)


def test_the_leaves_of_one_parent_give_one_candidate_on_the_parent() -> None:
    filt = "((clinic_id = '1'::smallint) AND (pet_id = '7'::bigint) AND (test_code = 'BUN'::text))"
    plan = _plan(*[_scan("Seq Scan", f"lab_results_p2026_{m}_p1", f"lab_results_{m}", Filter=filt) for m in (11, 12)])
    found, dropped = candidates(filtered_scans(plan), {f"lab_results_p2026_{m}_p1": _leaf() for m in (11, 12)})
    assert dropped == []
    assert found == [Candidate("public.lab_results", ("pet_id", "test_code"),
                               ("lab_results_p2026_11_p1", "lab_results_p2026_12_p1"))]
    assert found[0].statement == "CREATE INDEX ON public.lab_results (pet_id, test_code);"


def test_a_candidate_an_existing_index_already_leads_with_is_dropped_with_its_reason() -> None:
    plan = _plan(_scan("Bitmap Heap Scan", "lab_results_p2026_11_p1", **{"Recheck Cond": "(pet_id = '7'::bigint)"}))
    leaves = {"lab_results_p2026_11_p1": _leaf((("pet_id", "collected_at"),))}
    found, dropped = candidates(filtered_scans(plan), leaves)
    assert found == []
    assert dropped == ["Bitmap Heap Scan on lab_results_p2026_11_p1: (pet_id) is already indexed "
                       "(pet_id, collected_at)"]


def test_a_scan_whose_only_condition_is_the_leafs_own_clinic_has_no_candidate() -> None:
    plan = _plan(_scan("Seq Scan", "lab_results_p2026_11_p1", Filter="(clinic_id = '1'::smallint)"))
    found, dropped = candidates(filtered_scans(plan), {"lab_results_p2026_11_p1": _leaf()})
    assert found == [] and "no indexable condition" in dropped[0]


def test_leaves_dropped_for_the_same_reason_are_said_once() -> None:
    plan = _plan(*[_scan("Seq Scan" if m == 10 else "Bitmap Heap Scan", f"lab_results_p2026_{m}_p1",
                         **{"Filter" if m == 10 else "Recheck Cond": "(pet_id = '7'::bigint)"}) for m in (10, 11, 12)])
    leaves = {f"lab_results_p2026_{m}_p1": _leaf((("pet_id", "collected_at"),)) for m in (10, 11, 12)}
    found, dropped = candidates(filtered_scans(plan), leaves)
    assert found == []
    assert dropped == ["3 leaves of public.lab_results (Seq Scan, Bitmap Heap Scan x2): (pet_id) is already "
                       "indexed (pet_id, collected_at)"]


def test_a_plan_of_index_scans_says_why_nothing_is_indexed() -> None:
    plan = _plan(_scan("Index Scan", "visits", "v", **{"Index Name": "visits_pet_idx", "Index Cond": "(pet_id = 5)"}))
    assert filtered_scans(plan) == []
    assert nothing_to_index(plan) == ("no scan filters rows: the plan already reads its relations by Index Scan "
                                      "with nothing thrown away")
    assert nothing_to_index({"Plan": {"Node Type": "Result"}}) == "the plan reads no table (nothing to index)"


def test_before_and_after_evidence_from_two_plans() -> None:
    leaves = ["lab_results_p2026_11_p1", "lab_results_p2026_12_p1"]
    before = _plan(*[_scan("Seq Scan", leaf, Filter="(pet_id = 7)") for leaf in leaves], cost=250.0)
    after = _plan(_scan("Index Scan", leaves[0], **{"Index Name": "<16555>btree_lab_results_p2026_11_p1_pet_id"}),
                  _scan("Seq Scan", leaves[1], Filter="(pet_id = 7)"), cost=20.0)
    assert scan_types(before, leaves) == {"Seq Scan": 2}
    assert scan_types(after, leaves) == {"Index Scan": 1, "Seq Scan": 1}
    assert uses_index(after, ["<16555>btree_lab_results_p2026_11_p1_pet_id"]) and not uses_index(before, ["x"])
    trial = Trial("CREATE INDEX ON public.lab_results (pet_id);", tuple(leaves), True, 250.0, 20.0,
                  scan_types(before, leaves), scan_types(after, leaves))
    assert trial.ratio == 0.08 and trial.passes(0.30)
    # Used but not enough cheaper, cheaper but not used, or failed: not recommended.
    assert not Trial("s", (), True, 100.0, 71.0, {}, {}).passes(0.30)
    assert Trial("s", (), True, 100.0, 70.0, {}, {}).passes(0.30)
    assert not Trial("s", (), False, 100.0, 10.0, {}, {}).passes(0.30)
    assert not Trial("s", (), False, 0.0, 0.0, {}, {}, error="canceling statement due to statement timeout").passes()


def test_the_summary_and_tree_come_from_one_walk_in_explain_order() -> None:
    plan = _plan(_scan("Seq Scan", "lab_results_p2026_11_p1", Filter="(pet_id = 7)"),
                 _scan("Index Scan", "lab_results_p2026_12_p1", **{"Index Name": "lab_results_p2026_12_p1_pet_idx"}))
    s = summarise(plan, "plan")
    assert s.relations == ["lab_results_p2026_11_p1", "lab_results_p2026_12_p1"]
    assert s.total_cost == 100.0 and s.indexes == ["lab_results_p2026_12_p1_pet_idx"]
    lines = tree(plan)
    assert lines[0].startswith("Sort  (cost=") and lines[2].startswith("    -> Seq Scan on lab_results_p2026_11_p1 r")
    assert lines[3].strip() == "Filter: (pet_id = 7)"
