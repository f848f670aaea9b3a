"""Who may log in to PostgreSQL, as patroni.yml.j2's pg_hba says (issue 15): the superuser over the local socket
only, never over TCP (plain or TLS, from any address); the admin role and the application roles over TCP from
the cluster network. pg_hba is read top-down, first match wins, so a small evaluator of the rendered lines
answers each question the way PostgreSQL would (no network)."""

from __future__ import annotations

import ipaddress
import re

import pytest
import yaml

from careflow_ha.data.db import PREPARED_VERSION_SQL, prepare_sql
from careflow_ha.provision import LAB_INVENTORY
from careflow_ha.provision.inventory import ROLES_DIR, load_inventory
from careflow_ha.pyinfra_deploys.ops import DATABASE_COMMENT
from careflow_ha.settings import ROLE_NAMES
from tests.unit.provision.test_inventory import SECRETS

SUPERUSER, ADMIN, APP = ROLE_NAMES["superuser"], ROLE_NAMES["admin"], ROLE_NAMES["app"]
TCP_TYPES = ("host", "hostssl", "hostnossl")


def _hba(tls: bool) -> list[str]:
    lab = load_inventory(LAB_INVENTORY, SECRETS, {"careflow_postgresql_tls": tls})
    return yaml.safe_load(lab.render_template("patroni", "patroni.yml.j2", "pg1"))["postgresql"]["pg_hba"]


def _first_match(hba: list[str], *, user: str, database: str, address: str | None, ssl: bool) -> str | None:
    """The method of the first line matching a login (``address`` None: the local socket), or None (no entry:
    refused too)."""
    for line in hba:
        kind, db, role, *rest = line.split()
        if address is None:
            if kind != "local":
                continue
            method = rest[0]
        else:
            if kind not in TCP_TYPES or (kind == "hostssl" and not ssl) or (kind == "hostnossl" and ssl):
                continue
            if ipaddress.ip_address(address) not in ipaddress.ip_network(rest[0], strict=False):
                continue
            method = rest[1]
        # The keyword all matches every database but replication (PostgreSQL's rule).
        db_ok = db == database or (db == "all" and database != "replication")
        if db_ok and role in ("all", user):
            return method
    return None


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain-inventory"])
@pytest.mark.parametrize("address", ["192.168.56.10", "192.168.56.1", "127.0.0.1", "10.9.8.7", "::1"])
@pytest.mark.parametrize("ssl", [True, False], ids=["ssl", "no-ssl"])
@pytest.mark.parametrize("database", ["careflow", "postgres", "replication"])
def test_the_superuser_never_logs_in_over_tcp(tls, address, ssl, database):
    # From a balancer, the host, loopback, outside the network; over TLS or not; to any database.
    assert _first_match(_hba(tls), user=SUPERUSER, database=database, address=address, ssl=ssl) in ("reject", None)


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain-inventory"])
def test_the_superuser_is_rejected_before_any_tcp_line_could_accept_it(tls):
    hba = _hba(tls)
    tcp = [i for i, line in enumerate(hba) if line.split()[0] in TCP_TYPES]
    rejects = [i for i in tcp if hba[i].split()[2] == SUPERUSER and hba[i].endswith(" reject")]
    assert [hba[i] for i in rejects] == [f"host all {SUPERUSER} 0.0.0.0/0 reject", f"host all {SUPERUSER} ::/0 reject"]
    assert all(i > max(rejects) for i in tcp if i not in rejects), hba


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain-inventory"])
def test_the_superuser_keeps_its_local_socket_login(tls):
    # Patroni, pgBackRest and provisioning connect as the postgres OS user over the socket.
    assert _first_match(_hba(tls), user=SUPERUSER, database="postgres", address=None, ssl=False) == "peer"


@pytest.mark.parametrize("user", [ADMIN, APP])
def test_the_admin_and_app_roles_log_in_over_tls_from_the_cluster_network_only(user):
    hba = _hba(True)
    assert _first_match(hba, user=user, database="careflow", address="192.168.56.10", ssl=True) == "scram-sha-256"
    assert _first_match(hba, user=user, database="careflow", address="192.168.56.10", ssl=False) is None
    assert _first_match(hba, user=user, database="careflow", address="10.9.8.7", ssl=True) is None


def test_prepare_database_runs_the_file_provisioning_applies():
    # One source: the SQL prepare_database renders for the lab's names is the SQL Ansible renders for the primary.
    lab = load_inventory(LAB_INVENTORY, SECRETS)
    ansible = lab.render_template("patroni", "emr-prepare.sql.j2", "pg1")
    ours = prepare_sql()
    assert ours.split("\n", 1)[1] == ansible.split("\n", 1)[1]  # all but the first line (ansible_managed)
    assert f"IS '{lab.hostvars['pg1']['__patroni_emr_prepare_version']}'" in ours


def test_every_reader_of_the_preparation_mark_asks_the_same_query():
    tasks = yaml.safe_load((ROLES_DIR / "patroni" / "tasks" / "roles.yml").read_text())
    task = next(t for t in tasks if t["name"] == "Read which preparation the EMR database has")
    ansible = task["community.postgresql.postgresql_query"]["query"]
    normal = [re.sub(r"\s+", " ", q.replace("AS version", "")).replace("( ", "(").strip()
              for q in (ansible, DATABASE_COMMENT, PREPARED_VERSION_SQL)]
    assert normal[0] == normal[1] == normal[2], normal
