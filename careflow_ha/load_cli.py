"""``careflow-ha load``: EMR traffic through HAProxy with Locust, and a report a DBA can show.

Progress goes to stderr while Locust runs; the per-operation table (or JSON)
goes to stdout; the run folder is ``reports/load/<UTC timestamp>/``. Reads
answered by the primary on the read-only port exit 5 after the report is written.
"""

from __future__ import annotations

import time
from typing import Any

import click

from careflow_ha.cliutil import emit, format_option, get_settings, table
from careflow_ha.errors import CheckFailed, UsageError
from careflow_ha.load.profiles import PROFILES
from careflow_ha.load.runner import LoadConfig, parse_duration, run_load


def progress(line: str) -> None:
    click.echo(f"[{time.strftime('%H:%M:%S')}] {line}", err=True)


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    return parse_duration(value)


OP_COLUMNS = ["op", "endpoint", "requests", "failures", "rps", "p50_ms", "p95_ms", "p99_ms", "max_ms"]


def _pretty(data: dict[str, Any]) -> str:
    s = data["summary"]
    lines = [table(s["operations"], OP_COLUMNS),
             f"total {s['requests']} requests, {s['failures']} failed, {s['ok_rps']}/s succeeded, "
             f"p95 {s['p95_ms']} ms; longest outage rw {s['outage_s']['rw']} s, ro {s['outage_s']['ro']} s"]
    reads = ", ".join(f"{n['node']} ({n['role']}) {n['reads']}" for n in s["reads_by_node"]) or "none"
    lines.append(f"reads by node: {reads}")
    lines.append(f"report: {data['report']}")
    return "\n".join(lines)


@click.command("load")
@click.option("--users", "-u", type=int, default=20, show_default=True, help="Peak number of simulated EMR users.")
@click.option("--spawn-rate", "-r", type=float, default=5.0, show_default=True, help="Users started per second.")
@click.option("--duration", "-t", default="60s", show_default=True, callback=_duration,
              help="How long to run: seconds or 90s, 5m, 1h30m.")
@click.option("--profile", type=click.Choice(list(PROFILES)), default="steady", show_default=True,
              help="Shape and user mix: " + "; ".join(f"{p.name}: {p.description}" for p in PROFILES.values()))
@click.option("--processes", type=int, default=1, show_default=True,
              help="Locust processes (one per core is the most that helps; this box has 2 cores).")
@click.option("--think-scale", type=float, default=1.0, show_default=True,
              help="Multiply every think time (0 = no think time: a stress test, not a clinic).")
@click.option("--dsn-rw", envvar="CAREFLOW_LOAD_DSN_RW", default=None,
              help="libpq URI for the writers (default: the lab through HAProxy 5000). For a local server.")
@click.option("--dsn-ro", envvar="CAREFLOW_LOAD_DSN_RO", default=None,
              help="libpq URI for the readers (default: the lab through HAProxy 5001; with only --dsn-rw, the same).")
@format_option
def load_cmd(users: int, spawn_rate: float, duration: float, profile: str, processes: int, think_scale: float,
             dsn_rw: str | None, dsn_ro: str | None, fmt: str) -> None:
    """Drive EMR traffic (reception, lab, vets, analysts) through HAProxy and write a load report."""
    if dsn_ro and not dsn_rw:
        raise UsageError("--dsn-ro needs --dsn-rw too (the writers need a target); add --dsn-rw")
    for flag, dsn in (("--dsn-rw", dsn_rw), ("--dsn-ro", dsn_ro)):
        if dsn and not dsn.startswith(("postgresql://", "postgres://")) and "=" not in dsn:
            raise UsageError(f"{flag} is not a libpq URI; use postgresql://user:pass@host:port/db")
    settings = get_settings()
    if dsn_rw:
        cfg = LoadConfig(users=users, spawn_rate=spawn_rate, duration_s=duration, dsn_rw=dsn_rw,
                         dsn_ro=dsn_ro or dsn_rw, reports_dir=settings.reports_dir, profile=profile,
                         processes=processes, think_scale=think_scale)
    else:
        cfg = LoadConfig(users=users, spawn_rate=spawn_rate, duration_s=duration, dsn_rw=settings.dsn("rw", "app"),
                         dsn_ro=settings.dsn("ro", "ro"), reports_dir=settings.reports_dir, profile=profile,
                         processes=processes, think_scale=think_scale, cluster=settings)
    result = run_load(cfg.validated(), progress)
    folder = str(result.folder.relative_to(settings.project_dir)) if result.folder.is_relative_to(
        settings.project_dir) else str(result.folder)
    data = {"summary": result.report["summary"], "routing": result.report["routing"],
            "role_changes": result.report["role_changes"], "report": f"{folder}/report.md"}
    emit(data, fmt, _pretty)
    routing = result.report["routing"]
    if routing["checked"] and routing["violations"]:
        raise CheckFailed(f"{routing['violations']} read(s) on the read-only port were answered by a primary "
                          f"outside a role change; see {folder}/report.md")


def register(cli: click.Group) -> None:
    cli.add_command(load_cmd)
