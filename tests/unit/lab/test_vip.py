"""The client VIP and the other ways in: one source (the inventory), clients use the VIP by default, ``--via``
routes them another way, and who holds a VIP is read correctly."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from careflow_ha.errors import UsageError
from careflow_ha.lab.vip import holds, vip_holders
from careflow_ha.provision import LAB_INVENTORY
from careflow_ha.provision.inventory import load_inventory
from careflow_ha.settings import PROJECT_DIR, SECRET_KEYS, WAYS_IN, configured_routing, configured_vip, load_settings

SECRETS = {key: f"{key.lower()}-s3cr3t-value" for key in SECRET_KEYS}
IP_ADDR_LB = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth0    inet 192.168.56.10/24 brd 192.168.56.255 scope global eth0\\       valid_lft forever
2: eth0    inet 192.168.56.100/24 scope global secondary eth0\\       valid_lft forever preferred_lft forever
"""


@pytest.mark.parametrize(
    "output,vip,expected",
    [
        (IP_ADDR_LB, "192.168.56.100", True),
        (IP_ADDR_LB, "192.168.56.10", True),  # the node's own address is an address too
        (IP_ADDR_LB, "192.168.56.1", False),  # a prefix of another address is not it
        (IP_ADDR_LB.replace("192.168.56.100/24", "192.168.56.101/24"), "192.168.56.100", False),
        ("", "192.168.56.100", False),  # no output: holds nothing
    ],
)
def test_holds_reads_ip_addr_output(output, vip, expected):
    assert holds(output, vip) is expected


class FakeEngine:
    def __init__(self, outputs: dict[str, tuple[int, str]]) -> None:
        self.outputs = outputs

    def exec(self, node, argv, **kw):
        rc, out = self.outputs[node]
        return subprocess.CompletedProcess(argv, rc, out, "")


@pytest.mark.parametrize(
    "outputs,expected",
    [
        ({"lb1": (0, IP_ADDR_LB), "lb2": (0, "")}, ("lb1",)),
        ({"lb1": (0, IP_ADDR_LB), "lb2": (0, IP_ADDR_LB)}, ("lb1", "lb2")),  # both: a split the checks must see
        ({"lb1": (125, IP_ADDR_LB), "lb2": (0, "")}, ()),  # a stopped container holds nothing
    ],
)
def test_vip_holders_asks_every_balancer(outputs, expected):
    assert vip_holders(FakeEngine(outputs), ["lb1", "lb2"], "192.168.56.100") == expected


def test_the_vip_for_clients_is_the_one_keepalived_gets():
    """One source: what the clients use is what the inventory resolves for the balancers."""
    vip = configured_vip(LAB_INVENTORY, {})
    inv = load_inventory(LAB_INVENTORY, SECRETS)
    for lb in inv.group("balancers"):
        assert vip is not None and vip.address == inv.hostvars[lb]["careflow_vip"]
        assert vip.ports["CAREFLOW_RW_PORT"] == inv.hostvars[lb]["careflow_haproxy_rw_port"]
        assert vip.ports["CAREFLOW_RO_PORT"] == inv.hostvars[lb]["careflow_haproxy_ro_port"]


@pytest.mark.parametrize(
    "all_vars,environ,expected",
    [
        ({}, {}, "192.168.56.100"),  # group_vars
        ({"careflow_vip": "192.168.56.200"}, {}, "192.168.56.200"),  # the inventory's all.vars win
        ({"careflow_vip": ""}, {}, None),  # VIP off
        ({}, {"CAREFLOW_USE_VIP": "0"}, None),  # a host without a route into the lab network
    ],
)
def test_configured_vip_follows_ansible_precedence(tmp_path, all_vars, environ, expected):
    inv = yaml.safe_load(LAB_INVENTORY.read_text())
    inv["all"]["vars"].update(all_vars)
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text((LAB_INVENTORY.parent / "group_vars" / "all.yml").read_text())
    path = tmp_path / "lab.yml"
    path.write_text(yaml.safe_dump(inv))
    vip = configured_vip(path, environ)
    assert (vip.address if vip else None) == expected


def test_client_dsns_use_the_vip_on_haproxy_s_own_ports(tmp_path):
    (tmp_path / "inventory").symlink_to(PROJECT_DIR / "inventory")
    settings = load_settings(tmp_path, overrides={"CAREFLOW_RW_PORT": 15000}, environ={})
    assert settings.endpoint("rw") == ("192.168.56.100", 5000)  # not the published 15000
    assert settings.endpoint("ro") == ("192.168.56.100", 5001)
    assert "@192.168.56.100:5000/" in settings.dsn("rw", "app")
    assert settings.redacted_dsn("ro", "ro") == (
        "postgresql://careflow_ro:***@192.168.56.100:5001/careflow?connect_timeout=5&application_name=careflow-ha"
        f"&sslmode=verify-full&sslrootcert={tmp_path}/.lab/ca/ca.crt"  # the lab CA (careflow_postgresql_tls)
    )
    assert "@127.0.0.1:" in settings.node_dsn("pg1")  # drills still reach each node directly
    assert settings.node_dsn("pg1").startswith("postgresql://careflow_admin:")  # never the superuser
    off = load_settings(tmp_path, overrides={"CAREFLOW_RW_PORT": 15000}, environ={"CAREFLOW_USE_VIP": "0"})
    assert off.endpoint("rw") == ("127.0.0.1", 15000)


def _lab_settings(tmp_path):
    (tmp_path / "inventory").symlink_to(PROJECT_DIR / "inventory")
    return load_settings(tmp_path, environ={})


