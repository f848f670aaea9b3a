"""The monitoring roles (prometheus, node_exporter, postgres_exporter) rendered from the inventory.

The byte-for-byte comparison with Ansible's own rendering is in tests/unit/provision/test_inventory.py
(with every other role template); here: what the files say. The scrape configuration must list
exactly the inventory's hosts (a host added to a copy of the inventory appears, under its name),
pass `promtool check config` with the shipped alert rules, and speak the rules' contract (job
names, interval, the synchronous_mode label). The exporter's connection must need no password.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from careflow_ha.monitoring.rules import RULES_FILE, SCRAPE_INTERVAL_S, parse_duration, promtool
from careflow_ha.provision import LAB_INVENTORY
from careflow_ha.provision.inventory import load_inventory
from careflow_ha.pyinfra_deploys import _data
from careflow_ha.settings import PROJECT_DIR, SECRET_KEYS

SECRETS = {key: f"{key.lower()}-s3cr3t-value" for key in SECRET_KEYS}
ROLES = ("prometheus", "node_exporter", "postgres_exporter")
#: Scrape job -> (inventory group, port variable): the issue's list of sources.
JOBS = {
    "node": ("all", "careflow_node_exporter_port"),
    "postgres": ("postgres_cluster", "careflow_postgres_exporter_port"),
    "patroni": ("postgres_cluster", "careflow_patroni_api_port"),
    "etcd": ("etcd_cluster", "careflow_etcd_metrics_port"),
    "haproxy": ("balancers", "careflow_haproxy_metrics_port"),
}


@pytest.fixture(scope="module")
def lab():
    return load_inventory(LAB_INVENTORY, SECRETS)


def _config(inv, host: str = "mon1") -> dict:
    return yaml.safe_load(inv.render_template("prometheus", "prometheus.yml.j2", host))


def _targets(config: dict, job: str) -> dict[str, str]:
    """instance label -> address, for one job (an instance twice would be a bug: it is counted)."""
    (scrape,) = [j for j in config["scrape_configs"] if j["job_name"] == job]
    out: dict[str, str] = {}
    for group in scrape["static_configs"]:
        (address,) = group["targets"]
        instance = group["labels"]["instance"]
        assert instance not in out, f"{job}: {instance} listed twice"
        out[instance] = address
    return out


def _inventory_copy(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(LAB_INVENTORY.read_text())
    edit(data["all"]["children"])
    (tmp_path / "group_vars").symlink_to(LAB_INVENTORY.parent / "group_vars")
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("job", sorted(JOBS))
def test_each_job_scrapes_exactly_its_groups_hosts_by_name_and_address(lab, job):
    group, port_var = JOBS[job]
    hv = lab.hostvars
    expected = {h: f"{hv[h]['careflow_node_ip']}:{hv[h][port_var]}" for h in lab.group(group)}
    assert _targets(_config(lab), job) == expected
    assert len(expected) >= 2  # a job of one host would hide a loop that renders only the first


def test_prometheus_scrapes_itself_under_its_host_name(lab):
    assert _targets(_config(lab), "prometheus") == {"mon1": f"127.0.0.1:{lab.hostvars['mon1']['prometheus_port']}"}


def test_a_host_added_to_the_inventory_is_scraped_with_no_other_edit(tmp_path):
    def add(children):
        children["postgres_cluster"]["hosts"]["pg4"] = {"careflow_node_ip": "192.168.56.14"}
        children["balancers"]["hosts"]["lb3"] = {"careflow_node_ip": "192.168.56.31"}

    inv = load_inventory(_inventory_copy(tmp_path, add), SECRETS)
    config = _config(inv)
    assert _targets(config, "postgres")["pg4"] == "192.168.56.14:9187"
    assert _targets(config, "patroni")["pg4"] == "192.168.56.14:8008"
    assert _targets(config, "node")["pg4"] == "192.168.56.14:9100"
    assert _targets(config, "haproxy")["lb3"] == "192.168.56.31:8405"
    assert _targets(config, "node")["lb3"] == "192.168.56.31:9100"
    assert "pg4" not in _targets(config, "etcd")  # not an etcd member: etcd's job does not guess
    assert len(_targets(config, "node")) == len(inv.hosts) == 9  # backup1 is scraped too


def test_the_rendered_config_and_the_shipped_rules_pass_promtool(lab, tmp_path):
    """promtool checks the config and, through rule_files, the rules the role installs next to it."""
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    shutil.copy(RULES_FILE, rules_dir / "careflow-alerts.yml")
    inv = load_inventory(LAB_INVENTORY, SECRETS, {"prometheus_rules_dir": str(rules_dir)})
    config = tmp_path / "prometheus.yml"
    config.write_text(inv.render_template("prometheus", "prometheus.yml.j2", "mon1"))
    proc = promtool("check", "config", config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 1 rule files found" in proc.stdout + proc.stderr


def test_promtool_rejects_a_broken_rendering(lab, tmp_path):
    config = tmp_path / "prometheus.yml"
    config.write_text(lab.render_template("prometheus", "prometheus.yml.j2", "mon1").replace(
        "scrape_timeout: 4s", "scrape_timeout: 9s"))  # longer than the interval
    assert promtool("check", "config", config).returncode != 0


def test_the_config_speaks_the_alert_rules_contract(lab):
    config = _config(lab)
    assert parse_duration(config["global"]["scrape_interval"]) == SCRAPE_INTERVAL_S
    assert parse_duration(config["global"]["evaluation_interval"]) == SCRAPE_INTERVAL_S
    rules_jobs = set(re.findall(r'job="(\w+)"', RULES_FILE.read_text()))
    assert rules_jobs and rules_jobs <= {j["job_name"] for j in config["scrape_configs"]}
    assert config["rule_files"] == [f"{lab.hostvars['mon1']['prometheus_rules_dir']}/*.yml"]


@pytest.mark.parametrize(("mode", "label"), [("true", "on"), ("false", "off")])
def test_patroni_targets_carry_the_synchronous_mode_the_sync_alert_reads(mode, label):
    inv = load_inventory(LAB_INVENTORY, SECRETS, {"careflow_synchronous_mode": mode})
    (scrape,) = [j for j in _config(inv)["scrape_configs"] if j["job_name"] == "patroni"]
    assert {g["labels"]["synchronous_mode"] for g in scrape["static_configs"]} == {label}


def test_retention_and_port_are_the_role_variables(tmp_path):
    inv = load_inventory(LAB_INVENTORY, SECRETS, {"prometheus_retention": "30d", "prometheus_port": "9191"})
    args = inv.render_template("prometheus", "prometheus.default.j2", "mon1")
    assert "--storage.tsdb.retention.time=30d" in args and "--web.listen-address=:9191" in args


def test_haproxy_serves_its_exporter_on_the_port_prometheus_scrapes(lab):
    cfg = lab.render_template("haproxy", "haproxy.cfg.j2", "lb1")
    frontend = cfg.split("frontend prometheus\n", 1)[1].split("\n\n", 1)[0]
    assert f"bind *:{lab.hostvars['lb1']['careflow_haproxy_metrics_port']}" in frontend
    assert "http-request use-service prometheus-exporter if { path /metrics }" in frontend
    assert SECRETS["CAREFLOW_HAPROXY_STATS_PASSWORD"] not in frontend  # the exporter needs no credentials


def test_the_postgres_exporter_logs_in_over_the_socket_as_the_mapped_monitoring_role_without_a_password(lab):
    text = lab.render_template("postgres_exporter", "prometheus-postgres-exporter.default.j2", "pg1")
    (dsn,) = re.findall(r"^DATA_SOURCE_NAME='(.*)'$", text, re.M)
    fields = dict(kv.split("=", 1) for kv in dsn.split())
    hv = lab.hostvars["pg1"]
    assert fields == {"host": "/var/run/postgresql", "port": "5432", "user": hv["careflow_monitor_user"],
                      "dbname": "postgres", "sslmode": "disable"}
    assert not any(secret in text for secret in SECRETS.values())
    assert "--web.listen-address=192.168.56.11:9187" in text
    # Patroni's pg_hba lets exactly that role in by peer, only through the map of the exporter's OS user.
    patroni = yaml.safe_load(lab.render_template("patroni", "patroni.yml.j2", "pg1"))["postgresql"]
    peer = [r for r in patroni["pg_hba"] if r.startswith("local") and "peer" in r]
    assert peer == ["local all postgres peer", "local all careflow_monitor peer map=careflow_monitor"]
    assert patroni["pg_ident"] == [f"careflow_monitor {hv['careflow_monitor_os_user']} careflow_monitor"]


def test_the_monitoring_role_is_created_where_the_other_roles_are_with_pg_monitor_only():
    tasks = yaml.safe_load((PROJECT_DIR / "roles" / "patroni" / "tasks" / "roles.yml").read_text())
    user = next(t for t in tasks if t.get("community.postgresql.postgresql_user", {}).get("name")
                == "{{ careflow_monitor_user }}")["community.postgresql.postgresql_user"]
    assert "password" not in user and user["role_attr_flags"] == "LOGIN"
    grant = next(t for t in tasks if t.get("community.postgresql.postgresql_membership", {}).get("target_roles")
                 == ["{{ careflow_monitor_user }}"])["community.postgresql.postgresql_membership"]
    assert grant["groups"] == ["pg_monitor"]


@pytest.mark.parametrize("host", ["pg1", "lb2", "mon1"])
def test_the_node_exporter_listens_on_the_hosts_cluster_address(lab, host):
    text = lab.render_template("node_exporter", "prometheus-node-exporter.default.j2", host)
    port = lab.hostvars[host]["careflow_node_exporter_port"]
    assert f'ARGS="--web.listen-address={lab.hostvars[host]["careflow_node_ip"]}:{port}"' in text


def test_the_rules_task_ships_the_file_the_unit_suite_checks(lab):
    from careflow_ha.pyinfra_deploys.prometheus import RULES_DEST

    args = _data._task("prometheus", "configure.yml", "copy", "dest", RULES_DEST)
    assert args["validate"] == "promtool check rules %s"
    assert Path(lab.render_value(args["src"], "mon1")) == RULES_FILE


# --- the roles' shape: argument_specs, and the pyinfra deploys doing each task --------------------

@pytest.mark.parametrize("role", [*ROLES, "haproxy"])
def test_every_default_and_every_global_read_is_declared_in_argument_specs(role):
    root = PROJECT_DIR / "roles" / role
    defaults = yaml.safe_load((root / "defaults" / "main.yml").read_text())
    options = yaml.safe_load((root / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    public = {k for k in defaults if not k.startswith("__")}
    assert public - set(options) == set() and all(k.startswith(f"{role}_") for k in public)
    if role == "haproxy":  # older role: only the metrics port is new and declared
        assert options["careflow_haproxy_metrics_port"]["required"] is True
        return
    sources = [*(root / "templates").iterdir(), *(root / "tasks").iterdir(), root / "defaults" / "main.yml"]
    jinja = re.findall(r"\{\{.*?\}\}|\{%.*?%\}", " ".join(p.read_text() for p in sources), re.S)
    used = set(re.findall(r"\bcareflow_\w+", " ".join(jinja)))  # inside expressions: comments name no variable
    assert used - {k for k, v in options.items() if v.get("required")} == set()


def _prepared_ops(lab, role: str, hosts: list[str]) -> dict[str, list[str]]:
    """The operations the role's pyinfra deploy adds for each host (prepared, not run: no connection)."""
    from pyinfra.api import Config, State
    from pyinfra.api.deploy import add_deploy

    from careflow_ha.pyinfra_deploys.deploy import DEPLOYS, pyinfra_inventory

    state = State(pyinfra_inventory(lab, hosts, None), Config(), check_for_changes=False)
    for host in state.inventory:
        state.activate_host(host)  # as connect_all would, minus the SSH
    add_deploy(state, DEPLOYS[role])
    return {h.name: [sorted(state.get_op_meta(op).names)[0].split(" | ", 1)[1] for op in h.op_hash_order]
            for h in state.inventory}


