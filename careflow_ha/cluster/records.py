"""Immutable records the probes collect (cluster/probes.py), for the failover and restore drills alike.

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
    """One probe operation that failed; ``kind`` says what the client knows of its fate.

    - 'connect': no connection, so nothing was sent: certainly not applied.
    - 'query': the server answered the statement with an ERROR: in autocommit
      that aborts the transaction, so certainly not applied.
    - 'ambiguous': the outcome is unknown. A sync-replication wait cut short
      (the commit is local only), or the connection dropped or was cut while
      the statement ran (it may have committed). It never counts as
      acknowledged, so it can never be reported as a lost acknowledged write,
      and the set checker says whether it turned up in the table or not.
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


#: ProbeError kinds that mean "certainly not applied" (see :class:`ProbeError`).
DEFINITE_FAILURE_KINDS = frozenset({"connect", "query"})

NodeWriteOutcome = Literal["acked", "refused", "ambiguous", "unreachable"]


@dataclass(frozen=True)
class NodeWrite:
    """One tiny insert sent straight to one node's own port (not through HAProxy), to catch split brain.

    The commit, if any, happened somewhere in ``[sent_at, done_at]``. 'acked':
    the node committed it; 'refused': the node answered with an error (a
    replica's read-only refusal); 'ambiguous': the connection dropped or timed
    out mid-statement; 'unreachable': no connection, nothing was sent.
    """

    node: str
    seq: int
    sent_at: float
    done_at: float
    outcome: NodeWriteOutcome
    via: Literal["tcp", "exec"] = "tcp"


@dataclass(frozen=True)
class Recording:
    """Everything observed during one drill run, before analysis."""

    writes: tuple[Ack, ...] = ()
    write_errors: tuple[ProbeError, ...] = ()
    #: Seqs the writer sent whose answer it never recorded (in flight when it stopped): ambiguous.
    writes_in_flight: tuple[int, ...] = ()
    reads: tuple[Ack, ...] = ()
    read_errors: tuple[ProbeError, ...] = ()
    node_samples: tuple[NodeSample, ...] = ()
    #: The per-node writers' inserts; empty when the run had none (see ``probes.NodeWriter``).
    node_writes: tuple[NodeWrite, ...] = ()
    snapshots: tuple[ClusterSnapshot, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    events: tuple[TimelineEvent, ...] = ()
    started_at: float = 0.0
    stopped_at: float = 0.0
    write_interval_s: float = 0.05
    read_interval_s: float = 0.1
    #: When the probes ran (started to stopped). Coverage is a share of this window: the drill's
    #: preparation, before any probe runs, is no time in which a node went unobserved.
    probes_from: float | None = None
    probes_until: float | None = None

    @property
    def observed_window(self) -> tuple[float, float]:
        """The probes' window, or the whole recording when it was not recorded (synthetic recordings)."""
        start = self.started_at if self.probes_from is None else self.probes_from
        stop = self.stopped_at if self.probes_until is None else self.probes_until
        return start, stop
