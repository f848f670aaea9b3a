"""The published-port check: a port taken by another program stops `lab up`; one held by our running host
does not (a lab that gains a host after a pull keeps its running hosts)."""

from __future__ import annotations

import socket

import pytest

from careflow_ha.errors import PortInUse
from careflow_ha.lab.host_checks import require_free_ports
from careflow_ha.lab.hosts import published_port_keys
from careflow_ha.settings import LAB_NODES, PORT_DEFAULTS, load_settings


@pytest.fixture
def taken_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _settings_with_rw_port(tmp_path, port: int):
    """Every other port one nobody holds: all bound at once while picking, so no two keys get the same one."""
    held = [socket.socket() for _ in PORT_DEFAULTS]
    try:
        for s in held:
            s.bind(("127.0.0.1", 0))
        free = {key: str(s.getsockname()[1]) for key, s in zip(PORT_DEFAULTS, held, strict=True)}
    finally:
        for s in held:
            s.close()
    return load_settings(tmp_path, environ={**free, "CAREFLOW_RW_PORT": str(port)})


def test_a_port_another_program_holds_is_refused_with_the_fix(tmp_path, taken_port):
    settings = _settings_with_rw_port(tmp_path, taken_port)
    with pytest.raises(PortInUse, match=f"127.0.0.1:{taken_port} \\(CAREFLOW_RW_PORT\\) is already in use.*--rw-port"):
        require_free_ports(settings, held_by_lab=published_port_keys(["pg1", "pg2"]))


def test_a_port_our_running_balancer_holds_is_not_in_the_way(tmp_path, taken_port):
    settings = _settings_with_rw_port(tmp_path, taken_port)
    require_free_ports(settings, held_by_lab=published_port_keys(["lb1"]))


def test_every_published_port_belongs_to_one_host():
    owners = {key: node for node in LAB_NODES for key in published_port_keys([node])}
    assert set(owners) == set(PORT_DEFAULTS)
    assert owners["CAREFLOW_RW_PORT"] == "lb1" and owners["CAREFLOW_BACKUP1_SSH_PORT"] == "backup1"
