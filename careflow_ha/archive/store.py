"""Where archive files live, behind a small interface so an S3-compatible target can be added later.

Keys are relative, '/'-separated and Hive-style
(``lab_results/month=2024-07/data.parquet``, ``.../manifest.json``): the same
keys work as object names in a bucket, and DuckDB or Spark read the tree as a
partitioned data set. A store only promises what S3 also promises: a put is
atomic (a reader sees the old object or the new one, never half a file), and
listing by prefix.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from careflow_ha.errors import UsageError

#: Default archive directory: ``archive/`` in the repository (gitignored).
DEFAULT_ROOT = Path(__file__).resolve().parent.parent.parent / "archive"


class ArchiveStore(Protocol):
    """Contract for an archive target (local directory today, S3-compatible later)."""

    def describe(self) -> str:
        """A human name for messages (never carries credentials)."""

    def staging_path(self, key: str) -> Path:
        """A local path to write a new object to before :meth:`publish` (same filesystem when local)."""

    def publish(self, staged: Path, key: str) -> None:
        """Atomically make ``staged`` the object ``key`` (durable when it returns)."""

    def write_bytes(self, key: str, data: bytes) -> None:
        """Atomically replace ``key`` with ``data`` (durable when it returns)."""

    def local_path(self, key: str) -> Path:
        """A local file with the object's bytes, for pyarrow and DuckDB (a download cache for S3)."""

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""

    def keys(self, prefix: str) -> Iterator[str]:
        """Every key under ``prefix``, sorted."""

    def delete(self, key: str) -> None:
        """Remove ``key`` if it exists."""


class LocalStore:
    """An archive in a local (or mounted) directory; renames + fsync make every put atomic and durable."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"archive directory {self.root} is a file; pass a directory with --archive-dir")

    def describe(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise UsageError(f"archive key {key!r} must be relative without '..'")
        return self.root / key

    def staging_path(self, key: str) -> Path:
        final = self._path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.with_name(f".{final.name}.tmp-{os.getpid()}")

    def publish(self, staged: Path, key: str) -> None:
        final = self._path(key)
        with open(staged, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(staged, final)
        _fsync_dir(final.parent)

    def write_bytes(self, key: str, data: bytes) -> None:
        staged = self.staging_path(key)
        with open(staged, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(staged, self._path(key))
        _fsync_dir(self._path(key).parent)

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def keys(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix)
        if not base.exists():
            return iter(())
        found = sorted(p for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))
        return iter(str(p.relative_to(self.root)).replace(os.sep, "/") for p in found)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def clean_staging(self, prefix: str) -> int:
        """Remove leftover ``.tmp-*`` files of killed runs under ``prefix``; returns how many."""
        base = self._path(prefix)
        if not base.exists():
            return 0
        stale = [p for p in base.rglob(".*.tmp-*") if p.is_file()]
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def remove_tree(self, prefix: str) -> None:
        """Delete everything under ``prefix`` (tests and explicit purges only)."""
        shutil.rmtree(self._path(prefix), ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_store(root: Path | str | None = None) -> LocalStore:
    """The configured archive store: ``root``, else $CAREFLOW_ARCHIVE_DIR, else ``archive/`` in the repo."""
    chosen = root or os.environ.get("CAREFLOW_ARCHIVE_DIR") or DEFAULT_ROOT
    return LocalStore(chosen)
