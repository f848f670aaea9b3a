"""The package's layers, enforced: nothing below a feature imports a feature, features never import each other.

Imports are read with ``ast`` (lazy imports inside functions included), so a
violation fails here with its file, line and the offending import, before
any reviewer has to spot it. The layers (DESIGN.md, "Layout"):

    cli/                                   verbs; each module uses cli/common.py, never another verb module
    drills/ load/ archive/ (and wave 2's)  features: use data/, cluster/ and below, never each other
    stack.py                               the whole stack in one call (up, the test suite)
    data/ cluster/ provision/ lab/         shared layers: never a feature, never cli/
    pyinfra_deploys/                       runs inside pyinfra's process only: nothing else imports it
    errors.py settings.py dsn.py           the foundation: imports only itself
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

PACKAGE = "careflow_ha"
PACKAGE_DIR = Path(__file__).resolve().parents[2] / PACKAGE

#: Every feature package, present or planned: one list, so a new feature is covered the day it lands.
FEATURES = frozenset({"drills", "load", "archive", "backup", "monitoring", "pooler", "routing"})
#: Layers below the features.
SHARED = frozenset({"data", "cluster", "provision", "lab"})
FOUNDATION = frozenset({"errors", "settings", "dsn"})


def _area(module: str) -> str:
    """``careflow_ha.cluster.health`` -> ``cluster``; ``careflow_ha.stack`` -> ``stack``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(module: str, source: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every careflow_ha import in ``source``, relative ones resolved."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # `from careflow_ha import lab` imports the module careflow_ha.lab.
            for alias in node.names:
                yield node.lineno, f"{target}.{alias.name}" if target == PACKAGE else target


def rule_broken(importer: str, imported: str) -> str | None:
    """Which layer rule ``importer`` importing ``imported`` breaks, or None when it is allowed."""
    if not imported.startswith(PACKAGE + ".") and imported != PACKAGE:
        return None
    src, dst = _area(importer), _area(imported)
    if src == dst and src != "cli":
        return None
    if dst == "pyinfra_deploys" and src != "pyinfra_deploys":
        return "pyinfra_deploys runs in pyinfra's process only; start it with `python -m`, never import it"
    if src in FOUNDATION and dst not in FOUNDATION:
        return "errors, settings and dsn are the foundation: they import only each other"
    if src in FEATURES and dst in FEATURES:
        return "features never import each other; move what both need down to cluster/ or data/"
    if dst in FEATURES and src in SHARED | FOUNDATION | {"stack", "pyinfra_deploys"}:
        return f"{src}/ is below the features; it must not import {dst}/"
    if dst == "cli" and src != "cli":
        return "only the cli package imports cli modules"
    if src == "cli" and dst == "cli":
        # The package registers every verb module; verb modules reach only common.py.
        if importer == f"{PACKAGE}.cli" or imported in (f"{PACKAGE}.cli", f"{PACKAGE}.cli.common", importer):
            return None
        return "cli verb modules share code through cli/common.py, never through each other"
    return None


def violations(sources: Mapping[str, tuple[str, bool]]) -> list[str]:
    """Every broken rule in ``sources`` (module -> (source, is_package)), one line each."""
    found = []
    for module, (source, is_package) in sorted(sources.items()):
        for line, imported in _imports(module, source, is_package):
            why = rule_broken(module, imported)
            if why:
                found.append(f"{module} (line {line}) imports {imported}: {why}")
    return found


def _package_sources() -> dict[str, tuple[str, bool]]:
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path.read_text(encoding="utf-8"), is_package)
    return out


def test_the_package_keeps_its_layers():
    assert violations(_package_sources()) == []


def test_every_area_of_the_package_has_a_layer():
    """A new top-level module or package must be placed in a layer here, or the rules above miss it."""
    known = FEATURES | SHARED | FOUNDATION | {"cli", "stack", "pyinfra_deploys", ""}
    areas = {_area(m) for m in _package_sources()}
    assert areas - known == set()


@pytest.mark.parametrize(
    ("importer", "source", "broken"),
    [
        ("careflow_ha.cluster.health", "from careflow_ha.cluster.model import ClusterSnapshot", None),
        ("careflow_ha.drills.runner", "from careflow_ha.cluster.watch import ClusterPoller", None),
        ("careflow_ha.load.runner", "from careflow_ha.data.db import connect", None),
        ("careflow_ha.cli.lab", "from careflow_ha.cli.common import progress", None),
        ("careflow_ha.cli", "from careflow_ha.cli.lab import register", None),
        ("careflow_ha.cluster.health", "from careflow_ha.drills.control import health_problems", "below the features"),
        ("careflow_ha.provision.base", "def f():\n    from careflow_ha.load import runner", "below the features"),
        ("careflow_ha.data.db", "import careflow_ha.archive.store", "below the features"),
        ("careflow_ha.stack", "from careflow_ha.backup import run", "below the features"),
        ("careflow_ha.load.runner", "from careflow_ha.drills.runner import run_drill", "never import each other"),
        ("careflow_ha.drills.runner", "from careflow_ha import load", "never import each other"),
        ("careflow_ha.cli.cluster", "from careflow_ha.cli.lab import progress", "through cli/common.py"),
        ("careflow_ha.cluster.bench", "from careflow_ha.cli.common import table", "only the cli package"),
        ("careflow_ha.settings", "from careflow_ha.lab.engine import run", "the foundation"),
        ("careflow_ha.provision.pyinfra", "from careflow_ha.pyinfra_deploys import deploy", "pyinfra's process only"),
        ("careflow_ha.drills.control", "from ..load import runner", "never import each other"),
    ],
)
def test_the_rules_catch_what_they_name(importer, source, broken):
    found = violations({importer: (source, False)})
    if broken is None:
        assert found == []
    else:
        assert len(found) == 1 and broken in found[0] and importer in found[0], found
