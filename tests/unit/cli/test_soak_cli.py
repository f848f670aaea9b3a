"""``careflow-ha soak plan``: the schedule printed without touching anything; bad input is one line, exit 2."""

from __future__ import annotations

import json

import pytest

from careflow_ha.drills.faults import FAULTS
from careflow_ha.drills.nemesis import plan_soak
from tests.unit.cli.test_drill_cli import invoke


def test_plan_prints_the_seeded_schedule_as_json(capsys):
    code, out, err = invoke(capsys, "soak", "plan", "--minutes", "10", "--nemesis", "kill", "--seed", "7",
                            "--format", "json")
    assert code == 0 and err == ""
    data = json.loads(out)
    expected = plan_soak(7, 10.0, "kill", FAULTS)
    assert [f["fault"] for f in data["faults"]] == [f.fault for f in expected.faults]
    assert data["healed_at_s"] == expected.healed_at_s and data["seed"] == 7


def test_plan_pretty_says_when_everything_is_healed(capsys):
    code, out, _ = invoke(capsys, "soak", "plan", "--minutes", "5", "--seed", "3")
    assert code == 0
    assert out.startswith("soak of 5 min, nemesis mixed, seed 3:") and "all healed at +" in out
    assert "| start_s" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--minutes", "5", "--nemesis", "chaos"], "unknown nemesis 'chaos'; use --nemesis mixed|kill|partition"),
        (["--minutes", "-3"], "--minutes must be a number above 0 (got -3.0); e.g. --minutes 5"),
        (["--minutes", "0.2"], "too short for any 'mixed' fault"),
        (["--minutes", "5", "--seed", "-4"], "--seed must be a whole number >= 0 (got -4)"),
        (["--minutes", "abc"], "--minutes must be a number (got 'abc'); e.g. --minutes 5"),
        (["--minutes", "5", "--seed", "1.5"], "--seed must be a whole number (got '1.5'); e.g. --seed 1"),
    ],
)
def test_bad_input_is_one_line_exit_2_without_traceback(capsys, argv, message):
    code, out, err = invoke(capsys, "soak", "plan", *argv)
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--minutes", "5", "--nemesis", "chaos"], "unknown nemesis 'chaos'"),
        (["--minutes", "0"], "--minutes must be a number above 0"),
        (["--minutes", "5", "--via", "carrier-pigeon"], "--via 'carrier-pigeon' is unknown"),
    ],
)
def test_run_refuses_bad_input_before_touching_the_lab(capsys, monkeypatch, argv, message):
    from careflow_ha.drills import soak

    monkeypatch.setattr(soak, "run_soak", lambda *a, **k: pytest.fail("the soak must not start"))
    code, out, err = invoke(capsys, "soak", "run", *argv, "--force")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_run_asks_before_breaking_the_lab(capsys, monkeypatch):
    from careflow_ha.drills import soak

    monkeypatch.setattr(soak, "run_soak", lambda *a, **k: pytest.fail("the soak must not start"))
    code, _, err = invoke(capsys, "soak", "run", "--minutes", "5")
    assert code == 2 and "--force" in err
