"""``--provisioner``: both verbs accept it, route to the chosen tool, and refuse unknown ones in one line.

Only the boundary is faked: the pyinfra child process (subprocess) and the health wait.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import MappingProxyType

import pytest

import careflow_ha.cli.cluster as cluster_cli
import careflow_ha.provision.pyinfra as runner
from careflow_ha import stack
from careflow_ha.errors import CommandFailed, UsageError
from careflow_ha.provision import LAB_INVENTORY, base
from careflow_ha.settings import PORT_DEFAULTS, SECRET_KEYS, Settings
from tests.cli import run_cli

_REAL_POPEN = subprocess.Popen



@pytest.mark.parametrize("verb", ["up", "provision"])
def test_unknown_provisioner_is_refused_by_the_cli(verb):
    code, _, err = run_cli(verb, "--provisioner", "chef")
    assert code == 2
    assert "'chef' is not one of 'ansible', 'pyinfra'" in err
    assert "Traceback" not in err


def test_bring_up_refuses_an_unknown_provisioner_before_touching_the_lab():
    with pytest.raises(UsageError, match="unknown provisioner 'salt'; use one of ansible, pyinfra"):
        stack.bring_up(None, None, print, provisioner="salt")  # type: ignore[arg-type]


class FakeChild:
    """Stands in for ``python -m careflow_ha.pyinfra_deploys``: prints progress, writes the result file."""

    def __init__(self, outcome: dict, rc: int = 0, stdout: str = "PLAY [etcd_cluster: etcd]\n") -> None:
        self.outcome, self.rc, self.stdout, self.argv, self.env = outcome, rc, stdout, None, None

    def __call__(self, argv, cwd, env, stdout, stderr, text):  # noqa: ANN001
        self.argv, self.env = argv, env
        result = Path(argv[argv.index("--result") + 1])
        if self.outcome is not None:
            result.write_text(json.dumps(self.outcome))
        script = f"printf '%s' '{self.stdout}'; exit {self.rc}"
        return _REAL_POPEN(["sh", "-c", script], stdout=subprocess.PIPE, text=True)


@pytest.fixture
def no_wheelhouse_build(monkeypatch):
    monkeypatch.setattr(base, "ensure_wheelhouse", lambda directory, progress: directory)
    # Nor a lab CA in the checkout's .lab/ca (tests/unit/provision/test_certificates.py covers it).
    monkeypatch.setattr(base, "prepare_certificates", lambda inv, progress: None)


@pytest.fixture
def tmp_settings(tmp_path, monkeypatch) -> Settings:
    """Settings whose state (.lab/logs) lives in tmp_path, for the CLI too."""
    settings = Settings(
        project_dir=tmp_path,
        ports=MappingProxyType(dict(PORT_DEFAULTS)),
        secrets=MappingProxyType({k: f"secret-{i}-value-long-enough" for i, k in enumerate(SECRET_KEYS)}),
    )
    monkeypatch.setattr(cluster_cli, "get_settings", lambda: settings)
    return settings


def test_provision_with_pyinfra_counts_changes_per_host(monkeypatch, no_wheelhouse_build, tmp_settings):
    child = FakeChild({"changed_ops": {"pg1": ["etcd | Ensure x"], "lb1": []}, "failed": {}, "unreachable": []})
    monkeypatch.setattr(base.subprocess, "Popen", child)
    monkeypatch.setattr(cluster_cli, "wait_healthy", lambda settings, progress: None)
    code, out, err = run_cli("provision", "--provisioner", "pyinfra", "--preset", "fast", "--async")
    assert code == 0, err
    assert "changed=1" in out
    assert child.argv[child.argv.index("-i") + 1] == str(LAB_INVENTORY)
    assert "careflow_timing_preset=fast" in child.argv and "careflow_synchronous_mode=false" in child.argv
    assert "--ssh-config" in child.argv  # the lab inventory: hosts behind .lab/ssh_config
    # Secrets travel in the environment only, never on the command line.
    assert child.env["CAREFLOW_APP_PASSWORD"] == tmp_settings.secrets["CAREFLOW_APP_PASSWORD"]
    assert tmp_settings.secrets["CAREFLOW_APP_PASSWORD"] not in " ".join(child.argv)
    assert list((tmp_settings.state_dir / "logs").glob("provision-pyinfra-*.log"))


def test_a_failed_host_raises_with_the_operation_and_the_log(monkeypatch, no_wheelhouse_build, tmp_settings):
    child = FakeChild(
        {"changed_ops": {"pg1": []}, "failed": {"pg2": ["Patroni | Ensure the cluster has a leader"]},
         "unreachable": []}, rc=1, stdout="failed: pg2: Patroni | Ensure the cluster has a leader\n",
    )
    monkeypatch.setattr(base.subprocess, "Popen", child)
    with pytest.raises(CommandFailed, match=r"pg2: Patroni \| Ensure the cluster has a leader\); see .*pyinfra"):
        runner.run_pyinfra(tmp_settings, lambda _m: None)


def test_a_bad_inventory_in_the_child_becomes_a_usage_error(monkeypatch, no_wheelhouse_build, tmp_settings):
    child = FakeChild(None, rc=2, stdout="error: etcd_cluster has 2 members; it needs an odd number\n")
    monkeypatch.setattr(base.subprocess, "Popen", child)
    with pytest.raises(UsageError, match="^etcd_cluster has 2 members; it needs an odd number$"):
        runner.run_pyinfra(tmp_settings, lambda _m: None)
