"""``careflow-ha bench load``: the highest EMR request rate the cluster holds with p95 under a target.

Steps of the EMR mix with short think times (x0.1 of a clinic's, so that a
connection per user stays within max_connections), more users each step,
through HAProxy; a step "holds" when p95 stays under the target and
nothing failed. Locust's own CPU is reported per step, so a step limited by
the load generator shows as such. pgbench runs the same kind of read (one
pet's history) through port 5000 in the same run, as the driver-overhead-free
reference; the ratio is printed side by side.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from careflow_ha.dsn import pooler_safe
from careflow_ha.errors import EnvironmentProblem
from careflow_ha.load.runner import LoadConfig, run_load
from careflow_ha.settings import Settings

Progress = Callable[[str], None]

#: vet.patient_history as a pgbench script (same statement, the pet's clinic looked up first).
PGBENCH_SCRIPT = """\\set pid random(1, {max_pet})
SELECT clinic_id AS clinic FROM pets WHERE pet_id = :pid \\gset
SELECT v.visited_at, v.reason, r.test_code, r.value, r.flag
  FROM visits v LEFT JOIN lab_results r ON r.clinic_id = :clinic AND r.pet_id = v.pet_id AND r.visit_id = v.visit_id
 WHERE v.pet_id = :pid ORDER BY v.visited_at DESC, r.test_code LIMIT 200;
"""


def step_row(users: int, rep: dict, target_ms: float) -> dict:
    s, m = rep["summary"], rep["meta"]
    holds = s["failures"] == 0 and s["p95_ms"] is not None and s["p95_ms"] < target_ms and not rep["role_changes"]
    return {"users": users, "ok_rps": s["ok_rps"], "p50_ms": s["p50_ms"], "p95_ms": s["p95_ms"],
            "p99_ms": s["p99_ms"], "failures": s["failures"], "role_changes": len(rep["role_changes"]),
            "locust_cpu_cores": m["locust_cpu_cores"], "holds": "yes" if holds else "no",
            "report": rep["meta"]["run_id"]}


def pgbench(dsn: str, clients: int, seconds: int, max_pet: int) -> dict:
    """pgbench -S-style read through ``dsn``; the password goes through PGPASSWORD, never argv."""
    exe = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    if not Path(exe).exists():
        raise EnvironmentProblem("pgbench not found; install postgresql-client-15")
    p = conninfo_to_dict(dsn)
    env = {**os.environ, "PGPASSWORD": str(p.get("password") or "")}
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as fh:
        fh.write(PGBENCH_SCRIPT.format(max_pet=max_pet))
        script = fh.name
    try:
        proc = subprocess.run(
            [exe, "-n", "-h", str(p.get("host", "127.0.0.1")), "-p", str(p.get("port", 5432)),
             "-U", str(p.get("user")), "-d", str(p.get("dbname")), "-c", str(clients), "-j", str(min(clients, 2)),
             "-T", str(seconds), "-f", script, "-r", "-P", str(max(1, seconds // 2))],
            env=env, capture_output=True, text=True, timeout=seconds + 60, check=False)
    finally:
        os.unlink(script)
    out = proc.stdout + proc.stderr
    tps = re.search(r"tps = ([\d.]+)", out)
    lat = re.search(r"latency average = ([\d.]+) ms", out)
    if proc.returncode != 0 or not tps:
        tail = " | ".join(out.strip().splitlines()[-3:])
        raise EnvironmentProblem(f"pgbench failed ({proc.returncode}): {tail}")
    return {"clients": clients, "tps": float(tps.group(1)), "latency_avg_ms": float(lat.group(1)) if lat else None}


def bench_load(settings: Settings, steps: Sequence[int], step_s: float, target_ms: float,
               progress: Progress, think_scale: float = 0.1, processes: int = 1) -> dict:
    """Run the steps, then pgbench at the best holding step's concurrency; return rows and the ratio."""
    import psycopg

    rows = []
    for users in steps:
        progress(f"bench: {users} users, think time x{think_scale:g}, {step_s:g} s")
        cfg = LoadConfig(users=users, spawn_rate=float(users), duration_s=step_s, think_scale=think_scale,
                         processes=processes,
                         dsn_rw=settings.dsn("rw", "app"), dsn_ro=settings.dsn("ro", "ro"),
                         reports_dir=settings.reports_dir, cluster=settings, progress_every_s=step_s)
        result = run_load(cfg, lambda _: None)
        row = step_row(users, result.report, target_ms)
        rows.append(row)
        progress(f"bench: {users} users -> {row['ok_rps']} req/s, p95 {row['p95_ms']} ms, "
                 f"{row['failures']} failed, Locust {row['locust_cpu_cores']} cores")
        if row["p95_ms"] is not None and row["p95_ms"] >= 2 * target_ms:
            break  # far past the knee: more users only queue
    holding = [r for r in rows if r["holds"] == "yes"]
    best = max(holding, key=lambda r: r["ok_rps"]) if holding else None
    with psycopg.connect(settings.dsn("ro", "ro"), **pooler_safe(settings.dsn("ro", "ro"))) as conn:
        max_pet = conn.execute("SELECT max(pet_id) FROM pets WHERE pet_id < 1::bigint << 50").fetchone()[0] or 1
    clients = best["users"] if best else steps[0]
    progress(f"bench: pgbench, {clients} clients, one pet's history through 5000, {step_s:g} s")
    ref = pgbench(settings.dsn("rw", "app"), clients, int(step_s), int(max_pet))
    result = {
        "target_p95_ms": target_ms,
        "steps": rows,
        "best": best,
        "pgbench": ref,
        "ratio_emr_to_pgbench": round(best["ok_rps"] / ref["tps"], 3) if best and ref["tps"] else None,
        "think_scale": think_scale,
        "processes": processes,
        "at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "cpus": os.cpu_count(),
    }
    out = settings.reports_dir / "load" / f"bench-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    progress(f"bench: figures in {out}")
    return result
