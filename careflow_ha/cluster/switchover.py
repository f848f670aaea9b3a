"""A planned switchover through Patroni; with ``zero_error`` the poolers hold transactions meanwhile.

Steps, each with its own deadline (``Limits``):

1. preconditions: one running leader, a streaming sync standby (synchronous mode), the candidate
   a healthy streaming replica within the lag limit (``--to`` otherwise: UsageError, exit 2,
   before anything is paused), no pooler already paused (a killed earlier run: say so and offer
   ``--resume``), no transaction on the primary older than a bound;
2. ``PAUSE`` on every pooler, drained within ``drain_s``; otherwise RESUME all and exit 4 with
   the cluster untouched;
3. ``POST /switchover`` to Patroni, then a new running leader;
4. every balancer's HAProxy routes writes to the new leader;
5. ``RECONNECT`` then ``RESUME`` on every pooler.

Any failure, and SIGINT/SIGTERM, resumes every pooler (``finally``). The collaborators are
small interfaces (Patroni's client, :class:`~careflow_ha.cluster.pooler.Pooler`, two callables),
so every path is tested with fakes, and the pooler path with a real PgBouncer too.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from careflow_ha.cluster.model import ClusterSnapshot, Member
from careflow_ha.cluster.pooler import Pooler
from careflow_ha.errors import CommandFailed, NotReady, UsageError
from careflow_ha.settings import DB_NAME, ROLE_NAMES, Settings, inventory_vars

Progress = Callable[[str], None]


class Patroni(Protocol):
    """What the switchover needs of :class:`~careflow_ha.cluster.patroni.PatroniApi`."""

    def cluster(self, timeout: float | None = None) -> ClusterSnapshot: ...
    def switchover(self, leader: str, candidate: str | None, timeout: float = 60.0) -> str: ...


@dataclass(frozen=True)
class Limits:
    """Every bound of one switchover (seconds, bytes)."""

    max_lag_bytes: int = 1_048_576
    max_xact_age_s: float = 5.0
    drain_s: float = 5.0
    switchover_s: float = 60.0
    leader_s: float = 30.0
    route_s: float = 20.0
    poll_s: float = 0.2


@dataclass
class SwitchoverReport:
    """What happened: old and new leader, and how long each step took (seconds)."""

    old_leader: str
    new_leader: str = ""
    zero_error: bool = False
    steps: dict[str, float] = field(default_factory=dict)
    #: From the first PAUSE to the last RESUME: the longest a client could have been held.
    held_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"old_leader": self.old_leader, "new_leader": self.new_leader, "zero_error": self.zero_error,
                "steps": {k: round(v, 3) for k, v in self.steps.items()},
                "held_s": None if self.held_s is None else round(self.held_s, 3)}


class Interrupted(CommandFailed):
    """SIGINT or SIGTERM arrived during the switchover (the poolers were resumed)."""


def _healthy_replica(m: Member, max_lag: int) -> bool:
    return m.is_streaming_replica and m.lag is not None and m.lag <= max_lag


def check_preconditions(snap: ClusterSnapshot, to: str | None, max_lag: int) -> tuple[str, str | None]:
    """(leader, candidate) for a switchover of ``snap``; ``to`` checked first (UsageError, exit 2)."""
    leader = snap.leader
    if to is not None:
        member = snap.member(to)
        if member is None:
            names = ", ".join(m.name for m in snap.members) or "none"
            raise UsageError(f"--to {to}: no such cluster member (members: {names}); pick a streaming replica")
        if member.is_leader:
            raise UsageError(f"--to {to}: it is the leader already; pick a streaming replica")
        if not _healthy_replica(member, max_lag):
            lag = "unknown" if member.lag is None else f"{member.lag} bytes"
            raise UsageError(f"--to {to}: not a healthy streaming replica (role {member.role}, state {member.state}, "
                             f"lag {lag}, limit {max_lag}); pick another or wait until it streams")
        if snap.sync_standbys and to not in snap.sync_standbys:
            raise UsageError(f"--to {to}: synchronous mode promotes only the sync standby "
                             f"({', '.join(snap.sync_standbys)}); pick it or leave --to out")
    if leader is None or snap.member(leader).state != "running":  # type: ignore[union-attr]
        raise NotReady("no single running leader; wait until `careflow-ha status` is healthy, then retry")
    syncs = [snap.member(n) for n in snap.sync_standbys]
    streaming_syncs = [m for m in syncs if m is not None and _healthy_replica(m, max_lag)]
    if not streaming_syncs:
        raise NotReady(f"no sync standby is streaming within {max_lag} bytes of lag; wait until "
                       "`careflow-ha status` shows one, then retry")
    if to is not None:
        return leader, to
    return leader, streaming_syncs[0].name


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGINT/SIGTERM raise :class:`Interrupted` in the main thread, so ``finally`` blocks run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        raise Interrupted(f"interrupted by {signal.Signals(signum).name}; every pooler was resumed")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _wait(what: str, deadline_s: float, poll_s: float, check: Callable[[], bool], clock: Callable[[], float],
          sleep: Callable[[float], None]) -> float:
    """Poll ``check`` until it is true, at most ``deadline_s`` (and a bounded number of polls); the seconds taken."""
    start = clock()
    for _ in range(int(deadline_s / max(poll_s, 0.01)) + 2):
        try:
            if check():
                return clock() - start
        except (OSError, NotReady):
            pass  # a node or balancer briefly unreachable while roles change: poll on
        if clock() - start >= deadline_s:
            break
        sleep(poll_s)
    raise NotReady(f"{what} not within {deadline_s:.0f}s")


def paused_poolers(poolers: Sequence[Pooler]) -> list[str]:
    """Names of the poolers that are paused now (a switchover killed midway leaves them so)."""
    return [p.name for p in poolers if p.paused()]


def resume_all(poolers: Sequence[Pooler], progress: Progress) -> list[str]:
    """RESUME every pooler, each on its own (one failing does not keep the others paused); the failures."""
    failed = []
    for p in poolers:
        try:
            p.resume()
        except Exception as exc:  # noqa: BLE001 - every pooler gets its RESUME, whatever the one before did
            failed.append(f"{p.name}: {type(exc).__name__}")
    if failed:
        progress(f"switchover: RESUME failed on {', '.join(failed)}; run `careflow-ha switchover --resume`")
    return failed


def run_switchover(
    api: Patroni,
    poolers: Sequence[Pooler],
    route_ok: Callable[[str], bool],
    oldest_xact_s: Callable[[str], float],
    to: str | None,
    zero_error: bool,
    limits: Limits,
    progress: Progress,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> SwitchoverReport:
    """One switchover (see the module docstring). ``route_ok(leader)``: every balancer's HAProxy sends
    writes to ``leader``; ``oldest_xact_s(leader)``: age of the oldest open transaction there."""
    snap = api.cluster()
    leader, candidate = check_preconditions(snap, to, limits.max_lag_bytes)
    report = SwitchoverReport(old_leader=leader, zero_error=zero_error)
    if zero_error:
        if not poolers:
            raise UsageError("--zero-error needs poolers, and the inventory lists no balancer; leave it out")
        states = {p.name: p.paused() for p in poolers}
        left = [name for name, paused in states.items() if paused]
        if left:
            raise NotReady(f"pooler(s) {', '.join(left)} are PAUSED (an earlier switchover was interrupted); "
                           "run `careflow-ha switchover --resume` first")
        down = [name for name, paused in states.items() if paused is None]
        if down:
            raise NotReady(f"pooler(s) {', '.join(down)} do not answer on their admin console; a zero-error "
                           "switchover needs every pooler (check CAREFLOW_PGBOUNCER_ADMIN_PASSWORD and the balancers)")
        age = oldest_xact_s(leader)
        if age > limits.max_xact_age_s:
            raise NotReady(f"a transaction on {leader} has been open {age:.1f}s (limit {limits.max_xact_age_s:.0f}s): "
                           "PAUSE would wait for it; retry when it has finished")
    with _signals_raise():
        return _switch(api, poolers, route_ok, leader, candidate, zero_error, limits, progress, clock, sleep, report)


def _switch(api: Patroni, poolers: Sequence[Pooler], route_ok: Callable[[str], bool], leader: str,
            candidate: str | None, zero_error: bool, limits: Limits, progress: Progress,
            clock: Callable[[], float], sleep: Callable[[float], None], report: SwitchoverReport) -> SwitchoverReport:
    paused_at = None
    try:
        if zero_error:
            progress(f"switchover: PAUSE on {len(poolers)} pooler(s), at most {limits.drain_s:.0f}s to drain")
            paused_at = clock()
            for p in poolers:
                p.begin_pause()
            deadline = paused_at + limits.drain_s
            pending = [p.name for p in poolers if not p.pause_done(deadline - clock())]
            if pending:
                raise NotReady(f"PAUSE did not drain within {limits.drain_s:.0f}s on {', '.join(pending)} "
                               "(transactions still running); every pooler was resumed, nothing was switched")
            report.steps["pause"] = clock() - paused_at
        t0 = clock()
        progress(f"switchover: {leader} -> {candidate or 'any replica'} through Patroni")
        api.switchover(leader, candidate, timeout=limits.switchover_s)
        report.steps["patroni"] = clock() - t0

        def new_leader() -> bool:
            snap = api.cluster(timeout=2.0)
            now = snap.leader
            if now and now != leader and snap.member(now).state == "running":  # type: ignore[union-attr]
                report.new_leader = now
                return True
            return False

        report.steps["leader"] = _wait("a new running leader", limits.leader_s, limits.poll_s, new_leader, clock, sleep)
        if zero_error:
            report.steps["route"] = _wait(f"HAProxy routing writes to {report.new_leader}", limits.route_s,
                                          limits.poll_s, lambda: route_ok(report.new_leader), clock, sleep)
            t0 = clock()
            for p in poolers:
                p.reconnect()
            report.steps["reconnect"] = clock() - t0
        return report
    finally:
        if zero_error:
            t0 = clock()
            failed = resume_all(poolers, progress)
            report.steps["resume"] = clock() - t0
            if paused_at is not None:
                report.held_s = clock() - paused_at
            if failed and not report.new_leader:
                progress("switchover: some poolers may still be paused; `careflow-ha status` shows which")


# -- the lab's collaborators (psycopg at the boundary) ----------------------------------------

def haproxy_routes_to(dsns: Sequence[str], leader_ip: str) -> bool:
    """Every DSN (one per balancer's HAProxy read-write port) lands on a writable ``leader_ip``."""
    import psycopg

    for dsn in dsns:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=2, prepare_threshold=None) as conn:
            row = conn.execute("SELECT pg_is_in_recovery(), host(inet_server_addr())").fetchone()
        if row is None or row[0] or row[1] != leader_ip:
            return False
    return True


