"""Fixtures for load tests: a local PostgreSQL of their own with a small EMR data set.

Separate from the suite's shared ``local_pg`` on purpose: the restart test
stops and starts this server in the middle of a Locust run.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from careflow_ha.data.localserver import LocalPostgres, start_local_server


@pytest.fixture(scope="module")
def emr_pg() -> Iterator[LocalPostgres]:
    """A throwaway server, migrated, with a few thousand lab results (3 clinics, 2 months)."""
    from careflow_ha.data.db import migrate
    from careflow_ha.data.generator import DataSpec
    from careflow_ha.data.loader import load

    server = start_local_server(durable=False)
    try:
        migrate(server.dsn("app"))
        load(server.dsn("app"), DataSpec(rows=4000, clinics=3, months=2, seed=7), progress=False)
        yield server
    finally:
        server.stop()
        server.remove()
