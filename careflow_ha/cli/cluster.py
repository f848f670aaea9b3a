"""The main verbs: ``up`` (lab -> provision -> healthy -> demo data), ``provision``, ``status``, ``down``."""

from __future__ import annotations

import time
from pathlib import Path

import click

from careflow_ha.cli.common import (
    emit,
    engine_option,
    format_option,
    get_settings,
    port_options,
    preset_option,
    print_access,
    progress,
    table,
)
from careflow_ha.cluster.health import cluster_status, wait_healthy
from careflow_ha.lab.engine import detect_engine
from careflow_ha.provision import LAB_INVENTORY, PROVISIONERS, provision
from careflow_ha.settings import ROLE_NAMES, Settings
from careflow_ha.stack import bring_up

inventory_option = click.option(
    "-i",
    "--inventory",
    type=click.Path(dir_okay=False, path_type=Path),
    default=LAB_INVENTORY,
    show_default="inventory/lab.yml",
    help="Ansible inventory to provision (see inventory/production.example.yml).",
)
provisioner_option = click.option(
    "--provisioner",
    type=click.Choice(list(PROVISIONERS)),
    default="ansible",
    show_default=True,
    help="Ansible (site.yml) or pyinfra (careflow_ha/pyinfra_deploys): same inventory, templates, hosts.",
)
sync_option = click.option(
    "--sync/--async",
    "synchronous",
    default=None,
    help="synchronous_mode on (default: no acknowledged write lost at failover) or off.",
)


def _extra_vars(preset: str | None, synchronous: bool | None) -> dict[str, str]:
    out = {}
    if preset:
        out["careflow_timing_preset"] = preset
    if synchronous is not None:
        out["careflow_synchronous_mode"] = "true" if synchronous else "false"
    return out


def _render_status(data: dict) -> str:
    lines = [table(data["members"], ["member", "role", "state", "timeline", "lag"])]
    if data["haproxy"]:
        lines.append(table(data["haproxy"], ["proxy", "server", "status", "check"]))
    if data.get("vips"):
        lines.append(table(data["vips"], ["vip", "kind", "on", "ok"]))
    if data.get("poolers"):
        lines.append(table(data["poolers"], ["pooler", "state"]))
    if data.get("archiving"):
        lines.append(table([data["archiving"]], list(data["archiving"])))
    lines.append("healthy" if data["healthy"] else "NOT healthy: " + "; ".join(data["problems"]))
    return "\n".join(lines)


def _shown(dsn: str) -> str:
    """A URI as a person copies it: without our connect_timeout and application_name, with the rest (TLS, a
    multi-host URI's target_session_attrs)."""
    base, _, query = dsn.partition("?")
    kept = "&".join(p for p in query.split("&") if p and not p.startswith(("connect_timeout=", "application_name=")))
    return f"{base}?{kept}" if kept else base


def print_connections(settings: Settings, show_secrets: bool) -> None:
    vip = settings.vip
    where = f"the VIP {vip.address}, kept on a healthy balancer by keepalived" if vip else "HAProxy on 127.0.0.1"
    click.echo(f"\nConnect ({where}):")
    for endpoint, role, what in (("rw", "app", "read-write, primary"), ("ro", "ro", "read-only, replicas")):
        dsn = settings.dsn(endpoint, role) if show_secrets else settings.redacted_dsn(endpoint, role)
        click.echo(f"  {what:20} {_shown(dsn)}")
    if not show_secrets:
        click.echo("  (passwords are in .env; add --show-secrets to print them)")
    host, port = settings.endpoint("rw")
    tls = "".join(f" {k}={v}" for k, v in settings.routing.tls_params().items())
    click.echo(f"  psql 'host={host} port={port} user={ROLE_NAMES['app']} dbname=careflow{tls}'"
               "   # PGPASSWORD from .env")
    if vip:
        click.echo(
            f"  also on lb1 only: 127.0.0.1:{settings.port('CAREFLOW_RW_PORT')} (rw), "
            f"127.0.0.1:{settings.port('CAREFLOW_RO_PORT')} (ro)"
        )
    for way in settings.routing.available():
        if way != "haproxy-vip":
            click.echo(f"  --via {way:16} {_shown(settings.with_via(way).redacted_dsn('rw', 'app'))} (rw)")
    click.echo("  ssh -F .lab/ssh_config pg1 patronictl -c /etc/patroni/patroni.yml list")
    click.echo(
        f"  HAProxy stats: {'https' if settings.routing.stats_tls_ca_file else 'http'}://127.0.0.1:"
        f"{settings.port('CAREFLOW_STATS_PORT')}/ (user admin, CAREFLOW_HAPROXY_STATS_PASSWORD"
        + (f"; the lab CA: {settings.routing.stats_tls_ca_file})" if settings.routing.stats_tls_ca_file else ")")
    )
    click.echo(f"  Prometheus (mon1): {settings.prometheus_url}/ (targets: {settings.prometheus_url}/targets)")


