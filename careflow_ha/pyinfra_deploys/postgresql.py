"""The ``postgresql`` role in pyinfra: server packages, and no Debian cluster next to Patroni."""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import apt, files, systemd

from careflow_ha.pyinfra_deploys._data import role_copy, var
from careflow_ha.pyinfra_deploys.ops import put_role_file

NO_MAIN_CLUSTER = "/etc/postgresql-common/createcluster.d/50-careflow-no-main-cluster.conf"


@deploy("PostgreSQL")
def postgresql() -> None:
    # Must exist before the server package: it stops Debian from running initdb
    # and starting a "main" cluster that would fight Patroni for the data dir.
    files.directory(
        name="Ensure the postgresql-common config directory exists",
        path="/etc/postgresql-common/createcluster.d", user="root", group="root", mode="755",
    )
    put_role_file("Ensure Debian creates no default cluster", role_copy("postgresql", "install.yml", NO_MAIN_CLUSTER))
    apt.packages(
        name="Ensure PostgreSQL packages are installed", packages=var("postgresql_packages"), no_recommends=True
    )
    files.directory(
        name="Ensure the postgres home (the data volume) belongs to postgres",
        path="/var/lib/postgresql", user="postgres", group="postgres", mode="755",
    )
    files.directory(
        name="Ensure the parent of the data directory exists",
        path=var("postgresql_data_dir").rsplit("/", 1)[0], user="postgres", group="postgres", mode="700",
    )
    systemd.service(
        name="Ensure the distro's postgresql service is stopped and disabled",
        service="postgresql", running=False, enabled=False,
    )
