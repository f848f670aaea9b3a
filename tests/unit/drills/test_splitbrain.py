"""Split brain by per-node acknowledged writes, on synthetic timelines: tenures, the rule, coverage."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careflow_ha.cluster.model import ClusterSnapshot, Member
from careflow_ha.cluster.records import NodeSample, NodeWrite
from careflow_ha.drills.splitbrain import (
    Tenure,
    judge_node_writes,
    leader_tenures,
    observed_share,
    sampling_coverage,
)
from tests.plugins.timeouts import scaled


def snap(at: float, leader: str | None) -> ClusterSnapshot:
    names = ("pg1", "pg2", "pg3")
    return ClusterSnapshot(at, tuple(Member(n, "leader" if n == leader else "replica", "running", 1) for n in names))


def polls(leader: str | None, start: float, stop: float, step: float = 0.5) -> list[ClusterSnapshot]:
    return [snap(start + i * step, leader) for i in range(round((stop - start) / step) + 1)]


def writes(node: str, outcome: str, start: float, stop: float, step: float = 0.2, rtt: float = 0.01):
    n = round((stop - start) / step)
    return [NodeWrite(node, i, start + i * step, start + i * step + rtt, outcome) for i in range(n)]


#: pg1 leads until 10 s, nobody 10-20 s (lease expiring), pg2 from 20 s on; polled every 0.5 s.
FAILOVER = polls("pg1", 0.0, 10.0) + polls(None, 10.5, 19.5) + polls("pg2", 20.0, 40.0)


def test_tenures_join_consecutive_polls_and_never_bridge_a_leader_change_or_a_blind_gap():
    # Each ends half a second before its last poll's stamp: the key it shows was read a round trip earlier.
    assert leader_tenures(FAILOVER) == (Tenure("pg1", 0.0, 9.5), Tenure("pg2", 20.0, 39.5))
    assert leader_tenures(FAILOVER, end_margin_s=0.0) == (Tenure("pg1", 0.0, 10.0), Tenure("pg2", 20.0, 40.0))
    blind = polls("pg2", 0.0, 5.0) + polls("pg2", 30.0, 35.0)  # the poller saw nothing for 25 s
    assert leader_tenures(blind) == (Tenure("pg2", 0.0, 4.5), Tenure("pg2", 30.0, 34.5))
    assert leader_tenures(polls("pg1", 0.0, 0.5)) == (), "two polls half a second apart prove nothing after the margin"
    assert leader_tenures([snap(1.0, "pg1")]) == (), "one poll proves no stretch of time"
    assert leader_tenures(reversed(FAILOVER)) == leader_tenures(FAILOVER), "order of input does not matter"


def test_a_clean_failover_is_no_split_brain():
    """pg1 writes until it dies at 10 s, pg2 from 20 s, each refused while the other leads."""
    history = (
        writes("pg1", "acked", 0.0, 10.0)
        + writes("pg1", "unreachable", 10.0, 40.0)
        + writes("pg2", "refused", 0.0, 20.0)
        + writes("pg2", "acked", 20.0, 40.0)
    )
    judged = judge_node_writes(history, FAILOVER, 0.0, 40.0)
    assert judged.acknowledged == () and judged.ambiguous == ()
    assert judged.coverage["pg2"] == pytest.approx(1.0, abs=0.01)
    assert judged.coverage["pg1"] == pytest.approx(0.25, abs=0.01), "unreachable is not observed"
    assert judged.leader_known == pytest.approx(29.0 / 40.0)


def test_the_old_primary_acknowledging_under_the_new_leader_is_split_brain():
    """GitLab's case: the old primary keeps committing after pg2 took the key at 20 s."""
    history = writes("pg1", "acked", 0.0, 25.0) + writes("pg2", "acked", 20.0, 40.0)
    judged = judge_node_writes(history, FAILOVER, 0.0, 40.0)
    assert judged.nodes == ("pg1",)
    assert {f.leader for f in judged.acknowledged} == {"pg2"}
    assert all(f.sent_at >= 20.0 and f.done_at <= 25.0 for f in judged.acknowledged)
    assert len(judged.acknowledged) == 25  # 20.0, 20.2, ..., 24.8


