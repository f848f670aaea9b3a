"""Replication lag while a bulk load goes through the primary, and the time until every replica caught up.

A sampler thread asks the primary's ``pg_stat_replication`` once a second (as the admin role, which holds
``pg_monitor``: other roles see no LSNs there), for each standby: how far its flushed and its replayed WAL
are behind the primary's current WAL position, in bytes, and PostgreSQL's own ``flush_lag``/``replay_lag``
times. Bytes are the primary's own arithmetic in one query (``pg_current_wal_lsn() - replay_lsn``), so no
clock or scrape skew can fake lag. When the load has committed, :func:`wait_caught_up` waits, bounded, until
every standby seen during the load has replayed past the commit's WAL position.

The report (``reports/data-load/<UTC time>/``: report.md, result.json, lag.png) says per standby its sync
state, the worst and the 95th-percentile lag, and the catch-up time.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from careflow_ha.cluster.watch import BoundedLoop

if TYPE_CHECKING:
    from careflow_ha.data.generator import DataSpec
    from careflow_ha.data.loader import LoadSummary

#: One row per standby (one row of NULLs when there is no standby).
SAMPLE_SQL = """
SELECT extract(epoch FROM clock_timestamp())::float8, r.application_name, r.state,
       r.sync_state, pg_wal_lsn_diff(pg_current_wal_lsn(), r.flush_lsn)::bigint,
       pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)::bigint,
       extract(epoch FROM r.flush_lag)::float8, extract(epoch FROM r.replay_lag)::float8
FROM (SELECT 1) one LEFT JOIN pg_stat_replication r ON true
"""
CAUGHT_UP_SQL = ("SELECT application_name, pg_wal_lsn_diff(replay_lsn, %s::pg_lsn) >= 0 "
                 "FROM pg_stat_replication")
CONNECT_TIMEOUT_S = 3


@dataclass(frozen=True)
class LagSample:
    """One standby at one instant, as the primary saw it (``*_bytes`` None: not reported yet)."""

    at: float
    standby: str
    state: str
    sync_state: str
    flush_bytes: int | None
    replay_bytes: int | None
    flush_lag_s: float | None
    replay_lag_s: float | None


class ReplicationWatch(BoundedLoop):
    """Sample the primary's ``pg_stat_replication`` every ``interval_s`` (at most ``max_seconds``)."""

    def __init__(self, dsn: str, *, interval_s: float = 1.0, max_seconds: float = 4 * 3600) -> None:
        super().__init__("replication-lag", interval_s, max_seconds, int(max_seconds / interval_s) + 1)
        self._dsn = dsn
        self._conn: psycopg.Connection | None = None
        self._samples: list[LagSample] = []
        self.polls = 0
        self.missed = 0  # polls that found no primary (a failover mid-load, a restart)
        self.hidden = False  # the role may not see the standbys' positions (no pg_monitor)

    @property
    def samples(self) -> tuple[LagSample, ...]:
        with self._lock:
            return tuple(self._samples)

    def once(self, n: int) -> None:
        self.polls += 1
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
            rows = self._conn.execute(SAMPLE_SQL).fetchall()
        except psycopg.Error:
            self.missed += 1
            self.close()
            return
        got = [LagSample(at, name, state, sync, flush, replay, flush_s, replay_s)
               for at, name, state, sync, flush, replay, flush_s, replay_s in rows if name is not None]
        if any(s.state is None for s in got):  # rows without details: the role lacks pg_read_all_stats
            self.hidden = True
            return
        with self._lock:
            self._samples.extend(got)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


def wait_caught_up(dsn: str, commit_lsn: str, standbys: Sequence[str], *, timeout_s: float = 600.0,
                   interval_s: float = 0.2, clock: Callable[[], float] = time.time) -> dict[str, float | None]:
    """Seconds from now until each of ``standbys`` has replayed past ``commit_lsn`` (None: not within
    ``timeout_s``, or no longer streaming)."""
    started = clock()
    done: dict[str, float | None] = {}
    deadline = time.monotonic() + timeout_s
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            while len(done) < len(standbys) and time.monotonic() < deadline:
                for name, past in conn.execute(CAUGHT_UP_SQL, (commit_lsn,)).fetchall():
                    if past and name in standbys and name not in done:
                        done[name] = round(clock() - started, 3)
                if len(done) < len(standbys):
                    time.sleep(interval_s)
    except psycopg.Error:
        pass  # the primary went away (a failover): whoever had not caught up is reported as not caught up
    return {name: done.get(name) for name in standbys}


def load_watching(app_dsn: str, admin_dsn: str, spec: DataSpec, *, replace: bool, reports_dir: Path,
                  secrets: Mapping[str, str], progress: Callable[[str], None]) -> tuple[
                      LoadSummary, dict[str, dict[str, Any]], Path]:
    """``loader.load`` into a primary with standbys while its pg_stat_replication is sampled; then wait until
    every standby has replayed the commit, and write the report. (summary, per standby, report.md)."""
    from careflow_ha.data.loader import load

    watch = ReplicationWatch(admin_dsn)
    started_at = time.time()
    watch.start()
    try:
        summary = load(app_dsn, spec, replace=replace, progress=True)
        standbys = sorted({s.standby for s in watch.samples if s.state == "streaming"})
        progress(f"committed; waiting until {', '.join(standbys) or 'no standby'} replayed it")
        caught = wait_caught_up(admin_dsn, summary.commit_lsn, standbys)
        time.sleep(watch.interval_s * 1.5)  # one more sample after the catch-up, for the plot
    finally:
        watch.stop()
    if watch.failure is not None:
        raise watch.failure
    samples = watch.samples
    per_standby = summarize(samples, started_at, summary.committed_at, caught)
    meta = {"rows": summary.rows, "target": "HAProxy port 5000 (the primary)", "started_at": started_at,
            "committed_at": summary.committed_at, "commit_lsn": summary.commit_lsn, "seconds": summary.seconds,
            "rows_per_s": round(summary.rows_per_s), "polls": watch.polls, "missed_polls": watch.missed,
            "spec": {"rows": spec.rows, "clinics": spec.clinics, "months": spec.months, "seed": spec.seed}}
    folder = reports_dir / "data-load" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started_at))
    return summary, per_standby, write_report(folder, meta, samples, per_standby, secrets)


