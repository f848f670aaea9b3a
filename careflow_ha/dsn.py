"""libpq connection strings, made safe to show.

At the bottom of the package because every layer prints targets: the EMR
data commands, load runs, archives and benchmarks. A feature must not reach
into another one (or into ``data.db``) just to hide a password.
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo


def redact(dsn: str) -> str:
    """The DSN with its password replaced, safe to print or log."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable DSN>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo(**{k: v for k, v in params.items() if v is not None})
