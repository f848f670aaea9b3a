"""Fixtures for load tests: a local PostgreSQL of their own with a small EMR data set.

Separate from the suite's shared ``local_pg`` on purpose: the restart test
stops and starts this server in the middle of a Locust run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from careflow_ha.data.localserver import LocalPostgres, start_local_server


@contextlib.contextmanager
def emr_server(rows: int) -> Iterator[LocalPostgres]:
    """A throwaway server, migrated, with ``rows`` lab results (3 clinics, 2 months, seed 7)."""
    from careflow_ha.data.db import migrate
    from careflow_ha.data.generator import DataSpec
    from careflow_ha.data.loader import load

    server = start_local_server(durable=False)
    try:
        migrate(server.dsn("app"))
        load(server.dsn("app"), DataSpec(rows=rows, clinics=3, months=2, seed=7), progress=False)
        yield server
    finally:
        server.stop()
        server.remove()


@pytest.fixture(scope="module")
def emr_pg() -> Iterator[LocalPostgres]:
    """A few thousand lab results: enough for every EMR operation to find its rows."""
    with emr_server(4000) as server:
        yield server
