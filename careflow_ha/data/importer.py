"""``careflow-ha data import FILE.csv``: validate every lab result row, load the good, quarantine the bad.

The file must have the header ``pet_id,test_code,collected_at,value`` and may
add ``visit_id``, in any order. Timestamps are ISO 8601; without an offset
they are read as Asia/Seoul (the clinics' clock).

The whole file is read and checked before the database is touched: an empty
file or a wrong header is bad input (exit 2) even when the database is down.
Rows are parsed with a real CSV reader (quoted fields, embedded newlines, a
BOM, CRLF). Each bad row goes to ``lab_results_quarantine`` with its line
number, the whole raw line and every reason it failed, each reason naming
its column; a line with NUL bytes or bytes that are not UTF-8 is quarantined
for that alone.

Re-import safety (partitioning/README.md, "Re-importing"): the batch record
holds the file's SHA-256 under a unique index, and commits in the same
transaction as the batch's rows, so a batch exists with all its rows or not at
all. Every imported result also claims its natural key
``(pet_id, test_code, collected_at)`` in ``lab_import_keys``; rows whose key
is already claimed are skipped and counted, so not even ``--force`` or a rerun
after an ambiguous commit can load a result twice.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
from tqdm import tqdm

from careflow_ha.data.catalog import flag_for
from careflow_ha.data.db import connect
from careflow_ha.data.partitions import covering_months
from careflow_ha.errors import EnvironmentProblem, UsageError, first_line

REQUIRED = ("pet_id", "test_code", "collected_at", "value")
OPTIONAL = ("visit_id",)
EXPECTED_HEADER = ",".join(REQUIRED) + "[,visit_id]"
SEOUL = ZoneInfo("Asia/Seoul")
#: Clock skew tolerated before a timestamp counts as "in the future".
FUTURE_SLACK = timedelta(minutes=5)
MAX_BAD_FIELD = 200  # a value quoted in a reason is cut here; the raw line is always kept whole
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_UNDECODABLE = re.compile("[\udc80-\udcff]+")  # bytes that were not UTF-8, after surrogateescape
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(nan|inf)", re.IGNORECASE | re.ASCII)
_TIMESTAMP_CHARS = re.compile(r"[0-9A-Za-z:.,+\-]+( [0-9:.,+\-Z]+)?")


class Reason(str):
    """Why a row is quarantined: the text ``"column: detail"``, plus its ``column`` and a summary ``kind``."""

    column: str
    kind: str

    def __new__(cls, column: str, kind: str, detail: str) -> Reason:
        self = super().__new__(cls, f"{column}: {detail}")
        self.column, self.kind = column, kind
        return self


@dataclass(frozen=True)
class Reference:
    """What a row is checked against: known pets, visits, tests, ranges and partitions."""

    pets: dict[int, tuple[int, str, object]]  # pet_id -> (clinic_id, species, birth_date)
    tests: dict[str, tuple[float, float]]  # code -> plausible (min, max)
    ranges: dict[tuple[str, str], tuple[float, float]]  # (code, species) -> (low, high)
    months: list[tuple[datetime, datetime]]  # partition [start, end)
    now: datetime
    visits: dict[int, tuple[int, int]] = field(default_factory=dict)  # visit_id -> (pet_id, clinic_id)


@dataclass(frozen=True)
class GoodRow:
    clinic_id: int
    collected_at: datetime
    pet_id: int
    visit_id: int | None
    test_code: str
    value: float
    flag: str


@dataclass(frozen=True)
class Record:
    """One CSV record: its first line number, the raw text (whole, maybe several lines) and its fields.

    ``fields`` is None when the record cannot be read as a row of the header
    (wrong field count, NUL or undecodable bytes); ``problems`` says why.
    """

    line_no: int
    raw: str
    fields: dict[str, str] | None
    problems: tuple[Reason, ...] = ()


@dataclass(frozen=True)
class ParsedFile:
    header: tuple[str, ...]
    records: list[Record]
    sha256: str

    @property
    def visit_ids(self) -> set[int]:
        """Every well-formed visit_id in the file (the reference loads only these visits)."""
        ids = set()
        for rec in self.records:
            text = (rec.fields or {}).get("visit_id", "").strip()
            if text.isascii() and text.isdigit():
                ids.add(int(text))
        return ids


@dataclass
class ImportSummary:
    file: str
    batch_id: int | None = None
    sha256: str = ""
    total: int = 0
    loaded: int = 0
    duplicates: int = 0  # good rows whose result an earlier batch already holds (skipped)
    quarantined: int = 0
    reasons: Counter = field(default_factory=Counter)
    duplicate_batches: Counter = field(default_factory=Counter)  # earlier batch_id -> rows skipped

    def as_dict(self) -> dict:
        return {"file": self.file, "batch_id": self.batch_id, "sha256": self.sha256, "rows": self.total,
                "loaded": self.loaded, "duplicates": self.duplicates, "quarantined": self.quarantined,
                "reasons": dict(self.reasons.most_common()),
                "duplicates_of_batches": {str(k): v for k, v in sorted(self.duplicate_batches.items())}}


# -- reading the file (pure: no database) -------------------------------------------------------
def storable(raw: str) -> str:
    """``raw`` as PostgreSQL text can hold it: undecodable bytes and NULs become ``\\xNN`` escapes."""
    return raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


def _line_of(raw: str, line_no: int, index: int) -> int:
    """The file line of ``raw[index]``, for a record that starts on ``line_no``."""
    return line_no + len(_LINE_BREAK.findall(raw, 0, index))


def _encoding_problems(header: Sequence[str], fields: Sequence[str], raw: str, line_no: int) -> list[Reason]:
    problems = []
    for column, value in zip(header, fields, strict=False):
        if "\x00" in value:
            at = _line_of(raw, line_no, raw.find("\x00"))
            problems.append(Reason(column, f"NUL byte in {column}",
                                   f"a NUL byte (line {at}); remove it and re-import the line"))
        bad = _UNDECODABLE.search(value)
        if bad:
            at = _line_of(raw, line_no, raw.find(bad.group()))
            shown = bad.group().encode("utf-8", "surrogateescape")[:8]
            problems.append(Reason(column, f"bytes in {column} that are not UTF-8",
                                   f"bytes that are not UTF-8 ({shown!r}, line {at}); re-save the file as UTF-8"))
    return problems


def _shape_problems(header: Sequence[str], fields: Sequence[str], raw: str) -> list[Reason]:
    if len(fields) < len(header):
        missing = header[len(fields):]
        hint = " (a quote that is never closed swallows the lines after it)" if "\n" in raw or "\r" in raw else ""
        return [Reason(missing[0], "missing fields",
                       f"missing: the line has {len(fields)} of the header's {len(header)} fields "
                       f"(no {', '.join(missing)}){hint}")]
    if len(fields) > len(header):
        extra = len(fields) - len(header)
        return [Reason(header[-1], "extra fields",
                       f"followed by {extra} extra field(s): the header has {len(header)} columns")]
    return []


def _check_header(fields: list[str] | None, name: str) -> tuple[str, ...]:
    fix = f"use {EXPECTED_HEADER} (any order)"
    if fields is None:
        raise UsageError(f"{name} is empty; expected a header line: {EXPECTED_HEADER}")
    header = tuple(h.strip().lower() for h in fields)
    if any("\x00" in h or _UNDECODABLE.search(h) for h in header):
        raise UsageError(f"{name}: the header line is not UTF-8 text (UTF-16 or another encoding?); "
                         "re-save the file as UTF-8 CSV")
    duplicated = sorted({h for h in header if header.count(h) > 1})
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
    if duplicated or missing or unknown:
        wrong = [f"{what} {cols}" for what, cols in
                 (("duplicated", duplicated), ("missing", missing), ("unknown", unknown)) if cols]
        raise UsageError(f"{name}: header {','.join(header)!r} is wrong ({'; '.join(wrong)}); {fix}")
    return header


def parse_csv(data: bytes, name: str) -> ParsedFile:
    """Read a whole CSV file: check its header, and return every non-blank record with its line number.

    Raises UsageError for an empty file, a wrong header (unknown, missing or
    duplicated columns) or a header without rows. Never raises for a bad
    row: that becomes a Record with ``problems``.
    """
    text = data.decode("utf-8-sig", errors="surrogateescape")  # BOM dropped; bad bytes kept, to be reported
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))  # one huge field is a bad row, not a crash
    consumed: list[str] = []

    def lines() -> Iterator[str]:
        for line in io.StringIO(text, newline=""):  # \n, \r\n and \r all end a line; kept for the raw text
            consumed.append(line)
            yield line

    reader = csv.reader(lines())
    header = _check_header(next(reader, None), name)
    consumed.clear()
    records, start = [], reader.line_num + 1
    for fields in reader:
        raw = "".join(consumed).rstrip("\r\n")
        consumed.clear()
        line_no, start = start, reader.line_num + 1
        if not any(f.strip() for f in fields):
            continue  # blank lines and spreadsheet filler such as ",,,"
        problems = _encoding_problems(header, fields, raw, line_no) or _shape_problems(header, fields, raw)
        row = None if problems else dict(zip(header, fields, strict=True))
        records.append(Record(line_no, raw, row, tuple(problems)))
    if not records:
        raise UsageError(f"{name} has a header but no rows; nothing to import")
    return ParsedFile(header, records, hashlib.sha256(data).hexdigest())


# -- row rules (pure) -------------------------------------------------------------------------------
def parse_timestamp(text: str) -> datetime:
    """ISO 8601 -> aware datetime (naive = Asia/Seoul); ValueError names what is wrong."""
    raw = text.strip()
    if not raw:
        raise ValueError("empty")
    try:
        # fromisoformat takes any character between date and time ("2026-10-02\n10:15", "2026-10-02x10:15"):
        # only T or one space is a date-time separator here, and nothing but printable ASCII.
        if not _TIMESTAMP_CHARS.fullmatch(raw) or (len(raw) > 10 and raw[4] == "-" and raw[10] not in "Tt "):
            raise ValueError(raw)
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{raw[:MAX_BAD_FIELD]!r} is not a valid ISO 8601 date-time (e.g. 2026-02-30 does not "
                         "exist; use YYYY-MM-DD HH:MM[:SS][+09:00])") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=SEOUL)


def _int(text: str) -> int:
    value = text.strip()
    if not (value.isascii() and value.lstrip("-").isdigit()):  # int() would also take "1_000" and "٣"
        raise ValueError(value)
    return int(value)


def validate_row(row: dict[str, str], ref: Reference) -> tuple[GoodRow | None, list[Reason]]:
    """Check one CSV row; return the row to load, or every reason it cannot be loaded."""
    reasons: list[Reason] = []
    pet = None
    pet_id = 0
    try:
        pet_id = _int(row["pet_id"])
        pet = ref.pets.get(pet_id)
        if pet is None:
            reasons.append(Reason("pet_id", "unknown pet_id", f"unknown pet {pet_id}"))
    except ValueError:
        reasons.append(Reason("pet_id", "pet_id not an integer",
                              f"{row['pet_id'][:MAX_BAD_FIELD]!r} is not an integer"))
    code = row["test_code"].strip().upper()
    if code not in ref.tests:
        reasons.append(Reason("test_code", "unknown test_code",
                              f"unknown test code {row['test_code'][:MAX_BAD_FIELD]!r}"))
    value = math.nan
    try:
        text = row["value"].strip()
        if not _NUMBER.fullmatch(text):  # float() would also take "1_000", "١٢" and "infinity"
            raise ValueError(text)
        value = float(text)
        if not math.isfinite(value):
            reasons.append(Reason("value", "impossible value",
                                  f"impossible value {text[:MAX_BAD_FIELD]!r} (not a finite number)"))
        elif code in ref.tests:
            lo, hi = ref.tests[code]
            if not lo <= value <= hi:
                reasons.append(Reason("value", "impossible value",
                                      f"impossible value {value:g} for {code} (plausible {lo:g} to {hi:g})"))
    except ValueError:
        reasons.append(Reason("value", "value not a number", f"{row['value'][:MAX_BAD_FIELD]!r} is not a number"))
    collected = None
    try:
        collected = parse_timestamp(row["collected_at"])
    except ValueError as exc:
        reasons.append(Reason("collected_at", "collected_at invalid", str(exc)))
    if collected is not None:
        if collected > ref.now + FUTURE_SLACK:
            reasons.append(Reason("collected_at", "collected_at in the future", f"{collected.isoformat()} is in the "
                                  "future"))
        elif not any(start <= collected < end for start, end in ref.months):
            first = min((s for s, _ in ref.months), default=None)
            reasons.append(Reason(
                "collected_at", "collected_at outside every partition",
                f"{collected.isoformat()} is outside every partition"
                + (f" (oldest month starts {first.astimezone(SEOUL):%Y-%m}; extend with "
                   "`careflow-ha partitions maintain --from YYYY-MM`)" if first else "")))
        if pet is not None and collected.astimezone(SEOUL).date() < pet[2]:
            reasons.append(Reason("collected_at", "collected_at before the pet was born",
                                  f"{collected.astimezone(SEOUL).date()} is before pet {pet_id} was born ({pet[2]})"))
    visit_id = None
    if row.get("visit_id", "").strip():
        try:
            visit_id = _int(row["visit_id"])
        except ValueError:
            reasons.append(Reason("visit_id", "visit_id not an integer",
                                  f"{row['visit_id'][:MAX_BAD_FIELD]!r} is not an integer"))
        else:
            reasons += _visit_problems(visit_id, pet_id, pet, ref)
    if reasons or pet is None or collected is None:
        return None, reasons
    low, high = ref.ranges[(code, pet[1])]
    return GoodRow(pet[0], collected, pet_id, visit_id, code, value, flag_for(value, low, high)), []


def _visit_problems(visit_id: int, pet_id: int, pet: tuple | None, ref: Reference) -> list[Reason]:
    visit = ref.visits.get(visit_id)
    if visit is None:
        return [Reason("visit_id", "unknown visit_id", f"unknown visit {visit_id}")]
    visit_pet, visit_clinic = visit
    if pet is not None and visit_pet != pet_id:
        return [Reason("visit_id", "visit_id of another pet",
                       f"visit {visit_id} is pet {visit_pet}'s, not pet {pet_id}'s")]
    if pet is not None and visit_clinic != pet[0]:
        return [Reason("visit_id", "visit_id at another clinic",
                       f"visit {visit_id} was at clinic {visit_clinic}; pet {pet_id} belongs to clinic {pet[0]}")]
    return []


def classify(parsed: ParsedFile, ref: Reference) -> Iterator[tuple[Record, GoodRow | None, list[Reason]]]:
    """Every record with its good row or its reasons: exactly one of the two, for every record."""
    for rec in parsed.records:
        if rec.fields is None:
            yield rec, None, list(rec.problems)
        else:
            row, reasons = validate_row(rec.fields, ref)
            yield rec, row, reasons


# -- the database side ---------------------------------------------------------------------------
def load_reference(conn: psycopg.Connection, visit_ids: Collection[int] = ()) -> Reference:
    """Pets, tests, ranges, partitions and the server's clock; of the visits, only ``visit_ids``."""
    pets = {pid: (cid, sp, born) for pid, cid, sp, born in
            conn.execute("SELECT pet_id, clinic_id, species, birth_date FROM pets")}
    tests = {c: (lo, hi) for c, lo, hi in
             conn.execute("SELECT test_code, plausible_min, plausible_max FROM lab_test_catalog")}
    ranges = {(c, s): (lo, hi) for c, s, lo, hi in
              conn.execute("SELECT test_code, species, ref_low, ref_high FROM lab_reference_ranges")}
    visits = {vid: (pid, cid) for vid, pid, cid in conn.execute(
        "SELECT visit_id, pet_id, clinic_id FROM visits WHERE visit_id = ANY(%s)", (sorted(visit_ids),))}
    now = conn.execute("SELECT now()").fetchone()[0]
    return Reference(pets, tests, ranges, covering_months(conn), now, visits)


