"""The fault catalogue: every row of the failure model, each with inject, heal and a description.

A fault picks its target nodes from the healthy cluster's topology (the
primary, the sync standby, ...), breaks them through the container engine or
from the host (iptables in the node's network namespace), and heals them. How
long the fault is held before healing is the fault's :class:`Hold` policy.
In-node actions run through ``engine.exec`` (as root in the container), not
over the network, so they also work on a partitioned node.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from careflow_ha.cluster.model import ClusterSnapshot
from careflow_ha.cluster.switchover import SwitchoverReport
from careflow_ha.drills.balancer import observe_vrrp, pick_vip_holder
from careflow_ha.drills.control import ClusterControl
from careflow_ha.drills.targets import Observation
from careflow_ha.errors import CommandFailed, NotReady, UsageError
from careflow_ha.lab.engine import run as host_run

PGDATA = "/var/lib/postgresql/15/main"
#: What a fault does to its target, as a soak's ``--nemesis`` names it ("mixed" draws from all of them).
NEMESIS_KINDS = ("kill", "partition", "pause", "planned")
#: The host groups faults break; faults on different layers may overlap in a soak.
FAULT_LAYERS = ("database", "balancer")
#: iptables rules that cut a node off its network but keep loopback (Patroni
#: talks to its own PostgreSQL and etcd over localhost; cutting that would be
#: a different fault).
PARTITION_RULES: tuple[tuple[str, ...], ...] = (
    ("INPUT", "!", "-i", "lo", "-j", "DROP"),
    ("OUTPUT", "!", "-o", "lo", "-j", "DROP"),
)


class NodeEngine(Protocol):
    """The container-engine operations faults use (``careflow_ha.lab.engine.Engine`` provides them)."""

    def exec(self, node: str, argv: Sequence[str], **kw: Any) -> Any: ...
    def kill(self, node: str, signal: str = "KILL") -> None: ...
    def start(self, node: str) -> None: ...
    def pause(self, node: str) -> None: ...
    def unpause(self, node: str) -> None: ...
    def pid(self, node: str) -> int: ...
    def state(self, node: str) -> str: ...


HostRun = Callable[..., Any]


@dataclass
class PooledSwitchover:
    """Through the poolers (``--via pgbouncer``) a planned switchover is the zero-error one: ``switch(candidate)``
    pauses every PgBouncer, switches through Patroni and resumes (``careflow-ha switchover --zero-error``).
    ``reports`` keeps what each one said, for the drill's figures."""

    switch: Callable[[str | None], SwitchoverReport]
    reports: list[SwitchoverReport] = field(default_factory=list)


@dataclass
class CertificateRotation:
    """``careflow-ha certs rotate [--ca]`` as a drill's fault: ``rotate(ca)`` runs the whole rotation and returns
    its passes (``provision.rotation.Rotation``); ``results`` keeps what each run did, for the drill's figures."""

    rotate: Callable[[bool], Any]
    results: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class FaultContext:
    """What an injector may touch: the engine, the cluster's control API, and host commands."""

    engine: NodeEngine
    control: ClusterControl
    host_run: HostRun = host_run
    vip: str | None = None  # the client VIP (balancer faults aim at its holder)
    #: etcd's client and peer ports (inventory careflow_etcd_client_port / careflow_etcd_peer_port): what a
    #: DCS-only partition cuts.
    etcd_ports: tuple[int, int] = (2379, 2380)
    pooled_switchover: PooledSwitchover | None = None
    certificate_rotation: CertificateRotation | None = None


@dataclass(frozen=True)
class Hold:
    """How long a fault stays before healing.

    At least ``min_s``; then, with ``until_writes_resume``, until the probe
    writer is acknowledged again (the cluster has worked around the fault), and
    at most ``max_s`` in any case.
    """

    min_s: float = 0.0
    max_s: float = 0.0
    until_writes_resume: bool = False


Targets = tuple[str, ...]


