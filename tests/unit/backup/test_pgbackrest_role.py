"""The pgbackrest role's one template, for its three kinds of host, rendered like Ansible and accepted by pgBackRest.

- the repository host (backup1): repo1-path, retention, zstd, every member as pgN-host over TLS, backup-standby;
- a database node with that repository host: repo1-host over TLS, async archiving through a spool;
- a database node without one: a local repository (single server; the loopback tests use this form).

Each rendering is also fed to the role's own validator, so an option pgBackRest 2.45 does not know (or a
bad value) fails here, not on a node.
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from careflow_ha.provision.inventory import load_inventory
from careflow_ha.pyinfra_deploys import _data
from careflow_ha.settings import PROJECT_DIR
from tests.unit.backup.inventory import BACKUP1_IP, ROLES_WITH_PGBACKREST, SECRETS, inventory_file, with_repository

ROLE = PROJECT_DIR / "roles" / "pgbackrest"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return with_repository(tmp_path_factory.mktemp("inv"))


@pytest.fixture(scope="module")
def lab_without_repository(tmp_path_factory):
    return with_repository(tmp_path_factory.mktemp("inv"), repository_host=False)


#: Options pgBackRest reads as a list, one line each (every other key twice is an error).
REPEATABLE = ("tls-server-auth",)


def ini(text: str) -> configparser.ConfigParser:
    """The file as sections; a repeatable option's lines are joined with " " (strict for every other key)."""
    repeated: dict[str, list[str]] = {}
    kept = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in REPEATABLE:
            repeated.setdefault(key, []).append(value)
            continue
        kept.append(line)
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.read_string("\n".join(kept))
    for key, values in repeated.items():
        parser["global"][key] = " ".join(values)
    return parser


def test_the_repository_host_holds_the_repository_and_reaches_every_member(lab):
    conf = ini(lab.render_template("pgbackrest", "pgbackrest.conf.j2", "backup1"))
    g, s = conf["global"], conf["careflow"]
    assert (g["repo1-path"], g["repo1-retention-full"], g["repo1-retention-diff"]) == ("/var/lib/pgbackrest", "2", "7")
    assert (g["compress-type"], g["process-max"], g["start-fast"]) == ("zst", "2", "y")
    assert "archive-async" not in g  # nothing is archived from here
    assert g["tls-server-address"] == BACKUP1_IP and g["tls-server-auth"] == "pg1=careflow pg2=careflow pg3=careflow"
    for n, name in enumerate(("pg1", "pg2", "pg3"), start=1):
        # By name: pgBackRest 2.45 checks a server certificate's DNS names, never its IP addresses.
        got = (s[f"pg{n}-host"], s[f"pg{n}-host-type"], s[f"pg{n}-path"])
        assert got == (name, "tls", "/var/lib/postgresql/15/main")
        assert s[f"pg{n}-host-cert-file"] == "/etc/careflow/tls/backup1.crt"  # the tls role's files
        assert s[f"pg{n}-host-key-file"] == "/etc/careflow/tls/postgres/backup1.key"  # postgres's own key copy
    assert s["backup-standby"] == "y"


def test_a_database_node_pushes_wal_asynchronously_to_the_repository_host(lab):
    conf = ini(lab.render_template("pgbackrest", "pgbackrest.conf.j2", "pg2"))
    g, s = conf["global"], conf["careflow"]
    assert (g["repo1-host"], g["repo1-host-type"], g["repo1-host-port"]) == ("backup1", "tls", "8432")
    assert g["repo1-host-cert-file"] == "/etc/careflow/tls/pg2.crt"
    assert (g["repo1-host-ca-file"], g["repo1-host-key-file"]) == ("/etc/careflow/tls/ca.crt",
                                                                  "/etc/careflow/tls/postgres/pg2.key")
    assert "repo1-path" not in g and "repo1-retention-full" not in g  # retention is the repository's business
    assert (g["archive-async"], g["spool-path"]) == ("n", "/var/spool/pgbackrest")  # sync: see the defaults
    assert g["tls-server-address"] == "192.168.56.12" and g["tls-server-auth"] == "backup1=careflow"
    assert (s["pg1-path"], s["pg1-port"], s["pg1-user"]) == ("/var/lib/postgresql/15/main", "5432", "postgres")
    assert "backup-standby" not in s


def test_without_a_repository_host_each_node_keeps_a_local_repository(lab_without_repository):
    conf = ini(lab_without_repository.render_template("pgbackrest", "pgbackrest.conf.j2", "pg1"))
    g = conf["global"]
    assert g["repo1-path"] == "/var/lib/pgbackrest" and "repo1-host" not in g
    assert not any(k.startswith("tls-server") for k in g)  # no peer, no server
    assert g["archive-async"] == "n"


