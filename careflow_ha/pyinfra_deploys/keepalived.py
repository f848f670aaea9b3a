"""The ``keepalived`` role in pyinfra: the client VIP on a balancer whose HAProxy serves, the leader VIP on
Patroni's leader (VRRP over unicast)."""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import apt, systemd

from careflow_ha.provision.inventory import _ansible_bool
from careflow_ha.pyinfra_deploys._data import role_template, var
from careflow_ha.pyinfra_deploys.ops import apt_cache_fresh, changed_unless, put_role_file, wait_until_ok


@deploy("keepalived")
def keepalived() -> None:
    # The role's own __keepalived_balancer/__keepalived_leader: which VIPs this host takes part in
    # (site.yml's two plays' ``when:``, and the host's groups).
    balancer, leader = (_ansible_bool(var(name)) for name in ("__keepalived_balancer", "__keepalived_leader"))
    if not (balancer or leader):
        return
    apt_cache_fresh(name="Ensure the apt cache is fresh (at most an hour old)", max_age_s=3600)
    apt.packages(name="Ensure keepalived is installed", packages=var("keepalived_packages"), no_recommends=True)
    if balancer:
        put_role_file(
            "Ensure the HAProxy check script is in place",
            role_template("keepalived", "configure.yml", "careflow-check-haproxy.sh.j2"),
        )
    if leader:
        put_role_file(
            "Ensure the leader check script is in place",
            role_template("keepalived", "configure.yml", "careflow-check-leader.sh.j2"),
        )
    config = put_role_file(
        "Ensure the keepalived configuration is rendered and valid",
        role_template("keepalived", "configure.yml", "keepalived.conf.j2"),
    )
    start = systemd.service(
        name="Ensure keepalived is enabled and running", service="keepalived", running=True, enabled=True
    )
    systemd.service(
        name="Reload keepalived after a configuration change", service="keepalived", reloaded=True,
        _if=changed_unless((config,), start),
    )
    waits = [("Ensure the VIP answers (HAProxy's stats port on whichever balancer holds it)",
              "careflow_vip", "careflow_haproxy_stats_port", balancer),
             ("Ensure the leader VIP answers (PostgreSQL on Patroni's leader)",
              "careflow_leader_vip", "careflow_pg_port", leader)]
    for name, vip_var, port_var, wanted in waits:
        if wanted:
            vip, port = var(vip_var), int(var(port_var))
            wait_until_ok(name=name, command=f"timeout 2 bash -c '</dev/tcp/{vip}/{port}'",
                          what=f"{vip}:{port} answers", retries=60, delay=1)
