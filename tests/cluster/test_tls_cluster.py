"""TLS on PostgreSQL, PgBouncer and etcd (issue 15: careflow_postgresql_tls, careflow_etcd_tls): what is
encrypted, and what must fail.

Each negative case is a connection that must be refused: plain text to PostgreSQL and to PgBouncer, verify-full
against a name the certificate does not carry or with another CA, the superuser over TCP (from the control host
through HAProxy and straight to a node, and from a balancer), and an etcd client without a certificate from the
CA (from the control host, from a balancer, and etcdctl on a member), or in plain text. Each has a twin that
succeeds the same way, so a refusal is the rule's, not the network's.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from careflow_ha.cluster.patroni import PatroniApi
from careflow_ha.dsn import pooler_safe
from careflow_ha.settings import DB_NAME as DB
from careflow_ha.settings import ROLE_NAMES, Settings
from tests.inventory import host_vars, hosts

pytestmark = pytest.mark.cluster


def _with(dsn: str, **changes: str | None) -> str:
    params = {**conninfo_to_dict(dsn), **changes}
    return make_conninfo(**{k: v for k, v in params.items() if v is not None})


def _refused(dsn: str) -> str:
    """The first line of the error a connection to ``dsn`` must end in."""
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(dsn, connect_timeout=5, **pooler_safe(dsn, {})).close()
    return str(caught.value).strip()


def test_the_lab_turns_tls_on(cluster: Settings) -> None:
    # Every test below is about TLS: with it off they would test nothing.
    assert cluster.routing.tls_params()["sslmode"] == "verify-full"
    assert "sslmode=verify-full" in cluster.dsn("rw", "app")


@pytest.mark.parametrize("endpoint", ["rw", "ro"])
def test_clients_through_haproxy_speak_tls_1_2_or_later(cluster: Settings, endpoint: str) -> None:
    with psycopg.connect(cluster.dsn(endpoint, "app" if endpoint == "rw" else "ro")) as conn:
        ssl, version = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert ssl is True and version in {"TLSv1.2", "TLSv1.3"}, version


def test_every_replica_streams_over_tls(cluster: Settings) -> None:
    leader = PatroniApi(cluster).cluster().leader
    with psycopg.connect(cluster.node_dsn(leader)) as conn:
        rows = conn.execute("SELECT r.application_name, s.ssl FROM pg_stat_replication r "
                            "JOIN pg_stat_ssl s ON s.pid = r.pid").fetchall()
    assert len(rows) == len(hosts("postgres_cluster")) - 1, rows
    assert all(ssl for _, ssl in rows), rows


def test_a_plain_text_connection_to_postgresql_is_refused(cluster: Settings) -> None:
    error = _refused(_with(cluster.node_dsn("pg1"), sslmode="disable", sslrootcert=None))
    assert "no pg_hba.conf entry" in error and "no encryption" in error, error


def test_verify_full_refuses_a_name_the_certificate_does_not_carry(cluster: Settings) -> None:
    # The published port of pg1, addressed by a name that is in no certificate.
    dsn = cluster.node_dsn("pg1")
    error = _refused(_with(dsn, host="not-in-the-certificate.invalid", hostaddr="127.0.0.1"))
    assert "does not match host name" in error, error


def test_another_ca_is_refused(cluster: Settings, tmp_path) -> None:
    from careflow_ha.lab.ca import ensure_lab_ca

    other = tmp_path / "other-ca"
    ensure_lab_ca(other, [])
    error = _refused(_with(cluster.node_dsn("pg1"), sslrootcert=str(other / "ca.crt")))
    assert "certificate verify failed" in error, error


@pytest.mark.parametrize("balancer", hosts("balancers"))
def test_pgbouncer_requires_tls_from_clients_and_serves_its_own_certificate(cluster: Settings,
                                                                            balancer: str) -> None:
    ip = host_vars()[balancer]["careflow_node_ip"]
    rw = cluster.dsn("rw", "app")
    pooled = _with(rw, host=ip, port="6432")
    with psycopg.connect(pooled, **pooler_safe(pooled, {"connect_timeout": 5})) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)
    error = _refused(_with(pooled, sslmode="disable", sslrootcert=None))
    assert "SSL required" in error, error


# --- The superuser: the local socket only (issue 15); the control host's tooling logs in as careflow_admin -------

#: How PostgreSQL words a pg_hba ``reject`` line's refusal (before any password is asked for).
HBA_REJECTS = "pg_hba.conf rejects connection"


def _as_superuser(dsn: str, cluster: Settings) -> str:
    """``dsn`` with the superuser's name and its right password: the refusal must not be a wrong password's."""
    return _with(dsn, user=ROLE_NAMES["superuser"], password=cluster.password("superuser"))


def _admin_paths(cluster: Settings) -> dict[str, str]:
    """The admin role's ways from the control host: HAProxy's read-write port (the VIP's, or the published
    127.0.0.1 one) and pg1's published port, straight to PostgreSQL."""
    return {"haproxy": cluster.dsn("rw", "admin", "postgres"), "node": cluster.node_dsn("pg1", "admin")}


