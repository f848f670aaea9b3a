"""Scenarios against a local PostgreSQL: gevent concurrency, a clean headless run, a restart mid-run.

Each Locust run is bounded (a few seconds of load, Locust's own run time
limit, and the runner's deadline), so the module stays well under a minute.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from careflow_ha.data.localserver import LocalPostgres
from careflow_ha.load.analysis import read_requests
from careflow_ha.load.runner import LoadConfig, LoadRun, run_load
from tests.plugins.timeouts import scaled, wait_until

pytestmark = pytest.mark.localpg

ALL_OPS = {
    "reception.register_owner_pet", "reception.open_visit", "lab.post_results", "vet.patient_history",
    "vet.lab_trend", "vet.abnormal_today", "analyst.clinic_daily", "analyst.breed_age_patterns",
}  # fmt: skip


def _config(server: LocalPostgres, tmp: Path, **kw: object) -> LoadConfig:
    base = {"users": 12, "spawn_rate": 50.0, "duration_s": 8.0, "think_scale": 0.2, "progress_every_s": 2.0}
    base.update(kw)
    return LoadConfig(dsn_rw=server.dsn("app"), dsn_ro=server.dsn("ro"), reports_dir=tmp, **base)  # type: ignore[arg-type]


def test_users_run_concurrently_under_gevent(emr_pg: LocalPostgres) -> None:
    """Ten users each sleeping 0.5 s on the server finish together, not one after another."""
    n, sleep_s = 10, 0.5
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("gevent_probe.py")), str(n), str(sleep_s)],
        env={**os.environ, "CAREFLOW_LOAD_DSN_RW": emr_pg.dsn("app")},
        capture_output=True, text=True, timeout=scaled(60), check=True,
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["latencies"]) == n, "every session's pg_sleep must complete"
    serial = sum(out["latencies"])  # what the same work costs if the calls were serialised
    assert out["elapsed"] / serial < 0.3, f"calls were serialised: {out['elapsed']:.2f}s for {serial:.2f}s of sleeps"


def test_headless_run_produces_stats_and_report_without_errors(emr_pg: LocalPostgres, tmp_path: Path) -> None:
    lines: list[str] = []
    result = run_load(_config(emr_pg, tmp_path, plans=3), lines.append)
    folder = result.folder
    for name in ("locust.html", "locust_stats.csv", "locust_stats_history.csv", "report.md", "report.json",
                 "throughput.png", "latency.png", "errors.png", "reads_by_node.png", "plans.md", "plans.json"):
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    s = result.report["summary"]
    assert s["failures"] == 0, s["operations"]
    assert s["requests"] >= 50
    assert {o["op"] for o in s["operations"]} == ALL_OPS
    assert result.exit_code == 0
    assert any("req/s" in line for line in lines), "progress lines while running"
    # The three slowest operations by p95, each planned (or said why not) after Locust ended.
    slowest = sorted((o for o in s["operations"] if o["p95_ms"] is not None),
                     key=lambda o: (-o["p95_ms"], o["op"]))[:3]
    planned = result.report["plans"]
    assert planned["status"] == "ok" and [e["op"] for e in planned["operations"]] == [o["op"] for o in slowest]
    assert all("plan" in e or e["op"].startswith("reception.") for e in planned["operations"]), planned
    assert "## Slowest operations and their plans" in (folder / "report.md").read_text()
    text = "".join((folder / n).read_text() for n in ("report.md", "report.json", "locust.html", "plans.md",
                                                        "plans.json"))
    assert emr_pg.passwords["app"] not in text and emr_pg.passwords["ro"] not in text
    # Writes were committed: the load's visits are visible from another connection.
    import psycopg

    with psycopg.connect(emr_pg.dsn("app")) as conn:
        assert conn.execute("SELECT count(*) FROM visits WHERE visit_id >= 1::bigint << 50").fetchone()[0] > 0


def test_restart_mid_run_counts_errors_and_every_user_recovers(emr_pg: LocalPostgres, tmp_path: Path) -> None:
    """The server restarts under load: failures are recorded, then every user succeeds again; none is stuck."""
    run = LoadRun(_config(emr_pg, tmp_path, users=10, duration_s=16.0))
    folder = run.start()
    started = time.monotonic()
    try:
        wait_until(lambda: sum(r.ok for r in read_requests(folder)) >= 30, 20, 0.5, "30 successful requests")
        emr_pg.stop()
        down_at = time.time()
        emr_pg.start()
        up_at = time.time()
        code = run.wait()
    finally:
        if run.running():
            run.stop()
    elapsed = time.monotonic() - started
    result = run.finish()
    assert code in (0, 1) and elapsed < scaled(16 + 5 + 30), "Locust ended by itself, within its bounds"
    rows = read_requests(folder)
    failed = [r for r in rows if not r.ok]
    assert failed, "the restart must show as failed requests"
    assert result.report["summary"]["failures"] == len(failed)
    assert {r.kind for r in failed} <= {"lost", "connect"}, {r.error for r in failed}
    users_before = {r.user for r in rows if r.ts < down_at}
    recovered = {r.user for r in rows if r.ok and r.ts > up_at}
    assert users_before <= recovered, f"users stuck after the restart: {sorted(users_before - recovered)}"
    outs = result.report["summary"]["outages"]
    assert outs and all(o["end"] is not None for o in outs), outs


@pytest.mark.parametrize("ignore_sigint", [False, True], ids=["sigint-default", "sigint-ignored"])
def test_background_load_stops_with_its_block_and_reports(emr_pg: LocalPostgres, tmp_path: Path,
                                                          ignore_sigint: bool) -> None:
    """What a drill's --under-load uses: Locust runs while the block is open and stops when it closes.

    Also when the caller ignores SIGINT, as every background job of a non-interactive shell does
    (``careflow-ha ... &`` in a script, a CI runner): Locust inherits the ignore (SIG_IGN survives
    exec), and SIGINT is the graceful stop that still writes the reports.
    """
    from careflow_ha.load.runner import background

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if ignore_sigint else None
    try:
        cfg = _config(emr_pg, tmp_path, users=6, duration_s=600.0)
        t0 = time.monotonic()
        with background(cfg) as run:
            wait_until(lambda: sum(r.ok for r in read_requests(run.folder)) >= 20, 20, 0.5, "20 successful requests")
            folder = run.folder
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - t0 < scaled(60), "the 600 s bound did not keep Locust running past the block"
    assert not run.running()
    rep = json.loads((folder / "report.json").read_text())
    assert rep["summary"]["requests"] >= 20 and rep["summary"]["failures"] == 0
    assert (folder / "locust.html").is_file(), "stopped early, Locust still wrote its own report"
