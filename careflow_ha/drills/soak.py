"""``careflow-ha soak run``: a seeded schedule of faults against the lab, under the drills' probes, judged once.

The schedule is :func:`careflow_ha.drills.nemesis.plan_soak` (a pure function of seed, minutes, nemesis and
catalogue: replayable). The same probes as a drill run for the whole soak (the writer through 5000, the reader
through 5001, a role sampler per member, optionally a per-node writer each and Locust), and each fault is
injected at its start and healed at its planned heal, through the drills' own inject and heal. At the end every
fault still in place is healed (also on an error or Ctrl+C), the cluster must be healthy again, and one set
check covers every write the soak attempted: lost, unexpected, duplicated, refused-yet-present, ambiguous.

Events run in time order on one thread, so an injection that blocks (a switchover waits for the new leader)
delays the next event by that long; the report gives each fault's planned and actual times. A fault whose target
cannot be picked at its start (the cluster is still recovering from the one before) is skipped and says why.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from careflow_ha.cluster.model import TimelineEvent
from careflow_ha.cluster.records import Recording
from careflow_ha.drills.analysis import Analysis, analyse
from careflow_ha.drills.control import ClusterControl
from careflow_ha.drills.faults import FAULTS, FaultContext, NodeEngine
from careflow_ha.drills.nemesis import PlannedFault, SoakSchedule
from careflow_ha.drills.runner import (
    DrillOptions,
    await_recovery,
    fault_context,
    load_figures,
    running,
    start_probes,
    wait_for,
)
from careflow_ha.errors import CareflowError, NotReady
from careflow_ha.settings import Settings

Progress = Callable[[str], None]
#: Past the schedule's end: healing, the wait for a healthy cluster and the tail, never more.
END_MARGIN_S = 600.0


@dataclass(frozen=True)
class SoakFault:
    """One scheduled fault as it happened (times are epoch seconds; None: did not happen)."""

    planned: PlannedFault
    targets: tuple[str, ...] = ()
    injected_at: float | None = None
    healed_at: float | None = None
    inject_note: str = ""
    heal_note: str = ""
    #: Why it was skipped or went wrong ("" when it was injected and healed as planned).
    problem: str = ""
    #: The longest gap between acknowledgements from the injection to the next fault's (or the end).
    write_outage_s: float | None = None
    read_outage_s: float | None = None
    writes_resumed: bool = False


@dataclass(frozen=True)
class SoakRun:
    """A whole soak: the schedule, each fault, and one analysis of every probe over the run."""

    schedule: SoakSchedule
    run_id: str
    preset: str
    synchronous: bool
    via: str
    under_load: bool
    started_at: float
    finished_at: float
    faults: tuple[SoakFault, ...]
    recording: Recording
    analysis: Analysis
    recovered: bool
    recovery_problem: str | None
    figures: dict[str, float | str | None] = field(default_factory=dict)

    @property
    def injected(self) -> tuple[SoakFault, ...]:
        return tuple(f for f in self.faults if f.injected_at is not None)

    @property
    def anomalies(self) -> dict[str, int]:
        """What must be 0: lost (synchronous mode only), invented rows, split brain, unhealthy at the end."""
        check = self.analysis.set_check
        out = {
            "unverifiable": int(check is None),
            "unexpected": len(check.unexpected) if check else 0,
            "duplicated": len(check.duplicated) if check else 0,
            "refused_present": len(check.refused_present) if check else 0,
            "split_brain": len(self.analysis.split_brain),
            "unhealthy_at_end": int(not self.recovered),
        }
        if self.synchronous:
            out["lost"] = len(check.lost) if check else 0
        if self.analysis.write_split_brain is not None:
            out["acked_under_foreign_leader"] = len(self.analysis.write_split_brain.acknowledged)
        return out

    @property
    def passed(self) -> bool:
        return not any(self.anomalies.values())


def soak_events(schedule: SoakSchedule) -> list[tuple[float, str, int]]:
    """(seconds from the start, "inject" | "heal", index in the schedule), in the order they run: by time, a heal
    before an injection at the same moment (the layer is free again first)."""
    events = [(f.start_s, "inject", i) for i, f in enumerate(schedule.faults)]
    events += [(f.heal_s, "heal", i) for i, f in enumerate(schedule.faults) if f.duration_s > 0]
    return sorted(events, key=lambda e: (e[0], e[1] != "heal", e[2]))


def longest_gap(ack_times: Iterable[float], start: float, stop: float) -> float | None:
    """The longest gap between acknowledgements that began in [``start``, ``stop``) (the first from the last ack
    at or before ``start``), whole even when it ends after ``stop``; None when no ack came after ``start``."""
    times = sorted(set(ack_times))
    before = [t for t in times if t <= start]
    points = [before[-1] if before else start, *[t for t in times if t > start]]
    gaps = [b - a for a, b in zip(points, points[1:], strict=False) if a < stop]
    return max(gaps) if gaps else None


def _window_outages(faults: list[SoakFault], rec: Recording, until: float) -> list[SoakFault]:
    """Each injected fault's longest write and read gap that began while it was the latest fault injected (from
    its injection to the next one, or ``until``): a fault's outage is never credited to one that came before it,
    one that began just before the next fault is still shown whole, and a fault injected into an ongoing gap
    shows the gap it met."""
    starts = sorted(f.injected_at for f in faults if f.injected_at is not None)
    out = []
    for f in faults:
        if f.injected_at is None:
            out.append(f)
            continue
        end = next((s for s in starts if s > f.injected_at), until)
        writes = longest_gap((a.acked_at for a in rec.writes), f.injected_at, end)
        reads = longest_gap((a.acked_at for a in rec.reads), f.injected_at, end)
        out.append(replace(f, write_outage_s=writes, read_outage_s=reads, writes_resumed=writes is not None))
    return out


class _Nemesis:
    """Injects and heals the schedule's faults; remembers what is in place so that everything gets healed."""

    def __init__(self, schedule: SoakSchedule, ctx: FaultContext, control: ClusterControl, say: Progress) -> None:
        self.schedule, self.ctx, self.control, self.say = schedule, ctx, control, say
        self.faults = [SoakFault(p) for p in schedule.faults]
        self.in_place: set[int] = set()
        self.events: list[TimelineEvent] = []

    def inject(self, i: int) -> None:
        planned = self.faults[i].planned
        fault = FAULTS[planned.fault]
        try:
            targets = fault.pick_live(self.ctx) if fault.pick_live else fault.pick(self.control.topology())
        except (CareflowError, OSError) as exc:
            self.faults[i] = replace(self.faults[i], problem=f"skipped: {str(exc).splitlines()[0]}")
            self.say(f"{planned.fault}: skipped ({self.faults[i].problem})")
            return
        at = time.time()
        if fault.hold.max_s > 0:  # a fault with nothing to hold (a switchover, a crash) has nothing to heal
            self.in_place.add(i)
        self.faults[i] = replace(self.faults[i], targets=tuple(targets), injected_at=at)
        try:
            note = fault.inject(self.ctx, tuple(targets))
        except (CareflowError, OSError) as exc:
            note = f"inject failed: {str(exc).splitlines()[0]}"
            self.faults[i] = replace(self.faults[i], problem=note)
        self.faults[i] = replace(self.faults[i], inject_note=note)
        self.events.append(TimelineEvent(at, "fault", f"{planned.fault}: {note}"))
        self.say(f"{planned.fault} on {', '.join(targets) or '-'}: {note}")

    def heal(self, i: int) -> None:
        if i not in self.in_place:
            return
        planned = self.faults[i].planned
        fault = FAULTS[planned.fault]
        at = time.time()
        try:
            note = fault.heal(self.ctx, self.faults[i].targets)
        except (CareflowError, OSError) as exc:
            note = f"heal failed: {str(exc).splitlines()[0]}"
            self.faults[i] = replace(self.faults[i], problem=self.faults[i].problem or note)
        else:
            self.in_place.discard(i)
        self.faults[i] = replace(self.faults[i], healed_at=at, heal_note=note)
        self.events.append(TimelineEvent(at, "heal", f"{planned.fault}: {note}"))
        self.say(f"{planned.fault}: {note}")

    def heal_everything(self) -> None:
        """Every fault still in place, twice at most each: a soak always ends healed."""
        for _ in range(2):
            for i in sorted(self.in_place):
                with contextlib.suppress(Exception):  # one healer's failure must not keep the others from running
                    self.heal(i)
            if not self.in_place:
                return


