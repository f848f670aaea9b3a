"""Bounded background clients that observe the cluster the way an application does.

- :class:`ProbeWriter` inserts ``(seq, client timestamp)`` through HAProxy's RW
  port at a fixed rate and records every acknowledgement.
- :class:`ProbeReader` reads through the RO port.
- :class:`NodeSampler` asks one node directly whether it accepts writes, to
  catch two writable primaries (falling back to the node's unix socket when
  the host cannot reach it, e.g. during a network partition).

Every probe is a thread bounded in operations and wall time, uses short
connect timeouts (so an outage shows as errors, not as a hang) and stops by
itself. Timestamps are ``time.time()``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from psycopg import sql

from careflow_ha.cluster.records import Ack, NodeSample, NodeWrite, NodeWriteOutcome, ProbeError
from careflow_ha.cluster.watch import BoundedLoop
from careflow_ha.dsn import pooler_safe

PROBE_TABLE = "drill_probe"
#: The per-node writers' table: one row per acknowledged insert on whichever node took it.
NODE_PROBE_TABLE = "drill_node_probe"

#: libpq options for every probe connection. Keepalives and tcp_user_timeout
#: make a dead or partitioned server show up as an error within seconds
#: instead of a hang on a half-open socket.
CONNECT_KW: Mapping[str, Any] = {
    "connect_timeout": 2,
    "keepalives": 1,
    "keepalives_idle": 1,
    "keepalives_interval": 1,
    "keepalives_count": 2,
    "tcp_user_timeout": 3000,
    "application_name": "careflow-ha-drill",
}


def connect(dsn: str, statement_timeout_ms: int, **extra: Any) -> psycopg.Connection:
    """An autocommit connection with the probe timeouts (statement_timeout applies server-side)."""
    kwargs = {"options": f"-c statement_timeout={statement_timeout_ms}", **CONNECT_KW, **extra}
    # Through PgBouncer: no options startup parameter and no prepared statements (docs/pooling.md);
    # the Watchdog still bounds every call from the client side.
    return psycopg.connect(dsn, autocommit=True, **pooler_safe(dsn, kwargs))


class Watchdog:
    """Bound one blocking call on ``conn``: cancel it after ``seconds``, cut its socket ``grace`` later.

    Why both: a commit waiting for a lost sync standby ignores statement_timeout
    (it is disabled before the commit waits), so only a cancel request frees
    it; a frozen server (container paused) answers TCP keepalives but never
    the query or the cancel, so only shutting the socket down frees the client.
    """

    def __init__(self, conn: psycopg.Connection, seconds: float, grace: float = 1.0) -> None:
        self._conn = conn
        self._seconds = seconds
        self._grace = grace
        self._done = threading.Event()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self.fired = False

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._timer.cancel()

    def _fire(self) -> None:
        if self._done.is_set():
            return
        self.fired = True
        # Best effort: the socket cut below is the backstop when the cancel cannot get through.
        with contextlib.suppress(Exception):
            self._conn.cancel_safe(timeout=1.0)
        if not self._done.wait(self._grace):
            try:
                with socket.socket(fileno=os.dup(self._conn.fileno())) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except (OSError, psycopg.Error):
                pass


def _grant_write(conn: psycopg.Connection, table: str, grant_to: str | None) -> None:
    """SELECT and INSERT on ``table`` for ``grant_to``, unless it has them: a table an older run created as
    another owner (the superuser, before it lost its TCP login) keeps its grants, and only its owner may
    grant."""
    if not grant_to:
        return
    held = conn.execute("SELECT has_table_privilege(%s, %s, 'SELECT') AND has_table_privilege(%s, %s, 'INSERT')",
                        (grant_to, table, grant_to, table)).fetchone()
    if not (held and held[0]):
        conn.execute(sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(sql.Identifier(table),
                                                                        sql.Identifier(grant_to)))


def ensure_probe_table(admin_dsn: str, grant_to: str | None = None) -> None:
    """Create the probe table if missing and let ``grant_to`` write and read it (idempotent).

    One table serves all runs, keyed by run id. On the cluster it is created by
    the admin role (CREATE on ``public`` in the EMR database, emr-prepare.sql.j2),
    so the drill does not depend on the app role's privileges on the schema.
    """
    with connect(admin_dsn, 30_000) as conn, Watchdog(conn, 30.0):
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {PROBE_TABLE} ("
            " run_id text NOT NULL,"
            " seq bigint NOT NULL,"
            " client_ts timestamptz NOT NULL,"
            " server_ts timestamptz NOT NULL DEFAULT clock_timestamp(),"
            " PRIMARY KEY (run_id, seq))"
        )
        _grant_write(conn, PROBE_TABLE, grant_to)


def ensure_node_probe_table(admin_dsn: str, grant_to: str | None = None) -> None:
    """Create the per-node writers' table if missing, writable by ``grant_to`` (idempotent).

    Created through the primary like the probe table; it reaches the replicas
    by replication, so each node's own insert finds it.
    """
    with connect(admin_dsn, 30_000) as conn, Watchdog(conn, 30.0):
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {NODE_PROBE_TABLE} ("
            " run_id text NOT NULL,"
            " node text NOT NULL,"
            " seq bigint NOT NULL,"
            " client_ts timestamptz NOT NULL,"
            " PRIMARY KEY (run_id, node, seq))"
        )
        _grant_write(conn, NODE_PROBE_TABLE, grant_to)


def fetch_seqs(dsn: str, run_id: str) -> tuple[int, ...]:
    """One seq per row of ``run_id`` that the server behind ``dsn`` holds (sorted; duplicates kept for the checker)."""
    with connect(dsn, 30_000) as conn:
        rows = conn.execute(f"SELECT seq FROM {PROBE_TABLE} WHERE run_id = %s ORDER BY seq", (run_id,)).fetchall()
    return tuple(int(r[0]) for r in rows)


def outcome_unknown(exc: psycopg.Error) -> bool:
    """Whether a statement that raised ``exc`` may still have committed.

    An ERROR from the server aborts the autocommit transaction: certainly not
    applied. Anything else (no SQLSTATE: the connection dropped or the
    watchdog cut it; class 08 connection exceptions; FATAL or PANIC, which
    end the backend, possibly after its commit record was written) leaves the
    outcome unknown.
    """
    state = exc.sqlstate
    if state is None or state.startswith("08"):
        return True
    return (exc.diag.severity_nonlocalized or "ERROR") != "ERROR"


def _short(exc: BaseException) -> str:
    """One line of an error, for the record (psycopg messages never contain the password)."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


