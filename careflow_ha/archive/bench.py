"""``careflow-ha bench detach``: the worst write stall while a month is detached, next to a baseline, same run.

A bounded write load (``writers`` connections, ``rate`` inserts/s in total,
``seconds`` per window, stopped by itself) inserts current lab results
through the parent table. Windows are interleaved per round:

- baseline: nothing else happens;
- detach: ``DETACH PARTITION ... CONCURRENTLY`` of the oldest month, then the
  instant re-attach the restore uses (CHECK constraint proven first);
- archive: a full ``archive run`` of that month (export, verify, detach, drop)
  followed by ``archive restore`` (the month comes back).

Reported per window type: writes, failed writes, worst and p99 latency; and
the ratio of the worst stall in detach/archive windows to the baseline's.
Inserted rows are marked (pet_id 0, test_code 'BENCH') and deleted at the end.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from careflow_ha.data.db import connect
from careflow_ha.dsn import redact

BENCH_PET, BENCH_TEST = 0, "BENCH"


@dataclass(frozen=True)
class BenchConfig:
    seconds: float = 6.0
    rounds: int = 3
    writers: int = 4
    rate: int = 400
    local_rows: int = 200_000  # data set for --local: 12 months, ~17k rows a month
    local_months: int = 12


@dataclass
class Sample:
    started: float
    latency: float
    ok: bool
    error: str = ""


class WriteLoad:
    """Paced inserts from several connections until ``stop()``; every latency recorded."""

    def __init__(self, dsn: str, writers: int, rate: int, clinic_id: int) -> None:
        self.dsn, self.writers, self.rate, self.clinic_id = dsn, writers, rate, clinic_id
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._stop.clear()
        self.samples = []
        conns = [psycopg.connect(self.dsn, autocommit=True) for _ in range(self.writers)]
        self._threads = [threading.Thread(target=self._loop, args=(c,), daemon=True) for c in conns]
        for thread in self._threads:
            thread.start()

    def stop(self) -> list[Sample]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        return list(self.samples)

    def _loop(self, conn: psycopg.Connection) -> None:
        interval = self.writers / self.rate
        next_at = time.monotonic()
        with conn:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    conn.execute("INSERT INTO lab_results (clinic_id, collected_at, pet_id, test_code, value, flag) "
                                 "VALUES (%s, now(), %s, %s, 1.0, 'N')", (self.clinic_id, BENCH_PET, BENCH_TEST))
                    sample = Sample(t0, time.monotonic() - t0, True)
                except psycopg.Error as exc:
                    sample = Sample(t0, time.monotonic() - t0, False, str(exc).splitlines()[0][:200])
                    if conn.closed:
                        return
                with self._lock:
                    self.samples.append(sample)
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_at = time.monotonic()  # fell behind (a stall): do not burst to catch up


def _summary(samples: list[Sample]) -> dict:
    lat = sorted(s.latency for s in samples)
    failed = [s for s in samples if not s.ok]
    return {
        "writes": len(samples), "failed": len(failed),
        "worst_ms": round(lat[-1] * 1000, 2) if lat else None,
        "p99_ms": round(lat[int(0.99 * (len(lat) - 1))] * 1000, 2) if lat else None,
        "median_ms": round(lat[len(lat) // 2] * 1000, 2) if lat else None,
        "errors": sorted({s.error for s in failed})[:3],
    }


def _reattach(conn: psycopg.Connection, parent: str, part: str, bound: str, lower: str, upper: str) -> None:
    """The restore's instant attach: prove the bounds with a CHECK first, then ATTACH (no validation scan)."""
    schema, _, name = part.rpartition(".")
    ident, chk = sql.Identifier(schema, name), sql.Identifier(name + "_bench_bounds")
    with conn.transaction():
        conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK (collected_at >= {} AND collected_at < {})")
                     .format(ident, chk, sql.Literal(lower), sql.Literal(upper)))
        conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(
            sql.Identifier(*parent.split(".")), ident, sql.SQL(bound)))
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(ident, chk))


