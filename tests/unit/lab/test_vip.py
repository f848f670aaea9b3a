"""The client VIP: one source (the inventory), clients use it by default, and who holds it is read correctly."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from careflow_ha.lab.vip import holds, vip_holders
from careflow_ha.provision import LAB_INVENTORY
from careflow_ha.provision.inventory import load_inventory
from careflow_ha.settings import PROJECT_DIR, SECRET_KEYS, configured_vip, load_settings

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
    assert settings.redacted_dsn("ro", "ro") == "postgresql://careflow_ro:***@192.168.56.100:5001/careflow"
    assert "@127.0.0.1:" in settings.node_dsn("pg1")  # drills still reach each node directly
    off = load_settings(tmp_path, overrides={"CAREFLOW_RW_PORT": 15000}, environ={"CAREFLOW_USE_VIP": "0"})
    assert off.endpoint("rw") == ("127.0.0.1", 15000)
