"""pgbench through every way in, against direct connections to the primary, in one run.

Every path is measured in the same run, alternating paths within each round, so
the drift of a shared 2-core box hits all of them alike; the ratios to direct
are the figures to trust, not the absolute TPS.
"""

from __future__ import annotations

import secrets
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from psycopg.conninfo import make_conninfo

from careflow_ha.cluster.bench import MODES, parse_pgbench, pgbench_conninfo
from careflow_ha.settings import BENCH_ROLE, DB_NAME, ROLE_NAMES, Settings

DIRECT = "direct"
#: The throwaway login every pgbench path runs as (settings.BENCH_ROLE), and the schema it owns in the EMR
#: database. One name for both, fixed, so a leftover of a killed run is found and removed by the next one.
BENCH_SCHEMA = BENCH_ROLE
#: The database functions that create and drop it (roles/patroni/templates/emr-prepare.sql.j2): the admin role
#: may call them, and has no CREATEROLE.
CREATE_BENCH_ROLE = "SELECT careflow_tools.create_bench_role(%s)"
DROP_BENCH_ROLE = "SELECT careflow_tools.drop_bench_role()"


@dataclass(frozen=True)
class BenchPath:
    """One way to the primary, as libpq keywords (no secret: the password goes through PGPASSWORD)."""

    name: str
    where: str


@dataclass(frozen=True)
class PathResult:
    mode: str
    path: str
    tps: float
    latency_ms: float


def bench_paths(settings: Settings, leader: str, ways: Sequence[str] | None = None) -> tuple[BenchPath, ...]:
    """Direct to the leader, then ``ways`` (default: every way in this inventory provisions), in WAYS_IN order.

    Direct goes to the leader's address on the cluster network, the same network path the ways in
    take, so the ratio measures the proxy or VIP, not the host's port forwarding.
    """
    routing = settings.routing
    port = routing.pg_port
    leader_ip = routing.node_ips.get(leader)
    if leader_ip:
        direct = f"host={leader_ip} port={port}"
    else:  # no addresses in the inventory: the lab's published port for the leader
        direct = f"host={settings.host} port={settings.node_port(leader, 'PG')}"
    paths = [BenchPath(DIRECT, direct)]
    for way in routing.available():
        if ways is not None and way not in ways:
            continue
        if way == "haproxy-vip":
            host, hport = settings.endpoint("rw")
            paths.append(BenchPath(way, f"host={host} port={hport}"))
        elif way == "leader-vip":
            paths.append(BenchPath(way, f"host={routing.leader_vip} port={port}"))
        elif way == "libpq-multihost":
            ips = list(routing.node_ips.values())
            # pgbench is PostgreSQL 15's: no load_balance_hosts (libpq 16), so the hosts are tried in order.
            paths.append(BenchPath(
                way, f"host={','.join(ips)} port={','.join([str(port)] * len(ips))} target_session_attrs=read-write"
            ))
        elif way == "pgbouncer":
            # PgBouncer's pools serve only the EMR database, as non-superusers (get_auth() refuses superusers):
            # so every path runs pgbench as BENCH_ROLE in its own schema there (bench_role).
            host, pport = settings.pooler_endpoint("rw")
            paths.append(BenchPath(way, f"host={host} port={pport}"))
    return tuple(paths)


@dataclass(frozen=True)
class BenchRole:
    """The pgbench login of one run: a random password, made here and never stored or printed.

    Its name, schema and database are fixed (the SQL functions that create it know them); its search_path is
    a role setting in the database, not a client ``-c search_path``: PgBouncer 1.18 refuses an ``options``
    startup parameter, and PostgreSQL applies a role setting to every session of the role, also to the server
    connections PgBouncer opens for it.
    """

    password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    name: str = field(default=BENCH_ROLE, init=False)
    schema: str = field(default=BENCH_SCHEMA, init=False)
    dbname: str = field(default=DB_NAME, init=False)


