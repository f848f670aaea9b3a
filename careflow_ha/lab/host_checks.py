"""Control-host checks before the lab changes anything (root, free disk, free ports), each naming its fix."""

from __future__ import annotations

import errno
import os
import shutil
import socket
from collections.abc import Iterable
from pathlib import Path

from careflow_ha.errors import EnvironmentProblem, PortInUse
from careflow_ha.settings import Settings

#: Node image, four hosts with PostgreSQL, packages and a wheelhouse.
MIN_FREE_GIB = 6.0

#: The flag that overrides a port, where one exists (others: .env only).
PORT_FLAGS = {
    "CAREFLOW_RW_PORT": "--rw-port",
    "CAREFLOW_RO_PORT": "--ro-port",
    "CAREFLOW_STATS_PORT": "--stats-port",
}


def require_root() -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem(
            "the lab needs root (rootful containers, package installs); re-run as root, e.g. sudo ./careflow-ha up"
        )


def require_disk(paths: Iterable[Path], min_free_gib: float = MIN_FREE_GIB) -> None:
    for path in paths:
        probe = path
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free / 2**30
        if free < min_free_gib:
            raise EnvironmentProblem(
                f"only {free:.1f} GiB free under {path}; the lab needs {min_free_gib:.0f} GiB. "
                "Free some space (e.g. `podman system prune`) and retry"
            )


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def require_free_ports(settings: Settings, held_by_lab: Iterable[str] = ()) -> None:
    """Every published port must be free, except those ``held_by_lab`` (port keys of our own running hosts:
    a lab that gains a host, such as backup1 after a pull, keeps its running hosts and their ports)."""
    held = set(held_by_lab)
    for key, port in settings.ports.items():
        if key not in held and not port_is_free(settings.host, port):
            how = f"set {key}=<free port> in .env"
            if key in PORT_FLAGS:
                how += f" or pass {PORT_FLAGS[key]} <free port>"
            raise PortInUse(f"port {settings.host}:{port} ({key}) is already in use by another program; {how}")
