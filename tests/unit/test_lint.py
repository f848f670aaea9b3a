"""Lint as part of the suite: ansible-lint (production profile), yamllint, ruff."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from careflow_ha.settings import PROJECT_DIR

BIN = Path(sys.executable).parent


def test_ansible_lint_production_profile():
    proc = subprocess.run(
        [str(BIN / "ansible-lint"), "--offline", "--profile", "production", "site.yml", "roles"],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_yamllint():
    proc = subprocess.run(
        [str(BIN / "yamllint"), "-s", "roles", "inventory", "site.yml", "docker-compose.yml"],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout


def test_ruff():
    proc = subprocess.run(
        [str(BIN / "ruff"), "check", "careflow_ha", "tests", "loadtests"],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
