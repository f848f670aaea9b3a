"""What a load run's per-request log says: per-operation figures, time series, outages, read routing.

Pure functions over :class:`Request` rows (read from the ``requests-*.csv``
files every Locust process writes). Outages come from these rows, not from
Locust's 10-second sliding-window percentiles: an outage on an endpoint is a
run of failed requests (a connect or lost-connection error among them) with
no success in between, measured from the last success before it to the first
success after it (completion times).
"""

from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from careflow_ha.data.stats import percentile

#: Error kinds that mean the server or the route was gone (not a bad query).
OUTAGE_KINDS = frozenset({"connect", "lost"})


@dataclass(frozen=True)
class Request:
    """One row of the per-request log."""

    ts: float  # wall-clock start
    op: str
    endpoint: str  # rw or ro
    user: int
    ok: bool
    latency_ms: float
    server: str
    recovery: bool | None  # the answering server was a standby (None: unknown, no connection)
    error: str = ""

    @property
    def done(self) -> float:
        return self.ts + self.latency_ms / 1000.0

    @property
    def kind(self) -> str:
        return self.error.split(":", 1)[0] if self.error else ""


@dataclass(frozen=True)
class Outage:
    """Failures on one endpoint that belong together (each within ``join_s`` of the previous one).

    ``start``/``end``: the endpoint's last success before the first failure and
    first success after the last one (completion times; ``end`` None if the run
    ended first). ``gap_s``: the longest time inside that window in which the
    endpoint answered nobody, i.e. the outage every client saw; when only some
    connections broke (one replica of two lost) it stays near the normal gap
    between requests. ``worst_user_s``: the longest one user went from its last
    success to its next one.
    """

    endpoint: str
    start: float
    end: float | None
    failures: int
    users: int
    first_error: str
    gap_s: float | None
    worst_user_s: float | None

    @property
    def seconds(self) -> float | None:
        return None if self.end is None else self.end - self.start


def read_requests(run_dir: Path) -> list[Request]:
    """Every request logged by every Locust process of the run, in start order."""
    rows: list[Request] = []
    for path in sorted(run_dir.glob("requests-*.csv")):
        with path.open(newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                try:
                    rows.append(Request(
                        ts=float(r["ts"]), op=r["op"], endpoint=r["endpoint"], user=int(r["user"]),
                        ok=r["ok"] == "1", latency_ms=float(r["latency_ms"]), server=r["server"],
                        recovery=None if r["recovery"] == "" else r["recovery"] == "1", error=r["error"] or ""))
                except (KeyError, ValueError, TypeError):
                    continue  # a line cut short when a process was killed
    rows.sort(key=lambda q: q.ts)
    return rows


def per_operation(rows: Iterable[Request], seconds: float) -> list[dict]:
    """Count, failures and latency percentiles of successful requests, per operation."""
    by_op: dict[str, list[Request]] = defaultdict(list)
    for r in rows:
        by_op[r.op].append(r)
    out = []
    for op in sorted(by_op):
        reqs = by_op[op]
        lat = [r.latency_ms for r in reqs if r.ok]
        fails = sum(1 for r in reqs if not r.ok)
        out.append({
            "op": op, "endpoint": reqs[0].endpoint, "requests": len(reqs), "failures": fails,
            "rps": round(len(reqs) / seconds, 2) if seconds > 0 else None,
            **{f"p{q}_ms": _round(percentile(lat, q)) for q in (50, 95, 99)},
            "max_ms": _round(max(lat) if lat else None),
        })
    return out


def _round(v: float | None, nd: int = 1) -> float | None:
    return None if v is None else round(v, nd)


def outages(rows: Sequence[Request], endpoint: str, join_s: float = 2.0) -> list[Outage]:
    """Groups of failures on ``endpoint`` that include a lost route (connect or lost-connection errors)."""
    reqs = sorted((r for r in rows if r.endpoint == endpoint), key=lambda r: r.done)
    fails = [r for r in reqs if not r.ok]
    groups: list[list[Request]] = []
    for r in fails:
        if groups and r.done - groups[-1][-1].done <= join_s:
            groups[-1].append(r)
        else:
            groups.append([r])
    oks = [r.done for r in reqs if r.ok]
    found = []
    for g in groups:
        if not any(r.kind in OUTAGE_KINDS for r in g):
            continue  # failed queries on a healthy route are errors, not an outage
        first, last = g[0].done, g[-1].done
        before = [t for t in oks if t < first]
        after = [t for t in oks if t > last]
        start = before[-1] if before else g[0].ts
        end = after[0] if after else None
        inside = [start, *[t for t in oks if start < t < (end if end is not None else last)]]
        inside.append(end if end is not None else last)
        gap = max(b - a for a, b in zip(inside, inside[1:], strict=False)) if len(inside) > 1 else None
        found.append(Outage(endpoint, start, end, len(g), len({r.user for r in g}), g[0].error,
                            gap if end is not None else None, _worst_user_gap(reqs, g)))
    return found


def _worst_user_gap(reqs: Sequence[Request], group: Sequence[Request]) -> float | None:
    """For the users that failed in ``group``: the longest last-success-to-next-success time."""
    worst: float | None = None
    for user in {r.user for r in group}:
        mine = [r for r in reqs if r.user == user]
        f0, f1 = min(r.done for r in group if r.user == user), max(r.done for r in group if r.user == user)
        before = [r.done for r in mine if r.ok and r.done < f0]
        after = [r.done for r in mine if r.ok and r.done > f1]
        if after:
            gap = after[0] - (before[-1] if before else f0)
            worst = gap if worst is None else max(worst, gap)
    return worst


def reads_by_node(rows: Iterable[Request]) -> list[dict]:
    """Successful reads through the read-only endpoint per answering node, and whether it was a standby."""
    counts: Counter[tuple[str, bool | None]] = Counter()
    for r in rows:
        if r.endpoint == "ro" and r.ok:
            counts[(r.server or "?", r.recovery)] += 1
    total = sum(counts.values()) or 1
    return [
        {"node": node, "role": {True: "replica", False: "PRIMARY", None: "unknown"}[rec], "reads": n,
         "share": round(n / total, 3)}
        for (node, rec), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][0]))
    ]


