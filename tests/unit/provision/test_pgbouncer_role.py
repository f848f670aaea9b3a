"""roles/pgbouncer and its pyinfra twin: same files from both renderers, verifiers that PostgreSQL and
PgBouncer accept, and no plaintext secret in anything written to a balancer (no network)."""

from __future__ import annotations

import configparser
import subprocess
import sys

import pytest

from careflow_ha.provision import LAB_INVENTORY
from careflow_ha.provision.inventory import load_inventory, site_plays
from careflow_ha.provision.pgauth import pg_md5, scram_sha256
from careflow_ha.pyinfra_deploys import _data
from careflow_ha.pyinfra_deploys.deploy import DEPLOYS, plays_from_site
from careflow_ha.pyinfra_deploys.pgbouncer import pgbouncer
from tests.unit.provision.test_inventory import SECRETS, _ansible_render_many

#: Every template the pgbouncer role writes to a balancer.
TEMPLATES = ("careflow-users.txt.j2", "careflow-pgbouncer@.service.j2", "careflow-pgbouncer-validate.py.j2",
             "pgbouncer.ini.j2", "careflow-pgbouncer-metrics.py.j2", "careflow-pgbouncer-metrics.service.j2",
             "careflow-pgbouncer-metrics.timer.j2")
#: The one file that holds a plaintext password, on purpose (psql needs it): root's 0600 password file.
PASSWORD_FILE = "careflow-stats.pgpass.j2"


@pytest.fixture(scope="module")
def lab():
    return load_inventory(LAB_INVENTORY, SECRETS)


def _instances(lab, host="lb1"):
    return lab.hostvars[host]["__pgbouncer_instances"]


def test_two_instances_one_per_port_each_in_front_of_its_haproxy_port(lab):
    assert [(i["name"], int(i["port"]), int(i["haproxy_port"])) for i in _instances(lab)] == [
        ("rw", 6432, 5000), ("ro", 6433, 5001)]


HOSTS = ("lb1", "lb2")


@pytest.fixture(scope="module")
def ansible_rendered(lab, tmp_path_factory) -> dict[tuple[str, str, int], str]:
    """Ansible's renderings (one run): each balancer's two instance configs and its auth file."""
    keys, cases = [], []
    for host in HOSTS:
        for index, item in enumerate(_instances(lab, host)):
            keys.append((host, "pgbouncer.ini.j2", index))
            cases.append((host, "pgbouncer", "pgbouncer.ini.j2", dict(item)))
        keys.append((host, "careflow-users.txt.j2", 0))
        cases.append((host, "pgbouncer", "careflow-users.txt.j2", None))
    texts = _ansible_render_many(cases, tmp_path_factory.mktemp("pgbouncer"))
    return {key: texts[i] for i, key in enumerate(keys)}


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("index", [0, 1])
def test_each_instance_config_is_rendered_exactly_as_ansible_does(lab, ansible_rendered, host, index):
    item = dict(_instances(lab, host)[index])
    assert lab.render_template("pgbouncer", "pgbouncer.ini.j2", host, item) == ansible_rendered[
        (host, "pgbouncer.ini.j2", index)]


@pytest.mark.parametrize("index,port,upstream", [(0, "6432", "port=5000"), (1, "6433", "port=5001")])
def test_instance_config_pools_transactions_with_scram_and_auth_query(lab, index, port, upstream):
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(lab.render_template("pgbouncer", "pgbouncer.ini.j2", "lb1", _instances(lab)[index]))
    pgb = ini["pgbouncer"]
    assert pgb["listen_port"] == port and upstream in ini["databases"]["careflow"]
    assert "host=127.0.0.1" in ini["databases"]["careflow"]  # the local HAProxy, never a node directly
    assert pgb["pool_mode"] == "transaction" and pgb["auth_type"] == "scram-sha-256"
    assert pgb["auth_user"] == "pgbouncer_auth" and "pgbouncer.get_auth($1)" in pgb["auth_query"]
    assert pgb["admin_users"] == "pgbouncer_admin"
    assert int(pgb["max_client_conn"]) >= 1000


