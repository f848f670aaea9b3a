"""``careflow-ha soak plan``: print the seeded fault schedule a soak of N minutes would run.

It touches nothing: no lab, no cluster, no settings. The same seed always
gives the same schedule, so a soak that found something can be replayed,
and a schedule can be read before a long run is started. Running the
schedule against the lab (``soak run``) is not built yet (issue 18).
"""

from __future__ import annotations

from typing import Any

import click

from careflow_ha.cli.common import emit, format_option, table
from careflow_ha.drills.faults import FAULTS
from careflow_ha.drills.nemesis import SoakSchedule, nemesis_names, plan_soak
from careflow_ha.errors import UsageError

PLAN_COLUMNS = ["start_s", "fault", "layer", "duration_s", "heal_s", "settle_s"]


def schedule_json(plan: SoakSchedule) -> dict[str, Any]:
    return {
        "seed": plan.seed,
        "minutes": plan.minutes,
        "nemesis": plan.nemesis,
        "healed_at_s": plan.healed_at_s,
        "faults": [
            {
                "start_s": f.start_s,
                "fault": f.fault,
                "layer": f.layer,
                "duration_s": f.duration_s,
                "heal_s": f.heal_s,
                "settle_s": f.settle_s,
            }
            for f in plan.faults
        ],
    }


def _pretty(data: dict[str, Any]) -> str:
    head = (
        f"soak of {data['minutes']:g} min, nemesis {data['nemesis']}, seed {data['seed']}: "
        f"{len(data['faults'])} fault(s), all healed at +{data['healed_at_s']:.1f} s, "
        f"then settling until +{60 * data['minutes']:.0f} s"
    )
    return "\n".join([head, table(data["faults"], PLAN_COLUMNS)])


@click.group("soak")
def soak_group() -> None:
    """Long randomized fault schedules (a seeded nemesis) under the probe writer."""


def _number(flag: str, text: str, kind: type[float] | type[int], example: str) -> Any:
    """Parse a flag's value here rather than through click's types, so a bad one is a single line like the rest."""
    try:
        return kind(text)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise UsageError(f"{flag} must be {noun} (got {text!r}); e.g. {flag} {example}") from None


@soak_group.command("plan")
@click.option("--minutes", required=True, help="Length of the soak in minutes (above 0, at most a day).")
@click.option(
    "--nemesis",
    default="mixed",
    show_default=True,
    help=f"Which faults to draw: {'|'.join(nemesis_names(FAULTS))} (see 'drill list').",
)
@click.option("--seed", default="1", show_default=True, help="The schedule's seed (a whole number >= 0).")
@format_option
def plan_cmd(minutes: str, nemesis: str, seed: str, fmt: str) -> None:
    """Print the schedule (start, fault, hold, heal, settle) a soak would run; touches nothing."""
    plan = plan_soak(_number("--seed", seed, int, "1"), _number("--minutes", minutes, float, "5"), nemesis, FAULTS)
    emit(schedule_json(plan), fmt, _pretty)


def register(cli: click.Group) -> None:
    """Add the ``soak`` command group to the ``careflow-ha`` CLI."""
    cli.add_command(soak_group)
