"""CLI behaviour for user errors: one line naming the fix, a documented exit code, no traceback.

Only the boundaries are faked: the container engine (subprocess) and the host's owner file.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from careflow_ha.lab import host_checks, hosts
from tests.cli import run_cli


class AbsentEngine:
    """An engine with no containers: every node is absent, no command is run."""

    name = "podman"

    def state(self, node: str) -> str:
        return "absent"

    def project_containers(self) -> list[str]:
        return []

    def cmd(self, *args: str, **_kw) -> subprocess.CompletedProcess[str]:
        assert args[:2] == ("volume", "ls"), f"unexpected engine call {args}"
        return subprocess.CompletedProcess(list(args), 0, "", "")



@pytest.fixture
def no_lab(monkeypatch, tmp_path):
    monkeypatch.setattr("careflow_ha.cli.lab.detect_engine", lambda _name=None: AbsentEngine())
    monkeypatch.setattr(hosts, "OWNER_FILE", tmp_path / "owner")
    monkeypatch.setattr(host_checks, "require_disk", lambda paths: None)


def test_port_in_use_names_the_port_and_both_fixes(no_lab):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _out, err = run_cli("lab", "up", "--rw-port", str(port))
    assert code == 3
    assert f"port 127.0.0.1:{port} (CAREFLOW_RW_PORT) is already in use" in err
    assert "set CAREFLOW_RW_PORT=<free port> in .env or pass --rw-port" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_purge_without_a_terminal_or_force_refuses(monkeypatch, no_lab):
    monkeypatch.setattr(sys, "stdin", open("/dev/null"))  # noqa: SIM115 - closed at interpreter exit
    code, _out, err = run_cli("down", "--purge")
    assert code == 2
    assert "add --force to proceed" in err


def test_bad_flag_value_is_a_usage_error():
    code, _out, err = run_cli("lab", "up", "--rw-port", "fivethousand")
    assert code == 2
    assert "'fivethousand' is not a valid integer" in err


def test_unknown_command_is_a_usage_error():
    code, _out, err = run_cli("launch")
    assert code == 2
    assert "No such command 'launch'" in err


def test_missing_root_is_refused_before_any_change(monkeypatch, no_lab):
    monkeypatch.setattr(host_checks.os, "geteuid", lambda: 1000)
    code, _out, err = run_cli("lab", "up")
    assert code == 3
    assert "needs root" in err and "sudo ./careflow-ha up" in err


def test_too_little_disk_names_the_amount(monkeypatch, tmp_path):

    from careflow_ha.errors import EnvironmentProblem

    monkeypatch.setattr(host_checks.shutil, "disk_usage", lambda _p: type("U", (), {"free": 2 * 2**30})())
    with pytest.raises(EnvironmentProblem, match=r"only 2.0 GiB free .* needs 6 GiB"):
        host_checks.require_disk([tmp_path])


def test_help_lists_the_verbs():
    code, out, _err = run_cli("--help")
    assert code == 0
    for verb in ("up", "down", "status", "provision", "lab", "test", "drill", "bench"):
        assert f"  {verb} " in out, f"{verb} missing from --help"
