"""Runs last: `lab down` removes the hosts (data volumes are kept)."""

from __future__ import annotations

import pytest

from careflow_ha.lab.hosts import lab_down
from careflow_ha.settings import LAB_NODES


@pytest.mark.teardown
@pytest.mark.lab
def test_lab_down_removes_the_hosts_and_keeps_volumes(lab_hosts, engine):
    lab_down(lab_hosts, engine, lambda _m: None)
    assert {n: engine.state(n) for n in LAB_NODES} == dict.fromkeys(LAB_NODES, "absent")
    volumes = engine.cmd("volume", "ls", "-q").stdout.split()
    assert "careflow-ha-lab_pg1-data" in volumes, "down without --purge must keep the data volumes"
