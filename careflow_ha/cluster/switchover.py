"""A planned switchover through Patroni; with ``zero_error`` the poolers hold transactions meanwhile.

Steps, each with its own deadline (``Limits``):

1. preconditions: one running leader, a streaming sync standby (synchronous mode), the candidate
   a healthy streaming replica within the lag limit (``--to`` otherwise: UsageError, exit 2,
   before anything is paused), no pooler already paused (a killed earlier run: say so and offer
   ``--resume``), no transaction on the primary older than a bound;
2. ``PAUSE`` on every read-write pooler, drained within ``drain_s``; otherwise RESUME all and exit 4
   with the cluster untouched;
3. ``POST /switchover`` to Patroni, and a new running leader (watched while Patroni answers); the
   read-only poolers are paused as soon as the old primary is seen stepping down;
4. every balancer's HAProxy routes writes to the new leader (its stats page: only the leader UP), then
   ``RECONNECT`` and ``RESUME`` on the read-write poolers;
5. HAProxy routes no read to the new leader any more, then ``RECONNECT`` and ``RESUME`` on the read-only
   poolers.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from careflow_ha.cluster.health import RO_PROXY, RW_PROXY, Backend, haproxy_backends
from careflow_ha.cluster.model import ClusterSnapshot, Member
from careflow_ha.cluster.pooler import ENDPOINTS, Pooler
from careflow_ha.errors import CommandFailed, NotReady, UsageError
from careflow_ha.settings import Settings, inventory_vars

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
    poll_s: float = 0.1  # a stats page or Patroni GET: cheap, and every poll may release the clients sooner


@dataclass
class SwitchoverReport:
    """What happened: old and new leader, and how long each step took (seconds)."""

    old_leader: str
    new_leader: str = ""
    zero_error: bool = False
    steps: dict[str, float] = field(default_factory=dict)
    #: The longest any pooled client could have been held (the larger of ``held_by_endpoint_s``).
    held_s: float | None = None
    #: How long the writers' (rw) and the readers' (ro) poolers were held, each from its own PAUSE.
    held_by_endpoint_s: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"old_leader": self.old_leader, "new_leader": self.new_leader, "zero_error": self.zero_error,
                "steps": {k: round(v, 3) for k, v in self.steps.items()},
                "held_s": None if self.held_s is None else round(self.held_s, 3),
                "held_by_endpoint_s": {k: round(v, 3) for k, v in self.held_by_endpoint_s.items()}}


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


class _Background:
    """One call on a daemon thread; its exception is kept to be raised in the caller's thread."""

    def __init__(self, call: Callable[[], object]) -> None:
        self._failure: BaseException | None = None

        def run() -> None:
            try:
                call()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, who raises it
                self._failure = exc

        self._thread = threading.Thread(target=run, name="patroni-switchover", daemon=True)
        self._thread.start()

    def raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def paused_poolers(poolers: Sequence[Pooler]) -> list[str]:
    """Names of the poolers that are paused now (a switchover killed midway leaves them so)."""
    return [p.name for p in poolers if p.paused()]


def on_every_pooler(poolers: Sequence[Pooler], action: Callable[[Pooler], None]) -> list[str]:
    """``action`` on every pooler at once (the clients are held meanwhile: a RESUME must not wait for the
    pooler before it), each on its own, so one failing spares none of the others; the failures."""
    if not poolers:
        return []
    with ThreadPoolExecutor(max_workers=len(poolers), thread_name_prefix="pooler") as pool:
        futures = {p.name: pool.submit(action, p) for p in poolers}
    return [f"{name}: {type(f.exception()).__name__}" for name, f in futures.items() if f.exception() is not None]


def resume_all(poolers: Sequence[Pooler], progress: Progress) -> list[str]:
    """RESUME every pooler (one failing does not keep the others paused); the failures."""
    failed = on_every_pooler(poolers, lambda p: p.resume())
    if failed:
        progress(f"switchover: RESUME failed on {', '.join(failed)}; run `careflow-ha switchover --resume`")
    return failed


