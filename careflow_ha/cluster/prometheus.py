"""A small client for Prometheus' HTTP API on the monitoring host (published on 127.0.0.1).

Reports ask it for the server's side of a run (lag, TPS, connections, WAL
rate) over the run's time range. Metrics are an addition to a report, never a
condition for it: every failure (mon1 down, a timeout, an error answer,
something that is not Prometheus' JSON) comes back as a result that says
"server metrics unavailable" and why, never as an exception, and never as an
empty series that a chart would draw as zero. Every request is bounded by a
timeout; nothing retries.

Uses urllib (no extra dependency), like ``careflow_ha.cluster.patroni``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from careflow_ha.settings import Settings

#: What a report prints in place of the panels when Prometheus cannot answer.
UNAVAILABLE = "server metrics unavailable"
#: Prometheus refuses a range query of more than 11,000 points per series.
MAX_POINTS = 11_000

Opener = Callable[..., Any]


@dataclass(frozen=True)
class Series:
    """One time series of a range query: its labels and (unix seconds, value) points (a value may be NaN)."""

    labels: Mapping[str, str]
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class RangeResult:
    """A range query's answer, or why there is none (``unavailable``, a one-line reason)."""

    query: str
    series: tuple[Series, ...] = ()
    unavailable: str | None = None
    warnings: tuple[str, ...] = field(default=())

    @property
    def available(self) -> bool:
        return self.unavailable is None

    @property
    def note(self) -> str:
        """What a report says in place of a panel: empty when there is data to draw."""
        if self.unavailable is not None:
            return f"{UNAVAILABLE}: {self.unavailable}"
        return "" if self.series else f"no samples for {self.query}"


class PrometheusClient:
    """Range queries (and a readiness check) against one Prometheus, each bounded by ``timeout_s``.

    ``opener`` is ``urllib.request.urlopen`` (tests replace it or point the
    client at a fake server on loopback: the HTTP boundary).
    """

    def __init__(self, base_url: str, timeout_s: float = 5.0, opener: Opener | None = None) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._open = opener or urllib.request.urlopen

    def __repr__(self) -> str:
        return f"PrometheusClient({self.base_url!r}, timeout_s={self.timeout_s})"

    def ready(self) -> bool:
        """True when Prometheus answers ``/-/ready`` with 200 within the timeout."""
        try:
            with self._open(f"{self.base_url}/-/ready", timeout=self.timeout_s) as resp:
                return resp.status == 200
        except (OSError, ValueError):  # URLError, HTTPError, timeouts and resets are OSErrors
            return False

    def range_query(self, query: str, start: float, end: float, step_s: float) -> RangeResult:
        """``query`` evaluated every ``step_s`` from ``start`` to ``end`` (unix seconds).

        A range too long for the step is refused before any request: Prometheus
        would answer an error, and the report should say which knob to turn.
        """
        if end < start or step_s <= 0:
            raise ValueError(f"need start <= end and a positive step (got {start}..{end}, step {step_s})")
        if (end - start) / step_s + 1 > MAX_POINTS:
            raise ValueError(f"{(end - start) / step_s + 1:.0f} points per series; Prometheus allows {MAX_POINTS}: "
                             "use a larger step")
        params = {"query": query, "start": _ts(start), "end": _ts(end), "step": _ts(step_s)}
        data, why, warnings = self._get("/api/v1/query_range", params)
        if why is not None:
            return RangeResult(query, unavailable=why)
        if data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
            return RangeResult(query, unavailable=f"unexpected answer (resultType {data.get('resultType')!r})")
        try:
            series = tuple(
                Series(MappingProxyType(dict(s.get("metric") or {})),
                       # values come as strings ("1", "NaN", "+Inf"): float() reads them all
                       tuple((float(t), float(v)) for t, v in s.get("values") or []))
                for s in data["result"]
            )
        except (TypeError, ValueError, AttributeError):
            return RangeResult(query, unavailable="unexpected answer (malformed samples)")
        return RangeResult(query, series, warnings=warnings)

    def _get(self, path: str, params: Mapping[str, str]) -> tuple[dict[str, Any], str | None, tuple[str, ...]]:
        """(data, None, warnings) from an answer with status success, else ({}, why, ())."""
        url = f"{self.base_url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with self._open(url, timeout=self.timeout_s) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:  # Prometheus explains a 400/422/503 in the JSON body
            return {}, f"Prometheus answered HTTP {exc.code}{_error_of(exc)}", ()
        except urllib.error.URLError as exc:
            return {}, f"cannot reach Prometheus at {self.base_url} ({_reason(exc.reason)})", ()
        except TimeoutError:
            return {}, f"Prometheus at {self.base_url} did not answer within {self.timeout_s:g}s", ()
        except OSError as exc:  # a reset or a half-closed connection while reading
            return {}, f"cannot reach Prometheus at {self.base_url} ({_reason(exc)})", ()
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return {}, "unexpected answer (not JSON): is that Prometheus?", ()
        if not isinstance(doc, dict) or doc.get("status") != "success" or not isinstance(doc.get("data"), dict):
            error = doc.get("error") if isinstance(doc, dict) else None
            return {}, f"query failed ({error or 'no data in the answer'})", ()
        return doc["data"], None, tuple(str(w) for w in doc.get("warnings") or ())


def _ts(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def _reason(reason: Any) -> str:
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__


def _error_of(exc: urllib.error.HTTPError) -> str:
    try:
        doc = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        return ""
    error = doc.get("error") if isinstance(doc, dict) else None
    return f": {error}" if error else ""


def for_settings(settings: Settings, timeout_s: float = 5.0) -> PrometheusClient:
    """The lab's Prometheus, on the port docker-compose.yml publishes on 127.0.0.1."""
    return PrometheusClient(settings.prometheus_url, timeout_s=timeout_s)
