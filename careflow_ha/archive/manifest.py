"""One JSON manifest per archived month: what the file must contain, and where the run got to.

The ``state`` field is the durable half of the crash-safe state machine (the
other half is the catalog: is the month attached, detach-pending, detached or
gone?). Every state change rewrites the manifest atomically (store.write_bytes)
*before* the step it announces, or right after the step commits, so a rerun
after a kill anywhere can tell what to finish or to redo.

Archive states, in order::

    exporting -> exported -> verified -> detaching -> detached -> archived
                                                             \\-> kept      (keep detached, not dropped)
    invalid: verification failed; the month is still in the database, the next run exports again
    restoring -> restored: the month is back in the database (the archive files are kept)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from careflow_ha.archive.store import ArchiveStore
from careflow_ha.errors import CheckFailed

FORMAT_VERSION = 1
STATES = ("exporting", "exported", "verified", "detaching", "detached", "archived", "kept", "invalid",
          "restoring", "restored")
#: States where the month's rows are only in the archive file (no longer queryable in PostgreSQL).
OFFLINE_STATES = ("archived", "kept")


def prefix_of(table: str) -> str:
    """Key prefix of a table's archive: its name without the schema (``lab_results``)."""
    return table.rpartition(".")[2]


def data_key(table: str, month: str) -> str:
    """Object key of a month's Parquet file: Hive-style so DuckDB/Spark see ``month`` as a column."""
    return f"{prefix_of(table)}/month={month}/data.parquet"


def manifest_key(table: str, month: str) -> str:
    return f"{prefix_of(table)}/month={month}/manifest.json"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Manifest:
    """Everything needed to verify the file and to rebuild the month exactly as it was."""

    table: str  # parent, e.g. public.lab_results
    month: str  # YYYY-MM
    partition: str  # schema-qualified month partition, e.g. public.lab_results_p2024_07
    bound: str  # its partition bound expression (FOR VALUES FROM (...) TO (...))
    lower: str  # ISO timestamps of the bound, for humans and the CHECK constraint
    upper: str
    leaves: list[dict[str, str]]  # [{"name": ..., "bound": ...}] the clinic partitions, default included
    partman_config: dict[str, Any] | None  # the month's pg_partman part_config row (sub-partitioning by clinic)
    schema: list[dict[str, Any]]
    state: str = "exporting"
    rows: int | None = None
    clinics: list[int] = field(default_factory=list)
    checksum_postgres: str | None = None
    checksum_parquet: str | None = None
    file_key: str | None = None
    file_sha256: str | None = None
    file_bytes: int | None = None
    compression: str = "zstd"
    heap_bytes: int | None = None  # heap (main fork) of all leaves, for the Parquet vs heap ratio
    total_bytes: int | None = None  # heap + indexes + TOAST
    checksum_algorithm: str = ""
    keep_detached: bool = False
    history: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None
    format: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Manifest:
        try:
            data = json.loads(raw)
            if data.get("format") != FORMAT_VERSION:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT_VERSION}")
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise CheckFailed(f"manifest {where} is damaged ({exc}); restore it from a backup of the archive "
                              "or delete it to export the month again (only if the month is still in the database)"
                              ) from None


def load_manifest(store: ArchiveStore, table: str, month: str) -> Manifest | None:
    key = manifest_key(table, month)
    if not store.exists(key):
        return None
    return Manifest.from_json(store.local_path(key).read_bytes(), f"{store.describe()}/{key}")


def save_manifest(store: ArchiveStore, manifest: Manifest, state: str | None = None, error: str | None = None) -> None:
    """Persist ``manifest`` (atomically, durably), recording a state change in its history."""
    if state is not None:
        assert state in STATES, state
        manifest.state = state
        manifest.history.append({"state": state, "at": now_iso()})
    manifest.error = error
    store.write_bytes(manifest_key(manifest.table, manifest.month), manifest.to_json())


def all_manifests(store: ArchiveStore, table: str) -> list[Manifest]:
    out = []
    for key in store.keys(prefix_of(table)):
        if key.endswith("/manifest.json"):
            out.append(Manifest.from_json(store.local_path(key).read_bytes(), f"{store.describe()}/{key}"))
    return sorted(out, key=lambda m: m.month)
