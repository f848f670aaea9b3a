"""Bounded polling of Patroni's ``GET /cluster`` while a drill or a load run goes on, and the role changes it shows.

The snapshots are the raw material for "leader key expired", "promoted" and
"old primary streams again" on the timeline. Polling asks the node that last
answered first, so a dead or partitioned node costs one timeout, not one per poll.
``BoundedLoop`` is the thread every poller and probe is built on: each loop
is bounded in time and in count, so none can outlive its run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from careflow_ha.cluster.model import ClusterSnapshot, TimelineEvent
from careflow_ha.errors import NotReady


class BoundedLoop(threading.Thread):
    """A probe thread: one operation per ``interval_s``, at most ``max_ops`` and ``max_seconds``.

    When an operation overruns its slot the schedule restarts from now (no
    catch-up burst after an outage).
    """

    def __init__(self, name: str, interval_s: float, max_seconds: float, max_ops: int) -> None:
        super().__init__(name=name, daemon=True)
        if interval_s <= 0 or max_seconds <= 0 or max_ops <= 0:
            raise ValueError("probe interval, time and count bounds must be positive")
        self.interval_s = interval_s
        self.max_seconds = max_seconds
        self.max_ops = max_ops
        self._halt = threading.Event()
        self._lock = threading.Lock()
        #: An unexpected exception that ended the loop (a bug), for the caller to raise.
        self.failure: Exception | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        next_at = time.monotonic()
        try:
            self._loop(deadline, next_at)
        except Exception as exc:  # noqa: BLE001 - kept for the caller: a probe bug must not pass silently
            self.failure = exc
        finally:
            self.close()

    def _loop(self, deadline: float, next_at: float) -> None:
        for n in range(self.max_ops):
            if self._halt.is_set() or time.monotonic() >= deadline:
                break
            self.once(n)
            next_at += self.interval_s
            now = time.monotonic()
            if next_at < now:
                next_at = now
            self._halt.wait(min(next_at - now, max(deadline - now, 0.0)))

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the loop to end and wait for it (an operation in flight finishes within its timeouts)."""
        self._halt.set()
        if self.is_alive():
            self.join(timeout)

    def once(self, n: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; called once when the loop ends."""



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