def test_unit_raises_the_open_file_limit_above_the_client_limit(lab):
    unit = lab.render_template("pgbouncer", "careflow-pgbouncer@.service.j2", "lb1")
    nofile = int(unit.split("LimitNOFILE=")[1].split()[0])
    assert nofile > int(lab.hostvars["lb1"]["pgbouncer_max_client_conn"])
    assert "careflow-%i.ini" in unit


def test_auth_file_holds_only_the_three_verifiers(lab):
    lines = lab.render_template("pgbouncer", "careflow-users.txt.j2", "lb1").splitlines()
    assert lines == [
        f'"pgbouncer_auth" "{pg_md5(SECRETS["CAREFLOW_PGBOUNCER_AUTH_PASSWORD"], "pgbouncer_auth")}"',
        f'"pgbouncer_admin" "{scram_sha256(SECRETS["CAREFLOW_PGBOUNCER_ADMIN_PASSWORD"], "pgbouncer_admin")}"',
        f'"pgbouncer_stats" "{scram_sha256(SECRETS["CAREFLOW_PGBOUNCER_STATS_PASSWORD"], "pgbouncer_stats")}"',
    ]


def test_the_stats_user_may_show_but_not_pause(lab):
    ini = configparser.ConfigParser()
    ini.read_string(lab.render_template("pgbouncer", "pgbouncer.ini.j2", "lb1", _instances(lab)[0]))
    users = lambda key: {u.strip() for u in ini["pgbouncer"][key].split(",")}  # noqa: E731
    assert users("stats_users") == {"pgbouncer_admin", "pgbouncer_stats"}
    assert users("admin_users") == {"pgbouncer_admin"}


def test_the_password_file_holds_the_stats_password_only_and_is_root_only(lab):
    text = lab.render_template("pgbouncer", PASSWORD_FILE, "lb1")
    entries = [line for line in text.splitlines() if not line.startswith("#")]
    assert entries == [f"127.0.0.1:*:pgbouncer:pgbouncer_stats:{SECRETS['CAREFLOW_PGBOUNCER_STATS_PASSWORD']}"]
    assert [k for k, v in SECRETS.items() if v in text] == ["CAREFLOW_PGBOUNCER_STATS_PASSWORD"]
    f = _data_role_file(lab, PASSWORD_FILE)
    assert (f["owner"], f["mode"]) == ("root", "0600") and f["no_log"] is True


def _data_role_file(lab, src):
    """The metrics.yml task that writes ``src`` (its owner, mode, no_log), as Ansible reads it."""
    import yaml

    from careflow_ha.settings import PROJECT_DIR

    tasks = yaml.safe_load((PROJECT_DIR / "roles" / "pgbouncer" / "tasks" / "metrics.yml").read_text())
    task = next(t for t in tasks if t.get("ansible.builtin.template", {}).get("src") == src)
    return {**task["ansible.builtin.template"], "no_log": task.get("no_log", False)}


@pytest.mark.parametrize("host", HOSTS)
def test_no_secret_in_plaintext_in_any_file_the_role_writes(lab, ansible_rendered, host):
    # pyinfra's renders; the tests above and test_inventory prove Ansible writes the same bytes
    # (the auth file, the one that carries anything derived from a secret, is checked with both here).
    rendered = [ansible_rendered[(host, "careflow-users.txt.j2", 0)]]
    for name in TEMPLATES:
        for item in _instances(lab, host) if name == "pgbouncer.ini.j2" else [None]:
            rendered.append(lab.render_template("pgbouncer", name, host, item))
    text = "\n".join(rendered)
    assert "pgbouncer_auth" in text  # the auth file was rendered at all
    for key, secret in SECRETS.items():
        assert secret not in text, key


def test_patroni_lets_only_the_balancers_use_md5_and_only_for_the_auth_login(lab):
    import yaml

    hba = yaml.safe_load(lab.render_template("patroni", "patroni.yml.j2", "pg1"))["postgresql"]["pg_hba"]
    md5 = [line for line in hba if line.endswith(" md5")]
    balancers = lab.group("balancers")
    assert len(balancers) == 2
    assert md5 == [f"hostssl careflow pgbouncer_auth {lab.hostvars[h]['careflow_node_ip']}/32 md5" for h in balancers]
    # the md5 lines come before the catch-all scram line, or they would never match
    assert hba.index(md5[-1]) < hba.index(next(line for line in hba if line.startswith("hostssl all all")))