@pytest.mark.parametrize("path", ["haproxy", "node"])
def test_the_admin_role_logs_in_over_tcp_from_the_control_host(cluster: Settings, path: str) -> None:
    # The positive twin of the next test: the same address, port and TLS settings, another role.
    with psycopg.connect(_admin_paths(cluster)[path], connect_timeout=5) as conn:
        row = conn.execute("SELECT current_user, rolsuper, pg_has_role(current_user, 'pg_monitor', 'USAGE') "
                           "FROM pg_roles WHERE rolname = current_user").fetchone()
        ssl = conn.pgconn.ssl_in_use
    assert row == (ROLE_NAMES["admin"], False, True) and ssl, (row, ssl)


@pytest.mark.parametrize("path", ["haproxy", "node"])
@pytest.mark.parametrize("sslmode", ["verify-full", "disable"])
def test_the_superuser_cannot_log_in_over_tcp_from_the_control_host(cluster: Settings, path: str,
                                                                   sslmode: str) -> None:
    # Over TLS or plain, with its right password: the reject line refuses it before authentication.
    dsn = _as_superuser(_admin_paths(cluster)[path], cluster)
    if sslmode == "disable":
        dsn = _with(dsn, sslmode="disable", sslrootcert=None)
    error = _refused(dsn)
    assert HBA_REJECTS in error and f'user "{ROLE_NAMES["superuser"]}"' in error, error


def test_the_superuser_cannot_log_in_over_tcp_from_a_lab_host_that_is_no_database_node(cluster: Settings,
                                                                                        host_of) -> None:
    # From a balancer (psql is there for PgBouncer's console) straight to each member, over verify-full TLS.
    # psql -w never asks for a password: the superuser is refused by pg_hba, while the admin role, asked the
    # same way, passes pg_hba and stops at authentication ("no password supplied"); no secret is needed for
    # either, so none travels to the balancer.
    balancer = host_of(hosts("balancers")[0])
    port = cluster.routing.pg_port
    for member in hosts("postgres_cluster"):
        ip = host_vars()[member]["careflow_node_ip"]

        def login(user: str, ip: str = ip):
            return balancer.run(
                f"psql -w 'host={ip} port={port} dbname=postgres user={user} sslmode=verify-full "
                "sslrootcert=/etc/careflow/tls/ca.crt connect_timeout=5' -tAXc 'SELECT 1'")

        refused = login(ROLE_NAMES["superuser"])
        assert refused.rc != 0 and HBA_REJECTS in refused.stderr, (member, refused.rc, refused.stderr)
        twin = login(ROLE_NAMES["admin"])
        assert twin.rc != 0 and "no password supplied" in twin.stderr and HBA_REJECTS not in twin.stderr, (
            member, twin.rc, twin.stderr)


