"""Commands for archiving and storage: ``archive run|restore|query|list``, ``storage report``, ``bench detach``."""

from __future__ import annotations

from pathlib import Path

import click

from careflow_ha.cli.common import confirm_or_force, dsn_option, emit, force_option, format_option, resolve_dsn, table
from careflow_ha.errors import UsageError

archive_dir_option = click.option(
    "--archive-dir", type=click.Path(file_okay=False, path_type=Path), envvar="CAREFLOW_ARCHIVE_DIR", default=None,
    help="Where Parquet files and manifests go. Default: archive/ in the repository (env CAREFLOW_ARCHIVE_DIR).")


def _echo_target(dsn: str, store_desc: str | None = None) -> None:
    from careflow_ha.dsn import redact

    click.echo(f"target: {redact(dsn)}" + (f"  archive: {store_desc}" if store_desc else ""), err=True)


def _log(message: str) -> None:
    click.echo(message, err=True)


@click.group("archive")
def archive_group() -> None:
    """Move old lab_results months to verified Parquet, restore them, query them in place."""


@archive_group.command("run")
@click.option("--older-than", "older_than", default=None, metavar="DURATION",
              help="Archive every whole month that ended this long ago, e.g. 24months or 2years.")
@click.option("--month", "months", multiple=True, metavar="YYYY-MM",
              help="Archive this month (repeatable); instead of or next to --older-than.")
@click.option("--dry-run", is_flag=True, help="Show what would be archived; change nothing.")
@click.option("--keep-detached", is_flag=True, envvar="CAREFLOW_ARCHIVE_KEEP_DETACHED",
              help="Detach archived months but keep their tables (env CAREFLOW_ARCHIVE_KEEP_DETACHED=1).")
@archive_dir_option
@force_option
@dsn_option
@format_option
def run_cmd(older_than: str | None, months: tuple[str, ...], dry_run: bool, keep_detached: bool,
            archive_dir: Path | None, force: bool, dsn: str | None, fmt: str) -> None:
    """Export, verify, then detach and drop old months (crash-safe: a rerun finishes an interrupted run)."""
    from careflow_ha.archive.archiver import Archiver
    from careflow_ha.archive.duration import month_key, parse_month, parse_older_than
    from careflow_ha.archive.store import open_store

    if older_than is None and not months:
        raise UsageError("archive run needs --older-than DURATION (e.g. 24months) or --month YYYY-MM")
    retention = parse_older_than(older_than) if older_than is not None else None
    wanted = [month_key(parse_month(m, what="--month")) for m in months]
    target, store = resolve_dsn(dsn), open_store(archive_dir)
    _echo_target(target, store.describe())
    archiver = Archiver(target, store, keep_detached=keep_detached, progress=True, log=_log)
    plan = archiver.plan(retention, wanted)
    if dry_run or not plan:
        described = archiver.describe_plan(plan)
        if not plan:
            _log("nothing to archive: no month is past retention and no earlier run is unfinished")
        emit(described, fmt, lambda rows: table(rows, ["month", "partition", "in_database", "rows", "heap_bytes",
                                                        "manifest_state", "would"]))
        return
    verb = "detach (and keep)" if keep_detached else "detach and DROP"
    confirm_or_force(f"Archive {len(plan)} month(s) ({', '.join(plan)}) and {verb} them once verified?", force)
    results = archiver.run(plan)
    emit([r.as_dict() for r in results], fmt,
         lambda rows: table(rows, ["month", "action", "state", "rows", "file_bytes", "heap_bytes", "heap/parquet",
                                   "seconds"]))


@archive_group.command("restore")
@click.argument("month", metavar="YYYY-MM")
@archive_dir_option
@dsn_option
@format_option
def restore_cmd(month: str, archive_dir: Path | None, dsn: str | None, fmt: str) -> None:
    """Rebuild an archived month from Parquet, attach it instantly, verify its checksum."""
    from careflow_ha.archive.archiver import Archiver
    from careflow_ha.archive.duration import month_key, parse_month
    from careflow_ha.archive.store import open_store

    key = month_key(parse_month(month))
    target, store = resolve_dsn(dsn), open_store(archive_dir)
    _echo_target(target, store.describe())
    archiver = Archiver(target, store, progress=True, log=_log)
    result = archiver.restore(key)
    row = result.as_dict()
    row["attach_scan_skipped"] = archiver.last_attach_skipped_scan
    if result.rows and result.seconds:
        row["s_per_million_rows"] = round(result.seconds / result.rows * 1_000_000, 1)
    emit(row, fmt, lambda d: table([d], list(d)))