class _SqlProbe(BoundedLoop):
    """A probe that keeps one connection and reconnects after any failure."""

    #: Whether a failed operation may have changed data, so an unknown outcome is 'ambiguous' (writers only).
    changes_data = False

    def __init__(
        self,
        name: str,
        dsn: str,
        interval_s: float,
        max_seconds: float,
        max_ops: int,
        server_names: Mapping[str, str] | None,
        statement_timeout_ms: int,
        op_timeout_s: float,
    ) -> None:
        super().__init__(name, interval_s, max_seconds, max_ops)
        self._op_timeout_s = op_timeout_s
        self._dsn = dsn
        self._names = dict(server_names or {})
        self._timeout_ms = statement_timeout_ms
        self._connect_kw: dict[str, Any] = {}
        self._conn: psycopg.Connection | None = None
        self._acks: list[Ack] = []
        self._errors: list[ProbeError] = []
        self._notices: list[str] = []
        # Recorded before sending, so an operation still running when the run
        # stops is known as attempted (ambiguous), never mistaken for "never sent".
        self._pending: set[int] = set()

    @property
    def acks(self) -> tuple[Ack, ...]:
        with self._lock:
            return tuple(self._acks)

    @property
    def errors(self) -> tuple[ProbeError, ...]:
        with self._lock:
            return tuple(self._errors)

    def last_ack_after(self, at: float) -> Ack | None:
        """The latest acknowledgement later than ``at``, if any."""
        with self._lock:
            return next((a for a in reversed(self._acks) if a.acked_at > at), None)

    def _server_name(self, addr: str | None) -> str | None:
        return self._names.get(addr, addr) if addr else None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            conn = connect(self._dsn, self._timeout_ms, **self._connect_kw)
            conn.add_notice_handler(lambda diag: self._notices.append(diag.message_primary or ""))
            self._conn = conn
        return self._conn

    def outcomes(self) -> tuple[tuple[Ack, ...], tuple[ProbeError, ...], tuple[int, ...]]:
        """(acks, errors, in flight), taken under one lock: every attempt is in exactly one of them.

        Three separate reads could miss an operation that completed between
        them, and the set checker would then call its row unexpected.
        """
        with self._lock:
            return tuple(self._acks), tuple(self._errors), tuple(sorted(self._pending))

    @property
    def in_flight(self) -> tuple[int, ...]:
        """Seqs sent but not answered yet; after the loop ended, ones it never got an answer for."""
        with self._lock:
            return tuple(sorted(self._pending))

    def _record(self, seq: int, sent: float, sql: str, params: tuple[Any, ...]) -> None:
        with self._lock:
            self._pending.add(seq)
        try:
            self._attempt(seq, sent, sql, params)
        finally:
            with self._lock:
                self._pending.discard(seq)

    def _attempt(self, seq: int, sent: float, sql: str, params: tuple[Any, ...]) -> None:
        kind = "connect"
        try:
            conn = self._connection()
            kind = "query"
            self._notices.clear()
            with Watchdog(conn, self._op_timeout_s):
                row = conn.execute(sql, params).fetchone()
            acked = time.time()
        except psycopg.Error as exc:
            self._drop()
            if self.changes_data and kind == "query" and outcome_unknown(exc):
                kind = "ambiguous"
            with self._lock:
                self._errors.append(ProbeError(seq, time.time(), kind, _short(exc)))
            return
        if any("synchronous replication" in n for n in self._notices):
            # The commit was cut short while waiting for the sync standby: it is
            # local-only and might vanish at failover, so it is no acknowledgement.
            with self._lock:
                self._errors.append(ProbeError(seq, acked, "ambiguous", self._notices[-1][:200]))
            return
        with self._lock:
            self._acks.append(Ack(seq, sent, acked, self._server_name(row[0] if row else None)))

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        self._drop()