def drop_bench_role(admin_dsn: str) -> None:
    """Remove the schema (pgbench's tables with it) and the role, its sessions ended first; a no-op when
    neither exists."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(DROP_BENCH_ROLE)


@contextmanager
def bench_role(admin_dsn: str, role: BenchRole | None = None) -> Iterator[BenchRole]:
    """``role`` created in ``admin_dsn``'s database (the EMR's, as the admin role straight on the primary)
    for the ``with`` block, then dropped, also after a failure. A leftover of a killed run goes first."""
    role = role or BenchRole()
    try:  # a set-up that fails half-way is undone too
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            # libpq hashes the password here (PQencryptPasswordConn): only the verifier reaches the server
            # and its logs, never the password.
            verifier = conn.pgconn.encrypt_password(role.password.encode(), role.name.encode(), b"scram-sha-256")
            conn.execute(CREATE_BENCH_ROLE, (verifier.decode(),))
        yield role
    finally:
        drop_bench_role(admin_dsn)


def run_pgbench_paths(
    settings: Settings,
    paths: Sequence[BenchPath],
    progress: Callable[[str], None],
    seconds: int = 20,
    clients: int = 8,
    scale: int = 10,
    rounds: int = 2,
) -> list[PathResult]:
    """Initialise pgbench's tables direct to the primary (``paths[0]``), then alternate every path per round
    and mode. Every path runs as the same non-superuser (BenchRole) in the same schema of the EMR database,
    so the ratios compare like with like, PgBouncer included."""
    if paths[0].name != DIRECT:
        raise ValueError("the first path must be direct to the primary")
    with bench_role(admin_conninfo(settings, paths[0])) as role:
        return _run_as(settings, role, paths, progress, seconds, clients, scale, rounds)


def admin_conninfo(settings: Settings, path: BenchPath, dbname: str = DB_NAME) -> str:
    """The admin role on ``path`` (straight on the primary): set-up, teardown and the storm's backend count."""
    return make_conninfo(path.where, user=ROLE_NAMES["admin"], dbname=dbname, connect_timeout=10,
                         **settings.routing.tls_params(),
                         password=settings.password("admin"))


def _run_as(settings: Settings, role: BenchRole, paths: Sequence[BenchPath], progress: Callable[[str], None],
            seconds: int, clients: int, scale: int, rounds: int) -> list[PathResult]:
    results: list[PathResult] = []
    login = {"user": role.name, "dbname": role.dbname, "password": role.password}
    progress(f"bench: pgbench -i -s {scale} via {paths[0].name} as {role.name}")
    pgbench_conninfo(settings, ["-i", "-q", "-s", str(scale)], paths[0].where, timeout=600, **login)
    # pgbench's default -M simple sends each statement as one Query message: no server-side prepared
    # statement, so it is correct under PgBouncer's transaction pooling (-M prepared would not be: 1.18
    # cannot follow a named statement from one server connection to the next).
    common = ["-c", str(clients), "-j", "2", "-T", str(seconds), "-n"]
    for mode, extra in MODES.items():
        for round_no in range(rounds):
            # Rotate the order each round: no path always runs first (cold) or last.
            shift = round_no % len(paths)
            for path in (*paths[shift:], *paths[:shift]):
                progress(f"bench: {mode} via {path.name} (round {round_no + 1}/{rounds}, {seconds}s)")
                out = pgbench_conninfo(settings, [*common, *extra], path.where, timeout=seconds * 3 + 60, **login)
                tps, lat = parse_pgbench(out)
                results.append(PathResult(mode, path.name, tps, lat))
    return results


def summarise_pgbench(results: Sequence[PathResult]) -> list[dict]:
    """Median TPS and latency per mode and path, and each path's TPS as a ratio to direct in the same run."""
    rows = []
    for mode in dict.fromkeys(r.mode for r in results):
        direct = [r.tps for r in results if r.mode == mode and r.path == DIRECT]
        ref = statistics.median(direct) if direct else None
        for path in dict.fromkeys(r.path for r in results if r.mode == mode):
            tps = [r.tps for r in results if r.mode == mode and r.path == path]
            lat = [r.latency_ms for r in results if r.mode == mode and r.path == path]
            med = statistics.median(tps)
            rows.append({
                "mode": mode, "path": path, "runs": len(tps), "tps": round(med, 1),
                "latency_ms": round(statistics.median(lat), 2),
                "ratio_to_direct": round(med / ref, 3) if ref else None,
            })
    return rows


def summarise_outages(outages: Mapping[str, Mapping[str, Sequence[Mapping[str, float | int | None]]]]) -> list[dict]:
    """``outages[way][drill]`` = one dict per run (write_outage_s, lost_acked) -> a row per way and drill."""
    rows = []
    for way, drills in outages.items():
        for drill, runs in drills.items():
            seen = [float(r["write_outage_s"]) for r in runs if r.get("write_outage_s") is not None]
            lost = [int(r["lost_acked"]) for r in runs if r.get("lost_acked") is not None]
            rows.append({
                "path": way, "drill": drill, "runs": len(runs), "measured": len(seen),
                "median_write_outage_s": round(statistics.median(seen), 2) if seen else None,
                "max_write_outage_s": round(max(seen), 2) if seen else None,
                "lost_acked": sum(lost) if lost else None,
            })
    return rows
