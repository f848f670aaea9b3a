"""One topology: the compose file, the lab inventory, the Vagrant inventory and the code agree."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from careflow_ha.settings import LAB_NODES, PORT_DEFAULTS, PROJECT_DIR
from tests.inventory import groups, host_vars

COMPOSE = yaml.safe_load((PROJECT_DIR / "docker-compose.yml").read_text())
VAGRANT_INV = PROJECT_DIR / "inventory" / "vagrant.yml"
GROUPS = {"etcd_cluster", "postgres_cluster", "balancers"}


def test_inventory_has_the_production_groups_and_the_code_s_hosts():
    g = groups()
    assert set(g) == GROUPS
    assert sorted(h for members in g.values() for h in members) == sorted(
        ["pg1", "pg2", "pg3", "pg1", "pg2", "pg3", "lb1", "lb2"]
    )
    assert set(host_vars()) == set(LAB_NODES)


def test_compose_services_match_inventory_names_and_addresses():
    services = COMPOSE["services"]
    assert set(services) == set(LAB_NODES)
    for host, hv in host_vars().items():
        svc = services[host]
        assert svc["hostname"] == host
        assert svc["container_name"] == f"careflow-{host}"
        assert svc["networks"]["careflow"]["ipv4_address"] == hv["careflow_node_ip"]


def test_compose_subnet_is_the_cluster_network_pg_hba_allows():
    group_vars = yaml.safe_load((PROJECT_DIR / "inventory" / "group_vars" / "all.yml").read_text())
    subnet = COMPOSE["networks"]["careflow"]["ipam"]["config"][0]["subnet"]
    assert subnet == group_vars["careflow_cluster_network"]


def test_compose_port_defaults_match_the_code():
    published = {}
    for svc in COMPOSE["services"].values():
        for mapping in svc.get("ports", []):
            match = re.fullmatch(r"127\.0\.0\.1:\$\{(\w+):-(\d+)\}:(\d+)", mapping)
            assert match, f"port {mapping!r} must be 127.0.0.1-only with an overridable default"
            published[match[1]] = int(match[2])
    assert published == dict(PORT_DEFAULTS)


def test_vagrant_inventory_agrees_with_the_lab_inventory():
    lab, vagrant = groups(), groups(VAGRANT_INV)
    assert vagrant == lab
    vagrant_vars = host_vars(VAGRANT_INV)
    for host, hv in host_vars().items():
        assert vagrant_vars[host]["careflow_node_ip"] == hv["careflow_node_ip"]
        assert vagrant_vars[host]["ansible_host"] == hv["careflow_node_ip"]


def test_vagrantfile_reads_names_addresses_and_groups_from_the_lab_inventory():
    text = (PROJECT_DIR / "Vagrantfile").read_text()
    assert 'File.join(__dir__, "inventory", "lab.yml")' in text
    assert 'vars.fetch("careflow_node_ip")' in text
    assert 'ansible.inventory_path = "inventory/vagrant.yml"' in text
    assert 'ansible.playbook = "site.yml"' in text


def test_production_example_uses_the_same_groups():
    prod = groups(Path(PROJECT_DIR / "inventory" / "production.example.yml"))
    assert set(prod) == GROUPS
    assert len(prod["etcd_cluster"]) % 2 == 1