def run_bench(cfg: BenchConfig, dsn: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Run the interleaved windows; on a throwaway local server unless ``dsn`` is given."""
    server = None
    if dsn is None:
        from careflow_ha.data import migrate
        from careflow_ha.data.generator import DataSpec
        from careflow_ha.data.loader import load
        from careflow_ha.data.localserver import start_local_server

        log("starting a throwaway local PostgreSQL 15 (fsync on)")
        server = start_local_server(durable=True)
        dsn = server.dsn("app")
        migrate(dsn)
        load(dsn, DataSpec(rows=cfg.local_rows, clinics=6, months=cfg.local_months, seed=7), progress=True)
    try:
        return _run(cfg, dsn, log, local=server is not None)
    finally:
        if server is not None:
            server.stop()
            server.remove()


def _run(cfg: BenchConfig, dsn: str, log: Callable[[str], None], local: bool) -> dict:
    from careflow_ha.archive.archiver import TABLE, Archiver, month_partitions
    from careflow_ha.archive.store import LocalStore

    with connect(dsn, autocommit=True) as conn:
        months = month_partitions(conn)
        populated = [m for m in months
                     if conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(
                         sql.Identifier(*m.name.split(".")))).fetchone()[0]]
        if not populated:
            raise RuntimeError("no month with data to detach; load data first")
        victim = populated[0]
        clinic = conn.execute("SELECT min(clinic_id) FROM clinics").fetchone()[0]
    log(f"target {redact(dsn)}; month under test {victim.name}; {cfg.writers} writers at {cfg.rate}/s; "
        f"{cfg.rounds} rounds of {cfg.seconds:.0f}s windows")
    load = WriteLoad(dsn, cfg.writers, cfg.rate, clinic)
    windows: dict[str, list[Sample]] = {"baseline": [], "detach": [], "archive": []}
    step_times: dict[str, list[float]] = {"detach_s": [], "attach_s": [], "archive_run_s": [], "restore_s": []}
    restored_rows = 0
    per_round: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="careflow-bench-archive-") as tmp:
        archiver = Archiver(dsn, LocalStore(Path(tmp)), progress=False)
        # Warm-up window, not counted: the first seconds of a fresh load carry connection and cache noise.
        load.start()
        time.sleep(min(2.0, cfg.seconds))
        load.stop()
        for rnd in range(1, cfg.rounds + 1):
            for kind in ("baseline", "detach", "archive"):
                load.start()
                t_end = time.monotonic() + cfg.seconds
                time.sleep(min(1.0, cfg.seconds / 5))  # writers settle before the operation starts
                if kind == "detach":
                    with connect(dsn, autocommit=True) as conn:
                        t0 = time.monotonic()
                        conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY").format(
                            sql.Identifier(*TABLE.split(".")), sql.Identifier(*victim.name.split("."))))
                        step_times["detach_s"].append(time.monotonic() - t0)
                        t0 = time.monotonic()
                        _reattach(conn, TABLE, victim.name, victim.bound, victim.lower.isoformat(),
                                  victim.upper.isoformat())
                        step_times["attach_s"].append(time.monotonic() - t0)
                elif kind == "archive":
                    t0 = time.monotonic()
                    archiver.run([victim.month])
                    step_times["archive_run_s"].append(time.monotonic() - t0)
                    t0 = time.monotonic()
                    restored_rows = archiver.restore(victim.month).rows or 0
                    step_times["restore_s"].append(time.monotonic() - t0)
                remaining = t_end - time.monotonic()
                if remaining > 0:
                    time.sleep(remaining)
                samples = load.stop()
                windows[kind] += samples
                per_round.setdefault(kind, []).append(max((s.latency for s in samples), default=0.0) * 1000)
                log(f"round {rnd} {kind:8s}: {_summary(samples)}")
    with connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM lab_results WHERE pet_id = %s AND test_code = %s", (BENCH_PET, BENCH_TEST))
    summary = {kind: _summary(samples) for kind, samples in windows.items()}
    base = summary["baseline"]["worst_ms"] or 0.0
    restore_s = min(step_times["restore_s"]) if step_times["restore_s"] else None
    return {
        "target": "local throwaway server" if local else redact(dsn),
        "month": victim.month, "config": asdict(cfg),
        "windows": summary,
        "ratio_worst_detach_vs_baseline": round(summary["detach"]["worst_ms"] / base, 2) if base else None,
        "ratio_worst_archive_vs_baseline": round(summary["archive"]["worst_ms"] / base, 2) if base else None,
        "worst_ms_per_round": {k: [round(v, 2) for v in vals] for k, vals in per_round.items()},
        "steps_s": {k: [round(v, 3) for v in vals] for k, vals in step_times.items()},
        "restore_rows": restored_rows,
        "restore_s_per_million_rows": round(restore_s / restored_rows * 1e6, 1) if restore_s and restored_rows
        else None,
        "failed_writes": sum(s["failed"] for s in summary.values()),
    }


def render(result: dict) -> str:
    """The benchmark as text: one line per window type, then the ratios."""
    lines = [f"bench detach on {result['target']}, month {result['month']}"]
    lines.append(f"{'window':10s} {'writes':>7s} {'failed':>6s} {'median ms':>10s} {'p99 ms':>8s} {'worst ms':>9s}")
    for kind, s in result["windows"].items():
        lines.append(f"{kind:10s} {s['writes']:7d} {s['failed']:6d} {s['median_ms']!s:>10s} {s['p99_ms']!s:>8s} "
                     f"{s['worst_ms']!s:>9s}")
    lines.append(f"worst stall, detach vs baseline: {result['ratio_worst_detach_vs_baseline']}x; "
                 f"archive run + restore vs baseline: {result['ratio_worst_archive_vs_baseline']}x")
    lines.append(f"worst ms per round: {result['worst_ms_per_round']}")
    lines.append(f"steps (s): {result['steps_s']}")
    lines.append(f"restore: {result['restore_rows']} rows, {result['restore_s_per_million_rows']} s per million rows")
    lines.append(f"failed writes: {result['failed_writes']} (target 0)")
    return "\n".join(lines)
