"""Commands for the EMR data: ``data prepare|migrate|load|import``, ``partitions status|maintain|check``,
and ``bench partitioning``."""

from __future__ import annotations

from pathlib import Path

import click

from careflow_ha.cli.common import (
    confirm_or_force,
    dsn_option,
    emit,
    force_option,
    format_option,
    get_settings,
    progress,
    resolve_dsn,
    table,
)
from careflow_ha.errors import CheckFailed, UsageError
from careflow_ha.settings import PARTITION_SCHEMES


def _echo_target(dsn: str, extra: str = "") -> None:
    from careflow_ha.dsn import redact

    click.echo(f"target: {redact(dsn)}" + (f", {extra}" if extra else ""), err=True)


@click.group("data")
def data_group() -> None:
    """EMR schema and data: prepare, migrate, load synthetic data, import lab CSV."""


@data_group.command("prepare")
@click.option("--admin-dsn", envvar="CAREFLOW_ADMIN_DSN", default=None,
              help="Superuser libpq URI of a server to prepare (env CAREFLOW_ADMIN_DSN). Without it: check that "
                   "provisioning prepared the cluster's database.")
def prepare_cmd(admin_dsn: str | None) -> None:
    """Create the careflow database, its extensions and the roles' grants.

    Extensions: pg_partman, pg_cron, pg_stat_statements, hypopg (where installed). Superuser; idempotent.
    The cluster's superuser logs in over the local socket only, so `careflow-ha provision` prepares the
    cluster's database on the primary; without --admin-dsn this only checks that it did (exit 3 if not)."""
    from careflow_ha.data.db import check_prepared, prepare_database

    if not admin_dsn:
        dsn = get_settings().dsn(endpoint="rw", role="admin")
        _echo_target(dsn, "checking (provisioning prepares the cluster's database)")
        version = check_prepared(dsn)
        click.echo(f"nothing to change: provisioning prepared the database ({version})")
        return
    _echo_target(admin_dsn)
    changed = prepare_database(admin_dsn)
    click.echo("\n".join(changed) if changed else "nothing to change: database, extensions and grants in place")


@data_group.command("migrate")
@click.option("--scheme", type=click.Choice(list(PARTITION_SCHEMES)), default=None,
              help="lab_results layout for this run. Default: careflow_partition_scheme of the inventory "
                   "(inventory/group_vars/all.yml).")
@dsn_option
def migrate_cmd(scheme: str | None, dsn: str | None) -> None:
    """Apply pending schema migrations (yoyo) as the app role, and the partition scheme; a second run does nothing.

    per-clinic -> months-only converts lab_results month by month, keeping every row (partitioning/DECISION.md,
    "Changing the scheme"); months-only -> per-clinic is refused.
    """
    from careflow_ha.data.db import migrate
    from careflow_ha.provision import LAB_INVENTORY
    from careflow_ha.settings import configured_partition_scheme

    chosen = scheme or configured_partition_scheme(LAB_INVENTORY)  # a bad inventory value stops here, exit 2
    target = resolve_dsn(dsn)
    _echo_target(target, f"partition scheme {chosen}")
    applied = migrate(target, scheme=chosen, progress=progress)
    click.echo(("applied: " + ", ".join(applied)) if applied else "schema up to date: nothing to apply")