def test_libpq_multihost_lists_every_node_and_lets_libpq_pick(tmp_path):
    settings = _lab_settings(tmp_path)
    assert settings.routing.available() == ("haproxy-vip", "leader-vip", "libpq-multihost", "pgbouncer")
    multi = settings.with_via("libpq-multihost")
    rw, ro = multi.dsn("rw", "app"), multi.dsn("ro", "ro")
    app = settings.password("app")
    assert rw.startswith(
        f"postgresql://careflow_app:{app}@192.168.56.11:5432,192.168.56.12:5432,192.168.56.13:5432/careflow?"
    )
    assert "target_session_attrs=read-write" in rw and "load_balance_hosts=random" in rw
    assert "target_session_attrs=prefer-standby" in ro
    for s in (settings, multi):
        for endpoint, role in (("rw", "app"), ("ro", "ro")):
            red = s.redacted_dsn(endpoint, role)
            assert s.password(role) not in red and red == s.dsn(endpoint, role).replace(s.password(role), "***")
    assert settings.with_via(None) is settings and multi.with_via("haproxy-vip").dsn("rw") == settings.dsn("rw")


def test_leader_vip_writes_to_postgresql_on_the_vip_and_reads_through_haproxy(tmp_path):
    settings = _lab_settings(tmp_path)
    leader = settings.with_via("leader-vip")
    app = settings.password("app")
    assert leader.dsn("rw", "app").startswith(f"postgresql://careflow_app:{app}@192.168.56.101:5432/careflow?")
    assert leader.dsn("ro", "ro") == settings.dsn("ro", "ro")  # HAProxy's 5001 on the client VIP
    assert app not in leader.redacted_dsn("rw", "app")


def test_via_an_unknown_or_unprovisioned_way_names_the_available_ones(tmp_path):
    settings = _lab_settings(tmp_path)
    with pytest.raises(UsageError, match=r"^--via 'pgpool' is unknown; use one of haproxy-vip, leader-vip, "
                                         r"libpq-multihost, pgbouncer$"):
        settings.with_via("pgpool")
    (tmp_path / "inventory").unlink()
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "lab.yml").write_text((PROJECT_DIR / "inventory" / "lab.yml").read_text())
    gv = (PROJECT_DIR / "inventory" / "group_vars" / "all.yml").read_text()
    (tmp_path / "inventory" / "group_vars").mkdir()
    (tmp_path / "inventory" / "group_vars" / "all.yml").write_text(
        gv.replace("careflow_leader_vip: 192.168.56.101", 'careflow_leader_vip: ""'))
    off = load_settings(tmp_path, environ={})
    with pytest.raises(UsageError, match=r'^--via leader-vip is not provisioned \(careflow_leader_vip is "" in the '
                                         r'inventory\); use one of haproxy-vip, libpq-multihost, pgbouncer$'):
        off.with_via("leader-vip")
    assert set(WAYS_IN) == {"haproxy-vip", "leader-vip", "libpq-multihost", "pgbouncer"}


def test_pgbouncer_routes_through_the_poolers_on_the_vip_or_the_first_balancer(tmp_path):
    settings = _lab_settings(tmp_path)
    pooled = settings.with_via("pgbouncer")
    app = settings.password("app")
    assert pooled.dsn("rw", "app").startswith(f"postgresql://careflow_app:{app}@192.168.56.100:6432/careflow?")
    assert pooled.dsn("ro", "ro").startswith(f"postgresql://careflow_ro:{settings.password('ro')}@192.168.56.100:6433/")
    no_vip = load_settings(tmp_path, environ={"CAREFLOW_USE_VIP": "0"}).with_via("pgbouncer")
    assert "@192.168.56.10:6432/" in no_vip.dsn("rw", "app")  # lb1's own address
    assert app not in pooled.redacted_dsn("rw", "app")
    from careflow_ha.dsn import through_pooler

    assert through_pooler(pooled.dsn("rw")) and not through_pooler(settings.dsn("rw"))
    # The admin role's work (probe tables, read-backs, statistics) keeps to HAProxy's 5000: the pooler under test
    # is not also the tool that observes it.
    assert pooled.dsn("rw", "admin") == settings.dsn("rw", "admin")
    assert "@192.168.56.100:5000/" in pooled.dsn("rw", "admin")


def test_routing_reads_the_balancers_and_pooler_ports_from_the_inventory():
    routing = configured_routing(LAB_INVENTORY)
    inv = load_inventory(LAB_INVENTORY, SECRETS)
    assert dict(routing.balancer_ips) == {h: inv.hostvars[h]["careflow_node_ip"] for h in inv.group("balancers")}
    assert routing.pooler_ports == (inv.hostvars["lb1"]["careflow_pgbouncer_rw_port"],
                                    inv.hostvars["lb1"]["careflow_pgbouncer_ro_port"])
    assert routing.pooler_admin_user == inv.hostvars["lb1"]["careflow_pgbouncer_admin_user"]
    assert routing.haproxy_rw_port == inv.hostvars["lb1"]["careflow_haproxy_rw_port"]


def test_routing_reads_the_database_nodes_addresses_from_the_inventory():
    routing = configured_routing(LAB_INVENTORY)
    inv = load_inventory(LAB_INVENTORY, SECRETS)
    assert dict(routing.node_ips) == {h: inv.hostvars[h]["careflow_node_ip"] for h in inv.group("postgres_cluster")}
    assert routing.pg_port == inv.hostvars["pg1"]["careflow_pg_port"]
