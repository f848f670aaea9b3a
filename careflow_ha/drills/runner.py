"""One drill run end to end: prepare, probe, inject, hold, heal, converge, verify.

The order matters and is the same for every fault:

1. apply the timing preset and synchronous_mode; wait for a healthy cluster;
2. start the probes (writer 5000, reader 5001, one sampler per node) and the
   ``/cluster`` poller; wait until writes are acknowledged;
3. inject the fault; hold it per its policy; heal it;
4. wait for full health (old primary streaming again), keep probing a little;
5. stop the probes; read back the run's rows from the current primary;
   fetch Patroni's history; analyse.

Every wait has a deadline. Probes stop in ``finally`` whatever happens.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from careflow_ha.cluster.model import ClusterSnapshot, HistoryEntry, TimelineEvent
from careflow_ha.cluster.nodes import node_addresses
from careflow_ha.cluster.probes import (
    NodeSampler,
    NodeWriter,
    ProbeReader,
    ProbeWriter,
    ensure_node_probe_table,
    ensure_probe_table,
    fetch_seqs,
)
from careflow_ha.cluster.records import Recording
from careflow_ha.cluster.server_view import LEAD_S, ServerView, collect_lab
from careflow_ha.cluster.switchover import lab_limits, lab_switchover
from careflow_ha.cluster.timing import Timing, timing_preset
from careflow_ha.cluster.watch import BoundedLoop, ClusterPoller, role_change_events
from careflow_ha.drills.analysis import Analysis, analyse, rejoined_at
from careflow_ha.drills.checker import describe_set_check
from careflow_ha.drills.control import ClusterControl
from careflow_ha.drills.faults import PGDATA, CertificateRotation, Fault, FaultContext, NodeEngine, PooledSwitchover
from careflow_ha.drills.targets import (
    POOLED_WAY,
    REJOIN_TARGET_S,
    Observation,
    Verdict,
    alert_verdicts,
    failover_verdict,
    verdicts,
)
from careflow_ha.errors import CareflowError, CheckFailed, NotReady
from careflow_ha.settings import DB_NAME, ROLE_NAMES, Settings, inventory_vars

Progress = Callable[[str], None]
#: A background load to run around the fault (the load-test work plugs Locust in here for ``--under-load``).
Background = Callable[[], AbstractContextManager[object]]
#: Through PgBouncer a probe waits this long (pooled clients are held, not refused; the plain probes give up
#: after 3 s, which would turn a long hold into a "failed" write and hide how long it was).
POOLED_OP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class DrillOptions:
    """How to run a drill. Timeouts are seconds (callers scale them for slow machines)."""

    preset: str = "fast"
    synchronous: bool = True
    write_rate_hz: float = 20.0
    read_rate_hz: float = 10.0
    warmup_acks: int = 20
    healthy_timeout_s: float = 180.0
    recovery_timeout_s: float = 180.0
    tail_s: float = 3.0
    max_run_s: float = 900.0
    background: Background | None = None
    restore_synchronous: bool = True
    #: Run a per-node writer on every node (the split-brain measure by acknowledged writes). Off until it has
    #: been verified on the lab: it adds one connection per node and a table to the drill.
    node_writers: bool = False
    node_write_interval_s: float = 0.2
    #: Patroni's failsafe_mode for the run (restored afterwards); None leaves the cluster's setting alone.
    failsafe_mode: bool | None = None


@dataclass(frozen=True)
class DrillRun:
    """One completed drill: what was done, what was seen, what it means."""

    name: str
    title: str
    description: str
    preset: str
    timing: Timing
    synchronous: bool
    under_load: bool
    run_id: str
    targets: tuple[str, ...]
    old_primary: str | None
    inject_note: str
    heal_note: str
    started_at: float
    fault_at: float
    heal_at: float | None
    finished_at: float
    recovered: bool
    recovery_problem: str | None
    expects_failover: bool | None
    recording: Recording
    analysis: Analysis
    verdicts: tuple[Verdict, ...]
    figures: Mapping[str, float | str | None] = field(default_factory=dict)  # the fault's own (e.g. VRRP)
    #: The way in the probes used (settings.WAYS_IN): where "write outage" was seen from.
    via: str = "haproxy-vip"
    #: What Prometheus saw over the run (panels, alerts); None when it was not asked.
    server: ServerView | None = None
    failsafe_mode: bool | None = None  # as the run set it; None: the cluster's own setting, untouched

    @property
    def passed(self) -> bool:
        """No target failed (targets that could not be measured do not fail the run)."""
        return all(v.ok is not False for v in self.verdicts)


#: Ask the local postmaster over its unix socket; the socket directory and port
#: come from postmaster.pid (lines 5 and 4), so a custom Patroni setting is followed.
EXEC_WRITABLE_SCRIPT = (
    f"pid={PGDATA}/postmaster.pid; "
    'exec runuser -u postgres -- psql -XAtq -h "$(sed -n 5p $pid)" -p "$(sed -n 4p $pid)" -d postgres '
    '-c "SELECT pg_is_in_recovery()"'
)


def exec_writable_check(engine: NodeEngine, node: str) -> Callable[[], bool | None]:
    """Ask a node over its unix socket, through the engine (works while the host cannot reach it)."""

    def check() -> bool | None:
        try:
            proc = engine.exec(node, ["sh", "-c", EXEC_WRITABLE_SCRIPT], check=False, timeout=5)
        except CareflowError:
            return None
        answer = (proc.stdout or "").strip()
        return {"f": True, "t": False}.get(answer)

    return check


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``condition`` until true or ``timeout``; bounded in count and time. Returns whether it held."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return condition()


def node_writers_for(
    settings: Settings, nodes: tuple[str, ...], run_id: str, *, interval_s: float, max_seconds: float
) -> list[NodeWriter]:
    """One per-node writer per node, straight to its published port as the app role (table created first).

    Each writer connects to the node itself, never through HAProxy: the
    question is whether that node takes writes, whatever the balancer thinks.
    """
    ensure_node_probe_table(settings.dsn("rw", "admin"), grant_to=ROLE_NAMES["app"])
    return [
        NodeWriter(n, settings.node_dsn(n, "app", DB_NAME), run_id, interval_s=interval_s, max_seconds=max_seconds)
        for n in nodes
    ]


@contextlib.contextmanager
def running(*probes: BoundedLoop) -> Iterator[None]:
    for p in probes:
        p.start()
    try:
        yield
    finally:
        for p in probes:
            p.stop()


@dataclass
class ProbeSet:
    """Every probe of one run (a drill or a soak), made but not started: ``running(*probes.all)`` runs them."""

    run_id: str
    rw_dsn: str
    writer: ProbeWriter
    reader: ProbeReader
    samplers: list[NodeSampler]
    node_writers: list[NodeWriter]
    poller: ClusterPoller

    @property
    def all(self) -> tuple[BoundedLoop, ...]:
        # The writer last: it starts when everything that watches the cluster already runs.
        return (self.poller, *self.samplers, *self.node_writers, self.reader, self.writer)

    def recording(self, control: ClusterControl, events: list[TimelineEvent], started: float, probes_from: float,
                  probes_until: float, say: Progress) -> tuple[Recording, tuple[int, ...] | None]:
        """After the probes stopped: what they saw, and the probe table as the primary holds it (None: unread)."""
        for probe in self.all:
            if probe.failure is not None:
                raise CheckFailed(f"drill probe {probe.name} failed: {probe.failure!r}") from probe.failure
        # Attempts first, table second: a write still in flight is then "ambiguous", never "unexpected".
        write_acks, write_errors, writes_in_flight = self.writer.outcomes()
        present = _read_back(self.rw_dsn, self.run_id, say)
        snapshots = self.poller.snapshots
        recording = Recording(
            writes=write_acks,
            write_errors=write_errors,
            writes_in_flight=writes_in_flight,
            reads=self.reader.acks,
            read_errors=self.reader.errors,
            node_samples=tuple(s for sampler in self.samplers for s in sampler.samples),
            node_writes=tuple(w for nw in self.node_writers for w in nw.writes),
            snapshots=snapshots,
            history=_history(control),
            events=tuple(events) + role_change_events(snapshots),
            started_at=started,
            stopped_at=time.time(),
            write_interval_s=self.writer.interval_s,
            read_interval_s=self.reader.interval_s,
            probes_from=probes_from,
            probes_until=probes_until,
        )
        return recording, present


def await_recovery(control: ClusterControl, timeout: float, say: Progress) -> tuple[bool, str | None]:
    """(healthy again, or why not) after a fault was healed: a run reports an unhealthy end, it does not raise."""
    try:
        control.wait_healthy(timeout)
    except NotReady as exc:
        say(f"NOT healthy in time: {exc}")
        return False, str(exc)
    say("cluster healthy again")
    return True, None


def fault_context(settings: Settings, engine: NodeEngine, control: ClusterControl, say: Progress) -> FaultContext:
    """What the faults of a run may touch on the lab (a drill's or a soak's)."""
    pooled = (
        PooledSwitchover(lambda to: lab_switchover(settings, to, True, lab_limits(settings), say))
        if settings.via == POOLED_WAY else None
    )
    values = inventory_vars(settings.lab_inventory)
    etcd_ports = (int(values.get("careflow_etcd_client_port", 2379)), int(values.get("careflow_etcd_peer_port", 2380)))
    return FaultContext(engine, control, vip=settings.vip.address if settings.vip else None, pooled_switchover=pooled,
                        certificate_rotation=CertificateRotation(lambda ca: lab_rotation(settings, ca, say)),
                        etcd_ports=etcd_ports)


def start_probes(settings: Settings, engine: NodeEngine, control: ClusterControl, options: DrillOptions,
                 healthy: ClusterSnapshot, run_id: str, say: Progress) -> ProbeSet:
    """The probes of a run tagged ``run_id``: the writer through 5000 (its table made first), the reader through
    5001, a role sampler per member, the per-node writers when asked, and the cluster poller."""
    rw_dsn = settings.dsn("rw", "app")
    ensure_probe_table(settings.dsn("rw", "admin"), grant_to=ROLE_NAMES["app"])
    # The nodes are the cluster's members as Patroni lists them (the lab's PG_NODES).
    nodes = tuple(m.name for m in healthy.members)
    names = node_addresses({n: settings.node_dsn(n) for n in nodes})
    bound = options.max_run_s
    # A pooler holds a client instead of refusing it, so give its probes room to show the stall whole.
    wait = {"op_timeout_s": POOLED_OP_TIMEOUT_S} if settings.via == POOLED_WAY else {}
    writer = ProbeWriter(rw_dsn, run_id, rate_hz=options.write_rate_hz, max_seconds=bound, server_names=names, **wait)
    reader = ProbeReader(settings.dsn("ro", "ro"), rate_hz=options.read_rate_hz, max_seconds=bound,
                         server_names=names, **wait)
    samplers = [
        NodeSampler(n, settings.node_dsn(n), fallback=exec_writable_check(engine, n), max_seconds=bound) for n in nodes
    ]
    node_writers = (
        node_writers_for(settings, nodes, run_id, interval_s=options.node_write_interval_s, max_seconds=bound)
        if options.node_writers
        else []
    )
    poller = ClusterPoller(control.topology, max_seconds=bound, on_change=lambda line: say(f"cluster: {line}"))
    return ProbeSet(run_id, rw_dsn, writer, reader, samplers, node_writers, poller)


def run_drill(
    fault: Fault,
    settings: Settings,
    engine: NodeEngine,
    control: ClusterControl,
    options: DrillOptions | None = None,
    progress: Progress | None = None,
) -> DrillRun:
    """Run ``fault`` once against the lab cluster and return everything observed, analysed."""
    options = options or DrillOptions()
    progress = progress or (lambda line: None)
    timing = timing_preset(options.preset)
    started = time.time()

    def say(line: str) -> None:
        progress(f"[{fault.name} +{time.time() - started:5.1f}s] {line}")

    previous_sync = control.synchronous_mode()
    previous_failsafe = None if options.failsafe_mode is None else control.failsafe_mode()
    try:
        say(f"preparing: preset {options.preset} {timing}, synchronous_mode {'on' if options.synchronous else 'off'}"
            + ("" if options.failsafe_mode is None else f", failsafe_mode {'on' if options.failsafe_mode else 'off'}"))
        control.set_timing_preset(options.preset)
        control.set_synchronous_mode(options.synchronous)
        if options.failsafe_mode is not None:
            control.set_failsafe_mode(options.failsafe_mode)
        healthy = control.wait_healthy(options.healthy_timeout_s)
        live = FaultContext(engine, control, vip=settings.vip.address if settings.vip else None)
        targets = fault.pick_live(live) if fault.pick_live else fault.pick(healthy)
        old_primary = healthy.leader
        say(f"healthy: leader {old_primary}, sync standby {', '.join(healthy.sync_standbys) or 'none'}")
        return _probe_and_break(fault, settings, engine, control, options, timing, healthy, targets, started, say)
    finally:
        if options.restore_synchronous and previous_sync != options.synchronous:
            control.set_synchronous_mode(previous_sync)
            say(f"synchronous_mode restored to {'on' if previous_sync else 'off'}")
        if previous_failsafe is not None and previous_failsafe != options.failsafe_mode:
            control.set_failsafe_mode(previous_failsafe)
            say(f"failsafe_mode restored to {'on' if previous_failsafe else 'off'}")


def expected_failover(fault: Fault, failsafe_mode: bool | None) -> bool | None:
    """What the fault should do: with failsafe_mode on, a fault that only takes the DCS away from the primary
    must leave it the primary (it reaches every member over REST)."""
    return False if failsafe_mode and fault.failsafe_keeps_primary else fault.expects_failover


def _probe_and_break(
    fault: Fault,
    settings: Settings,
    engine: NodeEngine,
    control: ClusterControl,
    options: DrillOptions,
    timing: Timing,
    healthy: ClusterSnapshot,
    targets: tuple[str, ...],
    started: float,
    say: Progress,
) -> DrillRun:
    run_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}-{fault.name}-{uuid.uuid4().hex[:6]}"
    probes = start_probes(settings, engine, control, options, healthy, run_id, say)
    writer, poller = probes.writer, probes.poller
    events: list[TimelineEvent] = []
    ctx = fault_context(settings, engine, control, say)
    observation = Observation()
    heal_at: float | None = None
    heal_note = ""
    background = options.background() if options.background else contextlib.nullcontext()
    with background as load, running(*probes.all):
        probes_from = time.time()  # after the background load's start-up: from here on every probe runs
        if not wait_for(lambda: len(writer.acks) >= options.warmup_acks, 30.0):
            last = writer.errors[-1].message if writer.errors else "no error recorded"
            raise NotReady(f"the probe writer got no steady acknowledgements via {settings.via} ({last})")
        say(f"probes running: {len(writer.acks)} writes acknowledged; injecting {fault.title} on {', '.join(targets)}")
        fault_at = time.time()
        inject_note = ""
        try:
            inject_note = fault.inject(ctx, targets)
            injected = time.time()
            events.append(TimelineEvent(fault_at, "fault", inject_note))
            say(f"fault injected: {inject_note}")
            _hold(fault, writer, injected, say)
        finally:
            # Heal even when injecting or holding failed half-way: never leave the lab broken.
            if fault.hold.max_s > 0:
                heal_at = time.time()
                heal_note = fault.heal(ctx, targets)
                events.append(TimelineEvent(heal_at, "heal", heal_note))
                say(f"healed: {heal_note}")
        recovered, problem = await_recovery(control, options.recovery_timeout_s, say)
        if recovered and fault.expects_failover and healthy.leader:
            # "Healthy" can be read from a node that has just been healed and still serves its stale view of
            # the DCS (the cut-off old primary, as leader), so keep observing until the old primary is seen
            # streaming, as the analysis will look for it; bounded by the rejoin target.
            since = heal_at if heal_at is not None else fault_at
            if not wait_for(lambda: rejoined_at(poller.snapshots, healthy.leader, since) is not None, REJOIN_TARGET_S):
                say(f"{healthy.leader} not seen streaming again within {REJOIN_TARGET_S:g} s")
        if fault.observe is not None:
            observation = fault.observe(ctx, targets, fault_at, heal_at, say)
            events.extend(observation.events)
        tail_from = time.time()
        wait_for(lambda: writer.last_ack_after(tail_from + options.tail_s) is not None, options.tail_s + 10.0)
    probes_until = time.time()
    recording, present = probes.recording(control, events, started, probes_from, probes_until, say)
    analysis = analyse(recording, fault_at=fault_at, heal_at=heal_at, old_primary=healthy.leader, present_seqs=present)
    server = collect_lab(settings, probes_from - LEAD_S, time.time())
    say("server view: " + (server.note or ", ".join(f"{a.alertname} on {a.target} fired +{a.firing_at - fault_at:.0f}s"
                                                    for a in server.firing() if a.firing_at) or "no alert fired"))
    expected = expected_failover(fault, options.failsafe_mode)
    load_result = getattr(load, "result", None)  # the background load's report (--under-load), once written
    load_totals = load_figures(load_result)
    run = DrillRun(
        name=fault.name,
        title=fault.title,
        description=fault.description,
        preset=options.preset,
        timing=timing,
        synchronous=options.synchronous,
        under_load=options.background is not None,
        run_id=run_id,
        targets=targets,
        old_primary=healthy.leader,
        inject_note=inject_note,
        heal_note=heal_note,
        started_at=started,
        fault_at=fault_at,
        heal_at=heal_at,
        finished_at=time.time(),
        recovered=recovered,
        recovery_problem=problem,
        expects_failover=expected,
        failsafe_mode=options.failsafe_mode,
        recording=recording,
        analysis=analysis,
        verdicts=verdicts(fault.name, options.preset, options.synchronous, analysis, recovered, settings.via,
                          load_failures=None if load_result is None else load_result.report["summary"]["failures"])
        + failover_verdict(expected, analysis)
        + observation.verdicts
        + alert_verdicts(fault.alerts, fault.planned, targets, server, fault_at),
        figures={**observation.figures, **load_totals},
        via=settings.via,
        server=server,
    )
    wo = analysis.write_outage
    check = analysis.set_check
    say(
        f"done: write outage {'-' if wo.seconds is None else f'{wo.seconds:.2f}s'}, "
        + ("writes not verifiable" if check is None else describe_set_check(check))
        + f", split brain {len(analysis.split_brain)}"
    )
    return run


def lab_rotation(settings: Settings, ca: bool, say: Progress) -> Any:
    """``careflow-ha certs rotate [--ca]`` on the lab inventory (the certificate-rotation drills' fault)."""
    from careflow_ha.provision.base import LAB_INVENTORY
    from careflow_ha.provision.rotation import rotate_with_ansible

    return rotate_with_ansible(settings, LAB_INVENTORY, say, ca=ca)


def load_figures(result: Any) -> dict[str, float | str | None]:
    """The background load's totals (``--under-load``): every failed request is a failed transaction."""
    if result is None:
        return {}
    summary = result.report["summary"]
    return {"load_requests": summary["requests"], "load_failures": summary["failures"],
            "load_report": str(result.folder / "report.md")}


def _hold(fault: Fault, writer: ProbeWriter, injected: float, say: Progress) -> None:
    """Keep the fault in place per its policy, with a progress line every 5 s."""
    hold = fault.hold
    if hold.max_s <= 0:
        return
    deadline = injected + hold.max_s
    min_until = injected + hold.min_s
    next_line = time.time() + 5.0
    for _ in range(int(hold.max_s / 0.2) + 2):
        now = time.time()
        if now >= deadline:
            say(f"holding: max hold {hold.max_s:.0f}s reached")
            return
        resumed = any(a.sent_at > injected for a in writer.acks[-50:])
        if now >= min_until and (not hold.until_writes_resume or resumed):
            if hold.until_writes_resume:
                say("writes acknowledged again; healing")
            return
        if now >= next_line:
            say(f"holding: writes {'flowing' if resumed else 'down'} for {now - injected:.0f}s")
            next_line = now + 5.0
        time.sleep(0.2)


def _read_back(dsn: str, run_id: str, say: Progress, timeout: float = 60.0) -> tuple[int, ...] | None:
    """The run's rows as the current primary holds them, or None if it never answered."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout) + 1):
        try:
            return fetch_seqs(dsn, run_id)
        except Exception as exc:  # noqa: BLE001 - any driver error means "not yet"
            if time.monotonic() >= deadline:
                say(f"could not read the probe rows back: {str(exc).splitlines()[0][:120]}")
                return None
            time.sleep(1.0)
    return None


def _history(control: ClusterControl) -> tuple[HistoryEntry, ...]:
    try:
        return control.history()
    except (NotReady, OSError):
        return ()
