"""The routing benchmark's report: Markdown + JSON + PNG, and the plain-words advice on which way in to choose."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from careflow_ha.routing.haproxy_ab import CONTROL, VARIANTS
from careflow_ha.routing.storm import WHY_POOLER_ABSORBS
from careflow_ha.settings import WAYS_IN

#: Issue 13's throughput target, per (mode, path): the ratio to direct in the same run must reach it.
TARGETS: Mapping[tuple[str, str], float] = {("tpcb-like", "pgbouncer"): 0.85}

#: When each way in is the right choice; the measured figures below it say how much each choice costs.
WHEN_TO_CHOOSE: Mapping[str, str] = {
    "haproxy-vip": "Any client (JDBC, ODBC, Go, Node, psql, a reporting tool): one address, reads and writes "
    "split by port, and HAProxy's checks hide a dead node from new connections. Costs one proxy hop per "
    "round trip and a balancer pair to run.",
    "leader-vip": "Writers that keep one address and want no proxy hop (an EMR application server, batch "
    "imports): keepalived keeps the address on Patroni's leader. Needs the database nodes on one L2 segment "
    "(VRRP, gratuitous ARP) and a second address; reads still go through HAProxy. A client learns of a new "
    "leader only when the address moves, so its outage adds the keepalived check and VRRP takeover.",
    "libpq-multihost": "libpq-based clients only (psycopg, psql, libpq-fe C, Ruby pg, PHP pgsql; JDBC has its "
    "own targetServerType): no proxy, no VIP, nothing extra to run. Every client must list every node, "
    "and a dead node in the list costs each new connection a connect timeout unless the client "
    "shuffles hosts (libpq 16's load_balance_hosts).",
    "pgbouncer": "Applications with many short connections (a clinic's front desk and lab machines) that keep "
    "no session state across transactions: PgBouncer pools them in front of HAProxy, and a planned "
    "switchover with `careflow-ha switchover --zero-error` is a delay for them, not an error. Not for "
    "session features (LISTEN, advisory locks, session SETs, protocol-level prepared statements on "
    "PgBouncer 1.18): those use 5000 (docs/pooling.md).",
}


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join("-" if r.get(c) is None else str(r.get(c)) for c in columns) + " |" for r in rows]
    return out


def with_targets(pgbench: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The pgbench rows with a ``target`` column: ``>= 0.85x: pass`` / ``miss`` where TARGETS has one."""
    rows = []
    for r in pgbench:
        target = TARGETS.get((r["mode"], r["path"]))
        said = None
        if target is not None:
            ratio = r.get("ratio_to_direct")
            said = f">= {target}x: " + ("not measured" if ratio is None else "pass" if ratio >= target else "miss")
        rows.append({**r, "target": said})
    return rows


def storm_lines(storms: Sequence[Mapping[str, Any]]) -> list[str]:
    """The connection storm in a sentence per target."""
    lines = []
    for s in storms:
        errors = s["connection_errors"]
        kinds = "; ".join(f"{n} x {msg!r}" for msg, n in s["connection_error_messages"].items())
        lines.append(
            f"- Connection storm via {s['target']}: {s['attempted']} clients, **{errors} connection errors**"
            f"{f' ({kinds})' if kinds else ''}, peak {s['peak_open_clients']} open at once, PostgreSQL saw "
            f"{'-' if s['pg_backends_max'] is None else s['pg_backends_max']} backends at most "
            f"(max_connections {s.get('max_connections') or '-'})"
            + (" (target: 0 errors: " + ("pass" if s["errors_target_met"] else "miss") + ")"
               if s["target"] == "pgbouncer" else "") + ".")
    return lines


