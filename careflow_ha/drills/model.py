"""Immutable records collected during a drill.

Every timestamp is wall-clock seconds since the epoch (``time.time()``), so
client observations, Patroni's own timestamps (``/history``) and the fault
injection can share one timeline. Durations are differences of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from careflow_ha.cluster.model import ClusterSnapshot, HistoryEntry, TimelineEvent


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
