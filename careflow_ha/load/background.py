"""EMR load in the background of a failover drill (``careflow-ha drill ... --under-load``).

:func:`drill_background` returns what ``DrillOptions.background`` expects: a
factory of a context manager. Locust runs for as long as the drill's block is
open (never longer than ``max_seconds``), and its report lands in
``reports/load/<UTC timestamp>/`` like any load run, with the drill's role
changes on its timeline.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from careflow_ha.load.runner import LoadConfig, LoadRun, background
from careflow_ha.settings import Settings


def drill_background(
    settings: Settings,
    *,
    users: int = 10,
    profile: str = "steady",
    max_seconds: float = 900.0,
    progress: Callable[[str], None] = lambda _: None,
) -> Callable[[], AbstractContextManager[LoadRun]]:
    """A ``DrillOptions.background`` factory: ``users`` EMR users through HAProxy 5000/5001 for the drill."""
    cfg = LoadConfig(users=users, spawn_rate=float(users), duration_s=max_seconds, dsn_rw=settings.dsn("rw", "app"),
                     dsn_ro=settings.dsn("ro", "ro"), reports_dir=settings.reports_dir, profile=profile,
                     cluster=settings, progress_every_s=15.0).validated()

    def factory() -> AbstractContextManager[LoadRun]:
        return background(cfg, progress)

    return factory
