"""A malformed ``--dsn`` is bad input (exit 2, one line, no secret), not "cannot connect" (exit 3)."""

from __future__ import annotations

import pytest

from careflow_ha.data.db import connect
from careflow_ha.dsn import check_dsn
from careflow_ha.errors import EnvironmentProblem, UsageError
from tests.cli import run_cli

SECRET = "pw-s3cret-do-not-print"


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("port=abc", "the DSN's port 'abc' is not a port number (1-65535)"),
        ("host=127.0.0.1 port=99999", "port '99999' is not a port number"),
        (f"postgresql://careflow_app:{SECRET}@127.0.0.1:abc/careflow", "port 'abc' is not a port number"),
        ("host=a,b port=5000,x", "port 'x'"),
        ("host=127.0.0.1 connect_timeout=soon", "connect_timeout 'soon' is not an integer"),
        (f"host=127.0.0.1 password={SECRET} user", "is not valid libpq syntax"),  # libpq would quote around it
    ],
)
def test_malformed_dsns_are_usage_errors_without_the_secret(dsn, message):
    with pytest.raises(UsageError) as err:
        check_dsn(dsn)
    assert message in str(err.value)
    assert SECRET not in str(err.value)


@pytest.mark.parametrize("dsn", ["host=127.0.0.1 port=5000,5001 dbname=careflow", "postgresql://u@h:5000/db", ""])
def test_well_formed_dsns_pass(dsn):
    check_dsn(dsn)  # no-op cases: nothing raised


def test_an_invalid_option_value_libpq_rejects_is_a_usage_error():
    with pytest.raises(UsageError, match='invalid sslmode value: "maybe"'):
        connect(f"host=127.0.0.1 port=1 sslmode=maybe password={SECRET}")


def test_an_unreachable_server_is_still_an_environment_problem():
    with pytest.raises(EnvironmentProblem, match="cannot connect") as err:
        connect(f"host=127.0.0.1 port=1 connect_timeout=2 password={SECRET}")
    assert SECRET not in str(err.value)


@pytest.mark.parametrize("argv", [["partitions", "status"], ["data", "migrate"]])
def test_the_cli_exits_2_for_port_abc(argv):
    code, out, err = run_cli(*argv, "--dsn", "port=abc")
    assert code == 2, err
    assert [line for line in err.splitlines() if not line.startswith("target: ")] == [
        "careflow-ha: error: the DSN's port 'abc' is not a port number (1-65535); fix it in --dsn or CAREFLOW_DSN"]