def test_ssh_mode_renders_without_tls_files(tmp_path):
    inv = with_repository(tmp_path, extra_vars={"pgbackrest_host_type": "ssh"})
    node = ini(inv.render_template("pgbackrest", "pgbackrest.conf.j2", "pg1"))["global"]
    repo = ini(inv.render_template("pgbackrest", "pgbackrest.conf.j2", "backup1"))["careflow"]
    assert (node["repo1-host-type"], node["repo1-host-user"]) == ("ssh", "postgres")
    assert not any("tls" in k or "cert" in k for k in node)
    assert repo["pg1-host-user"] == "postgres" and "pg1-host-cert-file" not in repo


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        # The TLS directory is the tls role's (it runs first, on every host).
        ("backup1", {"/etc/pgbackrest", "/var/log/pgbackrest", "/var/lib/pgbackrest"}),
        ("pg1", {"/etc/pgbackrest", "/var/log/pgbackrest", "/var/spool/pgbackrest"}),
    ],
)
def test_each_kind_of_host_gets_only_its_directories(lab, host, expected):
    assert {d["path"] for d in lab.hostvars[host]["__pgbackrest_directories"]} == expected


def _validator(inv, host: str, directory: Path) -> Path:
    script = directory / "validate"
    script.write_text(inv.render_template("pgbackrest", "careflow-pgbackrest-validate.sh.j2", host))
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("host", ["backup1", "pg1"])
def test_pgbackrest_accepts_every_rendering(lab, lab_without_repository, tmp_path, host):
    """The real pgbackrest binary (CI installs it; a missing one fails here, never skips)."""
    for n, inv in enumerate((lab, lab_without_repository)):
        if host not in inv.hosts:
            continue
        conf = tmp_path / f"{n}.conf"
        conf.write_text(inv.render_template("pgbackrest", "pgbackrest.conf.j2", host))
        proc = subprocess.run([str(_validator(inv, host, tmp_path)), str(conf)], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (("compress-type=zst", "compress-type=zzz"), "'zzz' is not allowed for 'compress-type' option"),
        (("process-max=2", "process-max=2\nrepo1-pathh=/x"), "invalid option 'repo1-pathh'"),
    ],
)
def test_the_validator_rejects_a_bad_config(lab, tmp_path, edit, says):
    conf = tmp_path / "bad.conf"
    conf.write_text(lab.render_template("pgbackrest", "pgbackrest.conf.j2", "backup1").replace(*edit))
    proc = subprocess.run([str(_validator(lab, "backup1", tmp_path)), str(conf)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0 and says in proc.stderr


def test_the_config_task_is_validated_private_and_read_by_pyinfra_from_the_role():
    args = _data._task("pgbackrest", "configure.yml", "template", "src", "pgbackrest.conf.j2")
    assert args["dest"] == "{{ pgbackrest_config_file }}" and args["mode"] == "0640"
    assert args["validate"] == "{{ pgbackrest_validate_script }} %s"
    assert args["group"] == "{{ pgbackrest_group }}"


def test_no_secret_is_in_any_rendering(lab):
    for host in lab.hosts:
        text = lab.render_template("pgbackrest", "pgbackrest.conf.j2", host)
        assert not any(secret in text for secret in SECRETS.values()), host


def test_every_default_is_declared_in_argument_specs():
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    options = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    public = {k for k in defaults if not k.startswith("__")}
    assert public - set(options) == set() and all(k.startswith("pgbackrest_") for k in public)
    # and every careflow_* global the templates read is declared as required
    sources = [*(ROLE / "templates").iterdir(), ROLE / "defaults" / "main.yml"]
    # Inside Jinja expressions and blocks only: a metric named careflow_* in a script is not a variable.
    jinja = " ".join(re.findall(r"\{\{.*?\}\}|\{%.*?%\}", " ".join(p.read_text() for p in sources), re.S))
    used = set(re.findall(r"\bcareflow_\w+", jinja))
    assert "careflow_pgbackrest_stanza" in used  # the expressions were found
    assert used - {k for k, v in options.items() if v.get("required")} == set()


def _ansible_render(inventory: Path, host: str, template: str, dest: Path) -> str:
    """Ansible's own rendering (connection=local), with the same role defaults."""
    env = {**os.environ, **SECRETS, "ANSIBLE_CONFIG": str(PROJECT_DIR / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    defaults = []
    for name in ROLES_WITH_PGBACKREST:
        path = PROJECT_DIR / "roles" / name / "defaults" / "main.yml"
        if path.exists():
            defaults += ["-e", f"@{path}"]
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible"), host, "-i", str(inventory), "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}", *defaults,
         "-m", "ansible.builtin.template", "-a", f"src={ROLE / 'templates' / template} dest={dest}"],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-800:] + proc.stderr[-800:]
    return dest.read_text()


@pytest.mark.parametrize(
    ("repository_host", "host", "template"),
    [
        (True, "backup1", "pgbackrest.conf.j2"),
        (True, "pg3", "pgbackrest.conf.j2"),
        (False, "pg1", "pgbackrest.conf.j2"),
        (True, "backup1", "careflow-pgbackrest-validate.sh.j2"),
        (True, "backup1", "careflow-backup-full.timer.j2"),
        (True, "backup1", "careflow-backup@.service.j2"),
    ],
)
def test_pyinfra_renders_the_role_template_exactly_as_ansible_does(tmp_path, repository_host, host, template):
    path = inventory_file(tmp_path, repository_host=repository_host)
    ours = load_inventory(path, SECRETS, roles=ROLES_WITH_PGBACKREST)
    assert ours.render_template("pgbackrest", template, host) == _ansible_render(path, host, template,
                                                                               tmp_path / "rendered")


def _deploy_op_names() -> set[str]:
    """Every string in the deploy's source (operation names, some in tables such as BACKUP_UNITS)."""
    import ast

    source = (PROJECT_DIR / "careflow_ha" / "pyinfra_deploys" / "pgbackrest.py").read_text()
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)
        elif isinstance(node, ast.JoinedStr):  # f"Ensure {path} exists ..."
            names.add("".join(v.value for v in node.values if isinstance(v, ast.Constant)))
        literal_call = isinstance(node, ast.Call) and all(isinstance(a, ast.Constant) for a in node.args)
        if literal_call and getattr(node.func, "id", "") == "role_template":
            _data._task("pgbackrest", node.args[1].value, "template", "src", node.args[2].value)  # the task exists
    return names


