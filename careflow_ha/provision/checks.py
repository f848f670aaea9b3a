"""The inventory check, in Python, for both provisioners: run before Ansible or pyinfra starts.

``careflow-ha provision`` and ``up`` run it first whichever tool follows, so
a bad inventory gives the same answer on both paths: exit 2 and one line that
names the fix, before any host is contacted. The pyinfra child runs it again
(with the wheelhouse) in case it is started by hand.

The checks mirror ``roles/preflight/tasks/main.yml`` (same wording where it
matters). That role stays: it is the guard for users who run
``ansible-playbook site.yml`` directly. Messages name variables, never the
value of a secret.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from careflow_ha.errors import UsageError
from careflow_ha.provision.inventory import ClusterInventory, UnsupportedLookup, load_inventory
from careflow_ha.settings import check_partition_scheme

#: careflow_*_port variables that must all differ.
PORT_VARS: tuple[str, ...] = (
    "careflow_pg_port",
    "careflow_patroni_api_port",
    "careflow_etcd_client_port",
    "careflow_etcd_peer_port",
    "careflow_etcd_metrics_port",
    "careflow_haproxy_rw_port",
    "careflow_haproxy_ro_port",
    "careflow_haproxy_stats_port",
    "careflow_haproxy_metrics_port",
    "careflow_node_exporter_port",
    "careflow_postgres_exporter_port",
)
#: Groups whose hosts need a careflow_node_ip in the cluster network (the last two are optional); the
#: preflight role's preflight_host_groups lists the same (a unit test holds them together).
HOST_GROUPS: tuple[str, ...] = ("etcd_cluster", "postgres_cluster", "balancers", "monitoring", "backup_repository")
MIN_SECRET_LENGTH = 16
#: What a timing preset must define for Patroni (HAProxy's keys are checked by its role).
PRESET_KEYS: tuple[str, ...] = ("ttl", "loop_wait", "retry_timeout")


def _var(inv: ClusterInventory, host: str, name: str) -> Any:
    try:
        return inv.hostvars[host][name]
    except KeyError:
        raise UsageError(f"variable {name} is not defined for {host}; set it in inventory/group_vars/all.yml") from None


def _int(name: str, value: Any, what: str = "an integer") -> int:
    """``value`` as Ansible's ``| int`` would need it, or a one-line error naming the variable."""
    if isinstance(value, bool):
        raise UsageError(f"{name} must be {what}, not {value!r}; fix it in group_vars")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name}={value!r} is not {what}; fix it in group_vars") from None


