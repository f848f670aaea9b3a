"""``careflow-ha data import FILE.csv``: validate every lab result row, load the good, quarantine the bad.

The file must have the header ``pet_id,test_code,collected_at,value`` and may
add ``visit_id``. Timestamps are ISO 8601; without an offset they are read as
Asia/Seoul (the clinics' clock). Each bad row goes to
``lab_results_quarantine`` with every reason it failed; good rows load through
COPY; both, and the batch record, commit together, so nothing is dropped.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from tqdm import tqdm

from careflow_ha.data.catalog import flag_for
from careflow_ha.data.db import connect
from careflow_ha.data.partitions import covering_months
from careflow_ha.errors import UsageError

REQUIRED = ("pet_id", "test_code", "collected_at", "value")
OPTIONAL = ("visit_id",)
SEOUL = ZoneInfo("Asia/Seoul")
#: Clock skew tolerated before a timestamp counts as "in the future".
FUTURE_SLACK = timedelta(minutes=5)
MAX_BAD_FIELD = 200  # keep quarantined raw lines readable


@dataclass(frozen=True)
class Reference:
    """What a row is checked against: known pets, tests, ranges and partitions."""

    pets: dict[int, tuple[int, str, object]]  # pet_id -> (clinic_id, species, birth_date)
    tests: dict[str, tuple[float, float]]  # code -> plausible (min, max)
    ranges: dict[tuple[str, str], tuple[float, float]]  # (code, species) -> (low, high)
    months: list[tuple[datetime, datetime]]  # partition [start, end)
    now: datetime


@dataclass(frozen=True)
class GoodRow:
    clinic_id: int
    collected_at: datetime
    pet_id: int
    visit_id: int | None
    test_code: str
    value: float
    flag: str


@dataclass
class ImportSummary:
    file: str
    batch_id: int | None = None
    total: int = 0
    loaded: int = 0
    quarantined: int = 0
    reasons: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"file": self.file, "batch_id": self.batch_id, "rows": self.total, "loaded": self.loaded,
                "quarantined": self.quarantined, "reasons": dict(self.reasons.most_common())}


def parse_timestamp(text: str) -> datetime:
    """ISO 8601 -> aware datetime (naive = Asia/Seoul); ValueError names what is wrong."""
    raw = text.strip()
    if not raw:
        raise ValueError("collected_at is empty")
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"collected_at {raw!r} is not a valid ISO 8601 date-time (e.g. 2026-02-30 does not "
                         "exist; use YYYY-MM-DD HH:MM[:SS][+09:00])") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=SEOUL)


def validate_row(row: dict[str, str], ref: Reference) -> tuple[GoodRow | None, list[str]]:
    """Check one CSV row; return the row to load, or every reason it cannot be loaded."""
    reasons: list[str] = []
    pet = None
    try:
        pet_id = int(row["pet_id"].strip())
        pet = ref.pets.get(pet_id)
        if pet is None:
            reasons.append(f"unknown pet {pet_id}")
    except ValueError:
        pet_id = 0
        reasons.append(f"pet_id {row['pet_id'][:MAX_BAD_FIELD]!r} is not an integer")
    code = row["test_code"].strip().upper()
    if code not in ref.tests:
        reasons.append(f"unknown test code {row['test_code'][:MAX_BAD_FIELD]!r}")
    value = math.nan
    try:
        value = float(row["value"].strip())
        if not math.isfinite(value):
            reasons.append(f"impossible value {row['value']!r} (not a finite number)")
        elif code in ref.tests:
            lo, hi = ref.tests[code]
            if not lo <= value <= hi:
                reasons.append(f"impossible value {value:g} for {code} (plausible {lo:g} to {hi:g})")
    except ValueError:
        reasons.append(f"value {row['value'][:MAX_BAD_FIELD]!r} is not a number")
    collected = None
    try:
        collected = parse_timestamp(row["collected_at"])
        if collected > ref.now + FUTURE_SLACK:
            reasons.append(f"collected_at {collected.isoformat()} is in the future")
        elif not any(start <= collected < end for start, end in ref.months):
            first = min((s for s, _ in ref.months), default=None)
            reasons.append(f"collected_at {collected.isoformat()} is outside every partition"
                           + (f" (oldest month starts {first.astimezone(SEOUL):%Y-%m}; extend with "
                              "`careflow-ha partitions maintain --from YYYY-MM`)" if first else ""))
        if pet is not None and collected.astimezone(SEOUL).date() < pet[2]:
            reasons.append(f"collected_at {collected.date()} is before pet {pet_id} was born ({pet[2]})")
    except ValueError as exc:
        reasons.append(str(exc))
    visit_id = None
    if row.get("visit_id", "").strip():
        try:
            visit_id = int(row["visit_id"])
        except ValueError:
            reasons.append(f"visit_id {row['visit_id'][:MAX_BAD_FIELD]!r} is not an integer")
    if reasons or pet is None or collected is None:
        return None, reasons
    low, high = ref.ranges[(code, pet[1])]
    return GoodRow(pet[0], collected, pet_id, visit_id, code, value, flag_for(value, low, high)), []


def read_rows(lines: Iterable[str], name: str) -> Iterator[tuple[int, str, dict[str, str] | None]]:
    """Yield (line_no, raw line, fields or None if the line is malformed); check the header first."""
    it = iter(lines)
    header_line = next(it, None)
    if header_line is None:
        raise UsageError(f"{name} is empty; expected a header line: {','.join(REQUIRED)}[,visit_id]")
    header = [h.strip().lower() for h in next(csv.reader([header_line]))]
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
    if missing or unknown:
        raise UsageError(f"{name}: header {','.join(header)!r} is wrong (missing {missing or 'nothing'}, unknown "
                         f"{unknown or 'nothing'}); use {','.join(REQUIRED)}[,visit_id]")
    for line_no, line in enumerate(it, start=2):
        raw = line.rstrip("\r\n")
        if not raw.strip():
            continue
        fields = next(csv.reader([raw]), [])
        yield line_no, raw, (dict(zip(header, fields, strict=True)) if len(fields) == len(header) else None)


def load_reference(conn) -> Reference:  # noqa: ANN001 - psycopg connection
    pets = {pid: (cid, sp, born) for pid, cid, sp, born in
            conn.execute("SELECT pet_id, clinic_id, species, birth_date FROM pets")}
    tests = {c: (lo, hi) for c, lo, hi in
             conn.execute("SELECT test_code, plausible_min, plausible_max FROM lab_test_catalog")}
    ranges = {(c, s): (lo, hi) for c, s, lo, hi in
              conn.execute("SELECT test_code, species, ref_low, ref_high FROM lab_reference_ranges")}
    now = conn.execute("SELECT now()").fetchone()[0]
    return Reference(pets, tests, ranges, covering_months(conn), now)


def import_csv(dsn: str, path: Path, *, batch_size: int = 20_000, progress: bool = False) -> ImportSummary:
    """Validate and import ``path``; one transaction for the good rows, the quarantine and the batch record.

    ``progress`` shows a bar over the file's bytes on stderr.
    """
    if not path.is_file():
        raise UsageError(f"{path} does not exist or is not a file; pass the path of a CSV file")
    summary = ImportSummary(file=str(path))
    bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name, disable=not progress)
    with bar, connect(dsn) as conn, conn.cursor() as cur, path.open(newline="", encoding="utf-8-sig") as fh:
        ref = load_reference(conn)
        batch_id = cur.execute("INSERT INTO lab_import_batches (file_name, rows_total, rows_loaded, rows_quarantined) "
                               "VALUES (%s, 0, 0, 0) RETURNING batch_id", (path.name,)).fetchone()[0]
        summary.batch_id = batch_id
        good: list[GoodRow] = []
        bad: list[tuple[int, int, str, list[str]]] = []
        days: tuple[date, date] | None = None
        try:
            for line_no, raw, fields in read_rows(_counted(fh, bar), path.name):
                summary.total += 1
                if fields is None:
                    row, reasons = None, ["wrong number of fields for the header"]
                else:
                    row, reasons = validate_row(fields, ref)
                if row is not None:
                    good.append(row)
                    day = row.collected_at.astimezone(SEOUL).date()
                    days = (min(days[0], day), max(days[1], day)) if days else (day, day)
                else:
                    bad.append((batch_id, line_no, raw[:2000], reasons))
                    summary.reasons.update(_kind(r) for r in reasons)
                if len(good) >= batch_size:
                    _flush_good(cur, good, summary)
                if len(bad) >= batch_size:
                    _flush_bad(cur, bad, summary)
        except UnicodeDecodeError:
            raise UsageError(f"{path.name} is not UTF-8 text; re-save it as UTF-8 CSV") from None
        _flush_good(cur, good, summary)
        _flush_bad(cur, bad, summary)
        if days:  # the daily aggregate must see the new rows now, not at the next scheduled run
            cur.execute("SELECT refresh_lab_results_daily(%s, %s)", (days[0], days[1] + timedelta(days=1)))
        cur.execute("UPDATE lab_import_batches SET rows_total = %s, rows_loaded = %s, rows_quarantined = %s "
                    "WHERE batch_id = %s", (summary.total, summary.loaded, summary.quarantined, batch_id))
        conn.commit()
    return summary


def _counted(lines: Iterable[str], bar: tqdm) -> Iterator[str]:
    """Pass lines through, advancing the progress bar by their size (UTF-8 bytes, roughly)."""
    for line in lines:
        bar.update(len(line.encode("utf-8", "replace")))
        yield line


def _kind(reason: str) -> str:
    """Group reasons for the summary: 'unknown pet 12' -> 'unknown pet'."""
    for prefix in ("unknown pet", "unknown test code", "impossible value", "pet_id", "value", "visit_id"):
        if reason.startswith(prefix):
            return prefix + (" not a number" if prefix in ("pet_id", "value", "visit_id") else "")
    if "in the future" in reason:
        return "collected_at in the future"
    if "outside every partition" in reason:
        return "collected_at outside every partition"
    if "before pet" in reason:
        return "collected before the pet was born"
    if reason.startswith("collected_at"):
        return "collected_at invalid"
    return reason


def _flush_good(cur, rows: list[GoodRow], summary: ImportSummary) -> None:  # noqa: ANN001
    if not rows:
        return
    buf = io.StringIO()
    for r in rows:
        buf.write(f"{r.clinic_id}\t{r.collected_at.isoformat()}\t{r.pet_id}\t"
                  f"{'' if r.visit_id is None else r.visit_id}\t{r.test_code}\t{r.value!r}\t{r.flag}\n")
    with cur.copy("COPY lab_results (clinic_id, collected_at, pet_id, visit_id, test_code, value, flag) "
                  "FROM STDIN (FORMAT csv, DELIMITER E'\\t')") as copy:
        copy.write(buf.getvalue())
    summary.loaded += len(rows)
    rows.clear()


def _flush_bad(cur, rows: list[tuple[int, int, str, list[str]]], summary: ImportSummary) -> None:  # noqa: ANN001
    if not rows:
        return
    with cur.copy("COPY lab_results_quarantine (batch_id, line_no, raw, reasons) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    summary.quarantined += len(rows)
    rows.clear()
