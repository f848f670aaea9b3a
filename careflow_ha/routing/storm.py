"""A connection storm: N client connections opened at once, each running a few short transactions.

Through PgBouncer (VIP:6432) the clients queue at the pooler and share at most ``max_db_connections``
server connections per instance, so PostgreSQL's ``max_connections`` 200 is never reached; straight
through HAProxy (5000) every client is a backend, and the ones past ``max_connections`` are refused
("sorry, too many clients already"). One asyncio loop with psycopg's AsyncConnection holds the
clients (no thread per client); every connect and query has a timeout, and the whole storm a deadline.

The statistics (:func:`summarise_storm`, :func:`short_error`, and the shared
:func:`careflow_ha.data.stats.percentile`) are pure functions, unit-tested without a network.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

from careflow_ha.data.stats import percentile

#: Target of issue 13: 1,000 concurrent client connections served with 0 connection errors.
STORM_TARGET_ERRORS = 0
#: The HAProxy control opens at most this many: enough to show "too many clients" past max_connections,
#: not enough to hammer the primary.
CONTROL_CAP = 300

WHY_POOLER_ABSORBS = (
    "PgBouncer absorbs the storm: client connections are cheap sockets that queue at the pooler "
    "(max_client_conn 2000 per instance), and each instance opens at most max_db_connections server "
    "connections, so the primary sees tens of backends however many clients connect. Straight through "
    "HAProxy each client is a backend, and past max_connections PostgreSQL refuses the login."
)


@dataclass(frozen=True)
class StormConfig:
    clients: int = 1000
    transactions: int = 3  # per client, each SELECT 1 x 3 in one transaction
    hold_s: float = 2.0  # every client waits this long after connecting, so the connections overlap
    connect_timeout_s: float = 30.0
    query_timeout_s: float = 10.0
    total_s: float = 120.0


@dataclass
class ClientOutcome:
    """One client of the storm: its connect latency or connection error, its transactions' latencies."""

    connect_s: float | None = None
    connect_error: str | None = None
    txn_s: list[float] = field(default_factory=list)
    query_error: str | None = None


@dataclass
class StormResult:
    target: str
    config: StormConfig
    clients: list[ClientOutcome]
    peak_open: int
    pg_backends_at_peak: int | None
    pg_backends_max: int | None
    elapsed_s: float
    timed_out: bool
    #: The primary's own max_connections, read before the storm (what it must stay under).
    max_connections: int | None = None


def short_error(exc: BaseException | str, width: int = 100) -> str:
    """An error's gist, the same for every client that met it: PostgreSQL's message without the host part."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for marker in ("FATAL:", "ERROR:", "failed:"):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def summarise_storm(result: StormResult) -> dict[str, Any]:
    """The storm's figures as one report row (latencies in ms)."""
    connects = [c.connect_s for c in result.clients if c.connect_s is not None]
    txns = [t for c in result.clients for t in c.txn_s]
    conn_errors = Counter(c.connect_error for c in result.clients if c.connect_error)
    query_errors = Counter(c.query_error for c in result.clients if c.query_error)
    n_conn_errors = sum(conn_errors.values())
    return {
        "target": result.target,
        "attempted": len(result.clients),
        "connected": len(connects),
        "connection_errors": n_conn_errors,
        "connection_error_messages": dict(conn_errors.most_common()),
        "query_errors": sum(query_errors.values()),
        "query_error_messages": dict(query_errors.most_common()),
        "connect_ms_p50": _ms(percentile(connects, 50)),
        "connect_ms_p95": _ms(percentile(connects, 95)),
        "connect_ms_max": _ms(max(connects, default=None)),
        "txn_ms_p50": _ms(percentile(txns, 50)),
        "txn_ms_p95": _ms(percentile(txns, 95)),
        "txn_ms_max": _ms(max(txns, default=None)),
        "peak_open_clients": result.peak_open,
        "pg_backends_at_peak": result.pg_backends_at_peak,
        "pg_backends_max": result.pg_backends_max,
        "max_connections": result.max_connections,
        "under_max_connections": (None if result.pg_backends_max is None or result.max_connections is None
                                  else result.pg_backends_max < result.max_connections),
        "elapsed_s": round(result.elapsed_s, 2),
        "timed_out": result.timed_out,
        "errors_target_met": n_conn_errors <= STORM_TARGET_ERRORS and not result.timed_out,
    }


