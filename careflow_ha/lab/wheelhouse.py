"""The wheelhouse of Python packages the database nodes need (Patroni, psycopg).

Built on the control host and copied to the nodes, which then install with
``pip --no-index``: nodes need no PyPI access, which is also how a hospital
network with no internet gets its install.

The wheels target the nodes' Python (Debian 12: CPython 3.11, x86_64), not the
control host's, so the build works from any control Python.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

from careflow_ha.lab.engine import run

#: What the patroni role installs (keep in step with roles/patroni/defaults).
NODE_PACKAGES = ("patroni[etcd3]==4.1.5", "psycopg[binary]==3.3.9")
#: Dependencies published only as source: built into wheels here first.
SOURCE_ONLY = ("ydiff>=1.2.0,!=1.4.0,!=1.4.1,<1.5", "python-etcd>=0.4.3,<0.5")
NODE_PYTHON = "3.11"
NODE_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")


def _stamp(directory: Path) -> Path:
    digest = hashlib.sha256("\n".join(NODE_PACKAGES + SOURCE_ONLY + NODE_PLATFORMS).encode()).hexdigest()[:12]
    return directory / f".complete-{digest}"


def ensure_wheelhouse(directory: Path, progress: Callable[[str], None]) -> Path:
    """Build the wheelhouse unless a complete one for the same packages exists."""
    if _stamp(directory).exists():
        return directory
    progress(f"wheelhouse: building Patroni and psycopg wheels for the nodes into {directory}")
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob(".complete-*"):
        old.unlink()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "wheel", "--no-deps", "-w", str(directory), *SOURCE_ONLY], timeout=600)
    platform_args = [arg for p in NODE_PLATFORMS for arg in ("--platform", p)]
    run(
        [
            *pip, "download", "-d", str(directory), "--find-links", str(directory), "--only-binary=:all:",
            "--python-version", NODE_PYTHON, "--implementation", "cp", "--abi", f"cp{NODE_PYTHON.replace('.', '')}",
            *platform_args, *NODE_PACKAGES,
        ],
        timeout=600,
    )
    _stamp(directory).touch()
    return directory
