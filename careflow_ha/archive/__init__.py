"""Archiving of old ``lab_results`` months: verified Parquet archives, instant restore, queryable cold data.

Modules, one job each:

- ``duration``: parse ``--older-than`` and ``YYYY-MM`` arguments.
- ``store``: where archive files live (a local directory now; the key layout is S3-ready).
- ``rowhash``: the column mapping PostgreSQL <-> Arrow and the order-independent row checksum,
  computed the same way inside PostgreSQL and from a Parquet file.
- ``manifest``: one JSON manifest per month, carrying the crash-safe state machine.
- ``archiver``: archive, verify, detach, drop, restore (the state machine itself).
- ``query``: DuckDB over the archived Parquet files, nothing restored.
- ``bench``: the worst write stall during a detach, next to a baseline.
- ``storage``: the storage report (sizes, B-tree vs BRIN, TOAST lz4 vs pglz, Parquet vs heap).
"""
