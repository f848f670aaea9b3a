"""Observability without a dashboard server: alert rules, slow queries and plans, capacity planning.

Layer: a feature. It may use ``careflow_ha.data`` (the EMR layer), errors and
settings, never another feature (drills, load, archive): it reads their
reports as files instead.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path


def report_folder(parent: Path) -> Path:
    """A new ``<parent>/<UTC time>/`` folder, the layout every report of the project uses."""
    folder = parent / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