def _earlier_batch(conn: psycopg.Connection, sha256: str) -> tuple | None:
    return conn.execute("SELECT batch_id, imported_at, file_name, rows_total, rows_loaded, rows_duplicate, "
                        "rows_quarantined FROM lab_import_batches WHERE sha256 = %s AND NOT forced", (sha256,)
                        ).fetchone()


def _refuse(name: str, sha256: str, earlier: tuple) -> UsageError:
    batch_id, at, file_name, total, loaded, dup, bad = earlier
    return UsageError(
        f"{name} has the same content (sha256 {sha256[:12]}) as batch {batch_id}, imported "
        f"{at.astimezone(SEOUL):%Y-%m-%d %H:%M:%S} KST from {file_name} ({total} rows: {loaded} loaded, {dup} "
        f"already present, {bad} quarantined); nothing imported. Add --force to import it again "
        "(results already present are skipped, never doubled)")


_STAGE_COLUMNS = ("line_no", "clinic_id", "collected_at", "pet_id", "visit_id", "test_code", "value", "flag")
_CREATE_STAGE = """
CREATE TEMP TABLE import_stage (
    line_no integer PRIMARY KEY, clinic_id integer NOT NULL, collected_at timestamptz NOT NULL,
    pet_id bigint NOT NULL, visit_id bigint, test_code text NOT NULL, value double precision NOT NULL,
    flag "char" NOT NULL
) ON COMMIT DROP
"""
#: Claim each staged result's natural key; load only the rows whose claim succeeded (first line wins).
_LOAD_STAGE = """
WITH fresh AS (
    INSERT INTO lab_import_keys (pet_id, test_code, collected_at, batch_id, line_no)
    SELECT DISTINCT ON (pet_id, test_code, collected_at) pet_id, test_code, collected_at, %(batch)s, line_no
      FROM import_stage ORDER BY pet_id, test_code, collected_at, line_no
    ON CONFLICT DO NOTHING
    RETURNING line_no)
INSERT INTO lab_results (clinic_id, collected_at, pet_id, visit_id, test_code, value, flag)
SELECT s.clinic_id, s.collected_at, s.pet_id, s.visit_id, s.test_code, s.value, s.flag
  FROM import_stage s JOIN fresh USING (line_no)
"""
#: Staged rows that were not loaded: whose key an earlier batch or an earlier line of this one holds.
_NOT_LOADED = """
SELECT s.line_no, k.batch_id, k.line_no
  FROM import_stage s JOIN lab_import_keys k USING (pet_id, test_code, collected_at)
 WHERE NOT (k.batch_id = %(batch)s AND k.line_no = s.line_no)
"""


