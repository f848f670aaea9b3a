"""A fresh lab provisioned by pyinfra, for the same checks the Ansible-built lab passes.

In this package the session fixture ``cluster`` is the pyinfra-built cluster:
the test modules here import the Ansible suite's own test functions (see
``reuse``), and pytest resolves the ``cluster`` they ask for here. Nothing is
copied, so a check added to tests/cluster/ runs against both provisioners.

The lab is purged first (containers and data volumes), so no Ansible run
leaves anything behind: every package, file and service on the hosts comes
from pyinfra. The tests are marked ``pyinfra``: they run after the cluster
tests and before the drills (tests/plugins/lab.py), which then run against the
pyinfra-built cluster too.
"""

from __future__ import annotations

import json
import time
from types import ModuleType
from typing import Any

import pytest

from careflow_ha.lab import hosts
from careflow_ha.lab.engine import Engine
from careflow_ha.provision.pyinfra import PyinfraResult
from careflow_ha.settings import Settings
from tests.plugins.lab import progress


def reuse(module: ModuleType) -> dict[str, Any]:
    """The test functions and fixtures of ``module``, to re-run unchanged in another module."""
    return {
        name: obj
        for name, obj in vars(module).items()
        if callable(obj) and (name.startswith("test_") or hasattr(obj, "_fixture_function_marker")
                              or type(obj).__name__ == "FixtureFunctionDefinition")
    }


@pytest.fixture(scope="session")
def pyinfra_cold_run(lab_hosts: Settings, engine: Engine) -> PyinfraResult:
    """Purge the lab, then `careflow-ha up --provisioner pyinfra`'s code path: hosts, pyinfra, healthy, demo data."""
    from careflow_ha.stack import bring_up

    progress("pyinfra: purging the lab so that pyinfra provisions bare hosts")
    hosts.purge(engine, progress)
    result, _status = bring_up(lab_hosts, engine, progress, provisioner="pyinfra")
    progress(f"pyinfra: cold provisioning took {result.seconds:.0f}s, changed={result.changed}")
    # Kept for the comparison with Ansible's cold run in the same session (its log is beside it).
    record = lab_hosts.state_dir / "logs" / f"pyinfra-cold-{time.strftime('%Y%m%d-%H%M%S')}.json"
    record.write_text(json.dumps({"seconds": round(result.seconds, 1), "changed": dict(result.per_host_changed)}))
    assert isinstance(result, PyinfraResult)
    return result


@pytest.fixture(scope="session")
def cluster(pyinfra_cold_run: PyinfraResult, lab_hosts: Settings) -> Settings:
    """Overrides tests.plugins.lab's ``cluster`` in this package: the pyinfra-built, healthy cluster."""
    return lab_hosts
