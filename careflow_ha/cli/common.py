"""Shared CLI plumbing: progress lines, option decorators, output formats, confirmation, settings.

Every command module builds on these so that flags look and behave the same
everywhere (patronictl is the model). Command modules import from here and
never from each other.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from careflow_ha.cluster.timing import TIMING_PRESETS
from careflow_ha.errors import UsageError
from careflow_ha.settings import DEFAULT_WAY_IN, LAB_NODES, WAYS_IN, Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])


def progress(message: str) -> None:
    """One timestamped line on stderr, so stdout keeps only the result (table or JSON)."""
    click.echo(f"[{time.strftime('%H:%M:%S')}] {message}", err=True)


format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["pretty", "json"]),
    default="pretty",
    show_default=True,
    help="Human table or machine-readable JSON.",
)

force_option = click.option("--force", is_flag=True, help="Do not ask for confirmation.")

via_option = click.option(
    "--via",
    default=None,
    metavar="WAY",
    help="The way in to the primary: " + "; ".join(f"{name}: {what}" for name, what in WAYS_IN.items())
    + f". Default: {DEFAULT_WAY_IN}.",
)

engine_option = click.option(
    "--engine",
    "engine_name",
    type=click.Choice(["docker", "podman"]),
    envvar="CAREFLOW_ENGINE",
    default=None,
    help="Container engine. Default: Docker if its daemon answers, else Podman (env CAREFLOW_ENGINE).",
)

dsn_option = click.option(
    "--dsn",
    envvar="CAREFLOW_DSN",
    default=None,
    help="libpq URI of the target database. Default: the lab cluster through HAProxy port 5000 "
    "as careflow_app (env CAREFLOW_DSN).",
)




def preset_option(default: str | None, help: str) -> Callable[[F], F]:
    """``--preset``: the timing presets of ``inventory/group_vars/all.yml`` (their one source)."""
    return click.option(
        "--preset",
        type=click.Choice(list(TIMING_PRESETS)),
        default=default,
        show_default=default is not None,
        help=help,
    )


def port_options(func: F) -> F:
    """--rw-port/--ro-port/--stats-port: override .env for this run."""
    for flag, key in (
        ("--stats-port", "CAREFLOW_STATS_PORT"),
        ("--ro-port", "CAREFLOW_RO_PORT"),
        ("--rw-port", "CAREFLOW_RW_PORT"),
    ):

        def store(ctx: click.Context, _param: click.Parameter, value: int | None, key: str = key) -> int | None:
            if value is not None:
                ctx.find_root().ensure_object(dict)
                ctx.find_root().obj.setdefault("overrides", {})[key] = value
            return value

        func = click.option(
            flag, type=int, default=None, expose_value=False, callback=store, is_eager=True,
            help=f"Publish on this 127.0.0.1 port instead (overrides {key} in .env).",
        )(func)
    return func


def print_access(settings: Settings) -> None:
    """How to reach each lab host over SSH (``lab up`` and ``up`` both end with it)."""
    click.echo("\nHosts (SSH as root with the lab key):")
    for node in LAB_NODES:
        click.echo(f"  ssh -F .lab/ssh_config {node}    # 127.0.0.1:{settings.node_port(node, 'SSH')}")


def get_settings(ctx: click.Context | None = None) -> Settings:
    """Settings for this invocation, resolved once (flags stored in ctx.obj override)."""
    ctx = ctx or click.get_current_context()
    root = ctx.find_root()
    root.ensure_object(dict)
    if "settings" not in root.obj:
        root.obj["settings"] = load_settings(overrides=root.obj.get("overrides"))
    return root.obj["settings"]


def resolve_dsn(dsn: str | None, endpoint: str = "rw", role: str = "app") -> str:
    """The explicit ``--dsn`` if given, else the lab cluster's URI."""
    if dsn:
        if not dsn.startswith(("postgresql://", "postgres://")) and "=" not in dsn:
            raise UsageError(f"--dsn {dsn!r} is not a libpq URI; use postgresql://user:pass@host:port/db")
        return dsn
    return get_settings().dsn(endpoint=endpoint, role=role)  # type: ignore[arg-type]


def emit(data: Any, fmt: str, pretty: Callable[[Any], str]) -> None:
    """Print ``data`` as JSON or through the ``pretty`` renderer."""
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(pretty(data))


def confirm_or_force(question: str, force: bool) -> None:
    """Ask before a destructive step; refuse (not hang) when stdin is not a terminal."""
    if force:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question} Refusing without a terminal to ask; add --force to proceed.")
    if not click.confirm(question, default=False):
        raise click.Abort()


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain aligned text table (no dependency: it must work in any terminal and log)."""
    header = [str(col) for col in columns]
    cells = [header] + [["" if r.get(c) is None else str(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    sep = "+-" + "-+-".join("-" * w for w in widths) + "-+"
    lines = [sep, "| " + " | ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True)) + " |", sep]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells[1:]]
    lines.append(sep)
    return "\n".join(lines)


def haproxy_preset_switcher(settings: Settings) -> Callable[[str], None]:
    """HAProxy's half of a timing preset (check inter/fastinter/fall/rise) is provisioned config:
    re-render it on the balancers, but only when the preset actually changes within this run."""
    applied: list[str] = []

    def switch(name: str) -> None:
        if applied and applied[-1] == name:
            return
        progress(f"HAProxy: applying the '{name}' check timing on the balancers")
        from careflow_ha.provision.ansible import apply_haproxy_timing

        apply_haproxy_timing(settings, name, lambda _line: None)
        applied.append(name)

    return switch
