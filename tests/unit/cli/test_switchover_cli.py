"""``careflow-ha switchover`` from the command line: bad input is one line and exit 2, before any
pooler is touched (Patroni's API and the poolers are fakes: no lab, no network)."""

from __future__ import annotations

import pytest

from careflow_ha.cluster import patroni, pooler
from careflow_ha.cluster.health import Backend
from tests.cli import run_cli
from tests.unit.cluster.test_switchover import FakeApi, FakePooler, snap


@pytest.fixture
def fakes(monkeypatch):
    log: list = []
    api = FakeApi(snap(), snap(leader="pg2", sync="pg1"))
    monkeypatch.setattr(patroni, "PatroniApi", lambda settings: api)
    monkeypatch.setattr(pooler, "lab_poolers", lambda settings: [FakePooler("lb1:6432", log=log)])
    return api, log


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--to", "pg9"], "--to pg9: no such cluster member"),
        (["--to", "pg1", "--zero-error"], "--to pg1: it is the leader already"),
        (["--resume", "--to", "pg2"], "--resume only resumes the poolers"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_any_pause(fakes, argv, message):
    api, log = fakes
    code, _out, err = run_cli("switchover", "--force", *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert api.switched == [] and log == []


def test_zero_error_switchover_reports_each_step_as_json(fakes, monkeypatch):
    from careflow_ha.cluster import switchover

    monkeypatch.setattr(switchover, "haproxy_backends",
                        lambda settings, **kw: (Backend("primary", "pg2", "UP", "L7OK"),))
    monkeypatch.setattr(switchover, "oldest_transaction_s", lambda dsn: 0.0)
    api, log = fakes
    code, out, err = run_cli("switchover", "--force", "--zero-error", "--format", "json")
    assert code == 0, err
    import json

    data = json.loads(out)
    assert data["old_leader"] == "pg1" and data["new_leader"] == "pg2" and data["zero_error"] is True
    assert [k for k, _ in log] == ["pause", "reconnect", "resume"]


def test_resume_names_what_it_resumed(fakes, monkeypatch):
    _api, log = fakes
    left = FakePooler("lb2:6432", paused=True, log=log)
    monkeypatch.setattr(pooler, "lab_poolers", lambda settings: [FakePooler("lb1:6432", log=log), left])
    code, out, err = run_cli("switchover", "--resume")
    assert code == 0, err
    assert out.strip() == "resumed: lb2:6432" and left.paused() is False
