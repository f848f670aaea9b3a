"""What a drill needs from the cluster (``ClusterControl``), and its implementation over Patroni's REST API.

The interface is deliberately small: :class:`PatroniRestControl` implements
it over the shared Patroni client (``careflow_ha.cluster.patroni``) with ``PATCH /config`` (ttl,
loop_wait, retry_timeout and synchronous_mode are dynamic configuration, so
no restart is needed) and by polling ``GET /cluster``.

HAProxy's check timing is part of provisioning, not of this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from careflow_ha.cluster.health import health_problems
from careflow_ha.cluster.model import ClusterSnapshot, HistoryEntry
from careflow_ha.cluster.patroni import PatroniApi
from careflow_ha.cluster.timing import Timing, timing_preset
from careflow_ha.errors import NotReady


class ClusterControl(Protocol):
    """The cluster operations a drill relies on. Every wait has a deadline; none sleeps blindly."""

    def topology(self) -> ClusterSnapshot:
        """The members, roles, states and timelines as Patroni reports them now.

        Raises NotReady when no member's REST API answers.
        """
        ...

    def history(self) -> tuple[HistoryEntry, ...]:
        """Patroni's timeline history (one entry per promotion), oldest first."""
        ...

    def timing(self) -> Timing:
        """The ttl / loop_wait / retry_timeout currently in the dynamic configuration."""
        ...

    def synchronous_mode(self) -> bool:
        """Whether ``synchronous_mode`` is on in the dynamic configuration."""
        ...

    def set_timing_preset(self, name: str) -> Timing:
        """Apply the named preset to the running cluster (no restart) and return it.

        Returns once the leader holds its lease under the new timing, so a
        drill never measures the previous preset. Raises UsageError for an
        unknown name.
        """
        ...

    def set_synchronous_mode(self, enabled: bool) -> None:
        """Turn ``synchronous_mode`` on or off in the running cluster (no restart)."""
        ...

    def failsafe_mode(self) -> bool:
        """Whether Patroni's ``failsafe_mode`` is on in the dynamic configuration."""
        ...

    def set_failsafe_mode(self, enabled: bool) -> None:
        """Turn ``failsafe_mode`` on or off in the running cluster; returns once the leader runs with it."""
        ...

    def wait_healthy(self, timeout: float) -> ClusterSnapshot:
        """Block until the cluster is healthy, or raise NotReady naming what is missing.

        Healthy: one leader running; every other expected member a streaming
        replica on the leader's timeline; and, when synchronous_mode is on, one
        of them the sync standby.
        """
        ...

    def switchover(self, leader: str, candidate: str | None, timeout: float) -> None:
        """A planned switchover from ``leader`` (to ``candidate`` if given); returns once Patroni reports it done."""
        ...


class PatroniRestControl:
    """:class:`ClusterControl` over Patroni's REST API (GET unauthenticated, PATCH/POST with basic auth)."""

    def __init__(
        self,
        api: PatroniApi,
        expected_members: int = 3,
        poll_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        haproxy_preset: Callable[[str], None] | None = None,
    ) -> None:
        """``haproxy_preset(name)``, when given, applies HAProxy's half of a timing preset (check
        inter/fastinter/fall/rise, owned by provisioning); without it only Patroni's half changes."""
        self.api = api
        self.haproxy_preset = haproxy_preset
        self.expected_members = expected_members
        self.poll_s = poll_s
        self._clock = clock
        self._sleep = sleep

    def topology(self) -> ClusterSnapshot:
        return self.api.cluster()

    def history(self) -> tuple[HistoryEntry, ...]:
        return self.api.history()

    def timing(self) -> Timing:
        cfg = self.api.config()
        return Timing(int(cfg.get("ttl", 30)), int(cfg.get("loop_wait", 10)), int(cfg.get("retry_timeout", 10)))

    def synchronous_mode(self) -> bool:
        return bool(self.api.config().get("synchronous_mode", False))

    def set_timing(self, timing: Timing) -> Timing:
        """Apply ``timing`` and return once the leader's lease runs on it (a no-op when already in place).

        Patroni applies new dynamic config at the end of a loop and writes the
        leader key with the new TTL in the next one; a drill started earlier
        would still meet the old lease. So this waits for two leader loops that
        started after the change (the PATCH goes to the leader, which wakes up at once).
        """
        old = self.timing()
        if old == timing:
            return timing
        leader = self.topology().leader
        patched_at = int(time.time())
        patch = {"ttl": timing.ttl, "loop_wait": timing.loop_wait, "retry_timeout": timing.retry_timeout}
        self.api.patch_config(patch, first=leader)
        if leader is not None:
            self._wait_leader_loops(leader, patched_at, loops=2, timeout=2 * (old.loop_wait + timing.loop_wait) + 30)
        return timing

    def _wait_leader_loops(self, leader: str, after: int, loops: int, timeout: float) -> None:
        seen: set[int] = set()
        deadline = self._clock() + timeout
        for _ in range(int(timeout / self.poll_s) + 2):
            value = self.api.dcs_last_seen(leader)
            if value is not None and value > after:
                seen.add(value)
            if len(seen) >= loops:
                return
            if self._clock() >= deadline:
                break
            self._sleep(self.poll_s)
        raise NotReady(f"leader {leader} did not run {loops} HA loops on the new timing within {timeout:.0f}s")

    def set_timing_preset(self, name: str) -> Timing:
        timing = self.set_timing(timing_preset(name))
        if self.haproxy_preset is not None:
            self.haproxy_preset(name)
        return timing

    def set_synchronous_mode(self, enabled: bool) -> None:
        if self.synchronous_mode() != enabled:  # leave the DCS alone when nothing changes
            self.api.patch_config({"synchronous_mode": enabled}, first=self.topology().leader)

    def failsafe_mode(self) -> bool:
        return bool(self.api.config().get("failsafe_mode", False))

    def set_failsafe_mode(self, enabled: bool) -> None:
        if self.failsafe_mode() == enabled:
            return
        leader = self.topology().leader
        patched_at = int(time.time())
        self.api.patch_config({"failsafe_mode": enabled}, first=leader)
        if leader is not None:  # the leader reads it at the end of a loop; a drill started earlier would not see it
            loop_wait = self.timing().loop_wait
            self._wait_leader_loops(leader, patched_at, loops=2, timeout=4 * loop_wait + 30)

    def wait_healthy(self, timeout: float) -> ClusterSnapshot:
        synchronous = self.synchronous_mode()
        deadline = self._clock() + timeout
        last: tuple[str, ...] = ("no answer yet",)
        polls = int(timeout / self.poll_s) + 2  # the loop is bounded in count as well as time
        for _ in range(polls):
            try:
                snap = self.topology()
                last = health_problems(snap, synchronous, self.expected_members)
                if not last:
                    return snap
            except NotReady as exc:
                last = (str(exc),)
            if self._clock() >= deadline:
                break
            self._sleep(self.poll_s)
        raise NotReady(f"cluster not healthy within {timeout:.0f}s: {'; '.join(last)}")

    def switchover(self, leader: str, candidate: str | None, timeout: float = 60.0) -> None:
        self.api.switchover(leader, candidate, timeout=timeout)
