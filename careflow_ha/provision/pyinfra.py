"""Run the pyinfra deploys from the CLI or tests, like ``provision.ansible.run_playbook`` runs Ansible.

This is the parent side: it runs in the CLI's process and starts
``python -m careflow_ha.pyinfra_deploys``, the only code that runs inside
pyinfra's process.

The deploys run in a child process (pyinfra patches the standard library for
gevent). Secrets reach it only through its environment. The full output goes
to ``.lab/logs/``; the terminal gets one line per play and operation; the
result counts changed operations per host so a second run can assert zero.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from careflow_ha.errors import CommandFailed, UsageError
from careflow_ha.lab.ssh import ssh_config_path
from careflow_ha.provision.base import LAB_INVENTORY, ProvisionResult, start_run, stream_to_log
from careflow_ha.settings import Settings


@dataclass(frozen=True)
class PyinfraResult(ProvisionResult):
    """ProvisionResult plus the names of the operations that changed each host."""

    changed_ops: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def _argv(inventory: Path, extra_vars: Mapping[str, str], ssh_config: Path | None, result: Path, dry_run: bool):
    argv = [sys.executable, "-m", "careflow_ha.pyinfra_deploys", "-i", str(inventory), "--result", str(result)]
    for key, value in extra_vars.items():
        argv += ["-e", f"{key}={value}"]
    if ssh_config is not None:
        argv += ["--ssh-config", str(ssh_config)]
    if dry_run:
        argv.append("--dry-run")
    return argv


def run_pyinfra(
    settings: Settings,
    progress: Callable[[str], None],
    inventory: Path = LAB_INVENTORY,
    extra_vars: Mapping[str, str] | None = None,
    check_only: bool = False,
) -> PyinfraResult:
    """Provision ``inventory`` with pyinfra; raise UsageError (bad inventory) or CommandFailed (a host failed).

    ``check_only`` changes nothing and reports which operations would change.
    """
    log_file = start_run(settings, inventory, "provision-pyinfra", progress, extra_vars)
    lab = inventory.resolve() == LAB_INVENTORY.resolve()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="careflow-pyinfra-") as tmp:
        result_file = Path(tmp) / "result.json"
        argv = _argv(inventory, extra_vars or {}, ssh_config_path(settings) if lab else None, result_file, check_only)
        rc, lines = stream_to_log(
            argv,
            {**settings.secrets, "PYTHONUNBUFFERED": "1"},
            log_file,
            progress,
            is_failure=lambda line: line.startswith(("failed:", "unreachable:", "error:")),
        )
        if rc == UsageError.exit_code:
            message = next((ln for ln in reversed(lines) if ln.startswith("error: ")), "error: bad inventory")
            raise UsageError(message.removeprefix("error: "))
        if not result_file.exists():
            raise CommandFailed(f"pyinfra provisioning crashed (exit {rc}); see {log_file}")
        outcome = json.loads(result_file.read_text())
    changed_ops = {h: tuple(ops) for h, ops in outcome["changed_ops"].items()}
    result = PyinfraResult(
        changed=sum(len(ops) for ops in changed_ops.values()),
        failed=sum(max(1, len(ops)) for ops in outcome["failed"].values()),
        unreachable=len(outcome["unreachable"]),
        per_host_changed={h: len(ops) for h, ops in changed_ops.items()},
        seconds=time.monotonic() - started,
        log_file=log_file,
        changed_ops=changed_ops,
    )
    if rc != 0 or result.failed or result.unreachable:
        what = "; ".join(f"{h}: {', '.join(ops) or 'host failed'}" for h, ops in outcome["failed"].items())
        if outcome["unreachable"]:
            what = f"unreachable: {', '.join(outcome['unreachable'])}" + (f"; {what}" if what else "")
        raise CommandFailed(f"pyinfra provisioning failed ({what or f'exit {rc}'}); see {log_file}")
    verb = "would change" if check_only else "changed"
    progress(f"provision: done in {result.seconds:.0f}s, {verb}={result.changed}")
    return result
