"""The lab's node image: a bare Debian 12 host with systemd, sshd, python3, sudo.

Built from ``lab/Containerfile`` on top of ``debian:bookworm-slim`` where a
registry answers, or on a local debootstrap import where none does (these
machines). The image carries a label with the hash of its definition, so a
second ``up`` finds it current and does not rebuild.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from careflow_ha.errors import CommandFailed, EnvironmentProblem
from careflow_ha.lab.engine import Engine, run
from careflow_ha.settings import PROJECT_DIR

CONTAINERFILE = PROJECT_DIR / "lab" / "Containerfile"
NODE_IMAGE = "localhost/careflow/node:bookworm"
REGISTRY_BASE = "docker.io/library/debian:bookworm-slim"
LOCAL_BASE = "localhost/careflow/debian:bookworm"
DEBOOTSTRAP_PACKAGES = "systemd,systemd-sysv,dbus,openssh-server,python3,sudo,iproute2,procps,ca-certificates"
DEFINITION_LABEL = "careflow.definition"

Progress = Callable[[str], None]


def definition_hash(base: str) -> str:
    """What the node image is built from: the Containerfile and the base's name."""
    digest = hashlib.sha256(CONTAINERFILE.read_bytes())
    digest.update(base.encode())
    return digest.hexdigest()[:16]


def apt_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine already uses (never a hard-coded host).

    Reads deb822 ``*.sources`` files first, then one-line ``sources.list``.
    """
    candidates: list[str] = []
    for path in sorted((sources_dir / "sources.list.d").glob("*.sources")):
        text = path.read_text(errors="replace")
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and "bookworm" in suites.group(1).split():
                candidates.append(uris.group(1))
    legacy = sources_dir / "sources.list"
    if legacy.exists():
        for line in legacy.read_text(errors="replace").splitlines():
            match = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s", line)
            if match:
                candidates.append(match.group(1))
    for uri in candidates:
        if uri.startswith("http"):
            return uri.rstrip("/")
    raise EnvironmentProblem(
        "no Debian bookworm mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; "
        "add one (URIs: http://<mirror>/debian, Suites: bookworm)"
    )


def _image_label(engine: Engine, image: str) -> str | None:
    proc = engine.cmd(
        "image", "inspect", "--format", "{{ index .Config.Labels \"" + DEFINITION_LABEL + "\" }}", image, check=False
    )
    if proc.returncode != 0:
        return None
    return proc.stdout.strip()


def _image_exists(engine: Engine, image: str) -> bool:
    return engine.cmd("image", "inspect", image, check=False).returncode == 0


def _choose_base(engine: Engine, progress: Progress) -> str:
    """The registry base if it can be had, else the local debootstrap base."""
    if _image_exists(engine, REGISTRY_BASE):
        return REGISTRY_BASE
    if _image_exists(engine, LOCAL_BASE):
        return LOCAL_BASE
    progress(f"image: trying to pull {REGISTRY_BASE}")
    if engine.cmd("pull", "-q", REGISTRY_BASE, check=False, timeout=300).returncode == 0:
        return REGISTRY_BASE
    progress("image: no registry reachable; building a local Debian 12 base with debootstrap (about a minute)")
    build_local_base(engine, progress)
    return LOCAL_BASE


def build_local_base(engine: Engine, progress: Progress) -> None:
    """debootstrap a minimal bookworm and import it as ``LOCAL_BASE``."""
    if not shutil.which("debootstrap"):
        raise EnvironmentProblem("debootstrap is not installed; run ./careflow-ha as root (it installs it)")
    mirror = apt_mirror()
    with tempfile.TemporaryDirectory(prefix="careflow-rootfs-") as rootfs:
        progress(f"image: debootstrap bookworm from {mirror}")
        run(
            ["debootstrap", "--variant=minbase", f"--include={DEBOOTSTRAP_PACKAGES}", "bookworm", rootfs, mirror],
            timeout=1200,
        )
        # Keep the image small: downloaded .debs are not needed on a node.
        for deb in (Path(rootfs) / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        progress("image: importing the root filesystem")
        # Stream tar into the engine: the rootfs never exists twice on disk or in memory.
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        try:
            imported = subprocess.run(
                [*engine.cli, "import", "-", LOCAL_BASE],
                stdin=tar.stdout,
                env={**os.environ, **engine.env},
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
        finally:
            if tar.stdout:
                tar.stdout.close()
            tar.wait(timeout=600)
        if imported.returncode != 0 or tar.returncode != 0:
            raise CommandFailed(f"importing the debootstrap base failed: {imported.stderr.strip()[-400:]}")


def ensure_node_image(engine: Engine, progress: Progress) -> bool:
    """Build the node image unless it is current. Returns True if it was built."""
    base = _choose_base(engine, progress)
    want = definition_hash(base)
    if _image_label(engine, NODE_IMAGE) == want:
        progress("image: node image is current, not rebuilding")
        return False
    progress(f"image: building {NODE_IMAGE} from {base}")
    engine.cmd(
        "build",
        "-t",
        NODE_IMAGE,
        "--label",
        f"{DEFINITION_LABEL}={want}",
        "--build-arg",
        f"BASE_IMAGE={base}",
        "-f",
        str(CONTAINERFILE),
        str(CONTAINERFILE.parent),
        timeout=1800,
    )
    return True