def time_bins(rows: Sequence[Request], t0: float, t1: float, width: float) -> list[float]:
    n = max(1, math.ceil((t1 - t0) / width))
    return [t0 + i * width for i in range(n)]


def series(rows: Sequence[Request], t0: float, t1: float, width: float = 1.0) -> dict:
    """Per-bin counts (ok and failed per endpoint) and per-op p50/p95/p99 (by request start)."""
    starts = time_bins(rows, t0, t1, width)
    n = len(starts)
    ok = {"rw": [0] * n, "ro": [0] * n}
    failed = {"rw": [0] * n, "ro": [0] * n}
    fail_by_op: dict[str, list[int]] = defaultdict(lambda: [0] * n)
    lat: dict[str, list[list[float]]] = defaultdict(lambda: [[] for _ in range(n)])
    for r in rows:
        i = int((r.ts - t0) // width)
        if not 0 <= i < n:
            continue
        ep = r.endpoint if r.endpoint in ok else "rw"
        if r.ok:
            ok[ep][i] += 1
            lat[r.op][i].append(r.latency_ms)
        else:
            failed[ep][i] += 1
            fail_by_op[r.op][i] += 1
    pct = {op: {f"p{q}": [_round(percentile(b, q)) for b in bins] for q in (50, 95, 99)} for op, bins in lat.items()}
    return {"width_s": width, "t": [round(s - t0, 3) for s in starts], "ok": ok, "failed": failed,
            "failed_by_op": dict(fail_by_op), "latency": pct}


def error_kinds(rows: Iterable[Request]) -> dict[str, int]:
    return dict(Counter(r.kind for r in rows if not r.ok))


def summarize(rows: Sequence[Request], t0: float, t1: float) -> dict:
    """Everything the report shows, as plain data (also the JSON report's core)."""
    seconds = max(t1 - t0, 1e-9)
    ok = [r for r in rows if r.ok]
    lat = [r.latency_ms for r in ok]
    outs = [o for ep in ("rw", "ro") for o in outages(rows, ep)]
    ro_primary = [r for r in rows if r.endpoint == "ro" and r.ok and r.recovery is False]
    return {
        "seconds": round(seconds, 2),
        "requests": len(rows),
        "failures": len(rows) - len(ok),
        "rps": round(len(rows) / seconds, 2),
        "ok_rps": round(len(ok) / seconds, 2),
        "p50_ms": _round(percentile(lat, 50)),
        "p95_ms": _round(percentile(lat, 95)),
        "p99_ms": _round(percentile(lat, 99)),
        "users": len({r.user for r in rows}),
        "operations": per_operation(rows, seconds),
        "error_kinds": error_kinds(rows),
        "outages": [{**asdict(o), "seconds": _round(o.seconds, 3), "start_s": round(o.start - t0, 3),
                     "end_s": None if o.end is None else round(o.end - t0, 3), "gap_s": _round(o.gap_s, 3),
                     "worst_user_s": _round(o.worst_user_s, 3)} for o in outs],
        "outage_s": {ep: _round(max((o.gap_s or 0.0 for o in outs if o.endpoint == ep), default=0.0), 3)
                     for ep in ("rw", "ro")},
        "reads_by_node": reads_by_node(rows),
        "reads_on_primary": len(ro_primary),
    }
