"""Drill analysis on recorded (synthetic) timelines: outages, lost writes, split brain, rejoin, phases.

The set checker's own rules are in test_checker.py; here it is checked as analyse() wires it.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from careflow_ha.cluster.model import ClusterSnapshot, HistoryEntry, Member
from careflow_ha.cluster.records import Ack, NodeSample, Recording
from careflow_ha.drills.analysis import (
    Phase,
    analyse,
    leader_changes,
    measure_outage,
    recovery_phases,
    rejoined_at,
    split_brain_intervals,
)

STEP = 0.05  # the writer's nominal interval (20/s)


def ticks(start: float, stop: float, step: float = STEP) -> list[float]:
    """Ack times every ``step`` from ``start`` up to (excluding) ``stop``."""
    n = round((stop - start) / step)
    return [round(start + i * step, 6) for i in range(n)]


# -- write/read outage -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "acks", "fault_at", "expect_seconds", "expect_interrupted", "expect_recovered", "expect_before"),
    [
        ("no outage: acks keep flowing", ticks(0, 10), 5.0, STEP, False, True, 5.0),
        ("classic failover gap", ticks(0, 5.0) + ticks(12.0, 14.0), 5.0, 12.0 - 4.95, True, True, 4.95),
        ("ack exactly at the fault starts the outage", ticks(0, 5.05) + ticks(9.0, 10.0), 5.0, 4.0, True, True, 5.0),
        (
            "ack just after the fault, then the gap",
            [*ticks(0, 5.0), 5.01, *ticks(8.0, 9.0)],
            5.0,
            2.99,
            True,
            True,
            5.01,
        ),
        ("never recovered", ticks(0, 5.0), 5.0, None, True, False, 4.95),
        ("duplicate ack times count once", [1.0, 1.0, 2.0, 2.0, 6.0, 6.0, 6.05], 2.0, 4.0, True, True, 2.0),
        ("no ack before the fault: outage starts at the fault", ticks(7.0, 8.0), 5.0, 2.0, True, True, 5.0),
        (
            "longest of two gaps is the headline",
            [*ticks(0, 5.0), 6.0, 6.05, *ticks(9.0, 10.0)],
            5.0,
            2.95,
            True,
            True,
            6.05,
        ),
        ("no fault: whole recording is the window", ticks(0, 3.0), None, STEP, False, True, 0.0),
    ],
)
def test_measure_outage(case, acks, fault_at, expect_seconds, expect_interrupted, expect_recovered, expect_before):
    out = measure_outage(acks, fault_at, STEP)
    assert out.interrupted is expect_interrupted, case
    assert out.recovered is expect_recovered, case
    if expect_seconds is None:
        assert out.seconds is None and out.first_ack_after is None, case
    else:
        assert out.seconds == pytest.approx(expect_seconds, abs=1e-6), case
    assert out.last_ack_before == pytest.approx(expect_before), case


def test_outage_counts_every_gap_above_threshold_in_total():
    acks = [*ticks(0, 5.0), *ticks(6.0, 6.5), *ticks(9.0, 10.0)]
    out = measure_outage(acks, 5.0, STEP)
    assert len(out.gaps) == 2
    assert out.total_seconds == pytest.approx((6.0 - 4.95) + (9.0 - 6.45))


def test_outage_without_any_ack_or_fault_is_unrecovered():
    out = measure_outage([], None, STEP)
    assert out.recovered is False and out.seconds is None


# -- split brain -------------------------------------------------------------------------------------------------------


def samples(node: str, pattern: str, start: float = 0.0, step: float = 0.5) -> list[NodeSample]:
    """'W' writable, 'r' read-only, '-' no answer; one sample every ``step``."""
    value = {"W": True, "r": False, "-": None}
    return [NodeSample(start + i * step, node, value[c]) for i, c in enumerate(pattern)]


@pytest.mark.parametrize(
    ("case", "pg1", "pg2", "expect"),
    [
        ("clean switchover: old stops before new starts", "WWWWrrrr", "rrrrWWWW", []),
        ("sample skew never fakes an overlap", "WWWrrrrr", "rrr-WWWW", []),
        ("node unreachable is not counted as writable", "WW----WW", "rr-WW-rr", []),
        ("overlapping primaries for 1 s", "WWWWWWrr", "rrrrWWWW", [(2.0, 2.5)]),
        ("single simultaneous writable samples", "rrWrrrrr", "rrWrrrrr", [(1.0, 1.0)]),
        ("no samples at all", "", "", []),
    ],
)
def test_split_brain_intervals(case, pg1, pg2, expect):
    found = split_brain_intervals(samples("pg1", pg1) + samples("pg2", pg2))
    assert [(s.start, s.end) for s in found] == expect, case
    for sb in found:
        assert sb.nodes == ("pg1", "pg2")


def test_split_brain_three_way_overlap_merges_nodes():
    found = split_brain_intervals(samples("pg1", "WWW") + samples("pg2", "WWW") + samples("pg3", "rWW"))
    assert len(found) == 1
    assert found[0].nodes == ("pg1", "pg2", "pg3")
    assert (found[0].start, found[0].end) == (0.0, 1.0)


# -- cluster snapshots: leader changes and rejoin ----------------------------------------------------------------------


def snap(at: float, leader: str | None, others: dict[str, tuple[str, str, int]], tl: int = 1) -> ClusterSnapshot:
    members = [Member(leader, "leader", "running", tl)] if leader else []
    members += [Member(name, role, state, t) for name, (role, state, t) in others.items()]
    return ClusterSnapshot(at, tuple(members))


HEALTHY_TL1 = {"pg2": ("sync_standby", "streaming", 1), "pg3": ("replica", "streaming", 1)}


def failover_snapshots() -> list[ClusterSnapshot]:
    return [
        snap(0.0, "pg1", HEALTHY_TL1),
        snap(5.0, "pg1", HEALTHY_TL1),
        snap(25.0, None, {"pg2": ("replica", "streaming", 1), "pg3": ("replica", "streaming", 1)}),
        snap(27.0, "pg2", {"pg3": ("replica", "streaming", 1)}, tl=2),
        snap(40.0, "pg2", {"pg1": ("replica", "starting", 1), "pg3": ("sync_standby", "streaming", 2)}, tl=2),
        snap(45.0, "pg2", {"pg1": ("replica", "streaming", 1), "pg3": ("sync_standby", "streaming", 2)}, tl=2),
        snap(50.0, "pg2", {"pg1": ("replica", "streaming", 2), "pg3": ("sync_standby", "streaming", 2)}, tl=2),
    ]


def test_leader_changes_sees_expiry_then_promotion():
    assert leader_changes(failover_snapshots(), after=10.0) == (25.0, 27.0, "pg2")


def test_leader_changes_without_failover():
    snaps = [snap(t, "pg1", HEALTHY_TL1) for t in (0.0, 5.0, 10.0)]
    assert leader_changes(snaps, after=2.0) == (None, None, None)


@pytest.mark.parametrize(
    ("case", "since", "expect"),
    [
        ("waits for streaming on the leader's timeline", 30.0, 50.0),
        ("never rejoined before the end", 51.0, None),
    ],
)
def test_rejoined_at(case, since, expect):
    assert rejoined_at(failover_snapshots(), "pg1", since) == expect, case


# -- phases ------------------------------------------------------------------------------------------------------------


def test_phases_with_failover_cover_the_whole_outage():
    phases = recovery_phases(10.0, 25.0, 27.0, 29.0, 29.0)
    assert [p.name for p in phases] == [
        "leader key expiry / release",
        "pre-promotion checks + promotion",
        "HAProxy detection + client reconnect",
    ]
    assert sum(p.seconds for p in phases) == pytest.approx(19.0)


def test_phases_when_leaderless_not_observed():
    phases = recovery_phases(10.0, None, 11.0, 12.5, 12.5)
    assert phases == (
        Phase("leader change (expiry + promotion)", 10.0, 11.0),
        Phase("HAProxy detection + client reconnect", 11.0, 12.5),
    )


def test_phases_without_leader_change():
    assert recovery_phases(10.0, None, None, None, 13.0) == (Phase("in-place recovery (no leader change)", 10.0, 13.0),)


# -- end to end on one recording ---------------------------------------------------------------------------------------


def failover_recording(lost_tail: int = 0) -> tuple[Recording, list[int]]:
    before = [Ack(i, t - 0.01, t, "pg1") for i, t in enumerate(ticks(0, 10.0))]
    after = [Ack(1000 + i, t - 0.01, t, "pg2") for i, t in enumerate(ticks(29.0, 60.0))]
    writes = tuple(before + after)
    present = [a.seq for a in writes][: len(writes) - lost_tail] if lost_tail else [a.seq for a in writes]
    rec = Recording(
        writes=writes,
        reads=tuple(Ack(i, t, t, "pg3") for i, t in enumerate(ticks(0, 60.0, 0.1))),
        node_samples=tuple(samples("pg1", "W" * 20 + "-" * 100) + samples("pg2", "r" * 54 + "W" * 66)),
        snapshots=tuple(failover_snapshots()),
        history=(HistoryEntry(1, 123456, "no recovery target specified", 26.5, "pg2"),),
        started_at=0.0,
        stopped_at=60.0,
    )
    return rec, present


def test_analyse_failover_reports_every_figure():
    rec, present = failover_recording()
    res = analyse(rec, fault_at=10.0, heal_at=35.0, old_primary="pg1", present_seqs=present)
    assert res.write_outage.seconds == pytest.approx(29.0 - 9.95)
    assert res.read_outage.interrupted is False
    assert res.lost_writes == ()
    assert res.split_brain == ()
    assert (res.leaderless_at, res.new_primary) == (25.0, "pg2")
    assert res.promoted_at == 26.5  # Patroni's own timestamp is earlier than the next poll
    assert res.haproxy_switch_at == 29.0
    assert res.rejoin_seconds == pytest.approx(15.0)
    kinds = [e.kind for e in res.events]
    assert kinds == ["leaderless", "promotion", "haproxy_switch", "first_ack", "rejoined"]
    assert sum(p.seconds for p in res.phases) == pytest.approx(29.0 - 10.0)


def test_analyse_counts_lost_writes_and_unverifiable_result():
    rec, present = failover_recording(lost_tail=3)
    lost = analyse(rec, fault_at=10.0, heal_at=None, old_primary="pg1", present_seqs=present).lost_writes
    assert lost is not None and len(lost) == 3
    assert analyse(rec, fault_at=10.0, heal_at=None, old_primary="pg1", present_seqs=None).lost_writes is None


def test_analyse_with_no_fault_is_a_quiet_baseline():
    rec = Recording(writes=tuple(Ack(i, t, t, "pg1") for i, t in enumerate(ticks(0, 5.0))))
    res = analyse(rec, fault_at=None, heal_at=None, old_primary="pg1", present_seqs=range(100))
    assert res.write_outage.interrupted is False
    assert res.phases == () and res.events == () and res.new_primary is None and res.lost_writes == ()


def test_coverage_is_a_share_of_the_probes_window_not_of_the_drills_preparation():
    """The drill prepared for 60 s before any probe ran; a node answering throughout the probes is 100 % seen."""
    rec = Recording(
        node_samples=tuple(NodeSample(60.0 + i * 0.25, "pg1", True) for i in range(161)),
        started_at=0.0,
        stopped_at=110.0,
        probes_from=60.0,
        probes_until=100.0,
    )
    res = analyse(rec, fault_at=None, heal_at=None, old_primary="pg1", present_seqs=())
    assert res.sampling_coverage["pg1"] == pytest.approx(1.0)
    whole = analyse(replace(rec, probes_from=None, probes_until=None), fault_at=None, heal_at=None,
                    old_primary="pg1", present_seqs=())
    assert whole.sampling_coverage["pg1"] == pytest.approx(40.0 / 110.0), "synthetic recordings: the whole span"


def pooled_switchover_recording(stall_s: float, failed_writes: int = 0, failed_reads: int = 0,
                                read_stall_s: float = 0.5) -> Recording:
    """Writes every 50 ms; one is held ``stall_s`` at a paused pooler from t=10, a read ``read_stall_s``;
    some may fail."""
    from careflow_ha.cluster.records import ProbeError

    before = [Ack(i, t - 0.01, t, "pg1") for i, t in enumerate(ticks(0, 10.0))]
    held = [Ack(500, 10.0, 10.0 + stall_s, "pg2")]
    after = [Ack(1000 + i, t - 0.01, t, "pg2") for i, t in enumerate(ticks(10.0 + stall_s + STEP, 20.0))]
    errors = tuple(ProbeError(2000 + i, 10.0, "connect", "server closed the connection") for i in range(failed_writes))
    reads = tuple(ProbeError(3000 + i, 10.0, "query", "canceling statement") for i in range(failed_reads))
    read_acks = [Ack(i, t, t, "pg3") for i, t in enumerate(ticks(0, 10.0, 0.1))]
    read_acks += [Ack(900 + i, t, t, "pg3") for i, t in enumerate(ticks(10.0 + read_stall_s, 20.0, 0.1))]
    return Recording(writes=tuple(before + held + after), write_errors=errors, reads=tuple(read_acks),
                     read_errors=reads, started_at=0.0, stopped_at=20.0, read_interval_s=0.1)


def verdict_map(rec: Recording, via: str, preset: str = "fast") -> dict[str, bool | None]:
    from careflow_ha.drills.targets import verdicts

    a = analyse(rec, fault_at=10.0, heal_at=None, old_primary="pg1", present_seqs=[w.seq for w in rec.writes])
    return {v.target: v.ok for v in verdicts("switchover", preset, True, a, True, via)}


def test_a_pooled_switchover_is_judged_by_its_stall_and_by_zero_failed_transactions():
    ok = verdict_map(pooled_switchover_recording(2.5), "pgbouncer")
    assert ok["worst client stall <= 3 s"] is True and ok["0 failed transactions through the pooler"] is True
    assert "write outage <= 2 s" not in ok  # the held write is a stall, not an outage
    assert verdict_map(pooled_switchover_recording(3.4), "pgbouncer")["worst client stall <= 3 s"] is False
    # A reader held longer than the target misses it too: the worst client is any client.
    assert verdict_map(pooled_switchover_recording(1.0, read_stall_s=3.5), "pgbouncer")[
        "worst client stall <= 3 s"] is False
    assert verdict_map(pooled_switchover_recording(1.0, failed_writes=1), "pgbouncer")[
        "0 failed transactions through the pooler"] is False
    assert verdict_map(pooled_switchover_recording(1.0, failed_reads=1), "pgbouncer", preset="default")[
        "0 failed transactions through the pooler"] is False  # every preset: zero means zero


def test_the_held_write_is_the_longest_wait_and_failures_are_counted():
    rec = pooled_switchover_recording(2.5, failed_writes=2, failed_reads=1)
    a = analyse(rec, fault_at=10.0, heal_at=None, old_primary="pg1", present_seqs=[w.seq for w in rec.writes])
    assert a.longest_write_wait_s == pytest.approx(2.5)
    assert (a.failed_writes, a.failed_reads) == (2, 1)


def test_through_haproxy_a_switchover_keeps_its_outage_target():
    ok = verdict_map(pooled_switchover_recording(2.5), "haproxy-vip")
    assert ok["write outage <= 2 s"] is False and "0 failed transactions through the pooler" not in ok
