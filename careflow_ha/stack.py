"""The whole stack in one call: what ``careflow-ha up`` and the test suite both use."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from careflow_ha.cluster.health import ClusterStatus, wait_healthy
from careflow_ha.lab import hosts
from careflow_ha.lab.engine import Engine
from careflow_ha.lab.vip import wait_single_holder
from careflow_ha.provision import LAB_INVENTORY, ProvisionResult, check_provisioner, provision
from careflow_ha.provision.checks import check_inventory_file
from careflow_ha.settings import LB_NODES, Settings

Progress = Callable[[str], None]


def load_demo_data(settings: Settings, progress: Progress, scheme: str | None = None) -> None:
    """The EMR schema (lab_results in ``scheme``, the inventory's careflow_partition_scheme; None: as it is)
    and a small demo data set, through HAProxy port 5000, in the database provisioning prepared. Idempotent."""
    from careflow_ha.data.db import check_prepared, migrate
    from careflow_ha.data.loader import load_demo

    # Provisioning prepared it on the primary (the superuser has no TCP login); a stale mark stops here.
    progress(f"data: database careflow prepared by provisioning ({check_prepared(settings.dsn('rw', 'admin'))})")
    applied = migrate(settings.dsn("rw", "app"), scheme=scheme, progress=lambda line: progress(f"data: {line}"))
    progress(f"data: {len(applied)} migrations applied" if applied else "data: schema is current")
    summary = load_demo(settings.dsn("rw", "app"), progress=True)
    if summary.rows:
        progress(f"data: demo data set loaded: {summary.rows:,} lab results in {summary.seconds:.0f}s")
    else:
        progress("data: demo data already loaded")


def bring_up(
    settings: Settings,
    engine: Engine,
    progress: Progress,
    inventory: Path = LAB_INVENTORY,
    extra_vars: dict[str, str] | None = None,
    data: bool = True,
    timeout_s: float = 300,
    provisioner: str = "ansible",
) -> tuple[ProvisionResult, ClusterStatus]:
    """Lab hosts (for the lab inventory) -> provisioning (Ansible or pyinfra) -> healthy cluster, VIP on one
    balancer -> demo data."""
    check_provisioner(provisioner)  # an unknown name or a bad inventory fails before the lab is touched
    inv = check_inventory_file(inventory, settings.secrets, extra_vars, lookups_checked_later=provisioner == "ansible")
    if inventory.resolve() == LAB_INVENTORY.resolve():
        hosts.lab_up(settings, engine, progress)
    result = provision(settings, progress, inventory, extra_vars, provisioner)
    status = wait_healthy(settings, progress, timeout_s)
    if settings.vip is not None and inventory.resolve() == LAB_INVENTORY.resolve():
        # Clients (and the demo data load below) go through the VIP: one balancer must hold it.
        wait_single_holder(engine, LB_NODES, settings.vip.address, timeout_s, progress)
    if data:
        # The checked inventory's value: the same one `provision` validated (exit 2 on a bad one, before any host).
        load_demo_data(settings, progress, inv.hostvars[inv.hosts[0]]["careflow_partition_scheme"])
    return result, status
