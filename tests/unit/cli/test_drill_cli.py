"""``careflow-ha drill ...``: names, errors without tracebacks, repeat, compare; cluster work mocked out."""

from __future__ import annotations

import dataclasses
import json
from types import MappingProxyType

import pytest

import careflow_ha.cli.drills as drills_cli
from careflow_ha.backup.drills import BACKUP_DRILLS
from careflow_ha.cli import main
from careflow_ha.drills.faults import FAULTS
from careflow_ha.drills.targets import verdicts
from careflow_ha.settings import PORT_DEFAULTS, SECRET_KEYS, Settings
from tests.unit.drills.test_report import make_run


def invoke(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv])
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_info.value.code or 0, out.out, out.err


@pytest.fixture
def fake_lab(monkeypatch, tmp_path):
    """No engine, no cluster: run_drill returns canned runs; reports go to tmp_path."""
    settings = Settings(
        project_dir=tmp_path,
        ports=MappingProxyType(dict(PORT_DEFAULTS)),
        secrets=MappingProxyType({k: f"secret-{i}-value" for i, k in enumerate(SECRET_KEYS)}),
    )
    calls: list[tuple[str, str, bool]] = []
    outcomes: dict[str, object] = {}

    def fake_run_drill(fault, settings_, engine, control, options, progress):
        calls.append((fault.name, options.preset, options.synchronous))
        progress(f"[{fault.name}] pretending")
        run = outcomes.get(fault.name) or outcomes.get(options.preset) or make_run()
        checked = verdicts(fault.name, options.preset, options.synchronous, run.analysis, run.recovered)
        return dataclasses.replace(
            run, name=fault.name, preset=options.preset, synchronous=options.synchronous, verdicts=checked
        )

    monkeypatch.setattr(drills_cli, "get_settings", lambda ctx=None: settings)
    monkeypatch.setattr(drills_cli, "detect_engine", lambda name=None: object())
    monkeypatch.setattr(drills_cli, "run_drill", fake_run_drill)
    return calls, outcomes, tmp_path


