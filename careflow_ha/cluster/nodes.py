"""Which node is which, seen from a client: each node's own server address mapped to its name.

Drills and load runs both ask this (a read through HAProxy reports
``inet_server_addr()``, and the report wants ``pg2``), so it lives below both.
"""

from __future__ import annotations

from collections.abc import Mapping

import psycopg

#: Short bounds: a node that is down must cost seconds, not a hang.
_CONNECT_TIMEOUT_S = 2
_STATEMENT_TIMEOUT_MS = 5_000


def node_addresses(node_dsns: Mapping[str, str]) -> dict[str, str]:
    """Map each node's own server address (``inet_server_addr()``) to its name.

    Lets a probe through HAProxy say which node answered. Nodes that do not
    answer are left out (the probe then reports the address itself).
    """
    out: dict[str, str] = {}
    for node, dsn in node_dsns.items():
        try:
            with psycopg.connect(
                dsn, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S,
                options=f"-c statement_timeout={_STATEMENT_TIMEOUT_MS}", application_name="careflow-ha",
            ) as conn:
                row = conn.execute("SELECT host(inet_server_addr())").fetchone()
        except psycopg.Error:
            continue
        if row and row[0]:
            out[str(row[0])] = node
    return out