#: The oldest open transaction of any client (idle in transaction included: it blocks PAUSE too).
OLDEST_XACT_SQL = (
    "SELECT coalesce(extract(epoch FROM max(clock_timestamp() - xact_start)), 0) FROM pg_stat_activity "
    "WHERE backend_type = 'client backend' AND xact_start IS NOT NULL AND pid <> pg_backend_pid() "
    "AND state <> 'idle'"
)


def oldest_transaction_s(dsn: str) -> float:
    """Seconds the oldest open client transaction on the server at ``dsn`` has been running."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True, connect_timeout=3, prepare_threshold=None) as conn:
        row = conn.execute(OLDEST_XACT_SQL).fetchone()
    return float(row[0]) if row else 0.0


def lab_limits(settings: Settings, **bounds: float) -> Limits:
    """:class:`Limits` with the inventory's lag limit (``careflow_maximum_lag_bytes``, Patroni's too)."""
    values = inventory_vars(settings.project_dir / "inventory" / "lab.yml")
    return Limits(max_lag_bytes=int(values.get("careflow_maximum_lag_bytes", Limits.max_lag_bytes)), **bounds)


def lab_switchover(settings: Settings, to: str | None, zero_error: bool, limits: Limits,
                   progress: Progress) -> SwitchoverReport:
    """:func:`run_switchover` against the inventory's cluster, poolers and balancers: the one place the
    ``switchover`` command and the drills (``--via pgbouncer``) wire it up."""
    from careflow_ha.cluster.patroni import PatroniApi
    from careflow_ha.cluster.pooler import lab_poolers

    routing = settings.routing

    def route_ok(leader: str) -> bool:
        ip = routing.node_ips.get(leader)
        if ip is None:
            return False
        user, pw = ROLE_NAMES["app"], settings.password("app")
        dsns = [f"postgresql://{user}:{pw}@{b}:{routing.haproxy_rw_port}/{DB_NAME}?application_name=careflow-ha"
                for b in routing.balancer_ips.values()]
        return haproxy_routes_to(dsns, ip)

    return run_switchover(
        PatroniApi(settings), lab_poolers(settings) if zero_error else [], route_ok,
        lambda leader: oldest_transaction_s(settings.node_dsn(leader)), to, zero_error, limits, progress,
    )
