"""The inventory check both provisioners run: table-driven over broken inventories (no network).

Each case edits a copy of the lab inventory (or its group_vars) in one way and
expects the one-line message that names the fix; the untouched copy passes.
The child process that pyinfra runs in stops with exit 2 and that one line.
The CLI's view of the same check, for both tools, is tests/unit/cli/test_inventory_check_cli.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from careflow_ha.errors import UsageError
from careflow_ha.provision import LAB_INVENTORY
from careflow_ha.provision.checks import check_inventory, check_inventory_file
from careflow_ha.provision.inventory import load_inventory
from careflow_ha.settings import PROJECT_DIR, SECRET_KEYS

SECRETS = {key: f"{key.lower()}-s3cr3t-value" for key in SECRET_KEYS}
Edit = Callable[[dict, dict], None]


def _hosts(inv: dict, group: str) -> dict:
    return inv["all"]["children"][group]["hosts"]


def _no_change(inv: dict, gv: dict) -> None:
    pass


def _even_etcd(inv: dict, gv: dict) -> None:
    _hosts(inv, "etcd_cluster").pop("pg3")


def _one_etcd(inv: dict, gv: dict) -> None:
    _hosts(inv, "etcd_cluster").pop("pg3")
    _hosts(inv, "etcd_cluster").pop("pg2")


def _no_balancers(inv: dict, gv: dict) -> None:
    del inv["all"]["children"]["balancers"]


def _ip_outside(inv: dict, gv: dict) -> None:
    _hosts(inv, "balancers")["lb1"]["careflow_node_ip"] = "10.0.0.10"


def _ip_missing(inv: dict, gv: dict) -> None:
    _hosts(inv, "balancers")["lb1"] = None


def _ip_garbage(inv: dict, gv: dict) -> None:
    _hosts(inv, "balancers")["lb1"]["careflow_node_ip"] = "not-an-ip"


def _duplicate_ip(inv: dict, gv: dict) -> None:
    _hosts(inv, "balancers")["lb1"]["careflow_node_ip"] = "192.168.56.11"


def _mon_ip_outside(inv: dict, gv: dict) -> None:
    _hosts(inv, "monitoring")["mon1"]["careflow_node_ip"] = "10.0.0.40"


def _mon_ip_duplicate(inv: dict, gv: dict) -> None:
    _hosts(inv, "monitoring")["mon1"]["careflow_node_ip"] = "192.168.56.10"


def _no_monitoring(inv: dict, gv: dict) -> None:
    del inv["all"]["children"]["monitoring"]


def _backup_ip_duplicate(inv: dict, gv: dict) -> None:
    _hosts(inv, "backup_repository")["backup1"]["careflow_node_ip"] = "192.168.56.40"


def _no_backup_repository(inv: dict, gv: dict) -> None:
    del inv["all"]["children"]["backup_repository"]


def _exporter_port_clash(inv: dict, gv: dict) -> None:
    gv["careflow_node_exporter_port"] = gv["careflow_patroni_api_port"]


def _port_clash(inv: dict, gv: dict) -> None:
    gv["careflow_haproxy_ro_port"] = gv["careflow_haproxy_rw_port"]


def _bad_timing(inv: dict, gv: dict) -> None:
    gv["careflow_timing_presets"]["default"]["loop_wait"] = 20


def _short_ttl(inv: dict, gv: dict) -> None:
    gv["careflow_timing_presets"]["default"].update(ttl=15, loop_wait=1, retry_timeout=2)


def _sync_needs_standbys(inv: dict, gv: dict) -> None:
    gv["careflow_synchronous_node_count"] = 3


def _bad_network(inv: dict, gv: dict) -> None:
    gv["careflow_cluster_network"] = "192.168.56.0/33"


def _allowlist_garbage(inv: dict, gv: dict) -> None:
    gv["careflow_patroni_api_allowlist"] = ["192.168.56.0/24", "control-host"]


def _allowlist_not_a_list(inv: dict, gv: dict) -> None:
    gv["careflow_patroni_api_allowlist"] = "192.168.56.0/24"


def _vip_outside(inv: dict, gv: dict) -> None:
    gv["careflow_vip"] = "10.0.0.100"


def _vip_is_a_host(inv: dict, gv: dict) -> None:
    gv["careflow_vip"] = "192.168.56.20"


def _vip_garbage(inv: dict, gv: dict) -> None:
    gv["careflow_vip"] = "192.168.56.300"


def _vip_one_balancer(inv: dict, gv: dict) -> None:
    _hosts(inv, "balancers").pop("lb2")


def _no_vip_one_balancer(inv: dict, gv: dict) -> None:
    gv["careflow_vip"] = ""
    _hosts(inv, "balancers").pop("lb2")


def _leader_vip_outside(inv: dict, gv: dict) -> None:
    gv["careflow_leader_vip"] = "10.0.0.101"


def _leader_vip_is_a_node(inv: dict, gv: dict) -> None:
    gv["careflow_leader_vip"] = "192.168.56.12"


def _leader_vip_is_the_vip(inv: dict, gv: dict) -> None:
    gv["careflow_leader_vip"] = gv["careflow_vip"]


def _no_leader_vip(inv: dict, gv: dict) -> None:
    gv["careflow_leader_vip"] = ""


def _scheme_typo(inv: dict, gv: dict) -> None:
    gv["careflow_partition_scheme"] = "months"


def _scheme_missing(inv: dict, gv: dict) -> None:
    gv.pop("careflow_partition_scheme")


def _scheme_months_only(inv: dict, gv: dict) -> None:
    inv["all"].setdefault("vars", {})["careflow_partition_scheme"] = "months-only"  # the inventory overrides


CASES: list[tuple[str, Edit, str | None]] = [
    ("the lab inventory passes", _no_change, None),
    ("even etcd", _even_etcd, "etcd_cluster has 2 members; it needs an odd number, at least 3"),
    ("one etcd", _one_etcd, "etcd_cluster has 1 members"),
    ("no balancers", _no_balancers, "Inventory has no hosts in group 'balancers'"),
    ("ip outside the network", _ip_outside, "Host lb1 needs careflow_node_ip set to its address inside"),
    ("ip missing", _ip_missing, "got nothing"),
    ("ip garbage", _ip_garbage, "got not-an-ip"),
    ("duplicate ip", _duplicate_ip, "careflow_node_ip must be unique"),
    ("port clash", _port_clash, "Two services share a port"),
    ("monitoring host outside the network", _mon_ip_outside, "Host mon1 needs careflow_node_ip set to its address"),
    ("monitoring host on a balancer's address", _mon_ip_duplicate, "careflow_node_ip must be unique"),
    ("no monitoring host is fine", _no_monitoring, None),
    ("backup host on the monitoring host's address", _backup_ip_duplicate, "careflow_node_ip must be unique"),
    ("no backup repository host is fine", _no_backup_repository, None),
    ("exporter port clash", _exporter_port_clash, "Two services share a port"),
    ("bad timing", _bad_timing, "Patroni needs loop_wait + 2*retry_timeout <= ttl and ttl >= 20"),
    ("short ttl", _short_ttl, "ttl=15"),
    ("sync needs standbys", _sync_needs_standbys, "synchronous_node_count=3 needs more than that many"),
    ("bad network", _bad_network, "is not a network"),
    ("allowlist entry not an address", _allowlist_garbage, "entry 'control-host' is not an address or a network"),
    ("allowlist not a list", _allowlist_not_a_list, "must be a list of addresses or networks"),
    ("vip outside the network", _vip_outside, "careflow_vip=10.0.0.100 is outside careflow_cluster_network"),
    ("vip is a host's address", _vip_is_a_host, "careflow_vip=192.168.56.20 is also the careflow_node_ip of lb2"),
    ("vip garbage", _vip_garbage, "careflow_vip='192.168.56.300' is not an IP address"),
    ("vip with one balancer", _vip_one_balancer, "careflow_vip is set but balancers has 1 host(s)"),
    ("no vip, one balancer is fine", _no_vip_one_balancer, None),
    ("leader vip outside the network", _leader_vip_outside,
     "careflow_leader_vip=10.0.0.101 is outside careflow_cluster_network"),
    ("leader vip is a node's address", _leader_vip_is_a_node,
     "careflow_leader_vip=192.168.56.12 is also the careflow_node_ip of pg2"),
    ("leader vip is the client vip", _leader_vip_is_the_vip,
     "careflow_leader_vip=192.168.56.100 is also careflow_vip; give each VIP its own address"),
    ("no leader vip is fine", _no_leader_vip, None),
    ("partition scheme typo", _scheme_typo,
     "careflow_partition_scheme='months' is not one of per-clinic, months-only; set one in"),
    ("partition scheme missing", _scheme_missing, "variable careflow_partition_scheme is not defined"),
    ("partition scheme months-only", _scheme_months_only, None),
]
VIP_FIXES = ('pick a free address inside it', "pick an address no host uses", "add a balancer")


def _write(tmp_path: Path, edit: Edit) -> Path:
    inv = yaml.safe_load(LAB_INVENTORY.read_text())
    gv = yaml.safe_load((LAB_INVENTORY.parent / "group_vars" / "all.yml").read_text())
    edit(inv, gv)
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text(yaml.safe_dump(gv))
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inv))
    return path


@pytest.mark.parametrize("edit,message", [(e, m) for _, e, m in CASES], ids=[c[0] for c in CASES])
def test_inventory_check_names_the_fix(tmp_path, edit, message):
    inv = load_inventory(_write(tmp_path, edit), SECRETS)
    if message is None:
        check_inventory(inv, check_wheelhouse=False)
        return
    with pytest.raises(UsageError) as err:
        check_inventory(inv, check_wheelhouse=False)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("edit", [_vip_outside, _vip_is_a_host, _vip_one_balancer])
def test_vip_rules_name_the_fix_and_the_way_out(tmp_path, edit):
    with pytest.raises(UsageError) as err:
        check_inventory(load_inventory(_write(tmp_path, edit), SECRETS), check_wheelhouse=False)
    message = str(err.value)
    assert any(fix in message for fix in VIP_FIXES) and 'set careflow_vip: "" to run without a VIP' in message


@pytest.mark.parametrize("edit", [_leader_vip_outside, _leader_vip_is_a_node, _leader_vip_is_the_vip])
def test_leader_vip_rules_name_the_way_out(tmp_path, edit):
    with pytest.raises(UsageError) as err:
        check_inventory(load_inventory(_write(tmp_path, edit), SECRETS), check_wheelhouse=False)
    assert 'set careflow_leader_vip: "" to run without a leader VIP' in str(err.value)


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_each_missing_secret_is_named_never_printed(key):
    inv = load_inventory(LAB_INVENTORY, {**SECRETS, key: "short"})
    with pytest.raises(UsageError, match=f"{key.lower()} is empty or too short") as err:
        check_inventory(inv, check_wheelhouse=False)
    assert "short" not in str(err.value).replace("too short", "")


def test_missing_wheelhouse_is_named(tmp_path):
    inv = load_inventory(LAB_INVENTORY, SECRETS, {"careflow_wheelhouse_dir": str(tmp_path / "none")})
    with pytest.raises(UsageError, match="No wheelhouse at .*none/wheels.tar; run `careflow-ha provision`"):
        check_inventory(inv)


@pytest.mark.parametrize(
    "edit,first_words",
    [(_even_etcd, "error: etcd_cluster has 2 members"), (_vip_outside, "error: careflow_vip=10.0.0.100 is outside")],
)
def test_the_deploy_process_stops_before_any_host_with_one_line(tmp_path, edit, first_words):
    """The pyinfra child process: the check fails -> exit 2, one line, no traceback, no secret, no host contacted."""
    bad = _write(tmp_path, edit)
    proc = subprocess.run(
        [sys.executable, "-m", "careflow_ha.pyinfra_deploys", "-i", str(bad), "--result", str(tmp_path / "r.json")],
        cwd=PROJECT_DIR, env={**os.environ, **SECRETS}, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(first_words), proc.stderr
    assert "PLAY [" not in proc.stdout  # stopped before the first play
    assert not (tmp_path / "r.json").exists()
    for secret in SECRETS.values():
        assert secret not in proc.stdout + proc.stderr


def test_bad_extra_var_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "careflow_ha.pyinfra_deploys", "-i", str(LAB_INVENTORY), "-e", "novalue",
         "--result", str(tmp_path / "r.json")],
        cwd=PROJECT_DIR, env={**os.environ, **SECRETS}, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: -e 'novalue' must be KEY=VALUE"


def test_the_deploy_process_names_line_and_column_of_a_yaml_error(tmp_path):
    """Started by hand, the child gives the same one line as the CLI for malformed YAML."""
    bad = _write(tmp_path, _no_change)
    (tmp_path / "group_vars" / "all.yml").write_text("careflow_pg_port: 5432\ncareflow_pg_port: [5432\n")
    proc = subprocess.run(
        [sys.executable, "-m", "careflow_ha.pyinfra_deploys", "-i", str(bad), "--result", str(tmp_path / "r.json")],
        cwd=PROJECT_DIR, env={**os.environ, **SECRETS}, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path}/group_vars/all.yml:3:1: not valid YAML (expected ',' or ']', but got '<stream end>'); "
        "fix the syntax at line 3, column 1"
    ]


def test_host_vars_and_group_vars_folders_are_read_as_ansible_reads_them(tmp_path):
    """A valid production layout must not be refused: host_vars/<host>.yml and group_vars/<group>/*.yml."""
    path = _write(tmp_path, lambda inv, gv: _hosts(inv, "balancers").update(lb1=None))
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "host_vars" / "lb1.yaml").write_text("careflow_node_ip: 192.168.56.10\n")
    (tmp_path / "group_vars" / "balancers").mkdir()
    (tmp_path / "group_vars" / "balancers" / "haproxy.yml").write_text("careflow_haproxy_stats_port: 7001\n")
    inv = load_inventory(path, SECRETS)
    check_inventory(inv, check_wheelhouse=False)
    assert inv.hostvars["lb1"]["careflow_node_ip"] == "192.168.56.10"
    assert inv.hostvars["lb1"]["careflow_haproxy_stats_port"] == 7001
    assert inv.hostvars["pg1"]["careflow_haproxy_stats_port"] == 7000  # a group's folder applies to that group only


def _vault_secret(inv: dict, gv: dict) -> None:
    gv["careflow_app_password"] = "{{ lookup('community.hashi_vault.hashi_vault', 'secret/careflow:app') }}"


def test_a_vault_lookup_is_left_to_ansible_and_refused_for_pyinfra(tmp_path):
    """Ansible can resolve a vault lookup (its preflight role then checks the secret); pyinfra cannot."""
    inv = load_inventory(_write(tmp_path, _vault_secret), SECRETS)
    check_inventory(inv, check_wheelhouse=False, lookups_checked_later=True)
    with pytest.raises(UsageError, match="lookup\\('community.hashi_vault.hashi_vault'\\) is not supported"):
        check_inventory(inv, check_wheelhouse=False)


@pytest.mark.parametrize(
    ("text", "fix"),
    [
        ("# hosts\n[etcd_cluster]\npg1 careflow_node_ip=192.168.56.11\n", "looks like an INI inventory; only YAML"),
        ("etcd_cluster:\n  hosts: {pg1: {}}\n", "not a YAML inventory with a top-level 'all' group"),
        ("all:\n  children:\n    etcd_cluster:\n      hosts:\n        pg1: 192.168.56.11\n",
         "variables of host 'pg1' must be a mapping (name: value), not a str"),
        ("all:\n  vars: [ansible_user]\n", "vars of group 'all' must be a mapping (name: value), not a list"),
        ("all:\n  children: [etcd_cluster]\n", "children of group 'all' must be a mapping"),
    ],
)
def test_a_malformed_inventory_structure_is_one_line(tmp_path, text, fix):
    path = tmp_path / "inventory.yml"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        load_inventory(path, SECRETS)
    assert fix in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["lab.yml", "vagrant.yml"])
def test_the_shipped_inventories_pass(name):
    inv = check_inventory_file(LAB_INVENTORY.parent / name, SECRETS)
    assert set(inv.group("etcd_cluster")) == {"pg1", "pg2", "pg3"}