def test_list_names_every_drill(capsys):
    code, out, _ = invoke(capsys, "drill", "list", "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == [*FAULTS, *BACKUP_DRILLS]  # the fault drills, then the restore drills
    assert all(r["how"] for r in rows)


def test_unknown_drill_is_a_usage_error_listing_valid_names(capsys, monkeypatch):
    monkeypatch.setattr(drills_cli, "detect_engine", lambda name=None: pytest.fail("must not touch the engine"))
    code, out, err = invoke(capsys, "drill", "run", "primary-meltdown", "--force")
    assert code == 2
    assert "unknown drill 'primary-meltdown'; valid drills: switchover, postgres-crash" in err
    assert "Traceback" not in err + out


def test_destructive_run_refuses_without_force_when_it_cannot_ask(capsys, fake_lab):
    calls, _, _ = fake_lab
    code, _, err = invoke(capsys, "drill", "run", "switchover")
    assert code == 2 and "--force" in err
    assert calls == []


def test_sync_standby_loss_refuses_async_mode(capsys, fake_lab):
    code, _, err = invoke(capsys, "drill", "run", "sync-standby-loss", "--async", "--force")
    assert code == 2 and "needs synchronous_mode on" in err


def test_run_repeats_with_the_preset_and_writes_reports(capsys, fake_lab):
    calls, _, tmp = fake_lab
    code, out, err = invoke(
        capsys, "drill", "run", "switchover", "--repeat", "2", "--preset", "default", "--force", "--format", "json"
    )
    assert code == 0, err
    assert calls == [("switchover", "default", True)] * 2
    rows = json.loads(out)
    assert [r["result"] for r in rows] == ["PASS", "PASS"]
    assert len(list((tmp / "reports" / "drills").glob("*/report.md"))) == 2
    assert "[switchover] pretending" in err and "repetition 2 of 2" in err


def test_a_missed_target_exits_5_after_reporting(capsys, fake_lab):
    _, outcomes, tmp = fake_lab
    outcomes["fast"] = make_run(lost_tail=4)
    code, out, err = invoke(capsys, "drill", "run", "primary-node-loss", "--force")
    assert code == 5
    assert "missed a target" in err and "MISS" in out
    assert (tmp / "reports" / "drills" / "index.md").exists()


def test_all_ci_runs_the_ci_subset_in_order(capsys, fake_lab):
    calls, outcomes, _ = fake_lab
    outcomes["fast"] = make_run(outage_end=11.0)  # about 1 s: within every outage target
    # A rotation must fail nothing and stall under 1 s.
    outcomes["cert-rotation"] = outcomes["ca-rotation"] = make_run(outage_end=10.5, refused_write=False)
    code, _, _ = invoke(capsys, "drill", "all", "--ci", "--force")
    assert code == 0
    assert [c[0] for c in calls] == ["switchover", "primary-node-loss", "primary-partition", "cert-rotation",
                                     "ca-rotation", "balancer-loss"]


def test_all_async_skips_the_sync_standby_drill(capsys, fake_lab):
    calls, _, _ = fake_lab
    invoke(capsys, "drill", "all", "--async", "--force")
    assert "sync-standby-loss" not in [c[0] for c in calls]
    assert len(calls) == len(FAULTS) - 1 and all(c[2] is False for c in calls)


def test_compare_runs_both_presets_and_prints_the_ratio(capsys, fake_lab):
    calls, outcomes, _ = fake_lab
    outcomes["default"] = make_run(outage_end=46.0)  # about 36 s
    outcomes["fast"] = make_run(outage_end=30.0)  # about 20 s
    code, out, err = invoke(capsys, "drill", "compare", "primary-node-loss", "--force")
    assert code == 0, err
    assert [c[1] for c in calls] == ["default", "fast"]
    assert "write outage (median of 1): default 36.05 s, fast 20.05 s" in out
    assert "ratio fast/default: 0.56" in out
    assert "target fast <= 0.6x default: PASS" in out


def test_compare_fails_when_the_tuned_preset_is_not_enough_faster(capsys, fake_lab):
    _, outcomes, _ = fake_lab
    outcomes["default"] = make_run(outage_end=46.0)
    outcomes["fast"] = make_run(outage_end=41.0)  # 31 s: over 22 s, and ratio 0.86
    code, out, err = invoke(capsys, "drill", "compare", "primary-node-loss", "--force", "--format", "json")
    assert code == 5
    assert json.loads(out)["ratio_ok"] is False


def test_bench_routing_refuses_a_way_in_that_is_not_provisioned_before_running_anything(fake_lab, capsys):
    calls, _, _ = fake_lab
    code, _, err = invoke(capsys, "bench", "routing", "--way", "leader-vip", "--force")
    assert code == 2 and calls == []
    assert err.strip().splitlines()[-1].startswith("careflow-ha: error: --way leader-vip is not provisioned")
    assert "use one of haproxy-vip" in err


@pytest.mark.parametrize("value", ["0", "5001", "-3", "many", "1.5"])
def test_bench_routing_refuses_a_bad_storm_size_in_one_line_before_running_anything(fake_lab, capsys, value):
    calls, _, _ = fake_lab
    code, _, err = invoke(capsys, "bench", "routing", "--storm-clients", value, "--no-storm", "--force")
    assert code == 2 and calls == []
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.strip() == (f"careflow-ha: error: --storm-clients {value!r} is not a whole number in 1..5000; "
                           "use e.g. --storm-clients 1000")


def test_bench_routing_storm_needs_the_pgbouncer_way_in(fake_lab, capsys):
    calls, _, _ = fake_lab  # the fake lab's inventory has no balancers: no pgbouncer way in
    code, _, err = invoke(capsys, "bench", "routing", "--storm", "--force")
    assert code == 2 and calls == []
    assert err.strip() == ("careflow-ha: error: --storm needs the pgbouncer way in; provision it (or add --way "
                           "pgbouncer), or use --no-storm")


@pytest.mark.parametrize(("storm", "ways", "expected"), [
    (None, ("haproxy-vip", "pgbouncer"), (True, 1000)),  # default: on when the pooler is measured
    (None, ("haproxy-vip",), (False, 1000)),
    (False, ("haproxy-vip", "pgbouncer"), (False, 1000)),
    (True, ("pgbouncer",), (True, 1000)),
])  # fmt: skip
def test_the_storm_is_on_by_default_only_with_the_pgbouncer_way_in(storm, ways, expected):
    assert drills_cli.check_storm_options(storm, "1000", ways) == expected
    assert drills_cli.check_storm_options(storm, "5000", ways)[1] == 5000
    assert drills_cli.check_storm_options(storm, "1", ways)[1] == 1
