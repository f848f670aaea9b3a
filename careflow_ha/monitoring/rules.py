"""The Prometheus alert rules shipped to the monitoring host, and promtool to check them.

The rules are static files under ``roles/monitoring/files/`` so that the role
copies exactly what the unit tests checked. promtool (Debian's ``prometheus``
package, installed by scripts/bootstrap.sh) validates them and runs their unit
tests without a Prometheus server.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from careflow_ha.errors import EnvironmentProblem

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent
RULES_DIR = PROJECT_DIR / "roles" / "monitoring" / "files"
RULES_FILE = RULES_DIR / "careflow-alerts.yml"
RULE_TESTS_DIR = RULES_DIR / "tests"
#: Scrape and evaluation interval the rules (and their tests) are written for.
SCRAPE_INTERVAL_S = 5.0


@dataclass(frozen=True)
class AlertRule:
    """One alerting rule as written in the rules file."""

    group: str
    name: str
    expr: str
    for_s: float
    labels: dict[str, str]
    annotations: dict[str, str]


def parse_duration(text: str | int | float) -> float:
    """Seconds in a Prometheus/HAProxy duration (``15s``, ``1m``, ``500ms``, ``1m30s``; a bare number is seconds)."""
    if isinstance(text, int | float):
        return float(text)
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    total, number, rest = 0.0, "", str(text).strip()
    i = 0
    while i < len(rest):
        ch = rest[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = "ms" if rest.startswith("ms", i) else ch
        if unit not in units or not number:
            raise ValueError(f"not a duration: {text!r}")
        total += float(number) * units[unit]
        number = ""
        i += len(unit)
    if number:
        total += float(number)
    return total


def load_rules(path: Path = RULES_FILE) -> list[AlertRule]:
    """Every alerting rule of the file, in order (recording rules are skipped)."""
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    out = []
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            if "alert" not in rule:
                continue
            out.append(AlertRule(group=group["name"], name=rule["alert"], expr=rule["expr"],
                                 for_s=parse_duration(rule.get("for", "0s")), labels=dict(rule.get("labels", {})),
                                 annotations=dict(rule.get("annotations", {}))))
    return out


def promtool(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run promtool; a missing binary is an environment problem that names the package."""
    exe = shutil.which("promtool")
    if exe is None:
        raise EnvironmentProblem("promtool not found; install Debian's prometheus package (scripts/bootstrap.sh does)")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False)


def rule_test_files(tests_dir: Path = RULE_TESTS_DIR) -> list[Path]:
    """The promtool unit-test files, sorted."""
    return sorted(tests_dir.glob("*.test.yml"))