def test_plain_text_and_a_wrong_name_are_refused_from_a_lab_host_that_is_no_database_node(cluster: Settings,
                                                                                         host_of) -> None:
    # From a balancer straight to each member, as the app role with psql -w (no secret travels): plain text is
    # refused by pg_hba (hostssl only), verify-full under a name the certificate does not carry fails the TLS
    # check; the twin, verify-full under the member's own address, passes both and stops at authentication.
    balancer = host_of(hosts("balancers")[0])
    port = cluster.routing.pg_port
    for member in hosts("postgres_cluster"):
        ip = host_vars()[member]["careflow_node_ip"]

        def login(params: str, ip: str = ip):
            return balancer.run(f"psql -w 'hostaddr={ip} port={port} dbname={DB} user={ROLE_NAMES['app']} "
                                f"sslrootcert=/etc/careflow/tls/ca.crt connect_timeout=5 {params}' -tAXc 'SELECT 1'")

        plain = login(f"host={ip} sslmode=disable")
        assert plain.rc != 0 and "no encryption" in plain.stderr, (member, plain.stderr)
        wrong = login("host=not-a-node.example sslmode=verify-full")
        assert wrong.rc != 0 and "does not match host name" in wrong.stderr, (member, wrong.stderr)
        twin = login(f"host={ip} sslmode=verify-full")
        assert twin.rc != 0 and "no password supplied" in twin.stderr, (member, twin.stderr)


@pytest.mark.parametrize("node", hosts("postgres_cluster"))
def test_the_superuser_still_logs_in_over_each_nodes_local_socket(cluster: Settings, host_of, node: str) -> None:
    # What Patroni, pgBackRest and provisioning rely on: peer as the postgres OS user, no password.
    out = host_of(node).run(f"runuser -u postgres -- psql -w -p {cluster.routing.pg_port} -d postgres -tAXc "
                            "'SELECT rolsuper FROM pg_roles WHERE rolname = current_user'")
    assert out.rc == 0 and out.stdout.strip() == "t", (out.rc, out.stderr)


# --- etcd (careflow_etcd_tls): TLS, and a certificate from the CA required of every client ---------------------

ETCD_CLIENT_PORT = 2379
ETCD_METRICS_PORT = 2381
#: Counts the keys under Patroni's namespace (the gRPC gateway's JSON: keys are base64).
_ETCD_COUNT = json.dumps({"key": base64.b64encode(b"/service/").decode(),
                          "range_end": base64.b64encode(b"/service0").decode(), "count_only": True})