@click.command("up")
@port_options
@engine_option
@inventory_option
@preset_option(None, "Timing preset: Patroni's defaults, or tuned ttl/loop_wait/retry_timeout and HAProxy checks.")
@sync_option
@provisioner_option
@click.option("--no-data", is_flag=True, help="Skip the EMR schema and demo data.")
@click.option("--show-secrets", is_flag=True, help="Print connection strings with their passwords.")
@click.option("--timeout", type=float, default=300, show_default=True, help="Seconds to wait for a healthy cluster.")
def up_cmd(engine_name, inventory, preset, synchronous, provisioner, no_data, show_secrets, timeout) -> None:
    """Bring everything up: lab hosts, provisioning, a healthy cluster, demo data."""
    settings = get_settings()
    started = time.monotonic()
    _, status = bring_up(
        settings, detect_engine(engine_name), progress, inventory, _extra_vars(preset, synchronous),
        data=not no_data, timeout_s=timeout, provisioner=provisioner,
    )
    print_connections(settings, show_secrets)  # the way in first: the VIP
    click.echo("\n" + _render_status(status.as_dict()))
    print_access(settings)
    progress(f"up: done in {time.monotonic() - started:.0f}s")


@click.command("provision")
@inventory_option
@preset_option(None, "Timing preset: Patroni's defaults, or tuned ttl/loop_wait/retry_timeout and HAProxy checks.")
@sync_option
@provisioner_option
def provision_cmd(inventory, preset, synchronous, provisioner) -> None:
    """Re-run the provisioning (idempotent: a second run reports changed=0)."""
    settings = get_settings()
    result = provision(settings, progress, inventory, _extra_vars(preset, synchronous), provisioner)
    wait_healthy(settings, progress)
    click.echo(f"changed={result.changed} in {result.seconds:.0f}s (log: {result.log_file})")


def vip_rows(settings: Settings, leader: str | None = None) -> list[dict]:
    """Who holds each VIP now (asked inside each node). The client VIP needs exactly one balancer; the leader
    VIP exactly one database node, Patroni's ``leader``. Anything else is a problem."""
    from careflow_ha.lab.vip import vip_holders
    from careflow_ha.settings import LB_NODES, PG_NODES

    if settings.vip is None and not settings.routing.leader_vip:
        return []
    engine, rows = detect_engine(None), []
    if settings.vip is not None:
        holders = vip_holders(engine, LB_NODES, settings.vip.address)
        rows.append({"vip": settings.vip.address, "kind": "client (keepalived)", "on": ", ".join(holders) or "nobody",
                     "ok": "yes" if len(holders) == 1 else "NO"})
    if leader_vip := settings.routing.leader_vip:
        holders = vip_holders(engine, PG_NODES, leader_vip)
        rows.append({"vip": leader_vip, "kind": "leader (keepalived)", "on": ", ".join(holders) or "nobody",
                     "ok": "yes" if holders == (leader,) else "NO"})
    return rows


def pooler_rows(settings: Settings) -> list[dict]:
    """Each PgBouncer instance's state (running, PAUSED, unreachable), asked on its admin console."""
    from careflow_ha.cluster.pooler import lab_poolers, pooler_states

    return [{"pooler": s.name, "state": s.state} for s in pooler_states(lab_poolers(settings))]