def verdict_lines(pgbench: Sequence[Mapping[str, Any]], outages: Sequence[Mapping[str, Any]],
                  storms: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """What the figures of this run say, in a sentence per question."""
    lines = []
    for r in with_targets(pgbench):
        if r["target"]:
            lines.append(f"- {r['path']} on {r['mode']}: {r['ratio_to_direct'] or '-'}x direct, target {r['target']}.")
    tpcb = [r for r in pgbench if r["mode"] == "tpcb-like" and r["path"] in WAYS_IN and r["ratio_to_direct"]]
    if tpcb:
        best = max(tpcb, key=lambda r: r["ratio_to_direct"])
        lines.append(f"- Least overhead on tpcb-like writes: **{best['path']}** at {best['ratio_to_direct']}x direct.")
        # HAProxy and PgBouncer (in front of HAProxy) are proxies: their targets are their own (TARGETS).
        below = [r for r in tpcb if r["path"] not in ("haproxy-vip", "pgbouncer") and r["ratio_to_direct"] < 0.95]
        if below:
            names = ", ".join(f"{r['path']} ({r['ratio_to_direct']}x)" for r in below)
            lines.append(f"- Below the 0.95x target for a proxy-free way in: {names}.")
    lines += haproxy_ab_lines(pgbench)
    for drill in dict.fromkeys(r["drill"] for r in outages):
        rows = [r for r in outages if r["drill"] == drill and r["median_write_outage_s"] is not None]
        if rows:
            best = min(rows, key=lambda r: r["median_write_outage_s"])
            lines.append(
                f"- Shortest {drill} write outage: **{best['path']}** (median {best['median_write_outage_s']} s "
                f"over {best['measured']} runs)."
            )
    lost = sum(int(r["lost_acked"] or 0) for r in outages)
    if outages:
        lines.append(f"- Acknowledged writes lost over every drill run: **{lost}**.")
    return lines + storm_lines(storms)


def haproxy_ab_lines(pgbench: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each HAProxy variant against the unchanged copy (the control; the provisioned HAProxy, haproxy-vip,
    without one), per mode, as ratios to direct."""
    control = CONTROL if any(r["path"] == CONTROL for r in pgbench) else "haproxy-vip"
    base = {r["mode"]: r["ratio_to_direct"] for r in pgbench if r["path"] == control}
    against = "the unchanged copy" if control == CONTROL else "the provisioned one"
    lines = []
    for name in VARIANTS:
        if name == control:
            continue
        rows = [r for r in pgbench if r["path"] == name and r["ratio_to_direct"] and base.get(r["mode"])]
        if rows:
            said = "; ".join(f"{r['mode']} {base[r['mode']]}x -> {r['ratio_to_direct']}x "
                             f"({r['ratio_to_direct'] / base[r['mode']]:.2f} of it)" for r in rows)
            lines.append(f"- HAProxy `{name.removeprefix('haproxy ')}` against {against}: {said}.")
    return lines


STORM_COLUMNS = ["target", "attempted", "connected", "connection_errors", "query_errors", "connect_ms_p50",
                 "connect_ms_p95", "connect_ms_max", "txn_ms_p50", "txn_ms_p95", "txn_ms_max", "peak_open_clients",
                 "pg_backends_at_peak", "pg_backends_max", "elapsed_s"]


def storm_section(storms: Sequence[Mapping[str, Any]]) -> list[str]:
    if not storms:
        return []
    errors = [f"- {s['target']}: {n} x `{msg}`" for s in storms
              for msg, n in {**s["connection_error_messages"], **s["query_error_messages"]}.items()]
    return [
        "## Connection storm: clients opened at once, each holding its connection for a few transactions",
        "",
        *_table(storms, STORM_COLUMNS),
        "",
        *(["Errors by message:", "", *errors, ""] if errors else []),
        WHY_POOLER_ABSORBS,
        "",
    ]


def render_markdown(meta: Mapping[str, Any], pgbench: Sequence[Mapping[str, Any]],
                    outages: Sequence[Mapping[str, Any]], storms: Sequence[Mapping[str, Any]] = ()) -> str:
    lines = [
        "# Routing benchmark: every way in, side by side",
        "",
        f"{meta['started_utc']} · leader {meta['leader']} · pgbench {meta['clients']} clients, {meta['seconds']} s "
        f"per run, {meta['rounds']} rounds · drills on preset `{meta['preset']}`, {meta['drill_runs']} run(s) each",
        "",
        "## What the figures say",
        "",
        *(verdict_lines(pgbench, outages, storms) or ["- Nothing was measured."]),
        "",
        "## Throughput (pgbench), ratio to direct connections to the primary in the same run",
        "",
        *_table(with_targets(pgbench), ["mode", "path", "runs", "tps", "latency_ms", "ratio_to_direct", "target"]),
        "",
        "Every path runs pgbench as the same non-superuser in the same schema of the EMR database "
        "(PgBouncer serves only that database, and no superuser).",
        "",
        *storm_section(storms),
        "## Write outage through each way in (median of the runs)",
        "",
        *(_table(outages, ["path", "drill", "runs", "measured", "median_write_outage_s", "max_write_outage_s",
                           "lost_acked"]) if outages else ["Drills were not run (`--drill-runs 0`)."]),
        "",
        "## Which to choose when",
        "",
        *[f"- **{way}**{'' if way in meta.get('paths', {}) else ' (not measured here)'}: {WAYS_IN[way]}. "
          f"{WHEN_TO_CHOOSE[way]}" for way in WAYS_IN],
        "",
        *(["## HAProxy settings tried (temporary copies of the provisioned HAProxy, same run)", "",
           *[f"- `{name.removeprefix('haproxy ')}`: {v.why}." for name, v in VARIANTS.items()
             if name in meta.get("paths", {})], ""]
          if any(name in meta.get("paths", {}) for name in VARIANTS) else []),
        "![ratios and outages](report.png)",
        "",
        "Each drill's own report (timeline, lost-write check) is under `reports/drills/`; `report.json` "
        "has every pgbench run.",
        "",
    ]
    return "\n".join(lines)


def write_chart(path: Path, pgbench: Sequence[Mapping[str, Any]], outages: Sequence[Mapping[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    modes = list(dict.fromkeys(r["mode"] for r in pgbench))
    paths = [p for p in dict.fromkeys(r["path"] for r in pgbench) if p != "direct"]
    width = 0.8 / max(1, len(modes))
    for i, mode in enumerate(modes):
        vals = [next((r["ratio_to_direct"] or 0 for r in pgbench if r["mode"] == mode and r["path"] == p), 0)
                for p in paths]
        left.bar([x + i * width for x in range(len(paths))], vals, width, label=mode)
    left.axhline(1.0, color="grey", lw=0.8)
    left.axhline(0.95, color="red", lw=0.8, ls="--", label="0.95x target")
    left.set_xticks([x + width * (len(modes) - 1) / 2 for x in range(len(paths))], paths)
    left.set_ylabel("TPS / direct")
    left.set_title("pgbench throughput")
    left.legend(fontsize=8)
    drills = list(dict.fromkeys(r["drill"] for r in outages))
    opaths = list(dict.fromkeys(r["path"] for r in outages))
    width = 0.8 / max(1, len(drills))
    for i, drill in enumerate(drills):
        vals = [next((r["median_write_outage_s"] or 0 for r in outages if r["drill"] == drill and r["path"] == p), 0)
                for p in opaths]
        right.bar([x + i * width for x in range(len(opaths))], vals, width, label=drill)
    right.set_xticks([x + width * (len(drills) - 1) / 2 for x in range(len(opaths))], opaths)
    right.set_ylabel("median write outage (s)")
    right.set_title("drills" if outages else "drills not run")
    if drills:
        right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(folder: Path, meta: Mapping[str, Any], results: Sequence[Mapping[str, Any]],
                 pgbench: Sequence[Mapping[str, Any]], outages: Sequence[Mapping[str, Any]],
                 storms: Sequence[Mapping[str, Any]] = ()) -> Path:
    """report.json (every run), report.md and report.png in ``folder``; returns the Markdown's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(
        json.dumps({"meta": dict(meta), "pgbench_runs": list(results), "pgbench": with_targets(pgbench),
                    "outages": list(outages), "storms": list(storms)}, indent=2), encoding="utf-8")
    write_chart(folder / "report.png", pgbench, outages)
    md = folder / "report.md"
    md.write_text(render_markdown(meta, pgbench, outages, storms), encoding="utf-8")
    return md
