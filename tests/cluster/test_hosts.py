"""Host checks over the inventory's hosts (testinfra over SSH).

The same tests check a cluster provisioned by Ansible or by pyinfra: they
look at the hosts, not at how they got that way.
"""

from __future__ import annotations

import pytest
import testinfra

from careflow_ha.lab.ssh import ssh_config_path
from tests.inventory import host_vars, hosts
from tests.plugins.timeouts import wait_until

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def host_of(cluster):
    cache: dict[str, testinfra.host.Host] = {}

    def get(name: str) -> testinfra.host.Host:
        if name not in cache:
            cache[name] = testinfra.get_host(f"ssh://{name}", ssh_config=str(ssh_config_path(cluster)))
        return cache[name]

    return get


@pytest.mark.parametrize("name", hosts("postgres_cluster"))
@pytest.mark.parametrize("service", ["etcd", "patroni"])
def test_db_services_active_and_enabled(host_of, name, service):
    svc = host_of(name).service(service)
    assert svc.is_running, f"{service} is not running on {name}"
    assert svc.is_enabled, f"{service} is not enabled on {name}"


@pytest.mark.parametrize("name", hosts("balancers"))
def test_haproxy_active_and_enabled(host_of, name):
    svc = host_of(name).service("haproxy")
    assert svc.is_running and svc.is_enabled


@pytest.mark.parametrize("name", hosts("balancers"))
def test_keepalived_active_and_enabled(host_of, name):
    svc = host_of(name).service("keepalived")
    assert svc.is_running, f"keepalived is not running on {name}"
    assert svc.is_enabled, f"keepalived is not enabled on {name}"


def test_exactly_one_balancer_holds_the_vip(host_of, cluster):
    vip = cluster.vip.address

    def single_holder() -> list[str] | None:
        found = [n for n in hosts("balancers") if vip in host_of(n).interface("eth0").addresses]
        return found if len(found) == 1 else None

    # VRRP settles within a few adverts; two holders (both MASTER) would be a split the clients feel.
    assert len(wait_until(single_holder, 15, what=f"exactly one holder of {vip}")) == 1


@pytest.mark.parametrize("name", hosts("balancers"))
def test_keepalived_check_passes_and_fails_with_haproxy(host_of, name):
    h = host_of(name)
    script = h.file("/etc/keepalived/careflow-check-haproxy.sh")
    assert script.user == "root" and script.mode == 0o755  # enable_script_security refuses anything else
    assert h.run(script.path).rc == 0
    # Asked about a port nothing listens on, the same check fails: it looks at ports, not at a process.
    assert h.run(f"sed \"s/:5000'/:5999'/\" {script.path} | sh").rc != 0


@pytest.mark.parametrize("name", hosts("postgres_cluster"))
@pytest.mark.parametrize("port", [5432, 8008, 2379, 2380])
def test_db_ports_listening(host_of, name, port):
    assert host_of(name).socket(f"tcp://0.0.0.0:{port}").is_listening or any(
        s.endswith(f":{port}") for s in host_of(name).socket.get_listening_sockets()
    ), f"nothing listens on {port} on {name}"


@pytest.mark.parametrize("name", hosts("balancers"))
@pytest.mark.parametrize("port", [5000, 5001, 7000])
def test_balancer_ports_listening(host_of, name, port):
    assert host_of(name).socket(f"tcp://0.0.0.0:{port}").is_listening


@pytest.mark.parametrize(
    "name,path,owner",
    [(h, "/etc/patroni/patroni.yml", "postgres") for h in hosts("postgres_cluster")]
    + [(h, "/etc/haproxy/haproxy.cfg", "root") for h in hosts("balancers")]
    + [(h, "/etc/keepalived/keepalived.conf", "root") for h in hosts("balancers")],
)
def test_files_with_secrets_are_private(host_of, name, path, owner):
    f = host_of(name).file(path)
    assert f.exists, f"{path} missing on {name}"
    assert f.mode == 0o600, f"{path} on {name} has mode {oct(f.mode)}"
    assert f.user == owner


@pytest.mark.parametrize("name", hosts("postgres_cluster"))
def test_no_debian_managed_cluster_next_to_patroni(host_of, name):
    h = host_of(name)
    assert h.run("pg_lsclusters --no-header").stdout.strip() == "", "Debian created a cluster Patroni does not own"
    assert not h.service("postgresql").is_enabled
    postmasters = h.run("pgrep -u postgres -fc '^/usr/lib/postgresql/15/bin/postgres'").stdout.strip()
    assert postmasters == "1", f"{postmasters} postmasters on {name} (want exactly Patroni's one)"


