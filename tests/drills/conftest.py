"""Fixtures for drill tests: a throwaway local PostgreSQL 15 that a test may crash and restart.

It is separate from the suite's shared ``local_pg`` (tests/plugins/localpg.py) on
purpose: these tests stop and restart the server, which must not disturb others.

The cluster drill tests use the suite-wide ``cluster`` and ``engine`` fixtures
(tests/conftest.py); nothing here touches the lab.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
#: ``long`` runs every cluster drill; anything else (the default, CI) only ``test_ci_*``.
DRILL_SUITE = os.environ.get("CAREFLOW_DRILL_SUITE", "ci")
#: Ports the lab publishes (or commonly used): never bind these in tests.
RESERVED_PORTS = frozenset({5000, 5001, 5432, 7000, 2220, 2221, 2222, 2223, 5441, 5442, 5443, 8011, 8012, 8013})


def free_port() -> int:
    """A free TCP port on 127.0.0.1 outside the lab's reserved ports (bounded attempts)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port
    raise RuntimeError("no free port found in 50 attempts")


@dataclass(frozen=True)
class RestartablePg:
    """A throwaway PostgreSQL on 127.0.0.1 that the test may stop, start and restart."""

    datadir: Path
    port: int

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str, timeout: float = 60) -> None:
        """Run pg_ctl as the postgres OS user (we are root; PostgreSQL refuses to run as root)."""
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), *args],
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1"
        self.ctl("-o", opts, "-l", str(self.datadir / "server.log"), "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        self.ctl("-m", mode, "-w", "-t", "30", "stop")


@pytest.fixture
def restartable_pg() -> Iterator[RestartablePg]:
    """Per test: initdb + start a PostgreSQL 15 in a temp dir; stopped and removed afterwards."""
    if not (PG_BIN / "initdb").exists():
        pytest.fail(f"PostgreSQL 15 binaries missing in {PG_BIN}; install postgresql-15 (./careflow-ha does)")
    root = Path(tempfile.mkdtemp(prefix="careflow-drill-pg-"))
    root.chmod(0o755)
    datadir = root / "data"
    datadir.mkdir()
    shutil.chown(datadir, "postgres", "postgres")
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            str(PG_BIN / "initdb"),
            "-D",
            str(datadir),
            "-A",
            "trust",
            "-U",
            "postgres",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pg = RestartablePg(datadir, free_port())
    pg.start()
    try:
        yield pg
    finally:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """CI runs the drill subset the issue names (``test_ci_*``); CAREFLOW_DRILL_SUITE=long runs them all.

    Deselected, not skipped: the long drills are a separate suite target, not a missing feature.
    """
    if DRILL_SUITE == "long":
        return
    here = Path(__file__).parent
    keep, dropped = [], []
    for item in items:
        in_long_suite = item.get_closest_marker("drill") and not item.name.startswith("test_ci_")
        (dropped if in_long_suite and Path(item.path).is_relative_to(here) else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
