"""The balancer faults' own parts: aim at the balancer that holds the VIP, and watch VRRP recover.

The faults themselves are the generic node faults (container kill, iptables
partition) aimed at a balancer instead of a database node. What is specific
is found here: which balancer holds the VIP when the drill starts, and what
keepalived did afterwards, read from each balancer's journal (keepalived
logs every state change as ``(instance) Entering MASTER|BACKUP|FAULT STATE``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from careflow_ha.cluster.model import TimelineEvent
from careflow_ha.drills.targets import Observation, Verdict
from careflow_ha.errors import UsageError
from careflow_ha.lab.vip import vip_holders, wait_single_holder
from careflow_ha.settings import LB_NODES

if TYPE_CHECKING:
    from careflow_ha.drills.faults import FaultContext, Targets

#: The lost balancer must be back in VRRP (BACKUP, or MASTER again) this soon after healing.
BACK_IN_VRRP_TARGET_S = 60.0
_STATE = re.compile(r"^(?P<at>\d+\.\d+)\s.*Entering (?P<state>MASTER|BACKUP|FAULT) STATE")


@dataclass(frozen=True)
class VrrpChange:
    """One keepalived state change on one balancer, as its journal recorded it."""

    at: float
    node: str
    state: str


def parse_vrrp_journal(node: str, text: str) -> tuple[VrrpChange, ...]:
    """State changes from ``journalctl -o short-unix`` output of keepalived (other lines ignored)."""
    out = []
    for line in text.splitlines():
        match = _STATE.match(line.strip())
        if match:
            out.append(VrrpChange(float(match["at"]), node, match["state"]))
    return tuple(out)


def vrrp_changes(ctx: FaultContext, nodes: Sequence[str], since: float) -> tuple[VrrpChange, ...]:
    """Every balancer's keepalived state changes since ``since``, oldest first (a node that cannot be asked: none)."""
    found: list[VrrpChange] = []
    for node in nodes:
        argv = ["journalctl", "-u", "keepalived", "-o", "short-unix", "--no-pager", "-q", "--since", f"@{since:.0f}"]
        try:
            proc = ctx.engine.exec(node, argv, check=False, timeout=15)
        except Exception:  # noqa: BLE001 - a stopped node has no journal to read
            continue
        found += parse_vrrp_journal(node, proc.stdout or "")
    return tuple(sorted(found, key=lambda c: c.at))


def back_in_vrrp(changes: Sequence[VrrpChange], node: str, since: float) -> VrrpChange | None:
    """When ``node`` was back in VRRP with its peers after ``since``, and as what (None while FAULT or unseen).

    Either it changed state (a restarted balancer: BACKUP, perhaps after a FAULT
    while its HAProxy started), or it never did: a partitioned balancer stays
    MASTER throughout, and is back the moment a peer hears it and yields (BACKUP).
    """
    mine = [c for c in changes if c.node == node and c.at >= since]
    if mine:
        if mine[-1].state == "FAULT":
            return None
        last_fault = max((i for i, c in enumerate(mine) if c.state == "FAULT"), default=-1)
        return mine[last_fault + 1]
    yielded = next((c for c in changes if c.node != node and c.at >= since and c.state == "BACKUP"), None)
    return None if yielded is None else VrrpChange(yielded.at, node, "MASTER")


def takeover(changes: Sequence[VrrpChange], lost: str, after: float) -> VrrpChange | None:
    """The first MASTER change of another balancer after the fault: the VIP's new home."""
    return next((c for c in changes if c.at >= after and c.node != lost and c.state == "MASTER"), None)


def _vip(ctx: FaultContext) -> str:
    if not ctx.vip:
        raise UsageError("balancer drills need the VIP: set careflow_vip in inventory/group_vars/all.yml")
    return ctx.vip


def pick_vip_holder(ctx: FaultContext) -> Targets:
    """The balancer that holds the VIP now (exactly one must)."""
    return (wait_single_holder(ctx.engine, LB_NODES, _vip(ctx), timeout_s=30.0),)


def observe_vrrp(
    ctx: FaultContext,
    targets: Targets,
    fault_at: float,
    heal_at: float | None,
    say: Callable[[str], None],
    timeout_s: float = 120.0,
) -> Observation:
    """Wait (bounded) until the lost balancer is back in VRRP and one balancer holds the VIP; report when."""
    vip, lost = _vip(ctx), targets[0]
    since = heal_at if heal_at is not None else fault_at
    deadline = time.monotonic() + timeout_s
    changes: tuple[VrrpChange, ...] = ()
    holders: tuple[str, ...] = ()
    back = None
    for _ in range(int(timeout_s) + 2):
        changes = vrrp_changes(ctx, LB_NODES, fault_at - 1.0)
        holders = vip_holders(ctx.engine, LB_NODES, vip)
        back = back_in_vrrp(changes, lost, since)
        if back is not None and len(holders) == 1 or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    moved = takeover(changes, lost, fault_at)
    if back is not None:
        say(f"vrrp: {lost} back as {back.state} {back.at - since:.1f}s after healing; VIP on {', '.join(holders)}")
    else:
        say(f"vrrp: {lost} not back in VRRP within {timeout_s:.0f}s; VIP on {', '.join(holders) or 'nobody'}")
    events = tuple(TimelineEvent(c.at, "vrrp", f"{c.node} {c.state}") for c in changes if c.at >= fault_at)
    back_s = None if back is None else back.at - since
    verdicts = (
        Verdict(
            f"lost balancer back in VRRP within {BACK_IN_VRRP_TARGET_S:g} s of healing",
            back_s is not None and back_s <= BACK_IN_VRRP_TARGET_S,
            "not back while observed" if back is None else f"{back_s:.1f} s, as {back.state}",
        ),
        Verdict("VIP on exactly one balancer afterwards", len(holders) == 1, ", ".join(holders) or "nobody"),
    )
    figures = {
        "vip": vip,
        "vip_holder_before": lost,
        "vip_takeover_by": None if moved is None else moved.node,
        "vip_takeover_s": None if moved is None else round(moved.at - fault_at, 3),
        "lost_balancer_back_state": None if back is None else back.state,
        "lost_balancer_back_s": None if back_s is None else round(back_s, 3),
        "vip_holder_after": ", ".join(holders) or None,
    }
    return Observation(events=events, verdicts=verdicts, figures=figures)

