"""Fixtures for the EMR data tests: a migrated, loaded ``careflow`` database on the session's local server."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
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
    app_dsn: str
    ro_dsn: str
    superuser_dsn: str
    spec: DataSpec


@pytest.fixture(scope="session")
def emr(local_pg) -> Emr:
    """The session server with the EMR schema migrated and ``SPEC`` loaded (replacing any earlier data)."""
    migrate(local_pg.app_dsn)
    load(local_pg.app_dsn, SPEC, replace=True, progress=False)
    return Emr(local_pg.app_dsn, local_pg.ro_dsn, local_pg.superuser_dsn, SPEC)


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*argv: str) -> CliResult:
    """Run ``careflow-ha`` in-process like the console script: exit code, stdout, stderr."""
    from careflow_ha.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return CliResult(code, out.getvalue(), err.getvalue())
