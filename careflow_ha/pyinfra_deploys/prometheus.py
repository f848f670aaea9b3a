"""The ``prometheus`` role in pyinfra: Debian's Prometheus on the monitoring host, its scrape targets
rendered from the inventory, the alert rules, both validated with promtool before they go live."""

from __future__ import annotations

import io

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, systemd

from careflow_ha.pyinfra_deploys._data import role_copy, role_template, var
from careflow_ha.pyinfra_deploys.ops import (
    VirtualizationContainer,
    apt_cache_fresh,
    changed_unless,
    put_role_file,
    wait_until_ok,
)

#: The rules task's dest, as the role writes it (role_copy finds the task by it).
RULES_DEST = "{{ prometheus_rules_dir }}/careflow-alerts.yml"
DROP_IN_DIR = "/etc/systemd/system/prometheus.service.d"
NO_USERNS = f"{DROP_IN_DIR}/10-careflow-no-userns.conf"


def _relax_private_users() -> bool:
    """The role's ``when:``: always, or auto on a host that is a container."""
    mode = var("prometheus_relax_private_users")
    return mode == "always" or (mode == "auto" and host.get_fact(VirtualizationContainer) != "none")


@deploy("Prometheus")
def prometheus() -> None:
    apt_cache_fresh(name="Ensure the apt cache is fresh (at most an hour old)", max_age_s=3600)
    # Before the package, whose postinst starts Prometheus at once (see the role's install.yml).
    files.directory(
        name="Ensure Prometheus' unit drop-in directory exists", path=DROP_IN_DIR, user="root", group="root",
        mode="755",
    )
    no_userns = role_copy("prometheus", "install.yml", NO_USERNS)
    drop_in = files.put(
        name="Ensure Prometheus' unit does without user namespaces where there are none",
        src=io.BytesIO(no_userns.content.encode()), dest=no_userns.dest, user=no_userns.user,
        group=no_userns.group, mode=no_userns.mode, _if=_relax_private_users,
    )
    systemd.daemon_reload(name="Ensure systemd has read Prometheus' drop-in", _if=drop_in.did_change)
    apt.packages(name="Ensure Prometheus is installed", packages=var("prometheus_packages"), no_recommends=True)
    flags = put_role_file(
        "Ensure Prometheus' command line is rendered (listen port, retention)",
        role_template("prometheus", "configure.yml", "prometheus.default.j2"),
    )
    files.directory(
        name="Ensure the rules folder exists", path=var("prometheus_rules_dir"), user="root", group="root", mode="755"
    )
    # Before prometheus.yml: `promtool check config` also checks the rule files it names.
    rules = put_role_file(
        "Ensure the CareFlow alert rules are installed and valid", role_copy("prometheus", "configure.yml", RULES_DEST)
    )
    config = put_role_file(
        "Ensure the Prometheus configuration is rendered and valid",
        role_template("prometheus", "configure.yml", "prometheus.yml.j2"),
    )
    start = systemd.service(
        name="Ensure Prometheus is enabled and running", service="prometheus", running=True, enabled=True
    )
    restart = systemd.service(
        name="Restart Prometheus after a command-line or unit change", service="prometheus", restarted=True,
        _if=changed_unless((flags, drop_in), start),
    )
    # A restart (or the first start) already read the new files: reload only otherwise.
    systemd.service(
        name="Reload Prometheus after a configuration or rules change", service="prometheus", reloaded=True,
        _if=lambda: any(op.did_change() for op in (rules, config)) and not (start.did_change() or restart.did_change()),
    )
    port = int(var("prometheus_port"))
    wait_until_ok(
        name="Ensure Prometheus is ready (TSDB open, configuration loaded)",
        command=f"curl -fsS -m 5 -o /dev/null http://127.0.0.1:{port}/-/ready",
        what=f"Prometheus answers /-/ready on {port}", retries=int(var("prometheus_ready_retries")),
        delay=int(var("prometheus_ready_delay")),
    )
