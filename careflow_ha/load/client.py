"""A psycopg 3 client for Locust users: timed requests, reconnect with backoff, a per-request log.

Runs only inside a Locust process (gevent monkey-patched): psycopg >= 3.1.14
sees the patched ``select`` and waits cooperatively, so one user blocked on
the server never stalls the others (tests/load checks it with pg_sleep).

Why not Locust's PostgresUser: it never commits and never reconnects, so a
failover would end the run instead of showing as errors and then recovery.
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import gevent
import psycopg

from careflow_ha.dsn import pooler_safe

#: Columns of the per-request log (one CSV per Locust process); report.py reads them.
LOG_COLUMNS = ("ts", "op", "endpoint", "user", "ok", "latency_ms", "server", "recovery", "error")

#: Connection parameters that keep a user from hanging on a dead or partitioned server.
CONNECT_KWARGS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 2,
    "tcp_user_timeout": 5000,  # ms: unacknowledged data (partition) fails the socket
    "options": "-c statement_timeout=10000",
    "application_name": "careflow-load",
}
#: A request that takes longer than this on the client side (frozen server) is abandoned.
REQUEST_DEADLINE_S = 15.0


class RequestLog:
    """Append-only CSV of every request made by this process; flushed at least once a second."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        self._fh: TextIO = path.open("a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._fh)
        if new:
            self._writer.writerow(LOG_COLUMNS)
        self._flushed = time.monotonic()

    def write(self, ts: float, op: str, endpoint: str, user: int, ok: bool, latency_ms: float,
              server: str, recovery: bool | None, error: str) -> None:
        rec = "" if recovery is None else int(recovery)
        self._writer.writerow((f"{ts:.6f}", op, endpoint, user, int(ok), f"{latency_ms:.3f}", server, rec, error))
        if time.monotonic() - self._flushed >= 1.0:
            self.flush()

    def flush(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            self._flushed = time.monotonic()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


_LOG: RequestLog | None = None


def request_log() -> RequestLog | None:
    """This process's log under ``$CAREFLOW_LOAD_RUN_DIR`` (None when unset: nothing is logged)."""
    global _LOG
    run_dir = os.environ.get("CAREFLOW_LOAD_RUN_DIR")
    if _LOG is None and run_dir:
        _LOG = RequestLog(Path(run_dir) / f"requests-{os.getpid()}.csv")
    return _LOG


def node_names_from_env() -> dict[str, str]:
    """``CAREFLOW_LOAD_NODES=192.168.56.11=pg1,...``: server address -> node name."""
    raw = os.environ.get("CAREFLOW_LOAD_NODES", "")
    pairs = (item.split("=", 1) for item in raw.split(",") if "=" in item)
    return {addr.strip(): name.strip() for addr, name in pairs}


def short_error(exc: BaseException) -> str:
    """First line of an error (psycopg messages never carry the password), for logs and stats."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


class Backoff:
    """Exponential backoff with jitter between reconnect attempts: 0.2 s doubling to 3 s."""

    def __init__(self, first: float = 0.2, cap: float = 3.0, rng: random.Random | None = None) -> None:
        self.first, self.cap = first, cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        delay = min(self.cap, self.first * 2**self.failures)
        self.failures += 1
        return delay * self._rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0


class RequestFailure(Exception):
    """A request failed; ``kind`` is connect, lost (connection broken) or query."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class PgSession:
    """One user's connection to one endpoint: timed requests that survive a lost server.

    ``request(name, fn)`` runs ``fn(conn)`` on an autocommit connection (a write
    that needs several statements opens ``conn.transaction()`` itself), fires
    Locust's ``events.request`` and writes one log line. A lost connection is
    dropped; the next request reconnects after a backoff delay.
    """

    def __init__(self, dsn: str, endpoint: str, user_id: int, fire: Callable[..., Any] | None,
                 log: RequestLog | None, node_names: dict[str, str] | None = None,
                 recheck_recovery_s: float = 2.0) -> None:
        self.dsn, self.endpoint, self.user_id = dsn, endpoint, user_id
        self._fire = fire
        self._log = log
        self._names = node_names or {}
        self._recheck_s = recheck_recovery_s
        self.conn: psycopg.Connection | None = None
        self.server = ""
        self.recovery: bool | None = None
        self._checked_at = 0.0
        self.backoff = Backoff()
        self._retry_at = 0.0
        self.reconnects = 0

    # -- connection ------------------------------------------------------------
    def _identify(self, conn: psycopg.Connection) -> None:
        addr, recovery = conn.execute("SELECT host(inet_server_addr()), pg_is_in_recovery()").fetchone()
        addr = addr or "local-socket"
        self.server = self._names.get(addr, addr)
        self.recovery = bool(recovery)
        self._checked_at = time.monotonic()

    def _connect(self) -> psycopg.Connection:
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            gevent.sleep(wait)
        try:
            with gevent.Timeout(REQUEST_DEADLINE_S, RequestFailure("connect", "no answer within the deadline")):
                conn = psycopg.connect(self.dsn, autocommit=True, **pooler_safe(self.dsn, CONNECT_KWARGS))
                self._identify(conn)
        except (psycopg.Error, OSError) as exc:
            self._retry_at = time.monotonic() + self.backoff.next_delay()
            raise RequestFailure("connect", short_error(exc)) from None
        except RequestFailure:
            self._retry_at = time.monotonic() + self.backoff.next_delay()
            raise
        if self.conn is not None or self.backoff.failures:
            self.reconnects += 1
        self.backoff.reset()
        self.conn = conn
        return conn

    def drop(self) -> None:
        """Forget the connection (closing it never blocks the user on a dead server)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken is fine
                conn.pgconn.finish()  # no Terminate round trip to wait for
        self.server, self.recovery = "", None

    def close(self) -> None:
        self.drop()

    # -- requests --------------------------------------------------------------
    def request(self, name: str, fn: Callable[[psycopg.Connection], Any]) -> Any:
        """Run one named operation; never raises for database or network errors (they are recorded)."""
        ts = time.time()
        t0 = time.perf_counter()
        result, error, kind = None, "", ""
        try:
            conn = self.conn if self.conn is not None and not self.conn.closed else self._connect()
            t0 = time.perf_counter()  # connect time is not the operation's latency
            ts = time.time()
            if self.endpoint == "ro" and time.monotonic() - self._checked_at > self._recheck_s:
                with gevent.Timeout(REQUEST_DEADLINE_S, RequestFailure("lost", "server stopped answering")):
                    self._identify(conn)
                t0, ts = time.perf_counter(), time.time()
            with gevent.Timeout(REQUEST_DEADLINE_S, RequestFailure("lost", "server stopped answering")):
                result = fn(conn)
        except RequestFailure as exc:
            kind, error = exc.kind, str(exc)
            if kind == "lost":
                self.drop()
        except psycopg.Error as exc:
            broken = self.conn is None or self.conn.closed or self.conn.broken or isinstance(
                exc, psycopg.errors.ReadOnlySqlTransaction | psycopg.errors.AdminShutdown)
            kind = "lost" if broken else "query"
            error = f"{kind}: {short_error(exc)}"
            if broken:  # a read-only server behind the rw port (demoted primary) needs a new route too
                self.drop()
        latency_ms = (time.perf_counter() - t0) * 1000.0
        ok = not error
        if self._log is not None:
            self._log.write(ts, name, self.endpoint, self.user_id, ok, latency_ms, self.server, self.recovery,
                            error)
        if self._fire is not None:
            self._fire(request_type=f"pg-{self.endpoint}", name=name, response_time=latency_ms,
                       response_length=0, exception=RuntimeError(error) if error else None,
                       context={"server": self.server}, start_time=ts)
        return result
