"""``careflow-ha certs``: the certificates of issue 15.

``certs status`` reads the control host's certificates (the inventory's ``careflow_tls_dir``: the lab CA's
``.lab/ca``, or your own) and, with ``--served``, asks every TLS listener which certificate it serves.
``certs rotate [--ca]`` issues new certificates (and a new lab CA) and installs them without an outage
(``provision/rotation.py``).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from careflow_ha.cli.common import emit, format_option, get_settings, progress, table
from careflow_ha.errors import CheckFailed
from careflow_ha.provision import LAB_INVENTORY
from careflow_ha.provision.certificates import certificate_status, tls_dir
from careflow_ha.provision.inventory import ClusterInventory, load_inventory
from careflow_ha.provision.listeners import Served

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


inventory_option = click.option(
    "-i", "--inventory", type=click.Path(dir_okay=False, path_type=Path), default=LAB_INVENTORY,
    show_default="inventory/lab.yml", help="Inventory whose careflow_tls_dir and hosts to use.")


def _served_rows(inv: ClusterInventory, served: list[Served]) -> list[dict[str, Any]]:
    from careflow_ha.provision.rotation import installed_fingerprints

    wanted = installed_fingerprints(inv)
    return [{"host": s.listener.host, "service": s.listener.service,
             "address": f"{s.listener.address}:{s.listener.port}", "serial": s.serial or "-",
             "expires": s.not_after or "-",
             "serves": s.error or ("installed certificate" if s.fingerprint == wanted[s.listener.host]
                                   else "OLD certificate (reload it)")}
            for s in served]


@certs.command("status")
@inventory_option
@click.option("--served", is_flag=True,
              help="Also ask every TLS listener of the inventory which certificate it serves (needs the hosts up).")
@format_option
def status_cmd(inventory: Path, served: bool, fmt: str) -> None:
    """Every certificate on the control host: subject, names, expiry, days left; WARN under 30 days.

    With --served, every TLS listener too: the serial it serves and whether that is the host's certificate here.
    Exit 5 when one has expired or a listener serves another certificate (exit 2 when there are none to read).
    """
    # No secret is needed to find a directory or a port: lookups answer empty.
    inv = load_inventory(inventory, {})
    directory = tls_dir(inv)
    rows = [asdict(s) for s in certificate_status(directory)]
    emit([{**r, "not_after": r["not_after"].isoformat()} for r in rows] if fmt == "json" else rows, fmt, _render)
    expired = [r["file"] for r in rows if r["state"] == "expired"]
    if expired:
        raise CheckFailed(f"{len(expired)} certificate(s) in {directory} expired: {', '.join(expired)}; "
                          "`careflow-ha provision` re-issues the lab CA's (replace your own)")
    if served:
        from careflow_ha.provision.listeners import read_served, tls_listeners
        from careflow_ha.provision.rotation import name_stale, stale_listeners

        answers = read_served(tls_listeners(inv), directory)
        listener_rows = _served_rows(inv, answers)
        emit(listener_rows, fmt, lambda r: table(r, ["host", "service", "address", "serial", "expires", "serves"]))
        stale = stale_listeners(inv, answers)
        if stale:
            raise CheckFailed(f"{len(stale)} listener(s) do not serve the installed certificate: {name_stale(stale)}; "
                              "`careflow-ha certs rotate` installs and reloads")


@certs.command("rotate")
@inventory_option
@click.option("--ca", is_flag=True,
              help="Rotate the lab CA too: trust both, sign with the new one, retire the old (three passes).")
def rotate_cmd(inventory: Path, ca: bool) -> None:
    """Issue new certificates and make every service use them, one host at a time, without an outage.

    Reloads keep every connection; etcd is restarted one member at a time when its CA changes. Every TLS listener
    is then asked which certificate it serves (exit 5 if one still serves an old one). Started again after a
    failure, a CA rotation resumes where it stopped.
    """
    from careflow_ha.provision.rotation import rotate_with_ansible

    result = rotate_with_ansible(get_settings(), inventory, progress, ca=ca)
    for p in result.passes:
        click.echo(f"{p.step}: {p.seconds:.0f} s, {len(p.served)} listeners serve the installed certificates")
    click.echo(f"rotated ({result.kind}) in {result.seconds:.0f} s")


def register(cli: click.Group) -> None:
    """Add ``certs`` to the CLI."""
    cli.add_command(certs)