def _list(name: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise UsageError(f"{name} must be a YAML list; fix it in group_vars or the preflight role's defaults")
    return value


def _check_timing(inv: ClusterInventory, host: str) -> None:
    preset = _var(inv, host, "careflow_timing_preset")
    presets = _var(inv, host, "careflow_timing_presets")
    if not isinstance(presets, Mapping):
        raise UsageError("careflow_timing_presets must be a mapping of preset name to timings; fix it in group_vars")
    if preset not in presets:
        raise UsageError(f"timing preset {preset!r} is not one of {sorted(presets)}; pick one with --preset")
    t = presets[preset]
    if not isinstance(t, Mapping) or any(key not in t for key in PRESET_KEYS):
        raise UsageError(
            f"timing preset '{preset}' must set {', '.join(PRESET_KEYS)}; add them under careflow_timing_presets"
        )
    ttl, loop_wait, retry = (_int(f"careflow_timing_presets.{preset}.{key}", t[key]) for key in PRESET_KEYS)
    if loop_wait + 2 * retry > ttl or ttl < 20:
        raise UsageError(
            f"Timing preset '{preset}' has ttl={ttl}, loop_wait={loop_wait}, retry_timeout={retry}; "
            "Patroni needs loop_wait + 2*retry_timeout <= ttl and ttl >= 20."
        )


def _check_allowlist(raw: Any) -> None:
    """Patroni refuses to start on an entry that is not an address or a network: say which, before any host."""
    if not isinstance(raw, list) or not raw:
        raise UsageError(f"careflow_patroni_api_allowlist={raw!r} must be a list of addresses or networks, "
                         'like ["192.168.56.0/24"]; fix it in group_vars')
    for entry in raw:
        try:
            ipaddress.ip_network(str(entry), strict=False)
        except ValueError:
            raise UsageError(f"careflow_patroni_api_allowlist entry {entry!r} is not an address or a network; "
                             "write it like 192.168.56.0/24 or 10.0.0.5 in group_vars") from None


def _check_secrets(inv: ClusterInventory, host: str, lookups_checked_later: bool) -> None:
    for name in _list("preflight_required_secrets", _var(inv, host, "preflight_required_secrets")):
        try:
            value = inv.hostvars[host].get(name)
        except UnsupportedLookup:
            if lookups_checked_later:
                continue  # a vault or file lookup: only Ansible can answer it, and its preflight role checks it
            raise
        if len(str(value or "")) < MIN_SECRET_LENGTH:
            # Only the variable's name is printed, never its value.
            raise UsageError(
                f"{name} is empty or too short (it needs {MIN_SECRET_LENGTH} characters or more). It comes from "
                f"{name.upper()} in .env or the environment: careflow-ha generates it when missing, "
                "or export it yourself."
            )


def check_inventory(inv: ClusterInventory, check_wheelhouse: bool = True, lookups_checked_later: bool = False) -> None:
    """Raise ``UsageError`` on the first problem; return quietly when the inventory is sound.

    ``lookups_checked_later``: a secret read through a lookup other than ``env``
    is left to the Ansible preflight role, which can resolve it (Ansible path).
    """
    first = inv.hosts[0] if inv.hosts else None
    if first is None:
        raise UsageError(
            f"inventory {inv.path} has no hosts; add the etcd_cluster, postgres_cluster and balancers groups"
        )
    for group in _list("preflight_required_groups", _var(inv, first, "preflight_required_groups")):
        if not inv.group(group):
            raise UsageError(
                f"Inventory has no hosts in group '{group}'. Add an '{group}' group "
                "(see inventory/production.example.yml)."
            )

    etcd = inv.group("etcd_cluster")
    if len(etcd) < 3 or len(etcd) % 2 == 0:
        raise UsageError(
            f"etcd_cluster has {len(etcd)} members; it needs an odd number, at least 3 (3 or 5), "
            "so a majority survives a loss. Add or remove a host in etcd_cluster."
        )

    cluster_hosts = list(dict.fromkeys(h for group in HOST_GROUPS for h in inv.group(group)))
    network_raw = _var(inv, first, "careflow_cluster_network")
    try:
        network = ipaddress.ip_network(str(network_raw))
    except ValueError:
        raise UsageError(
            f"careflow_cluster_network={network_raw!r} is not a network; write it like 192.168.56.0/24"
        ) from None
    ips = []
    for host in cluster_hosts:
        raw = inv.hostvars[host].get("careflow_node_ip")
        try:
            ok = raw is not None and ipaddress.ip_address(str(raw)) in network
        except ValueError:
            ok = False
        if not ok:
            raise UsageError(
                f"Host {host} needs careflow_node_ip set to its address inside careflow_cluster_network "
                f"({network}); got {raw if raw is not None else 'nothing'}."
            )
        ips.append(str(raw))

    check_vip(inv, network, dict(zip(cluster_hosts, ips, strict=True)))

    short = [h.split(".")[0] for h in cluster_hosts]
    if len(set(short)) != len(short) or len(set(ips)) != len(ips):
        raise UsageError(
            f"Node names (short form) and careflow_node_ip must be unique; names {short}, addresses {ips}. "
            "Rename or re-address the duplicate host."
        )

    ports = [_int(name, _var(inv, first, name), "a port number") for name in PORT_VARS]
    if len(set(ports)) != len(ports):
        raise UsageError(
            f"Two services share a port in {ports}; give each careflow_*_port its own value in group_vars."
        )

    _check_timing(inv, first)
    _check_allowlist(_var(inv, first, "careflow_patroni_api_allowlist"))

    sync_mode = _var(inv, first, "careflow_synchronous_mode")
    sync_on = sync_mode if isinstance(sync_mode, bool) else str(sync_mode).lower() in ("yes", "on", "1", "true")
    sync_count = _int("careflow_synchronous_node_count", _var(inv, first, "careflow_synchronous_node_count"))
    if sync_on and len(inv.group("postgres_cluster")) <= sync_count:
        raise UsageError(
            f"synchronous_node_count={sync_count} needs more than that many PostgreSQL nodes; add nodes to "
            "postgres_cluster or lower careflow_synchronous_node_count."
        )

    # Read by `data migrate` on the control host, not by a role; checked here so that a bad value stops
    # `provision` and `up` before any host is touched, like every other shared setting.
    check_partition_scheme(_var(inv, first, "careflow_partition_scheme"))

    _check_secrets(inv, first, lookups_checked_later)

    if check_wheelhouse:
        archive = Path(_var(inv, first, "careflow_wheelhouse_archive"))
        if not archive.is_file():
            raise UsageError(f"No wheelhouse at {archive}; run `careflow-ha provision` (it builds it first).")


def check_inventory_file(
    path: Path,
    secrets: Mapping[str, str],
    extra_vars: Mapping[str, str] | None = None,
    lookups_checked_later: bool = False,
) -> ClusterInventory:
    """Read and check ``path`` as a provisioner would see it (before the wheelhouse exists)."""
    inv = load_inventory(path, secrets, extra_vars)
    check_inventory(inv, check_wheelhouse=False, lookups_checked_later=lookups_checked_later)
    return inv


#: The VIPs keepalived keeps, and the group each moves within: (variable, group, its name, the host to add).
VIPS: tuple[tuple[str, str, str, str], ...] = (
    ("careflow_vip", "balancers", "VIP", "a balancer"),
    ("careflow_leader_vip", "postgres_cluster", "leader VIP", "a database node"),
)


def check_vip(
    inv: ClusterInventory, network: ipaddress.IPv4Network | ipaddress.IPv6Network, node_ips: dict[str, str]
) -> None:
    """Each VIP (``careflow_vip``, ``careflow_leader_vip``; empty = none): a free address inside the cluster
    network, not the other VIP, with at least two hosts in its group to move between. Mirrors the preflight
    role's VIP asserts."""
    seen: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, str] = {}
    for name, group, what, host_kind in VIPS:
        raw = str(inv.hostvars[inv.hosts[0]].get(name) or "").strip()
        if not raw:
            continue
        off = f'or set {name}: "" to run without a {what}'
        try:
            vip = ipaddress.ip_address(raw)
        except ValueError:
            raise UsageError(f"{name}={raw!r} is not an IP address; write it like 192.168.56.100, {off}.") from None
        if vip not in network:
            raise UsageError(
                f"{name}={raw} is outside careflow_cluster_network ({network}); pick a free address inside it, {off}."
            )
        for host, ip in node_ips.items():
            if ipaddress.ip_address(ip) == vip:
                raise UsageError(
                    f"{name}={raw} is also the careflow_node_ip of {host}; pick an address no host uses, {off}."
                )
        if vip in seen:
            raise UsageError(f"{name}={raw} is also {seen[vip]}; give each VIP its own address, {off}.")
        seen[vip] = name
        members = inv.group(group)
        if len(members) < 2:
            raise UsageError(
                f"{name} is set but {group} has {len(members)} host(s); the {what} needs two or more to move "
                f"between: add {host_kind} (see inventory/production.example.yml), {off}."
            )