def test_the_auth_function_refuses_superusers_and_is_versioned(lab):
    sql = lab.render_template("patroni", "pgbouncer-auth.sql.j2", "pg1")
    assert "SECURITY DEFINER" in sql and "NOT s.usesuper" in sql and "NOT s.userepl" in sql
    assert "REVOKE ALL ON FUNCTION pgbouncer.get_auth(text) FROM PUBLIC" in sql
    assert f"IS '{lab.hostvars['pg1']['__patroni_pgbouncer_auth_version']}'" in sql


def test_site_yml_and_pyinfra_run_pgbouncer_on_the_balancers_after_haproxy():
    play = next(p for p in site_plays() if "pgbouncer" in p.roles)
    assert play.groups == ("balancers",)
    assert play.roles.index("haproxy") < play.roles.index("pgbouncer")
    assert DEPLOYS["pgbouncer"] is pgbouncer
    assert any(pgbouncer in deploys for groups, deploys in plays_from_site() if groups == ("balancers",))


def test_role_file_of_a_looped_task_renders_dest_with_the_item(lab, monkeypatch):
    class _Host:
        name = "lb2"
        data = {_data.INVENTORY_KEY: lab}

    monkeypatch.setattr(_data, "host", _Host)
    item = dict(_instances(lab, "lb2")[1])
    f = _data.role_template("pgbouncer", "configure.yml", "pgbouncer.ini.j2", item=item)
    assert f.dest == "/etc/pgbouncer/careflow-ro.ini" and f.mode == "640" and f.group == "postgres"
    assert f.validate == "/usr/local/sbin/careflow-pgbouncer-validate %s"
    assert "listen_port = 6433" in f.content


@pytest.mark.parametrize(
    "mutate,problem",
    [
        (lambda s: s, None),  # the rendered config passes
        (lambda s: s.replace("pool_mode = transaction", "pool_mode = transactoin"), "pool_mode"),
        (lambda s: s.replace("listen_port = 6432", "listen_port = 64x2"), "listen_port"),
        (lambda s: s.replace("auth_type = scram-sha-256", "auth_type = trust"), "auth_type"),
        (lambda s: s.replace("[databases]", "[databasez]"), "no [databases]"),
    ],
)
def test_validator_refuses_a_broken_config(lab, tmp_path, mutate, problem):
    auth = tmp_path / "users.txt"
    auth.write_text("")
    script = tmp_path / "validate"
    script.write_text(lab.render_template("pgbouncer", "careflow-pgbouncer-validate.py.j2", "lb1"))
    ini = lab.render_template("pgbouncer", "pgbouncer.ini.j2", "lb1", _instances(lab)[0])
    candidate = tmp_path / "candidate.ini"
    candidate.write_text(mutate(ini.replace("/etc/pgbouncer/careflow-users.txt", str(auth))))
    proc = subprocess.run([sys.executable, str(script), str(candidate)], capture_output=True, text=True, timeout=30)
    if problem is None:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0 and problem in proc.stderr


@pytest.mark.parametrize(
    "password,user,verifier",
    [
        # PostgreSQL's documented md5 format: md5 + md5(password || user)
        ("verysecretpassword", "JOE", "md5" + __import__("hashlib").md5(b"verysecretpasswordJOE").hexdigest()),
    ],
)
def test_md5_verifier_format(password, user, verifier):
    assert pg_md5(password, user) == verifier


def test_scram_verifier_is_stable_and_depends_on_secret_and_user():
    a = scram_sha256("secret-one", "pgbouncer_admin")
    assert a == scram_sha256("secret-one", "pgbouncer_admin")  # a second run changes nothing
    assert a != scram_sha256("secret-two", "pgbouncer_admin")
    assert a.split("$")[1].split(":")[1] != scram_sha256("secret-one", "other").split("$")[1].split(":")[1]
    assert a.startswith("SCRAM-SHA-256$4096:")
