"""Commands for observability: ``queries top|report`` and ``capacity``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from careflow_ha.cli.common import dsn_option, emit, format_option, get_settings, resolve_dsn, table
from careflow_ha.errors import UsageError


def _log(message: str) -> None:
    click.echo(message, err=True)


def _echo_target(dsn: str) -> None:
    from careflow_ha.dsn import redact

    click.echo(f"target: {redact(dsn)}", err=True)


@click.group("queries")
def queries_group() -> None:
    """Slow queries and their plans: pg_stat_statements, pgbadger over the server logs, EXPLAIN."""


def _render_top(data: dict[str, Any]) -> str:
    from careflow_ha.monitoring.queries import one_line

    rows = [{"#": i, "calls": s["calls"], "total ms": s["total_ms"], "mean ms": s["mean_ms"], "rows": s["rows"],
             "hit": s["shared_hit"], "read": s["shared_read"],
             "hit ratio": "-" if s["hit_ratio"] is None else f"{s['hit_ratio']:.1%}",
             "level": "top" if s["toplevel"] else "nested", "statement": one_line(s["query"], 70)}
            for i, s in enumerate(data["statements"], 1)]
    out = [table(rows, ["#", "calls", "total ms", "mean ms", "rows", "hit", "read", "hit ratio", "level",
                        "statement"])]
    for i, s in enumerate(data["statements"], 1):
        if "plan" in s:
            out.append(f"#{i} plan: {s['plan_line']}")
    out += [f"note: {n}" for n in data["notes"]]
    return "\n".join(out)


@queries_group.command("top")
@click.option("--by", type=click.Choice(["total", "mean", "calls"]), default="total", show_default=True,
              help="Order by total execution time, mean time per call, or number of calls.")
@click.option("--limit", type=click.IntRange(1, 500), default=10, show_default=True, help="How many statements.")
@click.option("--explain", "with_plans", is_flag=True,
              help="Add each listed read-only statement's plan: EXPLAIN ANALYZE (rolled back) when it has no "
                   "parameters, else its generic plan (not executed).")
@dsn_option
@format_option
def top_cmd(by: str, limit: int, with_plans: bool, dsn: str | None, fmt: str) -> None:
    """Top statements from pg_stat_statements: calls, total/mean ms, rows, shared blocks hit/read."""
    from careflow_ha.data.db import connect
    from careflow_ha.data.explain import explain
    from careflow_ha.monitoring.queries import privileged_text_missing, top_statements

    target = resolve_dsn(dsn)
    _echo_target(target)
    with connect(target, autocommit=True) as conn:
        statements = top_statements(conn, by=by, limit=limit)  # type: ignore[arg-type]
        rows = [s.to_dict() for s in statements]
        if with_plans:
            for row, stmt in zip(rows, statements, strict=True):
                plan = explain(conn, stmt.query)
                row["plan"], row["plan_line"] = plan.to_dict(), plan.one_line()
    notes = []
    if privileged_text_missing(statements):
        notes.append("some statement texts are hidden from this role: GRANT pg_read_all_stats TO it, or use a "
                     "--dsn of careflow_admin (pg_monitor)")
    if not statements:
        notes.append("no statements recorded yet in this database (or pg_stat_statements was just reset)")
    emit({"by": by, "statements": rows, "notes": notes}, fmt, _render_top)


@queries_group.command("report")
@click.option("--log", "logs", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A PostgreSQL log file written with the cluster's log_line_prefix (repeatable). Default: "
                   "every database node's logs, fetched over the lab's SSH.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Parent directory of the report. Default: reports/queries/ in the repository.")
@click.option("--limit", type=click.IntRange(1, 200), default=10, show_default=True,
              help="Statements per table in the Markdown summary.")
@format_option
def report_cmd(logs: tuple[Path, ...], out_dir: Path | None, limit: int, fmt: str) -> None:
    """pgbadger over PostgreSQL logs: its HTML plus a Markdown and JSON summary of the slowest statements."""
    from careflow_ha.monitoring.pgbadger import FileLogs, LogSource, NodeLogs, write_report

    source: LogSource
    if logs:
        source = FileLogs(tuple(logs))
    else:
        from careflow_ha.settings import PG_NODES, inventory_vars

        settings = get_settings()
        port = int(inventory_vars(settings.lab_inventory)["careflow_pg_port"])
        source = NodeLogs(settings, PG_NODES, pg_port=port, log=_log)
    folder, report = write_report(source, out_dir, limit=limit, log=_log)
    _log(f"report: {folder}")
    slowest = report["summary"]["slowest"]
    emit({"report_dir": str(folder), "queries_logged": report["summary"]["queries_logged"], "slowest": slowest},
         fmt, lambda d: f"report: {d['report_dir']} ({d['queries_logged']} statements logged)\n" + "\n".join(
             f"- {e['duration_ms']} ms: {' '.join(e['query'].split())[:100]}" for e in d["slowest"][:5]))


@click.command("capacity")
@click.option("--years", type=float, default=3.0, show_default=True, help="How far to project.")
@click.option("--rows-per-day", type=float, default=None,
              help="lab_results rows added per day (0: no growth). Default: the rows of the last 30 days.")
@click.option("--growth-from-load", "load_report", type=click.Path(path_type=Path), default=None,
              help="A load run's report.json (or its folder): its lab-panel rate, sustained all day.")
@click.option("--disk-gb", type=float, default=None, help="Disk size of one database node, in GB (10^9 bytes).")
@click.option("--retain-months", type=int, default=24, show_default=True,
              help="Months kept in the hot database before archiving (as `archive run --older-than`).")
@click.option("--archive-dir", type=click.Path(file_okay=False, path_type=Path), envvar="CAREFLOW_ARCHIVE_DIR",
              default=None, help="Archive manifests for the measured Parquet ratio. Default: archive/.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Parent directory of the report. Default: reports/capacity/ in the repository.")
@dsn_option
@format_option
def capacity_cmd(years: float, rows_per_day: float | None, load_report: Path | None, disk_gb: float | None,
                 retain_months: int, archive_dir: Path | None, out_dir: Path | None, dsn: str | None,
                 fmt: str) -> None:
    """Project hot size per node, archive, partitions, leaves and WAL month by month, from measured figures."""
    from careflow_ha.dsn import redact
    from careflow_ha.monitoring import capacity

    capacity.validate(years, rows_per_day, disk_gb, retain_months)  # bad input fails before connecting
    if rows_per_day is not None and load_report is not None:
        raise UsageError("give either --rows-per-day or --growth-from-load, not both")
    if load_report is not None:
        capacity.read_load_report(load_report)
    target = resolve_dsn(dsn)
    _echo_target(target)
    from careflow_ha.settings import inventory_vars

    values = inventory_vars(get_settings().lab_inventory)
    retention = (int(values["careflow_backup_retention_full"]), int(values["careflow_backup_retention_diff"]))
    fig = capacity.measure(target, rows_per_day=rows_per_day, load_report=load_report,
                           archive_dir=archive_dir or capacity.DEFAULT_ARCHIVE_DIR, backup_retention=retention,
                           log=_log)
    months = capacity.project(fig, years, retain_months=retain_months, disk_gb=disk_gb)
    report = capacity.build_report(fig, months, years=years, retain_months=retain_months, disk_gb=disk_gb,
                                   target=redact(target))
    folder = capacity.write_report(report, out_dir)
    _log(f"report: {folder}")
    last = months[-1]
    emit({"report_dir": str(folder), "verdict": capacity.verdict(report), "runs_out": report["runs_out"],
          "rows_per_day": fig.rows_per_day, "bytes_per_row": fig.bytes_per_row,
          "wal_bytes_per_1000_rows": fig.wal_bytes_per_1000_rows, "parquet_ratio": fig.parquet_ratio,
          "last_month": last.month, "node_bytes": last.node_bytes, "archive_bytes": last.archive_bytes,
          "leaves": last.leaves}, fmt,
         lambda d: (f"report: {d['report_dir']}\n{d['verdict']}\n"
                    f"measured: {d['bytes_per_row'] or 0:.1f} bytes/row, {d['wal_bytes_per_1000_rows']:.0f} WAL "
                    f"bytes per 1,000 rows, Parquet {d['parquet_ratio']:.1f}x, growth {d['rows_per_day']:.0f} "
                    f"rows/day\nby {d['last_month']}: one node {d['node_bytes'] / 1e9:.2f} GB, archive "
                    f"{d['archive_bytes'] / 1e9:.2f} GB, {d['leaves']} leaves"))


def register(cli: click.Group) -> None:
    cli.add_command(queries_group)
    cli.add_command(capacity_cmd)
