"""Commands for the lab's life cycle: ``up``, ``down``, ``status``, ``lab ...``, ``test``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import asdict

import click

from careflow_ha.cli.common import (
    confirm_or_force,
    emit,
    engine_option,
    force_option,
    format_option,
    get_settings,
    port_options,
    print_access,
    progress,
    table,
)
from careflow_ha.errors import UsageError
from careflow_ha.lab import hosts
from careflow_ha.lab.engine import detect_engine
from careflow_ha.settings import PROJECT_DIR


def _render_hosts(statuses: list[dict]) -> str:
    return table(statuses, ["node", "container", "state", "systemd", "ssh"])


@click.group("lab")
def lab_group() -> None:
    """The container hosts only (no cluster): up, down, status."""


@lab_group.command("up")
@port_options
@engine_option
def lab_up_cmd(engine_name: str | None) -> None:
    """Start the lab hosts (pg1..pg3, lb1, lb2, mon1; build the node image if needed) and wait for SSH."""
    settings = get_settings()
    started = time.monotonic()
    statuses = hosts.lab_up(settings, detect_engine(engine_name), progress)
    click.echo(_render_hosts([asdict(s) for s in statuses]))
    print_access(settings)
    progress(f"lab up took {time.monotonic() - started:.0f}s")


@lab_group.command("down")
@click.option("--purge", is_flag=True, help="Also delete the data volumes (the cluster's data is lost).")
@force_option
@engine_option
def lab_down_cmd(purge: bool, force: bool, engine_name: str | None) -> None:
    """Remove the hosts. Data volumes are kept unless --purge."""
    if purge:
        confirm_or_force("Delete the lab's hosts AND all their data volumes?", force)
    hosts.lab_down(get_settings(), detect_engine(engine_name), progress, purge_data=purge)
    progress("lab is down")


@lab_group.command("status")
@format_option
@engine_option
def lab_status_cmd(fmt: str, engine_name: str | None) -> None:
    """Container, systemd and SSH state of each host."""
    statuses = [asdict(s) for s in hosts.lab_status(get_settings(), detect_engine(engine_name))]
    emit(statuses, fmt, _render_hosts)


def pytest_argv(quick: bool, pytest_args: tuple[str, ...]) -> list[str]:
    """pytest's command line: the whole ``tests`` tree, unless the extra arguments name test paths."""
    named = [a for a in pytest_args if not a.startswith("-") and (PROJECT_DIR / a.split("::")[0]).exists()]
    argv = [sys.executable, "-m", "pytest", *([] if named else ["tests"])]
    if quick:
        argv += ["-m", "not (lab or cluster or pyinfra or drill or localpg or teardown)"]
    return argv + list(pytest_args)


def pytest_environment(long: bool, environ: dict[str, str]) -> dict[str, str]:
    """pytest's environment: ``--long`` selects the long drill suite (tests/drills/conftest.py)."""
    return {**environ, "PYTHONUNBUFFERED": "1", **({"CAREFLOW_DRILL_SUITE": "long"} if long else {})}


@click.command("test")
@click.option("--quick", is_flag=True, help="Unit tests only: no containers, no database.")
@click.option("--long", "long", is_flag=True,
              help="Every drill instead of CI's subset, the 30-run failover series, the 30-minute soak and "
              "the cluster-loss restore (hours, not minutes).")
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def test_cmd(quick: bool, long: bool, pytest_args: tuple[str, ...]) -> None:
    """Run the test suite: unit, local PostgreSQL, lab, cluster, drills.

    Starts the lab and the cluster it needs and tears down what it started,
    even when a test fails. Extra arguments go to pytest.
    """
    if quick and long:
        raise UsageError("--quick runs no drill and --long runs every drill: give one of them")
    argv = pytest_argv(quick, pytest_args)
    progress("running: pytest " + " ".join(argv[3:]) + (" (long drill suite)" if long else ""))
    started = time.monotonic()
    rc = subprocess.call(argv, cwd=PROJECT_DIR, env=pytest_environment(long, dict(os.environ)))
    progress(f"tests finished in {time.monotonic() - started:.0f}s (exit {rc})")
    # pytest exit 5 = nothing collected: a test command that tests nothing has failed.
    sys.exit(1 if rc == 5 else rc)


def register(cli: click.Group) -> None:
    """Add ``lab``, ``down`` and ``test`` to the CLI."""
    cli.add_command(lab_group)
    # `down` is `lab down`: the cluster lives on the lab hosts, removing them is the one way down.
    cli.add_command(lab_down_cmd, name="down")
    cli.add_command(test_cmd)
