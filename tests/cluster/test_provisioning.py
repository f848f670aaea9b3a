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
    assert set(result.per_host_changed) >= {"pg1", "pg2", "pg3", "lb1"}


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


def test_missing_secret_fails_in_preflight_without_printing_any(cluster):
    proc = _playbook(cluster, LAB_INVENTORY, CAREFLOW_REWIND_PASSWORD="")
    assert proc.returncode != 0
    assert "careflow_rewind_password is empty or too short" in proc.stdout
    for secret in cluster.secrets.values():
        assert secret not in proc.stdout + proc.stderr
