"""Archive old months of ``lab_results`` to verified Parquet, and restore them: the crash-safe state machine.

A month is archived in steps, each recorded in its manifest (see ``manifest``):

1. export: one REPEATABLE READ snapshot gives both the in-database checksum and
   the rows streamed to Parquet (zstd), written to a staging file, then renamed;
2. verify: SHA-256, row count, schema and the checksum recomputed from the file
   must match what PostgreSQL computed; any mismatch stops here, the month stays;
3. detach: ``ALTER TABLE lab_results DETACH PARTITION ... CONCURRENTLY`` (writes go on);
   then the detached table's checksum is compared with the manifest again, so a
   row written into the month after the export is never lost (it is exported again);
4. drop (or keep detached): one transaction drops the month and forgets its
   pg_partman sub-partition config, which the manifest keeps for the restore.

A rerun reads the manifest state and the catalog (attached, detach pending,
detached, gone) and finishes the step that was interrupted, or exports again
if the file cannot be trusted. Restore is one transaction: build the month
from Parquet with a CHECK constraint that proves its bounds, attach (no
validation scan), verify the checksum, commit.

``CAREFLOW_ARCHIVE_FAILPOINT=<name>`` SIGKILLs this process at a named point
(the crash tests use it); see ``FAILPOINTS``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql
from tqdm import tqdm

from careflow_ha.archive import rowhash
from careflow_ha.archive.manifest import (
    OFFLINE_STATES,
    Manifest,
    all_manifests,
    data_key,
    load_manifest,
    save_manifest,
)
from careflow_ha.archive.store import ArchiveStore
from careflow_ha.data.db import connect
from careflow_ha.errors import CheckFailed, UsageError

TABLE = "public.lab_results"
#: Names of the points where ``CAREFLOW_ARCHIVE_FAILPOINT`` kills the process (in step order).
FAILPOINTS = ("export.partial", "export.published", "exported", "verified", "detach.started", "detach.done",
              "detached", "drop.done", "restore.loaded", "restore.committed")
#: Rows per Parquet write / COPY batch: bounded memory whatever the month's size.
BATCH_ROWS = 50_000
#: Parquet settings: zstd (the issue's choice) at level 9; rows sorted by clinic and time.
PARQUET_OPTIONS: dict = {"compression": "zstd", "compression_level": 9, "write_statistics": True}
#: Ever-growing columns: delta encoding beats a dictionary (-35% file size on a month of lab_results).
DELTA_COLUMNS = ("result_id", "collected_at")


def parquet_options(columns: list[rowhash.Column]) -> dict:
    """Writer options for ``columns``: delta encoding for ids and times, dictionaries for the rest."""
    delta = [c.name for c in columns if c.name in DELTA_COLUMNS]
    return {**PARQUET_OPTIONS, "use_dictionary": [c.name for c in columns if c.name not in delta],
            "column_encoding": dict.fromkeys(delta, "DELTA_BINARY_PACKED")}
#: A DDL step never queues behind a long lock for longer than this (it would make writers queue behind it).
LOCK_TIMEOUT = "10s"

_PARTITIONS_SQL = r"""
SELECT format('%%I.%%I', n.nspname, c.relname),
       pg_get_expr(c.relpartbound, c.oid),
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\)'))[1]::timestamptz AS lower,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz AS upper,
       i.inhdetachpending
  FROM pg_inherits i
  JOIN pg_class c ON c.oid = i.inhrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE i.inhparent = %s::regclass AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
 ORDER BY 3
