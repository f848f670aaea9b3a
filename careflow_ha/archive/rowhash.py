"""Column mapping PostgreSQL <-> Arrow, and an order-independent row checksum computed on both sides.

Each row is encoded to bytes from the values' binary forms (``int8send``,
``float8send``, ``timestamptz_send``, length-prefixed UTF-8 text, a null
marker per column), so PostgreSQL and Python produce identical bytes without
depending on text formatting of floats or time zones. The row hash is the
first 8 bytes of its MD5 as a signed 64-bit integer; the table checksum is the
sum of row hashes modulo 2**64 plus the row count. A sum (unlike XOR) also
catches a duplicated row; order does not matter, so the file can be sorted
for compression and still compared with the database.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from psycopg import sql

from careflow_ha.errors import CheckFailed

ALGORITHM = "md5-row-sum64-v1"
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 UTC in Unix microseconds: timestamptz_send's origin
_MOD = 2**64


@dataclass(frozen=True)
class Column:
    """One archived column: its PostgreSQL type, Arrow type and null-ability (stored in the manifest)."""

    name: str
    pg_type: str
    nullable: bool

    @property
    def arrow_type(self) -> pa.DataType:
        return _TYPES[self.pg_type][0]

    def as_dict(self) -> dict:
        return {**asdict(self), "arrow_type": str(self.arrow_type)}


#: pg type -> (arrow type, SQL encoder template for a not-null value, python kind)
_TYPES: dict[str, tuple[pa.DataType, str, str]] = {
    "bigint": (pa.int64(), "int8send({c})", "int8"),
    "integer": (pa.int32(), "int4send({c})", "int4"),
    "double precision": (pa.float64(), "float8send({c})", "float8"),
    "timestamp with time zone": (pa.timestamp("us", tz="UTC"), "timestamptz_send({c})", "ts"),
    "text": (pa.string(), "int4send(octet_length({c}::text)) || convert_to({c}::text, 'UTF8')", "text"),
    '"char"': (pa.string(), "int4send(octet_length({c}::text)) || convert_to({c}::text, 'UTF8')", "text"),
}


def table_columns(conn: psycopg.Connection, table: str) -> list[Column]:
    """The columns of ``table`` in order; an unsupported type fails before anything is written."""
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod), NOT attnotnull FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (table,)).fetchall()
    cols = [Column(name, pg_type, nullable) for name, pg_type, nullable in rows]
    bad = [f"{c.name} ({c.pg_type})" for c in cols if c.pg_type not in _TYPES]
    if bad:
        raise CheckFailed(f"cannot archive {table}: column types {', '.join(bad)} have no Parquet mapping; "
                          "add them to careflow_ha.archive.rowhash._TYPES")
    return cols


def arrow_schema(columns: list[Column]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in columns])


def row_bytes_sql(columns: list[Column]) -> sql.Composable:
    """SQL expression: the canonical bytes of one row (see the module docstring)."""
    parts = []
    for col in columns:
        enc = sql.SQL(_TYPES[col.pg_type][1].replace("{c}", "{col}")).format(col=sql.Identifier(col.name))
        parts.append(sql.SQL("CASE WHEN {col} IS NULL THEN '\\x00'::bytea ELSE '\\x01'::bytea || {enc} END")
                     .format(col=sql.Identifier(col.name), enc=enc))
    return sql.SQL(" || ").join(parts)


def checksum_sql(columns: list[Column], table: str) -> sql.Composed:
    """``SELECT count, checksum, clinic ids`` for ``table`` (a schema-qualified name)."""
    schema, _, name = table.rpartition(".")
    ident = sql.Identifier(schema or "public", name)
    return sql.SQL(
        "SELECT count(*), coalesce(sum(('x' || substr(md5({row}), 1, 16))::bit(64)::bigint::numeric), 0), "
        "coalesce(array_agg(DISTINCT clinic_id ORDER BY clinic_id), '{{}}') FROM {t}"
    ).format(row=row_bytes_sql(columns), t=ident)


def format_checksum(rows: int, total: int) -> str:
    return f"{ALGORITHM}:{rows}:{int(total) % _MOD:016x}"


def checksum_in_postgres(conn: psycopg.Connection, columns: list[Column], table: str) -> tuple[str, int, list[int]]:
    """(checksum, row count, clinic ids) of ``table``, computed by the server in the current snapshot."""
    count, total, clinics = conn.execute(checksum_sql(columns, table)).fetchone()
    return format_checksum(count, total), count, list(clinics)


def _text_bytes(value: str) -> bytes:
    data = value.encode()
    return len(data).to_bytes(4, "big", signed=True) + data


def _encoders(columns: list[Column]) -> list:
    out = []
    for col in columns:
        kind = _TYPES[col.pg_type][2]
        if kind == "int8" or kind == "ts":
            out.append(struct.Struct(">q").pack)
        elif kind == "int4":
            out.append(struct.Struct(">i").pack)
        elif kind == "float8":
            out.append(struct.Struct(">d").pack)
        else:
            out.append(_text_bytes)
    return out


def checksum_batches(columns: list[Column], batches: Iterable[pa.RecordBatch]) -> tuple[str, int, list[int]]:
    """The same checksum as :func:`checksum_in_postgres`, from Arrow record batches (e.g. a Parquet file)."""
    encoders = _encoders(columns)
    kinds = [_TYPES[c.pg_type][2] for c in columns]
    total, rows, clinics = 0, 0, set()
    for batch in batches:
        values = []
        for col, kind in zip(columns, kinds, strict=True):
            arr = batch.column(batch.schema.get_field_index(col.name))
            if kind == "ts":  # microseconds since the Unix epoch -> since 2000-01-01, as timestamptz_send
                arr = pc.subtract(arr.cast(pa.int64()), pa.scalar(_PG_EPOCH_US, pa.int64()))
            values.append(arr.to_pylist())
            if col.name == "clinic_id":
                clinics.update(v for v in values[-1] if v is not None)
        for row in zip(*values, strict=True):
            buf = b"".join(b"\x00" if v is None else b"\x01" + enc(v) for v, enc in zip(row, encoders, strict=True))
            total += int.from_bytes(hashlib.md5(buf).digest()[:8], "big", signed=True)  # noqa: S324 - not security
        rows += batch.num_rows
    return format_checksum(rows, total), rows, sorted(clinics)


def checksum_parquet(columns: list[Column], path: str) -> tuple[str, int, list[int]]:
    """Checksum of a Parquet file, read batch by batch; a damaged file becomes a CheckFailed naming it."""
    try:
        pf = pq.ParquetFile(path)
        return checksum_batches(columns, pf.iter_batches(batch_size=65_536))
    except (OSError, pa.ArrowException) as exc:
        raise CheckFailed(f"archive file {path} is unreadable ({str(exc).splitlines()[0]})") from None


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
