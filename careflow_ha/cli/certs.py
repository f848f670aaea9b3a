"""``careflow-ha certs``: the certificates of issue 15.

``certs status`` reads the control host's certificates (the inventory's ``careflow_tls_dir``: the lab CA's
``.lab/ca``, or your own). Reading the copies installed on the hosts, and ``certs rotate``, come later.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from careflow_ha.cli.common import emit, format_option, table
from careflow_ha.errors import CheckFailed
from careflow_ha.provision import LAB_INVENTORY
from careflow_ha.provision.certificates import certificate_status, tls_dir
from careflow_ha.provision.inventory import load_inventory

STATE_SHOWN = {"ok": "ok", "warn": "WARN", "expired": "EXPIRED"}


def _render(rows: list[dict[str, Any]]) -> str:
    shown = [
        {"file": r["file"], "subject": r["subject"] + (" (CA)" if r["is_ca"] else ""),
         "names": ", ".join([*r["dns_names"], *r["ip_addresses"]]) or "-",
         "expires": f"{r['not_after']:%Y-%m-%d}", "days left": r["days_left"], "status": STATE_SHOWN[r["state"]]}
        for r in rows
    ]
    return table(shown, ["file", "subject", "names", "expires", "days left", "status"])


@click.group("certs")
def certs() -> None:
    """Certificates: the lab CA's (or yours) that the hosts get."""


@certs.command("status")
@click.option("-i", "--inventory", type=click.Path(dir_okay=False, path_type=Path), default=LAB_INVENTORY,
              show_default="inventory/lab.yml", help="Inventory whose careflow_tls_dir to read.")
@format_option
def status_cmd(inventory: Path, fmt: str) -> None:
    """Every certificate on the control host: subject, names, expiry, days left; WARN under 30 days.

    Exit 5 when one has expired (exit 2 when there are none to read).
    """
    # No secret is needed to find a directory: lookups answer empty.
    directory = tls_dir(load_inventory(inventory, {}))
    rows = [asdict(s) for s in certificate_status(directory)]
    emit([{**r, "not_after": r["not_after"].isoformat()} for r in rows] if fmt == "json" else rows, fmt, _render)
    expired = [r["file"] for r in rows if r["state"] == "expired"]
    if expired:
        raise CheckFailed(f"{len(expired)} certificate(s) in {directory} expired: {', '.join(expired)}; "
                          "`careflow-ha provision` re-issues the lab CA's (replace your own)")


def register(cli: click.Group) -> None:
    """Add ``certs`` to the CLI."""
    cli.add_command(certs)