@dataclass(frozen=True)
class Fault:
    """One drill's fault: how it is aimed, injected, held and healed, and what the cluster should do."""

    name: str
    title: str
    description: str
    pick: Callable[[ClusterSnapshot], Targets]
    inject: Callable[[FaultContext, Targets], str]  # returns a one-line note for the timeline
    heal: Callable[[FaultContext, Targets], str]
    hold: Hold
    expects_failover: bool | None  # None: either outcome is correct
    ci: bool = False  # in the CI subset
    #: Aim at run time from the lab itself instead of Patroni's topology (the balancer holding the VIP).
    pick_live: Callable[[FaultContext], Targets] | None = None
    #: After recovery: wait for and report what this fault's own machinery did (keepalived's VRRP).
    observe: Callable[[FaultContext, Targets, float, float | None, Callable[[str], None]], Observation] | None = None
    #: Which ``soak --nemesis`` draws it (one of NEMESIS_KINDS); "" keeps it out of every soak.
    nemesis: str = ""
    #: The hosts it breaks: a soak never overlaps two faults of one layer (see drills/nemesis.py).
    layer: str = "database"
    #: Alert rules (roles/monitoring/files/careflow-alerts.yml) that must fire about a target during the run.
    alerts: tuple[str, ...] = ()
    #: Planned maintenance: no critical alert may fire (it must not page anyone).
    planned: bool = False
    #: With Patroni's failsafe_mode on, the primary keeps running (no failover, writes go on): the fault takes
    #: the DCS away from the primary but leaves every member's REST API reachable.
    failsafe_keeps_primary: bool = False


# -- target selection --------------------------------------------------------------------------------------------------


def _primary(snap: ClusterSnapshot) -> str:
    if snap.leader is None:
        raise NotReady("no leader in the cluster: a drill needs a healthy cluster to start from")
    return snap.leader


def _pick_nothing(snap: ClusterSnapshot) -> Targets:
    """For faults aimed by ``pick_live``: Patroni's topology names no target."""
    return ()


def pick_primary(snap: ClusterSnapshot) -> Targets:
    """The current leader."""
    return (_primary(snap),)


def pick_switchover(snap: ClusterSnapshot) -> Targets:
    """(leader, candidate): the sync standby when there is one (it is certain to be up to date)."""
    leader = _primary(snap)
    if snap.sync_standbys:
        return (leader, snap.sync_standbys[0])
    replicas = [m.name for m in snap.members if m.is_streaming_replica]
    if not replicas:
        raise NotReady("no streaming replica to switch over to")
    return (leader, replicas[0])


def pick_sync_standby(snap: ClusterSnapshot) -> Targets:
    """The synchronous standby (only exists with synchronous_mode on)."""
    if not snap.sync_standbys:
        raise NotReady("no sync standby: this drill needs synchronous_mode on (do not use --async)")
    return (snap.sync_standbys[0],)


def pick_async_replica(snap: ClusterSnapshot) -> Targets:
    """A replica that is not the sync standby (losing it must not affect commits)."""
    candidates = [m.name for m in snap.members if m.is_streaming_replica and m.name not in snap.sync_standbys]
    if not candidates:
        raise NotReady("no asynchronous replica streaming")
    return (candidates[0],)


def pick_two_standby_nodes(snap: ClusterSnapshot) -> Targets:
    """Two nodes other than the primary's: stopping their etcd members loses the quorum of three."""
    leader = _primary(snap)
    others = [m.name for m in snap.members if m.name != leader]
    if len(others) < 2:
        raise NotReady("quorum loss needs two members besides the primary")
    return tuple(others[:2])


# -- in-node helpers ---------------------------------------------------------------------------------------------------


def _pid_from(output: str, what: str, node: str) -> str:
    first = (output or "").strip().splitlines()[0].strip() if (output or "").strip() else ""
    if not first.isdigit() or first == "0":
        raise CommandFailed(f"could not find the {what} PID on {node} (got {first or 'nothing'!r}); is it running?")
    return first


def postmaster_pid(ctx: FaultContext, node: str) -> str:
    """The postmaster's PID: the first line of postmaster.pid, which PostgreSQL itself maintains."""
    proc = ctx.engine.exec(node, ["head", "-n", "1", f"{PGDATA}/postmaster.pid"], timeout=15)
    return _pid_from(proc.stdout, "postmaster", node)


def patroni_pid(ctx: FaultContext, node: str) -> str:
    """Patroni's PID as systemd knows it (exact; no pattern matching on command lines)."""
    proc = ctx.engine.exec(
        node, ["systemctl", "show", "--property", "MainPID", "--value", "patroni.service"], timeout=15
    )
    return _pid_from(proc.stdout, "Patroni", node)


