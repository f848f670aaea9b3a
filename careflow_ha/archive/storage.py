"""``careflow-ha storage report``: where the bytes are, and what to change, each figure with a recommendation.

Measured, never assumed:

- sizes per table and per ``lab_results`` partition (heap, indexes, TOAST);
- on ``collected_at``: a B-tree and a BRIN index built on a copy of an old
  month (a temporary table, so the live tables are not locked), their sizes,
  and the cost of a one-day query with each (EXPLAIN ANALYZE, buffers);
- clinical notes (``visits.notes``) stored with TOAST lz4 and pglz, as they are
  and as per-pet histories long enough to be compressed;
- a month of ``lab_results`` as Parquet (zstd) against its heap.

Only temporary tables and temporary files are written. Output: Markdown, JSON
and a PNG chart in ``reports/storage/<UTC time>/``.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from careflow_ha.archive import rowhash
from careflow_ha.archive.archiver import TABLE, month_partitions, parquet_options
from careflow_ha.archive.manifest import all_manifests
from careflow_ha.archive.store import ArchiveStore
from careflow_ha.data.db import connect
from careflow_ha.dsn import redact

REPORTS_DIR = Path(__file__).resolve().parent.parent.parent / "reports" / "storage"
#: PostgreSQL compresses/moves a value out of line only when the row exceeds about this many bytes.
TOAST_THRESHOLD = 2032
#: How many notes / per-pet histories the TOAST comparison copies (bounded work on a shared cluster).
NOTES_SAMPLE, HISTORY_SAMPLE = 50_000, 3_000

_TABLE_SIZES = """
SELECT * FROM (
SELECT c.relname,
       c.relkind = 'p' AS partitioned,
       count(t.relid) FILTER (WHERE t.isleaf) AS leaves,
       coalesce(sum(pg_relation_size(t.relid)), 0) AS heap,
       coalesce(sum(pg_indexes_size(t.relid)), 0) AS indexes,
       coalesce(sum(CASE WHEN l.reltoastrelid <> 0 THEN pg_total_relation_size(l.reltoastrelid) ELSE 0 END), 0)
           AS toast,
       coalesce(sum(greatest(l.reltuples, 0)), 0)::bigint AS est_rows
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
  CROSS JOIN LATERAL (SELECT relid, isleaf FROM pg_partition_tree(c.oid)
                      UNION ALL SELECT c.oid, true WHERE c.relkind = 'r') t
  JOIN pg_class l ON l.oid = t.relid
 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
 GROUP BY c.relname, c.relkind) s
 ORDER BY heap + indexes DESC
"""

_LEAF_SIZES = """
SELECT format('%%I.%%I', ln.nspname, l.relname), format('%%I.%%I', pn.nspname, p.relname),
       pg_relation_size(t.relid), pg_indexes_size(t.relid),
       CASE WHEN l.reltoastrelid <> 0 THEN pg_total_relation_size(l.reltoastrelid) ELSE 0 END,
       greatest(l.reltuples, 0)::bigint
  FROM pg_partition_tree(%s::regclass) t
  JOIN pg_class l ON l.oid = t.relid JOIN pg_namespace ln ON ln.oid = l.relnamespace
  JOIN pg_class p ON p.oid = t.parentrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
 WHERE t.isleaf ORDER BY 1
