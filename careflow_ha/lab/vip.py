"""Which balancer holds the client VIP now, asked inside each lab node.

The VIP itself (the inventory's ``careflow_vip``) is a setting: ``Settings.vip``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from careflow_ha.errors import NotReady


class Exec(Protocol):
    """Run a command inside a lab node (``careflow_ha.lab.engine.Engine.exec``)."""

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