def archiving_rows(settings: Settings) -> tuple[dict, list[str]]:
    """WAL archiving to the repository host: pg_stat_archiver, the pg_wal backlog, pgbackrest check."""
    from careflow_ha.backup.lab import LabRepository, archiving_status

    return archiving_status(LabRepository(settings))


def pooler_problems(rows: list[dict]) -> list[str]:
    """A paused pooler is never silent: it holds every client until resumed."""
    out = []
    paused = [r["pooler"] for r in rows if r["state"] == "PAUSED"]
    if paused:
        out.append(f"pooler(s) {', '.join(paused)} PAUSED (a switchover was interrupted?); "
                   "run `careflow-ha switchover --resume`")
    down = [r["pooler"] for r in rows if r["state"] == "unreachable"]
    if down:
        out.append(f"pooler(s) {', '.join(down)} unreachable")
    return out


@click.command("status")
@format_option
def status_cmd(fmt: str) -> None:
    """Patroni's members (role, state, timeline, lag), HAProxy's backend states, who holds each VIP, and
    each PgBouncer's state (a paused one is a problem: `careflow-ha switchover --resume`)."""
    settings = get_settings()
    data = cluster_status(settings).as_dict()
    leader = next((m["member"] for m in data["members"] if m["role"] == "leader"), None)
    data["vips"] = vip_rows(settings, leader)
    data["poolers"] = pooler_rows(settings)
    bad = [f"VIP {r['vip']} ({r['kind']}) is on {r['on']}" for r in data["vips"] if r["ok"] != "yes"]
    bad += pooler_problems(data["poolers"])
    data["archiving"], archive_problems = archiving_rows(settings)
    bad += archive_problems
    if bad:
        data["healthy"], data["problems"] = False, [*data["problems"], *bad]
    emit(data, fmt, _render_status)


@click.command("cluster")
@click.option(
    "--seconds", type=click.IntRange(5, 600), default=20, show_default=True, help="Length of each pgbench run."
)
@click.option("--clients", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option("--rounds", type=click.IntRange(1, 5), default=2, show_default=True, help="Alternating rounds per path.")
@format_option
def bench_cluster_cmd(seconds: int, clients: int, rounds: int, fmt: str) -> None:
    """pgbench TPS through HAProxy 5000 vs straight to the primary: select-only and tpcb-like, with ratios."""
    from careflow_ha.cluster.bench import run_bench, summarise

    rows = summarise(run_bench(get_settings(), progress, seconds=seconds, clients=clients, rounds=rounds))
    emit(rows, fmt, lambda r: table(r, list(r[0]) if r else ["mode"]))


@click.command("tls")
@click.option("--seconds", type=click.IntRange(5, 600), default=15, show_default=True,
              help="Length of each pgbench run.")
@click.option("--clients", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--rounds", type=click.IntRange(1, 9), default=3, show_default=True,
              help="Alternating plain/TLS rounds per mode (the order flips each round).")
@format_option
def bench_tls_cmd(seconds: int, clients: int, rounds: int, fmt: str) -> None:
    """pgbench TPS with and without TLS on one local server, with TLS/plain ratios.

    Modes: select-only, tpcb-like, and select-only with a new connection per transaction. Needs no lab."""
    from careflow_ha.cluster.bench_tls import run_tls_bench, summarise_tls

    rows = summarise_tls(run_tls_bench(progress, seconds=seconds, clients=clients, rounds=rounds))
    emit(rows, fmt, lambda r: table(r, list(r[0]) if r else ["mode"]))


def register(cli: click.Group) -> None:
    """Add ``up``, ``provision``, ``status``, ``bench cluster`` and ``bench tls`` to the CLI."""
    for command in (up_cmd, provision_cmd, status_cmd):
        cli.add_command(command)
    cli.commands["bench"].add_command(bench_cluster_cmd)
    cli.commands["bench"].add_command(bench_tls_cmd)