"""


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1_048_576:.2f} MB"


def _explain(conn: psycopg.Connection, query: sql.Composable, runs: int = 3) -> dict[str, Any]:
    """Best of ``runs`` EXPLAIN ANALYZE: execution ms, buffers touched, plan node types."""
    best: dict[str, Any] | None = None
    for _ in range(runs):
        plan = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ") + query).fetchone()[0][0]
        node, nodes, stack = plan["Plan"], [], [plan["Plan"]]
        buffers = 0
        while stack:
            n = stack.pop()
            nodes.append(n["Node Type"])
            stack += n.get("Plans", [])
        for key in ("Shared Hit Blocks", "Shared Read Blocks", "Local Hit Blocks", "Local Read Blocks"):
            buffers += node.get(key, 0)
        row = {"exec_ms": round(plan["Execution Time"], 3), "buffers": buffers, "plan": "+".join(dict.fromkeys(nodes))}
        if best is None or row["exec_ms"] < best["exec_ms"]:
            best = row
    assert best is not None
    return best


def table_sizes(conn: psycopg.Connection) -> tuple[list[dict], list[dict]]:
    """(per table, per lab_results month with its leaves) sizes in bytes."""
    keys = ("table", "partitioned", "leaves", "heap", "indexes", "toast", "est_rows")
    tables = [{k: (int(v) if k in ("leaves", "heap", "indexes", "toast", "est_rows") else v)
               for k, v in zip(keys, r, strict=True)} for r in conn.execute(_TABLE_SIZES)]
    months: dict[str, dict] = {}
    for leaf, parent, heap, idx, toast, rows in conn.execute(_LEAF_SIZES, (TABLE,)):
        m = months.setdefault(parent, {"partition": parent, "heap": 0, "indexes": 0, "toast": 0, "est_rows": 0,
                                       "leaves": []})
        m["heap"] += heap
        m["indexes"] += idx
        m["toast"] += toast
        m["est_rows"] += rows
        m["leaves"].append({"leaf": leaf, "heap": heap, "indexes": idx, "toast": toast, "est_rows": rows})
    return tables, sorted(months.values(), key=lambda m: m["partition"])


def btree_vs_brin(conn: psycopg.Connection, partition: str) -> dict[str, Any]:
    """Both index kinds on a temp copy of an old month; size and one-day query cost with each, and a seq scan."""
    ident = sql.Identifier(*partition.split("."))
    conn.execute("DROP TABLE IF EXISTS pg_temp.storage_sample")
    # In time order, as rows arrive in a leaf (one clinic-month): what a BRIN on a leaf would see, with
    # the whole month's rows so that the index sizes are not all one page.
    conn.execute(sql.SQL("CREATE TEMP TABLE storage_sample AS SELECT * FROM {} ORDER BY collected_at")
                 .format(ident))
    conn.execute("ANALYZE storage_sample")
    rows = conn.execute("SELECT count(*) FROM storage_sample").fetchone()[0]
    day = conn.execute("SELECT date_trunc('day', min(collected_at)) + interval '10 days' FROM storage_sample"
                       ).fetchone()[0]
    correlation = conn.execute("SELECT correlation FROM pg_stats WHERE tablename = 'storage_sample' "
                               "AND attname = 'collected_at'").fetchone()
    query = sql.SQL("SELECT count(*), avg(value) FROM storage_sample WHERE collected_at >= {} "
                    "AND collected_at < {} + interval '1 day'").format(sql.Literal(day), sql.Literal(day))
    out: dict[str, Any] = {"partition": partition, "rows": rows, "heap": conn.execute(
        "SELECT pg_relation_size('storage_sample')").fetchone()[0], "query_day": str(day),
        "correlation": round(correlation[0], 3) if correlation and correlation[0] is not None else None}
    conn.execute("SET LOCAL enable_indexscan = off")  # both indexes through bitmap scans: like for like
    conn.execute("SET LOCAL enable_bitmapscan = off")
    out["seqscan"] = _explain(conn, query)
    conn.execute("SET LOCAL enable_bitmapscan = on")
    conn.execute("SET LOCAL enable_seqscan = off")
    for kind, ddl in (("btree", "CREATE INDEX storage_sample_idx ON storage_sample (collected_at)"),
                      ("brin", "CREATE INDEX storage_sample_idx ON storage_sample USING brin (collected_at)"),
                      # A month is small next to BRIN's default 128-page ranges: finer ranges, still tiny.
                      ("brin16", "CREATE INDEX storage_sample_idx ON storage_sample USING brin (collected_at) "
                                 "WITH (pages_per_range = 16)")):
        t0 = time.monotonic()
        conn.execute(ddl)
        build_s = time.monotonic() - t0
        size = conn.execute("SELECT pg_relation_size('storage_sample_idx')").fetchone()[0]
        out[kind] = {"bytes": size, "build_ms": round(build_s * 1000, 1), **_explain(conn, query)}
        conn.execute("DROP INDEX storage_sample_idx")
    conn.execute("DROP TABLE storage_sample")
    return out


def toast_compression(conn: psycopg.Connection, log: Callable[[str], None]) -> dict[str, Any]:
    """Clinical notes as they are and as per-pet histories, stored with pglz and with lz4."""
    stats = conn.execute(
        "SELECT count(*), coalesce(avg(octet_length(notes)), 0), coalesce(max(octet_length(notes)), 0), "
        "count(*) FILTER (WHERE octet_length(notes) > %s) FROM visits", (TOAST_THRESHOLD,)).fetchone()
    out: dict[str, Any] = {"visits": stats[0], "avg_note_bytes": round(float(stats[1]), 1),
                           "max_note_bytes": stats[2], "notes_over_threshold": stats[3]}
    sources = {
        "notes": sql.SQL("SELECT notes FROM visits ORDER BY visit_id LIMIT {}").format(sql.Literal(NOTES_SAMPLE)),
        # A pet's whole history in one value: how a "full record" document or a long discharge note looks.
        "pet_history": sql.SQL("SELECT string_agg(notes, E'\\n' ORDER BY visited_at) FROM visits WHERE pet_id IN "
                               "(SELECT pet_id FROM visits GROUP BY pet_id ORDER BY count(*) DESC, pet_id LIMIT {}) "
                               "GROUP BY pet_id").format(sql.Literal(HISTORY_SAMPLE)),
    }
    for name, source in sources.items():
        out[name] = {}
        for method in ("pglz", "lz4"):
            try:
                conn.execute(sql.SQL("CREATE TEMP TABLE toast_sample (notes text COMPRESSION {})").format(
                    sql.SQL(method)))
            except psycopg.errors.FeatureNotSupported as exc:
                conn.rollback()
                out[name][method] = {"error": str(exc).splitlines()[0]}
                log(f"storage: {method} unavailable: {exc}")
                continue
            t0 = time.monotonic()
            conn.execute(sql.SQL("INSERT INTO toast_sample ") + source)
            write_ms = (time.monotonic() - t0) * 1000
            read_ms = min(_timed(conn, "SELECT sum(length(notes)) FROM toast_sample") for _ in range(3))
            raw, stored, values, compressed = conn.execute(
                "SELECT coalesce(sum(octet_length(notes)), 0), coalesce(sum(pg_column_size(notes)), 0), count(*), "
                "count(*) FILTER (WHERE pg_column_compression(notes) IS NOT NULL) FROM toast_sample").fetchone()
            total = conn.execute("SELECT pg_total_relation_size('toast_sample')").fetchone()[0]
            out[name][method] = {"values": values, "compressed_values": compressed, "raw_bytes": int(raw),
                                 "stored_bytes": int(stored), "table_bytes": total,
                                 "ratio": round(int(raw) / int(stored), 2) if stored else None,
                                 "write_ms": round(write_ms, 1), "read_ms": round(read_ms, 1)}
            conn.execute("DROP TABLE toast_sample")
    return out


def _timed(conn: psycopg.Connection, query: str) -> float:
    t0 = time.monotonic()
    conn.execute(query).fetchall()
    return (time.monotonic() - t0) * 1000


def parquet_vs_heap(conn: psycopg.Connection, partitions: list[str], heap_by_partition: dict[str, int]) -> list[dict]:
    """Each sample month written to a temporary Parquet file exactly as the archiver writes it."""
    columns = rowhash.table_columns(conn, TABLE)
    schema = rowhash.arrow_schema(columns)
    names = sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)
    out = []
    with tempfile.TemporaryDirectory(prefix="careflow-storage-") as tmp:
        for part in partitions:
            rows = conn.execute(sql.SQL("SELECT {} FROM {} ORDER BY clinic_id, collected_at, result_id").format(
                names, sql.Identifier(*part.split(".")))).fetchall()
            if not rows:
                continue
            arrays = [pa.array(v, type=c.arrow_type) for v, c in zip(zip(*rows, strict=True), columns, strict=True)]
            path = Path(tmp) / "sample.parquet"
            pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path, **parquet_options(columns))
            size = path.stat().st_size
            heap = heap_by_partition.get(part, 0)
            out.append({"partition": part, "rows": len(rows), "heap": heap, "parquet": size,
                        "heap_per_parquet": round(heap / size, 1) if size else None,
                        "bytes_per_row_heap": round(heap / len(rows), 1),
                        "bytes_per_row_parquet": round(size / len(rows), 1)})
    return out


def recommendations(report: dict) -> list[str]:
    """One recommendation per measured figure, stating the number it rests on."""
    recs = []
    months = report["partitions"]
    if months:
        heap = sum(m["heap"] for m in months)
        idx = sum(m["indexes"] for m in months)
        recs.append(f"lab_results: {len(months)} months, heap {_mb(heap)}, indexes {_mb(idx)} "
                    f"({idx / heap:.0%} of heap). Indexes are the (pet_id, collected_at) B-tree only; keep it "
                    "(pet history needs it) and add nothing month-wide." if heap else
                    "lab_results is empty: nothing to size yet.")
    idx = report.get("btree_vs_brin")
    if idx:
        b, r, r16 = idx["btree"], idx["brin"], idx["brin16"]
        ratio = b["bytes"] / r16["bytes"] if r16["bytes"] else 0
        ordered = (idx["correlation"] or 0) > 0.9
        recs.append(
            f"collected_at on an old month ({idx['rows']} rows, {_mb(idx['heap'])} heap, correlation "
            f"{idx['correlation']}): B-tree {_mb(b['bytes'])}, BRIN {_mb(r['bytes'])} (128 pages/range), "
            f"BRIN {_mb(r16['bytes'])} (16 pages/range). One-day query: B-tree {b['exec_ms']} ms / {b['buffers']} "
            f"buffers, BRIN {r['exec_ms']} ms / {r['buffers']}, BRIN-16 {r16['exec_ms']} ms / {r16['buffers']}, "
            f"seq scan {idx['seqscan']['exec_ms']} ms / {idx['seqscan']['buffers']}. "
            "Add neither now: no workload query needs day ranges inside a month and pruning does the month "
            "narrowing. If day-range reports on old months appear, "
            + (f"use BRIN with pages_per_range = 16: {r16['buffers']} buffers against the B-tree's {b['buffers']} "
               f"at 1/{ratio:.0f} of its size, since rows arrive in time order; the default 128-page ranges "
               "cover most of a month and save little over a seq scan."
               if ordered and r16["buffers"] <= 4 * b["buffers"] else
               f"use the B-tree: BRIN reads {min(r['buffers'], r16['buffers'])} buffers against its {b['buffers']}"
               + ("." if ordered else ", because the rows are not in time order.")))
    toast = report.get("toast")
    if toast:
        notes, hist = toast.get("notes", {}), toast.get("pet_history", {})
        recs.append(
            f"clinical notes average {toast['avg_note_bytes']} bytes (max {toast['max_note_bytes']}); "
            f"{toast['notes_over_threshold']} of {toast['visits']} exceed the ~2 kB TOAST threshold, so today "
            "neither pglz nor lz4 compresses them (ratio "
            f"{notes.get('pglz', {}).get('ratio')} / {notes.get('lz4', {}).get('ratio')}). Compression is not a "
            "lever for visits now.")
        if "ratio" in hist.get("lz4", {}) and "ratio" in hist.get("pglz", {}):
            lz, pg = hist["lz4"], hist["pglz"]
            head = (f"long notes (per-pet histories, {lz['values']} values): pglz {pg['ratio']}x in "
                    f"{pg['write_ms']} ms write / {pg['read_ms']} ms read, lz4 {lz['ratio']}x in {lz['write_ms']} ms"
                    f" / {lz['read_ms']} ms. ")
            if max(lz["ratio"], pg["ratio"]) < 1.2:
                tail = ("These notes barely compress with either method, so the method does not matter for this "
                        "data; keep the default and re-run this report on real notes before changing it.")
            elif lz["ratio"] >= 0.9 * pg["ratio"]:
                tail = ("Set `ALTER TABLE visits ALTER notes SET COMPRESSION lz4` (or default_toast_compression = "
                        "lz4): a similar ratio, and lz4 is the faster codec to write and read.")
            else:
                tail = ("pglz saves noticeably more space here; keep pglz for notes unless read latency on long "
                        "notes becomes the issue.")
            recs.append(head + tail)
    pq_rows = report.get("parquet_vs_heap") or []
    if pq_rows:
        worst = min(r["heap_per_parquet"] for r in pq_rows)
        best = max(r["heap_per_parquet"] for r in pq_rows)
        recs.append(f"Parquet (zstd) is {worst}x-{best}x smaller than the heap for a month of lab_results "
                    f"(target 7x: {'met' if worst >= 7 else 'NOT met'}); archive months past retention with "
                    "`careflow-ha archive run --older-than 24months` and query them with `archive query`.")
    return recs


def build_report(dsn: str, store: ArchiveStore | None = None, *, sample_months: int = 3,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure everything (read-only apart from temporary tables) and return the report as data."""
    report: dict[str, Any] = {"generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
                              "target": redact(dsn)}
    with connect(dsn) as conn:
        log("storage: table and partition sizes")
        report["tables"], report["partitions"] = table_sizes(conn)
        heap_by = {m["partition"]: m["heap"] for m in report["partitions"]}
        with_rows = [m.name for m in month_partitions(conn) if heap_by.get(m.name)]
        if with_rows:
            log(f"storage: B-tree vs BRIN on {with_rows[0]}")
            report["btree_vs_brin"] = btree_vs_brin(conn, with_rows[0])
            conn.rollback()
            log(f"storage: Parquet vs heap on {len(with_rows[:sample_months])} month(s)")
            report["parquet_vs_heap"] = parquet_vs_heap(conn, with_rows[:sample_months], heap_by)
        log("storage: TOAST pglz vs lz4 on clinical notes")
        report["toast"] = toast_compression(conn, log)
        conn.rollback()
    if store is not None:
        report["archived"] = [{"month": m.month, "state": m.state, "rows": m.rows, "heap": m.heap_bytes,
                               "parquet": m.file_bytes} for m in all_manifests(store, TABLE)]
    report["recommendations"] = recommendations(report)
    return report


