"""Commands for backups that need no lab: ``bench backup``.

The lab verbs of issue 14 (``backup run|list|verify``, ``restore``) come with the repository host; they
will live here and use the same careflow_ha.backup functions the loopback tests prove.
"""

from __future__ import annotations

from dataclasses import asdict

import click

from careflow_ha.cli.common import emit, format_option, progress


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
    """Add ``bench backup`` to the CLI."""
    bench = cli.commands["bench"]
    assert isinstance(bench, click.Group)
    bench.add_command(bench_backup_cmd)