"""


def failpoint(name: str) -> None:
    """Die here, like a crash or ``kill -9``, if the environment asks for it (crash tests)."""
    if os.environ.get("CAREFLOW_ARCHIVE_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class MonthPartition:
    """A month partition of the parent as the catalog shows it."""

    name: str  # schema-qualified
    bound: str
    lower: datetime
    upper: datetime
    detach_pending: bool

    @property
    def month(self) -> str:
        return f"{self.lower.year:04d}-{self.lower.month:02d}"  # lower is in the session time zone


@dataclass
class MonthResult:
    """What happened to one month in a run (a row of the CLI's table)."""

    month: str
    action: str
    rows: int | None = None
    file_bytes: int | None = None
    heap_bytes: int | None = None
    seconds: float = 0.0
    state: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.file_bytes and self.heap_bytes:
            return round(self.heap_bytes / self.file_bytes, 1)
        return None

    def as_dict(self) -> dict:
        return {"month": self.month, "action": self.action, "state": self.state, "rows": self.rows,
                "file_bytes": self.file_bytes, "heap_bytes": self.heap_bytes, "heap/parquet": self.ratio,
                "seconds": round(self.seconds, 2)}


def _split(qualified: str) -> sql.Identifier:
    schema, _, name = qualified.rpartition(".")
    return sql.Identifier(schema or "public", name)


def month_partitions(conn: psycopg.Connection, parent: str = TABLE) -> list[MonthPartition]:
    """Every month partition still attached to ``parent`` (or pending detach), oldest first."""
    return [MonthPartition(*row) for row in conn.execute(_PARTITIONS_SQL, (parent,))]


def relation_state(conn: psycopg.Connection, qualified: str) -> str:
    """'attached' | 'detach_pending' | 'detached' | 'absent' for a month partition name."""
    row = conn.execute(
        "SELECT c.relispartition, i.inhdetachpending FROM pg_class c "
        "LEFT JOIN pg_inherits i ON i.inhrelid = c.oid WHERE c.oid = to_regclass(%s)", (qualified,)).fetchone()
    if row is None:
        return "absent"
    if row[1]:
        return "detach_pending"
    return "attached" if row[0] else "detached"


def candidates(conn: psycopg.Connection, older_than_months: int, parent: str = TABLE) -> list[MonthPartition]:
    """Whole months that ended at least ``older_than_months`` ago (server clock and time zone)."""
    cutoff = conn.execute("SELECT now() - make_interval(months => %s)", (older_than_months,)).fetchone()[0]
    return [p for p in month_partitions(conn, parent) if p.upper <= cutoff]


def _leaves(conn: psycopg.Connection, qualified: str) -> list[dict[str, str]]:
    return [{"name": name, "bound": bound} for name, bound in conn.execute(
        "SELECT format('%%I.%%I', n.nspname, c.relname), pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE i.inhparent = %s::regclass ORDER BY c.relname", (qualified,))]


def _sizes(conn: psycopg.Connection, qualified: str) -> tuple[int, int]:
    """(heap bytes, total bytes) of a month: the sum over its leaves (a partitioned table has no storage)."""
    heap, total = conn.execute(
        "SELECT coalesce(sum(pg_relation_size(relid)), 0), coalesce(sum(pg_total_relation_size(relid)), 0) "
        "FROM pg_partition_tree(%s::regclass) WHERE isleaf", (qualified,)).fetchone()
    return int(heap), int(total)


def _partman_config(conn: psycopg.Connection, qualified: str) -> dict | None:
    row = conn.execute("SELECT to_jsonb(p) FROM partman.part_config p WHERE parent_table = %s",
                       (qualified,)).fetchone()
    return row[0] if row else None


def _parent_index_columns(conn: psycopg.Connection, qualified: str) -> list[str]:
    """The ``btree (pet_id, collected_at)`` part of every index on ``qualified``, to build them on a month."""
    return [defn.split(" USING ", 1)[1] for (defn,) in conn.execute(
        "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = %s::regclass AND NOT indisunique "
        "ORDER BY indexrelid", (qualified,))]


class Archiver:
    """Archive and restore months of ``table`` between the database at ``dsn`` and ``store``."""

    def __init__(self, dsn: str, store: ArchiveStore, *, table: str = TABLE, keep_detached: bool = False,
                 progress: bool = True, log: Callable[[str], None] | None = None) -> None:
        self.dsn, self.store, self.table = dsn, store, table
        self.keep_detached, self.progress = keep_detached, progress
        self.log = log or (lambda _msg: None)
        #: After a restore: whether ATTACH skipped its validation scan thanks to the CHECK (instant attach).
        self.last_attach_skipped_scan: bool | None = None

    # -- planning -------------------------------------------------------------------------------------------

    def plan(self, older_than_months: int | None = None, months: list[str] | None = None) -> list[str]:
        """Months this run will act on: past retention (or named), plus any a killed run left half-way."""
        with connect(self.dsn) as conn:
            attached = month_partitions(conn, self.table)
            chosen: set[str] = set()
            if older_than_months is not None:
                chosen |= {p.month for p in candidates(conn, older_than_months, self.table)}
            if months:
                known = {p.month for p in attached}
                for month in months:
                    manifest = load_manifest(self.store, self.table, month)
                    if month not in known and manifest is None:
                        raise UsageError(f"month {month} has no partition in {self.table} and no archive; "
                                         "`careflow-ha partitions status` lists the months")
                chosen |= set(months)
        unfinished = {m.month for m in all_manifests(self.store, self.table)
                      if m.state not in (*OFFLINE_STATES, "restored", "invalid")}
        return sorted(chosen | unfinished)

    def describe_plan(self, months: list[str]) -> list[dict]:
        """For ``--dry-run``: what a run would do to each month, changing nothing."""
        out = []
        with connect(self.dsn) as conn:
            for month in months:
                manifest = load_manifest(self.store, self.table, month)
                part = self._partition_name(conn, month, manifest)
                state = relation_state(conn, part)
                rows = None
                if state != "absent":
                    rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_split(part))).fetchone()[0]
                heap = _sizes(conn, part)[0] if state != "absent" else None
                action = ("resume from " + manifest.state) if manifest and manifest.state not in (
                    "restored", "invalid") else "export, verify, " + ("detach (keep)" if self.keep_detached
                                                                        else "detach, drop")
                out.append({"month": month, "partition": part, "in_database": state, "rows": rows,
                            "heap_bytes": heap, "manifest_state": manifest.state if manifest else None,
                            "would": action})
        return out

    def _partition_name(self, conn: psycopg.Connection, month: str, manifest: Manifest | None) -> str:
        if manifest is not None:
            return manifest.partition
        for part in month_partitions(conn, self.table):
            if part.month == month:
                return part.name
        raise UsageError(f"month {month} is not a partition of {self.table}")

    # -- archive --------------------------------------------------------------------------------------------

    def run(self, months: list[str]) -> list[MonthResult]:
        """Archive each month in order; one failing month stops the run (the ones before it are done)."""
        results = []
        with self._run_lock():
            for month in tqdm(months, desc="months", unit="month", disable=not self.progress or len(months) < 2):
                results.append(self.archive_month(month))
        return results

    @contextmanager
    def _run_lock(self) -> Iterator[None]:
        """One archive/restore at a time per table (a session advisory lock; released if we die)."""
        with connect(self.dsn, autocommit=True) as conn:
            key = conn.execute("SELECT hashtext(%s)", ("careflow-archive:" + self.table,)).fetchone()[0]
            if not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                raise UsageError(f"another archive run or restore on {self.table} is in progress; wait for it "
                                 "to finish, then run again")
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def archive_month(self, month: str) -> MonthResult:
        """Drive one month through the state machine to ``archived`` (or ``kept``), resuming where it stopped."""
        t0 = time.monotonic()
        manifest = load_manifest(self.store, self.table, month)
        self.store.clean_staging(data_key(self.table, month).rsplit("/", 1)[0])
        steps = 0
        while True:
            steps += 1
            if steps > 20:  # a bug guard: every step moves forward or raises
                raise CheckFailed(f"month {month}: the archive state machine did not settle; see its manifest")
            with connect(self.dsn) as conn:
                part = self._partition_name(conn, month, None) if manifest is None else manifest.partition
                where = relation_state(conn, part)
            state = manifest.state if manifest else None
            if state in OFFLINE_STATES:
                if where == "attached":
                    # Archived before, restored by hand since: the archive is stale, export again.
                    manifest = self._start(month, part)
                    continue
                return MonthResult(month, "already archived", manifest.rows, manifest.file_bytes,
                                   manifest.heap_bytes, time.monotonic() - t0, manifest.state)
            if state in (None, "exporting", "invalid", "restored", "restoring"):
                if where == "absent":
                    raise CheckFailed(f"month {month}: partition {part} is not in the database and the archive "
                                      f"is incomplete (state {state}); nothing to archive")
                if manifest is None or (where == "attached" and state != "exporting"):
                    manifest = self._start(month, part)  # describe the month as the catalog has it now
                elif state != "exporting":  # detached already: export the detached table again
                    save_manifest(self.store, manifest, "exporting")
                self._export(manifest)
            elif state == "exported":
                self._verify_or_invalidate(manifest)
            elif state == "verified":
                if where in ("attached", "detach_pending"):
                    self._verify_or_invalidate(manifest)  # the file may have changed since: check before detach
                    save_manifest(self.store, manifest, "detaching")
                else:
                    save_manifest(self.store, manifest, "detaching")
            elif state == "detaching":
                self._detach(manifest, where)
            elif state == "detached":
                if where == "absent":  # killed after the drop committed
                    save_manifest(self.store, manifest, "archived")
                    continue
                self._verify_or_invalidate(manifest)  # last look at the file before the rows are gone
                if self.keep_detached or manifest.keep_detached:
                    self._keep(manifest)
                else:
                    self._drop(manifest)
            else:
                raise CheckFailed(f"month {month}: unknown manifest state {state!r}")
            if manifest.state in OFFLINE_STATES:
                return MonthResult(month, "archived" if manifest.state == "archived" else "detached (kept)",
                                   manifest.rows, manifest.file_bytes, manifest.heap_bytes,
                                   time.monotonic() - t0, manifest.state)

    def _start(self, month: str, part: str) -> Manifest:
        """A fresh manifest (state ``exporting``) describing the month as the catalog has it now."""
        with connect(self.dsn) as conn:
            rows = [p for p in month_partitions(conn, self.table) if p.name == part]
            if not rows:
                raise CheckFailed(f"month {month}: {part} is not attached to {self.table}")
            p = rows[0]
            columns = rowhash.table_columns(conn, self.table)
            manifest = Manifest(
                table=self.table, month=month, partition=part, bound=p.bound, lower=p.lower.isoformat(),
                upper=p.upper.isoformat(), leaves=_leaves(conn, part), partman_config=_partman_config(conn, part),
                schema=[c.as_dict() for c in columns], checksum_algorithm=rowhash.ALGORITHM,
                keep_detached=self.keep_detached, file_key=data_key(self.table, month))
        save_manifest(self.store, manifest, "exporting")
        return manifest

    def _columns(self, manifest: Manifest) -> list[rowhash.Column]:
        return [rowhash.Column(c["name"], c["pg_type"], c["nullable"]) for c in manifest.schema]

    def _export(self, manifest: Manifest) -> None:
        """Checksum and stream the month to Parquet from one snapshot; publish the file atomically."""
        columns = self._columns(manifest)
        key = data_key(self.table, manifest.month)
        staged = self.store.staging_path(key)
        schema = rowhash.arrow_schema(columns).with_metadata(
            {"careflow.table": self.table, "careflow.month": manifest.month})
        with connect(self.dsn) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            checksum, rows, clinics = rowhash.checksum_in_postgres(conn, columns, manifest.partition)
            heap, total = _sizes(conn, manifest.partition)
            cols = sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)
            query = sql.SQL("SELECT {} FROM {} ORDER BY clinic_id, collected_at, result_id").format(
                cols, _split(manifest.partition))
            bar = tqdm(total=rows, unit="rows", unit_scale=True, desc=f"export {manifest.month}",
                       disable=not self.progress)
            with bar, conn.cursor(name="careflow_archive_export") as cur, \
                    pq.ParquetWriter(staged, schema, **parquet_options(columns)) as writer:
                cur.execute(query)
                while batch := cur.fetchmany(BATCH_ROWS):
                    by_column = zip(*batch, strict=True)
                    arrays = [pa.array(vals, type=c.arrow_type) for vals, c in zip(by_column, columns, strict=True)]
                    writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
                    bar.update(len(batch))
                    failpoint("export.partial")
            conn.rollback()
        self.store.publish(staged, key)
        failpoint("export.published")
        path = self.store.local_path(key)
        manifest.rows, manifest.clinics, manifest.checksum_postgres = rows, clinics, checksum
        manifest.checksum_parquet = None
        manifest.file_sha256, manifest.file_bytes = rowhash.sha256_file(str(path)), path.stat().st_size
        manifest.heap_bytes, manifest.total_bytes = heap, total
        save_manifest(self.store, manifest, "exported")
        self.log(f"{manifest.month}: exported {rows} rows, {manifest.file_bytes} bytes (heap {heap})")
        failpoint("exported")

    def verify_file(self, manifest: Manifest) -> None:
        """Raise CheckFailed unless the archive file matches the manifest (existence, SHA-256, schema, checksum)."""
        key = manifest.file_key or data_key(self.table, manifest.month)
        where = f"{self.store.describe()}/{key}"
        if not self.store.exists(key):
            raise CheckFailed(f"archive file {where} is missing")
        path = str(self.store.local_path(key))
        sha = rowhash.sha256_file(path)
        if sha != manifest.file_sha256:
            raise CheckFailed(f"archive file {where} is corrupted: SHA-256 {sha[:12]}... differs from the "
                              f"manifest's {str(manifest.file_sha256)[:12]}...")
        columns = self._columns(manifest)
        try:
            file_schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as exc:
            raise CheckFailed(f"archive file {where} is unreadable ({str(exc).splitlines()[0]})") from None
        want = rowhash.arrow_schema(columns)
        if [(f.name, f.type) for f in file_schema] != [(f.name, f.type) for f in want]:
            raise CheckFailed(f"archive file {where} has schema {file_schema.names}, not the manifest's")
        checksum, rows, clinics = rowhash.checksum_parquet(columns, path)
        if checksum != manifest.checksum_postgres or rows != manifest.rows:
            raise CheckFailed(f"archive file {where}: checksum {checksum} ({rows} rows) differs from the one "
                              f"PostgreSQL computed, {manifest.checksum_postgres} ({manifest.rows} rows)")
        if clinics != sorted(manifest.clinics):
            raise CheckFailed(f"archive file {where}: clinics {clinics} differ from the manifest's {manifest.clinics}")
        manifest.checksum_parquet = checksum

    def _verify_or_invalidate(self, manifest: Manifest) -> None:
        """Verify; on failure mark the manifest ``invalid`` (next run exports again) and stop with the reason."""
        try:
            self.verify_file(manifest)
        except CheckFailed as exc:
            with connect(self.dsn) as conn:
                where = relation_state(conn, manifest.partition)
            if where == "absent":  # the rows exist nowhere else: keep the state, never re-export from nothing
                raise CheckFailed(f"month {manifest.month}: {exc}; its partition is already dropped, so restore "
                                  "the file from a backup of the archive") from None
            save_manifest(self.store, manifest, "invalid", error=str(exc))
            raise CheckFailed(f"month {manifest.month} stays in the database ({where}): {exc}. Nothing was "
                              "dropped; rerun `careflow-ha archive run` to export it again") from None
        if manifest.state == "exported":
            save_manifest(self.store, manifest, "verified")
            failpoint("verified")

    def _detach(self, manifest: Manifest, where: str) -> None:
        """DETACH CONCURRENTLY (or FINALIZE a detach a killed run left pending); then re-check the rows."""
        parent, part = _split(self.table), _split(manifest.partition)
        if where in ("attached", "detach_pending"):
            with connect(self.dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
                failpoint("detach.started")
                if where == "attached":
                    conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY").format(parent, part))
                else:
                    conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {} FINALIZE").format(parent, part))
            failpoint("detach.done")
        elif where == "absent":
            save_manifest(self.store, manifest, "archived")
            return
        # Rows written into the month between the export and the detach must not be lost.
        with connect(self.dsn) as conn:
            checksum, rows, _ = rowhash.checksum_in_postgres(conn, self._columns(manifest), manifest.partition)
            conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(part, sql.Literal(
                f"careflow archive: detached from {self.table}; rows in {manifest.file_key} "
                f"(sha256 {manifest.file_sha256}); see the manifest")))
            conn.commit()
        if checksum != manifest.checksum_postgres:
            self.log(f"{manifest.month}: {rows - (manifest.rows or 0):+d} rows changed after the export; "
                     "exporting the detached table again")
            save_manifest(self.store, manifest, "exporting")
            return
        save_manifest(self.store, manifest, "detached")
        failpoint("detached")

    def _drop(self, manifest: Manifest) -> None:
        """Drop the detached month and its pg_partman config in one transaction (both are in the manifest)."""
        with connect(self.dsn) as conn:
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
            if relation_state(conn, manifest.partition) != "detached":
                raise CheckFailed(f"month {manifest.month}: {manifest.partition} is not detached; not dropping it")
            conn.execute(sql.SQL("DROP TABLE {}").format(_split(manifest.partition)))
            conn.execute("DELETE FROM partman.part_config WHERE parent_table = %s", (manifest.partition,))
            conn.commit()
        failpoint("drop.done")
        save_manifest(self.store, manifest, "archived")
        self.log(f"{manifest.month}: archived and dropped")

    def _keep(self, manifest: Manifest) -> None:
        with connect(self.dsn) as conn:
            conn.execute("DELETE FROM partman.part_config WHERE parent_table = %s", (manifest.partition,))
            conn.commit()
        save_manifest(self.store, manifest, "kept")

    # -- restore --------------------------------------------------------------------------------------------

    def restore(self, month: str) -> MonthResult:
        """Bring an archived month back: verified file -> new tables -> instant attach -> checksum -> commit."""
        t0 = time.monotonic()
        manifest = load_manifest(self.store, self.table, month)
        if manifest is None:
            raise UsageError(f"no archive of {month} in {self.store.describe()}; `careflow-ha archive list` shows "
                             "the archived months")
        with self._run_lock():
            with connect(self.dsn) as conn:
                where = relation_state(conn, manifest.partition)
            if where == "attached":
                if manifest.state == "restoring":  # killed after the commit, before the manifest said so
                    self._check_restored(manifest)
                    save_manifest(self.store, manifest, "restored")
                    return MonthResult(month, "restored", manifest.rows, manifest.file_bytes, manifest.heap_bytes,
                                       time.monotonic() - t0, manifest.state)
                if manifest.state not in OFFLINE_STATES:
                    return MonthResult(month, "already in the database", manifest.rows, state=manifest.state)
            if manifest.state not in (*OFFLINE_STATES, "restoring", "restored"):
                raise UsageError(f"month {month} is not archived (state {manifest.state}, partition {where}); "
                                 "run `careflow-ha archive run` to finish it first")
            self.verify_file(manifest)
            save_manifest(self.store, manifest, "restoring")
            rows = self._restore_tables(manifest, where)
            failpoint("restore.committed")
            save_manifest(self.store, manifest, "restored")
        return MonthResult(month, "restored", rows, manifest.file_bytes, manifest.heap_bytes,
                           time.monotonic() - t0, "restored")

    def _check_restored(self, manifest: Manifest) -> None:
        with connect(self.dsn) as conn:
            checksum, rows, _ = rowhash.checksum_in_postgres(conn, self._columns(manifest), manifest.partition)
        if checksum != manifest.checksum_postgres:
            raise CheckFailed(f"month {manifest.month} is attached but its checksum {checksum} differs from the "
                              f"archive's {manifest.checksum_postgres}")

    def _restore_tables(self, manifest: Manifest, where: str) -> int:
        columns = self._columns(manifest)
        part, parent = _split(manifest.partition), _split(self.table)
        check = sql.SQL("CHECK (collected_at >= {} AND collected_at < {})").format(
            sql.Literal(manifest.lower), sql.Literal(manifest.upper))
        check_name = sql.Identifier(manifest.partition.rpartition(".")[2] + "_archive_bounds")
        with connect(self.dsn) as conn:
            # The month comes back in the table's layout of today (careflow_partition_scheme), whatever it was
            # archived from: clinic leaves only while lab_results is still configured for them.
            per_clinic = bool(manifest.leaves) and conn.execute(
                "SELECT EXISTS (SELECT 1 FROM partman.part_config_sub WHERE sub_parent = %s)",
                (self.table,)).fetchone()[0]
            if where == "absent" and per_clinic:
                conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS, "
                                     "CONSTRAINT {} {}) PARTITION BY RANGE (clinic_id)").format(
                    part, parent, check_name, check))
                for leaf in manifest.leaves:
                    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} {}").format(
                        _split(leaf["name"]), part, sql.SQL(leaf["bound"])))
                rows = self._copy_in(conn, manifest, columns)
                # The parent's index, built before the attach so the attach only links it (no build under lock).
                conn.execute(sql.SQL("CREATE INDEX ON {} (pet_id, collected_at)").format(part))
            elif where == "absent":  # months-only: one table holds the month
                conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS, "
                                     "CONSTRAINT {} {})").format(part, parent, check_name, check))
                rows = self._copy_in(conn, manifest, columns)
                for using in _parent_index_columns(conn, self.table):  # built now: the attach only links them
                    conn.execute(sql.SQL("CREATE INDEX ON {} USING {}").format(part, sql.SQL(using)))
            else:  # kept detached: prove the bounds the same way
                conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(part, check_name, check))
                rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(part)).fetchone()[0]
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
            # PostgreSQL says at DEBUG1 whether the CHECK let it skip the validation scan: record it.
            notices: list[str] = []
            conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
            conn.execute("SET LOCAL client_min_messages = debug1")
            conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(parent, part,
                                                                                sql.SQL(manifest.bound)))
            conn.execute("SET LOCAL client_min_messages = notice")
            self.last_attach_skipped_scan = any("is implied by existing constraints" in n for n in notices)
            conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(part, check_name))
            conn.execute(sql.SQL("COMMENT ON TABLE {} IS NULL").format(part))
            checksum, count, _ = rowhash.checksum_in_postgres(conn, columns, manifest.partition)
            if checksum != manifest.checksum_postgres:
                conn.rollback()
                raise CheckFailed(f"restore of {manifest.month} rolled back: checksum {checksum} ({count} rows) "
                                  f"differs from the manifest's {manifest.checksum_postgres}")
            if manifest.partman_config and per_clinic:  # a clinic-partitioned month's own partman config
                conn.execute("INSERT INTO partman.part_config SELECT * FROM "
                             "jsonb_populate_record(NULL::partman.part_config, %s::jsonb) ON CONFLICT DO NOTHING",
                             (psycopg.types.json.Jsonb(manifest.partman_config),))
            failpoint("restore.loaded")
            conn.commit()
        with connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("ANALYZE {}").format(part))
        return rows

    def _copy_in(self, conn: psycopg.Connection, manifest: Manifest, columns: list[rowhash.Column]) -> int:
        path = str(self.store.local_path(manifest.file_key or data_key(self.table, manifest.month)))
        names = sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)
        rows = 0
        bar = tqdm(total=manifest.rows, unit="rows", unit_scale=True, desc=f"restore {manifest.month}",
                   disable=not self.progress)
        with bar, conn.cursor() as cur, cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(
                _split(manifest.partition), names)) as copy:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
                for row in zip(*(batch.column(i).to_pylist() for i in range(batch.num_columns)), strict=True):
                    copy.write_row(row)
                rows += batch.num_rows
                bar.update(batch.num_rows)
        return rows


def list_archive(dsn: str | None, store: ArchiveStore, table: str = TABLE) -> list[dict]:
    """Every archived month with its state, size and (when a DSN is given) where the month is in the database."""
    rows = []
    conn = connect(dsn) if dsn else None
    try:
        for m in all_manifests(store, table):
            rows.append({
                "month": m.month, "state": m.state, "rows": m.rows, "clinics": len(m.clinics),
                "file_bytes": m.file_bytes, "heap_bytes": m.heap_bytes,
                "heap/parquet": round(m.heap_bytes / m.file_bytes, 1) if m.file_bytes and m.heap_bytes else None,
                "in_database": relation_state(conn, m.partition) if conn else None,
                "checksum": m.checksum_postgres, "error": m.error,
            })
    finally:
        if conn is not None:
            conn.close()
    return rows