@data_group.command("load")
@click.option("--rows", type=int, required=True, help="Number of lab results to generate (e.g. 1000000).")
@click.option("--clinics", type=int, default=8, show_default=True, help="Clinics in the network.")
@click.option("--months", type=int, default=12, show_default=True, help="Months of history, ending now.")
@click.option("--seed", type=int, default=42, show_default=True, help="Same seed and window, same data.")
@click.option("--replace", is_flag=True, help="Truncate the EMR tables first (asks unless --force).")
@force_option
@dsn_option
@format_option
def load_cmd(rows: int, clinics: int, months: int, seed: int, replace: bool, force: bool, dsn: str | None,
             fmt: str) -> None:
    """Generate a realistic EMR data set and COPY it in, with a progress bar.

    Into the lab cluster (no --dsn) it also reports each standby's replication lag during the load and the
    time until it replayed the commit (reports/data-load/).
    """
    from careflow_ha.data.generator import DataSpec
    from careflow_ha.data.loader import load

    spec = DataSpec(rows=rows, clinics=clinics, months=months, seed=seed).validated()  # bad flags fail here
    target = resolve_dsn(dsn)
    _echo_target(target)
    if replace:
        confirm_or_force("Truncate clinics, owners, pets, vets, visits and lab_results before loading?", force)
    if dsn:  # somebody else's server: no admin role to watch its standbys with
        summary = load(target, spec, replace=replace, progress=True)
        emit(summary.as_dict(), fmt, lambda d: table([d], list(d)))
        return
    from careflow_ha.data import replication_lag

    settings = get_settings()
    summary, standbys, report = replication_lag.load_watching(
        settings.dsn(), settings.dsn(role="admin"), spec, replace=replace, reports_dir=settings.reports_dir,
        secrets=dict(settings.secrets), progress=lambda line: click.echo(line, err=True))
    emit({**summary.as_dict(), "replication": standbys, "report": str(report)}, fmt,
         lambda d: "\n".join([table([summary.as_dict()], list(summary.as_dict())),
                              replication_lag.render_line(standbys), f"report: {report}"]))


@data_group.command("import")
@click.argument("csv_file", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True,
              help="Import a file whose content was imported before (results already present are still skipped).")
@dsn_option
@format_option
def import_cmd(csv_file: Path, force: bool, dsn: str | None, fmt: str) -> None:
    """Import lab results from CSV (pet_id,test_code,collected_at,value[,visit_id]); bad rows are quarantined.

    The file is checked before the database is touched. The same content is
    imported once (refused afterwards unless --force), and no result is ever
    loaded twice, so a rerun after an interrupted import is always safe.
    """
    from careflow_ha.data.importer import import_csv

    target = resolve_dsn(dsn)
    _echo_target(target)
    summary = import_csv(target, csv_file, force=force, progress=True)

    def pretty(d: dict) -> str:
        lines = [f"{d['file']}: {d['rows']} rows, {d['loaded']} loaded, {d['duplicates']} already present "
                 f"(skipped), {d['quarantined']} quarantined (batch {d['batch_id']})"]
        if d["duplicates_of_batches"]:
            lines.append("already present from batch " + ", ".join(
                f"{b} ({n} rows)" for b, n in d["duplicates_of_batches"].items()))
        if d["reasons"]:
            lines.append(table([{"reason": k, "rows": v} for k, v in d["reasons"].items()], ["reason", "rows"]))
            lines.append(f"see: SELECT line_no, reasons, raw FROM lab_results_quarantine WHERE batch_id = "
                         f"{d['batch_id']};")
        return "\n".join(lines)

    emit(summary.as_dict(), fmt, pretty)


@click.group("partitions")
def partitions_group() -> None:
    """lab_results partitions (months x clinics, pg_partman): status, maintain, check."""


@partitions_group.command("status")
@dsn_option
@format_option
def status_cmd(dsn: str | None, fmt: str) -> None:
    """Months, clinic leaves, sizes, partman settings and the scheduled jobs."""
    from careflow_ha.data.db import connect
    from careflow_ha.data.partitions import status

    with connect(resolve_dsn(dsn), autocommit=True) as conn:
        data = status(conn)

    def pretty(d: dict) -> str:
        head = (f"{d['parent']} ({d['scheme']}): {d['months']} months, {d['leaves']} leaf partitions; premake "
                f"{d['premake_months']} months"
                + (f", clinic premake {d['clinic_premake']}" if d["clinic_premake"] is not None else "")
                + f"; retention {d['retention']} "
                f"(keep table: {d['retention_keep_table']})")
        return "\n".join([head, table(d["partitions"], ["month", "table", "leaves", "clinics", "default", "est_rows",
                                                         "mb"]),
                          table(d["jobs"], ["job", "schedule", "active", "last_status", "last_start"])])

    emit(data, fmt, pretty)


@partitions_group.command("maintain")
@click.option("--from", "from_month", default=None, metavar="YYYY-MM",
              help="Also make sure months from this one on exist (e.g. before importing old results).")
@dsn_option
@format_option
def maintain_cmd(from_month: str | None, dsn: str | None, fmt: str) -> None:
    """Run pg_partman maintenance now; cover every clinic; move rows parked in clinic defaults."""
    from careflow_ha.data.db import connect
    from careflow_ha.data.partitions import maintain, parse_month

    first = parse_month(from_month) if from_month else None
    with connect(resolve_dsn(dsn), autocommit=True) as conn:
        result = maintain(conn, first)
    emit(result, fmt, lambda d: table([{"what": k, "count": v} for k, v in d.items()], ["what", "count"]))


