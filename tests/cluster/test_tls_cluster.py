"""TLS on PostgreSQL and PgBouncer (issue 15, careflow_postgresql_tls): what is encrypted, and what must fail.

Each negative case is a connection that must be refused: plain text to PostgreSQL and to PgBouncer, and
verify-full against a name the certificate does not carry or with another CA.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from careflow_ha.cluster.patroni import PatroniApi
from careflow_ha.dsn import pooler_safe
from careflow_ha.settings import Settings
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
