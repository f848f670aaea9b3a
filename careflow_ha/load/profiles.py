"""Load profiles: a shape over time (steady, ramp, spike) and the mix of EMR user classes.

Pure data and arithmetic, no Locust import: the CLI validates ``--profile``
with it, and the Locust shape class (shapes.py) asks it how many users to run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

Shape = Literal["steady", "ramp", "spike"]

#: A clinic's mix: front desk and vets dominate, the lab posts batches, analysts are few.
DEFAULT_WEIGHTS = MappingProxyType({"reception": 3, "lab": 2, "vet": 4, "analyst": 1})


@dataclass(frozen=True)
class Profile:
    """One ``--profile``: how the user count moves over the run, and the user mix."""

    name: str
    shape: Shape
    description: str
    weights: MappingProxyType = field(default_factory=lambda: DEFAULT_WEIGHTS)

    def users_at(self, t: float, duration: float, users: int) -> int | None:
        """Target user count ``t`` seconds into a run of ``duration`` s peaking at ``users``; None = stop."""
        return users_at(self.shape, t, duration, users)


def users_at(shape: Shape, t: float, duration: float, users: int) -> int | None:
    """The user count a shape asks for at ``t`` (None once the run is over).

    steady: ``users`` throughout. ramp: rises linearly over the first third,
    then holds. spike: 40 % of ``users``, all of them from 40 % to 60 % of the
    run, then back to 40 %.
    """
    if t >= duration or users < 1:
        return None
    if shape == "steady":
        return users
    if shape == "ramp":
        rise = duration / 3
        return max(1, min(users, round(users * t / rise))) if rise > 0 else users
    if shape == "spike":
        base = max(1, round(users * 0.4))
        return users if 0.4 * duration <= t < 0.6 * duration else base
    raise ValueError(f"unknown shape {shape!r}")


PROFILES: MappingProxyType = MappingProxyType({
    "steady": Profile("steady", "steady", "constant users, the default mix (benchmarks and drills)"),
    "emr-day": Profile("emr-day", "ramp", "clinics opening: users ramp up over the first third, then hold"),
    "peak": Profile("peak", "spike", "a rush: 40 % of the users, a spike to all of them mid-run, back to 40 %",
                    MappingProxyType({"reception": 4, "lab": 3, "vet": 4, "analyst": 1})),
    "read-heavy": Profile("read-heavy", "steady", "vets and analysts reading through 5001, few writes",
                          MappingProxyType({"reception": 1, "lab": 1, "vet": 6, "analyst": 2})),
})


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        from careflow_ha.errors import UsageError

        raise UsageError(f"--profile {name!r} is unknown; use one of {', '.join(PROFILES)}") from None


class OperationDeck:
    """A user's next operation, dealt from a shuffled deck holding each one ``weight`` times.

    Locust's own choice (``random.choice`` over the weighted task list) can leave a rare
    operation out of a short run altogether: CI's 15-second load once ran no
    ``analyst.breed_age_patterns`` in about 30 analyst picks. A deck keeps each user's
    order random but runs every operation in exact proportion over each ``len(deck)``
    picks, so a short run (CI, a drill's background load) exercises the whole mix.
    """

    def __init__(self, weights: dict[str, int] | MappingProxyType, rng: random.Random) -> None:
        if not weights or any(w < 1 for w in weights.values()):
            raise ValueError(f"every operation needs a weight of 1 or more: {dict(weights)}")
        self._weights = dict(weights)
        self._rng = rng
        self._deck: list[str] = []

    def deal(self) -> str:
        if not self._deck:
            self._deck = [name for name, weight in self._weights.items() for _ in range(weight)]
            self._rng.shuffle(self._deck)
        return self._deck.pop()
