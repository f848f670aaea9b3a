"""Session fixture ``local_pg``: a throwaway PostgreSQL 15 shaped like the cluster, for ``localpg`` tests.

Contract (other areas reuse it, keep it stable):

- One server per test session, initdb'd in a temp dir, on 127.0.0.1 with a
  free port (never 5000-5001, 5432 or 5441-5443); stopped and deleted at the
  end of the session. As root it runs as the ``postgres`` OS user.
- TCP and socket logins use scram-sha-256 passwords (random per session).
- Preloaded: pg_cron (``cron.database_name = 'careflow'``,
  ``cron.use_background_workers = on``); wal_level replica, so a test can
  attach a streaming standby (``local_pg.server.standby(...)``).
- Roles ``careflow_app`` (LOGIN, owns database ``careflow``) and
  ``careflow_ro`` (LOGIN, read-only) exist, and
  ``careflow_ha.data.prepare_database`` has run: pg_partman (schema
  ``partman``) and pg_cron are installed in ``careflow``, with grants.
- The EMR schema is NOT migrated: call ``careflow_ha.data.migrate(local_pg.app_dsn)``
  (idempotent) in the tests that need it.
- ``fsync`` is off: fast, and never a place for performance claims.
- Attributes: ``superuser_dsn`` and ``app_dsn`` / ``ro_dsn`` (database
  ``careflow``), ``port``, ``server`` (a careflow_ha.data.localserver.LocalPostgres).
  The DSNs carry passwords: never print them.
- Tests share the server: use your own tables or clean up what you add.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from careflow_ha.data.localserver import LocalPostgres, start_local_server


@dataclass(frozen=True)
class LocalPg:
    """What ``local_pg`` yields (see the module docstring for the contract)."""

    server: LocalPostgres

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def superuser_dsn(self) -> str:
        return self.server.dsn("superuser")

    @property
    def app_dsn(self) -> str:
        return self.server.dsn("app")

    @property
    def ro_dsn(self) -> str:
        return self.server.dsn("ro")


@pytest.fixture(scope="session")
def local_pg() -> Iterator[LocalPg]:
    """Start the throwaway server once per session; stop and remove it at the end."""
    server = start_local_server(durable=False)
    try:
        yield LocalPg(server)
    finally:
        server.stop()
        server.remove()