def iptables(ctx: FaultContext, pid: int, action: str, rule: Sequence[str], check: bool = True) -> Any:
    """iptables inside the node's network namespace, run from the host."""
    return ctx.host_run(
        ["nsenter", "-t", str(pid), "-n", "iptables", "-w", "5", action, *rule], check=check, timeout=30
    )


# -- injectors and healers ---------------------------------------------------------------------------------------------
# Each takes the context and the picked targets and returns a one-line note for the timeline and the report.
# Healers are idempotent: healing what is not broken changes nothing.


def inject_switchover(ctx: FaultContext, t: Targets) -> str:
    candidate = t[1] if len(t) > 1 else None
    pooled = ctx.pooled_switchover
    if pooled is not None:
        report = pooled.switch(candidate)
        pooled.reports.append(report)
        return (f"zero-error switchover {report.old_leader} -> {report.new_leader} (PgBouncer PAUSE, Patroni, "
                f"RECONNECT, RESUME; clients held {report.held_s or 0.0:.2f} s)")
    ctx.control.switchover(t[0], candidate, timeout=60.0)
    return f"switchover {t[0]} -> {candidate or 'any'} (Patroni REST)"


def observe_pooled_switchover(ctx: FaultContext, t: Targets, fault_at: float, heal_at: float | None,
                              say: Callable[[str], None]) -> Observation:
    """The zero-error switchover's own account (how long PgBouncer held the clients, each step); nothing
    for a plain one."""
    pooled = ctx.pooled_switchover
    if pooled is None or not pooled.reports:
        return Observation()
    report = pooled.reports[-1]
    held = None if report.held_s is None else round(report.held_s, 3)
    figures: dict[str, float | str | None] = {"pooler_held_s": held}
    figures.update({f"pooler_held_{ep}_s": round(secs, 3) for ep, secs in report.held_by_endpoint_s.items()})
    figures.update({f"pooler_step_{name}_s": round(secs, 3) for name, secs in report.steps.items()})
    return Observation(figures=figures)


def inject_postgres_crash(ctx: FaultContext, t: Targets) -> str:
    pid = postmaster_pid(ctx, t[0])
    ctx.engine.exec(t[0], ["kill", "-9", pid], timeout=15)
    return f"kill -9 postmaster (pid {pid}) on {t[0]}"


def inject_patroni_crash(ctx: FaultContext, t: Targets) -> str:
    pid = patroni_pid(ctx, t[0])
    ctx.engine.exec(t[0], ["kill", "-9", pid], timeout=15)
    return f"kill -9 patroni (pid {pid}) on {t[0]}"


def heal_patroni(ctx: FaultContext, t: Targets) -> str:
    # systemd normally restarts it already; starting an active unit is a no-op.
    ctx.engine.exec(t[0], ["systemctl", "start", "patroni.service"], timeout=60)
    return f"patroni.service started on {t[0]}"


def inject_kill_node(ctx: FaultContext, t: Targets) -> str:
    for node in t:
        ctx.engine.kill(node, "KILL")
    return f"container kill {', '.join(t)}"


def heal_start_node(ctx: FaultContext, t: Targets) -> str:
    for node in t:
        if ctx.engine.state(node) != "running":
            ctx.engine.start(node)
    return f"container start {', '.join(t)}"


def inject_pause_node(ctx: FaultContext, t: Targets) -> str:
    ctx.engine.pause(t[0])
    return f"container pause {t[0]} (frozen: TCP still answered by the kernel)"


def heal_unpause_node(ctx: FaultContext, t: Targets) -> str:
    if ctx.engine.state(t[0]) == "paused":
        ctx.engine.unpause(t[0])
    return f"container unpause {t[0]}"


