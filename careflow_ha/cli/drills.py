"""``careflow-ha drill ...``: list, run, all, compare; and ``bench routing`` (the primary drills per way in).

Drills break the lab cluster on purpose, so they ask first unless ``--force``.
Progress goes to stderr while a drill runs; the result (table or JSON) goes to
stdout; every run leaves a report under ``reports/drills/``. A run that
misses a target exits 5 (CheckFailed) after all reports are written.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import click

from careflow_ha.backup.drills import BACKUP_DRILLS
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
from careflow_ha.cluster.patroni import PatroniApi
from careflow_ha.drills.control import PatroniRestControl
from careflow_ha.drills.faults import FAULTS, get_fault
from careflow_ha.drills.report import write_report
from careflow_ha.drills.runner import DrillOptions, DrillRun, run_drill
from careflow_ha.drills.series import render_lines, summarize, write_series_report
from careflow_ha.drills.targets import compare_verdict
from careflow_ha.errors import CheckFailed, NotReady, UsageError
from careflow_ha.lab.engine import detect_engine
from careflow_ha.settings import Settings

drill_preset_option = preset_option(
    "fast", "Patroni timing preset: 'default' is ttl 30/loop_wait 10/retry_timeout 10; 'fast' is the tuned one."
)
async_option = click.option(
    "--async",
    "asynchronous",
    is_flag=True,
    help="Run with synchronous_mode off (shows the acknowledged writes lost at failover); restored afterwards.",
)
failsafe_option = click.option(
    "--failsafe/--no-failsafe",
    "failsafe",
    default=None,
    help="Run with Patroni's failsafe_mode on or off (restored afterwards); by default the cluster's own setting.",
)
repeat_option = click.option(
    "--repeat", type=click.IntRange(1, 50), default=1, show_default=True, help="Run the drill N times in a row."
)


def _summary(run: DrillRun, folder: str = "") -> dict[str, Any]:
    a = run.analysis
    return {
        "drill": run.name,
        "preset": run.preset,
        "sync": "on" if run.synchronous else "off",
        "via": run.via,
        "write_outage_s": None if a.write_outage.seconds is None else round(a.write_outage.seconds, 2),
        "read_outage_s": None if a.read_outage.seconds is None else round(a.read_outage.seconds, 2),
        "lost_acked": None if a.lost_writes is None else len(a.lost_writes),
        # Every class of the set check (JSON only; the table keeps lost_acked): unexpected, ambiguous, ...
        "set_check": None if a.set_check is None else a.set_check.counts(),
        "split_brain": len(a.split_brain),
        "leader": f"{a.old_primary}->{a.new_primary or a.old_primary}",
        "rejoin_s": None if a.rejoin_seconds is None else round(a.rejoin_seconds, 1),
        "result": "PASS" if run.passed else "MISS",
        "report": folder,
    }


SUMMARY_COLUMNS = [
    "drill", "preset", "sync", "via", "write_outage_s", "read_outage_s", "lost_acked", "split_brain", "leader",
    "rejoin_s", "result", "report",
]  # fmt: skip


under_load_option = click.option(
    "--under-load",
    is_flag=True,
    help="Run EMR traffic (Locust, 10 users through HAProxy 5000/5001) for the whole drill; "
    "its load report goes to reports/load/.",
)


def _runner(
    engine_name: str | None, under_load: bool = False, via: str | None = None
) -> Callable[[str, str, bool], tuple[DrillRun, str]]:
    """Build the engine and cluster control once; return a function that runs and reports one drill."""
    settings = get_settings().with_via(via)
    background = None
    if under_load:
        from careflow_ha.load.background import drill_background

        background = drill_background(settings, progress=progress)
    engine = detect_engine(engine_name)
    control = PatroniRestControl(PatroniApi(settings), haproxy_preset=haproxy_preset_switcher(settings))

    def one(name: str, preset: str, asynchronous: bool, failsafe: bool | None = None) -> tuple[DrillRun, str]:
        options = DrillOptions(preset=preset, synchronous=not asynchronous, background=background,
                               failsafe_mode=failsafe)
        run = run_drill(get_fault(name), settings, engine, control, options, progress)
        folder = write_report(run, settings.reports_dir, settings.secrets)
        progress(f"report: {folder.relative_to(settings.project_dir)}/report.md")
        return run, str(folder.relative_to(settings.project_dir))

    return one


def _finish(runs: Sequence[tuple[DrillRun, str]], fmt: str) -> None:
    rows = [_summary(run, folder) for run, folder in runs]
    emit(rows, fmt, lambda r: table(r, SUMMARY_COLUMNS))
    if len(runs) > 1:  # a series: percentiles against the targets, and every write of every run
        settings = get_settings()
        only_runs = [run for run, _ in runs]
        for line in render_lines(summarize(only_runs)):
            progress(line)
        folder = write_series_report(only_runs, [f for _, f in runs], settings.reports_dir, settings.secrets)
        progress(f"series report: {folder.relative_to(settings.project_dir)}/report.md")
    missed = [run for run, _ in runs if not run.passed]
    if missed:
        names = ", ".join(sorted({r.name for r in missed}))
        raise CheckFailed(f"{len(missed)} of {len(runs)} drill run(s) missed a target ({names}); see the reports")


@click.group("drill")
def drill_group() -> None:
    """Failover drills: break the cluster on purpose and measure, as a client, how it recovers."""


@drill_group.command("list")
@format_option
def list_cmd(fmt: str) -> None:
    """The drills of the failure model, with what each breaks."""
    rows = [
        {
            "name": f.name,
            "breaks": f.title,
            "failover": {True: "expected", False: "must not", None: "either"}[f.expects_failover],
            "ci": "yes" if f.ci else "",
            "how": f.description,
        }
        for f in FAULTS.values()
    ]
    rows += [
        {"name": d.name, "breaks": d.title, "failover": "restore", "ci": "yes" if d.ci else "", "how": d.description}
        for d in BACKUP_DRILLS.values()
    ]
    emit(rows, fmt, lambda r: table(r, ["name", "breaks", "failover", "ci"]))  # "how" is in --format json


@drill_group.command("run")
@click.argument("name")
@repeat_option
@drill_preset_option
@async_option
@failsafe_option
@under_load_option
@via_option
@engine_option
@force_option
@format_option
def run_cmd(
    name: str, repeat: int, preset: str, asynchronous: bool, failsafe: bool | None, under_load: bool,
    via: str | None, engine_name: str | None, force: bool, fmt: str,
) -> None:
    """Run drill NAME (see 'drill list') and write its report."""
    if name in BACKUP_DRILLS:
        if failsafe is not None:
            raise UsageError(f"drill {name!r} restores the cluster from the repository; --failsafe does not apply "
                             "to it: run it without")
        _run_backup_drill(name, repeat, preset, asynchronous, under_load, via, force, fmt)
        return
    if name not in FAULTS:  # an unknown name fails before anything is touched
        raise UsageError(f"unknown drill {name!r}; valid drills: {', '.join([*FAULTS, *BACKUP_DRILLS])}")
    fault = get_fault(name)
    get_settings().with_via(via)  # so does an unknown or unprovisioned way in
    if asynchronous and fault.name == "sync-standby-loss":
        raise UsageError("drill 'sync-standby-loss' needs synchronous_mode on; run it without --async")
    confirm_or_force(f"Drill '{fault.name}' breaks the lab cluster on purpose ({fault.title}). Continue?", force)
    one = _runner(engine_name, under_load, via)
    runs = []
    for i in range(repeat):
        if repeat > 1:
            progress(f"repetition {i + 1} of {repeat}")
        runs.append(one(fault.name, preset, asynchronous, failsafe))
    _finish(runs, fmt)


def _run_backup_drill(name: str, repeat: int, preset: str, asynchronous: bool, under_load: bool, via: str | None,
                      force: bool, fmt: str) -> None:
    """The restore drills (careflow_ha.backup.drills): they restore the whole cluster, so the fault drills'
    knobs (preset, --async, --under-load, --via) do not apply and are refused rather than ignored."""
    from careflow_ha.backup.drills import run_backup_drill

    given = [flag for flag, on in (("--preset", preset != "fast"), ("--async", asynchronous),
                                   ("--under-load", under_load), ("--via", via is not None)) if on]
    if given:
        raise UsageError(f"drill {name!r} restores the cluster from the repository; {', '.join(given)} "
                         "does not apply to it: run it without")
    drill = BACKUP_DRILLS[name]
    confirm_or_force(f"Drill '{name}' breaks the lab cluster on purpose ({drill.title}) and restores it. Continue?",
                     force)
    settings = get_settings()
    rows = []
    for i in range(repeat):
        if repeat > 1:
            progress(f"repetition {i + 1} of {repeat}")
        report, folder = run_backup_drill(name, settings, progress)
        rows.append({"drill": name, **{k: v for k, v in report.figures.items() if not isinstance(v, str)},
                     "result": "PASS" if report.passed else "MISS",
                     "report": str(folder.relative_to(settings.project_dir))})
    emit(rows, fmt, lambda r: table(r, ["drill", "result", "report"]))
    missed = [r for r in rows if r["result"] != "PASS"]
    if missed:
        raise CheckFailed(f"{len(missed)} of {len(rows)} run(s) missed a target; see the reports")


@drill_group.command("all")
@click.option(
    "--ci", "ci_only", is_flag=True, help="Only the CI subset (switchover, node loss, partition, balancer loss)."
)
@drill_preset_option
@async_option
@under_load_option
@via_option
@engine_option
@force_option
@format_option
def all_cmd(
    ci_only: bool, preset: str, asynchronous: bool, under_load: bool, via: str | None, engine_name: str | None,
    force: bool, fmt: str,
) -> None:
    """Run every drill once, in the order of the failure model."""
    get_settings().with_via(via)  # an unknown or unprovisioned way in fails before anything is touched
    faults = [f for f in FAULTS.values() if f.ci or not ci_only]
    if asynchronous:  # losing the sync standby means nothing without one
        faults = [f for f in faults if f.name != "sync-standby-loss"]
    confirm_or_force(f"Run {len(faults)} drills that break the lab cluster on purpose?", force)
    one = _runner(engine_name, under_load, via)
    runs = []
    for i, fault in enumerate(faults, start=1):
        progress(f"drill {i} of {len(faults)}: {fault.name}")
        runs.append(one(fault.name, preset, asynchronous))
    _finish(runs, fmt)


@drill_group.command("compare")
@click.argument("name")
@repeat_option
@async_option
@click.option("--failsafe", "by_failsafe", is_flag=True,
              help="Compare Patroni's failsafe_mode off and on (tuned preset) instead of the two presets.")
@under_load_option
@engine_option
@force_option
@format_option
def compare_cmd(
    name: str, repeat: int, asynchronous: bool, by_failsafe: bool, under_load: bool, engine_name: str | None,
    force: bool, fmt: str,
) -> None:
    """Run drill NAME under Patroni's defaults and under the tuned preset in one run; print both and the ratio.

    With --failsafe: under failsafe_mode off and on instead, both on the tuned preset."""
    fault = get_fault(name)
    if by_failsafe:
        _compare_failsafe(fault.name, repeat, asynchronous, under_load, engine_name, force, fmt)
        return
    confirm_or_force(f"Run '{fault.name}' {2 * repeat} times (both presets)? It breaks the lab cluster.", force)
    one = _runner(engine_name, under_load)
    runs: list[tuple[DrillRun, str]] = []
    for i in range(repeat):  # interleaved, so both presets see the same machine load
        for preset in ("default", "fast"):
            progress(f"repetition {i + 1} of {repeat}, preset {preset}")
            runs.append(one(fault.name, preset, asynchronous))

    default_s = _median_outage([r for r, _ in runs if r.preset == "default"])
    fast_s = _median_outage([r for r, _ in runs if r.preset == "fast"])
    verdict = compare_verdict(default_s, fast_s)
    result = {
        "drill": fault.name,
        "repeat": repeat,
        "default_write_outage_s": default_s,
        "fast_write_outage_s": fast_s,
        "ratio_fast_to_default": None if not default_s or fast_s is None else round(fast_s / default_s, 3),
        "ratio_target": verdict.target if fault.name == "primary-node-loss" else None,
        "ratio_ok": verdict.ok if fault.name == "primary-node-loss" else None,
        "runs": [_summary(r, folder) for r, folder in runs],
    }

    def pretty(res: dict[str, Any]) -> str:
        lines = [table(res["runs"], SUMMARY_COLUMNS), ""]
        fmt_s = lambda v: "-" if v is None else f"{v:.2f} s"  # noqa: E731 - tiny local formatter
        lines.append(f"write outage (median of {repeat}): default {fmt_s(default_s)}, fast {fmt_s(fast_s)}")
        ratio = res["ratio_fast_to_default"]
        lines.append(f"ratio fast/default: {'-' if ratio is None else f'{ratio:.2f}'}")
        if res["ratio_target"]:
            lines.append(f"target {res['ratio_target']}: {'PASS' if res['ratio_ok'] else 'MISS'}")
        return "\n".join(lines)

    emit(result, fmt, pretty)
    missed = [r for r, _ in runs if not r.passed]
    if missed or result["ratio_ok"] is False:
        raise CheckFailed(f"'{fault.name}' missed a target ({len(missed)} run(s) or the ratio); see the reports")


def _median_outage(runs: Sequence[DrillRun]) -> float | None:
    """The median write outage, or None unless every run's writes resumed."""
    values = [r.analysis.write_outage.seconds for r in runs]
    known = [v for v in values if v is not None]
    return statistics.median(known) if known and len(known) == len(values) else None


