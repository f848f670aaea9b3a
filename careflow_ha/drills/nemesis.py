"""The seeded nemesis schedule for ``careflow-ha soak``: which fault when, held how long, healed, then settled.

A pure function of (seed, minutes, nemesis, fault catalogue), so a soak that
found something is replayed exactly by its seed, and the schedule's promises
are properties a test checks over many seeds:

- bounded: every fault is healed and settled inside the soak, and the number
  of faults is bounded by the soak's length;
- never two faults on one layer at once (two database faults would make
  "the primary" ambiguous and can take quorum away together); a database
  fault and a balancer fault may overlap, as real incidents do;
- always ends healed: after the last heal, at least the settle period before
  the soak ends;
- deterministic: its own ``random.Random(seed)``, never the global one, and
  the catalogue in name order, so neither import order nor other code's use
  of ``random`` can change a schedule.

Durations come from each fault's own hold policy in the catalogue
(``faults.Hold``): a planned hold between its ``min_s`` and ``max_s``. For a
fault held "until writes resume" the soak runner may heal it earlier, never
later, so the schedule's slots are upper bounds.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

from careflow_ha.drills.faults import FAULT_LAYERS, NEMESIS_KINDS, Fault
from careflow_ha.errors import UsageError

MIXED = "mixed"
#: A soak is a run of minutes to hours; a day is surely a typo (and keeps the schedule small).
MAX_SOAK_MINUTES = 24 * 60
#: Probes warm up before the first fault (the drills wait for 20 acknowledgements the same way).
LEAD_IN_S = 10.0
#: After each heal, at least this long before the next fault on that layer: the old primary must be able
#: to rejoin (the drills' target is 60 s, most take far less) so faults do not simply pile up.
SETTLE_MIN_S = 30.0
SETTLE_JITTER_S = 30.0
#: The quiet time before a fault is random up to this, so faults do not fall into a fixed rhythm.
GAP_MAX_S = 20.0
#: Two layers, one fault per settle period each: far below this; a hard stop against a logic error.
MAX_FAULTS = 10_000


@dataclass(frozen=True)
class PlannedFault:
    """One fault of the schedule; times are seconds from the soak's start."""

    start_s: float
    fault: str
    duration_s: float  # held this long before healing (0: nothing to hold, e.g. a switchover)
    heal_s: float  # start_s + duration_s
    settle_s: float  # quiet time after healing before this layer's next fault
    layer: str

    @property
    def end_s(self) -> float:
        """When this fault's layer is free again."""
        return self.heal_s + self.settle_s


@dataclass(frozen=True)
class SoakSchedule:
    """The whole plan; ``faults`` is ordered by start (then layer)."""

    seed: int
    minutes: float
    nemesis: str
    faults: tuple[PlannedFault, ...]

    @property
    def total_s(self) -> float:
        return self.minutes * 60.0

    @property
    def healed_at_s(self) -> float:
        """When the last fault is healed (the soak then only settles)."""
        return max((f.heal_s for f in self.faults), default=0.0)


def nemesis_names(catalogue: Mapping[str, Fault]) -> tuple[str, ...]:
    """The valid ``--nemesis`` values for ``catalogue``: "mixed" and every kind some fault has."""
    kinds = {f.nemesis for f in catalogue.values() if f.nemesis}
    return (MIXED, *[k for k in NEMESIS_KINDS if k in kinds])


def nemesis_faults(nemesis: str, catalogue: Mapping[str, Fault]) -> tuple[Fault, ...]:
    """The faults ``nemesis`` draws from, in name order; a UsageError names the valid choices."""
    valid = nemesis_names(catalogue)
    if nemesis not in valid:
        raise UsageError(f"unknown nemesis {nemesis!r}; use --nemesis {'|'.join(valid)}")
    chosen = [f for f in catalogue.values() if f.nemesis and (nemesis == MIXED or f.nemesis == nemesis)]
    for fault in chosen:
        if fault.layer not in FAULT_LAYERS:  # a catalogue bug, named before any schedule is built on it
            raise ValueError(f"fault {fault.name!r} has layer {fault.layer!r}; expected one of {FAULT_LAYERS}")
    return tuple(sorted(chosen, key=lambda f: f.name))


