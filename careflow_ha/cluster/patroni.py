"""A small client for Patroni's REST API on the lab's published ports (127.0.0.1:8011-8013).

The one Patroni client (``status``, ``up``, drills, load runs and benchmarks
share it): ``GET /cluster``, ``/history``, ``/config``, and the
authenticated ``PATCH /config`` and ``POST /switchover``. Uses urllib (no
extra dependency). The basic-auth password is sent in a header and never
appears in a message, an exception or a report.
"""

from __future__ import annotations

import base64
import functools
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from careflow_ha.cluster.model import ClusterSnapshot, HistoryEntry, Member
from careflow_ha.errors import CommandFailed, NotReady
from careflow_ha.settings import PATRONI_API_USER, PG_NODES, Settings

Opener = Callable[..., Any]


def parse_cluster(data: dict[str, Any], at: float, source: str = "") -> ClusterSnapshot:
    """A :class:`ClusterSnapshot` from the JSON of ``GET /cluster``."""
    members = []
    for m in data.get("members") or []:
        lag = m.get("lag")
        members.append(
            Member(
                name=str(m.get("name", "")),
                role=str(m.get("role", "")),
                state=str(m.get("state", "")),
                timeline=m.get("timeline") if isinstance(m.get("timeline"), int) else None,
                lag=lag if isinstance(lag, int) else None,  # "unknown" while a replica catches up
            )
        )
    return ClusterSnapshot(at, tuple(sorted(members, key=lambda m: m.name)), source)


def _parse_ts(raw: Any) -> float | None:
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return datetime.fromisoformat(raw).timestamp()
    except ValueError:
        return None


def parse_history(lines: Sequence[Sequence[Any]]) -> tuple[HistoryEntry, ...]:
    """Entries of ``GET /history``: ``[timeline, lsn, reason, timestamp, new_leader]`` (the last two optional)."""
    out = []
    for line in lines or []:
        if len(line) < 3:
            continue
        out.append(
            HistoryEntry(
                timeline=int(line[0]),
                lsn=int(line[1]),
                reason=str(line[2]),
                at=_parse_ts(line[3]) if len(line) > 3 else None,
                new_leader=str(line[4]) if len(line) > 4 and line[4] else None,
            )
        )
    return tuple(out)