@pytest.mark.parametrize(("role", "hosts"), [("prometheus", ["mon1"]), ("node_exporter", ["pg1", "lb2", "mon1"]),
                                              ("postgres_exporter", ["pg1", "pg3"])])
def test_the_pyinfra_deploy_does_each_task_of_the_role_on_its_hosts(lab, role, hosts):
    for host, ops in _prepared_ops(lab, role, hosts).items():
        for tasks_file in ("install.yml", "configure.yml", "service.yml"):
            for task in yaml.safe_load((PROJECT_DIR / "roles" / role / "tasks" / tasks_file).read_text()):
                if "ansible.builtin.meta" in task:
                    continue  # flush_handlers: pyinfra's restart op follows the config op directly
                assert task["name"] in ops, f"{role}/{tasks_file} on {host}: {task['name']!r} has no pyinfra operation"
        # and each restart or reload the role's handlers do (under a name saying when)
        handlers = yaml.safe_load((PROJECT_DIR / "roles" / role / "handlers" / "main.yml").read_text())
        verbs = {h["ansible.builtin.systemd_service"]["state"].removesuffix("ed") for h in handlers}
        for verb in verbs:
            assert any(op.lower().startswith(verb) for op in ops), f"{role} on {host}: no {verb} operation"


def test_the_patroni_deploy_creates_the_monitoring_role_like_the_role_does(lab):
    (ops,) = _prepared_ops(lab, "patroni", ["pg1"]).values()
    tasks = yaml.safe_load((PROJECT_DIR / "roles" / "patroni" / "tasks" / "roles.yml").read_text())
    names = [t["name"] for t in tasks if "monitoring role" in t["name"]]
    assert len(names) == 2 and set(names) <= set(ops)
