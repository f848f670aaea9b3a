"""The lab hosts behave like servers: SSH, Ansible, systemd, the right names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from careflow_ha.lab.engine import container_name
from careflow_ha.lab.hosts import lab_up
from careflow_ha.lab.ssh import ssh_argv, ssh_config_path
from careflow_ha.settings import PROJECT_DIR
from tests.inventory import hosts

pytestmark = pytest.mark.lab


def test_every_host_answers_ansible_ping_over_ssh(lab_hosts):
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible"), "all", "-i", "inventory/lab.yml", "-m", "ansible.builtin.ping"],
        cwd=PROJECT_DIR,
        env={**os.environ, "ANSIBLE_SSH_ARGS": f"-F {ssh_config_path(lab_hosts)}", "ANSIBLE_CONFIG": "ansible.cfg"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for host in hosts():
        assert re.search(rf"^{host} \| SUCCESS => \n\s+changed: false\n\s+ping: pong$", proc.stdout, re.M), proc.stdout


@pytest.mark.parametrize("host", hosts())
def test_systemd_is_running_and_hostname_is_right(lab_hosts, host):
    proc = subprocess.run(
        ssh_argv(lab_hosts, host, "systemctl is-system-running; hostname"), capture_output=True, text=True, timeout=30
    )
    state, hostname = proc.stdout.split()
    assert state == "running", f"{host}: systemd is {state}: see `systemctl --failed` on it"
    assert hostname == host


@pytest.mark.parametrize("host", hosts())
def test_host_runs_in_the_project_container(lab_hosts, engine, host):
    assert engine.state(host) == "running"
    labels = engine.cmd("inspect", "--format", "{{ index .Config.Labels \"com.docker.compose.project\" }}",
                        container_name(host)).stdout.strip()
    assert labels == "careflow-ha-lab"


def test_second_up_changes_nothing_and_is_fast(lab_hosts, engine):
    """Warm `lab up`: image current, hosts running; nothing rebuilt or recreated."""
    before = {n: engine.cmd("inspect", "--format", "{{.Id}}", container_name(n)).stdout.strip() for n in hosts()}
    messages: list[str] = []
    lab_up(lab_hosts, engine, messages.append)
    after = {n: engine.cmd("inspect", "--format", "{{.Id}}", container_name(n)).stdout.strip() for n in hosts()}
    assert before == after, "a second `lab up` recreated containers"
    assert "image: node image is current, not rebuilding" in messages
    assert f"lab: all {len(hosts())} hosts already running" in messages
