"""``careflow-ha switchover``: a planned switchover through Patroni, with ``--zero-error`` held at the poolers."""

from __future__ import annotations

import click

from careflow_ha.cli.common import emit, force_option, format_option, get_settings, progress, table
from careflow_ha.errors import NotReady, UsageError
from careflow_ha.settings import Settings


def _render(data: dict) -> str:
    rows = [{"step": k, "seconds": v} for k, v in data["steps"].items()]
    head = f"switchover {data['old_leader']} -> {data['new_leader'] or '?'}"
    if data["zero_error"]:
        head += f" (zero-error: clients held {data['held_s']}s at the poolers)"
    return head + "\n" + table(rows, ["step", "seconds"])


def resume_poolers(settings: Settings) -> list[str]:
    """RESUME every paused pooler of the inventory; the names resumed."""
    from careflow_ha.cluster.pooler import lab_poolers
    from careflow_ha.cluster.switchover import resume_all

    poolers = lab_poolers(settings)
    paused = [p for p in poolers if p.paused()]
    failed = resume_all(paused, progress)
    if failed:
        raise NotReady(f"RESUME failed on {', '.join(failed)}; "
                       "check the balancers (journalctl -u careflow-pgbouncer@rw)")
    return [p.name for p in paused]


@click.command("switchover")
@click.option("--to", "to", metavar="NODE", help="The replica to promote (default: the sync standby).")
@click.option("--zero-error", is_flag=True,
              help="PAUSE every PgBouncer first and RESUME once HAProxy routes to the new primary: clients "
                   "through 6432/6433 see a delay, not an error.")
@click.option("--resume", "resume_only", is_flag=True,
              help="Only RESUME poolers left paused (by a switchover that was killed); nothing is switched.")
@click.option("--drain-timeout", type=click.FloatRange(0.5, 60), default=5.0, show_default=True,
              help="Seconds PAUSE may wait for in-flight transactions; then every pooler resumes (exit 4).")
@click.option("--max-xact-age", type=click.FloatRange(0, 3600), default=5.0, show_default=True,
              help="Refuse when a transaction on the primary is older than this (seconds).")
@force_option
@format_option
def switchover_cmd(to, zero_error, resume_only, drain_timeout, max_xact_age, force, fmt) -> None:
    """Planned switchover through Patroni; --zero-error holds transactions at the poolers meanwhile."""
    from careflow_ha.cluster.switchover import lab_limits, lab_switchover

    settings = get_settings()
    if resume_only:
        if to or zero_error:
            raise UsageError("--resume only resumes the poolers; leave out --to and --zero-error")
        names = resume_poolers(settings)
        click.echo(f"resumed: {', '.join(names)}" if names else "no pooler was paused")
        return
    if not force:
        click.confirm(f"Switch the primary over{' to ' + to if to else ''}?", abort=True)
    limits = lab_limits(settings, max_xact_age_s=max_xact_age, drain_s=drain_timeout)
    report = lab_switchover(settings, to, zero_error, limits, progress)
    emit(report.as_dict(), fmt, _render)


def register(cli: click.Group) -> None:
    """Add ``switchover`` to the CLI."""
    cli.add_command(switchover_cmd)
