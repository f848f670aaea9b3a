"""Immutable records of the cluster as Patroni reports it: members, snapshots, timeline history.

They sit at the bottom of the package (like Patroni's own ``Member`` and
``Cluster`` in ``patroni/dcs``) so that ``status``, drills, load runs and
benchmarks share one model. Timestamps are wall-clock seconds since the
epoch (``time.time()``), so client observations and Patroni's own
timestamps (``/history``) share one timeline.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Patroni member roles that count as "the primary".
LEADER_ROLES: frozenset[str] = frozenset({"leader", "standby_leader"})
#: Patroni member roles that are standbys.
REPLICA_ROLES: frozenset[str] = frozenset({"replica", "sync_standby", "quorum_standby"})


@dataclass(frozen=True)
class Member:
    """One Patroni member as ``GET /cluster`` describes it."""

    name: str
    role: str
    state: str
    timeline: int | None = None
    lag: int | None = None  # bytes; None when unknown or not a replica

    @property
    def is_leader(self) -> bool:
        return self.role in LEADER_ROLES

    @property
    def is_streaming_replica(self) -> bool:
        return self.role in REPLICA_ROLES and self.state == "streaming"


@dataclass(frozen=True)
class ClusterSnapshot:
    """The cluster as one Patroni node reported it at ``at`` (``source`` = the node asked)."""

    at: float
    members: tuple[Member, ...]
    source: str = ""

    @property
    def leader(self) -> str | None:
        leaders = [m.name for m in self.members if m.is_leader]
        return leaders[0] if len(leaders) == 1 else None

    @property
    def sync_standbys(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members if m.role in ("sync_standby", "quorum_standby"))

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)


@dataclass(frozen=True)
class HistoryEntry:
    """One line of Patroni's ``GET /history``: a timeline switch."""

    timeline: int
    lsn: int
    reason: str
    at: float | None
    new_leader: str | None = None


@dataclass(frozen=True)
class TimelineEvent:
    """A named moment on a drill or load timeline (fault, heal, leaderless, promotion, role change, ...)."""

    at: float
    kind: str
    detail: str = ""
