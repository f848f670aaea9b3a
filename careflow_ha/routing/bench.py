"""pgbench through every way in, against direct connections to the primary, in one run.

Every path is measured in the same run, alternating paths within each round, so
the drift of a shared 2-core box hits all of them alike; the ratios to direct
are the figures to trust, not the absolute TPS.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from careflow_ha.cluster.bench import MODES, create_bench_db, drop_bench_db, parse_pgbench, pgbench_conninfo
from careflow_ha.settings import Settings

DIRECT = "direct"


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
        # pgbouncer: not measured by pgbench yet. The pools serve only the EMR database (auth_query runs
        # in the database asked for, and get_auth() exists in careflow only), and pgbench works in its
        # own database; its drills still run through the pooler.
    return tuple(paths)


def run_pgbench_paths(
    settings: Settings,
    paths: Sequence[BenchPath],
    progress: Callable[[str], None],
    seconds: int = 20,
    clients: int = 8,
    scale: int = 10,
    rounds: int = 2,
) -> list[PathResult]:
    """Initialise a pgbench database through the first way in, then alternate every path per round and mode."""
    admin = settings.dsn("rw", "superuser", "postgres")
    create_bench_db(admin)
    results: list[PathResult] = []
    try:
        progress(f"bench: pgbench -i -s {scale} via {paths[-1].name}")
        pgbench_conninfo(settings, ["-i", "-q", "-s", str(scale)], paths[-1].where, timeout=600)
        common = ["-c", str(clients), "-j", "2", "-T", str(seconds), "-n"]
        for mode, extra in MODES.items():
            for round_no in range(rounds):
                # Rotate the order each round: no path always runs first (cold) or last.
                shift = round_no % len(paths)
                for path in (*paths[shift:], *paths[:shift]):
                    progress(f"bench: {mode} via {path.name} (round {round_no + 1}/{rounds}, {seconds}s)")
                    out = pgbench_conninfo(settings, [*common, *extra], path.where, timeout=seconds * 3 + 60)
                    tps, lat = parse_pgbench(out)
                    results.append(PathResult(mode, path.name, tps, lat))
    finally:
        drop_bench_db(admin)
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
