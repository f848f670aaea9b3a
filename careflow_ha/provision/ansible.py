"""Run the ``site.yml`` playbook against an inventory, with secrets from ``.env``.

Secrets reach Ansible only through its environment (group_vars read them
with ``lookup('env')``): never on a command line, never in a file Ansible
writes. The full log goes to ``.lab/logs/``; the terminal shows one line per
play and task, and the recap's totals are returned so that callers (and the
idempotency test) can assert ``changed == 0``.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from careflow_ha.errors import CommandFailed
from careflow_ha.lab.ssh import ssh_config_path
from careflow_ha.provision.base import LAB_INVENTORY, ProvisionResult, start_run, stream_to_log
from careflow_ha.provision.inventory import PLAYBOOK
from careflow_ha.settings import PROJECT_DIR, Settings

_RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)"
)


def parse_recap(lines: list[str]) -> dict[str, dict[str, int]]:
    """Per-host counters from the PLAY RECAP lines of ansible-playbook's output."""
    out: dict[str, dict[str, int]] = {}
    in_recap = False
    for line in lines:
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        if in_recap:
            match = _RECAP.match(line.strip())
            if match:
                out[match["host"]] = {k: int(v) for k, v in match.groupdict().items() if k != "host"}
    return out


def ansible_env(settings: Settings, inventory: Path) -> dict[str, str]:
    env = {
        "ANSIBLE_CONFIG": str(PROJECT_DIR / "ansible.cfg"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "PYTHONUNBUFFERED": "1",
        **settings.secrets,
    }
    if inventory.resolve() == LAB_INVENTORY.resolve():
        # Lab hosts live behind published ports on 127.0.0.1 (see sshaccess).
        env["ANSIBLE_SSH_ARGS"] = f"-F {ssh_config_path(settings)}"
    return env


def run_playbook(
    settings: Settings,
    progress: Callable[[str], None],
    inventory: Path = LAB_INVENTORY,
    extra_vars: dict[str, str] | None = None,
    check_only: bool = False,
    limit: str | None = None,
    playbook: Path = PLAYBOOK,
) -> ProvisionResult:
    """Run ``playbook`` (site.yml); raise CommandFailed (with the log's path) if any host failed."""
    tool = "provision-ansible" if playbook == PLAYBOOK else f"{playbook.stem}-ansible"
    log_file = start_run(settings, inventory, tool, progress, extra_vars, lookups_checked_later=True)
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(playbook)]
    for key, value in (extra_vars or {}).items():
        argv += ["-e", f"{key}={value}"]
    if check_only:
        argv.append("--check")
    if limit:
        argv += ["--limit", limit]
    started = time.monotonic()
    rc, lines = stream_to_log(
        argv,
        ansible_env(settings, inventory),
        log_file,
        progress,
        is_failure=lambda line: line.startswith(("fatal:", "failed:")) or "FAILED!" in line,
    )
    recap = parse_recap(lines)
    result = ProvisionResult(
        changed=sum(h["changed"] for h in recap.values()),
        failed=sum(h["failed"] for h in recap.values()),
        unreachable=sum(h["unreachable"] for h in recap.values()),
        per_host_changed={h: v["changed"] for h, v in recap.items()},
        seconds=time.monotonic() - started,
        log_file=log_file,
    )
    if rc != 0 or result.failed or result.unreachable:
        messages = [ln for ln in lines if "msg" in ln or ln.startswith("fatal")][-4:]
        raise CommandFailed(
            f"{'provisioning' if playbook == PLAYBOOK else playbook.name} failed (ansible-playbook exit {rc}); "
            f"see {log_file}\n  " + "\n  ".join(messages)
        )
    progress(f"provision: done in {result.seconds:.0f}s, changed={result.changed}")
    return result


def apply_haproxy_timing(settings: Settings, preset: str, progress: Callable[[str], None]) -> ProvisionResult:
    """Re-render HAProxy's check timing for ``preset`` on the balancers only (Patroni's half is dynamic
    config, switched through its REST API). Run ``provision`` to return to the inventory's preset."""
    return run_playbook(
        settings, progress, extra_vars={"careflow_timing_preset": preset}, limit="balancers:localhost"
    )
