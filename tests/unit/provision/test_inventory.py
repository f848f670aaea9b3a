"""The pyinfra inventory reads the Ansible inventory, group_vars and role defaults (no network).

The decisive check renders every role template with Ansible itself (on the
control host, connection=local) and with the pyinfra inventory, and compares
them byte for byte: one source of truth, two renderers, identical files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from careflow_ha.errors import UsageError
from careflow_ha.lab.wheelhouse import ARCHIVE_NAME
from careflow_ha.provision import LAB_INVENTORY
from careflow_ha.provision.inventory import ROLES, load_inventory
from careflow_ha.pyinfra_deploys import _data
from careflow_ha.pyinfra_deploys.deploy import pyinfra_inventory
from careflow_ha.pyinfra_deploys.ops import dcs_needs_patch
from careflow_ha.settings import PROJECT_DIR, SECRET_KEYS

SECRETS = {key: f"{key.lower()}-s3cr3t-value" for key in SECRET_KEYS}


@pytest.fixture(scope="module")
def lab():
    return load_inventory(LAB_INVENTORY, SECRETS)


def test_groups_and_hosts_come_from_the_ansible_inventory(lab):
    assert lab.group("etcd_cluster") == ("pg1", "pg2", "pg3")
    assert lab.group("postgres_cluster") == ("pg1", "pg2", "pg3")
    assert lab.group("balancers") == ("lb1", "lb2")
    assert lab.group("monitoring") == ("mon1",)
    assert lab.group("backup_repository") == ("backup1",)
    assert set(lab.hosts) == {"pg1", "pg2", "pg3", "lb1", "lb2", "mon1", "backup1"}


@pytest.mark.parametrize(
    "host,name,expected",
    [
        ("pg2", "careflow_node_ip", "192.168.56.12"),  # host var
        ("pg1", "careflow_pg_port", 5432),  # group_vars/all.yml
        ("pg1", "etcd_data_dir", "/var/lib/etcd/careflow"),  # role default with a Jinja expression
        ("pg1", "patroni_maximum_lag_on_failover", 1048576),  # `| int` keeps the type
        ("pg3", "__etcd_initial_cluster",
         "pg1=https://192.168.56.11:2380,pg2=https://192.168.56.12:2380,pg3=https://192.168.56.13:2380"),
        ("pg1", "__etcd_peer_url", "https://192.168.56.11:2380"),
        ("pg2", "__etcd_peer_url", "https://192.168.56.12:2380"),  # per host, not per group
        ("lb1", "careflow_wheelhouse_dir", str(PROJECT_DIR / ".lab" / "wheelhouse")),  # playbook_dir
        # the file careflow_ha/lab/wheelhouse.py writes
        ("pg1", "careflow_wheelhouse_archive", str(PROJECT_DIR / ".lab" / "wheelhouse" / ARCHIVE_NAME)),
        ("pg1", "careflow_app_password", SECRETS["CAREFLOW_APP_PASSWORD"]),  # lookup('env') -> Settings.secrets
        ("pg1", "ansible_user", "root"),  # all.vars
    ],
)
def test_variables_resolve_like_ansible(lab, host, name, expected):
    assert lab.hostvars[host][name] == expected


def test_dcs_wanted_is_typed_like_ansible_native(lab):
    dcs = lab.hostvars["pg1"]["__patroni_dcs_wanted"]
    assert (dcs["ttl"], dcs["loop_wait"], dcs["retry_timeout"]) == (30, 10, 10)
    assert dcs["synchronous_mode"] is True and dcs["synchronous_node_count"] == 1
    assert dcs["postgresql"]["parameters"] == lab.hostvars["pg1"]["careflow_postgresql_parameters"]
    # Never Patroni's 0 (wait forever): a cut-off primary's shutdown can hang on pg_cron (roles/patroni/defaults).
    assert dcs["primary_stop_timeout"] == 20


@pytest.mark.parametrize(
    "extra,ttl,sync",
    [
        ({}, 30, True),  # no-op: the defaults
        ({"careflow_timing_preset": "fast"}, 20, True),
        ({"careflow_synchronous_mode": "false"}, 30, False),  # -e strings go through `| bool`
        ({"careflow_timing_preset": "fast", "careflow_synchronous_mode": "true"}, 20, True),
    ],
)
def test_extra_vars_win_like_ansible_e(extra, ttl, sync):
    dcs = load_inventory(LAB_INVENTORY, SECRETS, extra).hostvars["pg1"]["__patroni_dcs_wanted"]
    assert dcs["ttl"] == ttl and dcs["synchronous_mode"] is sync


def test_missing_secret_resolves_empty_so_preflight_names_it():
    inv = load_inventory(LAB_INVENTORY, {**SECRETS, "CAREFLOW_RO_PASSWORD": ""})
    assert inv.hostvars["pg1"]["careflow_ro_password"] == ""


def test_pyinfra_host_data_mirrors_the_inventory(lab):
    pinv = pyinfra_inventory(lab, list(lab.hosts), PROJECT_DIR / ".lab" / "ssh_config")
    host = pinv.get_host("pg2")
    assert host.data.careflow_node_ip == "192.168.56.12"
    assert host.data.ssh_user == "root"  # from ansible_user
    assert host.data.ssh_config_file.endswith(".lab/ssh_config")
    assert sorted(h.name for h in pinv.get_group("balancers")) == ["lb1", "lb2"]


def test_patroni_config_carries_the_secrets_and_the_wanted_dcs(lab):
    config = yaml.safe_load(lab.render_template("patroni", "patroni.yml.j2", "pg3"))
    assert config["name"] == "pg3"
    assert config["restapi"]["authentication"]["password"] == SECRETS["CAREFLOW_PATRONI_API_PASSWORD"]
    assert config["postgresql"]["authentication"]["rewind"]["password"] == SECRETS["CAREFLOW_REWIND_PASSWORD"]
    assert config["bootstrap"]["dcs"] == lab.hostvars["pg3"]["__patroni_dcs_wanted"]


def test_haproxy_config_lists_every_postgres_member_in_both_listeners(lab):
    cfg = lab.render_template("haproxy", "haproxy.cfg.j2", "lb1")
    for ip in ("192.168.56.11", "192.168.56.12", "192.168.56.13"):
        assert cfg.count(f"{ip}:5432") == 2


@pytest.mark.parametrize(
    "role,tasks,src,dest,mode,validate",
    [
        ("etcd", "configure.yml", "etcd.default.j2", "/etc/default/etcd", "0644", None),
        ("patroni", "configure.yml", "patroni.yml.j2", "{{ patroni_config_file }}", "0600", "--validate-config"),
        ("haproxy", "configure.yml", "haproxy.cfg.j2", "/etc/haproxy/haproxy.cfg", "0600", "haproxy -c -f %s"),
        ("keepalived", "configure.yml", "keepalived.conf.j2", "/etc/keepalived/keepalived.conf", "0600",
         "keepalived -t -f %s"),
        ("prometheus", "configure.yml", "prometheus.yml.j2", "{{ prometheus_config_file }}", "0644",
         "promtool check config %s"),
        ("postgres_exporter", "configure.yml", "prometheus-postgres-exporter.default.j2",
         "/etc/default/prometheus-postgres-exporter", "0640", None),
        ("pgbouncer", "configure.yml", "careflow-users.txt.j2", "{{ pgbouncer_auth_file }}", "0600", None),
        ("pgbouncer", "configure.yml", "pgbouncer.ini.j2", "{{ pgbouncer_config_dir }}/careflow-{{ item.name }}.ini",
         "0640", "{{ pgbouncer_validate_script }} %s"),
    ],
)
def test_role_template_tasks_are_read_not_copied(role, tasks, src, dest, mode, validate):
    args = _data._task(role, tasks, "template", "src", src)
    assert args["dest"] == dest and args["mode"] == mode
    assert (validate is None and "validate" not in args) or validate in args["validate"]


def test_a_missing_role_task_is_a_clear_error():
    with pytest.raises(LookupError, match="no template task with src: nope.j2"):
        _data._task("etcd", "configure.yml", "template", "src", "nope.j2")


@pytest.mark.parametrize(
    "current,wanted,needs",
    [
        ({"ttl": 30, "postgresql": {"parameters": {"a": 1, "b": 2}}}, {"ttl": 30}, False),  # no-op
        ({"ttl": 30, "postgresql": {"parameters": {"a": 1}}}, {"postgresql": {"parameters": {"a": 1}}}, False),
        ({"ttl": 20}, {"ttl": 30}, True),
        ({"postgresql": {"parameters": {"a": 1}}}, {"postgresql": {"parameters": {"a": 2}}}, True),
        ({}, {"synchronous_mode": False}, True),  # missing key
    ],
)
def test_dcs_patch_only_when_the_running_config_differs(current, wanted, needs):
    assert dcs_needs_patch(current, wanted) is needs


@pytest.mark.parametrize(
    "text,message",
    [
        ("all: [", r"bad\.yml:\d+:\d+: not valid YAML \(.*\); fix the syntax at line \d+, column \d+$"),
        ("- just\n- a list\n", "is not a YAML inventory with a top-level 'all' group"),
        ("ungrouped: {}\n", "is not a YAML inventory with a top-level 'all' group"),
    ],
)
def test_bad_inventory_files_fail_with_one_line(tmp_path, text, message):
    bad = tmp_path / "bad.yml"
    bad.write_text(text)
    with pytest.raises(UsageError, match=message) as err:
        load_inventory(bad, SECRETS)
    assert "\n" not in str(err.value)


def test_missing_inventory_names_the_fix(tmp_path):
    with pytest.raises(UsageError, match="pass -i with an inventory file"):
        load_inventory(tmp_path / "nope.yml", SECRETS)


#: One Ansible run renders a whole list of (host, role, template, loop item) cases: Ansible's start-up,
#: not the rendering, is what costs seconds, so a run per case cost the unit suite a minute and a half.
_RENDER_PLAY = """
- hosts: all
  gather_facts: false
  tasks:
    - name: Render each case of this host
      ansible.builtin.template:
        src: "{{ case.src }}"
        dest: "{{ case.dest }}"
        mode: "0600"
      loop: "{{ careflow_render_cases | selectattr('host', 'equalto', inventory_hostname) | list }}"
      loop_control: {loop_var: case}
      vars:
        item: "{{ case.item }}"