def _compare_failsafe(name: str, repeat: int, asynchronous: bool, under_load: bool, engine_name: str | None,
                      force: bool, fmt: str) -> None:
    """``drill compare NAME --failsafe``: failsafe_mode off and on, interleaved, tuned preset; restored after."""
    confirm_or_force(f"Run '{name}' {2 * repeat} times (failsafe_mode off and on)? It breaks the lab cluster.",
                     force)
    one = _runner(engine_name, under_load)
    runs: list[tuple[DrillRun, str]] = []
    for i in range(repeat):  # interleaved, so both settings see the same machine load
        for failsafe in (False, True):
            progress(f"repetition {i + 1} of {repeat}, failsafe_mode {'on' if failsafe else 'off'}")
            runs.append(one(name, "fast", asynchronous, failsafe))
    by = {on: [r for r, _ in runs if r.failsafe_mode is on] for on in (False, True)}

    def failovers(group: Sequence[DrillRun]) -> int:
        return sum(1 for r in group if r.analysis.failed_over)

    result = {
        "drill": name,
        "repeat": repeat,
        "failsafe_off_write_outage_s": _median_outage(by[False]),
        "failsafe_on_write_outage_s": _median_outage(by[True]),
        "failsafe_off_failovers": failovers(by[False]),
        "failsafe_on_failovers": failovers(by[True]),
        "runs": [{**_summary(r, folder), "failsafe": "on" if r.failsafe_mode else "off"} for r, folder in runs],
    }

    def pretty(res: dict[str, Any]) -> str:
        fmt_s = lambda v: "-" if v is None else f"{v:.2f} s"  # noqa: E731 - tiny local formatter
        return "\n".join([
            table(res["runs"], ["failsafe", *SUMMARY_COLUMNS]), "",
            f"write outage (median of {repeat}): failsafe_mode off {fmt_s(res['failsafe_off_write_outage_s'])}, "
            f"on {fmt_s(res['failsafe_on_write_outage_s'])}",
            f"failovers: off {res['failsafe_off_failovers']} of {repeat}, on {res['failsafe_on_failovers']} of "
            f"{repeat}",
        ])

    emit(result, fmt, pretty)
    missed = [r for r, _ in runs if not r.passed]
    if missed:
        raise CheckFailed(f"'{name}' missed a target in {len(missed)} run(s); see the reports")