class _Batch:
    """One import's writes inside its transaction: staged good rows and quarantined ones, flushed in chunks."""

    def __init__(self, cur: psycopg.Cursor, batch_id: int, summary: ImportSummary) -> None:
        self.cur, self.batch_id, self.summary = cur, batch_id, summary
        self.good: list[tuple[Record, GoodRow]] = []
        self.bad: list[tuple[int, int, str, list[str]]] = []
        cur.execute(_CREATE_STAGE)

    def quarantine(self, rec: Record, reasons: list[Reason]) -> None:
        self.bad.append((self.batch_id, rec.line_no, storable(rec.raw), [str(r) for r in reasons]))
        self.summary.quarantined += 1
        self.summary.reasons.update(r.kind for r in reasons)

    def flush_good(self) -> None:
        if not self.good:
            return
        by_line = {rec.line_no: rec for rec, _ in self.good}
        with self.cur.copy(f"COPY import_stage ({', '.join(_STAGE_COLUMNS)}) FROM STDIN") as copy:
            for rec, r in self.good:
                copy.write_row((rec.line_no, r.clinic_id, r.collected_at, r.pet_id, r.visit_id, r.test_code,
                                r.value, r.flag))
        self.summary.loaded += self.cur.execute(_LOAD_STAGE, {"batch": self.batch_id}).rowcount
        for line_no, other_batch, other_line in self.cur.execute(_NOT_LOADED, {"batch": self.batch_id}).fetchall():
            if other_batch == self.batch_id:
                self.quarantine(by_line[line_no], [Reason(
                    "collected_at", "repeats an earlier line",
                    f"same pet_id, test_code and collected_at as line {other_line}; keep one of the two")])
            else:
                self.summary.duplicates += 1
                self.summary.duplicate_batches[other_batch] += 1
        self.cur.execute("TRUNCATE import_stage")
        self.good.clear()

    def flush_bad(self) -> None:
        if not self.bad:
            return
        with self.cur.copy("COPY lab_results_quarantine (batch_id, line_no, raw, reasons) FROM STDIN") as copy:
            for row in self.bad:
                copy.write_row(row)
        self.bad.clear()


