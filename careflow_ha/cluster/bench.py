"""pgbench through HAProxy (port 5000) against pgbench straight to the primary, in one run.

Absolute TPS drift between runs on a shared 2-core box; the ratio of the two
paths measured minutes apart in the same run is the figure to trust. Each
mode alternates HAProxy and direct runs so that drift hits both sides alike.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg

from careflow_ha.cluster.patroni import PatroniApi
from careflow_ha.errors import CommandFailed, NotReady
from careflow_ha.settings import ROLE_NAMES, Settings

PGBENCH = Path("/usr/lib/postgresql/15/bin/pgbench")
BENCH_DB = "careflow_pgbench"
MODES = {"select-only": ["-S"], "tpcb-like": []}


@dataclass(frozen=True)
class PgbenchResult:
    mode: str
    path: str  # "haproxy:5000" or "direct:pgN"
    tps: float
    latency_ms: float


def _dsn(settings: Settings, port: int, dbname: str) -> str:
    """The admin role (CREATEDB: it owns the scratch database, so pgbench may create its tables there)."""
    pw = quote(settings.password("admin"), safe="")
    tls = "".join(f"&{k}={quote(v, safe='/')}" for k, v in settings.routing.tls_params().items())
    return f"postgresql://{ROLE_NAMES['admin']}:{pw}@{settings.host}:{port}/{dbname}?connect_timeout=10{tls}"


def _pgbench(settings: Settings, args: list[str], port: int, timeout: float) -> str:
    return pgbench_conninfo(settings, args, f"host={settings.host} port={port}", timeout)


def pgbench_conninfo(settings: Settings, args: list[str], where: str, timeout: float, user: str | None = None,
                     dbname: str = BENCH_DB, password: str | None = None) -> str:
    """pgbench ``args`` as ``user`` (default: the admin role, with its password) on ``dbname`` at ``where``
    (libpq keywords: ``host=a,b port=5432,5432 target_session_attrs=read-write``, so multi-host works too).
    The password goes through the environment (PGPASSWORD), never argv."""
    env = {**os.environ, "PGPASSWORD": settings.password("admin") if password is None else password,
           # TLS as every other client of the cluster (verify-full against the lab CA), for every path.
           **{f"PG{k.upper()}": v for k, v in settings.routing.tls_params().items()}}
    conninfo = f"{where} user={user or ROLE_NAMES['admin']} dbname={dbname} connect_timeout=10"
    proc = subprocess.run(
        [str(PGBENCH), *args, conninfo], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise CommandFailed(f"pgbench {' '.join(args)} failed: {proc.stderr.strip()[-400:]}")
    return proc.stdout


def create_bench_db(admin_dsn: str) -> None:
    """The scratch pgbench database (created once; ``drop_bench_db`` removes it after the runs)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (BENCH_DB,)).fetchone():
            conn.execute(f"CREATE DATABASE {BENCH_DB}")


def drop_bench_db(admin_dsn: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")


def parse_pgbench(output: str) -> tuple[float, float]:
    """(tps, average latency in ms) from pgbench's summary."""
    tps = re.search(r"^tps = ([\d.]+)", output, re.M)
    lat = re.search(r"^latency average = ([\d.]+) ms", output, re.M)
    if not tps or not lat:
        raise CommandFailed("pgbench printed no tps/latency summary:\n" + output[-500:])
    return float(tps.group(1)), float(lat.group(1))


def run_bench(
    settings: Settings,
    progress: Callable[[str], None],
    seconds: int = 20,
    clients: int = 8,
    scale: int = 10,
    rounds: int = 2,
) -> list[PgbenchResult]:
    """Initialise a pgbench database through 5000, then alternate HAProxy and direct runs per mode."""
    snap = PatroniApi(settings).cluster()
    leaders = [m.name for m in snap.members if m.is_leader]
    if len(leaders) != 1:
        raise NotReady("no single leader to benchmark against; see `careflow-ha status`")
    leader = leaders[0]
    rw = settings.port("CAREFLOW_RW_PORT")
    direct = settings.node_port(leader, "PG")
    create_bench_db(_dsn(settings, rw, "postgres"))
    progress(f"bench: pgbench -i -s {scale} through 5000 (leader {leader})")
    _pgbench(settings, ["-i", "-q", "-s", str(scale)], rw, timeout=600)
    results: list[PgbenchResult] = []
    common = ["-c", str(clients), "-j", "2", "-T", str(seconds), "-n"]
    try:
        for mode, extra in MODES.items():
            for round_no in range(rounds):
                for path, port in (("haproxy:5000", rw), (f"direct:{leader}", direct)):
                    progress(f"bench: {mode} via {path} (round {round_no + 1}/{rounds}, {seconds}s)")
                    out = _pgbench(settings, [*common, *extra], port, timeout=seconds * 3 + 60)
                    tps, lat = parse_pgbench(out)
                    results.append(PgbenchResult(mode, path, tps, lat))
    finally:
        drop_bench_db(_dsn(settings, rw, "postgres"))
    return results


def summarise(results: list[PgbenchResult]) -> list[dict]:
    """Median TPS per mode and path, and the HAProxy/direct ratio per mode."""
    rows = []
    for mode in MODES:
        via = [r.tps for r in results if r.mode == mode and r.path.startswith("haproxy")]
        direct = [r.tps for r in results if r.mode == mode and r.path.startswith("direct")]
        lat_via = [r.latency_ms for r in results if r.mode == mode and r.path.startswith("haproxy")]
        lat_direct = [r.latency_ms for r in results if r.mode == mode and r.path.startswith("direct")]
        if not via or not direct:
            continue
        rows.append(
            {
                "mode": mode,
                "tps_haproxy": round(statistics.median(via), 1),
                "tps_direct": round(statistics.median(direct), 1),
                "ratio_haproxy_to_direct": round(statistics.median(via) / statistics.median(direct), 3),
                "latency_ms_haproxy": round(statistics.median(lat_via), 2),
                "latency_ms_direct": round(statistics.median(lat_direct), 2),
            }
        )
    return rows
