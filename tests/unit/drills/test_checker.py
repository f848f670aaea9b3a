"""The set checker: hand-made histories that a wrong checker would misjudge, and properties over generated ones.

Properties (Hypothesis, bounded, no example database):

- the classes partition attempted ∪ observed: every seq in exactly one class;
- a seq counted lost was acknowledged and is absent; ok was acknowledged and is present once;
- unexpected was never attempted; an ambiguous write is never lost, whichever way it resolved;
- shuffling the attempts or the rows read back changes nothing.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import fields
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careflow_ha.cluster.records import Ack, ProbeError, Recording
from careflow_ha.drills.checker import (
    CLASSES,
    InconsistentAttempts,
    SetCheck,
    WriteAttempt,
    attempts_of,
    check_set,
    describe_set_check,
)
from tests.plugins.timeouts import scaled

BOUNDED = settings(max_examples=300, deadline=timedelta(seconds=scaled(2)), database=None)


def acked(*seqs: int) -> list[WriteAttempt]:
    return [WriteAttempt(s, "acked") for s in seqs]


def refused(*seqs: int) -> list[WriteAttempt]:
    return [WriteAttempt(s, "refused") for s in seqs]


def unsure(*seqs: int) -> list[WriteAttempt]:
    return [WriteAttempt(s, "ambiguous") for s in seqs]


# -- hand-made histories -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "attempts", "present", "expected"),
    [
        ("nothing attempted, nothing there", [], [], SetCheck()),
        ("all acknowledged and present", acked(1, 2, 3), [3, 1, 2], SetCheck(ok=(1, 2, 3))),
        ("tail lost at an async failover", acked(1, 2, 3, 4, 5), [1, 2, 3], SetCheck(ok=(1, 2, 3), lost=(4, 5))),
        ("everything lost", acked(1, 2), [], SetCheck(lost=(1, 2))),
        ("a row nobody attempted", acked(1), [1, 99], SetCheck(ok=(1,), unexpected=(99,))),
        ("an acknowledged row twice", acked(1, 2), [1, 2, 2], SetCheck(ok=(1,), duplicated=(2,))),
        ("a row never attempted, twice, is duplicated", [], [7, 7], SetCheck(duplicated=(7,))),
        (
            "ambiguous writes resolve both ways and are never lost",
            acked(1) + unsure(2, 3),
            [1, 3],
            SetCheck(ok=(1,), ambiguous_present=(3,), ambiguous_absent=(2,)),
        ),
        ("a refused write stays out", acked(1) + refused(2), [1], SetCheck(ok=(1,), refused_absent=(2,))),
        ("a refused write that turned up", refused(2), [2], SetCheck(refused_present=(2,))),
    ],
)
def test_hand_made_histories(case, attempts, present, expected):
    assert check_set(attempts, present) == expected, case


def test_the_same_fate_recorded_twice_is_one_attempt():
    assert check_set(acked(1, 1), [1]) == SetCheck(ok=(1,))


def test_two_fates_for_one_attempt_id_are_a_probe_bug_not_a_result():
    with pytest.raises(InconsistentAttempts, match="write attempt 4 recorded as both acked and ambiguous"):
        check_set(acked(4) + unsure(4), [4])


def test_attempts_of_a_recording_map_each_error_kind_to_what_the_client_knows():
    rec = Recording(
        writes=(Ack(1, 0.0, 0.1, "pg1"),),
        write_errors=(
            ProbeError(2, 1.0, "connect", "connection refused"),  # never sent
            ProbeError(3, 2.0, "query", "cannot execute INSERT in a read-only transaction"),  # server ERROR
            ProbeError(4, 3.0, "ambiguous", "server closed the connection unexpectedly"),
        ),
        writes_in_flight=(5,),  # sent, never answered before the probe stopped
    )
    assert attempts_of(rec) == (
        WriteAttempt(1, "acked"),
        WriteAttempt(2, "refused"),
        WriteAttempt(3, "refused"),
        WriteAttempt(4, "ambiguous"),
        WriteAttempt(5, "ambiguous"),
    )
    # In flight and present: it committed; it must not be called unexpected.
    assert check_set(attempts_of(rec), [1, 4, 5]).ambiguous_present == (4, 5)


def test_counts_and_the_progress_line_name_every_class():
    check = check_set(acked(1, 2) + unsure(3) + refused(4), [1, 3, 9, 9])
    assert check.counts() == {
        "lost": 1,
        "duplicated": 1,
        "unexpected": 0,
        "refused_present": 0,
        "ambiguous_present": 1,
        "ambiguous_absent": 0,
        "ok": 1,
        "refused_absent": 1,
    }
    assert check.anomalies == 2 and check.ambiguous == 1
    assert describe_set_check(check).startswith("lost 1, unexpected 0, duplicated 1,")


def test_every_class_is_reported():
    """A class added to SetCheck but not to CLASSES would vanish from reports."""
    assert set(CLASSES) == {f.name for f in fields(SetCheck)}


# -- properties --------------------------------------------------------------------------------------------------------

outcomes = st.sampled_from(["acked", "refused", "ambiguous"])
histories = st.tuples(
    st.dictionaries(st.integers(0, 60), outcomes, max_size=40),  # attempt id -> fate (unique ids)
    st.lists(st.integers(0, 80), max_size=60),  # rows read back: may repeat, may include never-attempted ids
    st.randoms(use_true_random=False),
)


@BOUNDED
@given(histories)
def test_classes_partition_attempted_and_observed(history):
    fates, present, _ = history
    check = check_set([WriteAttempt(s, o) for s, o in fates.items()], present)
    members = [seq for name in CLASSES for seq in getattr(check, name)]
    assert sorted(members) == sorted(set(fates) | set(present)), "every seq in exactly one class"


@BOUNDED
@given(histories)
def test_each_class_means_what_it_says(history):
    fates, present, _ = history
    rows = Counter(present)
    check = check_set([WriteAttempt(s, o) for s, o in fates.items()], present)
    assert all(fates.get(s) == "acked" and rows[s] == 0 for s in check.lost)
    assert all(fates.get(s) == "acked" and rows[s] == 1 for s in check.ok)
    assert all(s not in fates and rows[s] == 1 for s in check.unexpected)
    assert all(rows[s] > 1 for s in check.duplicated)
    assert all(fates.get(s) == "refused" and rows[s] == 1 for s in check.refused_present)
    assert not {s for s, o in fates.items() if o == "ambiguous"} & set(check.lost), "ambiguous is never lost"
    assert len(check.lost) == len({s for s, o in fates.items() if o == "acked"} - set(present))


@BOUNDED
@given(histories)
def test_shuffled_input_gives_the_same_result(history):
    fates, present, rnd = history
    attempts = [WriteAttempt(s, o) for s, o in fates.items()]
    expected = check_set(attempts, present)
    shuffled_attempts, shuffled_rows = attempts[:], present[:]
    rnd.shuffle(shuffled_attempts)
    rnd.shuffle(shuffled_rows)
    assert check_set(shuffled_attempts, shuffled_rows) == expected
    assert check_set(iter(shuffled_attempts), iter(shuffled_rows)) == expected  # one-pass iterables too


def test_a_large_history_is_checked_quickly_enough_to_be_linear():
    """A soak writes 20/s for hours: 300 k attempts must not be a quadratic problem."""
    rnd = random.Random(18)
    attempts = [WriteAttempt(i, rnd.choice(["acked", "refused", "ambiguous"])) for i in range(300_000)]
    present = [a.seq for a in attempts if a.outcome == "acked"]
    check = check_set(attempts, present)
    assert not check.lost and len(check.ok) == len(present)
