"""Connections through PgBouncer (transaction pooling, 1.18) get no prepared statements and no
``options`` startup parameter; every other connection is left exactly as asked (docs/pooling.md)."""

from __future__ import annotations

import pytest
import yaml

from careflow_ha.dsn import POOLER_PORTS, pooler_safe, through_pooler
from careflow_ha.settings import PROJECT_DIR

KW = {"connect_timeout": 5, "options": "-c statement_timeout=10000", "application_name": "x"}


def test_pooler_ports_agree_with_the_inventory():
    values = yaml.safe_load((PROJECT_DIR / "inventory" / "group_vars" / "all.yml").read_text())
    assert (values["careflow_pgbouncer_rw_port"], values["careflow_pgbouncer_ro_port"]) == POOLER_PORTS


@pytest.mark.parametrize(
    "dsn,pooled",
    [
        ("postgresql://u:p@192.168.56.100:6432/careflow", True),
        ("postgresql://u:p@192.168.56.100:6433/careflow?connect_timeout=5", True),
        ("host=10.0.0.1 port=6432 dbname=careflow", True),
        ("postgresql://u:p@192.168.56.100:5000/careflow", False),  # HAProxy
        ("postgresql://u:p@127.0.0.1:5441/careflow", False),  # a node straight
        ("postgresql://u:p@a:5432,b:5432/careflow", False),  # libpq multi-host
        ("host=x", False),  # no port: libpq's 5432
        ("not a dsn ===", False),
    ],
)
def test_through_pooler(dsn, pooled):
    assert through_pooler(dsn) is pooled


def test_pooled_connections_drop_prepared_statements_and_options():
    out = pooler_safe("postgresql://u:p@h:6432/careflow", KW)
    assert out == {"connect_timeout": 5, "application_name": "x", "prepare_threshold": None}
    assert KW["options"]  # the caller's mapping is not changed


def test_other_connections_are_left_as_asked():
    assert pooler_safe("postgresql://u:p@h:5000/careflow", KW) == KW
    assert pooler_safe("postgresql://u:p@h:5000/careflow") == {}