@pytest.mark.parametrize("name", hosts("postgres_cluster"))
def test_pg_hba_has_no_trust_and_only_the_cluster_network(host_of, name):
    hba = host_of(name).file("/var/lib/postgresql/15/main/pg_hba.conf").content_string
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert rules, "pg_hba.conf is empty"
    for rule in rules:
        assert "trust" not in rule, f"trust rule on {name}: {' '.join(rule)}"
        if rule[0] == "local":
            assert rule[1:] in (["all", "postgres", "peer"], ["replication", "replicator", "scram-sha-256"]), (
                f"unexpected local rule: {' '.join(rule)}"
            )
        elif rule[4] == "md5":
            # PgBouncer's auth_query login only, only from a balancer, only to the EMR database (docs/pooling.md)
            balancer_ips = {f"{host_vars()[b]['careflow_node_ip']}/32" for b in hosts("balancers")}
            assert rule[:3] == ["host", "careflow", "pgbouncer_auth"] and rule[3] in balancer_ips, " ".join(rule)
        else:
            assert rule[0] == "host" and rule[3] == "192.168.56.0/24" and rule[4] == "scram-sha-256", " ".join(rule)


# --- PgBouncer (roles/pgbouncer): one instance per pooled port, in front of the local HAProxy ---------
PGBOUNCER_INSTANCES = {"rw": 6432, "ro": 6433}


@pytest.mark.parametrize("name", hosts("balancers"))
@pytest.mark.parametrize("instance", sorted(PGBOUNCER_INSTANCES))
def test_pgbouncer_instances_active_enabled_and_listening(host_of, name, instance):
    h = host_of(name)
    svc = h.service(f"careflow-pgbouncer@{instance}")
    assert svc.is_running, f"careflow-pgbouncer@{instance} is not running on {name}"
    assert svc.is_enabled, f"careflow-pgbouncer@{instance} is not enabled on {name}"
    port = PGBOUNCER_INSTANCES[instance]
    assert h.socket(f"tcp://0.0.0.0:{port}").is_listening or any(
        s.endswith(f":{port}") for s in h.socket.get_listening_sockets()
    ), f"nothing listens on {port} on {name}"


@pytest.mark.parametrize("name", hosts("balancers"))
def test_debian_single_instance_pgbouncer_is_off(host_of, name):
    svc = host_of(name).service("pgbouncer")
    assert not svc.is_running and not svc.is_enabled  # it would take port 6432 with Debian's sample config


@pytest.mark.parametrize("name", hosts("balancers"))
def test_pgbouncer_unit_raises_the_open_file_limit(host_of, name):
    h = host_of(name)
    pid = h.run("systemctl show -p MainPID --value careflow-pgbouncer@rw").stdout.strip()
    assert pid.isdigit() and pid != "0"
    limits = h.file(f"/proc/{pid}/limits").content_string
    soft = next(line.split()[3] for line in limits.splitlines() if line.startswith("Max open files"))
    assert int(soft) >= 2048, f"PgBouncer on {name} may open only {soft} files"


@pytest.mark.parametrize(
    "name,path,mode,owner",
    [(h, "/etc/pgbouncer/careflow-users.txt", 0o600, "postgres") for h in hosts("balancers")]
    + [(h, f"/etc/pgbouncer/careflow-{i}.ini", 0o640, "root") for h in hosts("balancers") for i in PGBOUNCER_INSTANCES],
)
def test_pgbouncer_files_are_private(host_of, name, path, mode, owner):
    f = host_of(name).file(path)
    assert f.exists, f"{path} missing on {name}"
    assert f.mode == mode, f"{path} on {name} has mode {oct(f.mode)}"
    assert f.user == owner


@pytest.mark.parametrize("name", hosts("balancers"))
def test_no_plaintext_password_in_pgbouncer_files(host_of, name, cluster):
    h = host_of(name)
    text = h.run("cat /etc/pgbouncer/careflow-*.ini /etc/pgbouncer/careflow-users.txt").stdout
    assert "pgbouncer_auth" in text and "SCRAM-SHA-256$" in text  # the files were read at all
    for key, secret in cluster.secrets.items():
        assert secret not in text, f"{key} in plaintext in /etc/pgbouncer on {name}"
    # Only verifiers in the auth file: md5 for the auth_query login, SCRAM for the admin, nothing else.
    users = h.file("/etc/pgbouncer/careflow-users.txt").content_string.splitlines()
    assert [line.split()[0] for line in users] == ['"pgbouncer_auth"', '"pgbouncer_admin"']
    assert all(line.split()[1].startswith(('"md5', '"SCRAM-SHA-256$')) for line in users)