#: The storm's default size (issue 13: 1,000 clients against max_connections 200) and its bounds.
STORM_CLIENTS = 1000
STORM_LIMITS = (1, 5000)
STORM_COLUMNS = ["target", "attempted", "connection_errors", "query_errors", "connect_ms_p95", "txn_ms_p95",
                 "peak_open_clients", "pg_backends_max"]

#: The primary drills every way in is measured with (issue 12: switchover and primary node loss).
ROUTING_DRILLS = ("switchover", "primary-node-loss")


@click.command("routing")
@click.option(
    "--seconds", type=click.IntRange(5, 600), default=20, show_default=True, help="Length of each pgbench run."
)
@click.option("--clients", type=click.IntRange(1, 64), default=8, show_default=True, help="pgbench clients.")
@click.option("--rounds", type=click.IntRange(1, 5), default=2, show_default=True, help="pgbench rounds per path.")
@click.option("--drill-runs", type=click.IntRange(0, 10), default=3, show_default=True,
              help="Runs of each primary drill (switchover, primary-node-loss) per way in; 0: pgbench only.")
@click.option("--way", "only", multiple=True, metavar="WAY",
              help="Measure only this way in (repeatable; default: every provisioned one, see --via).")
@click.option("--haproxy-ab/--no-haproxy-ab", default=True, show_default=True,
              help="Also pgbench temporary copies of the VIP holder's HAProxy, one unchanged (the control) and "
              "one per setting changed (nbthread 1, option splice-auto), in the same rotation.")
