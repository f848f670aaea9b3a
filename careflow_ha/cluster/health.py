"""The running cluster as clients see it: Patroni's view plus HAProxy's routing.

Healthy means: one running leader, every other member a streaming replica on
the leader's timeline, one sync standby when synchronous_mode is on, and
HAProxy routing 5000 to exactly the leader and 5001 to exactly the replicas.
"""

from __future__ import annotations

import base64
import csv
import io
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from careflow_ha.cluster.model import ClusterSnapshot
from careflow_ha.cluster.patroni import PatroniApi
from careflow_ha.errors import NotReady
from careflow_ha.settings import HAPROXY_STATS_USER, Settings

RW_PROXY = "primary"
RO_PROXY = "replicas"


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


@dataclass(frozen=True)
class Backend:
    """One server line of HAProxy's stats: which proxy, which node, UP/DOWN."""

    proxy: str
    server: str
    status: str
    check: str


def parse_haproxy_csv(text: str) -> tuple[Backend, ...]:
    """Server rows of HAProxy's ``;csv`` stats (frontend/backend summary rows dropped)."""
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return tuple(
        Backend(r["pxname"], r["svname"], r["status"], r.get("check_status", ""))
        for r in rows
        if r.get("svname") not in (None, "FRONTEND", "BACKEND") and r.get("pxname") in (RW_PROXY, RO_PROXY)
    )


def haproxy_backends(settings: Settings, timeout: float = 3.0, host: str | None = None,
                     port: int | None = None) -> tuple[Backend, ...]:
    """HAProxy's server states from its stats page (basic auth from .env): the published one, or the
    balancer at ``host:port`` (a switchover asks each balancer)."""
    host = host or settings.host
    port = port or settings.port("CAREFLOW_STATS_PORT")
    ca_file = settings.routing.stats_tls_ca_file
    req = urllib.request.Request(f"{'https' if ca_file else 'http'}://{host}:{port}/;csv")
    token = f"{HAPROXY_STATS_USER}:{settings.secrets['CAREFLOW_HAPROXY_STATS_PASSWORD']}"
    req.add_header("Authorization", "Basic " + base64.b64encode(token.encode()).decode())
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return parse_haproxy_csv(resp.read().decode())
    except (OSError, urllib.error.URLError) as exc:
        raise NotReady(f"HAProxy stats on {host}:{port} did not answer: {exc}") from None


def routing_problems(snap: ClusterSnapshot, backends: tuple[Backend, ...]) -> tuple[str, ...]:
    """Where HAProxy's routing disagrees with Patroni's roles (empty when it agrees)."""
    leader = {m.name for m in snap.members if m.is_leader}
    replicas = {m.name for m in snap.members if m.is_streaming_replica}
    rw_up = {b.server for b in backends if b.proxy == RW_PROXY and b.status == "UP"}
    ro_up = {b.server for b in backends if b.proxy == RO_PROXY and b.status == "UP"}
    problems = []
    if rw_up != leader:
        problems.append(f"HAProxy :5000 routes to {sorted(rw_up) or 'nothing'}, leader is {sorted(leader)}")
    if ro_up != replicas:
        problems.append(f"HAProxy :5001 routes to {sorted(ro_up) or 'nothing'}, replicas are {sorted(replicas)}")
    return tuple(problems)


@dataclass(frozen=True)
class ClusterStatus:
    snapshot: ClusterSnapshot
    backends: tuple[Backend, ...]
    problems: tuple[str, ...]

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {
            "healthy": self.healthy,
            "problems": list(self.problems),
            "members": [
                {"member": m.name, "role": m.role, "state": m.state, "timeline": m.timeline, "lag": m.lag}
                for m in self.snapshot.members
            ],
            "haproxy": [
                {"proxy": b.proxy, "server": b.server, "status": b.status, "check": b.check} for b in self.backends
            ],
        }


def cluster_status(settings: Settings, synchronous: bool | None = None) -> ClusterStatus:
    """Patroni's and HAProxy's views, and what keeps them from healthy."""
    api = PatroniApi(settings)
    snap = api.cluster()
    if synchronous is None:
        synchronous = bool(api.config().get("synchronous_mode", False))
    try:
        backends = haproxy_backends(settings)
        routing = routing_problems(snap, backends)
    except NotReady as exc:
        backends, routing = (), (str(exc),)
    return ClusterStatus(snap, backends, health_problems(snap, synchronous) + routing)


def wait_healthy(
    settings: Settings, progress: Callable[[str], None], timeout_s: float = 180, synchronous: bool | None = None
) -> ClusterStatus:
    """Poll until the cluster is healthy (see module docstring) or raise NotReady at the deadline.

    The sync standby appears one Patroni loop after replicas stream, so this
    waits for it rather than failing early.
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            status = cluster_status(settings, synchronous)
        except NotReady as exc:
            reason = str(exc)
        else:
            if status.healthy:
                return status
            reason = "; ".join(status.problems)
        if reason != last:
            progress(f"cluster: waiting: {reason}")
            last = reason
        time.sleep(1)
    raise NotReady(f"the cluster was not healthy within {timeout_s:.0f}s: {last}. See `careflow-ha status`")
