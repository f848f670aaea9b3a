"""The drill targets from the issue, and the verdicts of one run against them.

Outage targets are for the tuned preset (``fast``) on the lab machine; the
safety targets (no lost acknowledged write in synchronous mode, never two
writable primaries, the old primary back as a replica within 60 s of
healing) hold for every drill and preset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from careflow_ha.cluster.model import TimelineEvent
from careflow_ha.cluster.server_view import EVALUATION_INTERVAL_S, AlertSpan, ServerView
from careflow_ha.drills.analysis import Analysis

#: Client-observed write outage targets (seconds), tuned preset.
WRITE_OUTAGE_TARGETS_S: Mapping[str, float] = MappingProxyType(
    # balancer-loss: VRRP's master-down interval (3 x advert_int + skew) plus the clients' reconnect.
    # primary-partition: the same lease wait as a node loss (the cut-off primary demotes itself before the
    # lease ends, a replica promotes once it has): 21.1 s measured with TLS on (2026-12-03).
    # The one-way and DCS-only partitions and the I/O stall end like a partition: the primary cannot renew its lease
    # and a replica promotes when it expires (measured 2026-12-07: 25.2 and 22.1 s one-way, 13.4 s DCS-only, the
    # primary demoting itself first; 22.2 s stalled). primary-packet-loss: 20% loss each way is no failover; the
    # target is the longest stall a client may see (8.0 s measured), under retry_timeout.
    {"switchover": 2.0, "primary-node-loss": 22.0, "primary-partition": 22.0, "postgres-crash": 10.0,
     "balancer-loss": 3.0, "primary-inbound-partition": 22.0, "primary-outbound-partition": 22.0,
     "dcs-partition": 22.0, "primary-io-stall": 22.0, "primary-packet-loss": 10.0}
)
#: With failsafe_mode on, a primary that lost only the DCS keeps serving: the longest write stall allowed
#: (1.4 s measured in a DCS-only partition, 0.05 s in an etcd quorum loss, 2026-12-07).
FAILSAFE_WRITE_STALL_S = 2.0
#: A planned switchover through PgBouncer (``--via pgbouncer``: PAUSE, switch, RESUME): the longest a
#: client may wait, and it must see no failed transaction at all (issue 13).
POOLED_SWITCHOVER_STALL_S = 3.0
#: Certificate rotations (issue 15) are planned maintenance done with reloads: no transaction may fail, and no
#: client may wait longer than this between two acknowledgements (the probes run at 20 and 10 Hz).
ROTATION_DRILLS = frozenset({"cert-rotation", "ca-rotation"})
ROTATION_STALL_S = 1.0
#: The way in whose switchover drill is the zero-error one.
POOLED_WAY = "pgbouncer"
#: Old primary back as a streaming replica, from heal (or from the fault when nothing is healed).
REJOIN_TARGET_S = 60.0
#: primary-node-loss under the tuned preset vs Patroni's defaults, in the same run.
NODE_LOSS_RATIO_TARGET = 0.6
TUNED_PRESET = "fast"


@dataclass(frozen=True)
class Verdict:
    """One target checked: ``ok`` None means it could not be measured in this run."""

    target: str
    ok: bool | None
    detail: str


@dataclass(frozen=True)
class Observation:
    """What a fault's own observer adds to a run: timeline events, its verdicts, and figures for the report."""

    events: tuple[TimelineEvent, ...] = ()
    verdicts: tuple[Verdict, ...] = ()
    figures: Mapping[str, float | str | None] = field(default_factory=dict)


def _worst_stall(a: Analysis) -> float | None:
    w, r = a.write_outage.seconds, a.read_outage.seconds
    return None if w is None or r is None else max(w, r)


