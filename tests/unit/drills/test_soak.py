"""The soak runner's lab-free parts: event order, the nemesis (skip, failure, always healed), per-fault gaps, the
verdict and the report."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from careflow_ha.cluster.records import Ack, ProbeError, Recording
from careflow_ha.drills import soak
from careflow_ha.drills.analysis import analyse
from careflow_ha.drills.faults import FAULTS
from careflow_ha.drills.nemesis import PlannedFault, SoakSchedule, plan_soak
from careflow_ha.drills.soak import SoakFault, SoakRun, _Nemesis, _window_outages, soak_events
from careflow_ha.drills.soak_report import write_soak_report
from careflow_ha.errors import CommandFailed, NotReady

T0 = 1_796_400_000.0


def _planned(fault: str, start: float, hold: float, layer: str = "database") -> PlannedFault:
    return PlannedFault(start, fault, hold, start + hold, 30.0, layer)


def test_events_run_in_time_order_with_a_heal_before_an_injection_at_the_same_moment():
    schedule = SoakSchedule(1, 5.0, "mixed", (
        _planned("switchover", 10.0, 0.0),  # nothing to hold: no heal event
        _planned("balancer-loss", 20.0, 10.0, "balancer"),
        _planned("primary-partition", 30.0, 20.0),
    ))
    assert soak_events(schedule) == [(10.0, "inject", 0), (20.0, "inject", 1), (30.0, "heal", 1),
                                     (30.0, "inject", 2), (50.0, "heal", 2)]


def test_every_planned_schedule_heals_what_it_holds():
    for seed in range(20):
        schedule = plan_soak(seed, 15.0, "mixed", FAULTS)
        events = soak_events(schedule)
        held = {i for i, f in enumerate(schedule.faults) if f.duration_s > 0}
        assert {i for _, kind, i in events if kind == "heal"} == held
        assert [e[0] for e in events] == sorted(e[0] for e in events)


class FakeFault:
    def __init__(self, pick_error: Exception | None = None, inject_error: Exception | None = None,
                 heal_errors: int = 0) -> None:
        self.pick_error, self.inject_error, self.heal_errors = pick_error, inject_error, heal_errors
        self.pick_live = None
        self.calls: list[str] = []

    def pick(self, snap):  # noqa: ANN001, ANN201
        if self.pick_error:
            raise self.pick_error
        return ("pg1",)

    def inject(self, ctx, targets):  # noqa: ANN001, ANN201
        self.calls.append("inject")
        if self.inject_error:
            raise self.inject_error
        return "broke pg1"

    def heal(self, ctx, targets):  # noqa: ANN001, ANN201
        self.calls.append("heal")
        if self.heal_errors:
            self.heal_errors -= 1
            raise CommandFailed("iptables busy")
        return "healed pg1"


class FakeControl:
    def topology(self):  # noqa: ANN201
        return object()


def _nemesis(monkeypatch, fake: FakeFault) -> _Nemesis:
    fake.hold = FAULTS["primary-partition"].hold
    monkeypatch.setattr(soak, "FAULTS", {"primary-partition": fake})
    schedule = SoakSchedule(1, 5.0, "partition", (_planned("primary-partition", 10.0, 20.0),))
    return _Nemesis(schedule, ctx=None, control=FakeControl(), say=lambda _m: None)  # type: ignore[arg-type]


def test_a_fault_whose_target_cannot_be_picked_is_skipped_and_says_why(monkeypatch):
    fake = FakeFault(pick_error=NotReady("no leader in the cluster"))
    nem = _nemesis(monkeypatch, fake)
    nem.inject(0)
    nem.heal(0)
    assert nem.faults[0].problem == "skipped: no leader in the cluster"
    assert nem.faults[0].injected_at is None and fake.calls == []  # nothing injected, so nothing to heal


def test_a_failed_injection_is_recorded_and_still_healed(monkeypatch):
    fake = FakeFault(inject_error=CommandFailed("nsenter: no such process"))
    nem = _nemesis(monkeypatch, fake)
    nem.inject(0)
    nem.heal_everything()
    assert nem.faults[0].problem == "inject failed: nsenter: no such process"
    assert fake.calls == ["inject", "heal"] and nem.in_place == set()


def test_whatever_is_still_in_place_is_healed_at_the_end_even_after_a_failed_heal(monkeypatch):
    fake = FakeFault(heal_errors=1)
    nem = _nemesis(monkeypatch, fake)
    nem.inject(0)
    nem.heal(0)  # fails once: still in place
    assert nem.in_place == {0} and "heal failed" in nem.faults[0].heal_note
    nem.heal_everything()
    assert nem.in_place == set() and nem.faults[0].heal_note == "healed pg1"
    assert nem.faults[0].problem == "heal failed: iptables busy"  # the first failure stays on record


def test_a_fault_with_nothing_to_hold_is_never_healed(monkeypatch):
    fake = FakeFault()
    nem = _nemesis(monkeypatch, fake)
    fake.hold = FAULTS["switchover"].hold  # nothing to hold, like a switchover or a crash
    nem.inject(0)
    nem.heal_everything()
    assert nem.faults[0].injected_at is not None and nem.faults[0].healed_at is None and nem.in_place == set()
    assert fake.calls == ["inject"]


def _recording(gap: tuple[float, float] = (20.0, 24.0), errors: tuple[ProbeError, ...] = ()) -> Recording:
    writes = tuple(Ack(i, T0 + i * 0.05, T0 + i * 0.05 + 0.004, "pg1") for i in range(1200)
                   if not gap[0] <= i * 0.05 < gap[1])
    reads = tuple(Ack(i, T0 + i * 0.1, T0 + i * 0.1 + 0.002, "pg2") for i in range(600))
    return Recording(writes=writes, write_errors=errors, reads=reads, node_samples=(), snapshots=(), history=(),
                     started_at=T0, stopped_at=T0 + 60.0)


def test_each_fault_gets_the_longest_gap_that_began_while_it_was_the_latest():
    rec = _recording(gap=(20.0, 24.0))
    faults = [SoakFault(_planned("balancer-loss", 5.0, 10.0, "balancer"), injected_at=T0 + 5.0),
              SoakFault(_planned("primary-partition", 19.0, 5.0), injected_at=T0 + 19.0),
              SoakFault(_planned("balancer-partition", 20.5, 5.0, "balancer"), injected_at=T0 + 20.5),
              SoakFault(_planned("switchover", 40.0, 0.0), injected_at=T0 + 40.0),
              SoakFault(_planned("replica-loss", 50.0, 5.0), problem="skipped: no asynchronous replica streaming")]
    out = _window_outages(faults, rec, T0 + 60.0)
    assert out[0].write_outage_s < 0.2  # the later partition's gap is never credited to an earlier fault
    # The gap began under the partition and ended after the next fault's injection: shown whole, and only there.
    assert out[1].write_outage_s == pytest.approx(4.05, abs=0.06) and out[1].writes_resumed
    # Injected into that gap: it shows the gap it met (both faults are on the report's timeline).
    assert out[2].write_outage_s == pytest.approx(4.05, abs=0.6)
    assert out[3].write_outage_s is not None and out[3].write_outage_s < 0.2
    assert out[4].write_outage_s is None and out[4].problem.startswith("skipped")


def test_a_gap_that_never_closed_is_no_resumption():
    times = [T0 + i * 0.05 for i in range(100)]  # acks stop at +5 s
    assert soak.longest_gap(times, T0 + 10.0, T0 + 20.0) is None
    assert soak.longest_gap(times, T0 + 1.0, T0 + 2.0) == pytest.approx(0.05, abs=0.001)


def _run(tmp_path, present_lost: int = 0, synchronous: bool = True) -> SoakRun:
    rec = _recording()
    present = [a.seq for a in rec.writes][present_lost:]
    analysis = analyse(rec, fault_at=None, heal_at=None, old_primary="pg1", present_seqs=present)
    schedule = SoakSchedule(3, 1.0, "partition", (_planned("primary-partition", 19.0, 5.0),))
    faults = _window_outages([SoakFault(schedule.faults[0], ("pg1",), T0 + 19.0, T0 + 24.0, "iptables DROP",
                                        "removed")], rec, T0 + 60.0)
    return SoakRun(schedule, "20261204T190000Z-soak-abc123", "fast", synchronous, "haproxy-vip", False, T0,
                   T0 + 61.0, tuple(faults), rec, analysis, True, None)


def test_a_clean_soak_passes_and_a_lost_write_fails_it_only_in_synchronous_mode(tmp_path):
    assert _run(tmp_path).passed
    lost = _run(tmp_path, present_lost=2)
    assert lost.anomalies["lost"] == 2 and not lost.passed
    assert "lost" not in _run(tmp_path, present_lost=2, synchronous=False).anomalies  # async may lose
    unhealthy = replace(_run(tmp_path), recovered=False)
    assert unhealthy.anomalies["unhealthy_at_end"] == 1 and not unhealthy.passed


def test_the_report_has_markdown_json_and_the_timeline_and_no_secret(tmp_path):
    folder = write_soak_report(_run(tmp_path), tmp_path, {"CAREFLOW_APP_PASSWORD": "pw-never-shown"})
    assert sorted(p.name for p in folder.iterdir()) == ["report.md", "result.json", "timeline.png"]
    assert folder.name == "20261204T190000Z-seed3-partition"
    data = json.loads((folder / "result.json").read_text())
    assert data["passed"] is True and data["faults"][0]["fault"] == "primary-partition"
    assert data["faults"][0]["write_outage_s"] == pytest.approx(4.05, abs=0.06)
    md = (folder / "report.md").read_text()
    assert "**PASS**" in md and "--seed 3" in md and "| primary-partition | database |" in md
    assert (folder / "timeline.png").stat().st_size > 10_000
    again = write_soak_report(_run(tmp_path), tmp_path, {})
    assert again.name.endswith("-2")  # a second soak in the same second gets its own folder