class ProbeWriter(_SqlProbe):
    """Insert one probe row per tick through ``dsn`` (HAProxy 5000) and record acknowledgements.

    A row's seq is the loop's operation number: one attempt per seq, never
    retried, so it is the attempt id the set checker needs (unique within
    ``run_id``, which is unique per run).
    """

    changes_data = True

    def __init__(
        self,
        dsn: str,
        run_id: str,
        *,
        rate_hz: float = 20.0,
        max_seconds: float = 900.0,
        server_names: Mapping[str, str] | None = None,
        statement_timeout_ms: int = 3000,
        op_timeout_s: float = 3.0,
    ) -> None:
        max_ops = int(rate_hz * max_seconds) + 1
        super().__init__(
            "drill-writer", dsn, 1.0 / rate_hz, max_seconds, max_ops, server_names, statement_timeout_ms, op_timeout_s
        )
        self.run_id = run_id

    def once(self, n: int) -> None:
        sent = time.time()
        self._record(
            n,
            sent,
            f"INSERT INTO {PROBE_TABLE} (run_id, seq, client_ts) VALUES (%s, %s, to_timestamp(%s))"
            " RETURNING host(inet_server_addr())",
            (self.run_id, n, sent),
        )


class ProbeReader(_SqlProbe):
    """Read once per tick through ``dsn`` (HAProxy 5000 or 5001) and record the answers."""

    def __init__(
        self,
        dsn: str,
        *,
        rate_hz: float = 10.0,
        max_seconds: float = 900.0,
        server_names: Mapping[str, str] | None = None,
        statement_timeout_ms: int = 2000,
        op_timeout_s: float = 3.0,
    ) -> None:
        max_ops = int(rate_hz * max_seconds) + 1
        super().__init__(
            "drill-reader", dsn, 1.0 / rate_hz, max_seconds, max_ops, server_names, statement_timeout_ms, op_timeout_s
        )

    def once(self, n: int) -> None:
        self._record(n, time.time(), "SELECT host(inet_server_addr())", ())