@click.option("--storm/--no-storm", default=None,
              help="Connection storm through PgBouncer (VIP:6432): --storm-clients connections at once, each "
              "running 3 short transactions [default: on when the pgbouncer way in is measured].")
@click.option("--storm-clients", default=str(STORM_CLIENTS), show_default=True, metavar="N",
              help=f"Client connections of the storm ({STORM_LIMITS[0]}..{STORM_LIMITS[1]}).")
@click.option("--storm-control/--no-storm-control", default=True, show_default=True,
              help="Also the same storm straight through HAProxy 5000, capped at 300 connections: the control "
              "that shows max_connections refusing logins.")
@drill_preset_option
@engine_option
@force_option
@format_option
def bench_routing_cmd(seconds: int, clients: int, rounds: int, drill_runs: int, only: tuple[str, ...],
                      haproxy_ab: bool, storm: bool | None, storm_clients: str, storm_control: bool, preset: str,
                      engine_name: str | None, force: bool, fmt: str) -> None:
    """Every provisioned way in (see --via) side by side: pgbench TPS as a ratio to direct connections, the
    switchover and node-loss write outage, and a connection storm through PgBouncer; a Markdown + JSON +
    PNG report."""
    from careflow_ha.routing.bench import (
        BenchPath,
        bench_paths,
        run_pgbench_paths,
        summarise_outages,
        summarise_pgbench,
    )
    from careflow_ha.routing.report import write_report as write_routing_report

    settings = get_settings()
    ways = settings.routing.available()
    for way in only:  # an unknown or unprovisioned way: one line naming the available ones (exit 2)
        try:
            settings.with_via(way)
        except UsageError as err:
            raise UsageError(str(err).replace("--via", "--way", 1)) from None
    ways = tuple(w for w in ways if not only or w in only)
    storm, n_storm = check_storm_options(storm, storm_clients, ways)
    if drill_runs:
        confirm_or_force(
            f"Run {len(ROUTING_DRILLS) * drill_runs * len(ways)} drills ({', '.join(ROUTING_DRILLS)} through "
            f"{', '.join(ways)})? They break the lab cluster on purpose.", force)
    started = time.time()
    snap = PatroniApi(settings).cluster()
    leaders = [m.name for m in snap.members if m.is_leader]
    if len(leaders) != 1:
        raise NotReady("no single leader to benchmark against; run `careflow-ha status` and heal the cluster first")
    paths = bench_paths(settings, leaders[0], ways)
    with _haproxy_variants(settings, engine_name, haproxy_ab) as variants:
        paths = (*paths, *(BenchPath(name, where) for name, where in variants.items()))
        results = run_pgbench_paths(settings, paths, progress, seconds=seconds, clients=clients, rounds=rounds)
    storms = _storms(settings, paths[0], n_storm, storm_control) if storm else []
    outages: dict[str, dict[str, list[dict[str, Any]]]] = {}
    # One runner per way, built once: each applies the preset's HAProxy timing only when it changes.
    runners = {way: _runner(engine_name, False, way) for way in ways} if drill_runs else {}
    for i in range(drill_runs):  # interleaved by run, so every way in sees the same machine load
        for way, one in runners.items():
            for name in ROUTING_DRILLS:
                progress(f"routing: run {i + 1} of {drill_runs}, {name} via {way}")
                run, _folder = one(name, preset, False)
                outages.setdefault(way, {}).setdefault(name, []).append(_summary(run))
    pgbench_rows, outage_rows = summarise_pgbench(results), summarise_outages(outages)
    meta = {
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)), "leader": leaders[0],
        "clients": clients, "seconds": seconds, "rounds": rounds, "preset": preset, "drill_runs": drill_runs,
        "paths": {p.name: p.where for p in paths},
    }
    folder = settings.reports_dir / "bench" / "routing" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    md = write_routing_report(folder, meta, [dataclasses.asdict(r) for r in results], pgbench_rows, outage_rows,
                              storms)
    progress(f"report: {md.relative_to(settings.project_dir)}")
    emit({"pgbench": pgbench_rows, "outages": outage_rows, "storms": storms,
          "report": str(md.relative_to(settings.project_dir))}, fmt,
         lambda d: "\n\n".join([table(d["pgbench"], list(d["pgbench"][0]) if d["pgbench"] else ["mode"]),
                                 table(d["outages"], list(d["outages"][0])) if d["outages"] else "(no drills)",
                                 table(d["storms"], STORM_COLUMNS) if d["storms"] else "(no storm)",
                                 f"report: {d['report']}"]))


