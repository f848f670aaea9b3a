"""Scenario on the lab cluster: EMR traffic through HAProxy, reads on 5001 answered by replicas only.

Bounded: 15 s of load from 16 users, after the cluster is healthy.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from careflow_ha.cluster.health import wait_healthy
from careflow_ha.load.analysis import read_requests
from careflow_ha.load.runner import LoadConfig, run_load
from careflow_ha.settings import PG_NODES, Settings
from tests.plugins.timeouts import scaled

pytestmark = pytest.mark.cluster


def run_cluster_load(settings: Settings, reports_dir: Path, seconds: float = 15.0, plans: int = 0) -> dict:
    """Wait for a healthy cluster, run the EMR mix through 5000/5001, return the JSON report."""
    healthy = wait_healthy(settings, lambda _: None, timeout_s=scaled(120))
    replicas = {m.name for m in healthy.snapshot.members if not m.is_leader}
    cfg = LoadConfig(users=16, spawn_rate=16, duration_s=seconds, think_scale=0.3, dsn_rw=settings.dsn("rw", "app"),
                     dsn_ro=settings.dsn("ro", "ro"), reports_dir=reports_dir, cluster=settings, plans=plans)
    result = run_load(cfg)
    rep = result.report
    rep["_replicas_before"] = sorted(replicas)
    rep["_rows"] = read_requests(result.folder)
    return rep


def test_emr_load_through_haproxy_reads_only_on_replicas(cluster: Settings, tmp_path: Path) -> None:
    """While the replicas are healthy, no read through 5001 is answered by the primary; no unexpected errors."""
    rep = run_cluster_load(cluster, tmp_path, plans=3)
    s, rows = rep["summary"], rep["_rows"]
    assert s["requests"] >= 100 and len(s["operations"]) == 8
    if not rep["role_changes"]:  # someone may break the shared lab on purpose; then only route losses may fail
        assert s["failures"] == 0, s["error_kinds"]
    else:
        assert set(s["error_kinds"]) <= {"lost", "connect"}, s["error_kinds"]
    reads = [r for r in rows if r.endpoint == "ro" and r.ok]
    assert reads, "reads went through 5001"
    assert {r.server for r in reads} <= set(PG_NODES), "every read names the node that answered"
    assert rep["routing"]["violations"] == 0, rep["routing"]["violation_examples"]
    if not rep["role_changes"]:
        assert all(r.recovery for r in reads), "a read on 5001 was answered by the primary"
        assert {r.server for r in reads} <= set(rep["_replicas_before"])
    writes = [r for r in rows if r.endpoint == "rw" and r.ok]
    assert writes and all(r.recovery is False for r in writes), "writes on 5000 are answered by the primary"

    # The slowest operations were planned on the lab, where they ran (reads on a replica), with HypoPG there.
    plans = rep["plans"]
    assert plans["status"] == "ok" and plans["hypopg"] == {"ro": True, "rw": True}, plans
    p95 = {o["op"]: o["p95_ms"] for o in s["operations"]}
    chosen = [o["op"] for o in plans["operations"]]
    assert len(chosen) == 3 and min(p95[op] for op in chosen) >= max(p95[op] for op in p95 if op not in chosen)
    planned = [o for o in plans["operations"] if "skipped" not in o]
    assert planned, "at least one of the three slowest operations is plannable"
    assert all(o["plan"] and o["advice"]["verdict"] in {"recommended", "none"} for o in planned), planned