def run_switchover(
    api: Patroni,
    poolers: Sequence[Pooler],
    route_ok: Callable[[str, str], bool],
    oldest_xact_s: Callable[[str], float],
    to: str | None,
    zero_error: bool,
    limits: Limits,
    progress: Progress,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> SwitchoverReport:
    """One switchover (see the module docstring). ``route_ok(endpoint, leader)``: every balancer's HAProxy
    sends writes (``rw``) only to ``leader``, or reads (``ro``) no longer to it; ``oldest_xact_s(leader)``:
    age of the oldest open transaction there."""
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


def _switch(api: Patroni, poolers: Sequence[Pooler], route_ok: Callable[[str, str], bool], leader: str,
            candidate: str | None, zero_error: bool, limits: Limits, progress: Progress,
            clock: Callable[[], float], sleep: Callable[[float], None], report: SwitchoverReport) -> SwitchoverReport:
    groups = {ep: [p for p in poolers if p.endpoint == ep] for ep in ENDPOINTS} if zero_error else {}
    groups = {ep: group for ep, group in groups.items() if group}
    paused_at: dict[str, float] = {}  # endpoint -> when its PAUSE began

    def pause(endpoint: str) -> None:
        if endpoint in groups and endpoint not in paused_at:
            paused_at[endpoint] = clock()
            for p in groups[endpoint]:
                p.begin_pause()

    def drained(endpoint: str) -> list[str]:
        deadline = paused_at[endpoint] + limits.drain_s
        return [p.name for p in groups.get(endpoint, ()) if not p.pause_done(deadline - clock())]

    try:
        if "rw" in groups:
            progress(f"switchover: PAUSE on {len(groups['rw'])} read-write pooler(s), at most "
                     f"{limits.drain_s:.0f}s to drain")
            pause("rw")
            pending = drained("rw")
            if pending:
                raise NotReady(f"PAUSE did not drain within {limits.drain_s:.0f}s on {', '.join(pending)} "
                               "(transactions still running); every pooler was resumed, nothing was switched")
            report.steps["pause"] = clock() - paused_at["rw"]
        progress(f"switchover: {leader} -> {candidate or 'any replica'} through Patroni")
        # Patroni's POST /switchover answers only at its next once-a-second look at the DCS: while it
        # waits, the new leader is watched here, so the clients are released up to a second sooner.
        post = _Background(lambda: api.switchover(leader, candidate, timeout=limits.switchover_s))

        def new_leader() -> bool:
            post.raise_failure()
            snap = api.cluster(timeout=2.0)
            now, old = snap.leader, snap.member(leader)
            if now != leader or old is None or old.state != "running":
                # The old primary is stepping down, so the candidate's promotion comes next. HAProxy shuts
                # the promoted replica's read sessions down once its check sees it: hold the readers from
                # here (not from the start, which would stall them through the whole switchover).
                pause("ro")
            if now and now != leader and snap.member(now).state == "running":  # type: ignore[union-attr]
                report.new_leader = now
                return True
            return False

        report.steps["patroni"] = _wait("a new running leader", limits.leader_s, limits.poll_s, new_leader, clock,
                                        sleep)
        pause("ro")  # the step down happened between two looks
        # Writers first, as soon as HAProxy sends writes to the new leader; readers once it no longer
        # sends reads there (a reader resumed before would lose its query with the shut-down session).
        for endpoint, group in groups.items():
            if endpoint == "ro" and (pending := drained("ro")):
                progress(f"switchover: read-only PAUSE did not drain within {limits.drain_s:.0f}s on "
                         f"{', '.join(pending)}: a long read there may be cut when HAProxy drops {report.new_leader}")
            what = "writes to" if endpoint == "rw" else "no reads to"
            report.steps[f"route_{endpoint}"] = _wait(
                f"HAProxy routing {what} {report.new_leader}", limits.route_s, limits.poll_s,
                lambda endpoint=endpoint: route_ok(endpoint, report.new_leader), clock, sleep)
            t0 = clock()
            failed = on_every_pooler(group, lambda p: p.reconnect())
            if failed:
                raise CommandFailed(f"RECONNECT failed on {', '.join(failed)} (the switchover itself is done)")
            if not resume_all(group, progress):
                report.held_by_endpoint_s[endpoint] = clock() - paused_at[endpoint]
            report.steps[f"resume_{endpoint}"] = clock() - t0
        post.join(limits.switchover_s)
        post.raise_failure()
        return report
    finally:
        if groups:
            # The safety net after any failure; a no-op for poolers already resumed above.
            failed = resume_all(poolers, progress)
            done = report.held_by_endpoint_s
            if done and len(done) == len(groups):
                report.held_s = max(done.values())
            elif paused_at:
                report.held_s = clock() - min(paused_at.values())
            if failed and not report.new_leader:
                progress("switchover: some poolers may still be paused; `careflow-ha status` shows which")


# -- the lab's collaborators (psycopg at the boundary) ----------------------------------------

def routes_writes_only_to(backends: Sequence[Backend], leader: str) -> bool:
    """HAProxy's read-write proxy has exactly ``leader`` UP (the old primary is marked down, so its sessions
    were shut down and every new connection goes to the leader)."""
    return {b.server for b in backends if b.proxy == RW_PROXY and _serving(b)} == {leader}


def reads_avoid(backends: Sequence[Backend], leader: str) -> bool:
    """HAProxy's read-only proxy no longer has ``leader`` UP (a promoted replica is marked down there)."""
    return not any(b.proxy == RO_PROXY and b.server == leader and _serving(b) for b in backends)


def _serving(b: Backend) -> bool:
    # "UP 1/2" is a server that failed a check but not yet `fall` of them: HAProxy still sends it
    # connections. ("DOWN 1/2", passing but not yet `rise` checks, gets none.)
    return b.status.startswith("UP")


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
    values = inventory_vars(settings.lab_inventory)
    return Limits(max_lag_bytes=int(values.get("careflow_maximum_lag_bytes", Limits.max_lag_bytes)), **bounds)


def lab_switchover(settings: Settings, to: str | None, zero_error: bool, limits: Limits,
                   progress: Progress) -> SwitchoverReport:
    """:func:`run_switchover` against the inventory's cluster, poolers and balancers: the one place the
    ``switchover`` command and the drills (``--via pgbouncer``) wire it up."""
    from careflow_ha.cluster.patroni import PatroniApi
    from careflow_ha.cluster.pooler import lab_poolers

    routing = settings.routing

    def route_ok(endpoint: str, leader: str) -> bool:
        # HAProxy's own view, from each balancer's stats page: it answers at once, where a test connection
        # through 5000 would wait in HAProxy's queue while no primary is up.
        routed = routes_writes_only_to if endpoint == "rw" else reads_avoid
        return all(
            routed(haproxy_backends(settings, timeout=1.0, host=ip, port=routing.haproxy_stats_port), leader)
            for ip in routing.balancer_ips.values()
        )

    return run_switchover(
        PatroniApi(settings), lab_poolers(settings) if zero_error else [], route_ok,
        lambda leader: oldest_transaction_s(settings.node_dsn(leader)), to, zero_error, limits, progress,
    )
