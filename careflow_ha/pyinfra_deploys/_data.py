"""Access to the shared inventory from inside a deploy (host data, role files)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pyinfra import host

from careflow_ha.provision.inventory import ROLES_DIR, ClusterInventory

#: Global pyinfra data key holding the ClusterInventory (templates need its lazy context).
INVENTORY_KEY = "careflow_inventory"


def var(name: str) -> Any:
    """This host's value of an inventory variable (group_vars, role defaults, host vars)."""
    value = host.data.get(name)
    if value is None:
        raise KeyError(f"{name} is not defined for {host.name}")
    return value


def hostvar(other: str, name: str) -> Any:
    """Another host's value of an inventory variable (Ansible's ``hostvars[other][name]``)."""
    return _inventory().hostvars[other][name]


def template(role: str, name: str, item: Any = None) -> str:
    """``roles/<role>/templates/<name>`` rendered for this host (the role's own template; ``item``: a loop's)."""
    return _inventory().render_template(role, name, host.name, item)


def _inventory() -> ClusterInventory:
    return host.data.get(INVENTORY_KEY)


@dataclass(frozen=True)
class RoleFile:
    """A file as a role's ``template``/``copy`` task writes it: content, place, owner, mode, validation."""

    content: str
    dest: str
    user: str
    group: str
    mode: str
    validate: str | None = None


def _task(role: str, tasks_file: str, module: str, key: str, value: str) -> dict[str, Any]:
    tasks = yaml.safe_load((ROLES_DIR / role / "tasks" / tasks_file).read_text(encoding="utf-8"))
    for task in tasks:
        args = task.get(f"ansible.builtin.{module}") or {}
        if args.get(key) == value:
            return args
    raise LookupError(f"roles/{role}/tasks/{tasks_file} has no {module} task with {key}: {value}")


def _role_file(args: dict[str, Any], content: str, item: Any = None) -> RoleFile:
    inv = _inventory()
    rendered = {k: inv.render_value(v, host.name, item) for k, v in args.items() if k != "content"}
    return RoleFile(
        content=content,
        dest=str(rendered["dest"]),
        user=str(rendered.get("owner", "root")),
        group=str(rendered.get("group", "root")),
        mode=str(rendered.get("mode", "0644")).lstrip("0") or "0",
        validate=rendered.get("validate"),
    )


def role_template(role: str, tasks_file: str, src: str, item: Any = None) -> RoleFile:
    """What the role's ``template: src=<src>`` task writes on this host (its template, dest, mode, validate);
    for a looped task, what it writes for loop item ``item``."""
    return _role_file(_task(role, tasks_file, "template", "src", src), template(role, src, item), item)


def role_copy(role: str, tasks_file: str, dest: str) -> RoleFile:
    """What the role's ``copy: dest=<dest>`` task writes on this host: its ``content``, or the file its
    ``src`` names on the control host (a path, rendered like any task argument)."""
    args = _task(role, tasks_file, "copy", "dest", dest)
    if "content" in args:
        return _role_file(args, args["content"])
    src = Path(str(_inventory().render_value(args["src"], host.name)))
    return _role_file({k: v for k, v in args.items() if k != "src"}, src.read_text(encoding="utf-8"))
