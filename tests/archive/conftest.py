"""Fixtures for the archive tests: their own throwaway server (archiving drops partitions), and helpers.

The archive tests get a server of their own rather than the shared ``local_pg``: they detach and drop
months, which the EMR data tests on the shared server must never see half-way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from careflow_ha.archive import rowhash
from careflow_ha.archive.archiver import TABLE, month_partitions
from careflow_ha.data import migrate
from careflow_ha.data.generator import DataSpec
from careflow_ha.data.loader import load
from careflow_ha.data.localserver import start_local_server

#: 30 months ending yesterday: about six months are past a 24-month retention. Small on purpose.
SPEC = DataSpec(rows=24_000, clinics=3, months=30, seed=11,
                end=(datetime.now(UTC) - timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0))
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ArchiveDb:
    """DSNs of the archive tests' server; they carry passwords, so repr (printed by pytest) leaves them out."""

    app_dsn: str = field(repr=False)
    ro_dsn: str = field(repr=False)


@pytest.fixture(scope="session")
def archive_db() -> Iterator[ArchiveDb]:
    """A local server with the EMR schema and ``SPEC`` loaded, for the archive tests only."""
    server = start_local_server(durable=False)
    try:
        migrate(server.dsn("app"))
        load(server.dsn("app"), SPEC, progress=False)
        yield ArchiveDb(server.dsn("app"), server.dsn("ro"))
    finally:
        server.stop()
        server.remove()




def run_cli_process(dsn: str, *argv: str, failpoint: str | None = None,
                    timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``careflow-ha`` in a child process (killable); the DSN goes through the environment, never argv."""
    env = {**os.environ, "CAREFLOW_DSN": dsn}
    env.pop("CAREFLOW_ARCHIVE_FAILPOINT", None)
    if failpoint:
        env["CAREFLOW_ARCHIVE_FAILPOINT"] = failpoint
    return subprocess.run([sys.executable, "-c", "from careflow_ha.cli import main; main()", *argv],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)


def month_snapshot(dsn: str, month: str) -> dict:
    """Everything a month must give back after a round trip: checksum, rows, and the rows themselves."""
    with psycopg.connect(dsn) as conn:
        part = next(p for p in month_partitions(conn) if p.month == month)
        columns = rowhash.table_columns(conn, TABLE)
        checksum, count, clinics = rowhash.checksum_in_postgres(conn, columns, part.name)
        rows = conn.execute("SELECT * FROM lab_results WHERE collected_at >= %s AND collected_at < %s "
                            "ORDER BY result_id", (part.lower, part.upper)).fetchall()
        leaves = [r[0] for r in conn.execute(
            "SELECT relid::regclass::text FROM pg_partition_tree(%s::regclass) ORDER BY 1", (part.name,))]
    return {"checksum": checksum, "count": count, "clinics": clinics, "rows": rows, "leaves": leaves,
            "lower": part.lower, "upper": part.upper, "partition": part.name}


def rows_in_range(dsn: str, lower: datetime, upper: datetime) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM lab_results WHERE collected_at >= %s AND collected_at < %s",
                            (lower, upper)).fetchone()[0]


def attached_months(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [p.month for p in month_partitions(conn)]


def populated_old_months(dsn: str, older_than_months: int = 24) -> list[str]:
    """Months past retention that hold rows, oldest first."""
    from careflow_ha.archive.archiver import candidates

    with psycopg.connect(dsn) as conn:
        return [p.month for p in candidates(conn, older_than_months)
                if conn.execute(f"SELECT EXISTS (SELECT 1 FROM {p.name})").fetchone()[0]]  # noqa: S608