@dataclass(frozen=True)
class IptablesCut:
    """A network fault made of iptables rules in the target's network namespace: inserted to inject, every
    copy deleted to heal (idempotent, bounded). ``rules(ctx)`` may depend on the context (the etcd ports)."""

    rules: Callable[[FaultContext], Sequence[Sequence[str]]]
    what: str  # for the timeline: "DROP all but loopback"

    def inject(self, ctx: FaultContext, t: Targets) -> str:
        pid = ctx.engine.pid(t[0])
        for rule in self.rules(ctx):
            iptables(ctx, pid, "-I", rule)
        return f"iptables {self.what} in {t[0]}'s network namespace"

    def heal(self, ctx: FaultContext, t: Targets) -> str:
        pid = ctx.engine.pid(t[0])
        for rule in self.rules(ctx):
            for _ in range(5):  # delete every copy we might have inserted; bounded
                if iptables(ctx, pid, "-C", rule, check=False).returncode != 0:
                    break
                iptables(ctx, pid, "-D", rule)
        return f"iptables rules removed in {t[0]}'s network namespace"


def _dcs_rules(ctx: FaultContext) -> tuple[tuple[str, ...], ...]:
    # Patroni reaches this node's own etcd member at the node's own address, which Linux routes over loopback, so
    # it keeps its local member; but that member, cut from its peers, has no quorum and answers nothing, so the
    # node has no DCS, while replication (5432) and the REST API (8008) still flow both ways.
    ports = ",".join(str(p) for p in ctx.etcd_ports)
    return (
        ("INPUT", "!", "-i", "lo", "-p", "tcp", "-m", "multiport", "--dports", ports, "-j", "DROP"),
        ("OUTPUT", "!", "-o", "lo", "-p", "tcp", "-m", "multiport", "--dports", ports, "-j", "DROP"),
    )


#: A fifth of the packets each way: TCP retransmits and carries on, but every round trip may cost a
#: retransmission timeout (200 ms and up), which is what a flaky NIC or a congested switch does.
PACKET_LOSS = 0.2

FULL_PARTITION = IptablesCut(lambda ctx: PARTITION_RULES, "DROP all but loopback")
INBOUND_PARTITION = IptablesCut(lambda ctx: PARTITION_RULES[:1], "DROP everything inbound but loopback")
OUTBOUND_PARTITION = IptablesCut(lambda ctx: PARTITION_RULES[1:], "DROP everything outbound but loopback")
DCS_PARTITION = IptablesCut(_dcs_rules, "DROP etcd's client and peer ports (replication and REST still flow)")
LOSSY_LINK = IptablesCut(
    lambda ctx: tuple((*rule[:-2], "-m", "statistic", "--mode", "random", "--probability", f"{PACKET_LOSS:g}",
                       *rule[-2:]) for rule in PARTITION_RULES),
    f"DROP {PACKET_LOSS:.0%} of the packets each way at random",
)
inject_partition, heal_partition = FULL_PARTITION.inject, FULL_PARTITION.heal


def inject_stop_etcd(ctx: FaultContext, t: Targets) -> str:
    for node in t:
        ctx.engine.exec(node, ["systemctl", "stop", "etcd.service"], timeout=60)
    return f"systemctl stop etcd on {', '.join(t)}"


def heal_start_etcd(ctx: FaultContext, t: Targets) -> str:
    for node in t:
        ctx.engine.exec(node, ["systemctl", "start", "etcd.service"], timeout=60)
    return f"systemctl start etcd on {', '.join(t)}"


ETCD_LEADER_SCRIPT = (
    # The member list names the members; any member's status names the leader's ID. etcdctl's environment
    # (endpoints, client certificate) comes from roles/etcd's profile script, as for a DBA's login shell.
    "etcdctl member list -w json && etcdctl endpoint status -w json"
)


def etcd_leader(ctx: FaultContext, ask: Sequence[str]) -> str:
    """The etcd member that leads now, by name, asked through the first of ``ask`` (nodes) that answers."""
    problems = []
    for node in ask:
        # Not checked: `endpoint status` exits 1 when any member is down, and still prints the others' status.
        proc = ctx.engine.exec(node, ["bash", "-lc", ETCD_LEADER_SCRIPT], timeout=30, check=False)
        try:
            return leader_from_etcdctl(proc.stdout, node)
        except CommandFailed as exc:
            last = (proc.stderr or "").strip().splitlines()[-1:]
            problems.append(f"{exc}{': ' + last[0] if last else ''}")
    raise NotReady(f"no etcd member named its leader ({'; '.join(problems) or 'no member asked'})")


