"""Pure analysis of a drill recording: outages, the set check of writes, split brain, rejoin, phases.

No I/O here: every function takes recorded timelines and returns immutable
results, so each rule is unit-tested on synthetic timelines (including the
edge cases: no fault, no outage, an ack just before the fault, duplicates).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from careflow_ha.cluster.model import ClusterSnapshot, HistoryEntry, TimelineEvent
from careflow_ha.cluster.records import Ack, NodeSample, Recording
from careflow_ha.drills.checker import SetCheck, attempts_of, check_set
from careflow_ha.drills.splitbrain import WriteSplitBrain, judge_node_writes, sampling_coverage

#: A gap between acknowledgements counts as an outage when it is longer than
#: this many probe intervals (and at least MIN_OUTAGE_S): ordinary jitter on a
#: busy 2-core box is a few intervals, a failover is hundreds.
OUTAGE_INTERVALS = 5
MIN_OUTAGE_S = 0.25


@dataclass(frozen=True)
class Gap:
    """A stretch without acknowledgements: ``end`` is None while it never closed."""

    start: float
    end: float | None

    @property
    def seconds(self) -> float | None:
        return None if self.end is None else self.end - self.start


@dataclass(frozen=True)
class Outage:
    """Client-observed unavailability of one endpoint around a fault.

    ``seconds`` is the longest gap: from the last ack before it (at the latest
    the last ack at or before the fault) to the first ack after it. It is None
    when acks never resumed (``recovered`` False). ``interrupted`` says whether
    any gap exceeded the threshold; when it did not, ``seconds`` is simply the
    last ack at or before the fault to the first one after it.
    """

    last_ack_before: float | None
    first_ack_after: float | None
    seconds: float | None
    recovered: bool
    interrupted: bool
    gaps: tuple[Gap, ...] = ()

    @property
    def total_seconds(self) -> float | None:
        """Sum of all gaps above the threshold (several when the endpoint flapped)."""
        if any(g.end is None for g in self.gaps):
            return None
        return sum(g.seconds or 0.0 for g in self.gaps)


@dataclass(frozen=True)
class SplitBrain:
    """An interval in which two or more nodes were observed accepting writes."""

    start: float
    end: float
    nodes: tuple[str, ...]

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Phase:
    """One phase of the recovery, for "where did the time go"."""

    name: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Analysis:
    """Everything a drill report states, derived from a :class:`Recording`."""

    write_outage: Outage
    read_outage: Outage
    acked_writes: int
    attempted_writes: int
    ambiguous_writes: int  # outcome unknown to the client (never counted as acknowledged)
    set_check: SetCheck | None  # None: could not be verified (the primary never answered the read-back)
    split_brain: tuple[SplitBrain, ...]  # by role sampling: two nodes saying "not in recovery" at once
    sampling_coverage: Mapping[str, float]  # node -> share of the run the role sampler got an answer
    write_split_brain: WriteSplitBrain | None  # by per-node writes; None when the run had no per-node writers
    old_primary: str | None
    new_primary: str | None
    leaderless_at: float | None
    promoted_at: float | None
    haproxy_switch_at: float | None
    rejoined_at: float | None
    rejoin_seconds: float | None  # from heal (or the fault when nothing is healed) to streaming replica
    phases: tuple[Phase, ...]
    events: tuple[TimelineEvent, ...]
    #: Reads the client saw fail (any kind); writes' failures are ``attempted_writes - acked_writes``.
    failed_reads: int = 0
    #: The longest one acknowledged write took, sent to acknowledged (a write held at a paused pooler).
    longest_write_wait_s: float | None = None

    @property
    def failed_over(self) -> bool:
        """Another node became the primary."""
        return self.new_primary is not None and self.new_primary != self.old_primary

    @property
    def failed_writes(self) -> int:
        """Writes the client did not see acknowledged: refused, timed out or of unknown outcome."""
        return self.attempted_writes - self.acked_writes

    @property
    def lost_writes(self) -> tuple[int, ...] | None:
        """Acknowledged seqs missing after healing (the set check's ``lost``); None when not verifiable."""
        return None if self.set_check is None else self.set_check.lost


def outage_threshold(interval_s: float) -> float:
    """The shortest gap between acknowledgements that counts as an outage."""
    return max(OUTAGE_INTERVALS * interval_s, MIN_OUTAGE_S)


def measure_outage(ack_times: Iterable[float], fault_at: float | None, interval_s: float) -> Outage:
    """The client-observed outage around ``fault_at`` from the times of acknowledgements.

    Without a fault (``fault_at`` None) the whole recording is the window. A
    write acknowledged just before the fault is the start of the outage; acks
    at identical times (duplicates) count once.
    """
    times = sorted(set(ack_times))
    threshold = outage_threshold(interval_s)
    if fault_at is None:
        before = times[0] if times else None
        after = times[1:]
        origin = before
    else:
        earlier = [t for t in times if t <= fault_at]
        before = earlier[-1] if earlier else None
        after = [t for t in times if t > fault_at]
        origin = before if before is not None else fault_at
    if origin is None:  # no fault and no ack at all: nothing was measured
        return Outage(None, None, None, recovered=False, interrupted=True, gaps=(Gap(0.0, None),))
    if not after:
        gap = Gap(origin, None)
        return Outage(before, None, None, recovered=False, interrupted=True, gaps=(gap,))
    points = [origin, *after]
    all_gaps = [Gap(a, b) for a, b in zip(points, points[1:], strict=False)]
    big = tuple(g for g in all_gaps if (g.seconds or 0.0) > threshold)
    # Interrupted: the longest gap is the outage. Not interrupted: the literal
    # "last ack before the fault to the first after it", the measurement's resolution.
    longest = max(big, key=lambda g: g.seconds or 0.0) if big else all_gaps[0]
    return Outage(
        last_ack_before=longest.start,
        first_ack_after=longest.end,
        seconds=longest.seconds,
        recovered=True,
        interrupted=bool(big),
        gaps=big,
    )


def _writable_intervals(samples: Sequence[NodeSample]) -> list[tuple[float, float]]:
    """Intervals in which one node was certainly writable.

    Between two consecutive writable samples the node is taken as writable;
    after its last writable sample nothing is assumed. So a node that stops
    being writable between two samples never creates a false overlap with the
    node that takes over.
    """
    out: list[tuple[float, float]] = []
    ordered = sorted(samples, key=lambda s: s.at)
    for i, sample in enumerate(ordered):
        if sample.writable is not True:
            continue
        nxt = ordered[i + 1] if i + 1 < len(ordered) else None
        end = nxt.at if nxt is not None and nxt.writable is True else sample.at
        if out and out[-1][1] >= sample.at:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((sample.at, end))
    return out


def split_brain_intervals(samples: Iterable[NodeSample]) -> tuple[SplitBrain, ...]:
    """Every interval in which two or more nodes were observed writable at once."""
    by_node: dict[str, list[NodeSample]] = {}
    for sample in samples:
        by_node.setdefault(sample.node, []).append(sample)
    intervals = {node: _writable_intervals(s) for node, s in by_node.items()}
    nodes = sorted(intervals)
    found: list[SplitBrain] = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1 :]:
            for a0, a1 in intervals[a]:
                for b0, b1 in intervals[b]:
                    start, end = max(a0, b0), min(a1, b1)
                    if start <= end:
                        found.append(SplitBrain(start, end, (a, b)))
    found.sort(key=lambda s: (s.start, s.end))
    merged: list[SplitBrain] = []
    for sb in found:
        if merged and sb.start <= merged[-1].end:
            last = merged[-1]
            merged[-1] = SplitBrain(last.start, max(last.end, sb.end), tuple(sorted(set(last.nodes) | set(sb.nodes))))
        else:
            merged.append(sb)
    return tuple(merged)