@partitions_group.command("check")
@dsn_option
@format_option
def check_cmd(dsn: str | None, fmt: str) -> None:
    """Check partition health; exits 5 if a check fails (each failure names its fix)."""
    from careflow_ha.data.db import connect
    from careflow_ha.data.partitions import check

    with connect(resolve_dsn(dsn), autocommit=True) as conn:
        results = [c.__dict__ for c in check(conn)]
    emit(results, fmt, lambda rows: table(rows, ["name", "status", "detail"]))
    failed = [r["name"] for r in results if r["status"] == "FAIL"]
    if failed:
        raise CheckFailed(f"partition check failed: {', '.join(failed)}")


@click.command("partitioning")
@click.option("--scale", "scale", default="lab", show_default=True,
              help="lab: partitioned vs plain at the lab's size; network: every scheme side by side at 1,000 "
                   "clinics, 60 months, 100M rows (local server only; hours).")
@click.option("--rows", type=int, default=None, help="Lab results per table [lab: 5,000,000; network: 100,000,000].")
@click.option("--clinics", type=int, default=None, help="[lab: 8; network: 1,000]")
@click.option("--months", type=int, default=None, help="[lab: 24; network: 60]")
@click.option("--schemes", default=",".join(["per-clinic", "clinic-range-16", "clinic-range-64", "months-only"]),
              show_default=True, help="--scale network: the schemes to compare, in turn.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--repeat", type=int, default=7, show_default=True, help="Runs per query; the median is reported.")
@click.option("--cold-repeat", type=int, default=3, show_default=True,
              help="--scale network: cold rounds per query (0: warm only).")
@click.option("--local", is_flag=True, help="Start a throwaway local PostgreSQL 15 for the run (default: --dsn).")
@click.option("--keep", is_flag=True, help="Keep the bench schema afterwards (default: drop it).")
@dsn_option
@format_option
def bench_partitioning_cmd(scale: str, rows: int | None, clinics: int | None, months: int | None, schemes: str,
                           seed: int, repeat: int, cold_repeat: int, local: bool, keep: bool, dsn: str | None,
                           fmt: str) -> None:
    """Partitioned vs unpartitioned lab_results, same data, same run: load rows/s and the EMR's queries."""
    from careflow_ha.data import bench_scale
    from careflow_ha.data.generator import DataSpec

    size = bench_scale.resolve_scale(scale, rows, clinics, months)
    spec = DataSpec(rows=size.rows, clinics=size.clinics, months=size.months, seed=seed).validated()
    if repeat < 1:
        raise UsageError(f"--repeat {repeat} must be at least 1")
    if local and dsn:
        raise UsageError("--local and --dsn both given; pick one target")
    if scale == "network":
        if dsn or keep:
            raise UsageError("--scale network runs on a throwaway local server only; drop --dsn / --keep")
        if cold_repeat < 0:
            raise UsageError(f"--cold-repeat {cold_repeat} must be 0 or more")
        from careflow_ha.monitoring import report_folder
        from careflow_ha.settings import PROJECT_DIR

        picked = bench_scale.parse_schemes(schemes)
        folder = report_folder(PROJECT_DIR / "reports" / "bench-partitioning")
        click.echo(f"figures after each scheme: {folder}/report.md", err=True)
        result = bench_scale.run_scale(spec, picked, repeat=repeat, cold_repeat=cold_repeat,
                                       progress=lambda line: click.echo(line, err=True),
                                       checkpoint=lambda out: bench_scale.write_checkpoint(folder, out))
        emit(result, fmt, bench_scale.render)
        return
    from careflow_ha.data.bench import render, run_bench

    result = run_bench(None if local else resolve_dsn(dsn), spec, repeat=repeat, keep=keep)
    emit(result, fmt, render)


def register(cli: click.Group) -> None:
    """Add ``data``, ``partitions`` and ``bench partitioning`` to the CLI."""
    cli.add_command(data_group)
    cli.add_command(partitions_group)
    cli.commands["bench"].add_command(bench_partitioning_cmd)  # type: ignore[attr-defined]
