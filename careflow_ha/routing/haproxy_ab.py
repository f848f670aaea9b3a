"""HAProxy's own settings, A/B in the same run: the provisioned config against variants of it.

For each variant, the VIP holder runs a second, temporary HAProxy: its provisioned ``haproxy.cfg`` with
only ``listen primary`` kept (on a spare port) and the variant's lines added. pgbench then goes through
each one in the same rotation as every other way in, so a setting's effect is a ratio measured side by
side, not a before/after across noisy runs. The processes are stopped when the benchmark ends, even on
failure; the provisioned HAProxy is never touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from careflow_ha.errors import NotReady


@dataclass(frozen=True)
class Variant:
    """Lines added to the ``global`` and ``defaults`` sections, and why the setting could matter."""

    global_lines: tuple[str, ...] = ()
    defaults_lines: tuple[str, ...] = ()
    why: str = ""


#: The variant that changes nothing: every other one is read against it.
CONTROL = "haproxy copy"

#: The settings worth measuring for a TCP proxy in front of PostgreSQL (small, latency-bound round trips).
VARIANTS: Mapping[str, Variant] = MappingProxyType({
    CONTROL: Variant(
        why="the control: the same listener in a second process with nothing changed, so a variant's "
        "effect is read against it, not against the provisioned process (which also runs the stats, "
        "replicas and health-check work)",
    ),
    "haproxy nbthread 1": Variant(
        global_lines=("nbthread 1",),
        why="HAProxy 2.6 starts one thread per CPU; on a box shared with PostgreSQL and the clients, one "
        "thread avoids cross-thread wakeups and competes less for the cores",
    ),
    "haproxy splice-auto": Variant(
        defaults_lines=("option splice-auto",),
        why="kernel splicing moves payload between sockets without copying it through user space; it helps "
        "large transfers, and pgbench's round trips are small",
    ),
})

#: The first spare port on the balancer; variant i listens on FIRST_PORT + i.
FIRST_PORT = 5010
_DIR = "/run/careflow-haproxy-ab"


class Exec(Protocol):
    def exec(self, node: str, argv: Sequence[str], **kw: Any) -> Any: ...


def variant_config(provisioned: str, port: int, variant: Variant) -> str:
    """``provisioned`` (a rendered haproxy.cfg) reduced to ``listen primary`` on ``port``, plus ``variant``.

    The stats listener, the replicas listener and the admin socket go: they would clash with the running
    HAProxy, and the benchmark writes only through the primary's port.
    """
    sections: list[tuple[str, list[str]]] = []
    for line in provisioned.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            sections.append((line.strip(), []))
        elif sections and line.strip() and not line.strip().startswith("#"):
            sections[-1][1].append(line.strip())
    names = [head for head, _ in sections]
    for wanted in ("global", "defaults", "listen primary"):
        if wanted not in names:
            raise ValueError(f"the provisioned haproxy.cfg has no '{wanted}' section")
    out = ["# careflow-ha bench routing: a temporary A/B copy of the provisioned HAProxy (listen primary only)"]
    for head, body in sections:
        if head == "global":
            body = [b for b in body if not b.startswith("stats socket")] + list(variant.global_lines)
        elif head == "defaults":
            body = body + list(variant.defaults_lines)
        elif head == "listen primary":
            body = [f"bind *:{port}" if b.startswith("bind ") else b for b in body]
        else:
            continue
        out += [head, *(f"    {b}" for b in body), ""]
    return "\n".join(out)


@contextlib.contextmanager
def variant_listeners(
    engine: Exec, holder: str, address: str, progress: Callable[[str], None],
    variants: Mapping[str, Variant] = VARIANTS,
) -> Iterator[dict[str, str]]:
    """Run one temporary HAProxy per variant on ``holder``; yield ``{name: "host=... port=..."}``.

    Every process started here is stopped on the way out, whatever happened in between.
    """
    provisioned = engine.exec(holder, ["cat", "/etc/haproxy/haproxy.cfg"], timeout=20).stdout
    engine.exec(holder, ["mkdir", "-p", "-m", "0700", _DIR], timeout=20)
    started: list[str] = []
    try:
        where = {}
        for i, (name, variant) in enumerate(variants.items()):
            port, stem = FIRST_PORT + i, f"{_DIR}/{i}"
            # Written through stdin inside the node: the config holds the stats password, which must not
            # travel on a command line or land on the control host.
            engine.exec(holder, ["sh", "-c", f"umask 077; cat > {stem}.cfg"], input_text=variant_config(
                provisioned, port, variant), timeout=20)
            check = engine.exec(holder, ["haproxy", "-c", "-q", "-f", f"{stem}.cfg"], check=False, timeout=20)
            if check.returncode != 0:
                raise NotReady(f"HAProxy refused the '{name}' variant on {holder}: {check.stdout.strip()[-200:]}")
            engine.exec(holder, ["haproxy", "-D", "-f", f"{stem}.cfg", "-p", f"{stem}.pid"], timeout=20)
            started.append(stem)
            progress(f"bench: '{name}' HAProxy on {holder}:{port} ({variant.why})")
            where[name] = f"host={address} port={port}"
        yield where
    finally:
        for stem in started:
            engine.exec(holder, ["sh", "-c", f"kill $(cat {stem}.pid)"], check=False, timeout=20)
        engine.exec(holder, ["rm", "-rf", _DIR], check=False, timeout=20)