def _unreachable(exc: Exception) -> str:
    """Why a node's API did not answer, short; a certificate problem by name (a wrong CA is a user error)."""
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({reason.verify_message}; is careflow_tls_dir/ca.crt the nodes' CA?)"
    return type(exc).__name__


def _urlopen_trusting(ca_file: str, request: Any, **kw: Any) -> Any:
    """urlopen verifying against ``ca_file`` as it is now: read on every request, not once, because a CA
    rotation (``certs rotate --ca``) replaces it under a running drill or watch, and a context made before
    would trust only the retired CA."""
    return urllib.request.urlopen(request, context=ssl.create_default_context(cafile=ca_file), **kw)


class PatroniApi:
    """Patroni's REST API on every PG node, asked one node at a time.

    ``opener`` is ``urllib.request.urlopen`` (tests replace it: it is the HTTP boundary).
    """

    def __init__(
        self,
        settings: Settings,
        nodes: Sequence[str] = PG_NODES,
        timeout: float = 2.0,
        opener: Opener | None = None,
    ) -> None:
        self._settings = settings
        self.nodes = tuple(nodes)
        self.timeout = timeout
        ca_file = settings.routing.api_tls_ca_file
        self._scheme = "https" if ca_file else "http"
        if opener is None and ca_file:  # verify the nodes' certificates (they carry 127.0.0.1: published ports)
            opener = functools.partial(_urlopen_trusting, ca_file)
        self._open = opener or urllib.request.urlopen
        self._preferred = self.nodes[0]

    def url(self, node: str, path: str) -> str:
        return f"{self._scheme}://{self._settings.host}:{self._settings.node_port(node, 'API')}{path}"

    def _auth_header(self) -> str:
        password = self._settings.secrets["CAREFLOW_PATRONI_API_PASSWORD"]
        token = base64.b64encode(f"{PATRONI_API_USER}:{password}".encode()).decode()
        return f"Basic {token}"

    def request(
        self, node: str, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None
    ) -> tuple[int, Any]:
        """One request to one node: (HTTP status, parsed JSON or text). Raises OSError if unreachable."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url(node, path), data=data, method=method)
        if method != "GET":
            req.add_header("Authorization", self._auth_header())
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with self._open(req, timeout=timeout or self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:  # health-style answers (503, 412, ...) still carry a body
            status, raw = exc.code, exc.read() or b""
        text = raw.decode("utf-8", "replace")
        try:
            return status, json.loads(text) if text else None
        except json.JSONDecodeError:
            return status, text.strip()

    def get_any(self, path: str, timeout: float | None = None) -> tuple[str, Any]:
        """GET ``path`` from the first node that answers 200, starting with the last one that did.

        Raises NotReady when none answers (all down, or all partitioned away).
        """
        order = [self._preferred, *[n for n in self.nodes if n != self._preferred]]
        problems = []
        for node in order:
            try:
                status, data = self.request(node, "GET", path, timeout=timeout)
            except (OSError, ValueError) as exc:
                problems.append(f"{node}: {_unreachable(exc)}")
                continue
            if status == 200:
                self._preferred = node
                return node, data
            problems.append(f"{node}: HTTP {status}")
        raise NotReady(
            f"no Patroni REST API answered GET {path} ({'; '.join(problems)}); "
            "is the cluster up? See `careflow-ha status`"
        )

    def cluster(self, timeout: float | None = None) -> ClusterSnapshot:
        """``GET /cluster`` (the DCS view: members, roles, states, timelines) from any member."""
        source, data = self.get_any("/cluster", timeout)
        return parse_cluster(data if isinstance(data, dict) else {}, time.time(), source)

    def history(self) -> tuple[HistoryEntry, ...]:
        """``GET /history``: one entry per promotion."""
        _, data = self.get_any("/history")
        return parse_history(data if isinstance(data, list) else [])

    def config(self) -> dict[str, Any]:
        """``GET /config``: the dynamic configuration stored in the DCS."""
        _, data = self.get_any("/config")
        return data if isinstance(data, dict) else {}

    def patch_config(self, patch: dict[str, Any], first: str | None = None) -> dict[str, Any]:
        """PATCH the dynamic configuration (stored in etcd) through any reachable node, ``first`` first.

        The node that takes the PATCH runs its HA loop at once; sending it to
        the leader makes the leader pick the change up without waiting a loop.
        """
        problems = []
        order = [first, *[n for n in self.nodes if n != first]] if first in self.nodes else list(self.nodes)
        for node in order:
            try:
                status, data = self.request(node, "PATCH", "/config", patch)
            except (OSError, ValueError) as exc:
                problems.append(f"{node}: {type(exc).__name__}")
                continue
            if status == 200 and isinstance(data, dict):
                return data
            if status == 401:
                raise CommandFailed(
                    "Patroni refused the REST API credentials (HTTP 401); check CAREFLOW_PATRONI_API_PASSWORD in .env"
                )
            problems.append(f"{node}: HTTP {status} {str(data)[:120]}")
        raise CommandFailed(f"PATCH /config failed on every node ({'; '.join(problems)})")

    def dcs_last_seen(self, node: str) -> int | None:
        """When ``node``'s Patroni last read the DCS (epoch seconds; once per HA loop), or None if unknown."""
        try:
            status, data = self.request(node, "GET", "/patroni")
        except (OSError, ValueError):
            return None
        value = data.get("dcs_last_seen") if status == 200 and isinstance(data, dict) else None
        return value if isinstance(value, int) else None

    def switchover(self, leader: str, candidate: str | None, timeout: float = 60.0) -> str:
        """POST /switchover to the leader; returns Patroni's answer. Patroni answers once it is done."""
        body: dict[str, Any] = {"leader": leader}
        if candidate:
            body["candidate"] = candidate
        status, data = self.request(leader, "POST", "/switchover", body, timeout=timeout)
        if status == 503 and "status unknown" in str(data):
            # Patroni stopped waiting for the result, but the switchover is under way; the drill observes the rest.
            return str(data)
        if status != 200:
            raise CommandFailed(f"switchover {leader} -> {candidate or 'any'} refused: HTTP {status} {str(data)[:200]}")
        return str(data)
