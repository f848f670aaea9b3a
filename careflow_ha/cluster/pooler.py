"""PgBouncer's admin console on each balancer: PAUSE, RESUME, RECONNECT and the paused state.

Below every feature (``switchover``, ``status``): one small client per pooler instance, over TCP
to database ``pgbouncer`` as the admin user (``CAREFLOW_PGBOUNCER_ADMIN_PASSWORD``). Pauses are
per database (``PAUSE careflow``), not global, because only a database's pause shows in
``SHOW DATABASES`` (its ``paused`` column, already while the pause waits for transactions): that
is how a pause left behind by a killed process is found again.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import psycopg

from careflow_ha.settings import DB_NAME, Settings

#: The pooler instances on each balancer, in the order of ``Routing.pooler_ports``.
ENDPOINTS = ("rw", "ro")
#: Short bounds: an unreachable balancer must cost seconds, never a hang.
CONNECT_TIMEOUT_S = 3


class Pooler(Protocol):
    """One pooler instance. ``name`` says which (``lb1:6432``); no method prints a secret.

    - ``begin_pause()`` asks for the pause and returns at once; ``pause_done(timeout)`` waits up
      to ``timeout`` s for in-flight transactions to finish (True when the pause took hold).
    - ``resume()`` ends a pause, also one still waiting; a pooler that is not paused is a no-op.
    - ``reconnect()`` renews every server connection once it is released.
    - ``paused()`` reads the paused state (True/False), or None when the pooler does not answer.
    """

    name: str
    endpoint: str  # "rw" or "ro": which HAProxy port its server connections go to

    def begin_pause(self) -> None: ...
    def pause_done(self, timeout: float) -> bool: ...
    def resume(self) -> None: ...
    def reconnect(self) -> None: ...
    def paused(self) -> bool | None: ...


@dataclass
class PgBouncerAdmin:
    """The admin console of one PgBouncer instance at ``host:port`` (see :class:`Pooler`)."""

    name: str
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str = DB_NAME
    endpoint: str = "rw"
    #: libpq TLS parameters (Routing.tls_params: verify-full against the lab CA), empty without TLS.
    tls: Mapping[str, str] = field(default_factory=dict)
    _pausing: psycopg.Connection | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _error: str = field(default="", repr=False)

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname="pgbouncer",
            autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, prepare_threshold=None,
            application_name="careflow-ha", **self.tls,
        )

    def _command(self, sql: str) -> None:
        with self._connect() as conn:
            conn.execute(sql)

    def begin_pause(self) -> None:
        # PAUSE returns only once the database's transactions are done: it runs on its own
        # connection in a thread, so several poolers drain at once and the wait has a bound.
        self._pausing = self._connect()
        self._error = ""

        def pause(conn: psycopg.Connection = self._pausing) -> None:
            try:
                conn.execute(f"PAUSE {self.database}")
            except psycopg.Error as exc:
                self._error = type(exc).__name__

        self._thread = threading.Thread(target=pause, name=f"pause-{self.name}", daemon=True)
        self._thread.start()

    def pause_done(self, timeout: float) -> bool:
        if self._thread is None:
            return False
        self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive() and not self._error

    def _drop_pausing(self) -> None:
        """Cut the connection of a PAUSE still waiting (after RESUME it would wait on forever)."""
        conn, self._pausing = self._pausing, None
        if conn is None:
            return
        with contextlib.suppress(OSError, ValueError):
            dup = socket.socket(fileno=os.dup(conn.fileno()))
            dup.shutdown(socket.SHUT_RDWR)
            dup.close()
        if self._thread is not None:
            self._thread.join(2.0)
        with contextlib.suppress(Exception):
            conn.close()

    def resume(self) -> None:
        try:
            if self.paused():
                self._command(f"RESUME {self.database}")
        finally:
            self._drop_pausing()

    def reconnect(self) -> None:
        self._command(f"RECONNECT {self.database}")

    def paused(self) -> bool | None:
        try:
            with self._connect() as conn:
                cur = conn.execute("SHOW DATABASES")
                names = [c.name for c in cur.description or ()]
                rows = cur.fetchall()
        except psycopg.Error:
            return None
        if "paused" not in names:
            return None
        at, col = names.index("name"), names.index("paused")
        return any(row[at] == self.database and int(row[col] or 0) != 0 for row in rows)


@dataclass(frozen=True)
class PoolerState:
    """One pooler's paused state as ``status`` shows it."""

    name: str
    state: str  # running, PAUSED, unreachable

    @property
    def paused(self) -> bool:
        return self.state == "PAUSED"


def pooler_states(poolers: Sequence[Pooler]) -> list[PoolerState]:
    """Every pooler's state, asked at once (an unreachable one costs its connect timeout, not the sum)."""
    results: dict[str, bool | None] = {}

    def ask(p: Pooler) -> None:
        results[p.name] = p.paused()

    threads = [threading.Thread(target=ask, args=(p,), daemon=True) for p in poolers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CONNECT_TIMEOUT_S * 3)
    out = []
    for p in poolers:
        value = results.get(p.name)
        out.append(PoolerState(p.name, "unreachable" if value is None else "PAUSED" if value else "running"))
    return out


def lab_poolers(settings: Settings) -> list[PgBouncerAdmin]:
    """The pooler instances of the inventory: each balancer's read-write and read-only PgBouncer."""
    routing = settings.routing
    password = settings.secrets.get("CAREFLOW_PGBOUNCER_ADMIN_PASSWORD", "")
    return [
        PgBouncerAdmin(f"{host}:{port}", ip, port, routing.pooler_admin_user, password, endpoint=endpoint,
                       tls=routing.tls_params())
        for host, ip in routing.balancer_ips.items()
        for endpoint, port in zip(ENDPOINTS, routing.pooler_ports, strict=True)
    ]
