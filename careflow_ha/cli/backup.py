"""``careflow-ha backup run|list|verify``, ``restore`` and ``bench backup``.

The lab verbs run pgBackRest on the repository host (backup1) with the configuration the role wrote, so
they take the same backups as its timers. Each backup, verify and restore leaves a report under
``reports/backup/``; progress goes to stderr, the result (table or JSON) to stdout.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import UTC, datetime

import click

from careflow_ha.backup.commands import BACKUP_TYPES
from careflow_ha.backup.target import parse_target, shown
from careflow_ha.cli.common import confirm_or_force, emit, force_option, format_option, get_settings, progress, table
from careflow_ha.errors import CheckFailed


@click.group("backup")
def backup_group() -> None:
    """Backups of the lab cluster in the pgBackRest repository on backup1 (see also: restore)."""


@backup_group.command("run")
@click.option("--type", "type_", type=click.Choice(BACKUP_TYPES), default="incr", show_default=True,
              help="full copies everything; diff what changed since the last full; incr since the last backup.")
@format_option
def backup_run_cmd(type_: str, fmt: str) -> None:
    """Take a backup now, from a standby (as the timers do), and write its report."""
    from careflow_ha.backup.drills import report_backup
    from careflow_ha.backup.lab import LabRepository

    settings = get_settings()
    started = time.time()
    run = LabRepository(settings).backup(type_, log=progress)
    folder = report_backup(settings, run, started)
    progress(f"report: {folder.relative_to(settings.project_dir)}/report.md")
    row = _backup_row(run.backup) | {"seconds": round(run.seconds, 1), "MB/s": round(run.mb_per_s, 1)}
    emit(row, fmt, lambda r: table([r], list(r)))


def _backup_row(b) -> dict:  # noqa: ANN001 - a repository.Backup
    return {"label": b.label, "type": b.type, "stop (Asia/Seoul)": shown(b.stop), "database_MB": round(b.size / 1e6, 1),
            "copied_MB": round((b.delta if b.delta is not None else b.size) / 1e6, 1),
            "stored_MB": round(b.stored / 1e6, 2), "wal": f"{b.wal_start}..{b.wal_stop}"}


@backup_group.command("list")
@format_option
def backup_list_cmd(fmt: str) -> None:
    """The backups in the repository, the archived WAL and the range a restore --to can reach."""
    from careflow_ha.backup.lab import LabRepository

    lab = LabRepository(get_settings())
    stanza = lab.read_stanza()
    data = {"stanza": stanza.name, "status": stanza.status_message,
            "backups": [_backup_row(b) for b in stanza.backups],
            "wal": {"min": stanza.wal_min, "max": stanza.wal_max}}
    if stanza.usable_backups:
        span = lab.restorable_range()
        data["restorable"] = {"from": shown(span.earliest), "to": shown(span.latest)}

    def pretty(d: dict) -> str:
        lines = [table(d["backups"], list(d["backups"][0]))] if d["backups"] else ["no backups yet"]
        lines.append(f"archived WAL: {d['wal']['min']} .. {d['wal']['max']}")
        if "restorable" in d:
            lines.append(f"restore --to can reach {d['restorable']['from']} .. {d['restorable']['to']} (Asia/Seoul)")
        return "\n".join(lines)

    emit(data, fmt, pretty)


@backup_group.command("verify")
@click.option("--no-restore-test", is_flag=True, help="Only pgbackrest verify (checksums), without the test restore.")
@format_option
def backup_verify_cmd(no_restore_test: bool, fmt: str) -> None:
    """Check every file in the repository (pgbackrest verify), then restore the newest backup into a scratch
    directory on a replica, start it and count what it holds. Exit 5 naming the damaged files."""
    from careflow_ha.backup.drills import verify_repository

    settings = get_settings()
    outcome, folder = verify_repository(settings, restore_test=not no_restore_test, log=progress)
    progress(f"report: {folder.relative_to(settings.project_dir)}/report.md")
    emit(outcome, fmt, lambda r: table([r], list(r)))
    if not outcome["ok"]:
        raise CheckFailed(outcome["problem"])


@click.command("restore")
@click.option("--to", "to", metavar="TIMESTAMP",
              help="The database as it was at this time (ISO 8601; without an offset: Asia/Seoul).")
@click.option("--before-xid", metavar="N", help="Everything committed before transaction N (N itself is not).")
@click.option("--latest", is_flag=True, help="Everything the archive holds (after losing every node).")
@force_option
@format_option
def restore_cmd(to: str | None, before_xid: str | None, latest: bool, force: bool, fmt: str) -> None:
    """Restore the whole cluster from the repository, then re-clone the replicas. Asks first unless --force."""
    from careflow_ha.backup.drills import report_restore
    from careflow_ha.backup.restore import restore_cluster

    target = parse_target(to, before_xid, latest)  # a bad time or two targets: exit 2 before anything else
    settings = get_settings()
    result = restore_cluster(settings, target, lambda q: confirm_or_force(q, force), progress)
    folder = report_restore(settings, result)
    progress(f"report: {folder.relative_to(settings.project_dir)}/report.md")
    row = {"target": target.describe(), "member": result.member, "reached": result.reached(),
           "seconds": round(result.seconds or 0, 1),
           "restored_at": datetime.fromtimestamp(result.finished_at or 0, UTC).isoformat(timespec="seconds")}
    emit(row, fmt, lambda r: "\n".join(f"{k}: {v}" for k, v in r.items()))


@click.command("backup")
@click.option("--mb", type=click.IntRange(10, 20_000), default=200, show_default=True,
              help="Table data to back up, in MB (the database ends up about 1.2x larger).")
@click.option("--rounds", type=click.IntRange(1, 10), default=2, show_default=True,
              help="Backup+restore rounds per tool, interleaved; medians are compared.")
@click.option("--process-max", type=click.IntRange(1, 16), default=2, show_default=True,
              help="pgBackRest's parallel processes (the role's default is 2).")
@format_option
def bench_backup_cmd(mb: int, rounds: int, process_max: int, fmt: str) -> None:
    """pgBackRest vs pg_basebackup on a loopback PostgreSQL 15: backup MB/s and restore time, same run."""
    from careflow_ha.backup.bench import render, run_bench

    result = run_bench(mb=mb, rounds=rounds, process_max=process_max, log=progress)
    emit(asdict(result), fmt, render)


def register(cli: click.Group) -> None:
    """Add ``backup``, ``restore`` and ``bench backup`` to the CLI."""
    cli.add_command(backup_group)
    cli.add_command(restore_cmd)
    bench = cli.commands["bench"]
    assert isinstance(bench, click.Group)
    bench.add_command(bench_backup_cmd)