"""

RenderCase = tuple[str, str, str, "dict | None"]


def _ansible_render_many(cases: list[RenderCase], dest: Path) -> dict[int, str]:
    """Ansible's own rendering of each role template case for its host (on this machine:
    connection=local), in one ``ansible-playbook`` run; the texts by the cases' index. ``item``: the
    loop item of a looped template task."""
    dest.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **SECRETS, "ANSIBLE_CONFIG": str(PROJECT_DIR / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    defaults = []
    for name in ROLES:  # the play's roles' defaults (patroni's refer to postgresql's)
        path = PROJECT_DIR / "roles" / name / "defaults" / "main.yml"
        defaults += ["-e", f"@{path}"]
    play = dest / "render.yml"
    play.write_text(_RENDER_PLAY)
    listed = [{"host": host, "src": str(PROJECT_DIR / "roles" / role / "templates" / template),
               "dest": str(dest / f"{i}.out"), "item": item or {}}
              for i, (host, role, template, item) in enumerate(cases)]
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"), str(play), "-i", str(LAB_INVENTORY), "-c", "local",
            "-l", ",".join(sorted({c[0] for c in cases})), "-e", f"ansible_python_interpreter={sys.executable}",
            *defaults, "-e", json.dumps({"careflow_render_cases": listed}),
        ],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-500:]
    return {i: (dest / f"{i}.out").read_text() for i in range(len(cases))}


#: The templates whose pyinfra rendering must be byte for byte Ansible's (every role; hosts chosen so
#: that each host-dependent branch is met once).
RENDER_CASES: list[tuple[str, str, str]] = [
    ("pg2", "etcd", "etcd.default.j2"),
    ("pg1", "patroni", "patroni.yml.j2"),
    ("pg3", "patroni", "patroni.service.j2"),
    ("lb1", "haproxy", "haproxy.cfg.j2"),
    ("lb1", "keepalived", "keepalived.conf.j2"),
    ("lb2", "keepalived", "keepalived.conf.j2"),
    ("lb2", "keepalived", "careflow-check-haproxy.sh.j2"),
    ("pg1", "keepalived", "keepalived.conf.j2"),
    ("pg2", "keepalived", "careflow-check-leader.sh.j2"),
    ("mon1", "prometheus", "prometheus.yml.j2"),
    ("mon1", "prometheus", "prometheus.default.j2"),
    ("mon1", "node_exporter", "prometheus-node-exporter.default.j2"),
    ("lb2", "node_exporter", "prometheus-node-exporter.default.j2"),
    ("pg3", "postgres_exporter", "prometheus-postgres-exporter.default.j2"),
    ("pg1", "patroni", "pgbouncer-auth.sql.j2"),
    ("pg2", "patroni", "emr-prepare.sql.j2"),
    ("lb1", "pgbouncer", "careflow-users.txt.j2"),
    ("lb2", "pgbouncer", "careflow-pgbouncer@.service.j2"),
    ("lb1", "pgbouncer", "careflow-pgbouncer-validate.py.j2"),
]


@pytest.fixture(scope="module")
def ansible_rendered(tmp_path_factory) -> dict[int, str]:
    return _ansible_render_many([(*case, None) for case in RENDER_CASES], tmp_path_factory.mktemp("rendered"))


@pytest.mark.parametrize("index", range(len(RENDER_CASES)), ids=["-".join(c) for c in RENDER_CASES])
def test_pyinfra_renders_each_role_template_exactly_as_ansible_does(lab, ansible_rendered, index):
    host, role, template = RENDER_CASES[index]
    assert lab.render_template(role, template, host) == ansible_rendered[index]
