"""Run the component deploys against an inventory, in site.yml's order (inside the child process)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType

from pyinfra.api import BaseStateCallback, Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operations import run_ops

from careflow_ha.errors import UsageError
from careflow_ha.provision.certificates import check_certificates
from careflow_ha.provision.checks import check_inventory
from careflow_ha.provision.inventory import ClusterInventory, Play, load_inventory, site_plays
from careflow_ha.pyinfra_deploys._data import INVENTORY_KEY
from careflow_ha.pyinfra_deploys.common import common
from careflow_ha.pyinfra_deploys.etcd import etcd
from careflow_ha.pyinfra_deploys.exporters import node_exporter, postgres_exporter
from careflow_ha.pyinfra_deploys.haproxy import haproxy
from careflow_ha.pyinfra_deploys.keepalived import keepalived
from careflow_ha.pyinfra_deploys.patroni import patroni
from careflow_ha.pyinfra_deploys.pgbackrest import pgbackrest
from careflow_ha.pyinfra_deploys.pgbouncer import pgbouncer
from careflow_ha.pyinfra_deploys.postgresql import postgresql
from careflow_ha.pyinfra_deploys.prometheus import prometheus
from careflow_ha.pyinfra_deploys.tls import tls
from careflow_ha.settings import SECRET_KEYS

#: Magic variables that stay in the ClusterInventory, not copied into pyinfra host data.
_NOT_HOST_DATA = frozenset({"hostvars", "groups", "lookup", "omit"})


@dataclass
class DeployOutcome:
    """What a pyinfra run did, per host, accumulated play by play (like Ansible's recap)."""

    changed_ops: dict[str, list[str]] = field(default_factory=dict)
    failed: dict[str, list[str]] = field(default_factory=dict)
    unreachable: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.unreachable

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


class _Progress(BaseStateCallback):
    """One line per operation on stdout (the parent shows it and logs it)."""

    @staticmethod
    def operation_start(state: State, op_hash: str) -> None:
        names = sorted(state.get_op_meta(op_hash).names)
        print(f"TASK [{names[0] if names else op_hash}]", flush=True)

    @staticmethod
    def host_connect_error(state: State, host, error) -> None:  # noqa: ANN001
        print(f"unreachable: {host.name}: {error}", flush=True)

    @staticmethod
    def operation_host_error(state: State, host, op_hash: str, retry_count: int = 0, max_retries: int = 0) -> None:  # noqa: ANN001
        names = sorted(state.get_op_meta(op_hash).names)
        print(f"failed: {host.name}: {names[0] if names else op_hash}", flush=True)


#: The deploy that does each role's work; site.yml says which plays run them, in which order.
DEPLOYS: Mapping[str, Callable[[], None]] = MappingProxyType(
    {
        "common": common, "etcd": etcd, "postgresql": postgresql, "patroni": patroni, "haproxy": haproxy,
        "keepalived": keepalived, "pgbouncer": pgbouncer, "tls": tls, "prometheus": prometheus,
        "node_exporter": node_exporter, "postgres_exporter": postgres_exporter, "pgbackrest": pgbackrest,
    }
)
#: The play site.yml runs on localhost first; here ``check_inventory`` does its work (before any host).
PREFLIGHT_ROLE = "preflight"

Plays = tuple[tuple[tuple[str, ...], tuple[Callable[[], None], ...]], ...]


def plays_from_site(plays: tuple[Play, ...] | None = None) -> Plays:
    """site.yml's plays as (groups, deploys), read from the playbook so the two cannot drift.

    Each play gets its own pyinfra State, so every host in a play runs the
    same operation sequence (pyinfra's API mode aligns operations across hosts
    by position) and a play starts only when the previous one finished
    everywhere, as in Ansible.
    """
    out = []
    for play in site_plays() if plays is None else plays:
        if play.roles == (PREFLIGHT_ROLE,):
            continue
        missing = [r for r in play.roles if r not in DEPLOYS]
        if missing:
            raise UsageError(
                f"site.yml play {play.name!r} applies role {missing[0]}, which has no pyinfra deploy; "
                "add one in careflow_ha/pyinfra_deploys/ or provision with --provisioner ansible"
            )
        out.append((play.groups, tuple(DEPLOYS[r] for r in play.roles)))
    return tuple(out)


def pyinfra_inventory(inv: ClusterInventory, hosts: list[str], ssh_config: Path | None) -> Inventory:
    """The Ansible inventory as a pyinfra Inventory: same hosts, groups and variables."""
    names = []
    for host in hosts:
        data = {k: v for k, v in inv.hostvars[host].items() if k not in _NOT_HOST_DATA}
        data.update(inv.connector_data(host))
        if ssh_config is not None:
            # The lab's generated ssh_config: 127.0.0.1 ports, the lab key, throwaway host keys.
            data.update(ssh_config_file=str(ssh_config), ssh_known_hosts_file="/dev/null",
                        ssh_strict_host_key_checking="no")
        names.append((host, data))
    groups = {
        g: ([h for h in members if h in hosts], {})
        for g, members in inv.groups.items()
        if g not in ("all", "ungrouped") and any(h in hosts for h in members)
    }
    return Inventory((names, {INVENTORY_KEY: inv}), **groups)


def _play_hosts(inv: ClusterInventory, groups: tuple[str, ...]) -> list[str]:
    wanted = {h for g in groups for h in inv.group(g)}
    return [h for h in inv.hosts if h in wanted]


def run_play(
    inv: ClusterInventory, hosts: list[str], deploys: tuple[Callable[[], None], ...],
    ssh_config: Path | None, dry_run: bool, outcome: DeployOutcome,
) -> None:
    """One play: connect to ``hosts``, add the deploys, run (or only prepare); record into ``outcome``."""
    state = State(pyinfra_inventory(inv, hosts, ssh_config), Config(), check_for_changes=dry_run)
    state.add_callback_handler(_Progress())
    connect_all(state)
    outcome.unreachable.extend(h.name for h in state.inventory if not h.connected and h.name not in outcome.unreachable)
    if outcome.unreachable:
        return
    for fn in deploys:
        add_deploy(state, fn)
    if not dry_run:
        try:
            run_ops(state)
        except PyinfraError as exc:  # a check that never passed (no leader, unhealthy etcd)
            outcome.failed.setdefault("cluster", []).append(str(exc))
    for host in state.inventory:
        changed = outcome.changed_ops.setdefault(host.name, [])
        for op_hash in host.op_hash_order:
            if op_hash not in state.ops[host]:
                continue  # a _run_once operation that ran on another host
            name = sorted(state.get_op_meta(op_hash).names)[0]
            op_data = state.get_op_data_for_host(host, op_hash)
            meta = op_data.operation_meta
            if dry_run:
                if meta.will_change and not op_data.global_arguments.get("_if"):
                    changed.append(name)
                continue
            if not meta.is_complete():
                continue
            if meta.did_error():
                outcome.failed.setdefault(host.name, []).append(name)
            elif meta.did_change():
                changed.append(name)
    for host in state.failed_hosts:
        outcome.failed.setdefault(host.name, [])


def deploy_cluster(
    inventory_path: Path, extra_vars: dict[str, str], ssh_config: Path | None, dry_run: bool = False
) -> DeployOutcome:
    """The inventory and certificate checks, then site.yml's plays (tls, common, etcd, postgresql + patroni,
    common + haproxy + pgbouncer + keepalived, keepalived for the leader VIP, common + prometheus,
    node_exporter, postgres_exporter).

    ``dry_run`` only prepares: ``changed_ops`` lists what would change (restarts
    and reloads, which depend on earlier changes, are left out).
    """
    secrets = {key: os.environ.get(key, "") for key in SECRET_KEYS}
    inv = load_inventory(inventory_path, secrets, extra_vars)
    check_inventory(inv)  # before any host is touched
    check_certificates(inv)  # the parent made the lab CA's; a user's own are only checked
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Lab nodes get new host keys on every rebuild (ssh_config pins none): not worth a warning.
    logging.getLogger("pyinfra").addFilter(lambda rec: "found in known_hosts" not in rec.getMessage())
    started = time.monotonic()
    outcome = DeployOutcome()
    for groups, deploys in plays_from_site():
        print(f"PLAY [{', '.join(groups)}: {', '.join(d.deploy_name for d in deploys)}]", flush=True)
        hosts = _play_hosts(inv, groups)
        if not hosts:  # Ansible's "skipping: no hosts matched" (e.g. an inventory without a monitoring group)
            continue
        run_play(inv, hosts, deploys, ssh_config, dry_run, outcome)
        if not outcome.ok:
            break
    return DeployOutcome(outcome.changed_ops, outcome.failed, outcome.unreachable, time.monotonic() - started)


__all__ = ["DEPLOYS", "DeployOutcome", "deploy_cluster", "plays_from_site", "pyinfra_inventory"]