def leader_from_etcdctl(output: str, node: str) -> str:
    """The leader's name from ``etcdctl member list -w json`` followed by ``endpoint status -w json``."""
    decoder = json.JSONDecoder()
    text, docs, at = output.strip(), [], 0
    for _ in range(4):  # two documents expected; bounded
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            break
        try:
            doc, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            break
        docs.append(doc)
    try:
        names = {m["ID"]: m["name"] for m in docs[0]["members"]}
        leaders = {st["Status"]["leader"] for st in docs[1]}
        (leader_id,) = leaders  # members that disagree (an election under way) name no leader yet
        return names[leader_id]
    except (IndexError, KeyError, TypeError, ValueError) as exc:
        raise CommandFailed(f"no etcd leader in etcdctl's answer on {node} ({type(exc).__name__})") from None


def pick_etcd_leader(ctx: FaultContext) -> Targets:
    """The node whose etcd member leads the Raft group now (it may or may not be the primary's)."""
    members = [m.name for m in ctx.control.topology().members]
    return (etcd_leader(ctx, members),)


def observe_etcd_election(ctx: FaultContext, t: Targets, fault_at: float, heal_at: float | None,
                          say: Callable[[str], None]) -> Observation:
    """Who leads etcd after the old leader's member came back (it rejoins as a follower)."""
    snap = ctx.control.topology()
    try:
        after = etcd_leader(ctx, [m.name for m in snap.members])
    except (NotReady, CommandFailed) as exc:
        say(f"etcd leader afterwards unknown: {exc}")
        after = None
    return Observation(figures={"etcd_leader_before": t[0], "etcd_leader_after": after,
                                "primary_on_etcd_leader_node": "yes" if snap.leader == t[0] else "no"})


#: Stop the postmaster first (it can then fork nothing new), then every process it started: the backends,
#: the WAL writer, the checkpointer, the walsenders. Patroni and the rest of the node keep running.
POSTGRES_SIGNAL_SCRIPT = (
    'pm=$(head -n 1 {pgdata}/postmaster.pid) && [ -n "$pm" ] && kill -{sig} "$pm" && '
    'kids=$(pgrep -d " " -P "$pm"); {{ [ -z "$kids" ] || kill -{sig} $kids; }} && echo "$pm $kids"'
)


def _signal_postgres(ctx: FaultContext, node: str, sig: str) -> list[str]:
    proc = ctx.engine.exec(node, ["bash", "-c", POSTGRES_SIGNAL_SCRIPT.format(pgdata=PGDATA, sig=sig)], timeout=15)
    return (proc.stdout or "").split()


def inject_freeze_postgres(ctx: FaultContext, t: Targets) -> str:
    pids = _signal_postgres(ctx, t[0], "STOP")
    return f"SIGSTOP to the postmaster (pid {pids[0]}) and its {len(pids) - 1} processes on {t[0]}: I/O stalled"


def heal_thaw_postgres(ctx: FaultContext, t: Targets) -> str:
    pids = _signal_postgres(ctx, t[0], "CONT")
    return f"SIGCONT to the postmaster and its {len(pids) - 1} processes on {t[0]}"


def pick_every_member(snap: ClusterSnapshot) -> Targets:
    """Every database node (a rotation touches every host; the members are what the probes watch)."""
    return tuple(m.name for m in snap.members)


def _rotate(ctx: FaultContext, ca: bool) -> str:
    rotation = ctx.certificate_rotation
    if rotation is None:
        raise UsageError("this drill needs the lab's certificate rotation (run it with `careflow-ha drill run`)")
    result = rotation.rotate(ca)
    rotation.results.append(result)
    steps = "; ".join(f"{p.step} {p.seconds:.0f} s" for p in result.passes)
    return f"certs rotate{' --ca' if ca else ''}: {steps}; every TLS listener serves the new certificates"


def inject_rotate_leaves(ctx: FaultContext, t: Targets) -> str:
    return _rotate(ctx, ca=False)


def inject_rotate_ca(ctx: FaultContext, t: Targets) -> str:
    return _rotate(ctx, ca=True)


