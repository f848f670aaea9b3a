"""Query archived months in place with DuckDB: nothing is restored, nothing is downloaded.

DuckDB reads Parquet with its built-in reader. Extension auto-install and
auto-load are switched off, so a query never reaches for the internet (there
is none here, nor in many hospitals); ``parquet`` and ``icu`` (time zones) are
compiled into the Python wheel.
"""

from __future__ import annotations

from typing import Any

import duckdb

from careflow_ha.archive.manifest import all_manifests, prefix_of
from careflow_ha.archive.store import ArchiveStore
from careflow_ha.errors import CheckFailed, UsageError

#: Time zone of the clinics' calendar, like the database's (months and days are Seoul ones).
TIMEZONE = "Asia/Seoul"
#: States whose file is verified against PostgreSQL's checksum and may be queried.
QUERYABLE_STATES = ("verified", "detaching", "detached", "archived", "kept", "restoring", "restored")


def offline_connection() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that never installs or loads extensions by itself."""
    conn = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    conn.execute(f"SET TimeZone = '{TIMEZONE}'")
    return conn


def archive_view(conn: duckdb.DuckDBPyConnection, store: ArchiveStore, table: str,
                 months: list[str] | None = None) -> list[str]:
    """Create view ``<table name>`` over the verified archive files (plus a ``month`` column); return the months."""
    manifests = [m for m in all_manifests(store, table) if m.state in QUERYABLE_STATES and m.file_key
                 and (months is None or m.month in months)]
    name = prefix_of(table)
    if not manifests:
        raise UsageError(f"no verified archive of {name} in {store.describe()}; run `careflow-ha archive run` "
                         "first (or pass --archive-dir)")
    missing = [str(store.local_path(m.file_key)) for m in manifests if not store.exists(m.file_key)]
    if missing:
        raise CheckFailed(f"archive files missing: {', '.join(missing[:3])}; `careflow-ha archive list` shows them")
    paths = [str(store.local_path(m.file_key)) for m in manifests]
    listing = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
    conn.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet([{listing}], hive_partitioning = true)")
    return [m.month for m in manifests]


def run_query(store: ArchiveStore, query: str, table: str = "public.lab_results",
              months: list[str] | None = None) -> tuple[list[str], list[tuple[Any, ...]], list[str]]:
    """Run ``query`` (it sees a view named like the table); return (columns, rows, months read)."""
    if not query or not query.strip():
        raise UsageError('archive query needs SQL, e.g. "SELECT month, count(*) FROM lab_results GROUP BY 1"')
    conn = offline_connection()
    try:
        read = archive_view(conn, store, table, months)
        try:
            cur = conn.execute(query)
        except duckdb.Error as exc:
            raise UsageError(f"DuckDB rejected the query: {str(exc).splitlines()[0]}") from None
        columns = [d[0] for d in cur.description] if cur.description else []
        return columns, cur.fetchall(), read
    finally:
        conn.close()
