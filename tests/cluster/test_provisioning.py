"""Provisioning is idempotent, and a bad inventory stops before any host changes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from careflow_ha.provision import LAB_INVENTORY
from careflow_ha.provision.ansible import PLAYBOOK, ansible_env, run_playbook
from careflow_ha.settings import PROJECT_DIR

pytestmark = pytest.mark.cluster


def test_second_playbook_run_changes_nothing(cluster):
    result = run_playbook(cluster, lambda _m: None)
    assert result.changed == 0, f"not idempotent: {result.per_host_changed} (log: {result.log_file})"
    assert set(result.per_host_changed) >= {"pg1", "pg2", "pg3", "lb1", "lb2", "mon1", "backup1"}


def _playbook(settings, inventory: Path, **env_overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(PLAYBOOK)],
        cwd=PROJECT_DIR,
        env={**os.environ, **ansible_env(settings, inventory), **env_overrides},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_even_number_of_etcd_members_fails_in_preflight(cluster, tmp_path):
    inv = yaml.safe_load(LAB_INVENTORY.read_text())
    inv["all"]["children"]["etcd_cluster"]["hosts"].pop("pg3")
    # group_vars are read from beside the inventory file: bring them along.
    shutil.copytree(LAB_INVENTORY.parent / "group_vars", tmp_path / "group_vars")
    bad = tmp_path / "even-etcd.yml"
    bad.write_text(yaml.safe_dump(inv))
    proc = _playbook(cluster, bad)
    assert proc.returncode != 0
    assert "it needs an odd number, at least 3" in proc.stdout
    assert "Add or remove a host in etcd_cluster" in proc.stdout
    # It stopped in the preflight play: no task ran on any cluster host.
    assert "TASK [common" not in proc.stdout and "TASK [etcd" not in proc.stdout


def _edited_inventory(tmp_path: Path, hosts_edit=None, **group_vars) -> Path:
    inv = yaml.safe_load(LAB_INVENTORY.read_text())
    if hosts_edit:
        hosts_edit(inv["all"]["children"])
    shutil.copytree(LAB_INVENTORY.parent / "group_vars", tmp_path / "group_vars")
    gv_file = tmp_path / "group_vars" / "all.yml"
    gv_file.write_text(yaml.safe_dump({**yaml.safe_load(gv_file.read_text()), **group_vars}))
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inv))
    return path


NO_VIP = 'or set careflow_vip: "" to run without a VIP'
NO_LEADER_VIP = 'or set careflow_leader_vip: "" to run without a leader VIP'


@pytest.mark.parametrize(
    "hosts_edit,group_vars,message,way_out",
    [
        (None, {"careflow_vip": "10.0.0.100"}, "careflow_vip=10.0.0.100 is outside careflow_cluster_network", NO_VIP),
        (None, {"careflow_vip": "192.168.56.12"}, "careflow_vip=192.168.56.12 is also the careflow_node_ip of pg2",
         NO_VIP),
        (lambda c: c["balancers"]["hosts"].pop("lb2"), {}, "careflow_vip is set but balancers has 1 host(s)", NO_VIP),
        (None, {"careflow_leader_vip": "192.168.56.100"},
         "careflow_leader_vip=192.168.56.100 is also careflow_vip; give each VIP its own address", NO_LEADER_VIP),
    ],
    ids=["outside the network", "a host's address", "one balancer", "leader VIP is the client VIP"],
)
def test_bad_vip_fails_in_preflight_naming_the_fix(cluster, tmp_path, hosts_edit, group_vars, message, way_out):
    proc = _playbook(cluster, _edited_inventory(tmp_path, hosts_edit, **group_vars))
    assert proc.returncode != 0
    assert message in proc.stdout
    assert way_out in proc.stdout
    assert "TASK [common" not in proc.stdout  # stopped before any host changed


def test_missing_secret_fails_in_preflight_without_printing_any(cluster):
    proc = _playbook(cluster, LAB_INVENTORY, CAREFLOW_REWIND_PASSWORD="")
    assert proc.returncode != 0
    assert "careflow_rewind_password is empty or too short" in proc.stdout
    for secret in cluster.secrets.values():
        assert secret not in proc.stdout + proc.stderr