def observe_rotation(ctx: FaultContext, t: Targets, fault_at: float, heal_at: float | None,
                     say: Callable[[str], None]) -> Observation:
    """How long the rotation took, pass by pass."""
    rotation = ctx.certificate_rotation
    if rotation is None or not rotation.results:
        return Observation()
    result = rotation.results[-1]
    figures: dict[str, float | str | None] = {"rotation_s": round(result.seconds, 1),
                                              "rotation_listeners": len(result.passes[-1].served)}
    figures.update({f"rotation_pass_{i}_s": round(p.seconds, 1) for i, p in enumerate(result.passes, 1)})
    return Observation(figures=figures)


def no_heal(ctx: FaultContext, t: Targets) -> str:
    return "nothing to heal"


# -- the catalogue -----------------------------------------------------------------------------------------------------

def _at_vip_holder(
    name: str,
    title: str,
    description: str,
    inject: Callable[[FaultContext, Targets], str],
    heal: Callable[[FaultContext, Targets], str],
    hold: Hold,
    nemesis: str,
    ci: bool = False,
) -> Fault:
    """A balancer fault: aimed at the VIP's holder when it runs, keepalived watched afterwards, never a failover."""
    return Fault(
        name, title, description, _pick_nothing, inject, heal, hold,
        expects_failover=False, ci=ci, pick_live=pick_vip_holder, observe=observe_vrrp,
        nemesis=nemesis, layer="balancer",
    )


_UNTIL_RECOVERED = Hold(min_s=2.0, max_s=120.0, until_writes_resume=True)
#: Losing only the DCS stops no write at once: the primary demotes itself when it fails to renew the lease, a
#: replica promotes when the lease expires (up to ttl + loop_wait: 40 s on Patroni's defaults). Held at least that
#: long, then until writes resume, so the failover (or, with failsafe_mode, its absence) is what is measured.
_DCS_LOSS_HOLD = Hold(min_s=45.0, max_s=120.0, until_writes_resume=True)

