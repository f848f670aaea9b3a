"""What both provisioners share: the lab inventory, the result they report, and how a run starts and streams.

A run starts the same way whichever tool follows (``start_run``): the
inventory is read and checked in Python (one check for both tools: exit 2
and one line naming the fix, before any host is contacted), the wheelhouse
is built, a log file is opened. Then the tool runs as a
child process whose output goes to that log, one progress line per play and
task (``stream_to_log``).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from careflow_ha.lab.wheelhouse import ensure_wheelhouse
from careflow_ha.provision.certificates import prepare_certificates
from careflow_ha.provision.checks import check_inventory_file
from careflow_ha.settings import PROJECT_DIR, Settings

LAB_INVENTORY = PROJECT_DIR / "inventory" / "lab.yml"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ProvisionResult:
    """What a run changed: totals and per host (from Ansible's PLAY RECAP or pyinfra's outcome)."""

    changed: int
    failed: int
    unreachable: int
    per_host_changed: dict[str, int]
    seconds: float
    log_file: Path


def start_run(
    settings: Settings,
    inventory: Path,
    tool: str,
    progress: Progress,
    extra_vars: Mapping[str, str] | None = None,
    lookups_checked_later: bool = False,
) -> Path:
    """What every provisioner does first: check the inventory and the certificates (making the lab CA's on first
    use), build the wheelhouse, open a log.

    The check comes first so that a bad inventory costs no wheel build.
    ``lookups_checked_later``: the tool can answer lookups the Python reader
    cannot (Ansible: vaults, files), and its preflight role checks those.
    Returns the log file's path (``.lab/logs/<tool>-<timestamp>.log``).
    """
    inv = check_inventory_file(inventory, settings.secrets, extra_vars, lookups_checked_later=lookups_checked_later)
    # The lab CA (created on the first run, so `up` makes it) or the user's own certificates, checked either way.
    prepare_certificates(inv, progress)
    ensure_wheelhouse(settings.state_dir / "wheelhouse", progress)
    log_dir = settings.state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"{tool}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    shown = inventory.relative_to(PROJECT_DIR) if inventory.is_relative_to(PROJECT_DIR) else inventory
    progress(f"provision: {tool} -i {shown} (log: {log_file.relative_to(settings.project_dir)})")
    return log_file


def stream_to_log(
    argv: list[str],
    env: dict[str, str],
    log_file: Path,
    progress: Progress,
    is_failure: Callable[[str], bool],
) -> tuple[int, list[str]]:
    """Run a provisioner, writing all its output to ``log_file`` and one progress line per play,
    task and failure. Returns the exit code and the output lines (for the recap)."""
    lines: list[str] = []
    with log_file.open("w", encoding="utf-8") as log, subprocess.Popen(
        argv,
        cwd=PROJECT_DIR,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            lines.append(line.rstrip("\n"))
            if line.startswith(("PLAY [", "TASK [")):
                progress("provision: " + line.strip(" *\n").replace("TASK ", "").replace("PLAY ", "play "))
            elif is_failure(line):
                progress("provision: " + line.strip()[:300])
        return proc.wait(), lines
