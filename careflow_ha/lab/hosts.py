"""The container lab: bare Debian hosts (three database nodes, two balancers) that behave like servers.

``lab_up`` is safe to repeat: it reuses a current image and running hosts,
and it removes a stale lab left by another checkout (CI runs in a fresh clone
on the same machine) before starting its own.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from careflow_ha.errors import NotReady
from careflow_ha.lab import host_checks
from careflow_ha.lab.engine import Engine, container_name
from careflow_ha.lab.image import ensure_node_image
from careflow_ha.lab.ssh import ensure_keypair, ssh_argv, write_ssh_config
from careflow_ha.settings import COMPOSE_PROJECT, LAB_NODES, PROJECT_DIR, Settings

Progress = Callable[[str], None]

#: Which checkout owns the lab's containers and volumes. A different owner
#: means a stale lab (its data was made with other secrets): it is purged.
OWNER_FILE = Path("/var/lib/careflow-ha/lab-owner")


@dataclass(frozen=True)
class NodeStatus:
    node: str
    container: str
    state: str  # engine state: running, exited, paused, absent
    systemd: str  # is-system-running: running, degraded, starting, ... or "-"
    ssh: bool


def _owner_id(settings: Settings) -> str:
    return str(settings.project_dir)


def _project_volumes(engine: Engine) -> list[str]:
    return [v for v in engine.cmd("volume", "ls", "-q").stdout.split() if v.startswith(f"{COMPOSE_PROJECT}_")]


def is_stale(settings: Settings, engine: Engine) -> bool:
    """True when the lab's containers or volumes were made by another checkout (or by nobody known)."""
    if OWNER_FILE.exists():
        return OWNER_FILE.read_text().strip() != _owner_id(settings)
    return bool(engine.project_containers() or _project_volumes(engine))


def purge(engine: Engine, progress: Progress) -> None:
    """Remove every container, volume and the network of this compose project."""
    names = engine.project_containers()
    names += [container_name(n) for n in LAB_NODES if container_name(n) not in names and engine.state(n) != "absent"]
    if names:
        progress(f"lab: removing containers {', '.join(sorted(set(names)))}")
        engine.cmd("rm", "-f", "-t", "5", *sorted(set(names)))
    volumes = _project_volumes(engine)
    if volumes:
        progress(f"lab: removing {len(set(volumes))} data volumes")
        engine.cmd("volume", "rm", "-f", *sorted(set(volumes)))
    engine.cmd("network", "rm", "-f", "careflow-lab", check=False)
    OWNER_FILE.unlink(missing_ok=True)


def _running(engine: Engine) -> list[str]:
    return [n for n in LAB_NODES if engine.state(n) == "running"]


def published_port_keys(nodes: Iterable[str]) -> set[str]:
    """The port variables (CAREFLOW_*_PORT) that compose publishes for ``nodes``, read from docker-compose.yml."""
    services = yaml.safe_load((PROJECT_DIR / "docker-compose.yml").read_text())["services"]
    keys: set[str] = set()
    for node in nodes:
        for mapping in services.get(node, {}).get("ports", []):
            keys.update(re.findall(r"\$\{(CAREFLOW_\w+):-", mapping))
    return keys


def lab_up(settings: Settings, engine: Engine, progress: Progress, timeout_s: float = 300) -> list[NodeStatus]:
    """Bring the hosts up and wait until each runs systemd and answers SSH."""
    host_checks.require_root()
    host_checks.require_disk([settings.project_dir, Path("/var/lib/containers")])
    if is_stale(settings, engine):
        owner = OWNER_FILE.read_text().strip() if OWNER_FILE.exists() else "an unknown checkout"
        progress(f"lab: found a stale lab from {owner}; removing it (and its data) first")
        purge(engine, progress)
    up = _running(engine)
    running = set(up) == set(LAB_NODES)
    host_checks.require_free_ports(settings, held_by_lab=published_port_keys(up))
    ensure_keypair(settings)
    write_ssh_config(settings)
    ensure_node_image(engine, progress)
    OWNER_FILE.parent.mkdir(parents=True, exist_ok=True)
    OWNER_FILE.write_text(_owner_id(settings) + "\n")
    if running:
        progress(f"lab: all {len(LAB_NODES)} hosts already running")
    else:
        progress(f"lab: starting containers {', '.join(LAB_NODES)}")
        engine.compose("up", "-d", env=settings.compose_env(), timeout=600)
    return wait_ready(settings, engine, progress, timeout_s)


def _systemd_state(engine: Engine, node: str) -> str:
    proc = engine.exec(node, ["systemctl", "is-system-running"], check=False, timeout=20)
    return proc.stdout.strip() or "unknown"


def _ssh_ok(settings: Settings, node: str) -> bool:
    try:
        proc = subprocess.run(ssh_argv(settings, node, "true"), capture_output=True, timeout=15, check=False)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def wait_ready(settings: Settings, engine: Engine, progress: Progress, timeout_s: float) -> list[NodeStatus]:
    """Poll until every host has finished booting and answers SSH, or fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    ready: set[str] = set()
    while time.monotonic() < deadline:
        for node in LAB_NODES:
            if node in ready:
                continue
            state = _systemd_state(engine, node) if engine.state(node) == "running" else "-"
            # "degraded" is a booted host with a failed unit: reported by status, not a boot hang.
            if state in ("running", "degraded") and _ssh_ok(settings, node):
                ready.add(node)
                progress(f"lab: {node} is up (systemd {state}, SSH ready)")
        if ready == set(LAB_NODES):
            return lab_status(settings, engine)
        time.sleep(1)
    missing = sorted(set(LAB_NODES) - ready)
    raise NotReady(
        f"hosts {', '.join(missing)} did not boot and answer SSH within {timeout_s:.0f}s; "
        f"see `careflow-ha lab status` and `podman logs careflow-{missing[0]}`"
    )


def lab_status(settings: Settings, engine: Engine) -> list[NodeStatus]:
    out = []
    for node in LAB_NODES:
        state = engine.state(node)
        running = state == "running"
        out.append(
            NodeStatus(
                node=node,
                container=container_name(node),
                state=state,
                systemd=_systemd_state(engine, node) if running else "-",
                ssh=_ssh_ok(settings, node) if running else False,
            )
        )
    return out


def lab_down(settings: Settings, engine: Engine, progress: Progress, purge_data: bool = False) -> None:
    """Stop and remove the hosts; keep the data volumes unless ``purge_data``."""
    if purge_data:
        purge(engine, progress)
        return
    progress("lab: removing containers (data volumes are kept; --purge removes them)")
    engine.compose("down", env=settings.compose_env(), timeout=300)
    leftovers = [container_name(n) for n in LAB_NODES if engine.state(n) != "absent"]
    if leftovers:
        engine.cmd("rm", "-f", *leftovers)