def _markdown(report: dict) -> str:
    lines = [f"# Storage report ({report['generated_at']})", "", f"Target: `{report['target']}`", "",
             "## Recommendations", ""] + [f"- {r}" for r in report["recommendations"]]
    lines += ["", "## Tables", "", "| table | leaves | est. rows | heap | indexes | TOAST |",
              "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {t['table']} | {t['leaves']} | {t['est_rows']} | {_mb(t['heap'])} | {_mb(t['indexes'])} | "
              f"{_mb(t['toast'])} |" for t in report["tables"]]
    lines += ["", "## lab_results partitions (months; leaves per clinic are in the JSON)", "",
              "| month partition | leaves | est. rows | heap | indexes | TOAST |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {m['partition']} | {len(m['leaves'])} | {m['est_rows']} | {_mb(m['heap'])} | {_mb(m['indexes'])} | "
              f"{_mb(m['toast'])} |" for m in report["partitions"]]
    idx = report.get("btree_vs_brin")
    if idx:
        lines += ["", f"## collected_at: B-tree vs BRIN ({idx['partition']}, {idx['rows']} rows, "
                  f"correlation {idx['correlation']}, one-day query)", "",
                  "| access | index size | exec ms | buffers | plan |", "|---|---:|---:|---:|---|"]
        for kind in ("seqscan", "btree", "brin", "brin16"):
            k = idx[kind]
            lines.append(f"| {kind} | {_mb(k.get('bytes')) if 'bytes' in k else '-'} | {k['exec_ms']} | "
                         f"{k['buffers']} | {k['plan']} |")
    toast = report.get("toast")
    if toast:
        lines += ["", "## TOAST compression of clinical notes", "",
                  "| data | method | values | compressed | raw | stored | ratio | write ms | read ms |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name in ("notes", "pet_history"):
            for method, r in toast.get(name, {}).items():
                if "error" in r:
                    lines.append(f"| {name} | {method} | {r['error']} | | | | | | |")
                    continue
                lines.append(f"| {name} | {method} | {r['values']} | {r['compressed_values']} | {_mb(r['raw_bytes'])} "
                             f"| {_mb(r['stored_bytes'])} | {r['ratio']} | {r['write_ms']} | {r['read_ms']} |")
    if report.get("parquet_vs_heap"):
        lines += ["", "## Parquet (zstd) vs heap", "", "| month partition | rows | heap | Parquet | heap/Parquet | "
                  "bytes/row heap | bytes/row Parquet |", "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['partition']} | {r['rows']} | {_mb(r['heap'])} | {_mb(r['parquet'])} | "
                  f"{r['heap_per_parquet']}x | {r['bytes_per_row_heap']} | {r['bytes_per_row_parquet']} |"
                  for r in report["parquet_vs_heap"]]
    if report.get("archived"):
        lines += ["", "## Archived months", "", "| month | state | rows | heap | Parquet |", "|---|---|---:|---:|---:|"]
        lines += [f"| {a['month']} | {a['state']} | {a['rows']} | {_mb(a['heap'])} | {_mb(a['parquet'])} |"
                  for a in report["archived"]]
    lines += ["", "![sizes](storage.png)", ""]
    return "\n".join(lines)


def _chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 1]})
    months = report["partitions"]
    labels = [m["partition"].rpartition("_p")[2] for m in months]
    mb = 1_048_576
    heap = [m["heap"] / mb for m in months]
    idx = [m["indexes"] / mb for m in months]
    ax1.bar(labels, heap, label="heap")
    ax1.bar(labels, idx, bottom=heap, label="indexes")
    pq_by = {r["partition"]: r["parquet"] / mb for r in report.get("parquet_vs_heap") or []}
    if pq_by:
        ax1.scatter([m["partition"].rpartition("_p")[2] for m in months if m["partition"] in pq_by],
                    [pq_by[m["partition"]] for m in months if m["partition"] in pq_by], color="black", zorder=3,
                    label="Parquet (zstd)")
    ax1.set_title("lab_results per month")
    ax1.set_ylabel("MB")
    ax1.tick_params(axis="x", rotation=60)
    ax1.legend()
    b = report.get("btree_vs_brin")
    if b:
        ax2.bar(["B-tree", "BRIN", "BRIN-16"], [b[k]["bytes"] / 1024 for k in ("btree", "brin", "brin16")],
                color=["C2", "C3", "C4"])
        ax2.set_title(f"collected_at index ({b['rows']} rows)")
        ax2.set_ylabel("kB")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(report: dict, out_dir: Path | None = None) -> Path:
    """Write storage.md, storage.json and storage.png into ``<out_dir>/<UTC time>/``; return that folder."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = (out_dir or REPORTS_DIR) / stamp
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "storage.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (folder / "storage.md").write_text(_markdown(report))
    _chart(report, folder / "storage.png")
    return folder