def import_csv(dsn: str, path: Path, *, force: bool = False, batch_size: int = 20_000,
               progress: bool = False) -> ImportSummary:
    """Validate and import ``path`` in one transaction: good rows, quarantine and the batch record.

    Refuses (UsageError) a file whose content an earlier batch holds, unless
    ``force`` (the new batch is then marked forced). A lost connection is an
    EnvironmentProblem whose message says that running the same command
    again is safe. ``progress`` shows a bar
    over the rows on stderr.
    """
    if not path.is_file():
        raise UsageError(f"{path} does not exist or is not a file; pass the path of a CSV file")
    parsed = parse_csv(path.read_bytes(), path.name)  # every file problem is reported before connecting
    summary = ImportSummary(file=str(path), sha256=parsed.sha256, total=len(parsed.records))
    step = "connecting"
    try:
        with connect(dsn) as conn, conn.cursor() as cur:
            ref = load_reference(conn, parsed.visit_ids)
            earlier = _earlier_batch(conn, parsed.sha256)
            if earlier and not force:
                raise _refuse(path.name, parsed.sha256, earlier)
            step = "importing"
            try:
                summary.batch_id = cur.execute(
                    "INSERT INTO lab_import_batches (file_name, sha256, forced, rows_total, rows_loaded, "
                    "rows_duplicate, rows_quarantined) VALUES (%s, %s, %s, 0, 0, 0, 0) RETURNING batch_id",
                    (path.name, parsed.sha256, earlier is not None)).fetchone()[0]
            except psycopg.errors.UniqueViolation:  # the same file, imported concurrently, committed first
                conn.rollback()
                raise _refuse(path.name, parsed.sha256, _earlier_batch(conn, parsed.sha256)) from None
            batch = _Batch(cur, summary.batch_id, summary)
            days: tuple[date, date] | None = None
            for rec, row, reasons in tqdm(classify(parsed, ref), total=summary.total, unit="rows",
                                          desc=path.name, disable=not progress):
                if row is None:
                    batch.quarantine(rec, reasons)
                else:
                    batch.good.append((rec, row))
                    day = row.collected_at.astimezone(SEOUL).date()
                    days = (min(days[0], day), max(days[1], day)) if days else (day, day)
                if len(batch.good) >= batch_size:
                    batch.flush_good()
                if len(batch.bad) >= batch_size:
                    batch.flush_bad()
            batch.flush_good()
            batch.flush_bad()
            if days:  # the daily aggregate must see the new rows now, not at the next scheduled run
                cur.execute("SELECT refresh_lab_results_daily(%s, %s)", (days[0], days[1] + timedelta(days=1)))
            cur.execute("UPDATE lab_import_batches SET rows_total = %s, rows_loaded = %s, rows_duplicate = %s, "
                        "rows_quarantined = %s WHERE batch_id = %s",
                        (summary.total, summary.loaded, summary.duplicates, summary.quarantined, summary.batch_id))
            step = "committing"
            conn.commit()
    except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction) as exc:
        # A lost or terminated connection, or (during a failover) a connection that reached the old primary
        # after it became a standby.
        first = first_line(exc)
        outcome = ("it may or may not have committed" if step == "committing" else "nothing was committed")
        raise EnvironmentProblem(
            f"the import of {path.name} was interrupted while {step} ({first}); {outcome}. Run the same "
            "command again: it imports the file if the batch did not commit and refuses it, naming the batch, if "
            "it did; no result is ever loaded twice") from None
    return summary
