"""One inventory check for both provisioners, through the CLI (issue 11, item 2).

Each case breaks a copy of the lab inventory in one way and runs
``careflow-ha provision -i <copy> --provisioner <tool>``. Whichever tool was
asked for, the answer is the same: exit 2, one line on stderr that names the
fix, no traceback, no secret, and the tool itself never starts (its child
process is the faked boundary). The untouched copy goes through to the tool.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

import pytest
import yaml

import careflow_ha.cli.cluster as cli_cluster
from careflow_ha.provision import LAB_INVENTORY, base
from careflow_ha.settings import PORT_DEFAULTS, SECRET_KEYS, Settings
from tests.cli import run_cli

_REAL_POPEN = subprocess.Popen
GROUP_VARS = LAB_INVENTORY.parent / "group_vars" / "all.yml"


class FakeTool:
    """Stands in for ansible-playbook and for the pyinfra child: records that it was started, then succeeds."""

    def __init__(self) -> None:
        self.started = False

    def __call__(self, argv, cwd, env, stdout, stderr, text):  # noqa: ANN001 - Popen's signature
        self.started = True
        if "--result" in argv:  # the pyinfra child reports through its result file
            outcome = {"changed_ops": {"pg1": []}, "failed": {}, "unreachable": []}
            Path(argv[argv.index("--result") + 1]).write_text(json.dumps(outcome))
        recap = "PLAY RECAP\npg1 : ok=3 changed=0 unreachable=0 failed=0\n"
        return _REAL_POPEN(["printf", "%s", recap], stdout=subprocess.PIPE, text=True)


@pytest.fixture
def tool(monkeypatch, tmp_path) -> FakeTool:
    fake = FakeTool()
    monkeypatch.setattr(base.subprocess, "Popen", fake)
    monkeypatch.setattr(base, "ensure_wheelhouse", lambda directory, progress: directory)
    monkeypatch.setattr(base, "prepare_certificates", lambda inv, progress: None)  # no CA in the checkout
    monkeypatch.setattr(cli_cluster, "wait_healthy", lambda settings, progress: None)
    return fake


def _settings(tmp_path: Path, short_secret: str | None = None) -> Settings:
    secrets = {k: f"secret-{i}-value-long-enough" for i, k in enumerate(SECRET_KEYS)}
    if short_secret:
        secrets[short_secret] = "tiny"
    return Settings(project_dir=tmp_path, ports=MappingProxyType(dict(PORT_DEFAULTS)),
                    secrets=MappingProxyType(secrets))


# --- The broken inventories: each edit writes the copy in one broken way ----

Edit = Callable[[Path], None]


def _copy(tmp_path: Path, inv_edit=None, gv_edit=None) -> None:  # noqa: ANN001 - small local callables
    inv = yaml.safe_load(LAB_INVENTORY.read_text())
    gv = yaml.safe_load(GROUP_VARS.read_text())
    if inv_edit:
        inv_edit(inv)
    if gv_edit:
        gv_edit(gv)
    (tmp_path / "group_vars").mkdir(exist_ok=True)
    (tmp_path / "group_vars" / "all.yml").write_text(yaml.safe_dump(gv))
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inv))


def _hosts(inv: dict, group: str) -> dict:
    return inv["all"]["children"][group]["hosts"]


def _set(**values) -> Callable[[dict], None]:  # noqa: ANN003
    return lambda gv: gv.update(values)


def _tab_in_inventory(tmp_path: Path) -> None:
    _copy(tmp_path)
    (tmp_path / "inventory.yml").write_text("all:\n\tchildren: {}\n")


def _bad_group_vars_syntax(tmp_path: Path) -> None:
    _copy(tmp_path)
    text = (tmp_path / "group_vars" / "all.yml").read_text()
    (tmp_path / "group_vars" / "all.yml").write_text("careflow_pg_port: 5432\ncareflow_timing_preset: : fast\n" + text)


def _edit(inv_edit=None, gv_edit=None) -> Edit:  # noqa: ANN001
    return lambda tmp_path: _copy(tmp_path, inv_edit, gv_edit)


def _even_etcd(inv: dict) -> None:
    _hosts(inv, "etcd_cluster").pop("pg3")


def _no_balancers(inv: dict) -> None:
    del inv["all"]["children"]["balancers"]


def _duplicate_ip(inv: dict) -> None:
    _hosts(inv, "balancers")["lb1"]["careflow_node_ip"] = "192.168.56.11"


def _hosts_as_a_list(inv: dict) -> None:
    inv["all"]["children"]["balancers"]["hosts"] = ["lb1"]


def _bad_timing(gv: dict) -> None:
    gv["careflow_timing_presets"]["default"]["loop_wait"] = 20


CASES: list[tuple[str, Edit, str | None]] = [
    ("the lab inventory passes", _edit(), None),
    ("tab in the inventory", _tab_in_inventory,
     r"inventory\.yml:2:1: not valid YAML \(found character '\\t' that cannot start any token\); "
     r"fix the syntax at line 2, column 1$"),
    ("group_vars syntax", _bad_group_vars_syntax,
     r"group_vars/all\.yml:2:25: not valid YAML \(mapping values are not allowed here\); "
     r"fix the syntax at line 2, column 25$"),
    ("even etcd", _edit(_even_etcd),
     r"etcd_cluster has 2 members; it needs an odd number, at least 3 .* Add or remove a host"),
    ("no balancers", _edit(_no_balancers), r"no hosts in group 'balancers'\. Add an 'balancers' group"),
    ("duplicate address", _edit(_duplicate_ip), r"careflow_node_ip must be unique; .* re-address the duplicate host"),
    ("hosts as a list", _edit(_hosts_as_a_list),
     r"hosts of group 'balancers' must be a mapping \(pg1: \{careflow_node_ip: \.\.\.\}\), not a list; write it like"),
    ("port clash", _edit(gv_edit=_set(careflow_haproxy_ro_port=5000)), r"Two services share a port .* its own value"),
    ("port not a number", _edit(gv_edit=_set(careflow_pg_port="fivethousand")),
     r"careflow_pg_port='fivethousand' is not a port number; fix it in group_vars$"),
    ("timing rule", _edit(gv_edit=_bad_timing), r"Patroni needs loop_wait \+ 2\*retry_timeout <= ttl and ttl >= 20"),
    ("broken Jinja", _edit(gv_edit=_set(careflow_cluster_network="{{ oops")),
     r"variable careflow_cluster_network \(for \w+\) is not a valid Jinja expression .*; fix it in the inventory"),
]


@pytest.mark.parametrize("provisioner", ["ansible", "pyinfra"])
@pytest.mark.parametrize(("edit", "fix"), [(e, f) for _, e, f in CASES], ids=[c[0] for c in CASES])
def test_a_bad_inventory_is_one_line_exit_2_before_the_tool_starts(monkeypatch, tmp_path, tool, provisioner, edit, fix):
    settings = _settings(tmp_path)
    monkeypatch.setattr(cli_cluster, "get_settings", lambda: settings)
    edit(tmp_path)
    code, out, err = run_cli("provision", "-i", str(tmp_path / "inventory.yml"), "--provisioner", provisioner)
    if fix is None:
        assert code == 0, err
        assert tool.started and "changed=0" in out
        return
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.search(fix, lines[0].removeprefix("careflow-ha: error: ")), lines[0]
    assert not tool.started, "the inventory check must run before the provisioner starts"
    for secret in settings.secrets.values():
        assert secret not in out + err


@pytest.mark.parametrize("provisioner", ["ansible", "pyinfra"])
@pytest.mark.parametrize("key", ["CAREFLOW_APP_PASSWORD", "CAREFLOW_PATRONI_API_PASSWORD"])
def test_a_short_secret_names_its_variable_never_its_value(monkeypatch, tmp_path, tool, provisioner, key):
    settings = _settings(tmp_path, short_secret=key)
    monkeypatch.setattr(cli_cluster, "get_settings", lambda: settings)
    _copy(tmp_path)
    code, out, err = run_cli("provision", "-i", str(tmp_path / "inventory.yml"), "--provisioner", provisioner)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{key.lower()} is empty or too short" in err and f"It comes from {key} in .env" in err
    assert "tiny" not in out + err
    assert not tool.started