def run_soak(
    schedule: SoakSchedule,
    settings: Settings,
    engine: NodeEngine,
    control: ClusterControl,
    options: DrillOptions | None = None,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> SoakRun:
    """Run ``schedule`` against the lab cluster and return what happened, analysed."""
    options = options or DrillOptions()
    progress = progress or (lambda line: None)
    started = time.time()

    def say(line: str) -> None:
        progress(f"[soak +{time.time() - started:6.1f}s] {line}")

    previous_sync = control.synchronous_mode()
    options = replace(options, max_run_s=max(options.max_run_s, schedule.total_s + END_MARGIN_S))
    try:
        say(f"preparing: seed {schedule.seed}, {schedule.minutes:g} min, nemesis {schedule.nemesis}, "
            f"{len(schedule.faults)} faults, preset {options.preset}, "
            f"synchronous_mode {'on' if options.synchronous else 'off'}")
        control.set_timing_preset(options.preset)
        control.set_synchronous_mode(options.synchronous)
        healthy = control.wait_healthy(options.healthy_timeout_s)
        return _soak(schedule, settings, engine, control, options, healthy, started, say, sleep)
    finally:
        if options.restore_synchronous and previous_sync != options.synchronous:
            control.set_synchronous_mode(previous_sync)
            say(f"synchronous_mode restored to {'on' if previous_sync else 'off'}")


def _soak(schedule: SoakSchedule, settings: Settings, engine: NodeEngine, control: ClusterControl,
          options: DrillOptions, healthy: Any, started: float, say: Progress,
          sleep: Callable[[float], None]) -> SoakRun:
    run_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}-soak-{uuid.uuid4().hex[:6]}"
    probes = start_probes(settings, engine, control, options, healthy, run_id, say)
    nemesis = _Nemesis(schedule, fault_context(settings, engine, control, say), control, say)
    background = options.background() if options.background else contextlib.nullcontext()
    with background as load, running(*probes.all):
        probes_from = time.time()
        if not wait_for(lambda: len(probes.writer.acks) >= options.warmup_acks, 30.0):
            raise NotReady(f"the probe writer got no steady acknowledgements via {settings.via}")
        t0 = time.time()
        try:
            for at, kind, i in soak_events(schedule):
                wait = t0 + at - time.time()
                if wait > 0:
                    sleep(wait)
                (nemesis.inject if kind == "inject" else nemesis.heal)(i)
            rest = t0 + schedule.total_s - time.time()
            if rest > 0:
                say(f"every fault healed; settling for the last {rest:.0f} s")
                sleep(rest)
        finally:
            nemesis.heal_everything()  # on an error or Ctrl+C too: never leave the lab broken
        recovered, problem = await_recovery(control, options.recovery_timeout_s, say)
        tail_from = time.time()
        wait_for(lambda: probes.writer.last_ack_after(tail_from + options.tail_s) is not None, options.tail_s + 10.0)
    probes_until = time.time()
    recording, present = probes.recording(control, nemesis.events, started, probes_from, probes_until, say)
    analysis = analyse(recording, fault_at=None, heal_at=None, old_primary=healthy.leader, present_seqs=present)
    faults = _window_outages(nemesis.faults, recording, probes_until)
    run = SoakRun(
        schedule=schedule, run_id=run_id, preset=options.preset, synchronous=options.synchronous, via=settings.via,
        under_load=options.background is not None, started_at=started, finished_at=time.time(),
        faults=tuple(faults), recording=recording, analysis=analysis, recovered=recovered,
        recovery_problem=problem, figures=load_figures(getattr(load, "result", None)),
    )
    say(f"done: {len(run.injected)} of {len(faults)} faults injected; "
        + ", ".join(f"{k} {v}" for k, v in run.anomalies.items()))
    return run
