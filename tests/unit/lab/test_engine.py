"""Engine choice: Docker when its daemon answers, else Podman with our containers.conf."""

from __future__ import annotations

import subprocess

import pytest

from careflow_ha.errors import CommandFailed, EnvironmentProblem
from careflow_ha.lab import engine as eng


@pytest.fixture
def fake_world(monkeypatch):
    """Which binaries exist and whether `docker info` succeeds (the subprocess boundary)."""
    state = {"which": set(), "docker_info_rc": 1}

    monkeypatch.setattr(eng.shutil, "which", lambda name: f"/usr/bin/{name}" if name in state["which"] else None)

    def fake_run(argv, **_kw):
        assert argv[:2] == ["docker", "info"]
        return subprocess.CompletedProcess(argv, state["docker_info_rc"], b"", b"")

    monkeypatch.setattr(eng.subprocess, "run", fake_run)
    return state


def test_docker_is_used_when_its_daemon_answers(fake_world):
    fake_world.update(which={"docker", "podman"}, docker_info_rc=0)
    e = eng.detect_engine()
    assert e.name == "docker" and e.compose_cmd == ("docker", "compose") and dict(e.env) == {}


def test_podman_with_project_containers_conf_when_docker_has_no_daemon(fake_world):
    fake_world.update(which={"docker", "podman"}, docker_info_rc=1)
    e = eng.detect_engine()
    assert e.name == "podman"
    assert e.env["CONTAINERS_CONF"].endswith("lab/containers.conf")
    assert "podman-compose" in e.compose_cmd[0]


def test_no_engine_at_all_names_the_fix(fake_world):
    fake_world.update(which=set())
    with pytest.raises(EnvironmentProblem, match=r"no container engine.*installs podman"):
        eng.detect_engine()


def test_asking_for_docker_without_a_daemon_is_an_error(fake_world):
    fake_world.update(which={"docker", "podman"}, docker_info_rc=1)
    with pytest.raises(EnvironmentProblem, match="no Docker daemon answers"):
        eng.detect_engine("docker")


def test_compose_passes_project_file_and_env(monkeypatch):
    seen = {}

    def fake_run(argv, env=None, **_kw):
        seen["argv"], seen["env"] = argv, env
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(eng, "run", fake_run)
    e = eng.Engine("podman", ("podman",), ("podman-compose",), {"CONTAINERS_CONF": "/x.conf"})
    e.compose("up", "-d", env={"CAREFLOW_RW_PORT": "5000"})
    assert seen["argv"][:5] == ["podman-compose", "-p", "careflow-ha-lab", "-f", str(eng.COMPOSE_FILE)]
    assert seen["argv"][-2:] == ["up", "-d"]
    assert seen["env"] == {"CONTAINERS_CONF": "/x.conf", "CAREFLOW_RW_PORT": "5000"}


def test_run_reports_the_tail_of_a_failed_command():
    with pytest.raises(CommandFailed, match=r"exited 3:\n  boom"):
        eng.run(["sh", "-c", "echo boom >&2; exit 3"])


def test_run_missing_binary_is_an_environment_problem():
    with pytest.raises(EnvironmentProblem, match="not installed"):
        eng.run(["careflow-no-such-binary"])