def leader_changes(snapshots: Iterable[ClusterSnapshot], after: float) -> tuple[float | None, float | None, str | None]:
    """(first leaderless moment, first moment with a different leader, that leader) after ``after``.

    The leader before ``after`` is the one in the last snapshot taken at or
    before it. Leaderless means the leader key is gone (expired or released).
    """
    ordered = sorted(snapshots, key=lambda s: s.at)
    before = [s for s in ordered if s.at <= after and s.leader]
    old = before[-1].leader if before else None
    leaderless_at: float | None = None
    for snap in ordered:
        if snap.at <= after:
            continue
        if snap.leader is None and leaderless_at is None:
            leaderless_at = snap.at
        if snap.leader is not None and old is not None and snap.leader != old:
            return leaderless_at, snap.at, snap.leader
    return leaderless_at, None, None


def rejoined_at(snapshots: Iterable[ClusterSnapshot], node: str, since: float) -> float | None:
    """First moment at or after ``since`` where ``node`` streams as a replica on the leader's timeline."""
    for snap in sorted(snapshots, key=lambda s: s.at):
        if snap.at < since or snap.leader is None or snap.leader == node:
            continue
        member, leader = snap.member(node), snap.member(snap.leader)
        if member is None or leader is None or not member.is_streaming_replica:
            continue
        if member.timeline is None or leader.timeline is None or member.timeline == leader.timeline:
            return snap.at
    return None


def first_ack_from(acks: Iterable[Ack], after: float, server: str) -> float | None:
    """The first acknowledgement after ``after`` answered by ``server`` (HAProxy's switch, seen by the client)."""
    times = [a.acked_at for a in acks if a.acked_at > after and a.server == server]
    return min(times) if times else None


def promotion_from_history(history: Iterable[HistoryEntry], after: float, leader: str | None) -> float | None:
    """Patroni's own timestamp of the timeline switch to ``leader`` after ``after``, if it recorded one."""
    times = [
        h.at
        for h in history
        if h.at is not None and h.at >= after and (leader is None or h.new_leader in (None, leader))
    ]
    return min(times) if times else None


