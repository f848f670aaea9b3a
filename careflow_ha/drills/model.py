"""Immutable records collected during a drill.

Every timestamp is wall-clock seconds since the epoch (``time.time()``), so
client observations, Patroni's own timestamps (``/history``) and the fault
injection can share one timeline. Durations are differences of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Patroni member roles that count as "the primary".
LEADER_ROLES: frozenset[str] = frozenset({"leader", "standby_leader"})
#: Patroni member roles that are standbys.
REPLICA_ROLES: frozenset[str] = frozenset({"replica", "sync_standby", "quorum_standby"})


@dataclass(frozen=True)
class Ack:
    """One probe operation the server acknowledged (a committed insert, or an answered read)."""

    seq: int
    sent_at: float
    acked_at: float
    server: str | None = None  # node name if known, else inet_server_addr()


@dataclass(frozen=True)
class ProbeError:
    """One probe operation that failed; ``kind`` is 'connect', 'query' or 'ambiguous'.

    'ambiguous' is a commit whose outcome the client cannot know (for example a
    sync-replication wait cancelled by statement_timeout): it never counts as
    acknowledged, so it can never be reported as a lost acknowledged write.
    """

    seq: int
    at: float
    kind: str
    message: str


@dataclass(frozen=True)
class NodeSample:
    """One direct look at one node: ``writable`` is True/False, or None when the node did not answer."""

    at: float
    node: str
    writable: bool | None
    via: Literal["tcp", "exec", "none"] = "tcp"


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
    """A named moment on the drill timeline (fault, heal, leaderless, promotion, HAProxy switch, ...)."""

    at: float
    kind: str
    detail: str = ""


@dataclass(frozen=True)
class Recording:
    """Everything observed during one drill run, before analysis."""

    writes: tuple[Ack, ...] = ()
    write_errors: tuple[ProbeError, ...] = ()
    reads: tuple[Ack, ...] = ()
    read_errors: tuple[ProbeError, ...] = ()
    node_samples: tuple[NodeSample, ...] = ()
    snapshots: tuple[ClusterSnapshot, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    events: tuple[TimelineEvent, ...] = ()
    started_at: float = 0.0
    stopped_at: float = 0.0
    write_interval_s: float = 0.05
    read_interval_s: float = 0.1
