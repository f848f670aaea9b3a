"""Session fixtures for the lab hosts and the provisioned cluster.

The first test that needs them brings them up (``careflow-ha up``'s own code
path), and the session tears down what it started, even when tests fail:
``lab down --purge`` unless the lab was already running before the session
(a developer's lab is left alone) or CAREFLOW_KEEP_LAB=1.

Ordering: pytest_collection_modifyitems runs unit tests first, then local
PostgreSQL tests, then lab, cluster, and drill tests (which break things),
then the teardown check last.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from careflow_ha.lab import hosts
from careflow_ha.lab.engine import Engine, detect_engine
from careflow_ha.lab.ssh import ssh_config_path
from careflow_ha.settings import LAB_NODES, Settings, load_settings

_RANK = {"localpg": 1, "lab": 2, "cluster": 3, "pyinfra": 4, "drill": 5, "teardown": 9}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        marks = [m.name for m in item.iter_markers()]
        return max((_RANK.get(m, 0) for m in marks), default=0)

    items.sort(key=rank)  # stable: file order is kept within a rank


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class LabSession:
    """What the session started, so that it tears down only that."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.engine: Engine | None = None
        self.started_here = False
        self.cluster_ready = False


_SESSION = LabSession()


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def engine() -> Engine:
    return detect_engine(os.environ.get("CAREFLOW_ENGINE") or None)


@pytest.fixture(scope="session")
def lab_hosts(settings: Settings, engine: Engine) -> Iterator[Settings]:
    """The four lab hosts, up and answering SSH."""
    # A lab left by another checkout (CI's fresh clone after a session) is
    # stale: lab_up replaces it, and this session then owns the teardown.
    already = not hosts.is_stale(settings, engine) and all(engine.state(n) == "running" for n in LAB_NODES)
    _SESSION.settings, _SESSION.engine = settings, engine
    _SESSION.started_here = not already
    hosts.lab_up(settings, engine, progress)
    yield settings


@pytest.fixture(scope="session")
def cluster(lab_hosts: Settings, engine: Engine) -> Settings:
    """A provisioned, healthy cluster with the EMR schema and demo data (as `careflow-ha up` leaves it)."""
    from careflow_ha.stack import bring_up

    bring_up(lab_hosts, engine, progress)
    _SESSION.cluster_ready = True
    return lab_hosts


@pytest.fixture(scope="module")
def host_of(cluster: Settings):
    """testinfra hosts over the lab's SSH, one per name (the host checks of every provisioner share it)."""
    import testinfra

    cache: dict[str, testinfra.host.Host] = {}

    def get(name: str) -> testinfra.host.Host:
        if name not in cache:
            cache[name] = testinfra.get_host(f"ssh://{name}", ssh_config=str(ssh_config_path(cluster)))
        return cache[name]

    return get


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SESSION.engine is None or _SESSION.settings is None:
        return
    if os.environ.get("CAREFLOW_KEEP_LAB") == "1" or not _SESSION.started_here:
        progress("lab: left running (it was up before the tests, or CAREFLOW_KEEP_LAB=1)")
        return
    # Teardown must happen even after failures; errors here must not mask the result.
    try:
        hosts.lab_down(_SESSION.settings, _SESSION.engine, progress, purge_data=True)
    except Exception as exc:  # noqa: BLE001
        progress(f"lab: teardown failed: {exc}")
