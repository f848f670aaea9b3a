"""The ``etcd`` role in pyinfra: the DCS members, configured before the package starts them."""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import apt, files, systemd

from careflow_ha.pyinfra_deploys._data import role_template, var
from careflow_ha.pyinfra_deploys.ops import changed_unless, put_role_file, wait_until_ok

#: The etcd leader-away check (roles/etcd/tasks/service.yml): (role task name, template).
LEADER_AWAY_FILES = (
    ("Ensure the etcd leader-away script is in place", "careflow-etcd-leader-away.py.j2"),
    ("Ensure the etcd leader-away service is in place", "careflow-etcd-leader-away.service.j2"),
    ("Ensure the etcd leader-away timer is in place", "careflow-etcd-leader-away.timer.j2"),
)


def _leader_away() -> None:
    written = [put_role_file(name, role_template("etcd", "service.yml", src)) for name, src in LEADER_AWAY_FILES]
    systemd.daemon_reload(name="Apply pending systemd reloads", _if=lambda: any(f.did_change() for f in written))
    wanted = bool(var("etcd_leader_away_from_primary"))
    systemd.service(name="Ensure the etcd leader-away timer runs as configured",
                    service="careflow-etcd-leader-away.timer", running=wanted, enabled=wanted)


@deploy("etcd")
def etcd() -> None:
    # Written before the package is installed: Debian starts etcd on install, and
    # a first start with the stock config would create a one-member cluster.
    config = put_role_file(
        "Ensure /etc/default/etcd describes this member", role_template("etcd", "configure.yml", "etcd.default.j2")
    )
    put_role_file("Ensure etcdctl on this member finds the cluster and its client certificate",
                  role_template("etcd", "configure.yml", "careflow-etcdctl.sh.j2"))
    apt.packages(
        name="Ensure etcd packages are installed (keeping our /etc/default/etcd)",
        packages=var("etcd_packages"), no_recommends=True,  # apt keeps existing conffiles (force-confold)
    )
    data_dir = var("etcd_data_dir")
    for path in (data_dir.rsplit("/", 1)[0], data_dir):  # the parent may be a freshly mounted, root-owned volume
        files.directory(
            name=f"Ensure {path} belongs to etcd", path=path, user="etcd", group="etcd", mode="700"
        )
    start = systemd.service(name="Ensure etcd is enabled and running", service="etcd", running=True, enabled=True)
    systemd.service(
        name="Restart etcd after a configuration change", service="etcd", restarted=True,
        _if=changed_unless((config,), start),
    )
    wait_until_ok(
        name="Ensure the etcd cluster is healthy on every member",
        command=". /etc/profile.d/careflow-etcdctl.sh && etcdctl endpoint health",
        what="etcd cluster is healthy",
        retries=var("etcd_health_retries"), delay=var("etcd_health_delay"),
        _run_once=True,
    )
    _leader_away()
