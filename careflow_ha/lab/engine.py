"""Container engine choice and the few operations the lab and drills need.

``docker compose`` is used when a Docker daemon answers; otherwise Podman with
the project's own ``lab/containers.conf`` (through CONTAINERS_CONF, never by
editing system files) and ``podman-compose``. Both run the same
``docker-compose.yml``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from careflow_ha.errors import CommandFailed, EnvironmentProblem
from careflow_ha.settings import COMPOSE_PROJECT, PROJECT_DIR

CONTAINERS_CONF = PROJECT_DIR / "lab" / "containers.conf"
COMPOSE_FILE = PROJECT_DIR / "docker-compose.yml"


def container_name(node: str) -> str:
    """The fixed container name of a lab node (set in docker-compose.yml)."""
    return f"careflow-{node}"


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = 600,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise CommandFailed with the tail of its output."""
    try:
        proc = subprocess.run(
            list(argv),
            env=None if env is None else {**os.environ, **env},
            text=True,
            capture_output=capture,
            timeout=timeout,
            input=input_text,
            check=False,
        )
    except FileNotFoundError as exc:
        raise EnvironmentProblem(f"{argv[0]} is not installed; run ./careflow-ha (it installs it)") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(f"{' '.join(argv[:3])} did not finish within {timeout:.0f}s") from exc
    if check and proc.returncode != 0:
        tail = ((proc.stderr or "") + (proc.stdout or "")).strip().splitlines()[-8:]
        raise CommandFailed(f"{' '.join(argv[:4])} exited {proc.returncode}:\n  " + "\n  ".join(tail))
    return proc


@dataclass(frozen=True)
class Engine:
    """A container engine: its CLI, its compose command and the env they need."""

    name: str  # "docker" or "podman"
    cli: tuple[str, ...]
    compose_cmd: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)

    # -- compose -----------------------------------------------------------
    def compose(self, *args: str, env: Mapping[str, str] | None = None, **kw) -> subprocess.CompletedProcess[str]:
        argv = [*self.compose_cmd, "-p", COMPOSE_PROJECT, "-f", str(COMPOSE_FILE), *args]
        return run(argv, env={**self.env, **(env or {})}, **kw)

    # -- single containers -------------------------------------------------
    def cmd(self, *args: str, **kw) -> subprocess.CompletedProcess[str]:
        return run([*self.cli, *args], env=dict(self.env), **kw)

    def exec(self, node: str, argv: Sequence[str], **kw) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside a node (as root), bypassing SSH and the network (``input_text`` goes to its stdin)."""
        interactive = ("-i",) if kw.get("input_text") is not None else ()
        return self.cmd("exec", *interactive, container_name(node), *argv, **kw)

    def kill(self, node: str, signal: str = "KILL") -> None:
        self.cmd("kill", "--signal", signal, container_name(node))

    def start(self, node: str) -> None:
        self.cmd("start", container_name(node))

    def stop(self, node: str, timeout_s: int = 10) -> None:
        self.cmd("stop", "-t", str(timeout_s), container_name(node))

    def pause(self, node: str) -> None:
        self.cmd("pause", container_name(node))

    def unpause(self, node: str) -> None:
        self.cmd("unpause", container_name(node))

    def pid(self, node: str) -> int:
        """Host PID of the node's init, for ``nsenter -t PID -n`` (network faults)."""
        out = self.cmd("inspect", "--format", "{{.State.Pid}}", container_name(node)).stdout.strip()
        return int(out)

    def state(self, node: str) -> str:
        """'running', 'exited', 'paused', ... or 'absent'."""
        proc = self.cmd("inspect", "--format", "{{.State.Status}}", container_name(node), check=False)
        return proc.stdout.strip() if proc.returncode == 0 else "absent"

    def project_containers(self) -> list[str]:
        """Names of all containers (any state) labelled with our compose project."""
        proc = self.cmd(
            "ps", "-a", "--filter", f"label=com.docker.compose.project={COMPOSE_PROJECT}", "--format", "{{.Names}}"
        )
        return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


def _docker_daemon_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _podman_compose() -> tuple[str, ...] | None:
    # Prefer the podman-compose installed next to this interpreter (.venv).
    beside = Path(sys.executable).parent / "podman-compose"
    if beside.exists():
        return (str(beside),)
    found = shutil.which("podman-compose")
    return (found,) if found else None


def detect_engine(prefer: str | None = None) -> Engine:
    """Pick the engine: ``prefer`` ('docker'/'podman') or Docker if its daemon answers, else Podman."""
    if prefer not in (None, "docker", "podman"):
        raise EnvironmentProblem(f"unknown engine {prefer!r}; use CAREFLOW_ENGINE=docker or podman")
    if prefer in (None, "docker") and _docker_daemon_answers():
        return Engine("docker", ("docker",), ("docker", "compose"))
    if prefer == "docker":
        raise EnvironmentProblem("CAREFLOW_ENGINE=docker but no Docker daemon answers; start dockerd or unset it")
    if shutil.which("podman"):
        compose = _podman_compose()
        if compose is None:
            raise EnvironmentProblem("podman-compose is missing; run ./careflow-ha (it installs it into .venv)")
        env = {"CONTAINERS_CONF": str(CONTAINERS_CONF)}
        return Engine("podman", ("podman",), (*compose, "--podman-path", "podman"), env)
    raise EnvironmentProblem(
        "no container engine: no Docker daemon answers and podman is not installed. "
        "Run ./careflow-ha as root (it installs podman), or start Docker."
    )