def test_the_pyinfra_deploy_does_each_task_of_the_role():
    """Same end states under the same names (pyinfra prefixes loop items with the path, hence startswith)."""
    deploy_names = _deploy_op_names()
    for tasks_file in ("install.yml", "configure.yml", "service.yml"):
        for task in yaml.safe_load((ROLE / "tasks" / tasks_file).read_text()):
            if "ansible.builtin.meta" in task:
                continue  # flush_handlers: pyinfra's restart op follows the config op directly
            name = task["name"]
            wanted = "exists with its owner" if "directories exist" in name else name
            assert any(wanted in n for n in deploy_names), f"{tasks_file}: {name!r} has no pyinfra operation"


def test_the_deploys_backup_units_are_the_roles_tasks():
    from careflow_ha.pyinfra_deploys.pgbackrest import BACKUP_UNITS

    for name, src in BACKUP_UNITS:
        task = _data._task("pgbackrest", "service.yml", "template", "src", src)
        assert task["dest"] == f"/etc/systemd/system/{src.removesuffix('.j2')}"
        tasks = yaml.safe_load((ROLE / "tasks" / "service.yml").read_text())
        assert any(t["name"] == name and t.get("ansible.builtin.template", {}).get("src") == src for t in tasks)


UNITS = ("careflow-backup@.service", "careflow-backup-full.timer", "careflow-backup-diff.timer")


def test_the_backup_units_are_valid_systemd_units_with_valid_calendars(lab, tmp_path):
    """systemd-analyze (no running systemd needed) checks the rendered units and the two schedules."""
    for unit in UNITS:
        (tmp_path / unit).write_text(lab.render_template("pgbackrest", f"{unit}.j2", "backup1"))
    proc = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / u) for u in UNITS)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    hv = lab.hostvars["backup1"]
    for calendar in (hv["pgbackrest_full_backup_calendar"], hv["pgbackrest_diff_backup_calendar"]):
        got = subprocess.run(["systemd-analyze", "calendar", calendar], capture_output=True, text=True, timeout=30)
        assert got.returncode == 0 and "Next elapse" in got.stdout, got.stderr
    timer = (tmp_path / "careflow-backup-full.timer").read_text()
    assert "OnCalendar=Sun *-*-* 01:00:00 Asia/Seoul" in timer and "Unit=careflow-backup@full.service" in timer
    assert "ExecStart=/usr/bin/pgbackrest --stanza=careflow backup --type=%i" in (
        tmp_path / "careflow-backup@.service").read_text()


@pytest.mark.parametrize("bad", ["Sun *-*-* 25:00:00", "Someday 01:00"])
def test_a_bad_calendar_is_caught(bad):
    got = subprocess.run(["systemd-analyze", "calendar", bad], capture_output=True, text=True, timeout=30)
    assert got.returncode != 0


def test_each_host_checks_that_the_peers_it_dials_resolve(lab, lab_without_repository):
    peers = {h: lab.render_value("{{ __pgbackrest_peers }}", h) for h in ("backup1", "pg2")}
    assert list(peers["backup1"]) == ["pg1", "pg2", "pg3"] and list(peers["pg2"]) == ["backup1"]
    assert list(lab_without_repository.render_value("{{ __pgbackrest_peers }}", "pg1")) == []  # nobody to dial
