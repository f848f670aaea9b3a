"""Hosts and groups of the lab inventory, for parametrizing host tests."""

from __future__ import annotations

from pathlib import Path

import yaml

INVENTORY = Path(__file__).resolve().parent.parent / "inventory" / "lab.yml"


def groups(path: Path = INVENTORY) -> dict[str, list[str]]:
    data = yaml.safe_load(path.read_text())
    children = data["all"]["children"]
    return {name: sorted((grp.get("hosts") or {}).keys()) for name, grp in children.items()}


def hosts(group: str | None = None, path: Path = INVENTORY) -> list[str]:
    g = groups(path)
    if group:
        return g[group]
    return sorted({h for members in g.values() for h in members})


def host_vars(path: Path = INVENTORY) -> dict[str, dict]:
    data = yaml.safe_load(path.read_text())
    out: dict[str, dict] = {}
    for grp in data["all"]["children"].values():
        for host, hv in (grp.get("hosts") or {}).items():
            out.setdefault(host, {}).update(hv or {})
    return out