_FAULTS: tuple[Fault, ...] = (
    Fault(
        "switchover",
        "planned switchover",
        "Patroni REST POST /switchover from the primary to the sync standby; the old primary becomes a replica.",
        pick_switchover,
        inject_switchover,
        no_heal,
        Hold(),
        expects_failover=True,
        ci=True,
        observe=observe_pooled_switchover,
        nemesis="planned",
        planned=True,
    ),
    Fault(
        "postgres-crash",
        "postgres crash on the primary",
        "kill -9 of the postmaster on the primary. Patroni still holds the leader key and normally restarts "
        "PostgreSQL in place (crash recovery); a failover is also a correct outcome.",
        pick_primary,
        inject_postgres_crash,
        no_heal,
        Hold(min_s=1.0, max_s=90.0, until_writes_resume=True),
        expects_failover=None,
        nemesis="kill",
    ),
    Fault(
        "patroni-crash",
        "Patroni crash on the primary",
        "kill -9 of the Patroni daemon on the primary. PostgreSQL keeps serving; systemd restarts Patroni, which "
        "must find its PostgreSQL running and keep the leader key before the lease expires.",
        pick_primary,
        inject_patroni_crash,
        heal_patroni,
        Hold(min_s=5.0, max_s=60.0, until_writes_resume=True),
        expects_failover=False,
        nemesis="kill",
    ),
    Fault(
        "primary-node-loss",
        "primary node loss",
        "Container kill of the primary node (SIGKILL to its init: PostgreSQL, Patroni and its etcd member "
        "vanish at once). The lease must expire before a replica may promote. Healed by starting the container.",
        pick_primary,
        inject_kill_node,
        heal_start_node,
        _UNTIL_RECOVERED,
        expects_failover=True,
        ci=True,
        nemesis="kill",
        # Its Patroni is gone for the lease wait (fast: 20 s) and the restart; whether the rule then outlasts
        # its `for: 15s` and fires depends on how fast the node comes back (fired +24 s on the lab, stayed
        # pending in a CI run): the drill asks that the rule saw it, the report says whether it fired.
        alerts=("CareflowPatroniMemberDown",),
    ),
    Fault(
        "primary-node-freeze",
        "primary node freeze",
        "Container pause of the primary (all its processes frozen; the kernel still accepts TCP). After the "
        "failover it is thawed and must notice it lost the lease and demote itself, never serving writes.",
        pick_primary,
        inject_pause_node,
        heal_unpause_node,
        _UNTIL_RECOVERED,
        expects_failover=True,
        nemesis="pause",
    ),
    Fault(
        "primary-partition",
        "network partition of the primary",
        "iptables DROP of everything but loopback in the primary's network namespace, from the host. The "
        "isolated primary loses etcd and must demote itself before a replica's lease wait ends.",
        pick_primary,
        inject_partition,
        heal_partition,
        _UNTIL_RECOVERED,
        expects_failover=True,
        ci=True,
        nemesis="partition",
    ),
    Fault(
        "replica-loss",
        "loss of an asynchronous replica",
        "Container kill of a replica that is not the sync standby. Writes must not notice; reads through "
        "5001 move to the other replica.",
        pick_async_replica,
        inject_kill_node,
        heal_start_node,
        Hold(min_s=5.0, max_s=60.0, until_writes_resume=True),
        expects_failover=False,
        nemesis="kill",
    ),
    Fault(
        "sync-standby-loss",
        "loss of the sync standby",
        "Container kill of the synchronous standby. Commits wait until Patroni names the other replica sync "
        "standby; that wait is the write outage.",
        pick_sync_standby,
        inject_kill_node,
        heal_start_node,
        Hold(min_s=5.0, max_s=90.0, until_writes_resume=True),
        expects_failover=False,
        nemesis="kill",
    ),
    Fault(
        "etcd-member-loss",
        "loss of one etcd member",
        "systemctl stop etcd on the primary's node. The other two members keep quorum; Patroni on the primary "
        "must switch to another etcd endpoint and keep its lease.",
        pick_primary,
        inject_stop_etcd,
        heal_start_etcd,
        Hold(min_s=10.0, max_s=60.0, until_writes_resume=True),
        expects_failover=False,
        nemesis="kill",
    ),
    Fault(
        "etcd-quorum-loss",
        "loss of etcd quorum",
        "systemctl stop etcd on two of three nodes for 30 s. Without a DCS no one may hold the lease: the "
        "primary demotes itself (writes stop) unless Patroni's failsafe mode is on, and nobody promotes.",
        pick_two_standby_nodes,
        inject_stop_etcd,
        heal_start_etcd,
        Hold(min_s=30.0, max_s=30.0),
        expects_failover=None,
        failsafe_keeps_primary=True,
        nemesis="kill",
        alerts=("CareflowEtcdMemberDown",),
    ),
    Fault(
        "cert-rotation",
        "certificate rotation",
        "careflow-ha certs rotate: every host's certificate issued again (new keys), installed one host at a time "
        "and every service reloaded (PostgreSQL, Patroni, HAProxy, PgBouncer, pgBackRest, Prometheus; etcd reads "
        "its certificate per handshake). Planned maintenance: no transaction may fail, no alert may page.",
        pick_every_member,
        inject_rotate_leaves,
        no_heal,
        Hold(),
        expects_failover=False,
        ci=True,
        observe=observe_rotation,
        planned=True,
    ),
    Fault(
        "ca-rotation",
        "CA rotation",
        "careflow-ha certs rotate --ca: a new lab CA in three passes (trust both, certificates from the new one, "
        "retire the old), each installed one host at a time; etcd restarts one member at a time with each new "
        "trust bundle. Both CAs are trusted while certificates change, so nothing may fail.",
        pick_every_member,
        inject_rotate_ca,
        no_heal,
        Hold(),
        expects_failover=False,
        ci=True,
        observe=observe_rotation,
        planned=True,
    ),
    Fault(
        "etcd-leader-loss",
        "loss of the etcd leader",
        "systemctl stop etcd on the node whose member leads etcd's Raft group (asked with etcdctl when the drill "
        "starts; it may be the primary's node or not). The two followers elect a new leader within etcd's election "
        "timeout; Patroni retries its requests within retry_timeout and keeps the lease: no failover.",
        _pick_nothing,
        inject_stop_etcd,
        heal_start_etcd,
        Hold(min_s=10.0, max_s=60.0, until_writes_resume=True),
        expects_failover=False,
        nemesis="kill",
        pick_live=pick_etcd_leader,
        observe=observe_etcd_election,
    ),
    Fault(
        "primary-inbound-partition",
        "one-way partition of the primary: inbound cut",
        "iptables DROP of every packet into the primary's network namespace but loopback; its own packets still "
        "leave. It hears neither etcd nor its replicas' acknowledgements, so it can neither renew the lease nor "
        "commit, and must demote itself; a replica promotes once the lease expires.",
        pick_primary,
        INBOUND_PARTITION.inject,
        INBOUND_PARTITION.heal,
        _UNTIL_RECOVERED,
        expects_failover=True,
        nemesis="partition",
    ),
    Fault(
        "primary-outbound-partition",
        "one-way partition of the primary: outbound cut",
        "iptables DROP of every packet out of the primary's network namespace but loopback; packets still arrive. "
        "Its lease renewals and WAL never leave, so as with the inbound cut it must demote itself and a replica "
        "promotes once the lease expires.",
        pick_primary,
        OUTBOUND_PARTITION.inject,
        OUTBOUND_PARTITION.heal,
        _UNTIL_RECOVERED,
        expects_failover=True,
        nemesis="partition",
    ),
    Fault(
        "dcs-partition",
        "DCS-only partition of the primary",
        "iptables DROP of etcd's client and peer ports in the primary's network namespace: it still reaches its "
        "replicas (replication, REST API) but not etcd. It demotes itself when it cannot renew the lease, and a "
        "replica, which still sees etcd's quorum, promotes. With failsafe_mode on, the primary reaches every member "
        "over REST (POST /failsafe), so it keeps running and the replicas, told so, do not race for the lease.",
        pick_primary,
        DCS_PARTITION.inject,
        DCS_PARTITION.heal,
        _DCS_LOSS_HOLD,
        expects_failover=True,
        failsafe_keeps_primary=True,
        nemesis="partition",
    ),
    Fault(
        "primary-packet-loss",
        "packet loss on the primary",
        f"iptables DROP of {PACKET_LOSS:.0%} of the packets in and out of the primary's network namespace, at "
        "random, for 30 s. TCP retransmits, so commits and Patroni's etcd requests slow down but succeed; the "
        "lease is renewed within retry_timeout: no failover, and no write lost.",
        pick_primary,
        LOSSY_LINK.inject,
        LOSSY_LINK.heal,
        Hold(min_s=30.0, max_s=30.0),
        expects_failover=False,
        nemesis="partition",
    ),
    Fault(
        "primary-io-stall",
        "I/O stall on the primary (PostgreSQL frozen)",
        "SIGSTOP to the primary's postmaster and every process it started (backends, WAL writer, checkpointer, "
        "walsenders), as a hung disk does to them; Patroni and etcd on the node keep running. Patroni's loop "
        "blocks on its own query, so the lease expires and a replica promotes. When thawed, the old primary "
        "must demote itself, and its stalled commits must never be acknowledged.",
        pick_primary,
        inject_freeze_postgres,
        heal_thaw_postgres,
        _UNTIL_RECOVERED,
        expects_failover=True,
        nemesis="pause",
    ),
    _at_vip_holder(
        "balancer-loss",
        "loss of the balancer that holds the VIP",
        "Container kill of the balancer holding the VIP. The other balancer hears no VRRP advert for 3 x "
        "advert_int and takes the VIP; clients reconnect to the same address. Healed by starting the container: "
        "it must come back as BACKUP (nopreempt) without taking the VIP back.",
        inject_kill_node,
        heal_start_node,
        Hold(min_s=2.0, max_s=60.0, until_writes_resume=True),
        nemesis="kill",
        ci=True,
    ),
    _at_vip_holder(
        "balancer-partition",
        "network partition of the balancer that holds the VIP",
        "iptables DROP of everything but loopback in the VIP holder's network namespace. Its peer takes the "
        "VIP after 3 x advert_int; the cut-off one still believes it is MASTER. After healing the two masters "
        "see each other and the lower priority yields, so the VIP may move once more.",
        inject_partition,
        heal_partition,
        Hold(min_s=5.0, max_s=60.0, until_writes_resume=True),
        nemesis="partition",
    ),
)

#: Every drill by name, in the order of the failure model.
FAULTS: Mapping[str, Fault] = MappingProxyType({f.name: f for f in _FAULTS})


def get_fault(name: str) -> Fault:
    """The fault called ``name``, or a UsageError that lists the valid names."""
    try:
        return FAULTS[name]
    except KeyError:
        raise UsageError(f"unknown drill {name!r}; valid drills: {', '.join(FAULTS)}") from None
