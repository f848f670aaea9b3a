"""Provisioning: one inventory, two tools that must give the same hosts (docs/pyinfra.md).

The interface is one function per tool with the same contract:
``run(settings, progress, inventory, extra_vars) -> ProvisionResult``. It
raises ``UsageError`` for a bad inventory before any host is touched and
``CommandFailed`` (naming the log) when a host fails; the result counts
changes so that a second run can assert ``changed == 0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from careflow_ha.errors import UsageError
from careflow_ha.provision.ansible import run_playbook
from careflow_ha.provision.base import LAB_INVENTORY, Progress, ProvisionResult
from careflow_ha.provision.pyinfra import run_pyinfra
from careflow_ha.settings import Settings


class Provisioner(Protocol):
    """One provisioning tool (see the module docstring for the contract)."""

    def __call__(
        self, settings: Settings, progress: Progress, inventory: Path = ..., extra_vars: Mapping[str, str] | None = ...
    ) -> ProvisionResult: ...


#: Both read the same inventory and templates and must give the same hosts.
PROVISIONERS: Mapping[str, Provisioner] = {"ansible": run_playbook, "pyinfra": run_pyinfra}


def check_provisioner(name: str) -> Provisioner:
    """The tool called ``name``, or a UsageError listing the valid names."""
    try:
        return PROVISIONERS[name]
    except KeyError:
        raise UsageError(f"unknown provisioner {name!r}; use one of {', '.join(PROVISIONERS)}") from None


def provision(
    settings: Settings,
    progress: Progress,
    inventory: Path = LAB_INVENTORY,
    extra_vars: dict[str, str] | None = None,
    provisioner: str = "ansible",
) -> ProvisionResult:
    """Provision the inventory's hosts with the chosen tool; the result counts changes either way."""
    return check_provisioner(provisioner)(settings, progress, inventory, extra_vars)


__all__ = ["LAB_INVENTORY", "PROVISIONERS", "ProvisionResult", "Provisioner", "check_provisioner", "provision"]
