"""``careflow-ha soak plan|run``: the seeded fault schedule of a soak of N minutes, printed or run on the lab.

``plan`` touches nothing: no lab, no cluster, no settings. The same seed always
gives the same schedule, so a soak that found something can be replayed,
and a schedule can be read before a long run is started. ``run`` runs it
against the lab under the drills' probes (``drills/soak.py``) and writes its
report under ``reports/soak/``.
"""

from __future__ import annotations

from typing import Any

import click

from careflow_ha.cli.common import (
    confirm_or_force,
    emit,
    engine_option,
    force_option,
    format_option,
    get_settings,
    haproxy_preset_switcher,
    preset_option,
    progress,
    table,
    via_option,
)
from careflow_ha.drills.faults import FAULTS
from careflow_ha.drills.nemesis import SoakSchedule, nemesis_names, plan_soak
from careflow_ha.errors import CheckFailed, UsageError

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


def _schedule_options(func: Any) -> Any:
    for option in reversed((
        click.option("--minutes", required=True, help="Length of the soak in minutes (above 0, at most a day)."),
        click.option("--nemesis", default="mixed", show_default=True,
                     help=f"Which faults to draw: {'|'.join(nemesis_names(FAULTS))} (see 'drill list')."),
        click.option("--seed", default="1", show_default=True, help="The schedule's seed (a whole number >= 0)."),
    )):
        func = option(func)
    return func


@soak_group.command("plan")
@_schedule_options
@format_option
def plan_cmd(minutes: str, nemesis: str, seed: str, fmt: str) -> None:
    """Print the schedule (start, fault, hold, heal, settle) a soak would run; touches nothing."""
    plan = plan_soak(_number("--seed", seed, int, "1"), _number("--minutes", minutes, float, "5"), nemesis, FAULTS)
    emit(schedule_json(plan), fmt, _pretty)


@soak_group.command("run")
@_schedule_options
@preset_option("fast", "Timing preset for the soak (the drills' default).")
@click.option("--async", "asynchronous", is_flag=True, help="Run with synchronous_mode off (it may lose writes).")
@click.option("--under-load", is_flag=True, help="Run Locust's EMR users in the background for the whole soak.")
@click.option("--node-writers", is_flag=True,
              help="Also write straight to every node (split brain judged by acknowledged writes).")
@via_option
@engine_option
@force_option
def run_cmd(minutes: str, nemesis: str, seed: str, preset: str, asynchronous: bool, under_load: bool,
            node_writers: bool, via: str | None, engine_name: str | None, force: bool) -> None:
    """Run the seeded schedule against the lab: every fault injected and healed in turn under the probes, then
    one set check over every write. Writes reports/soak/<UTC>-seed<S>-<nemesis>/. Exit 5 on any anomaly."""
    from careflow_ha.cluster.patroni import PatroniApi
    from careflow_ha.drills.control import PatroniRestControl
    from careflow_ha.drills.runner import DrillOptions
    from careflow_ha.drills.soak import run_soak
    from careflow_ha.drills.soak_report import write_soak_report
    from careflow_ha.lab.engine import detect_engine

    plan = plan_soak(_number("--seed", seed, int, "1"), _number("--minutes", minutes, float, "5"), nemesis, FAULTS)
    settings = get_settings().with_via(via)  # an unknown way in fails here, before anything is touched
    confirm_or_force(f"A {plan.minutes:g}-minute soak breaks the lab cluster {len(plan.faults)} times on purpose "
                     "and heals it. Continue?", force)
    background = None
    if under_load:
        from careflow_ha.load.background import drill_background

        background = drill_background(settings, progress=progress, max_seconds=plan.total_s + 600)
    engine = detect_engine(engine_name)
    control = PatroniRestControl(PatroniApi(settings), haproxy_preset=haproxy_preset_switcher(settings))
    options = DrillOptions(preset=preset, synchronous=not asynchronous, background=background,
                           node_writers=node_writers)
    run = run_soak(plan, settings, engine, control, options, progress)
    folder = write_soak_report(run, settings.reports_dir, settings.secrets)
    click.echo(f"report: {folder.relative_to(settings.project_dir)}/report.md")
    bad = {k: v for k, v in run.anomalies.items() if v}
    if bad:
        raise CheckFailed(f"the soak found {', '.join(f'{k} {v}' for k, v in bad.items())}; see the report")


def register(cli: click.Group) -> None:
    """Add the ``soak`` command group to the ``careflow-ha`` CLI."""
    cli.add_command(soak_group)
