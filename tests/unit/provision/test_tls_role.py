"""The tls role and its pyinfra twin: the same files, owners and modes on a host, from the same tasks.

The decisive check runs both for real on this machine (Ansible with connection=local, pyinfra on @local) into
two temporary host directories, with the account the tests run as standing in for postgres/etcd/haproxy
(so no account is created here), and compares the two trees; a second run of each changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operations import run_ops

from careflow_ha.lab.ca import LeafSpec, ensure_lab_ca
from careflow_ha.provision import LAB_INVENTORY
from careflow_ha.provision.inventory import load_inventory
from careflow_ha.pyinfra_deploys._data import INVENTORY_KEY
from careflow_ha.pyinfra_deploys.deploy import _NOT_HOST_DATA
from careflow_ha.pyinfra_deploys.tls import TlsFile, tls, tls_files
from careflow_ha.settings import PROJECT_DIR, SECRET_KEYS

SECRETS = {key: f"{key.lower()}-s3cr3t-value" for key in SECRET_KEYS}
ROLE = PROJECT_DIR / "roles" / "tls"
ME = pwd.getpwuid(os.geteuid())


@pytest.fixture(scope="module")
def lab():
    return load_inventory(LAB_INVENTORY, SECRETS)


def test_each_host_gets_the_ca_its_certificate_and_a_key_per_service_account(lab):
    ca = str(PROJECT_DIR / ".lab" / "ca")
    assert tls_files(lab, "pg1") == {
        "Ensure the CA certificate is installed": [
            TlsFile(f"{ca}/ca.crt", "/etc/careflow/tls/ca.crt", "root", "root", "644")],
        "Ensure the host certificate is installed": [
            TlsFile(f"{ca}/pg1.crt", "/etc/careflow/tls/pg1.crt", "root", "root", "644")],
        "Ensure each service account has its copy of the host key": [
            TlsFile(f"{ca}/pg1.key", "/etc/careflow/tls/postgres/pg1.key", "postgres", "postgres", "600"),
            TlsFile(f"{ca}/pg1.key", "/etc/careflow/tls/etcd/pg1.key", "etcd", "etcd", "600"),
        ],
        "Ensure each service account's directory holds the host certificate too": [
            TlsFile(f"{ca}/pg1.crt", "/etc/careflow/tls/postgres/pg1.crt", "root", "root", "644"),
            TlsFile(f"{ca}/pg1.crt", "/etc/careflow/tls/etcd/pg1.crt", "root", "root", "644"),
        ],
    }
    keys = tls_files(lab, "lb2")["Ensure each service account has its copy of the host key"]
    assert keys == [TlsFile(f"{ca}/lb2.key", "/etc/careflow/tls/haproxy/lb2.key", "haproxy", "haproxy", "600"),
                    TlsFile(f"{ca}/lb2.key", "/etc/careflow/tls/postgres/lb2.key", "postgres", "postgres", "600")]


@pytest.mark.parametrize(("host", "accounts"), [("pg2", ["postgres", "etcd"]), ("lb1", ["haproxy", "postgres"])])
def test_the_key_accounts_follow_the_hosts_groups(lab, host, accounts):
    assert lab.hostvars[host]["__tls_key_accounts"] == accounts


def test_every_default_is_declared_in_argument_specs():
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    # main, trust and reload (rotate-certs.yml runs the last two on their own): each default in one of them.
    options = {name: spec for entry in specs.values() for name, spec in entry["options"].items()}
    public = {k for k in defaults if not k.startswith("__")}
    assert public - set(options) == set() and all(k.startswith("tls_") for k in public)
    used = set(re.findall(r"\bcareflow_\w+", (ROLE / "defaults" / "main.yml").read_text()))
    assert used - {k for k, v in options.items() if v.get("required")} == set()


def test_the_key_copy_is_never_shown_by_ansible():
    tasks = yaml.safe_load((ROLE / "tasks" / "certificates.yml").read_text())
    (key_task,) = [t for t in tasks if "key" in t["name"] and "ansible.builtin.copy" in t]
    assert key_task["no_log"] is True and key_task["diff"] is False


# --- Both tools, for real, on this machine ---------------------------------------------------------------------


def _local_inventory(tmp_path: Path) -> tuple[Path, dict]:
    """One host, ``ctl`` (group ``ops``), and variables that keep everything in tmp_path and own it by ``ME``."""
    ca_dir = tmp_path / "ca"
    ensure_lab_ca(ca_dir, [LeafSpec("ctl", ("ctl",), ("127.0.0.1",))])
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"ops": {"hosts": {"ctl": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}}}))
    extra = {
        "careflow_tls_dir": str(ca_dir),
        "tls_key_owners": [{"group": "ops", "account": ME.pw_name}],
        # The account exactly as it is: the user task then changes nothing on this machine.
        "tls_accounts": {ME.pw_name: {"home": ME.pw_dir, "shell": ME.pw_shell, "comment": ME.pw_gecos}},
    }
    return inventory, extra


def _ansible(tmp_path: Path, inventory: Path, extra: dict, host_dir: Path) -> str:
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": False, "roles": [{"role": "tls"}]}]))
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps({**extra, "careflow_tls_host_dir": str(host_dir)}))
    env = {**os.environ, "ANSIBLE_CONFIG": str(PROJECT_DIR / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_ROLES_PATH": str(PROJECT_DIR / "roles")}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(playbook),
         "-e", f"@{vars_file}"],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    return proc.stdout


def _pyinfra(inventory: Path, extra: dict, host_dir: Path) -> list[str]:
    """Run the tls deploy on @local as host ``ctl``; return the names of the operations that changed."""
    inv = load_inventory(inventory, SECRETS, {**extra, "careflow_tls_host_dir": str(host_dir)}, roles=("tls",))
    data = {k: v for k, v in inv.hostvars["ctl"].items() if k not in _NOT_HOST_DATA}
    state = State(Inventory(([("@local", data)], {INVENTORY_KEY: inv})), Config(), check_for_changes=False)
    connect_all(state)
    add_deploy(state, tls)
    with contextlib.suppress(PyinfraError):
        run_ops(state)
    (host,) = list(state.inventory)
    changed, failed = [], []
    for op_hash in host.op_hash_order:
        meta = state.get_op_data_for_host(host, op_hash).operation_meta
        name = sorted(state.get_op_meta(op_hash).names)[0]
        if meta.did_error():
            failed.append(name)
        elif meta.did_change():
            changed.append(name)
    assert failed == []
    return changed


def _tree(root: Path) -> dict[str, tuple[int, str, str, bytes]]:
    out = {}
    for path in sorted([root, *root.rglob("*")]):
        st = path.stat()
        content = path.read_bytes() if path.is_file() else b""
        out[str(path.relative_to(root))] = (stat.S_IMODE(st.st_mode), pwd.getpwuid(st.st_uid).pw_name,
                                            str(st.st_gid), content)
    return out


def test_ansible_and_pyinfra_install_the_same_files_and_a_second_run_changes_nothing(tmp_path):
    inventory, extra = _local_inventory(tmp_path)
    by_ansible, by_pyinfra = tmp_path / "ansible" / "tls", tmp_path / "pyinfra" / "tls"
    first = _ansible(tmp_path, inventory, extra, by_ansible)
    assert re.search(r"ctl\s+: ok=\d+\s+changed=[1-9]", first)
    second = _ansible(tmp_path, inventory, extra, by_ansible)
    assert re.search(r"ctl\s+: ok=\d+\s+changed=0 ", second), second[-800:]
    assert (tmp_path / "ca" / "ctl.key").read_text() not in first + second  # no_log, diff off

    assert "TLS certificates | Ensure each service account has its copy of the host key" in _pyinfra(
        inventory, extra, by_pyinfra)
    assert _pyinfra(inventory, extra, by_pyinfra) == []

    tree = _tree(by_ansible)
    assert tree == _tree(by_pyinfra)
    assert {name: mode for name, (mode, *_rest) in tree.items()} == {
        ".": 0o755, "ca.crt": 0o644, "ctl.crt": 0o644, ME.pw_name: 0o750, f"{ME.pw_name}/ctl.key": 0o600,
        f"{ME.pw_name}/ctl.crt": 0o644,
    }
    assert tree[f"{ME.pw_name}/ctl.key"][3] == (tmp_path / "ca" / "ctl.key").read_bytes()
