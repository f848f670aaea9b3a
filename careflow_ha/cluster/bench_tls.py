"""What TLS costs PostgreSQL clients: pgbench with and without TLS against one server, in one run.

The cluster accepts TCP only over TLS (pg_hba ``hostssl``), so the side-by-side comparison runs on a
throwaway local PostgreSQL 15 that accepts both, with a certificate from a throwaway lab CA (EC P-256,
as the lab's): the same server, data and client, and only ``sslmode`` differs (``disable`` against
``verify-full``). Runs alternate plain and TLS, and the order flips each round, so drift on a noisy box
hits both sides alike; the medians' ratio is the figure.

Modes: pgbench's select-only and tpcb-like on long-lived connections (the per-query cost of
encryption), and select-only with a new connection per transaction (``-C``: the handshake's cost, what a
client without a pool pays).
"""

from __future__ import annotations

import os
import pwd
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from careflow_ha.cluster.bench import BENCH_DB, PGBENCH, parse_pgbench
from careflow_ha.data.localserver import LocalPostgres, free_port
from careflow_ha.errors import CommandFailed
from careflow_ha.lab.ca import CA_CERT, LeafSpec, cert_path, ensure_lab_ca, key_path
from careflow_ha.settings import ROLE_NAMES

#: mode -> pgbench arguments.
TLS_MODES: dict[str, list[str]] = {"select-only": ["-S"], "tpcb-like": [], "select-only, connect per txn": ["-S", "-C"]}
#: The two sides: libpq's sslmode for each.
SIDES: dict[str, dict[str, str]] = {"plain": {"PGSSLMODE": "disable"}, "tls": {"PGSSLMODE": "verify-full"}}
SERVER_NAME = "localhost"


@dataclass(frozen=True)
class TlsRun:
    mode: str
    side: str  # "plain" or "tls"
    round: int
    tps: float
    latency_ms: float


def _tls_server(base: Path) -> tuple[LocalPostgres, Path]:
    """A durable local server with ssl=on (TLS 1.2+) and the CA that signed its certificate."""
    ca_dir = base / "ca"
    ensure_lab_ca(ca_dir, [LeafSpec(SERVER_NAME, (SERVER_NAME,), ("127.0.0.1",))])
    tls_dir = base / "server-tls"
    tls_dir.mkdir(mode=0o700)
    cert, key = tls_dir / "server.crt", tls_dir / "server.key"
    shutil.copyfile(cert_path(ca_dir, SERVER_NAME), cert)
    shutil.copyfile(key_path(ca_dir, SERVER_NAME), key)
    key.chmod(0o600)  # PostgreSQL refuses a key others can read
    if os.geteuid() == 0:  # the server runs as postgres (LocalPostgres) and must reach its files
        pg = pwd.getpwnam("postgres")
        for path in (base, tls_dir, cert, key):
            os.chown(path, pg.pw_uid, pg.pw_gid)
    server = LocalPostgres(base_dir=base / "pg", port=free_port(), durable=True, extra_conf={
        "ssl": "on", "ssl_cert_file": f"'{cert}'", "ssl_key_file": f"'{key}'",
        "ssl_min_protocol_version": "'TLSv1.2'", "max_connections": "100",
    })
    return server, ca_dir / CA_CERT


def _ssl_in_use(server: LocalPostgres, env: dict[str, str]) -> bool:
    with psycopg.connect(host=SERVER_NAME, hostaddr="127.0.0.1", port=server.port, dbname=BENCH_DB,
                         user=ROLE_NAMES["superuser"], password=server.passwords["superuser"],
                         sslmode=env["PGSSLMODE"], sslrootcert=env.get("PGSSLROOTCERT", "")) as conn:
        return bool(conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0])


def _pgbench(server: LocalPostgres, args: list[str], env: dict[str, str], timeout: float) -> str:
    conninfo = f"host={SERVER_NAME} hostaddr=127.0.0.1 port={server.port} user={ROLE_NAMES['superuser']} " \
               f"dbname={BENCH_DB} connect_timeout=10"
    proc = subprocess.run([str(PGBENCH), *args, conninfo], capture_output=True, text=True, timeout=timeout,
                          check=False, env={**os.environ, "PGPASSWORD": server.passwords["superuser"], **env})
    if proc.returncode != 0:
        raise CommandFailed(f"pgbench {' '.join(args)} failed: {proc.stderr.strip()[-400:]}")
    return proc.stdout


def run_tls_bench(progress: Callable[[str], None], seconds: int = 15, clients: int = 4, scale: int = 10,
                  rounds: int = 3) -> list[TlsRun]:
    """Initialise pgbench's tables once, then per mode ``rounds`` alternating plain/TLS runs."""
    base = Path(tempfile.mkdtemp(prefix="careflow-tlsbench-"))
    server, ca_file = _tls_server(base)
    sides = {"plain": SIDES["plain"], "tls": {**SIDES["tls"], "PGSSLROOTCERT": str(ca_file)}}
    runs: list[TlsRun] = []
    try:
        server.init()
        server.start()
        with psycopg.connect(server.dsn("superuser", "postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {BENCH_DB}")
        progress(f"bench tls: pgbench -i -s {scale} on a local server (127.0.0.1:{server.port})")
        for side, env in sides.items():  # each side is what it says, or the ratio compares nothing
            if _ssl_in_use(server, env) != (side == "tls"):
                raise CommandFailed(f"bench tls: the {side} side's connection has ssl={side != 'tls'}")
        _pgbench(server, ["-i", "-q", "-s", str(scale)], sides["plain"], timeout=600)
        common = ["-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds), "-n"]
        for mode, extra in TLS_MODES.items():
            for round_no in range(rounds):
                order = ("plain", "tls") if round_no % 2 == 0 else ("tls", "plain")
                for side in order:
                    progress(f"bench tls: {mode}, {side} (round {round_no + 1}/{rounds}, {seconds}s)")
                    tps, lat = parse_pgbench(_pgbench(server, [*common, *extra], sides[side], seconds * 3 + 60))
                    runs.append(TlsRun(mode, side, round_no, tps, lat))
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return runs


def summarise_tls(runs: list[TlsRun]) -> list[dict]:
    """Median TPS and latency per mode and side, and TLS/plain as a ratio per mode."""
    rows = []
    for mode in TLS_MODES:
        tps = {s: [r.tps for r in runs if r.mode == mode and r.side == s] for s in SIDES}
        lat = {s: [r.latency_ms for r in runs if r.mode == mode and r.side == s] for s in SIDES}
        if not all(tps.values()):
            continue
        plain, tls = statistics.median(tps["plain"]), statistics.median(tps["tls"])
        rows.append({
            "mode": mode, "runs_per_side": len(tps["tls"]),
            "tps_plain": round(plain, 1), "tps_tls": round(tls, 1), "ratio_tls_to_plain": round(tls / plain, 3),
            "latency_ms_plain": round(statistics.median(lat["plain"]), 3),
            "latency_ms_tls": round(statistics.median(lat["tls"]), 3),
        })
    return rows
