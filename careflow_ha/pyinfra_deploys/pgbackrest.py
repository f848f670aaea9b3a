"""The ``pgbackrest`` role in pyinfra: package, account, directories, the validated config, the TLS server,
and on the repository host the scheduled backups (systemd timers).

Same inventory, same defaults, same templates as the role (rendered through ``role_template``), so both
provisioners write byte-identical files. On the repository host it then creates the stanza, checks that WAL
arrives and takes a first full backup (the role's stanza.yml).
"""

from __future__ import annotations

import shlex

from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd

from careflow_ha.pyinfra_deploys._data import hostvar, role_template, var
from careflow_ha.pyinfra_deploys.ops import (
    apt_cache_fresh,
    changed_unless,
    put_role_file,
    run_unless_exists,
    wait_until_ok,
)

#: The repository host's scheduled backups and backup-age metrics: (role task name, template).
BACKUP_UNITS = (
    ("Ensure the backup service is in place", "careflow-backup@.service.j2"),
    ("Ensure the weekly full backup timer is in place", "careflow-backup-full.timer.j2"),
    ("Ensure the differential backup timer is in place", "careflow-backup-diff.timer.j2"),
    ("Ensure the backup-age service is in place", "careflow-backup-metrics.service.j2"),
    ("Ensure the backup-age timer is in place", "careflow-backup-metrics.timer.j2"),
)


def _backup_timers() -> None:
    put_role_file("Ensure the backup-age script is in place",
                  role_template("pgbackrest", "service.yml", "careflow-backup-metrics.py.j2"))
    units = [put_role_file(name, role_template("pgbackrest", "service.yml", src)) for name, src in BACKUP_UNITS]
    systemd.daemon_reload(name="Reload systemd units", _if=lambda: any(u.did_change() for u in units))
    for kind in ("full", "diff", "metrics"):
        systemd.service(name="Ensure the backup timers are enabled and running",
                        service=f"careflow-backup-{kind}.timer", running=True, enabled=True)


@deploy("pgBackRest")
def pgbackrest() -> None:
    apt_cache_fresh(name="Ensure the apt cache is fresh (at most an hour old)", max_age_s=3600)
    apt.packages(name="Ensure pgBackRest is installed", packages=var("pgbackrest_packages"), no_recommends=True)
    server.user(name="Ensure the pgBackRest OS user exists", user=var("pgbackrest_user"), system=True,
                create_home=False, ensure_home=False)
    for d in var("__pgbackrest_directories"):
        files.directory(
            name=f"Ensure {d['path']} exists with its owner", path=d["path"], user=d["owner"],
            group=var("pgbackrest_group"), mode=d["mode"].lstrip("0"),
        )
    for peer in var("__pgbackrest_peers"):
        ip = hostvar(peer, "careflow_node_ip")
        wait_until_ok(
            name="Ensure every pgBackRest peer's name resolves to its cluster address",
            command=f"getent ahostsv4 {shlex.quote(peer)} | awk '{{print $1}}' | grep -qxF {shlex.quote(str(ip))}",
            what=f"{peer} resolves to {ip}", retries=1, delay=0,
        )
    put_role_file(
        "Ensure the pgBackRest config validator is in place",
        role_template("pgbackrest", "configure.yml", "careflow-pgbackrest-validate.sh.j2"),
    )
    config = put_role_file(
        "Ensure the pgBackRest configuration is rendered and valid",
        role_template("pgbackrest", "configure.yml", "pgbackrest.conf.j2"),
    )
    if var("__pgbackrest_is_repo_host"):
        _backup_timers()
    if not var("__pgbackrest_tls_server"):
        return  # a local repository: no server to run
    start = systemd.service(
        name="Ensure the pgBackRest TLS server is enabled and running", service="pgbackrest", running=True,
        enabled=True,
    )
    systemd.service(
        name="Restart the pgBackRest TLS server after a configuration change", service="pgbackrest",
        restarted=True, _if=changed_unless((config,), start),
    )
    port = int(var("pgbackrest_tls_server_port"))
    wait_until_ok(
        name="Ensure the TLS server listens", command=f"ss -Htln 'sport = :{port}' | grep -q .",
        what=f"pgBackRest's TLS server listens on {port}", retries=30, delay=1,
    )
    if var("__pgbackrest_is_repo_host"):
        _stanza()


def _stanza() -> None:
    """The role's stanza.yml: each step as the pgBackRest user (root would leave root-owned files in the
    repository), the first and last only once."""
    stanza_dir = f"{var('pgbackrest_repo_path')}/backup/{var('pgbackrest_stanza')}"
    as_user = f"runuser -u {shlex.quote(var('pgbackrest_user'))} --"
    pgbr = f"{as_user} pgbackrest --stanza={shlex.quote(var('pgbackrest_stanza'))}"
    run_unless_exists(name="Ensure the stanza exists in the repository", path=f"{stanza_dir}/backup.info",
                      command=f"{pgbr} stanza-create")
    wait_until_ok(name="Ensure WAL from the primary reaches the repository", command=f"{pgbr} check",
                  what="WAL from the primary reaches the repository (pgbackrest check)", retries=1, delay=0)
    run_unless_exists(name="Ensure the cluster has a first full backup", path=f"{stanza_dir}/latest",
                      command=f"{pgbr} backup --type=full")
