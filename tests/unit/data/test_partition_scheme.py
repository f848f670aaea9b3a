"""careflow_partition_scheme: one source (group_vars), checked the same way everywhere, carried to migration 0008."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from yoyo.connections import parse_uri

from careflow_ha.data.db import SCHEME_GUC, SCHEME_LOCK_TIMEOUT, _yoyo_uri, migrate
from careflow_ha.errors import UsageError
from careflow_ha.settings import PARTITION_SCHEMES, PROJECT_DIR, check_partition_scheme, configured_partition_scheme
from tests.cli import run_cli

GROUP_VARS = PROJECT_DIR / "inventory" / "group_vars" / "all.yml"
ARGUMENT_SPECS = PROJECT_DIR / "roles" / "preflight" / "meta" / "argument_specs.yml"
MIGRATION = PROJECT_DIR / "partitioning" / "migrations" / "0008_partition_scheme.sql"


@pytest.mark.parametrize("value", PARTITION_SCHEMES)
def test_each_scheme_is_accepted(value):
    assert check_partition_scheme(value) == value


@pytest.mark.parametrize("value", ["months", "Per-Clinic", "per_clinic", "", " months-only", None, 1, True,
                                   ["per-clinic"]])
def test_anything_else_is_one_line_naming_the_choices(value):
    with pytest.raises(UsageError) as err:
        check_partition_scheme(value)
    message = str(err.value)
    assert "\n" not in message
    assert f"careflow_partition_scheme={value!r} is not one of per-clinic, months-only" in message
    assert "inventory/group_vars/all.yml" in message


def _inventory(tmp_path: Path, group_vars: dict, inventory_vars: dict | None = None) -> Path:
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text(yaml.safe_dump(group_vars))
    path = tmp_path / "lab.yml"
    path.write_text(yaml.safe_dump({"all": {"vars": inventory_vars or {}}}))
    return path


def test_the_shipped_setting_is_per_clinic_for_the_lab():
    assert yaml.safe_load(GROUP_VARS.read_text())["careflow_partition_scheme"] == "per-clinic"
    assert configured_partition_scheme(PROJECT_DIR / "inventory" / "lab.yml") == "per-clinic"


def test_the_inventory_overrides_group_vars_and_python_follows(tmp_path):
    path = _inventory(tmp_path, {"careflow_partition_scheme": "per-clinic"},
                      {"careflow_partition_scheme": "months-only"})
    assert configured_partition_scheme(path) == "months-only"


@pytest.mark.parametrize(("group_vars", "message"), [
    ({"careflow_partition_scheme": "monthly"}, "careflow_partition_scheme='monthly' is not one of"),
    ({}, "careflow_partition_scheme is not set; add careflow_partition_scheme: per-clinic"),
])
def test_a_bad_or_missing_inventory_value_is_one_line(tmp_path, group_vars, message):
    with pytest.raises(UsageError, match=message) as err:
        configured_partition_scheme(_inventory(tmp_path, group_vars))
    assert "\n" not in str(err.value)


def test_the_preflight_role_and_the_migration_accept_exactly_the_python_choices():
    # argument_specs and the SQL cannot import Python: this test holds the three copies together.
    spec = yaml.safe_load(ARGUMENT_SPECS.read_text())["argument_specs"]["main"]["options"]
    assert spec["careflow_partition_scheme"]["choices"] == list(PARTITION_SCHEMES)
    assert f"p_scheme NOT IN ({', '.join(repr(s) for s in PARTITION_SCHEMES)})" in MIGRATION.read_text()


def test_the_migration_waits_for_locks_as_long_as_data_migrate_does():
    # 0008's own CALL uses the procedure's default; later runs pass SCHEME_LOCK_TIMEOUT: one figure.
    assert f"p_lock_timeout text DEFAULT '{SCHEME_LOCK_TIMEOUT}'" in MIGRATION.read_text()


def test_the_scheme_travels_to_the_migration_as_a_session_variable():
    uri = _yoyo_uri("host=db port=5433 user=careflow_app password=pw dbname=careflow options='-c work_mem=8MB'",
                    "months-only")
    options = parse_uri(uri).args["options"]  # as yoyo reads it, to pass to psycopg.connect
    assert options == f"-c work_mem=8MB -c {SCHEME_GUC}=months-only"  # the user's own options are kept
    assert "options" not in _yoyo_uri("host=db user=careflow_app dbname=careflow")  # None: no variable, no change


def test_migrate_refuses_an_unknown_scheme_before_connecting():
    with pytest.raises(UsageError, match="is not one of per-clinic, months-only"):
        migrate("host=127.0.0.1 port=1 user=x dbname=careflow", scheme="monthly")


def test_data_migrate_offers_the_choices_and_exits_2():
    code, _out, err = run_cli("data", "migrate", "--scheme", "monthly", "--dsn", "postgresql://x@127.0.0.1:1/careflow")
    assert code == 2
    assert "'monthly' is not one of 'per-clinic', 'months-only'" in err
    assert "Traceback" not in err
