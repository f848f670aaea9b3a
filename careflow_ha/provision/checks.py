"""The preflight role's checks, in Python: run before pyinfra touches any host.

Each check mirrors a task of ``roles/preflight/tasks/main.yml`` and raises a
one-line ``UsageError`` that names the fix (same wording where it matters).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from careflow_ha.errors import UsageError
from careflow_ha.provision.inventory import ClusterInventory

#: careflow_*_port variables that must all differ.
PORT_VARS: tuple[str, ...] = (
    "careflow_pg_port",
    "careflow_patroni_api_port",
    "careflow_etcd_client_port",
    "careflow_etcd_peer_port",
    "careflow_haproxy_rw_port",
    "careflow_haproxy_ro_port",
    "careflow_haproxy_stats_port",
)
MIN_SECRET_LENGTH = 16


def _var(inv: ClusterInventory, host: str, name: str) -> Any:
    try:
        return inv.hostvars[host][name]
    except KeyError:
        raise UsageError(f"variable {name} is not defined for {host}; set it in inventory/group_vars/all.yml") from None


def check_inventory(inv: ClusterInventory, check_wheelhouse: bool = True) -> None:
    """Raise ``UsageError`` on the first problem; return quietly when the inventory is sound."""
    first = inv.hosts[0] if inv.hosts else None
    if first is None:
        raise UsageError(
            f"inventory {inv.path} has no hosts; add the etcd_cluster, postgres_cluster and balancers groups"
        )
    for group in _var(inv, first, "preflight_required_groups"):
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

    cluster_hosts = list(dict.fromkeys([*etcd, *inv.group("postgres_cluster"), *inv.group("balancers")]))
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

    ports = [int(_var(inv, first, name)) for name in PORT_VARS]
    if len(set(ports)) != len(ports):
        raise UsageError(
            f"Two services share a port in {ports}; give each careflow_*_port its own value in group_vars."
        )

    preset = _var(inv, first, "careflow_timing_preset")
    presets = _var(inv, first, "careflow_timing_presets")
    if preset not in presets:
        raise UsageError(f"timing preset {preset!r} is not one of {sorted(presets)}; pick one with --preset")
    t = presets[preset]
    ttl, loop_wait, retry = int(t["ttl"]), int(t["loop_wait"]), int(t["retry_timeout"])
    if loop_wait + 2 * retry > ttl or ttl < 20:
        raise UsageError(
            f"Timing preset '{preset}' has ttl={ttl}, loop_wait={loop_wait}, retry_timeout={retry}; "
            "Patroni needs loop_wait + 2*retry_timeout <= ttl and ttl >= 20."
        )

    sync_mode = inv.hostvars[first]["careflow_synchronous_mode"]
    sync_on = sync_mode if isinstance(sync_mode, bool) else str(sync_mode).lower() in ("yes", "on", "1", "true")
    sync_count = int(_var(inv, first, "careflow_synchronous_node_count"))
    if sync_on and len(inv.group("postgres_cluster")) <= sync_count:
        raise UsageError(
            f"synchronous_node_count={sync_count} needs more than that many PostgreSQL nodes; add nodes to "
            "postgres_cluster or lower careflow_synchronous_node_count."
        )

    for name in _var(inv, first, "preflight_required_secrets"):
        if len(str(inv.hostvars[first].get(name) or "")) < MIN_SECRET_LENGTH:
            # Only the variable's name is printed, never its value.
            raise UsageError(
                f"{name} is empty or too short. Secrets come from .env: run through `careflow-ha provision` "
                "(it generates and exports them), or export CAREFLOW_* yourself."
            )

    if check_wheelhouse:
        wheelhouse = Path(_var(inv, first, "careflow_wheelhouse_dir"))
        if not wheelhouse.is_dir():
            raise UsageError(f"No wheelhouse at {wheelhouse}; run `careflow-ha provision` (it builds it first).")


def check_vip(
    inv: ClusterInventory, network: ipaddress.IPv4Network | ipaddress.IPv6Network, node_ips: dict[str, str]
) -> None:
    """The client VIP (``careflow_vip``, empty = none): a free address inside the cluster network, with at least
    two balancers to move between. Mirrors the preflight role's VIP asserts."""
    raw = str(inv.hostvars[inv.hosts[0]].get("careflow_vip") or "").strip()
    if not raw:
        return
    off = 'or set careflow_vip: "" to run without a VIP'
    try:
        vip = ipaddress.ip_address(raw)
    except ValueError:
        raise UsageError(f"careflow_vip={raw!r} is not an IP address; write it like 192.168.56.100, {off}.") from None
    if vip not in network:
        raise UsageError(
            f"careflow_vip={raw} is outside careflow_cluster_network ({network}); pick a free address inside it, {off}."
        )
    for host, ip in node_ips.items():
        if ipaddress.ip_address(ip) == vip:
            raise UsageError(
                f"careflow_vip={raw} is also the careflow_node_ip of {host}; pick an address no host uses, {off}."
            )
    balancers = inv.group("balancers")
    if len(balancers) < 2:
        raise UsageError(
            f"careflow_vip is set but balancers has {len(balancers)} host(s); the VIP needs two or more to move "
            f"between: add a balancer (see inventory/production.example.yml), {off}."
        )
