"""The ``careflow-ha`` command line.

Verbs follow patronictl: ``up``, ``down``, ``status``, ``provision``, ``lab``,
``data``, ``partitions``, ``switchover``, ``drill``, ``soak``, ``load``, ``archive``, ``bench``, ``certs``, ``test``.
A user error prints one line and exits with the code documented in errors.py.
Each verb group has its module in this package (``lab``, ``cluster``,
``data``, ``drills``, ``load``, ``archive``, ``backup``, ``certs``); shared options live in ``common``.
"""

from __future__ import annotations

import sys

import click

from careflow_ha import __version__
from careflow_ha.errors import CareflowError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="careflow-ha")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """CareFlow HA Lab: a Patroni/etcd PostgreSQL cluster behind HAProxy, with drills and load tests."""
    ctx.ensure_object(dict)


@cli.group()
def bench() -> None:
    """Benchmarks: print figures and ratios measured side by side in one run."""


def _register_commands() -> None:
    # Each area owns its commands in its own module (a ``register(cli)``
    # function that may also add to the ``bench`` group); this is the one list.
    from careflow_ha.cli.lab import register as register_lab

    register_lab(cli)
    from careflow_ha.cli.cluster import register as register_cluster

    register_cluster(cli)
    from careflow_ha.cli.data import register as register_data

    register_data(cli)
    from careflow_ha.cli.drills import register as register_drills

    register_drills(cli)
    from careflow_ha.cli.soak import register as register_soak

    register_soak(cli)
    from careflow_ha.cli.load import register as register_load

    register_load(cli)
    from careflow_ha.cli.archive import register as register_archive

    register_archive(cli)
    from careflow_ha.cli.monitoring import register as register_monitoring

    register_monitoring(cli)
    from careflow_ha.cli.backup import register as register_backup

    register_backup(cli)
    from careflow_ha.cli.certs import register as register_certs

    register_certs(cli)

    from careflow_ha.cli.switchover import register as register_switchover

    register_switchover(cli)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: turn CareflowError into a message and an exit code."""
    try:
        cli.main(args=argv, prog_name="careflow-ha", standalone_mode=False)
    except CareflowError as exc:
        click.secho(f"careflow-ha: error: {exc}", err=True, fg="red")
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
