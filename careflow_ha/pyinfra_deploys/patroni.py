"""The ``patroni`` role in pyinfra: offline install, validated config, leader, DCS config, app roles."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pyinfra.api import deploy
from pyinfra.operations import files, pip, postgres, systemd

from careflow_ha.provision.pgauth import pg_md5
from careflow_ha.pyinfra_deploys._data import role_template, template, var
from careflow_ha.pyinfra_deploys.ops import (
    DATABASE_COMMENT,
    FUNCTION_COMMENT,
    changed_unless,
    is_primary,
    login_role,
    patroni_dynamic_config,
    patroni_has_leader,
    patroni_pending_restarts,
    pip_requirements,
    put_role_file,
    role_membership,
    run_unless_exists,
    sql_versioned,
)

POSTGRES = {"_sudo": True, "_sudo_user": "postgres"}


@deploy("Patroni")
def patroni() -> None:
    venv = var("patroni_venv")
    config_file = var("patroni_config_file")
    api = f"{var('careflow_patroni_api_scheme')}://{var('careflow_node_ip')}:{var('careflow_patroni_api_port')}"
    ca = var("patroni_tls_ca_file")  # the role's ca_path for its uri tasks

    # --- install (offline, from the wheelhouse built on the control host)
    wheelhouse = var("__patroni_wheelhouse")  # the role's, one source for where pip finds the wheels
    archive = Path(var("careflow_wheelhouse_archive"))
    files.put(
        name="Ensure the wheelhouse archive is on the node",
        src=str(archive), dest=f"{wheelhouse}.tar", user="root", group="root", mode="644",
    )
    # The role's marker: the archive's sha1, as Ansible's copy reports it.
    # (Planned without a wheelhouse, as the unit tests do, the marker is a placeholder: nothing runs then.)
    digest = hashlib.sha1(archive.read_bytes()).hexdigest()[:12] if archive.is_file() else "none"
    marker = f"{wheelhouse}/.unpacked-{digest}"
    run_unless_exists(
        name="Ensure the wheelhouse is unpacked from that archive",
        path=marker,
        command=f"rm -rf {wheelhouse} && mkdir -m 0755 {wheelhouse} && tar -xf {wheelhouse}.tar -C {wheelhouse}"
        f" && touch {marker}",
    )
    pip.venv(name="Ensure Patroni's virtualenv exists", path=venv, python="/usr/bin/python3")
    pip_requirements(
        name="Ensure Patroni is installed in its virtualenv (offline)",
        pip=f"{venv}/bin/pip", requirements=var("patroni_pip_packages"),
        extra_args=f"--no-index --find-links {wheelhouse}",
    )
    files.link(
        name="Ensure patronictl is on the PATH", path="/usr/local/bin/patronictl", target=f"{venv}/bin/patronictl"
    )

    # --- configure
    files.directory(
        name="Ensure the Patroni config directory exists",
        path=config_file.rsplit("/", 1)[0], user="postgres", group="postgres", mode="750",
    )
    config = put_role_file(
        "Ensure the Patroni configuration is rendered and valid",
        role_template("patroni", "configure.yml", "patroni.yml.j2"),
    )
    unit = put_role_file(
        "Ensure the Patroni systemd unit is installed", role_template("patroni", "configure.yml", "patroni.service.j2")
    )

    # --- service: restart on a unit change, reload (SIGHUP) on a config change
    systemd.daemon_reload(name="Ensure systemd has read the Patroni unit", _if=unit.did_change)
    start = systemd.service(name="Ensure Patroni is enabled and running", service="patroni", running=True, enabled=True)
    systemd.service(
        name="Restart Patroni after a unit change", service="patroni", restarted=True,
        _if=changed_unless((unit,), start),
    )
    systemd.service(
        name="Reload Patroni after a configuration change", service="patroni", reloaded=True,
        _if=changed_unless((config,), start),
    )
    patroni_has_leader(
        name="Ensure the cluster has a leader", api_url=api, ca_file=ca,
        retries=var("patroni_leader_retries"), delay=var("patroni_leader_delay"), _run_once=True,
    )
    patch = patroni_dynamic_config(
        name="Ensure the dynamic configuration matches the inventory (timing preset, sync mode)",
        api_url=api, config_file=config_file, wanted=var("__patroni_dcs_wanted"), ca_file=ca, _run_once=True,
    )
    patroni_pending_restarts(
        name="Ensure members with pending restarts are restarted, one at a time",
        api_url=api, config_file=config_file, scope=var("careflow_cluster_scope"),
        settle_s=int(var("__patroni_timing")["loop_wait"]) + 3, after=patch, ca_file=ca, _run_once=True, **POSTGRES,
    )

    # --- application roles, on whichever member is primary now (Patroni decides)
    port = var("careflow_pg_port")
    primary = is_primary(api, ca)
    for user, secret in (("careflow_app_user", "careflow_app_password"), ("careflow_ro_user", "careflow_ro_password")):
        login_role(
            name=f"Ensure the application role {var(user)} exists", role=var(user), password=var(secret),
            port=port, _if=primary, **POSTGRES,
        )
    # The control host's tooling logs in as it over TCP, where the superuser may not (pg_hba in patroni.yml.j2).
    admin = var("careflow_admin_user")
    login_role(
        name="Ensure the admin role exists (LOGIN and CREATEDB; no superuser, no CREATEROLE)", role=admin,
        password=var("careflow_admin_password"), port=port, createdb=True, _if=primary, **POSTGRES,
    )
    role_membership(
        name="Ensure the admin role reads every backend's statistics and no data (pg_monitor)",
        group="pg_monitor", member=admin, port=port, _if=primary, **POSTGRES,
    )
    postgres.database(
        name="Ensure the EMR database exists, owned by the application role",
        database=var("careflow_database"), owner=var("careflow_app_user"), encoding="UTF8",
        psql_port=port, _if=primary, **POSTGRES,
    )
    role_membership(
        name="Ensure the read-only role can read what the application role creates",
        group="pg_read_all_data", member=var("careflow_ro_user"), port=port, _if=primary, **POSTGRES,
    )
    postgres.role(
        name="Ensure the monitoring role exists (LOGIN, no password; peer over the local socket only)",
        role=var("careflow_monitor_user"), login=True, inherit=True,  # inherit: pg_monitor's rights apply
        psql_port=port, _if=primary, **POSTGRES,
    )
    role_membership(
        name="Ensure the monitoring role reads every statistic and no data (pg_monitor)",
        group="pg_monitor", member=var("careflow_monitor_user"), port=port, _if=primary, **POSTGRES,
    )
    # PgBouncer's auth_query login, stored as md5 (the pg_hba line in patroni.yml.j2 says why).
    auth_user = var("careflow_pgbouncer_auth_user")
    login_role(
        name=f"Ensure the application role {auth_user} exists", role=auth_user,
        password=pg_md5(var("careflow_pgbouncer_auth_password"), auth_user), port=port, _if=primary, **POSTGRES,
    )
    sql_versioned(
        name="Ensure PgBouncer's auth_query function exists in the EMR database",
        sql=template("patroni", "pgbouncer-auth.sql.j2"),
        version_sql=FUNCTION_COMMENT.format("pgbouncer.get_auth(text)"),
        version=var("__patroni_pgbouncer_auth_version"), database=var("careflow_database"), port=port,
        _if=primary, **POSTGRES,
    )
    # The superuser's part of the EMR database, over the local socket (it has no TCP login).
    sql_versioned(
        name="Ensure the EMR database is prepared (extensions, grants, the bench role's functions)",
        sql=template("patroni", "emr-prepare.sql.j2"), version_sql=DATABASE_COMMENT,
        version=var("__patroni_emr_prepare_version"), database=var("careflow_database"), port=port,
        _if=primary, **POSTGRES,
    )