def recovery_phases(
    fault_at: float,
    leaderless_at: float | None,
    promoted_at: float | None,
    switch_at: float | None,
    first_ack_at: float | None,
) -> tuple[Phase, ...]:
    """Split the write outage into phases, from whatever moments were observed.

    With a failover: lease expiry (fault -> leader key gone), pre-promotion
    checks and promotion (-> new leader), then HAProxy detection plus the
    client's reconnect (-> first write acknowledged by the new primary).
    Without one: a single in-place recovery phase.
    """
    phases: list[Phase] = []
    if promoted_at is None:
        if first_ack_at is not None and first_ack_at > fault_at:
            phases.append(Phase("in-place recovery (no leader change)", fault_at, first_ack_at))
        return tuple(phases)
    cursor = fault_at
    if leaderless_at is not None and fault_at <= leaderless_at <= promoted_at:
        phases.append(Phase("leader key expiry / release", cursor, leaderless_at))
        phases.append(Phase("pre-promotion checks + promotion", leaderless_at, promoted_at))
    else:
        phases.append(Phase("leader change (expiry + promotion)", cursor, max(promoted_at, cursor)))
    cursor = max(promoted_at, cursor)
    end = switch_at if switch_at is not None else first_ack_at
    if end is not None and end >= cursor:
        phases.append(Phase("HAProxy detection + client reconnect", cursor, end))
    return tuple(phases)


def analyse(
    rec: Recording,
    *,
    fault_at: float | None,
    heal_at: float | None,
    old_primary: str | None,
    present_seqs: Iterable[int] | None,
) -> Analysis:
    """Derive every reported figure from one recording.

    ``present_seqs`` is the probe table read back once after healing, one seq
    per row (duplicates kept), or None when it could not be read.
    """
    write_outage = measure_outage((a.acked_at for a in rec.writes), fault_at, rec.write_interval_s)
    read_outage = measure_outage((a.acked_at for a in rec.reads), fault_at, rec.read_interval_s)
    attempts = attempts_of(rec)
    checked = None if present_seqs is None else check_set(attempts, present_seqs)
    split = split_brain_intervals(rec.node_samples)
    window = rec.observed_window
    by_writes = (
        judge_node_writes(rec.node_writes, rec.snapshots, *window, nodes=(s.node for s in rec.node_samples))
        if rec.node_writes
        else None
    )
    events = list(rec.events)
    leaderless_at = promoted_at = switch_at = rejoin = None
    new_primary = None
    if fault_at is not None:
        leaderless_at, promoted_at, new_primary = leader_changes(rec.snapshots, fault_at)
        history_at = promotion_from_history(rec.history, fault_at, new_primary)
        if history_at is not None and (promoted_at is None or history_at < promoted_at):
            promoted_at = history_at
            if new_primary is None:
                new_primary = next(
                    (h.new_leader for h in rec.history if h.at == history_at and h.new_leader != old_primary), None
                )
        if new_primary is not None:
            switch_at = first_ack_from(rec.writes, fault_at, new_primary)
        if leaderless_at is not None:
            events.append(TimelineEvent(leaderless_at, "leaderless", "leader key gone (expired or released)"))
        if promoted_at is not None:
            events.append(TimelineEvent(promoted_at, "promotion", f"new leader {new_primary or '?'}"))
        if switch_at is not None:
            events.append(TimelineEvent(switch_at, "haproxy_switch", f"first ack via 5000 from {new_primary}"))
        if write_outage.first_ack_after is not None and write_outage.interrupted:
            events.append(TimelineEvent(write_outage.first_ack_after, "first_ack", "first acknowledged write"))
        if old_primary is not None and new_primary is not None:
            since = heal_at if heal_at is not None else fault_at
            rejoin = rejoined_at(rec.snapshots, old_primary, since)
            if rejoin is not None:
                events.append(TimelineEvent(rejoin, "rejoined", f"{old_primary} streaming as a replica"))
    phases: tuple[Phase, ...] = ()
    if fault_at is not None and write_outage.interrupted:
        phases = recovery_phases(fault_at, leaderless_at, promoted_at, switch_at, write_outage.first_ack_after)
    since = heal_at if heal_at is not None else fault_at
    return Analysis(
        write_outage=write_outage,
        read_outage=read_outage,
        acked_writes=sum(1 for a in attempts if a.outcome == "acked"),
        attempted_writes=len({a.seq for a in attempts}),
        ambiguous_writes=sum(1 for a in attempts if a.outcome == "ambiguous"),
        set_check=checked,
        split_brain=split,
        sampling_coverage=sampling_coverage(rec.node_samples, *window),
        write_split_brain=by_writes,
        old_primary=old_primary,
        new_primary=new_primary,
        leaderless_at=leaderless_at,
        promoted_at=promoted_at,
        haproxy_switch_at=switch_at,
        rejoined_at=rejoin,
        rejoin_seconds=None if rejoin is None or since is None else rejoin - since,
        phases=phases,
        events=tuple(sorted(events, key=lambda e: e.at)),
        failed_reads=len(rec.read_errors),
        longest_write_wait_s=max((a.acked_at - a.sent_at for a in rec.writes), default=None),
    )
