"""One source for each fact that Python and the playbook share.

Where Python reads the fact from the inventory or ``site.yml`` (timing
presets, play order, the roles both tools apply), the tests prove it reads
it: change the file, and Python follows. Where both sides keep their own copy
(role and user names, secret names, the server settings the schema needs),
the tests prove the copies agree and name the one to fix.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from careflow_ha.cluster.timing import GROUP_VARS, TIMING_PRESETS, Timing, read_presets
from careflow_ha.data.db import REQUIRED_GUCS
from careflow_ha.errors import UsageError
from careflow_ha.provision.inventory import PLAYBOOK, ROLES, site_plays
from careflow_ha.pyinfra_deploys.deploy import DEPLOYS, PREFLIGHT_ROLE, plays_from_site
from careflow_ha.pyinfra_deploys.etcd import etcd
from careflow_ha.settings import (
    BENCH_ROLE,
    DB_NAME,
    HAPROXY_STATS_USER,
    PATRONI_API_USER,
    PROJECT_DIR,
    ROLE_NAMES,
    SECRET_KEYS,
)
from tests.cli import run_cli

GV = yaml.safe_load(GROUP_VARS.read_text())
ARGUMENT_SPECS = PROJECT_DIR / "roles" / "preflight" / "meta" / "argument_specs.yml"


# --- Timing presets: read from group_vars ----------------------------------


def test_timing_presets_are_group_vars_patroni_half():
    assert dict(TIMING_PRESETS) == {
        name: Timing(p["ttl"], p["loop_wait"], p["retry_timeout"]) for name, p in GV["careflow_timing_presets"].items()
    }


def test_a_preset_added_to_group_vars_is_read(tmp_path):
    presets = {**GV["careflow_timing_presets"], "slow": {"ttl": 60, "loop_wait": 10, "retry_timeout": 20}}
    (tmp_path / "all.yml").write_text(yaml.safe_dump({"careflow_timing_presets": presets}))
    assert read_presets(tmp_path / "all.yml")["slow"] == Timing(60, 10, 20)


@pytest.mark.parametrize("argv", [["provision"], ["up"], ["drill", "run", "switchover"], ["drill", "all"]])
def test_every_preset_flag_offers_the_group_vars_presets(argv):
    code, _out, err = run_cli(*argv, "--preset", "turbo")
    assert code == 2
    offered = ", ".join(f"'{name}'" for name in GV["careflow_timing_presets"])
    assert f"'turbo' is not one of {offered}" in err


def test_the_preflight_role_accepts_exactly_the_group_vars_presets():
    # argument_specs cannot read group_vars, so this test holds the two together.
    spec = yaml.safe_load(ARGUMENT_SPECS.read_text())["argument_specs"]["main"]["options"]
    assert spec["careflow_timing_preset"]["choices"] == list(GV["careflow_timing_presets"]), (
        f"update choices in {ARGUMENT_SPECS.relative_to(PROJECT_DIR)} to the presets of group_vars/all.yml"
    )


# --- Role, user and database names: two copies, proven equal ---------------


@pytest.mark.parametrize(
    ("python_value", "group_var"),
    [
        (ROLE_NAMES["superuser"], "careflow_superuser"),
        (ROLE_NAMES["replication"], "careflow_replication_user"),
        (ROLE_NAMES["rewind"], "careflow_rewind_user"),
        (ROLE_NAMES["app"], "careflow_app_user"),
        (ROLE_NAMES["ro"], "careflow_ro_user"),
        (ROLE_NAMES["admin"], "careflow_admin_user"),
        (BENCH_ROLE, "careflow_bench_user"),
        (PATRONI_API_USER, "careflow_patroni_api_user"),
        (HAPROXY_STATS_USER, "careflow_haproxy_stats_user"),
        (DB_NAME, "careflow_database"),
    ],
)
def test_settings_names_agree_with_group_vars(python_value, group_var):
    # settings.py is read before any inventory exists (every CLI call, the local test server),
    # so it keeps its own copy; this is what keeps it honest.
    assert python_value == GV[group_var], f"settings.py says {python_value!r}, group_vars/all.yml {group_var}"


def test_every_secret_in_env_is_read_by_group_vars_and_checked_by_preflight():
    lookups = {}
    for name, value in GV.items():
        found = re.fullmatch(r"\{\{ lookup\('ansible\.builtin\.env', '(CAREFLOW_\w+)'\) \}\}", str(value))
        if found:
            lookups[found[1]] = name
    assert set(lookups) == set(SECRET_KEYS)
    required = yaml.safe_load((PROJECT_DIR / "roles" / "preflight" / "defaults" / "main.yml").read_text())
    assert set(required["preflight_required_secrets"]) == set(lookups.values())


def test_the_preflight_role_checks_the_addresses_of_the_groups_python_checks():
    from careflow_ha.provision.checks import HOST_GROUPS

    defaults = yaml.safe_load((PROJECT_DIR / "roles" / "preflight" / "defaults" / "main.yml").read_text())
    assert tuple(defaults["preflight_host_groups"]) == HOST_GROUPS


def test_patroni_archives_with_the_command_the_backup_code_builds():
    from careflow_ha.backup.commands import Pgbackrest

    params = GV["careflow_postgresql_parameters"]
    stanza = GV["careflow_cluster_scope"]  # careflow_pgbackrest_stanza defaults to the Patroni scope
    assert GV["careflow_pgbackrest_stanza"] == "{{ careflow_cluster_scope }}"
    assert params["archive_command"].replace("{{ careflow_pgbackrest_stanza }}", stanza) == Pgbackrest(
        stanza).archive_command()
    assert params["archive_mode"] == "on" and params["archive_timeout"] == "{{ careflow_archive_timeout }}"


def test_the_schema_needs_what_patroni_configures():
    params = GV["careflow_postgresql_parameters"]
    for name, value in REQUIRED_GUCS.items():
        configured = str(params.get(name))
        if name == "shared_preload_libraries":  # a list: the schema needs its library among the others
            assert value in configured.split(","), f"careflow_postgresql_parameters.{name} must include {value!r}"
        else:
            assert configured == value, f"careflow_postgresql_parameters.{name} must be {value!r}"


# --- Play order and roles: read from site.yml --------------------------------


def test_pyinfra_runs_site_yml_plays_in_order():
    plays = [p for p in site_plays() if p.roles != (PREFLIGHT_ROLE,)]
    assert list(plays_from_site()) == [(p.groups, tuple(DEPLOYS[r] for r in p.roles)) for p in plays]
    assert plays_from_site()[0] == (("all",), (DEPLOYS["tls"],))  # the certificates first, on every host
    assert plays_from_site()[1] == (("postgres_cluster", "etcd_cluster", "backup_repository"), (DEPLOYS["common"],))


def test_every_role_of_site_yml_has_a_deploy():
    assert set(ROLES) - {PREFLIGHT_ROLE} == set(DEPLOYS)


def test_a_play_added_to_site_yml_is_followed_and_an_unknown_role_is_one_line(tmp_path: Path):
    site = yaml.safe_load(PLAYBOOK.read_text())
    site.append({"name": "Extra etcd pass", "hosts": "etcd_cluster", "roles": [{"role": "etcd"}]})
    (tmp_path / "site.yml").write_text(yaml.safe_dump(site))
    assert plays_from_site(site_plays(tmp_path / "site.yml"))[-1] == (("etcd_cluster",), (etcd,))
    site.append({"name": "Dashboards", "hosts": "monitoring", "roles": [{"role": "grafana"}]})
    (tmp_path / "site.yml").write_text(yaml.safe_dump(site))
    with pytest.raises(UsageError, match="role grafana, which has no pyinfra deploy") as err:
        plays_from_site(site_plays(tmp_path / "site.yml"))
    assert "\n" not in str(err.value)
