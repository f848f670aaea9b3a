"""The ``haproxy`` role in pyinfra: validated config, container-safe unit, listening ports."""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import apt, files, systemd

from careflow_ha.pyinfra_deploys._data import role_copy, role_template, var
from careflow_ha.pyinfra_deploys.ops import apt_cache_fresh, changed_unless, put_role_file, wait_until_ok

DROP_IN_DIR = "/etc/systemd/system/haproxy.service.d"
DROP_IN = f"{DROP_IN_DIR}/10-careflow-no-devlog.conf"


@deploy("HAProxy")
def haproxy() -> None:
    apt_cache_fresh(name="Ensure the apt cache is fresh (at most an hour old)", max_age_s=3600)
    apt.packages(name="Ensure HAProxy is installed", packages=var("haproxy_packages"), no_recommends=True)

    # Debian's unit bind-mounts /dev/log read-only; where /dev/log is a symlink
    # (containers) the unit dies with status=226/NAMESPACE.
    files.directory(
        name="Ensure the HAProxy unit drop-in directory exists", path=DROP_IN_DIR, user="root", group="root", mode="755"
    )
    drop_in = put_role_file(
        "Ensure HAProxy's unit does not bind-mount /dev/log", role_copy("haproxy", "configure.yml", DROP_IN)
    )
    if var("careflow_haproxy_stats_tls"):  # a group_vars switch: the same on every balancer
        files.link(
            name="Ensure HAProxy finds the stats certificate's key next to it",
            path=f"{var('haproxy_tls_cert_file')}.key", target=f"{var('inventory_hostname')}.key",
        )
    config = put_role_file(
        "Ensure the HAProxy configuration is rendered and valid",
        role_template("haproxy", "configure.yml", "haproxy.cfg.j2"),
    )
    systemd.daemon_reload(name="Ensure systemd has read the HAProxy drop-in", _if=drop_in.did_change)
    start = systemd.service(name="Ensure HAProxy is enabled and running", service="haproxy", running=True, enabled=True)
    systemd.service(
        name="Restart HAProxy after a unit change", service="haproxy", restarted=True,
        _if=changed_unless((drop_in,), start),
    )
    systemd.service(
        name="Reload HAProxy after a configuration change", service="haproxy", reloaded=True,
        _if=changed_unless((config,), start),
    )
    ports = ("careflow_haproxy_rw_port", "careflow_haproxy_ro_port", "careflow_haproxy_stats_port",
             "careflow_haproxy_metrics_port")
    for port in (var(p) for p in ports):
        wait_until_ok(
            name=f"Ensure HAProxy listens on port {port}",
            command=f"ss -Htln 'sport = :{int(port)}' | grep -q .",
            what=f"HAProxy listens on {port}", retries=30, delay=1,
        )
