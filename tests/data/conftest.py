"""Fixtures for the EMR data tests: a migrated, loaded ``careflow`` database on the session's local server."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from careflow_ha.data import migrate
from careflow_ha.data.generator import DataSpec
from careflow_ha.data.loader import load

#: Small on purpose: correctness, not scale (the benchmark does scale). The window ends at 16:00 UTC
#: yesterday, i.e. 01:00 the next day in Seoul, so that UTC/Seoul day mix-ups show in the aggregates.
_END = (datetime.now(UTC) - timedelta(days=1)).replace(hour=16, minute=0, second=0, microsecond=0)
SPEC = DataSpec(rows=30_000, clinics=4, months=6, seed=3, end=_END)


@dataclass(frozen=True)
class Emr:
    """The loaded data set's DSNs (they carry passwords: kept out of repr, which pytest prints) and its spec."""

    app_dsn: str = field(repr=False)
    ro_dsn: str = field(repr=False)
    superuser_dsn: str = field(repr=False)
    spec: DataSpec


@pytest.fixture(scope="session")
def emr(local_pg) -> Emr:
    """The session server with the EMR schema migrated and ``SPEC`` loaded (replacing any earlier data)."""
    migrate(local_pg.app_dsn)
    load(local_pg.app_dsn, SPEC, replace=True, progress=False)
    return Emr(local_pg.app_dsn, local_pg.ro_dsn, local_pg.superuser_dsn, SPEC)


