"""The client VIP: where it is configured, and which balancer holds it now.

The address is the inventory's ``careflow_vip`` (``inventory/group_vars/all.yml``,
overridable in the inventory's ``all.vars``): one source for keepalived, for
the clients and for the checks. Clients on the control host reach it over the
lab's bridge on HAProxy's own ports (5000/5001/7000), not the published
127.0.0.1 ones. ``CAREFLOW_USE_VIP=0`` makes the clients use the published
127.0.0.1 ports instead (a host without a route into the lab network).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from careflow_ha.errors import NotReady

#: The in-host HAProxy port variable behind each published-port key.
PORT_VARS: Mapping[str, str] = {
    "CAREFLOW_RW_PORT": "careflow_haproxy_rw_port",
    "CAREFLOW_RO_PORT": "careflow_haproxy_ro_port",
    "CAREFLOW_STATS_PORT": "careflow_haproxy_stats_port",
}


@dataclass(frozen=True)
class Vip:
    """The VIP and HAProxy's ports on it, keyed like the published ports (``CAREFLOW_RW_PORT``...)."""

    address: str
    ports: Mapping[str, int]


def inventory_vars(inventory: Path) -> dict[str, Any]:
    """``group_vars/all.yml`` beside ``inventory``, overridden by the inventory's ``all.vars`` (Ansible's order)."""
    merged: dict[str, Any] = {}
    group_vars = inventory.parent / "group_vars" / "all.yml"
    if group_vars.exists():
        merged.update(yaml.safe_load(group_vars.read_text(encoding="utf-8")) or {})
    if inventory.exists():
        data = yaml.safe_load(inventory.read_text(encoding="utf-8")) or {}
        merged.update(((data.get("all") or {}).get("vars")) or {})
    return merged


def configured_vip(inventory: Path, environ: Mapping[str, str]) -> Vip | None:
    """The inventory's VIP for clients, or None when it is off (empty) or CAREFLOW_USE_VIP=0."""
    if environ.get("CAREFLOW_USE_VIP", "1").strip().lower() in ("0", "no", "false", "off"):
        return None
    values = inventory_vars(inventory)
    address = str(values.get("careflow_vip") or "").strip()
    if not address:
        return None
    return Vip(address, {key: int(values[var]) for key, var in PORT_VARS.items()})


class Exec(Protocol):
    """Run a command inside a lab node (``careflow_ha.engine.Engine.exec``)."""

    def exec(self, node: str, argv: Sequence[str], **kw: Any) -> Any: ...


def holds(addresses_output: str, vip: str) -> bool:
    """Whether ``ip -o -4 addr show`` output lists ``vip`` as one of the node's addresses."""
    for line in addresses_output.splitlines():
        parts = line.split()
        if "inet" in parts:
            cidr = parts[parts.index("inet") + 1]
            if cidr.split("/")[0] == vip:
                return True
    return False


def vip_holders(engine: Exec, balancers: Iterable[str], vip: str) -> tuple[str, ...]:
    """The balancers that have ``vip`` on an interface now (asked inside each node; a stopped one holds nothing)."""
    out = []
    for node in balancers:
        try:
            proc = engine.exec(node, ["ip", "-o", "-4", "addr", "show"], check=False, timeout=10)
        except Exception:  # noqa: BLE001 - a node that cannot be asked holds nothing we can use
            continue
        if proc.returncode == 0 and holds(proc.stdout or "", vip):
            out.append(node)
    return tuple(out)


def wait_single_holder(
    engine: Exec,
    balancers: Sequence[str],
    vip: str,
    timeout_s: float,
    progress: Callable[[str], None] = lambda _line: None,
    interval_s: float = 0.5,
) -> str:
    """Poll until exactly one balancer holds the VIP; return it, or raise NotReady at the deadline."""
    deadline = time.monotonic() + timeout_s
    holders: tuple[str, ...] = ()
    for _ in range(int(timeout_s / interval_s) + 2):
        holders = vip_holders(engine, balancers, vip)
        if len(holders) == 1:
            progress(f"vip: {vip} is on {holders[0]}")
            return holders[0]
        if time.monotonic() >= deadline:
            break
        time.sleep(interval_s)
    raise NotReady(
        f"VIP {vip} is held by {', '.join(holders) or 'no balancer'} (want exactly one) after {timeout_s:.0f}s; "
        "see `journalctl -u keepalived` on the balancers"
    )