class NodeWriter(_SqlProbe):
    """Insert one tiny row straight into one node (its own port, not HAProxy) per tick, with short timeouts.

    The split-brain measure that matters: a node that claims to be primary but
    can acknowledge nothing (a frozen old primary in synchronous mode) is
    harmless, a node that acknowledges writes while another holds the leader
    key is not. A replica refuses (read-only), a partitioned or dead node is
    unreachable; both are recorded, so the analysis can say how much of the
    run each node was actually observed. A commit cut short while waiting for
    the sync standby is ambiguous, never acknowledged: the node could not get
    it replicated.
    """

    changes_data = True

    def __init__(
        self,
        node: str,
        dsn: str,
        run_id: str,
        *,
        interval_s: float = 0.2,
        max_seconds: float = 900.0,
        statement_timeout_ms: int = 1000,
        op_timeout_s: float = 1.0,
        connect_timeout_s: int = 1,
    ) -> None:
        max_ops = int(max_seconds / interval_s) + 1
        super().__init__(
            f"drill-node-writer-{node}", dsn, interval_s, max_seconds, max_ops, None, statement_timeout_ms,
            op_timeout_s,
        )  # fmt: skip
        self.node = node
        self.run_id = run_id
        # A short connect timeout bounds each tick against an unreachable node (libpq's minimum is 2 s).
        self._connect_kw = {"connect_timeout": max(connect_timeout_s, 2)}
        self._sent: dict[int, float] = {}

    def once(self, n: int) -> None:
        sent = time.time()
        with self._lock:
            self._sent[n] = sent
        self._record(
            n,
            sent,
            f"INSERT INTO {NODE_PROBE_TABLE} (run_id, node, seq, client_ts) VALUES (%s, %s, %s, to_timestamp(%s))"
            " RETURNING node",  # a result row is what _record takes as the acknowledgement
            (self.run_id, self.node, n, sent),
        )

    @property
    def writes(self) -> tuple[NodeWrite, ...]:
        """Every completed insert as a :class:`NodeWrite` (an operation still in flight is left out)."""
        kinds: dict[str, NodeWriteOutcome] = {"connect": "unreachable", "query": "refused", "ambiguous": "ambiguous"}
        with self._lock:
            sent = dict(self._sent)
            acks, errors = tuple(self._acks), tuple(self._errors)
        out = [NodeWrite(self.node, a.seq, a.sent_at, a.acked_at, "acked") for a in acks]
        out += [NodeWrite(self.node, e.seq, sent.get(e.seq, e.at), e.at, kinds[e.kind]) for e in errors]
        return tuple(sorted(out, key=lambda w: w.seq))


#: A fallback look at a node that bypasses the network: True writable, False read-only, None unknown.
WritableCheck = Callable[[], "bool | None"]


class NodeSampler(BoundedLoop):
    """Sample ``pg_is_in_recovery()`` of one node directly, to detect two writable primaries.

    Uses the node's published port; when that fails it uses ``fallback`` (the
    node's unix socket through the engine) and keeps using it for
    ``tcp_backoff_s`` so a partitioned node is still sampled often.
    """

    def __init__(
        self,
        node: str,
        dsn: str,
        *,
        fallback: WritableCheck | None = None,
        interval_s: float = 0.25,
        max_seconds: float = 900.0,
        tcp_backoff_s: float = 5.0,
    ) -> None:
        super().__init__(f"drill-sampler-{node}", interval_s, max_seconds, int(max_seconds / interval_s) + 1)
        self.node = node
        self._dsn = dsn
        self._fallback = fallback
        self._backoff_s = tcp_backoff_s
        self._tcp_retry_at = 0.0
        self._conn: psycopg.Connection | None = None
        self._samples: list[NodeSample] = []

    @property
    def samples(self) -> tuple[NodeSample, ...]:
        with self._lock:
            return tuple(self._samples)

    def _tcp(self) -> bool:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._dsn, 2000)
        with Watchdog(self._conn, 1.0):
            row = self._conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return not bool(row[0]) if row else False

    def once(self, n: int) -> None:
        sample: NodeSample | None = None
        if time.monotonic() >= self._tcp_retry_at:
            try:
                writable = self._tcp()
                sample = NodeSample(time.time(), self.node, writable, "tcp")
            except psycopg.Error:
                self.close()
                self._tcp_retry_at = time.monotonic() + self._backoff_s
        if sample is None and self._fallback is not None:
            # Stamp the sample when the question was asked: an exec round trip
            # is slow, and a late stamp could fake an overlap with the new primary.
            asked = time.time()
            result = self._fallback()
            sample = NodeSample(asked, self.node, result, "exec" if result is not None else "none")
        if sample is None:
            sample = NodeSample(time.time(), self.node, None, "none")
        with self._lock:
            self._samples.append(sample)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None