def _validate(seed: int, minutes: float) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"--seed must be a whole number >= 0 (got {seed!r}); e.g. --seed 1")
    if not isinstance(minutes, int | float) or not math.isfinite(minutes) or minutes <= 0:
        raise UsageError(f"--minutes must be a number above 0 (got {minutes!r}); e.g. --minutes 5")
    if minutes > MAX_SOAK_MINUTES:
        raise UsageError(f"--minutes {minutes:g} is more than a day; use at most --minutes {MAX_SOAK_MINUTES}")


def _hold_s(fault: Fault, rng: random.Random) -> float:
    if fault.hold.max_s <= 0:
        return 0.0
    return round(rng.uniform(fault.hold.min_s, fault.hold.max_s), 1)


def _tenth_not_before(at: float) -> float:
    """``at`` rounded up to 0.1 s: rounding a start down could put it inside the previous fault's settle."""
    start = round(at, 1)
    for _ in range(3):  # one step always suffices; the bound only guards against float surprises
        if start >= at:
            break
        start = round(start + 0.1, 1)
    return start


def shortest_soak_minutes(faults: tuple[Fault, ...]) -> float:
    """The shortest soak in which one of ``faults`` fits at its shortest hold (rounded up to 0.1 min)."""
    shortest = min((f.hold.min_s if f.hold.max_s > 0 else 0.0) for f in faults)
    return math.ceil((LEAD_IN_S + shortest + SETTLE_MIN_S) / 6.0) / 10.0


def plan_soak(seed: int, minutes: float, nemesis: str, catalogue: Mapping[str, Fault]) -> SoakSchedule:
    """The schedule for a soak of ``minutes`` drawing ``nemesis`` faults from ``catalogue``, fixed by ``seed``.

    Each step draws a fault, a quiet gap, a hold and a settle period. A draw
    that does not fit in what is left of the soak is retried at its shortest
    (no gap, shortest hold, shortest settle); a fault that does not fit even
    then never will (time only moves on), so it leaves the candidates. The
    schedule ends when no candidate is left.
    """
    _validate(seed, minutes)
    candidates = list(nemesis_faults(nemesis, catalogue))
    if not candidates:
        raise UsageError(f"no fault in the catalogue has nemesis {nemesis!r}")
    needed = shortest_soak_minutes(tuple(candidates))
    rng = random.Random(seed)
    total_s = minutes * 60.0
    layer_free_at = dict.fromkeys(FAULT_LAYERS, LEAD_IN_S)
    cursor = LEAD_IN_S  # starts never go backwards, so the list is in start order as it is built
    planned: list[PlannedFault] = []
    for _ in range(MAX_FAULTS):
        if not candidates:
            break
        fault = rng.choice(candidates)
        earliest = max(cursor, layer_free_at[fault.layer])
        drawn = (
            _tenth_not_before(earliest + rng.uniform(0.0, GAP_MAX_S)),
            _hold_s(fault, rng),
            round(SETTLE_MIN_S + rng.uniform(0.0, SETTLE_JITTER_S), 1),
        )
        shortest = (_tenth_not_before(earliest), 0.0 if fault.hold.max_s <= 0 else fault.hold.min_s, SETTLE_MIN_S)
        # The fit is judged on the very numbers stored, so "healed and settled inside the soak" holds exactly.
        fitting = next((s for s in (drawn, shortest) if round(s[0] + s[1], 1) + s[2] <= total_s), None)
        if fitting is None:
            candidates.remove(fault)
            continue
        start, hold, settle = fitting
        entry = PlannedFault(start, fault.name, hold, round(start + hold, 1), settle, fault.layer)
        planned.append(entry)
        layer_free_at[fault.layer] = entry.end_s
        cursor = start
    if not planned:
        raise UsageError(
            f"--minutes {minutes:g} is too short for any {nemesis!r} fault with its heal and settle period; "
            f"use --minutes {needed:g} or more"
        )
    return SoakSchedule(seed, float(minutes), nemesis, tuple(planned))
