"""The ``keepalived`` role in pyinfra: the VIP on a balancer whose HAProxy serves (VRRP over unicast)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, systemd

from careflow_ha.pyinfra_deploys._data import role_template, var
from careflow_ha.pyinfra_deploys.ops import apt_cache_fresh, changed_unless, put_role_file, wait_until_ok


def vip_enabled() -> bool:
    """site.yml's ``when: careflow_vip | length > 0``: an empty VIP means no keepalived."""
    return bool(str(host.data.get("careflow_vip") or "").strip())


@deploy("keepalived")
def keepalived() -> None:
    if not vip_enabled():
        return
    apt_cache_fresh(name="Ensure the apt cache is fresh (at most an hour old)", max_age_s=3600)
    apt.packages(name="Ensure keepalived is installed", packages=var("keepalived_packages"), no_recommends=True)
    put_role_file(
        "Ensure the HAProxy check script is in place",
        role_template("keepalived", "configure.yml", "careflow-check-haproxy.sh.j2"),
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
    vip, port = var("careflow_vip"), int(var("careflow_haproxy_stats_port"))
    wait_until_ok(
        name="Ensure the VIP answers (HAProxy's stats port on whichever balancer holds it)",
        command=f"timeout 2 bash -c '</dev/tcp/{vip}/{port}'",
        what=f"{vip}:{port} answers", retries=60, delay=1,
    )
