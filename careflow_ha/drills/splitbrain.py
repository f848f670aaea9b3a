"""Split brain judged by what matters: writes a node acknowledged while another node held the leader key.

Role sampling (``pg_is_in_recovery()``, in ``analysis.split_brain_intervals``)
says what a node claims; a frozen old primary in synchronous mode claims to
be primary yet can acknowledge nothing. The per-node writers
(``probes.NodeWriter``) say what a node did: an insert it acknowledged
straight on its own port. This module turns those into:

- the writes acknowledged on a node while Patroni's leader key (the
  ``/cluster`` snapshots) named another node throughout the write: each one
  is split brain, with no sampling guess in between;
- the ambiguous ones in the same windows (timed out mid-commit), apart;
- per node, the share of the run it was actually observed, by each measure:
  time a node was not seen can hide split brain, so it is reported, not
  silently taken as "fine".

The leader key is read from ``GET /cluster`` of whichever member answers.
A member cut off from etcd but reachable from the host (the ``dcs-partition``
drill) answers from its last view of the DCS: while the poller happens to ask
it, a new leader's tenure starts late, so this measure may miss a write
acknowledged there. Role sampling and the probe writer are unaffected; reading
the key from etcd itself would close that gap, and is not done yet.

Pure: synthetic timelines in, immutable results out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from careflow_ha.cluster.model import ClusterSnapshot
from careflow_ha.cluster.records import NodeSample, NodeWrite

#: Two consecutive leader-key snapshots this far apart or closer, naming the same leader, are taken to
#: cover the time between them. Wider gaps (the poller could not reach any API) prove nothing.
TENURE_GAP_S = 3.0
#: A snapshot is stamped when its answer arrives; the leader key it shows was read up to one REST round
#: trip earlier. A tenure's start needs no correction (the leader held the key by then), its end does:
#: it is moved this much earlier, so a write judged "under another leader" is certainly inside.
TENURE_END_MARGIN_S = 0.5
#: Two consecutive definite answers from a node this far apart or closer count as observing it in between.
OBSERVED_GAP_S = 1.0


@dataclass(frozen=True)
class Tenure:
    """A stretch in which every snapshot named ``leader`` as the holder of the leader key."""

    leader: str
    start: float
    end: float


@dataclass(frozen=True)
class ForeignLeaderWrite:
    """A write on ``node`` whose whole round trip fell inside ``leader``'s tenure (``leader`` != ``node``)."""

    node: str
    leader: str
    seq: int
    sent_at: float
    done_at: float


@dataclass(frozen=True)
class WriteSplitBrain:
    """The per-node-writer verdict for one run, with how much of it each node was seen."""

    acknowledged: tuple[ForeignLeaderWrite, ...]  # split brain, certain
    ambiguous: tuple[ForeignLeaderWrite, ...]  # outcome unknown: possible split brain, never counted as certain
    coverage: Mapping[str, float]  # node -> share of the run answered (acked or refused) by its writer
    leader_known: float  # share of the run inside some leader tenure (where the rule can judge at all)

    @property
    def nodes(self) -> tuple[str, ...]:
        """Nodes that acknowledged a write under another leader."""
        return tuple(sorted({w.node for w in self.acknowledged}))


def leader_tenures(
    snapshots: Iterable[ClusterSnapshot], max_gap_s: float = TENURE_GAP_S, end_margin_s: float = TENURE_END_MARGIN_S
) -> tuple[Tenure, ...]:
    """Stretches between consecutive snapshots, at most ``max_gap_s`` apart, that name the same leader.

    Each stretch ends ``end_margin_s`` before its last snapshot's stamp (see TENURE_END_MARGIN_S);
    one left with no length is dropped.
    """
    ordered = sorted(snapshots, key=lambda s: s.at)
    stretches: list[Tenure] = []
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a.leader is None or a.leader != b.leader or b.at - a.at > max_gap_s:
            continue
        if stretches and stretches[-1].leader == a.leader and stretches[-1].end >= a.at:
            stretches[-1] = Tenure(a.leader, stretches[-1].start, b.at)
        else:
            stretches.append(Tenure(a.leader, a.at, b.at))
    trimmed = (Tenure(t.leader, t.start, t.end - end_margin_s) for t in stretches)
    return tuple(t for t in trimmed if t.end > t.start)


def _under_foreign_leader(write: NodeWrite, tenures: Sequence[Tenure]) -> Tenure | None:
    for tenure in tenures:
        if tenure.leader != write.node and tenure.start <= write.sent_at and write.done_at <= tenure.end:
            return tenure
    return None


def observed_share(times: Iterable[float], start: float, stop: float, max_gap_s: float = OBSERVED_GAP_S) -> float:
    """Share of ``[start, stop]`` between consecutive observations at most ``max_gap_s`` apart (0.0 to 1.0)."""
    if stop <= start:
        return 0.0
    ordered = sorted(t for t in times if start <= t <= stop)
    covered = sum(b - a for a, b in zip(ordered, ordered[1:], strict=False) if b - a <= max_gap_s)
    return min(covered / (stop - start), 1.0)


def _covered_by(tenures: Sequence[Tenure], start: float, stop: float) -> float:
    if stop <= start:
        return 0.0
    total = sum(max(0.0, min(t.end, stop) - max(t.start, start)) for t in tenures)
    return min(total / (stop - start), 1.0)


def judge_node_writes(
    writes: Iterable[NodeWrite],
    snapshots: Iterable[ClusterSnapshot],
    start: float,
    stop: float,
    *,
    nodes: Iterable[str] = (),
    max_gap_s: float = OBSERVED_GAP_S,
) -> WriteSplitBrain:
    """Split brain by acknowledged writes over ``[start, stop]``; ``nodes`` adds nodes never heard from (0 %)."""
    tenures = leader_tenures(snapshots)
    acked: list[ForeignLeaderWrite] = []
    unsure: list[ForeignLeaderWrite] = []
    answers: dict[str, list[float]] = {n: [] for n in nodes}
    for w in writes:
        if w.outcome in ("acked", "refused"):
            answers.setdefault(w.node, []).append(w.done_at)
        else:
            answers.setdefault(w.node, [])
        if w.outcome not in ("acked", "ambiguous"):
            continue
        tenure = _under_foreign_leader(w, tenures)
        if tenure is not None:
            found = ForeignLeaderWrite(w.node, tenure.leader, w.seq, w.sent_at, w.done_at)
            (acked if w.outcome == "acked" else unsure).append(found)
    order = lambda f: (f.sent_at, f.node, f.seq)  # noqa: E731 - the one sort key, shared by both lists
    return WriteSplitBrain(
        acknowledged=tuple(sorted(acked, key=order)),
        ambiguous=tuple(sorted(unsure, key=order)),
        coverage=MappingProxyType(
            {n: observed_share(t, start, stop, max_gap_s) for n, t in sorted(answers.items())}
        ),
        leader_known=_covered_by(tenures, start, stop),
    )


def sampling_coverage(
    samples: Iterable[NodeSample], start: float, stop: float, max_gap_s: float = OBSERVED_GAP_S
) -> Mapping[str, float]:
    """Per node, the share of the run the role sampler got a definite answer (writable or not)."""
    times: dict[str, list[float]] = {}
    for s in samples:
        bucket = times.setdefault(s.node, [])
        if s.writable is not None:
            bucket.append(s.at)
    return MappingProxyType({n: observed_share(t, start, stop, max_gap_s) for n, t in sorted(times.items())})