def test_writes_while_nobody_holds_the_key_or_straddling_the_change_are_not_judged():
    history = [
        NodeWrite("pg1", 1, 12.0, 12.01, "acked"),  # leaderless: the rule cannot say (coverage shows it)
        NodeWrite("pg1", 2, 19.99, 20.02, "acked"),  # began before pg2's first poll: might have committed before
        NodeWrite("pg1", 3, 9.5, 9.51, "acked"),  # its own tenure
        NodeWrite("pg3", 4, 39.6, 39.61, "acked"),  # pg2's last poll is stamped 40.0: its key was read earlier
    ]
    assert judge_node_writes(history, FAILOVER, 0.0, 40.0).acknowledged == ()


def test_a_frozen_primary_that_acknowledges_nothing_is_not_split_brain_but_its_timeouts_are_listed_apart():
    """Role sampling would call the thawed old primary writable; its commits time out on the sync standby."""
    history = writes("pg1", "ambiguous", 20.0, 25.0, step=1.0, rtt=0.9) + writes("pg2", "acked", 20.0, 40.0)
    judged = judge_node_writes(history, FAILOVER, 0.0, 40.0)
    assert judged.acknowledged == ()
    assert len(judged.ambiguous) == 5 and judged.nodes == ()


def test_a_node_never_heard_from_has_zero_coverage():
    judged = judge_node_writes(writes("pg2", "acked", 20.0, 40.0), FAILOVER, 0.0, 40.0, nodes=("pg1", "pg2", "pg3"))
    assert judged.coverage["pg1"] == 0.0 and judged.coverage["pg3"] == 0.0


def test_sampling_coverage_counts_only_definite_answers():
    samples = [NodeSample(i * 0.25, "pg1", True if i < 40 else None) for i in range(160)]
    assert sampling_coverage(samples, 0.0, 40.0)["pg1"] == pytest.approx(9.75 / 40.0)


@pytest.mark.parametrize(
    ("case", "times", "expected"),
    [
        ("nothing observed", [], 0.0),
        ("one observation is a point", [5.0], 0.0),
        ("dense observations cover their span", [0.0, 0.5, 1.0, 1.5, 2.0], 0.2),
        ("a gap above the limit is not covered", [0.0, 0.5, 5.0, 5.5], 0.1),
        ("observations outside the run are ignored", [-3.0, -2.5, 11.0, 11.5], 0.0),
    ],
)
def test_observed_share(case, times, expected):
    assert observed_share(times, 0.0, 10.0, max_gap_s=1.0) == pytest.approx(expected), case


@settings(max_examples=200, deadline=timedelta(seconds=scaled(2)), database=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["pg1", "pg2", "pg3"]),
            st.floats(0, 40, allow_nan=False),
            st.floats(0, 2, allow_nan=False),
            st.sampled_from(["acked", "refused", "ambiguous", "unreachable"]),
        ),
        max_size=40,
    )
)
def test_every_write_judged_split_brain_was_acknowledged_inside_another_nodes_tenure(raw):
    history = [NodeWrite(n, i, t, t + d, o) for i, (n, t, d, o) in enumerate(raw)]
    judged = judge_node_writes(history, FAILOVER, 0.0, 40.0)
    tenures = leader_tenures(FAILOVER)
    for found in judged.acknowledged:
        original = history[found.seq]
        assert original.outcome == "acked" and found.leader != found.node
        assert any(t.leader == found.leader and t.start <= found.sent_at and found.done_at <= t.end for t in tenures)
    assert all(history[f.seq].outcome == "ambiguous" for f in judged.ambiguous)
    assert all(0.0 <= share <= 1.0 for share in judged.coverage.values())
