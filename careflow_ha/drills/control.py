"""What a drill needs from the cluster (``ClusterControl``), and its implementation over Patroni's REST API.

The interface is deliberately small so that the cluster work
(``careflow_ha.cluster``) can provide its own implementation later; until
then :class:`PatroniRestControl` implements it with ``PATCH /config`` (ttl,
loop_wait, retry_timeout and synchronous_mode are dynamic configuration, so
no restart is needed) and by polling ``GET /cluster``.

HAProxy's check timing is part of provisioning, not of this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from careflow_ha.drills.model import ClusterSnapshot, HistoryEntry
from careflow_ha.drills.patroni import PatroniApi
from careflow_ha.errors import NotReady, UsageError


@dataclass(frozen=True)
class Timing:
    """Patroni's leader-lease timing (seconds). Patroni requires loop_wait + 2 * retry_timeout <= ttl."""

    ttl: int
    loop_wait: int
    retry_timeout: int

    def __post_init__(self) -> None:
        if self.loop_wait + 2 * self.retry_timeout > self.ttl:
            raise UsageError(f"timing {self} breaks Patroni's rule loop_wait + 2*retry_timeout <= ttl")


#: The Patroni half of each timing preset (HAProxy's half is in provisioning).
#: ``default`` is Patroni's own defaults. ``fast`` keeps the 20 s lease (the
#: floor we accept: shorter leases fail over on a busy 2-core box for nothing)
#: but runs the HA loop every 2 s, so the replicas notice the expired lease and
#: promote sooner than the common (20, 5, 5) preset.
TIMING_PRESETS: Mapping[str, Timing] = MappingProxyType(
    {
        "default": Timing(ttl=30, loop_wait=10, retry_timeout=10),
        "fast": Timing(ttl=20, loop_wait=2, retry_timeout=5),
    }
)


def timing_preset(name: str) -> Timing:
    """The preset called ``name``, or a UsageError listing the valid names."""
    try:
        return TIMING_PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown timing preset {name!r}; use one of: {', '.join(TIMING_PRESETS)}") from None


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


def health_problems(snap: ClusterSnapshot, synchronous: bool, expected_members: int = 3) -> tuple[str, ...]:
    """What keeps ``snap`` from being healthy (empty when healthy). Pure, so it is unit-tested."""
    problems: list[str] = []
    leaders = [m for m in snap.members if m.is_leader]
    if len(leaders) != 1:
        problems.append(f"{len(leaders)} leaders (want 1)")
        return tuple(problems)
    leader = leaders[0]
    if leader.state != "running":
        problems.append(f"leader {leader.name} is {leader.state or 'in an unknown state'}")
    others = [m for m in snap.members if not m.is_leader]
    streaming = [m for m in others if m.is_streaming_replica]
    if len(snap.members) != expected_members:
        problems.append(f"{len(snap.members)} members registered (want {expected_members})")
    for m in others:
        if not m.is_streaming_replica:
            problems.append(f"{m.name} is {m.role}/{m.state or '?'} (want a streaming replica)")
        elif leader.timeline is not None and m.timeline is not None and m.timeline != leader.timeline:
            problems.append(f"{m.name} is on timeline {m.timeline}, leader on {leader.timeline}")
    if len(streaming) != expected_members - 1 and not problems:
        problems.append(f"{len(streaming)} streaming replicas (want {expected_members - 1})")
    if synchronous and len(snap.sync_standbys) != 1:
        problems.append(f"{len(snap.sync_standbys)} sync standbys (want 1: synchronous_mode is on)")
    if not synchronous and snap.sync_standbys:
        problems.append("a sync standby is still listed although synchronous_mode is off")
    return tuple(problems)


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
