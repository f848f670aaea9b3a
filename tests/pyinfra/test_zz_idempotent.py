"""After the cold pyinfra run: a second pyinfra run changes nothing, and neither does Ansible.

The Ansible check is the other half of "the same hosts": site.yml, run on
hosts that only pyinfra ever touched, finds nothing to change.
"""

from __future__ import annotations

import pytest

from careflow_ha.provision.ansible import run_playbook
from careflow_ha.provision.pyinfra import run_pyinfra

pytestmark = pytest.mark.pyinfra

HOSTS = {"pg1", "pg2", "pg3", "lb1", "lb2", "mon1", "backup1"}


def test_the_cold_run_built_every_host(pyinfra_cold_run):
    assert set(pyinfra_cold_run.per_host_changed) == HOSTS
    bare = [h for h, n in pyinfra_cold_run.per_host_changed.items() if n == 0]
    assert not bare, f"pyinfra changed nothing on {bare}: were they really bare?"


def test_a_second_pyinfra_run_changes_nothing(cluster):
    result = run_pyinfra(cluster, lambda _m: None)
    changed = {h: ops for h, ops in result.changed_ops.items() if ops}
    assert result.changed == 0, f"not idempotent: {changed} (log: {result.log_file})"
    assert set(result.per_host_changed) == HOSTS


def test_ansible_finds_nothing_to_change_on_pyinfra_hosts(cluster):
    result = run_playbook(cluster, lambda _m: None)
    assert result.changed == 0, (
        f"Ansible would change pyinfra's hosts: {result.per_host_changed} (log: {result.log_file})"
    )
    assert set(result.per_host_changed) >= HOSTS
