"""The ``pgbouncer`` role in pyinfra: one PgBouncer per client port (6432 rw, 6433 ro) on each balancer.

Same inventory, defaults and templates as the role (rendered through ``role_template``), so both
provisioners write byte-identical files: the validator, the auth file (verifiers only), the unit
template, one validated .ini per instance, and the metrics timer with its script and password file.
"""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import apt, systemd

from careflow_ha.pyinfra_deploys._data import role_template, var
from careflow_ha.pyinfra_deploys.ops import apt_cache_fresh, put_role_file, textfile_timer, wait_until_ok


def unit(instance: dict) -> str:
    """The systemd unit of one instance (``careflow-pgbouncer@rw``)."""
    return f"careflow-pgbouncer@{instance['name']}"


@deploy("PgBouncer")
def pgbouncer() -> None:
    instances = var("__pgbouncer_instances")
    apt_cache_fresh(name="Ensure the apt cache is fresh (at most an hour old)", max_age_s=3600)
    apt.packages(name="Ensure PgBouncer is installed", packages=var("pgbouncer_packages"), no_recommends=True)
    # Debian's single-instance unit listens on 6432 itself: it would take the read-write instance's port.
    systemd.service(
        name="Ensure Debian's single-instance PgBouncer service is stopped and disabled", service="pgbouncer",
        running=False, enabled=False,
    )
    put_role_file(
        "Ensure the PgBouncer config validator is in place",
        role_template("pgbouncer", "configure.yml", "careflow-pgbouncer-validate.py.j2"),
    )
    auth = put_role_file(
        "Ensure the PgBouncer auth file holds only verifiers (auth_query login, admin, stats user)",
        role_template("pgbouncer", "configure.yml", "careflow-users.txt.j2"),
    )
    unit_file = put_role_file(
        "Ensure the PgBouncer unit template is installed",
        role_template("pgbouncer", "configure.yml", "careflow-pgbouncer@.service.j2"),
    )
    configs = [
        put_role_file(
            f"Ensure each PgBouncer instance's configuration is rendered and valid ({i['name']})",
            role_template("pgbouncer", "configure.yml", "pgbouncer.ini.j2", item=i),
        )
        for i in instances
    ]
    systemd.daemon_reload(name="Ensure systemd has read the PgBouncer unit", _if=unit_file.did_change)
    for instance, config in zip(instances, configs, strict=True):
        start = systemd.service(
            name=f"Ensure PgBouncer {instance['name']} is enabled and running", service=unit(instance),
            running=True, enabled=True,
        )
        restart = systemd.service(
            name=f"Restart PgBouncer {instance['name']} after a unit change", service=unit(instance),
            restarted=True, _if=lambda start=start: unit_file.did_change() and not start.did_change(),
        )
        # SIGHUP rereads the .ini and the auth file and keeps every connection; a restart already did.
        systemd.service(
            name=f"Reload PgBouncer {instance['name']} after a configuration change", service=unit(instance),
            reloaded=True,
            _if=lambda start=start, restart=restart, config=config: (config.did_change() or auth.did_change())
            and not start.did_change() and not restart.did_change(),
        )
    for instance in instances:
        port = int(instance["port"])
        wait_until_ok(
            name=f"Ensure PgBouncer {instance['name']} listens",
            command=f"ss -Htln 'sport = :{port}' | grep -q .",
            what=f"PgBouncer listens on {port}", retries=30, delay=1,
        )
    _metrics()


def _metrics() -> None:
    """The role's metrics.yml: the timer that writes PgBouncer's figures for node exporter."""
    apt.packages(name="Ensure psql is installed for the metrics timer", packages=var("pgbouncer_metrics_packages"),
                 no_recommends=True)
    put_role_file("Ensure the stats user's password file is in place (root only)",
                  role_template("pgbouncer", "metrics.yml", "careflow-stats.pgpass.j2"))
    put_role_file("Ensure the PgBouncer metrics script is in place",
                  role_template("pgbouncer", "metrics.yml", "careflow-pgbouncer-metrics.py.j2"))
    textfile_timer("pgbouncer", "metrics.yml", "careflow-pgbouncer-metrics", "PgBouncer metrics")
    # As the role: one checked run, so a stats user that cannot log in fails here, not as pgbouncer_up 0.
    wait_until_ok(name="Ensure every PgBouncer instance answers the stats user",
                  command=var("pgbouncer_metrics_script"), what="every PgBouncer instance answers the stats user",
                  retries=3, delay=2)
