"""Bounded polling of Patroni's ``GET /cluster`` during a drill, and the role changes it shows.

The snapshots are the raw material for "leader key expired", "promoted" and
"old primary streams again" on the timeline. Polling asks the node that last
answered first, so a dead or partitioned node costs one timeout, not one per poll.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from careflow_ha.drills.model import ClusterSnapshot, TimelineEvent
from careflow_ha.drills.probes import BoundedLoop
from careflow_ha.errors import NotReady


class ClusterPoller(BoundedLoop):
    """Record a :class:`ClusterSnapshot` every ``interval_s`` (polls that find no API are counted, not fatal)."""

    def __init__(
        self,
        fetch: Callable[[], ClusterSnapshot],
        *,
        interval_s: float = 0.5,
        max_seconds: float = 900.0,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__("drill-cluster-poller", interval_s, max_seconds, int(max_seconds / interval_s) + 1)
        self._fetch = fetch
        self._snapshots: list[ClusterSnapshot] = []
        self._on_change = on_change
        self.missed = 0

    @property
    def snapshots(self) -> tuple[ClusterSnapshot, ...]:
        with self._lock:
            return tuple(self._snapshots)

    def latest(self) -> ClusterSnapshot | None:
        with self._lock:
            return self._snapshots[-1] if self._snapshots else None

    def once(self, n: int) -> None:
        try:
            snap = self._fetch()
        except (NotReady, OSError, ValueError):
            self.missed += 1
            return
        with self._lock:
            previous = self._snapshots[-1] if self._snapshots else None
            self._snapshots.append(snap)
        if self._on_change is not None and previous is not None:
            for line in describe_changes(previous, snap):
                self._on_change(line)


def describe_changes(before: ClusterSnapshot, after: ClusterSnapshot) -> tuple[str, ...]:
    """Human lines for what changed between two snapshots (progress output while a drill runs)."""
    lines = []
    if before.leader != after.leader:
        lines.append(f"leader: {before.leader or 'none'} -> {after.leader or 'none'}")
    names = sorted({m.name for m in before.members} | {m.name for m in after.members})
    for name in names:
        a, b = before.member(name), after.member(name)
        was = f"{a.role}/{a.state}" if a else "absent"
        now = f"{b.role}/{b.state}" if b else "absent"
        if was != now:
            lines.append(f"{name}: {was} -> {now}")
    return tuple(lines)


def role_change_events(snapshots: Iterable[ClusterSnapshot]) -> tuple[TimelineEvent, ...]:
    """Every member role/state change as a timeline event (kind 'role')."""
    out: list[TimelineEvent] = []
    ordered = sorted(snapshots, key=lambda s: s.at)
    for before, after in zip(ordered, ordered[1:], strict=False):
        out.extend(TimelineEvent(after.at, "role", line) for line in describe_changes(before, after))
    return tuple(out)