def verdicts(
    name: str, preset: str, synchronous: bool, a: Analysis, recovered: bool, via: str = "haproxy-vip",
    load_failures: int | None = None,
) -> tuple[Verdict, ...]:
    """Check one run against every target that applies to it (``load_failures``: the background load's failed
    requests, when it ran under load)."""
    out: list[Verdict] = []
    bound = WRITE_OUTAGE_TARGETS_S.get(name)
    if name in ROTATION_DRILLS:
        secs = _worst_stall(a)
        out.append(Verdict(f"worst client stall <= {ROTATION_STALL_S:g} s",
                           None if secs is None else secs <= ROTATION_STALL_S,
                           "never recovered" if secs is None else f"{secs:.2f} s (writes "
                           f"{a.write_outage.seconds:.2f} s, reads {a.read_outage.seconds:.2f} s)"))
        failed = a.failed_writes + a.failed_reads + (load_failures or 0)
        load = "" if load_failures is None else f", {load_failures} load request(s)"
        out.append(Verdict("0 failed transactions", failed == 0,
                           f"{a.failed_writes} write(s), {a.failed_reads} read(s){load} failed"))
    elif name == "switchover" and via == POOLED_WAY:
        # Held, not refused: the gap between acknowledgements is the stall a client saw (writer or reader),
        # every preset.
        w, r = a.write_outage.seconds, a.read_outage.seconds
        secs = None if w is None or r is None else max(w, r)
        out.append(Verdict(f"worst client stall <= {POOLED_SWITCHOVER_STALL_S:g} s",
                           None if secs is None else secs <= POOLED_SWITCHOVER_STALL_S,
                           "never recovered" if secs is None else f"{secs:.2f} s (writes {w:.2f} s, reads {r:.2f} s)"))
        out.append(Verdict("0 failed transactions through the pooler",
                           a.failed_writes == 0 and a.failed_reads == 0,
                           f"{a.failed_writes} write(s), {a.failed_reads} read(s) failed"))
    elif bound is not None and preset == TUNED_PRESET:
        secs = a.write_outage.seconds
        ok = None if secs is None else secs <= bound
        shown = "never recovered" if secs is None else f"{secs:.2f} s"
        out.append(Verdict(f"write outage <= {bound:g} s", ok, shown))
    check = a.set_check
    unverifiable = "not verifiable: the primary never answered the read-back"
    if synchronous:
        out.append(
            Verdict(
                "0 lost acknowledged writes (synchronous mode)",
                None if check is None else not check.lost,
                unverifiable if check is None else f"{len(check.lost)} lost",
            )
        )
    # Asynchronous replication may lose acknowledged writes, but no mode may invent, repeat or resurrect one.
    invented = None if check is None else len(check.unexpected) + len(check.duplicated) + len(check.refused_present)
    out.append(
        Verdict(
            "0 unexpected, duplicated or refused-yet-present rows",
            None if invented is None else invented == 0,
            unverifiable
            if check is None
            else f"{len(check.unexpected)} unexpected, {len(check.duplicated)} duplicated, "
            f"{len(check.refused_present)} refused yet present",
        )
    )
    out.append(
        Verdict(
            "never two writable primaries",
            not a.split_brain,
            "none observed"
            if not a.split_brain
            else f"{len(a.split_brain)} interval(s), first {a.split_brain[0].nodes}",
        )
    )
    by_writes = a.write_split_brain
    if by_writes is not None:
        out.append(
            Verdict(
                "no write acknowledged on a node while another held the leader key",
                not by_writes.acknowledged,
                "none observed"
                if not by_writes.acknowledged
                else f"{len(by_writes.acknowledged)} write(s) on {', '.join(by_writes.nodes)}",
            )
        )
    if a.new_primary is not None and a.old_primary is not None and a.new_primary != a.old_primary:
        rj = a.rejoin_seconds
        out.append(
            Verdict(
                f"old primary streaming again within {REJOIN_TARGET_S:g} s of healing",
                rj is not None and rj <= REJOIN_TARGET_S,
                "did not rejoin while observed" if rj is None else f"{rj:.1f} s",
            )
        )
    out.append(Verdict("cluster back to full health", recovered, "healthy" if recovered else "not healthy in time"))
    return tuple(out)


def failover_verdict(expects_failover: bool | None, a: Analysis) -> tuple[Verdict, ...]:
    """The fault's expected behaviour (faults.Fault.expects_failover): a replica promoted, or the primary kept
    the leader key; nothing when either outcome is correct."""
    if expects_failover is None:
        return ()
    return (Verdict("a replica promoted (expected)" if expects_failover else "no failover (expected)",
                    a.failed_over == expects_failover, f"leader {a.old_primary} -> {a.new_primary or a.old_primary}"),)


def compare_verdict(default_s: float | None, fast_s: float | None) -> Verdict:
    """The node-loss ratio target: the tuned preset at most 0.6x Patroni's defaults, same run."""
    if not default_s or fast_s is None:
        return Verdict(f"fast <= {NODE_LOSS_RATIO_TARGET}x default", None, "not measurable")
    ratio = fast_s / default_s
    return Verdict(f"fast <= {NODE_LOSS_RATIO_TARGET}x default", ratio <= NODE_LOSS_RATIO_TARGET, f"ratio {ratio:.2f}")


def alert_verdicts(expected: tuple[str, ...], planned: bool, targets: tuple[str, ...], server: ServerView | None,
                   fault_at: float) -> tuple[Verdict, ...]:
    """The monitoring targets: each expected rule was raised (pending or firing) about a target; a planned
    operation paged nobody (no critical alert fired).

    Not measurable (never a failure) when Prometheus could not answer: the
    monitoring host is an observer, and its absence must not fail a drill.
    """
    out: list[Verdict] = []
    unmeasured = server.note if server is not None and not server.available else "server metrics not collected"
    measured = server is not None and server.available
    for name in expected:
        span = server.raised(name, targets) if measured and server is not None else None
        out.append(Verdict(
            f"alert {name} raised about {', '.join(targets)}",
            None if not measured else span is not None,
            unmeasured if not measured else "neither pending nor firing while observed" if span is None
            else _moments(span, fault_at),
        ))
    if planned:
        paged = server.firing("critical") if measured and server is not None else ()
        out.append(Verdict(
            "no critical alert fired (planned maintenance pages nobody)",
            None if not measured else not paged,
            unmeasured if not measured else "none fired" if not paged
            else ", ".join(f"{a.alertname} on {a.target}" for a in paged),
        ))
    return tuple(out)


def _moments(span: AlertSpan, fault_at: float) -> str:
    def at(t: float | None) -> str:
        return "-" if t is None else f"{t - fault_at:+.0f} s"

    return f"pending {at(span.pending_at)}, firing {at(span.firing_at)} from the fault (±{EVALUATION_INTERVAL_S:g} s)"
