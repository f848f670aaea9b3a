"""Commands for observability: ``queries top|report`` and ``capacity``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from careflow_ha.cliutil import dsn_option, emit, format_option, resolve_dsn, table


def _log(message: str) -> None:
    click.echo(message, err=True)


def _echo_target(dsn: str) -> None:
    from careflow_ha.data.db import redact

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
    from careflow_ha.monitoring.explain import explain
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
                     "superuser --dsn")
    if not statements:
        notes.append("no statements recorded yet in this database (or pg_stat_statements was just reset)")
    emit({"by": by, "statements": rows, "notes": notes}, fmt, _render_top)


@queries_group.command("report")
@click.option("--log", "logs", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A PostgreSQL log file written with the log_line_prefix of docs/monitoring (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Parent directory of the report. Default: reports/queries/ in the repository.")
@click.option("--limit", type=click.IntRange(1, 200), default=10, show_default=True,
              help="Statements per table in the Markdown summary.")
@format_option
def report_cmd(logs: tuple[Path, ...], out_dir: Path | None, limit: int, fmt: str) -> None:
    """pgbadger over PostgreSQL logs: its HTML plus a Markdown and JSON summary of the slowest statements."""
    from careflow_ha.monitoring.pgbadger import FileLogs, write_report

    folder, report = write_report(FileLogs(tuple(logs)), out_dir, limit=limit, log=_log)
    _log(f"report: {folder}")
    slowest = report["summary"]["slowest"]
    emit({"report_dir": str(folder), "queries_logged": report["summary"]["queries_logged"], "slowest": slowest},
         fmt, lambda d: f"report: {d['report_dir']} ({d['queries_logged']} statements logged)\n" + "\n".join(
             f"- {e['duration_ms']} ms: {' '.join(e['query'].split())[:100]}" for e in d["slowest"][:5]))


def register(cli: click.Group) -> None:
    cli.add_command(queries_group)