def check_storm_options(storm: bool | None, clients: str, ways: Sequence[str]) -> tuple[bool, int]:
    """(run the storm?, its clients): on by default when the pgbouncer way in is measured. Bad values: one
    line and exit 2 (click's own range check prints a usage block instead)."""
    low, high = STORM_LIMITS
    if not clients.strip().isdigit() or not low <= int(clients) <= high:
        raise UsageError(f"--storm-clients {clients!r} is not a whole number in {low}..{high}; "
                         f"use e.g. --storm-clients {STORM_CLIENTS}")
    if storm and "pgbouncer" not in ways:
        raise UsageError("--storm needs the pgbouncer way in; provision it (or add --way pgbouncer), or use --no-storm")
    return ("pgbouncer" in ways if storm is None else storm), int(clients)


def _storms(settings: Settings, direct: Any, clients: int, control: bool) -> list[dict[str, Any]]:
    """The storm through PgBouncer, then (``control``) through HAProxy 5000 capped at CONTROL_CAP; PostgreSQL's
    backends counted by the admin role straight on the primary (``direct``)."""
    from careflow_ha.dsn import pooler_safe
    from careflow_ha.routing.bench import admin_conninfo
    from careflow_ha.routing.storm import CONTROL_CAP, StormConfig, run_storm, summarise_storm

    monitor = admin_conninfo(settings, direct, "postgres")
    targets = [("pgbouncer", clients)]
    if control:
        targets.append(("haproxy-vip", min(clients, CONTROL_CAP)))
    rows = []
    for target, n in targets:
        dsn = settings.with_via(target).dsn("rw", "app")
        progress(f"storm: {n} client connections at once via {target}")
        result = run_storm(target, dsn, pooler_safe(dsn, {"autocommit": True}), StormConfig(clients=n), monitor)
        rows.append(summarise_storm(result))
        time.sleep(5)  # let the refused and closed connections drain before the next storm or the drills
    return rows


def _haproxy_variants(settings: Settings, engine_name: str | None, wanted: bool):
    """The HAProxy A/B listeners on the client VIP's holder (careflow_ha.routing.haproxy_ab), or none."""
    import contextlib

    from careflow_ha.lab.vip import wait_single_holder
    from careflow_ha.routing.haproxy_ab import variant_listeners
    from careflow_ha.settings import LB_NODES

    if not wanted or settings.vip is None:
        return contextlib.nullcontext({})
    engine = detect_engine(engine_name)
    holder = wait_single_holder(engine, LB_NODES, settings.vip.address, 15, progress)
    return variant_listeners(engine, holder, settings.vip.address, progress)


def register(cli: click.Group) -> None:
    """Add the ``drill`` command group and ``bench routing`` to the ``careflow-ha`` CLI."""
    cli.add_command(drill_group)
    cli.commands["bench"].add_command(bench_routing_cmd)  # type: ignore[attr-defined]