def _p95(values: list[float]) -> float:
    return values[0] if len(values) == 1 else statistics.quantiles(values, n=20, method="inclusive")[-1]


def summarize(samples: Sequence[LagSample], started_at: float, committed_at: float,
              caught_up_s: Mapping[str, float | None]) -> dict[str, dict[str, Any]]:
    """Per standby: the sync states seen, worst and p95 flush/replay lag (bytes, seconds) during the load,
    and the seconds from the commit until it had replayed it."""
    out: dict[str, dict[str, Any]] = {}
    for name in sorted({s.standby for s in samples}):
        mine = [s for s in samples if s.standby == name and started_at <= s.at <= committed_at]
        replay = [s.replay_bytes for s in mine if s.replay_bytes is not None]
        flush = [s.flush_bytes for s in mine if s.flush_bytes is not None]
        replay_s = [s.replay_lag_s for s in mine if s.replay_lag_s is not None]
        out[name] = {
            "sync_states": sorted({s.sync_state for s in mine}),
            "samples": len(mine),
            "max_replay_mb": round(max(replay) / 2**20, 1) if replay else None,
            "p95_replay_mb": round(_p95(replay) / 2**20, 1) if replay else None,
            "max_flush_mb": round(max(flush) / 2**20, 1) if flush else None,
            "max_replay_lag_s": round(max(replay_s), 2) if replay_s else None,
            "p95_replay_lag_s": round(_p95(replay_s), 2) if replay_s else None,
            "caught_up_s": caught_up_s.get(name),
        }
    return out


def render_line(standbys: Mapping[str, Mapping[str, Any]]) -> str:
    """One line per standby for the terminal."""
    if not standbys:
        return "replication: no standby was streaming during the load"
    return "\n".join(
        f"replication {name} ({'/'.join(s['sync_states'])}): replay lag max {s['max_replay_mb']} MB, p95 "
        f"{s['p95_replay_mb']} MB, max {s['max_replay_lag_s']} s; caught up "
        + ("NOT within the wait" if s["caught_up_s"] is None else f"{s['caught_up_s']} s after the commit")
        for name, s in standbys.items())


def write_report(folder: Path, meta: Mapping[str, Any], samples: Sequence[LagSample],
                 standbys: Mapping[str, Mapping[str, Any]], secrets: Mapping[str, str]) -> Path:
    """report.md + result.json + lag.png in ``folder``; returns the Markdown's path."""
    from careflow_ha.settings import check_no_secrets

    result = {**meta, "standbys": dict(standbys), "samples": [asdict(s) for s in samples]}
    text_json = json.dumps(result, indent=2, default=str)
    origin = meta["started_at"]
    lines = [f"# Data load with replication lag: {meta['rows']:,} lab results through {meta['target']}", "",
             f"Loaded in {meta['seconds']:.1f} s ({meta['rows_per_s']:,} rows/s of COPY), one transaction, "
             f"committed at +{meta['committed_at'] - origin:.1f} s (WAL {meta['commit_lsn']}).", "",
             "| standby | sync state | samples | replay lag max MB | p95 MB | max flush lag MB | replay lag max s "
             "| p95 s | caught up after commit |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in standbys.items():
        caught = "not within the wait" if s["caught_up_s"] is None else f"{s['caught_up_s']} s"
        lines.append(f"| {name} | {', '.join(s['sync_states'])} | {s['samples']} | {s['max_replay_mb']} | "
                     f"{s['p95_replay_mb']} | {s['max_flush_mb']} | {s['max_replay_lag_s']} | "
                     f"{s['p95_replay_lag_s']} | {caught} |")
    if not standbys:
        lines.append("| (none streaming) | | | | | | | | |")
    lines += ["", "Lag is the primary's current WAL position minus the standby's flushed or replayed one, sampled "
              "once a second from `pg_stat_replication`; the lag seconds are PostgreSQL's `replay_lag`.", "",
              "![lag](lag.png)", ""]
    text_md = "\n".join(lines)
    check_no_secrets([text_md, text_json], secrets)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(text_json)
    _lag_png(folder / "lag.png", samples, origin, meta["committed_at"], standbys)
    md = folder / "report.md"
    md.write_text(text_md)
    return md


def _lag_png(path: Path, samples: Sequence[LagSample], origin: float, committed_at: float,
             standbys: Mapping[str, Mapping[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4), dpi=110)
    try:
        for i, name in enumerate(standbys):
            mine = [s for s in samples if s.standby == name and s.replay_bytes is not None]
            ax.plot([s.at - origin for s in mine], [s.replay_bytes / 2**20 for s in mine], color=f"C{i}",
                    label=f"{name} replay lag ({'/'.join(standbys[name]['sync_states'])})")
            caught = standbys[name]["caught_up_s"]
            if caught is not None:
                ax.axvline(committed_at - origin + caught, color=f"C{i}", linestyle=":", linewidth=1)
        ax.axvline(committed_at - origin, color="black", linestyle="--", linewidth=1, label="commit")
        ax.set_xlabel("seconds since the load started")
        ax.set_ylabel("MB behind the primary")
        ax.grid(alpha=0.3)
        if standbys:
            ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