@archive_group.command("query")
@click.argument("sql_text", metavar='"SQL"')
@click.option("--month", "months", multiple=True, metavar="YYYY-MM", help="Only these archived months.")
@archive_dir_option
@format_option
def query_cmd(sql_text: str, months: tuple[str, ...], archive_dir: Path | None, fmt: str) -> None:
    """Query archived months with DuckDB (view lab_results over the Parquet files); nothing is restored."""
    from careflow_ha.archive.duration import month_key, parse_month
    from careflow_ha.archive.query import run_query
    from careflow_ha.archive.store import open_store

    wanted = [month_key(parse_month(m, what="--month")) for m in months] or None
    columns, rows, read = run_query(open_store(archive_dir), sql_text, months=wanted)
    _log(f"read {len(read)} archived month(s): {', '.join(read)}")
    records = [dict(zip(columns, r, strict=True)) for r in rows]
    emit(records, fmt, lambda recs: table(recs, columns))


@archive_group.command("list")
@click.option("--offline", is_flag=True, help="Do not ask the database where each month is.")
@archive_dir_option
@dsn_option
@format_option
def list_cmd(offline: bool, archive_dir: Path | None, dsn: str | None, fmt: str) -> None:
    """Archived months: state, rows, file size vs heap, and whether the month is in the database."""
    from careflow_ha.archive.archiver import list_archive
    from careflow_ha.archive.store import open_store

    store = open_store(archive_dir)
    target = None if offline else resolve_dsn(dsn)
    rows = list_archive(target, store)
    if not rows:
        _log(f"no archived months in {store.describe()}")
    emit(rows, fmt, lambda rs: table(rs, ["month", "state", "in_database", "rows", "clinics", "file_bytes",
                                          "heap_bytes", "heap/parquet", "error"]))


@click.group("storage")
def storage_group() -> None:
    """Storage figures and recommendations."""


@storage_group.command("report")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Parent directory of the report. Default: reports/storage/ in the repository.")
@click.option("--sample-months", type=click.IntRange(1, 24), default=3, show_default=True,
              help="Oldest months exported to a temporary Parquet file for the Parquet vs heap figure.")
@archive_dir_option
@dsn_option
@format_option
def storage_report_cmd(out_dir: Path | None, sample_months: int, archive_dir: Path | None, dsn: str | None,
                       fmt: str) -> None:
    """Sizes per table and partition, B-tree vs BRIN, TOAST lz4 vs pglz, Parquet vs heap: Markdown+PNG+JSON."""
    from careflow_ha.archive.storage import build_report, write_report
    from careflow_ha.archive.store import open_store

    target = resolve_dsn(dsn)
    _echo_target(target)
    report = build_report(target, open_store(archive_dir), sample_months=sample_months, log=_log)
    folder = write_report(report, out_dir)
    _log(f"report: {folder}")
    emit({"report_dir": str(folder), "recommendations": report["recommendations"]}, fmt,
         lambda d: f"report: {d['report_dir']}\n" + "\n".join(f"- {r}" for r in d["recommendations"]))


def _bench_detach_cmd() -> click.Command:
    @click.command("detach")
    @click.option("--local", "local", is_flag=True,
                  help="Run on a throwaway local PostgreSQL 15 (default when --dsn is not given).")
    @click.option("--seconds", type=click.FloatRange(1, 120), default=6.0, show_default=True,
                  help="Length of each measured window (baseline and detach).")
    @click.option("--rounds", type=click.IntRange(1, 10), default=3, show_default=True,
                  help="Baseline/detach window pairs, interleaved.")
    @click.option("--writers", type=click.IntRange(1, 16), default=4, show_default=True, help="Writer connections.")
    @click.option("--rate", type=click.IntRange(10, 5000), default=400, show_default=True,
                  help="Total inserts per second across the writers (bounded load).")
    @dsn_option
    @format_option
    def bench_detach(local: bool, seconds: float, rounds: int, writers: int, rate: int, dsn: str | None,
                     fmt: str) -> None:
        """Worst write stall during DETACH CONCURRENTLY + instant re-attach, next to a baseline, same run."""
        from careflow_ha.archive.bench import BenchConfig, render, run_bench

        if dsn and local:
            raise UsageError("pass either --local or --dsn, not both")
        cfg = BenchConfig(seconds=seconds, rounds=rounds, writers=writers, rate=rate)
        result = run_bench(cfg, dsn=resolve_dsn(dsn) if dsn else None, log=_log)
        emit(result, fmt, render)

    return bench_detach


def register(cli: click.Group) -> None:
    """Add ``archive``, ``storage`` and ``bench detach`` to the CLI."""
    cli.add_command(archive_group)
    cli.add_command(storage_group)
    bench = cli.commands["bench"]
    assert isinstance(bench, click.Group)
    bench.add_command(_bench_detach_cmd())
