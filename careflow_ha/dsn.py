"""libpq connection strings: checked before use, and made safe to show.

At the bottom of the package because every layer prints targets: the EMR
data commands, load runs, archives and benchmarks. A feature must not reach
into another one (or into ``data.db``) just to hide a password.
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from careflow_ha.errors import UsageError


def redact(dsn: str) -> str:
    """The DSN with its password replaced, safe to print or log."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable DSN>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo(**{k: v for k, v in params.items() if v is not None})


#: libpq options that must hold integers. libpq checks them only when it connects, and its error then
#: looks like a network problem (exit 3); a typo in a DSN is bad input (exit 2).
_INTEGER_OPTIONS = ("port", "connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
                    "keepalives_count", "tcp_user_timeout")


def check_dsn(dsn: str) -> dict[str, str]:
    """Parse ``dsn`` (URI or key=value), or raise a UsageError that names the fix and never echoes the DSN.

    libpq's own parse message is not shown: it quotes the text around the
    error, which can be part of a password.
    """
    try:
        params = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    except psycopg.ProgrammingError:
        raise UsageError("the DSN is not valid libpq syntax; use postgresql://user:pass@host:port/db or "
                         "'host=... port=... user=... dbname=...'") from None
    for key in _INTEGER_OPTIONS:
        for part in str(params.get(key, "")).split(","):  # multi-host DSNs list one port per host
            if part.strip() and not (part.strip().isdigit() and (key != "port" or 1 <= int(part) <= 65535)):
                what = "a port number (1-65535)" if key == "port" else "an integer"
                raise UsageError(f"the DSN's {key} {part.strip()!r} is not {what}; fix it in --dsn or CAREFLOW_DSN")
    return params


#: PgBouncer's client ports on the balancers (careflow_pgbouncer_rw_port / _ro_port in
#: inventory/group_vars/all.yml; tests/unit/test_dsn.py proves the two agree).
POOLER_PORTS: tuple[int, ...] = (6432, 6433)


def through_pooler(dsn: str, ports: tuple[int, ...] = POOLER_PORTS) -> bool:
    """Whether ``dsn`` connects to a PgBouncer port (transaction pooling: see docs/pooling.md)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return False
    listed = [p.strip() for p in str(params.get("port") or "").split(",") if p.strip()]
    return any(p.isdigit() and int(p) in ports for p in listed)


def pooler_safe(dsn: str, kwargs: dict | None = None, ports: tuple[int, ...] = POOLER_PORTS) -> dict:
    """``psycopg.connect`` keyword arguments that also work through PgBouncer 1.18 in transaction pooling.

    Through the pooler: no server-side prepared statements (psycopg prepares a query on its own
    after ``prepare_threshold`` executions, and the next transaction may run on another server
    connection, where the statement does not exist), and no ``options`` startup parameter (1.18
    refuses the login: "unsupported startup parameter: options"). A statement_timeout set there is
    then replaced by the caller's own client-side deadline. Anywhere else ``kwargs`` is unchanged.
    """
    out = dict(kwargs or {})
    if through_pooler(dsn, ports):
        out["prepare_threshold"] = None
        out.pop("options", None)
    return out


def prepares(conn: psycopg.Connection) -> bool:
    """Whether explicit ``prepare=True`` is safe on ``conn`` (False on a connection made by :func:`pooler_safe`)."""
    return conn.prepare_threshold is not None
