"""Host checks over the inventory's hosts (testinfra over SSH).

The same tests check a cluster provisioned by Ansible or by pyinfra: they
look at the hosts, not at how they got that way.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from careflow_ha.cluster.patroni import PatroniApi
from careflow_ha.drills.faults import ETCD_LEADER_SCRIPT, leader_from_etcdctl
from careflow_ha.lab.ca import issued_by, subject_alt_names
from careflow_ha.provision import LAB_INVENTORY
from careflow_ha.provision.inventory import load_inventory
from careflow_ha.routing.haproxy_ab import VARIANTS, variant_config
from careflow_ha.settings import inventory_vars
from tests.inventory import host_vars, hosts
from tests.plugins.timeouts import wait_until
from tests.promql import instant

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("name", hosts("postgres_cluster"))
@pytest.mark.parametrize("service", ["etcd", "patroni"])
def test_db_services_active_and_enabled(host_of, name, service):
    svc = host_of(name).service(service)
    assert svc.is_running, f"{service} is not running on {name}"
    assert svc.is_enabled, f"{service} is not enabled on {name}"


@pytest.mark.parametrize("name", hosts("etcd_cluster"))
def test_etcd_leader_away_timer_active_and_enabled(host_of, name):
    timer = host_of(name).service("careflow-etcd-leader-away.timer")
    assert timer.is_running and timer.is_enabled, f"careflow-etcd-leader-away.timer is off on {name}"


def _etcd_leader(host_of, name: str) -> str:
    proc = host_of(name).run(f"bash -lc {json.dumps(ETCD_LEADER_SCRIPT)}")
    return leader_from_etcdctl(proc.stdout, name)


def test_etcd_leadership_leaves_the_primarys_node(host_of, cluster):
    """Hand etcd's leadership to the primary's member, as an etcd election may, and watch the timer move it
    off within one interval (roles/etcd: etcd_leader_away_interval 10s) and the margin."""
    primary = PatroniApi(cluster).cluster().leader
    assert primary in hosts("etcd_cluster"), "the lab runs etcd beside every Patroni member"
    current = _etcd_leader(host_of, primary)
    if current != primary:
        members = json.loads(host_of(primary).check_output("bash -lc 'etcdctl member list -w json'"))["members"]
        primary_id = next(m["ID"] for m in members if m["name"] == primary)
        moved = host_of(current).check_output(f"bash -lc 'etcdctl move-leader {primary_id:x}'")
        assert "transferred" in moved, moved

    def leader_elsewhere() -> str | None:
        now = _etcd_leader(host_of, primary)
        return now if now != primary else None

    away = wait_until(leader_elsewhere, 15, what=f"etcd's leader to leave {primary}, the primary's node")
    assert away in hosts("etcd_cluster")
    assert PatroniApi(cluster).cluster().leader == primary, "moving etcd's leader must not move Patroni's"


@pytest.mark.parametrize("name", hosts("balancers"))
def test_haproxy_active_and_enabled(host_of, name):
    svc = host_of(name).service("haproxy")
    assert svc.is_running and svc.is_enabled


@pytest.mark.parametrize("name", hosts("balancers") + hosts("postgres_cluster"))
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


def test_exactly_one_database_node_holds_the_leader_vip_and_it_is_the_leader(host_of, cluster):
    vip = cluster.routing.leader_vip
    assert vip, "the lab inventory sets careflow_leader_vip"

    def single_holder() -> list[str] | None:
        found = [n for n in hosts("postgres_cluster") if vip in host_of(n).interface("eth0").addresses]
        return found if len(found) == 1 else None

    holder = wait_until(single_holder, 15, what=f"exactly one holder of {vip}")
    assert holder == [PatroniApi(cluster).cluster().leader], f"{vip} is on {holder}, not on Patroni's leader"


@pytest.mark.parametrize("name", hosts("postgres_cluster"))
def test_keepalived_leader_check_passes_only_on_the_leader(host_of, cluster, name):
    script = host_of(name).file("/etc/keepalived/careflow-check-leader.sh")
    assert script.user == "root" and script.mode == 0o755
    is_leader = PatroniApi(cluster).cluster().leader == name
    assert (host_of(name).run(script.path).rc == 0) is is_leader


@pytest.mark.parametrize("name", hosts("balancers"))
def test_keepalived_check_passes_and_fails_with_haproxy(host_of, name):
    h = host_of(name)
    script = h.file("/etc/keepalived/careflow-check-haproxy.sh")
    assert script.user == "root" and script.mode == 0o755  # enable_script_security refuses anything else
    assert h.run(script.path).rc == 0
    # Asked about a port nothing listens on, the same check fails: it looks at ports, not at a process.
    assert h.run(f"sed \"s/:5000'/:5999'/\" {script.path} | sh").rc != 0


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bench_routings_haproxy_variants_are_valid_configs(host_of, variant):
    """bench routing's A/B copies of the provisioned haproxy.cfg pass HAProxy's own check on a balancer."""
    h = host_of("lb1")
    cfg = variant_config(h.file("/etc/haproxy/haproxy.cfg").content_string, 5010, VARIANTS[variant])
    path = "/tmp/careflow-ab-check.cfg"
    try:
        h.run(f"umask 077; cat > {path} <<'EOF'\n{cfg}\nEOF")
        check = h.run(f"haproxy -c -q -f {path}")
    finally:
        h.run(f"rm -f {path}")
    assert check.rc == 0, check.stdout + check.stderr
@pytest.mark.parametrize("name", hosts("monitoring"))
def test_prometheus_active_and_enabled(host_of, name):
    svc = host_of(name).service("prometheus")
    assert svc.is_running, f"prometheus is not running on {name}"
    assert svc.is_enabled, f"prometheus is not enabled on {name}"


@pytest.mark.parametrize(
    "name,service",
    [(h, "prometheus-node-exporter") for h in hosts()]
    + [(h, "prometheus-postgres-exporter") for h in hosts("postgres_cluster")],
)
def test_every_exporter_active_and_enabled(host_of, name, service):
    svc = host_of(name).service(service)
    assert svc.is_running, f"{service} is not running on {name}"
    assert svc.is_enabled, f"{service} is not enabled on {name}"


#: Prometheus' scrape jobs and the inventory group each one covers (roles/prometheus/templates/prometheus.yml.j2).
SCRAPED = {"node": None, "postgres": "postgres_cluster", "patroni": "postgres_cluster", "etcd": "etcd_cluster",
           "haproxy": "balancers", "prometheus": "monitoring"}


def _targets(prometheus_url: str) -> list[dict]:
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/targets?state=active", timeout=5) as resp:  # noqa: S310
        return json.load(resp)["data"]["activeTargets"]


def test_prometheus_scrapes_every_exporter_of_the_inventory_and_each_is_up(cluster):
    """Through the port published on 127.0.0.1; each target gets a few scrapes (5 s apart) to come up."""
    expected = {(job, h) for job, group in SCRAPED.items() for h in hosts(group)}

    def all_up() -> list[dict] | None:
        targets = _targets(cluster.prometheus_url)
        seen = {(t["labels"]["job"], t["labels"]["instance"]) for t in targets}
        assert seen == expected, f"scraped {sorted(seen ^ expected)} unlike the inventory"
        return targets if all(t["health"] == "up" for t in targets) else None

    def down() -> list[str]:
        return sorted(f"{t['labels']['job']}/{t['labels']['instance']}: {t.get('lastError') or t['health']}"
                      for t in _targets(cluster.prometheus_url) if t["health"] != "up")

    try:
        wait_until(all_up, 60, interval=2, what="every Prometheus target up")
    except pytest.fail.Exception:
        pytest.fail(f"targets not up: {down()}")


def test_the_postgres_exporter_reads_postgres_as_the_monitoring_role(host_of):
    """pg_up 1 and the lock-wait query on every node: the passwordless peer login works; no password in its file."""
    for name in hosts("postgres_cluster"):
        h = host_of(name)
        env = h.file("/etc/default/prometheus-postgres-exporter")
        assert env.mode == 0o640 and env.user == "prometheus"  # Debian's choice: not world-readable
        assert not re.search(r"password\s*=|://[^@/\s]*:[^@/\s]*@", env.content_string), "a password in the DSN"
        metrics = h.run(f"curl -fsS -m 5 http://{host_vars()[name]['careflow_node_ip']}:9187/metrics").stdout
        assert "\npg_up 1\n" in metrics, f"the exporter on {name} does not reach PostgreSQL"
        # The extra query (roles/postgres_exporter/templates/careflow-queries.yml.j2) ran: a number, no error.
        assert re.search(r"^careflow_lock_waits_sessions(\{[^}]*\})? \d+$", metrics, re.M), (
            f"the exporter on {name} does not publish the lock-wait count (--extend.query-path)")


@pytest.mark.parametrize("name", hosts("postgres_cluster"))
@pytest.mark.parametrize("port", [5432, 8008, 2379, 2380, 2381, 9100, 9187])
def test_db_ports_listening(host_of, name, port):
    assert host_of(name).socket(f"tcp://0.0.0.0:{port}").is_listening or any(
        s.endswith(f":{port}") for s in host_of(name).socket.get_listening_sockets()
    ), f"nothing listens on {port} on {name}"


@pytest.mark.parametrize("name", hosts("balancers"))
@pytest.mark.parametrize("port", [5000, 5001, 7000, 8405])
def test_balancer_ports_listening(host_of, name, port):
    sockets = host_of(name).socket.get_listening_sockets()
    assert host_of(name).socket(f"tcp://0.0.0.0:{port}").is_listening or any(
        s.endswith(f":{port}") for s in sockets
    ), f"nothing listens on {port} on {name}"  # 8405 binds *; the node exporter binds the node's address


@pytest.mark.parametrize(
    "name,path,owner",
    [(h, "/etc/patroni/patroni.yml", "postgres") for h in hosts("postgres_cluster")]
    + [(h, "/etc/haproxy/haproxy.cfg", "root") for h in hosts("balancers")]
    + [(h, "/etc/keepalived/keepalived.conf", "root") for h in hosts("balancers") + hosts("postgres_cluster")],
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
    # careflow_postgresql_tls: every TCP line is hostssl, so a plain-text TCP connection matches none.
    tcp = "hostssl" if inventory_vars(LAB_INVENTORY).get("careflow_postgresql_tls") else "host"
    # The superuser over TCP: rejected from any address, plain or TLS, before any line that accepts a login.
    rejects = [["host", "all", "postgres", "0.0.0.0/0", "reject"], ["host", "all", "postgres", "::/0", "reject"]]
    accepting = [i for i, rule in enumerate(rules) if rule[0] != "local" and rule[-1] != "reject"]
    assert all(r in rules and rules.index(r) < min(accepting) for r in rejects), (
        f"the superuser's TCP reject lines are missing on {name}, or come after a line that accepts")
    for rule in rules:
        assert "trust" not in rule, f"trust rule on {name}: {' '.join(rule)}"
        if rule in rejects:
            continue
        if rule[0] == "local":
            assert rule[1:] in (
                ["all", "postgres", "peer"],
                ["all", "careflow_monitor", "peer", "map=careflow_monitor"],  # the metrics exporter (pg_monitor)
                ["replication", "replicator", "scram-sha-256"],
            ), (
                f"unexpected local rule: {' '.join(rule)}"
            )
        elif rule[4] == "md5":
            # PgBouncer's auth_query login only, only from a balancer, only to the EMR database (docs/pooling.md)
            balancer_ips = {f"{host_vars()[b]['careflow_node_ip']}/32" for b in hosts("balancers")}
            assert rule[:3] == [tcp, "careflow", "pgbouncer_auth"] and rule[3] in balancer_ips, " ".join(rule)
        else:
            assert rule[0] == tcp and rule[3] == "192.168.56.0/24" and rule[4] == "scram-sha-256", " ".join(rule)


# --- Certificates (the tls role): the same files, owners and modes whichever tool installed them ---------------

# Read once, at collection: which accounts get a key copy on which host (no secret is needed for that).
_TLS = load_inventory(LAB_INVENTORY, {})
_TLS_DIR = "/etc/careflow/tls"


def _control_file(name: str) -> bytes:
    """A file of the control host's careflow_tls_dir (the lab CA's output the hosts got their copies from)."""
    return (Path(str(_TLS.hostvars[hosts()[0]]["careflow_tls_dir"])) / name).read_bytes()


@pytest.mark.parametrize("name", hosts())
def test_every_host_has_the_ca_and_its_own_certificate_naming_its_address(host_of, name):
    h = host_of(name)
    for path in (f"{_TLS_DIR}/ca.crt", f"{_TLS_DIR}/{name}.crt"):
        f = h.file(path)
        assert f.exists and f.user == "root" and f.mode == 0o644, f"{path} on {name}"
    ca_pem = h.file(f"{_TLS_DIR}/ca.crt").content
    assert ca_pem == _control_file("ca.crt"), f"{name} has another CA certificate than the control host"
    ca, cert = (x509.load_pem_x509_certificate(pem) for pem in (ca_pem, h.file(f"{_TLS_DIR}/{name}.crt").content))
    assert issued_by(cert, ca), f"{name}'s certificate is not signed by the CA it was given"
    dns, ips = subject_alt_names(cert)
    assert name in dns and str(_TLS.hostvars[name]["careflow_node_ip"]) in ips


def test_prometheus_knows_when_every_hosts_certificates_end(cluster):
    """The installed CA and host certificates -> careflow-certificate-metrics -> node exporter -> Prometheus:
    the notAfter CareflowCertificateExpiresSoon reads is the control host's own file's, for every host."""
    got = {(labels["instance"], labels["file"]): value for labels, value in
           instant(cluster.prometheus_url, "careflow_certificate_not_after_timestamp_seconds")}
    expected = {}
    for h in hosts():
        for name in ("ca.crt", f"{h}.crt"):
            cert = x509.load_pem_x509_certificate(_control_file(name))
            expected[(h, f"{_TLS_DIR}/{name}")] = cert.not_valid_after_utc.timestamp()
    assert got == expected
    unread = instant(cluster.prometheus_url, "careflow_certificate_read_success == 0")
    assert unread == [], unread


@pytest.mark.parametrize(
    ("name", "account"), [(h, a) for h in hosts() for a in _TLS.hostvars[h]["__tls_key_accounts"]]
)
def test_each_service_account_has_its_own_private_key_copy(host_of, name, account):
    h = host_of(name)
    directory, key = h.file(f"{_TLS_DIR}/{account}"), h.file(f"{_TLS_DIR}/{account}/{name}.key")
    assert directory.is_directory and (directory.user, directory.group, directory.mode) == ("root", account, 0o750)
    assert key.exists and (key.user, key.group, key.mode) == (account, account, 0o600), f"{key.path} on {name}"
    # Compared by digest: a failed assert must never print a private key.
    remote = h.check_output(f"sha256sum {key.path}").split()[0]
    assert remote == hashlib.sha256(_control_file(f"{name}.key")).hexdigest(), f"{key.path} is not {name}'s key"


@pytest.mark.parametrize("name", [h for h in hosts() if len(_TLS.hostvars[h]["__tls_key_accounts"]) > 1])
def test_a_service_account_cannot_read_another_accounts_key(host_of, name):
    h = host_of(name)
    accounts = _TLS.hostvars[name]["__tls_key_accounts"]
    for reader in accounts:
        for owner in accounts:
            readable = h.run(f"runuser -u {reader} -- test -r {_TLS_DIR}/{owner}/{name}.key").rc == 0
            assert readable == (reader == owner), f"{reader} reading {owner}'s key on {name}"
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
    + [(h, "/etc/pgbouncer/careflow-stats.pgpass", 0o600, "root") for h in hosts("balancers")]
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
    # Only verifiers in the auth file: md5 for the auth_query login, SCRAM for the admin and the stats user.
    users = h.file("/etc/pgbouncer/careflow-users.txt").content_string.splitlines()
    assert [line.split()[0] for line in users] == ['"pgbouncer_auth"', '"pgbouncer_admin"', '"pgbouncer_stats"']
    assert all(line.split()[1].startswith(('"md5', '"SCRAM-SHA-256$')) for line in users)