class _Open:
    """The count of open client connections and its peak (one event loop: no lock needed)."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.peak_backends: int | None = None
        self.max_backends: int | None = None
        self.max_connections: int | None = None

    def up(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    def down(self) -> None:
        self.now -= 1


async def _client(dsn: str, kwargs: Mapping[str, Any], cfg: StormConfig, start: asyncio.Event,
                  opened: _Open) -> ClientOutcome:
    out = ClientOutcome()
    await start.wait()
    t0 = time.monotonic()
    try:
        conn = await asyncio.wait_for(psycopg.AsyncConnection.connect(dsn, **kwargs), cfg.connect_timeout_s)
    except (psycopg.Error, OSError, TimeoutError) as exc:
        out.connect_error = short_error(exc)
        return out
    out.connect_s = time.monotonic() - t0
    opened.up()
    try:
        await asyncio.sleep(cfg.hold_s)
        for _ in range(cfg.transactions):
            t1 = time.monotonic()
            await asyncio.wait_for(_transaction(conn), cfg.query_timeout_s)
            out.txn_s.append(time.monotonic() - t1)
    except (psycopg.Error, OSError, TimeoutError) as exc:
        out.query_error = short_error(exc)
    finally:
        opened.down()
        # The server side ends it anyway; the figures are recorded.
        with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
            await asyncio.wait_for(conn.close(), 5)
    return out


async def _transaction(conn: psycopg.AsyncConnection) -> None:
    async with conn.transaction():
        for _ in range(3):
            await conn.execute("SELECT 1")


async def _watch_backends(monitor_dsn: str, opened: _Open, stop: asyncio.Event, ready: asyncio.Event) -> None:
    """Count PostgreSQL's backends every 0.2 s on one connection made before the storm (the admin role's on the
    cluster: once open it keeps its slot when the clients have taken every other); keep the count at the peak."""
    try:
        conn = await psycopg.AsyncConnection.connect(monitor_dsn, autocommit=True)
    finally:
        ready.set()  # connected or failed: the storm does not wait longer
    async with conn:
        row = await (await conn.execute("SELECT current_setting('max_connections')::int")).fetchone()
        opened.max_connections = int(row[0]) if row else None
        while not stop.is_set():
            now = opened.now
            row = await (await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")).fetchone()
            backends = int(row[0]) if row else 0
            opened.max_backends = max(opened.max_backends or 0, backends)
            if now >= opened.peak and now > 0:
                opened.peak_backends = backends
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)


async def run_storm_async(target: str, dsn: str, kwargs: Mapping[str, Any], cfg: StormConfig,
                          monitor_dsn: str | None = None) -> StormResult:
    opened, start, stop = _Open(), asyncio.Event(), asyncio.Event()
    kwargs = {**kwargs, "connect_timeout": max(1, int(cfg.connect_timeout_s))}
    ready = asyncio.Event()
    watcher = asyncio.create_task(_watch_backends(monitor_dsn, opened, stop, ready)) if monitor_dsn else None
    if watcher is not None:
        # Its connection first: a role without superuser's reserved slots could not get one mid-storm.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), max(1.0, cfg.connect_timeout_s) + 5)
    tasks = [asyncio.create_task(_client(dsn, kwargs, cfg, start, opened)) for _ in range(cfg.clients)]
    await asyncio.sleep(0)  # every client is waiting at the gate: they all start at once
    t0 = time.monotonic()
    start.set()
    done, pending = await asyncio.wait(tasks, timeout=cfg.total_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    elapsed = time.monotonic() - t0
    stop.set()
    if watcher is not None:
        await asyncio.gather(watcher, return_exceptions=True)
    outcomes = [t.result() if t in done and not t.cancelled() else ClientOutcome(query_error="storm deadline")
                for t in tasks]
    return StormResult(target, cfg, outcomes, opened.peak, opened.peak_backends, opened.max_backends, elapsed,
                       bool(pending), opened.max_connections)


def raise_fd_limit(clients: int) -> None:
    """One socket per client in this process: lift the soft open-files limit (often 1024) to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < clients + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_storm(target: str, dsn: str, kwargs: Mapping[str, Any], cfg: StormConfig,
              monitor_dsn: str | None = None) -> StormResult:
    """:func:`run_storm_async` in its own event loop."""
    raise_fd_limit(cfg.clients)
    return asyncio.run(run_storm_async(target, dsn, kwargs, cfg, monitor_dsn))
