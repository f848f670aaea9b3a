"""The ``tls`` role in pyinfra: the CA certificate, the host certificate and each service account's key copy.

The files, owners and modes are read from the role's own tasks (``roles/tls/tasks/*.yml``), rendered for each
host, so both provisioners install the same files the same way (``tls_files`` is what the unit tests compare).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Users
from pyinfra.operations import files, server

from careflow_ha.provision.inventory import ROLES_DIR, ClusterInventory
from careflow_ha.pyinfra_deploys._data import INVENTORY_KEY, var
from careflow_ha.pyinfra_deploys.ops import each

#: The role's file tasks, in the order certificates.yml runs them (it imports trust.yml, the CA bundle, first).
ROLE_TASKS = (ROLES_DIR / "tls" / "tasks" / "trust.yml", ROLES_DIR / "tls" / "tasks" / "certificates.yml")


@dataclass(frozen=True)
class TlsFile:
    """One ``copy`` of the role: from the control host's ``src`` to the host's ``dest``."""

    src: str
    dest: str
    user: str
    group: str
    mode: str


def _tasks() -> dict[str, dict[str, Any]]:
    return {t["name"]: t for path in ROLE_TASKS for t in yaml.safe_load(path.read_text(encoding="utf-8"))
            if "ansible.builtin.import_tasks" not in t}


def tls_files(inv: ClusterInventory, name: str) -> dict[str, list[TlsFile]]:
    """Every ``copy`` task of the role rendered for host ``name`` (a ``loop:`` task once per item), by task name."""
    out: dict[str, list[TlsFile]] = {}
    for task_name, task in _tasks().items():
        args = task.get("ansible.builtin.copy")
        if args is None:
            continue
        items = inv.render_value(task["loop"], name) if "loop" in task else [None]
        out[task_name] = [
            TlsFile(*(str(inv.render_value(args[k], name, item))
                      for k in ("src", "dest", "owner", "group")), str(args["mode"]).lstrip("0"))
            for item in items
        ]
    return out


def _directories(inv: ClusterInventory, name: str) -> dict[str, list[dict[str, str]]]:
    """Every ``file: state=directory`` task of the role rendered for host ``name``, as files.directory kwargs."""
    out: dict[str, list[dict[str, str]]] = {}
    for task_name, task in _tasks().items():
        args = task.get("ansible.builtin.file")
        if args is None:
            continue
        items = inv.render_value(task["loop"], name) if "loop" in task else [None]
        out[task_name] = [
            {key: str(inv.render_value(args[arg], name, item))
             for key, arg in (("path", "path"), ("user", "owner"), ("group", "group"))}
            | {"mode": str(args["mode"]).lstrip("0")}
            for item in items
        ]
    return out


@deploy("TLS certificates")
def tls() -> None:
    inv: ClusterInventory = host.data.get(INVENTORY_KEY)
    accounts, known = var("__tls_key_accounts"), var("tls_accounts")
    each(name="Ensure each service account's group exists", inner=server.group,
         items=[{"group": a, "system": True} for a in accounts])
    # Only the missing accounts, as the role does: an existing one is its package's (and usermod refuses to
    # move the home of a running service's account).
    existing = host.get_fact(Users)
    each(
        name="Ensure each service account exists", inner=server.user,
        items=[{"user": a, "group": a, "system": True, "create_home": False, "ensure_home": False,
                "home": known[a]["home"], "shell": known[a]["shell"], "comment": known[a]["comment"] or None}
               for a in accounts if a not in existing],
    )
    name = var("inventory_hostname")  # not host.name: the tests run this deploy on @local for an inventory host
    directories, copies = _directories(inv, name), tls_files(inv, name)
    for task_name in _tasks():  # the role's order
        if task_name in directories:
            each(name=task_name, inner=files.directory, items=directories[task_name])
        elif task_name in copies:
            each(name=task_name, inner=files.put, items=[
                {"src": f.src, "dest": f.dest, "user": f.user, "group": f.group, "mode": f.mode}
                for f in copies[task_name]
            ])
