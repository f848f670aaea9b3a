"""Fixtures for the monitoring tests: the EMR data set of tests/data, and pg_stat_statements created."""

from __future__ import annotations

import psycopg
import pytest

from tests.data.conftest import Emr, emr  # noqa: F401 - re-exported fixture: the same loaded EMR database


@pytest.fixture(scope="session")
def pgss(local_pg) -> str:
    """pg_stat_statements created in database careflow (superuser only: the extension is not trusted)."""
    with psycopg.connect(local_pg.superuser_dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    return local_pg.superuser_dsn


def reset_statements(superuser_dsn: str) -> None:
    """Forget every statement recorded so far, so a test sees only its own."""
    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")


__all__ = ["Emr", "emr", "pgss", "reset_statements"]