def _etcd_count(ip: str, context: ssl.SSLContext | None) -> tuple[int, str]:
    """POST /v3/kv/range to a member's client port, over TLS with ``context`` (``None``: plain http)."""
    conn = (http.client.HTTPSConnection(ip, ETCD_CLIENT_PORT, context=context, timeout=5) if context
            else http.client.HTTPConnection(ip, ETCD_CLIENT_PORT, timeout=5))
    try:
        conn.request("POST", "/v3/kv/range", _ETCD_COUNT, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def _ca_context(cluster: Settings, client: str | None = None) -> ssl.SSLContext:
    from careflow_ha.lab.ca import CA_CERT

    tls_dir = Path(cluster.routing.pg_tls_root_cert).parent
    context = ssl.create_default_context(cafile=str(tls_dir / CA_CERT))
    if client:
        context.load_cert_chain(str(tls_dir / f"{client}.crt"), str(tls_dir / f"{client}.key"))
    return context


@pytest.mark.parametrize("member", hosts("etcd_cluster"))
def test_etcd_serves_only_clients_with_a_certificate_from_the_ca(cluster: Settings, member: str) -> None:
    from careflow_ha.lab.ca import CONTROL_CLIENT

    ip = host_vars()[member]["careflow_node_ip"]
    status, body = _etcd_count(ip, _ca_context(cluster, CONTROL_CLIENT))
    assert status == 200 and int(json.loads(body)["count"]) > 0, body  # Patroni's keys, read with a certificate
    with pytest.raises(OSError):  # the TLS alert "certificate required", or the connection closed
        _etcd_count(ip, _ca_context(cluster))
    with pytest.raises(OSError):  # plain http: etcd closes the connection without a reply
        _etcd_count(ip, None)


def test_etcd_refuses_a_lab_host_without_a_client_certificate(cluster: Settings, host_of) -> None:
    # From a balancer (not a database node, no etcd member), with the CA but no client certificate: refused.
    # The same request with the balancer's own certificate (from the CA) is served, so the refusal is the
    # missing certificate's, not the network's.
    balancer = hosts("balancers")[0]
    member_ip = host_vars()[hosts("etcd_cluster")[0]]["careflow_node_ip"]
    request = (f"curl -sS -m 5 --cacert /etc/careflow/tls/ca.crt -X POST "
               f"https://{member_ip}:{ETCD_CLIENT_PORT}/v3/kv/range -d '{_ETCD_COUNT}'")
    bare = host_of(balancer).run(request)
    assert bare.rc != 0 and '"count"' not in bare.stdout, (bare.rc, bare.stdout, bare.stderr)
    with_cert = host_of(balancer).run(
        f"{request} --cert /etc/careflow/tls/{balancer}.crt --key /etc/careflow/tls/haproxy/{balancer}.key")
    assert with_cert.rc == 0 and '"count"' in with_cert.stdout, (with_cert.rc, with_cert.stderr)


@pytest.mark.parametrize("member", hosts("etcd_cluster"))
def test_etcdctl_on_a_member_uses_its_certificate_and_fails_without(host_of, member: str) -> None:
    node = host_of(member)
    health = node.run("bash -lc 'etcdctl endpoint health --cluster'")
    said = health.stdout + health.stderr  # etcdctl prints its health report on stderr
    assert health.rc == 0 and said.count("is healthy") == len(hosts("etcd_cluster")), said
    # The same member's etcdctl with its CA but without the client certificate.
    bare = node.run(f"env -u ETCDCTL_CERT -u ETCDCTL_KEY ETCDCTL_API=3 etcdctl --cacert /etc/careflow/tls/ca.crt "
                    f"--endpoints https://127.0.0.1:{ETCD_CLIENT_PORT} --dial-timeout 3s --command-timeout 5s "
                    "get --prefix --keys-only /service/")
    assert bare.rc != 0 and "/service/" not in bare.stdout, (bare.rc, bare.stdout, bare.stderr)


@pytest.mark.parametrize("member", hosts("etcd_cluster"))
def test_etcd_metrics_stay_plain_http_and_serve_no_keys(member: str) -> None:
    ip = host_vars()[member]["careflow_node_ip"]
    conn = http.client.HTTPConnection(ip, ETCD_METRICS_PORT, timeout=5)
    try:
        conn.request("GET", "/metrics")
        metrics = conn.getresponse()
        assert metrics.status == 200 and b"etcd_server_has_leader 1" in metrics.read()
        conn.request("POST", "/v3/kv/range", _ETCD_COUNT, {"Content-Type": "application/json"})
        keys = conn.getresponse()
        assert keys.status == 404, keys.status
        keys.read()
    finally:
        conn.close()


# --- Patroni's REST API (careflow_patroni_api_tls, careflow_patroni_api_allowlist) -------------------------------


def _api_request(cluster: Settings, node: str, method: str, path: str, context: ssl.SSLContext | None,
                 body: str | None = None) -> int:
    """One request to a node's published API port, without credentials; its HTTP status."""
    port = cluster.node_port(node, "API")
    conn = (http.client.HTTPSConnection(cluster.host, port, context=context, timeout=5) if context
            else http.client.HTTPConnection(cluster.host, port, timeout=5))
    try:
        conn.request(method, path, body, {"Content-Type": "application/json"} if body is not None else {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_the_rest_api_speaks_https_only(cluster: Settings) -> None:
    assert PatroniApi(cluster).url("pg1", "/health").startswith("https://")
    assert _api_request(cluster, "pg1", "GET", "/health", _ca_context(cluster)) == 200
    with pytest.raises(OSError):  # the TLS server drops a plain-text request
        _api_request(cluster, "pg1", "GET", "/health", None)


@pytest.mark.parametrize(("method", "path"), [("PATCH", "/config"), ("POST", "/switchover")])
def test_unsafe_rest_endpoints_refuse_a_request_without_credentials(cluster: Settings, method: str,
                                                                    path: str) -> None:
    # An empty body: had it been let in, PATCH {} changes nothing and the switchover is refused (400).
    assert _api_request(cluster, "pg1", method, path, _ca_context(cluster), "{}") == 401


@pytest.mark.parametrize(("method", "path"), [("PATCH", "/config"), ("POST", "/switchover")])
def test_unsafe_rest_endpoints_refuse_a_lab_host_that_is_no_database_node_without_credentials(
        host_of, method: str, path: str) -> None:
    # lb1 is inside the allowlist (the cluster network), so it reaches the credential check: 401. The twin, a
    # safe GET from the same host, is served: the refusal is the credentials', not the network's.
    balancer = host_of(hosts("balancers")[0])
    ip = host_vars()["pg1"]["careflow_node_ip"]
    curl = f"curl -s -o /dev/null -w '%{{http_code}}' -m 5 --cacert /etc/careflow/tls/ca.crt --resolve pg1:8008:{ip}"
    out = balancer.run(f"{curl} -X {method} -d '{{}}' https://pg1:8008{path}")
    assert out.stdout.strip() == "401", (out.stdout, out.stderr)
    served = balancer.run(f"{curl} https://pg1:8008/patroni")
    assert served.stdout.strip() == "200", (served.stdout, served.stderr)


@pytest.mark.parametrize(("source", "status"), [("node_ip", 401), ("127.0.0.1", 403)])
def test_unsafe_rest_endpoints_refuse_a_source_outside_the_allowlist(host_of, source: str, status: int) -> None:
    # On pg1, the same request to its own API: from its cluster address it reaches the credential check (401);
    # from loopback, which is neither in careflow_patroni_api_allowlist nor a member's address, it is denied
    # before that (403).
    node_ip = host_vars()["pg1"]["careflow_node_ip"]
    address = node_ip if source == "node_ip" else source
    out = host_of("pg1").run(
        "curl -s -o /dev/null -w '%{http_code}' -m 5 --cacert /etc/careflow/tls/ca.crt -X PATCH -d '{}' "
        f"--resolve pg1:8008:{address} https://pg1:8008/config")
    assert out.stdout.strip() == str(status), (out.stdout, out.stderr)


@pytest.mark.parametrize("node", hosts("postgres_cluster"))
def test_patronictl_on_a_node_lists_the_cluster_over_https(host_of, node: str) -> None:
    # patronictl reads the DCS with the node's etcd client certificate and asks the members over https.
    out = host_of(node).run("patronictl -c /etc/patroni/patroni.yml list --format json")
    assert out.rc == 0, out.stderr
    members = json.loads(out.stdout)
    assert sorted(m["Member"] for m in members) == sorted(hosts("postgres_cluster")), members
    assert sum(m["Role"] == "Leader" for m in members) == 1, members


# --- HAProxy's stats page (careflow_haproxy_stats_tls) ------------------------------------------------------------


@pytest.mark.parametrize("balancer", hosts("balancers"))
def test_haproxy_stats_speak_https_only_with_the_balancers_certificate(cluster: Settings, balancer: str) -> None:
    from careflow_ha.cluster.health import haproxy_backends

    ip = host_vars()[balancer]["careflow_node_ip"]
    port = cluster.routing.haproxy_stats_port
    servers = haproxy_backends(cluster, host=ip, port=port)  # https, verified against the lab CA
    assert {b.server for b in servers} == set(hosts("postgres_cluster")), servers
    conn = http.client.HTTPSConnection(ip, port, context=_ca_context(cluster), timeout=5)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        assert response.status == 401  # the page still wants its credentials
        assert (("commonName", balancer),) in conn.sock.getpeercert()["subject"]
    finally:
        conn.close()
    with pytest.raises(OSError):  # plain http: HAProxy's TLS listener drops it
        plain = http.client.HTTPConnection(ip, port, timeout=5)
        try:
            plain.request("GET", "/")
            plain.getresponse()
        finally:
            plain.close()
