"""One topology: the compose file, the lab inventory, the Vagrant inventory and the code agree."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from careflow_ha.settings import LAB_NODES, PORT_DEFAULTS, PROJECT_DIR
from tests.inventory import groups, host_vars

COMPOSE = yaml.safe_load((PROJECT_DIR / "docker-compose.yml").read_text())
VAGRANT_INV = PROJECT_DIR / "inventory" / "vagrant.yml"
GROUPS = {"etcd_cluster", "postgres_cluster", "balancers", "monitoring", "backup_repository"}


def test_inventory_has_the_production_groups_and_the_code_s_hosts():
    g = groups()
    assert set(g) == GROUPS
    assert sorted(h for members in g.values() for h in members) == sorted(
        ["pg1", "pg2", "pg3", "pg1", "pg2", "pg3", "lb1", "lb2", "mon1", "backup1"]
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


def test_the_monitoring_host_keeps_its_tsdb_and_publishes_prometheus_on_loopback_only():
    mon1 = COMPOSE["services"]["mon1"]
    assert "mon1-prometheus:/var/lib/prometheus" in mon1["volumes"] and "mon1-prometheus" in COMPOSE["volumes"]
    prometheus_port = yaml.safe_load((PROJECT_DIR / "roles" / "prometheus" / "defaults" / "main.yml").read_text())[
        "prometheus_port"]
    assert "127.0.0.1:${CAREFLOW_MON1_PROM_PORT:-9090}:" + str(prometheus_port) in mon1["ports"]
    assert host_vars()["mon1"]["careflow_node_ip"] == "192.168.56.40"


def test_every_lab_host_is_in_the_ssh_config_on_its_own_port(tmp_path):
    from careflow_ha.lab.ssh import write_ssh_config
    from careflow_ha.settings import load_settings

    settings = load_settings(tmp_path, environ={"CAREFLOW_MON1_SSH_PORT": "2299"})
    (tmp_path / ".lab").mkdir()
    text = write_ssh_config(settings).read_text()
    blocks = {b.split()[1]: b for b in text.split("\n\n") if b.startswith("Host ")}
    assert set(blocks) == set(LAB_NODES) and "mon1" in blocks
    assert "Port 2299" in blocks["mon1"]
    assert {next(ln.split()[1] for ln in b.splitlines() if "Port " in ln) for b in blocks.values()} == {
        str(settings.node_port(n, "SSH")) for n in LAB_NODES}


def test_the_backup_repository_outlives_the_database_nodes_on_its_own_volume():
    backup1 = COMPOSE["services"]["backup1"]
    assert "backup1-repo:/var/lib/pgbackrest" in backup1["volumes"] and "backup1-repo" in COMPOSE["volumes"]
    repo_path = yaml.safe_load((PROJECT_DIR / "roles" / "pgbackrest" / "defaults" / "main.yml").read_text())[
        "pgbackrest_repo_path"]
    assert repo_path == "/var/lib/pgbackrest"
    # The cluster-loss drill destroys the database nodes' volumes: none of them may hold the repository.
    for name, service in COMPOSE["services"].items():
        if name != "backup1":
            assert not any(v.endswith(":" + repo_path) for v in service.get("volumes", [])), name
    assert host_vars()["backup1"]["careflow_node_ip"] == "192.168.56.30"
