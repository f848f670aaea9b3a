"""The ``node_exporter`` and ``postgres_exporter`` roles in pyinfra: Debian's exporters, listening on the
host's cluster-network address, their command lines (and the PostgreSQL exporter's passwordless socket
connection) rendered from the roles' templates, and the node exporter's certificate expiry timer."""

from __future__ import annotations

import posixpath

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import apt, files, systemd

from careflow_ha.pyinfra_deploys._data import role_copy, role_template, var
from careflow_ha.pyinfra_deploys.ops import (
    apt_cache_fresh,
    changed_unless,
    put_role_file,
    textfile_timer,
    wait_until_ok,
)

PG_DROP_IN_DIR = "/etc/systemd/system/prometheus-postgres-exporter.service.d"
PG_DROP_IN = f"{PG_DROP_IN_DIR}/10-careflow-restart.conf"


def _exporter(role: str, what: str, unit: str, template: str, config_task: str,
              unit_changes: tuple[OperationMeta, ...] = ()) -> None:
    """The steps both roles share: package, EnvironmentFile, service, restart on change."""
    apt.packages(name=f"Ensure {what} is installed", packages=var(f"{role}_packages"), no_recommends=True)
    config = put_role_file(config_task, role_template(role, "configure.yml", template))
    start = systemd.service(name=f"Ensure {what} is enabled and running", service=unit, running=True, enabled=True)
    systemd.service(
        name=f"Restart {what} after a command-line change", service=unit, restarted=True,
        _if=changed_unless((config, *unit_changes), start),
    )


@deploy("Node exporter")
def node_exporter() -> None:
    apt_cache_fresh(name="Ensure the apt cache is fresh (at most an hour old)", max_age_s=3600)
    _exporter("node_exporter", "the node exporter", "prometheus-node-exporter", "prometheus-node-exporter.default.j2",
              "Ensure the node exporter's command line is rendered (listen address)")
    ip, port = var("careflow_node_ip"), int(var("careflow_node_exporter_port"))
    wait_until_ok(
        name="Ensure the node exporter listens on the cluster network",
        command=f"timeout 2 bash -c '</dev/tcp/{ip}/{port}'", what=f"{ip}:{port} answers", retries=30, delay=1,
    )
    _certificate_timer()


def _certificate_timer() -> None:
    """The role's certificates.yml: the timer that publishes when this host's certificates expire."""
    apt.packages(name="Ensure openssl is installed for the certificate timer",
                 packages=var("node_exporter_certificate_packages"), no_recommends=True)
    put_role_file("Ensure the certificate expiry script is in place",
                  role_template("node_exporter", "certificates.yml", "careflow-certificate-metrics.py.j2"))
    textfile_timer("node_exporter", "certificates.yml", "careflow-certificate-metrics", "certificate expiry")
    wait_until_ok(name="Ensure every certificate of this host is readable",
                  command=var("node_exporter_certificate_metrics_script"), what="every certificate here is read",
                  retries=1, delay=0)


@deploy("PostgreSQL exporter")
def postgres_exporter() -> None:
    apt_cache_fresh(name="Ensure the apt cache is fresh (at most an hour old)", max_age_s=3600)
    # Before the package: Debian starts the exporter at once, with no DSN yet (see the role's install.yml).
    files.directory(
        name="Ensure the PostgreSQL exporter's unit drop-in directory exists", path=PG_DROP_IN_DIR,
        user="root", group="root", mode="755",
    )
    drop_in = put_role_file(
        "Ensure the PostgreSQL exporter restarts 5 s apart (never into systemd's start limit)",
        role_copy("postgres_exporter", "install.yml", PG_DROP_IN),
    )
    systemd.daemon_reload(name="Ensure systemd has read the PostgreSQL exporter's drop-in", _if=drop_in.did_change)
    queries = role_template("postgres_exporter", "configure.yml", "careflow-queries.yml.j2")
    files.directory(
        name="Ensure the PostgreSQL exporter's query directory exists", path=posixpath.dirname(queries.dest),
        user="root", group="root", mode="755",
    )
    extra = put_role_file("Ensure the PostgreSQL exporter's extra queries are rendered (lock waits)", queries)
    _exporter("postgres_exporter", "the PostgreSQL exporter", "prometheus-postgres-exporter",
              "prometheus-postgres-exporter.default.j2",
              "Ensure the PostgreSQL exporter's connection and command line are rendered",
              unit_changes=(drop_in, extra))
    url = f"http://{var('careflow_node_ip')}:{int(var('careflow_postgres_exporter_port'))}/metrics"
    # pg_up 1: it logged in as the monitoring role over the socket (pg_hba peer map and the role both work).
    wait_until_ok(
        name="Ensure the PostgreSQL exporter reaches PostgreSQL (pg_up 1)",
        command=f"curl -fsS -m 5 {url} | grep -qx 'pg_up 1'", what=f"{url} reports pg_up 1",
        retries=int(var("postgres_exporter_up_retries")), delay=int(var("postgres_exporter_up_delay")),
    )
