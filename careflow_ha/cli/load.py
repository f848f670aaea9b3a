"""``careflow-ha load``: EMR traffic through HAProxy with Locust, and a report a DBA can show.

Progress goes to stderr while Locust runs; the per-operation table (or JSON)
goes to stdout; the run folder is ``reports/load/<UTC timestamp>/``. Reads
answered by the primary on the read-only port exit 5 after the report is written.
After Locust ends, the ``--plans`` slowest operations are EXPLAINed and given
index advice (load/plans.py); that never changes the exit code.
"""

from __future__ import annotations

from typing import Any

import click

from careflow_ha.cli.common import emit, format_option, get_settings, progress, table, via_option
from careflow_ha.errors import CheckFailed, UsageError
from careflow_ha.load.plans import plan_lines
from careflow_ha.load.profiles import PROFILES
from careflow_ha.load.runner import LoadConfig, parse_duration, run_load


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
    lines += plan_lines(data["plans"])
    lines.append(f"report: {data['report']}")
    return "\n".join(lines)


@click.command("load")
@click.option("--users", "-u", type=int, default=20, show_default=True, help="Peak number of simulated EMR users.")
@click.option("--spawn-rate", "-r", type=float, default=5.0, show_default=True, help="Users started per second.")
@click.option("--duration", "-t", default="60s", show_default=True, callback=_duration,
              help="How long to run: seconds or 90s, 5m, 1h30m.")
@click.option("--profile", default="steady", show_default=True,  # checked by LoadConfig: a one-line error
              help="Shape and user mix: " + "; ".join(f"{p.name}: {p.description}" for p in PROFILES.values()))
@click.option("--processes", type=int, default=1, show_default=True,
              help="Locust processes (one per core is the most that helps; this box has 2 cores).")
@click.option("--think-scale", type=float, default=1.0, show_default=True,
              help="Multiply every think time (0 = no think time: a stress test, not a clinic).")
@click.option("--dsn-rw", envvar="CAREFLOW_LOAD_DSN_RW", default=None,
              help="libpq URI for the writers (default: the lab through HAProxy 5000). For a local server.")
@click.option("--dsn-ro", envvar="CAREFLOW_LOAD_DSN_RO", default=None,
              help="libpq URI for the readers (default: the lab through HAProxy 5001; with only --dsn-rw, the same).")
@click.option("--plans", type=int, default=3, show_default=True,
              help="Afterwards, EXPLAIN this many of the slowest operations and try index candidates "
                   "(HypoPG); 0 = none.")
@via_option
@format_option
def load_cmd(users: int, spawn_rate: float, duration: float, profile: str, processes: int, think_scale: float,
             dsn_rw: str | None, dsn_ro: str | None, plans: int, via: str | None, fmt: str) -> None:
    """Drive EMR traffic (reception, lab, vets, analysts) through HAProxy and write a load report."""
    if via and dsn_rw:
        raise UsageError("--via picks the lab's way in and --dsn-rw names a server; give only one of them")
    if dsn_ro and not dsn_rw:
        raise UsageError("--dsn-ro needs --dsn-rw too (the writers need a target); add --dsn-rw")
    for flag, dsn in (("--dsn-rw", dsn_rw), ("--dsn-ro", dsn_ro)):
        if dsn and not dsn.startswith(("postgresql://", "postgres://")) and "=" not in dsn:
            raise UsageError(f"{flag} is not a libpq URI; use postgresql://user:pass@host:port/db")
    settings = get_settings().with_via(via)
    if dsn_rw:
        cfg = LoadConfig(users=users, spawn_rate=spawn_rate, duration_s=duration, dsn_rw=dsn_rw,
                         dsn_ro=dsn_ro or dsn_rw, reports_dir=settings.reports_dir, profile=profile,
                         processes=processes, think_scale=think_scale, plans=plans)
    else:
        cfg = LoadConfig(users=users, spawn_rate=spawn_rate, duration_s=duration, dsn_rw=settings.dsn("rw", "app"),
                         dsn_ro=settings.dsn("ro", "ro"), reports_dir=settings.reports_dir, profile=profile,
                         processes=processes, think_scale=think_scale, cluster=settings, plans=plans)
    result = run_load(cfg.validated(), progress)
    folder = str(result.folder.relative_to(settings.project_dir)) if result.folder.is_relative_to(
        settings.project_dir) else str(result.folder)
    data = {"summary": result.report["summary"], "routing": result.report["routing"],
            "role_changes": result.report["role_changes"], "plans": result.report["plans"],
            "report": f"{folder}/report.md"}
    emit(data, fmt, _pretty)
    routing = result.report["routing"]
    if routing["checked"] and routing["violations"]:
        raise CheckFailed(f"{routing['violations']} read(s) on the read-only port were answered by a primary "
                          f"outside a role change; see {folder}/report.md")




@click.command("load")
@click.option("--steps", default="16,32,64,96,128", show_default=True,
              help="Comma-separated user counts, one step each (each user holds one connection).")
@click.option("--step-duration", default="20s", show_default=True, callback=_duration, help="Length of each step.")
@click.option("--p95-ms", type=float, default=100.0, show_default=True, help="Latency target a step must hold.")
@click.option("--think-scale", type=float, default=0.1, show_default=True,
              help="Multiply the clinic think times (0 = closed loop).")
@click.option("--processes", type=int, default=1, show_default=True, help="Locust processes.")
@format_option
def bench_load_cmd(steps: str, step_duration: float, p95_ms: float, think_scale: float, processes: int,
                   fmt: str) -> None:
    """Highest EMR request rate the cluster holds with p95 under the target; pgbench through 5000 as reference."""
    from careflow_ha.load.bench import bench_load

    try:
        counts = [int(x) for x in steps.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--steps {steps!r} is not a list of user counts; use e.g. 4,8,16,32") from None
    if not counts or any(not 1 <= c <= 5000 for c in counts):
        raise UsageError(f"--steps {steps!r}: give user counts from 1 to 5000, e.g. 4,8,16,32")
    result = bench_load(get_settings(), counts, step_duration, p95_ms, progress, think_scale, processes)

    def pretty(r: dict[str, Any]) -> str:
        lines = [table(r["steps"], ["users", "ok_rps", "p50_ms", "p95_ms", "p99_ms", "failures", "role_changes",
                                    "locust_cpu_cores", "holds", "report"]),
                 f"(think time x{r['think_scale']:g}, {r['processes']} Locust process(es), {r['cpus']} CPUs)"]
        best, ref = r["best"], r["pgbench"]
        lines.append(f"highest rate holding p95 < {r['target_p95_ms']:g} ms: "
                     + (f"{best['ok_rps']} req/s at {best['users']} users" if best else "none of the steps"))
        lines.append(f"pgbench (one pet's history via 5000, {ref['clients']} clients): {ref['tps']:.1f} tps, "
                     f"avg {ref['latency_avg_ms']} ms")
        if r["ratio_emr_to_pgbench"] is not None:
            lines.append(f"ratio EMR mix / pgbench reference: {r['ratio_emr_to_pgbench']:.2f}")
        return "\n".join(lines)

    emit(result, fmt, pretty)


def register(cli: click.Group) -> None:
    cli.add_command(load_cmd)
    bench = cli.commands.get("bench")
    if isinstance(bench, click.Group):
        bench.add_command(bench_load_cmd)
