"""The wheelhouse of Python packages the database nodes need (Patroni, psycopg).

Built on the control host and copied to the nodes, which then install with
``pip --no-index``: nodes need no PyPI access, which is also how a hospital
network with no internet gets its install.

The wheels target the nodes' Python (Debian 12: CPython 3.11, x86_64), not the
control host's, so the build works from any control Python.

The nodes get the wheels as one archive, ``wheels.tar``, unpacked there: a
provisioner copies one file instead of twenty (Ansible's directory copy cost
18 s a node, and a run that changed nothing still stat'ed every wheel).
"""

from __future__ import annotations

import hashlib
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

from careflow_ha.lab.engine import run

#: What the patroni role installs (keep in step with roles/patroni/defaults).
NODE_PACKAGES = ("patroni[etcd3]==4.1.5", "psycopg[binary]==3.3.9")
#: Dependencies published only as source: built into wheels here first.
SOURCE_ONLY = ("ydiff>=1.2.0,!=1.4.0,!=1.4.1,<1.5", "python-etcd>=0.4.3,<0.5")
NODE_PYTHON = "3.11"
NODE_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")


#: The archive's name in the wheelhouse (group_vars' careflow_wheelhouse_archive names the same file).
ARCHIVE_NAME = "wheels.tar"


def archive_path(directory: Path) -> Path:
    return directory / ARCHIVE_NAME


def _stamp(directory: Path) -> Path:
    digest = hashlib.sha256("\n".join(NODE_PACKAGES + SOURCE_ONLY + NODE_PLATFORMS).encode()).hexdigest()[:12]
    return directory / f".complete-{digest}"


def ensure_wheelhouse(directory: Path, progress: Callable[[str], None]) -> Path:
    """Build the wheelhouse unless a complete one for the same packages exists."""
    if _stamp(directory).exists():
        if not archive_path(directory).exists():  # a wheelhouse built before the archive existed
            write_archive(directory)
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
    write_archive(directory)
    _stamp(directory).touch()
    return directory


def write_archive(directory: Path) -> Path:
    """Pack the wheels into ``wheels.tar``: sorted, with fixed owner, mode and time, so the same wheels
    always give the same bytes and a provisioning run with nothing new copies nothing."""
    target = archive_path(directory)
    partial = target.with_name(target.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.GNU_FORMAT) as tar:
        for wheel in sorted(directory.glob("*.whl")):
            info = tar.gettarinfo(str(wheel), arcname=wheel.name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o644
            info.mtime = 0
            with wheel.open("rb") as fh:
                tar.addfile(info, fh)
    partial.replace(target)  # never a half-written archive under the real name
    return target
