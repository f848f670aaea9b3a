"""Property tests (Hypothesis) for the importer's row rules, over generated rows and generated broken files.

Each example writes a CSV file the way a spreadsheet or a careless script
might: any column order, optional visit_id, a BOM or not, LF or CRLF, minimal
or full quoting, and rows broken on purpose in one known column (bad numbers,
bad dates, NUL bytes, bytes that are not UTF-8, embedded newlines, quotes,
missing or extra fields). Invariants:

- rows in the file = rows accepted + rows quarantined, record by record;
- every quarantined row's reasons name a column of the header, and the
  column that was broken is among them; an untouched row is accepted;
- each record keeps its first line number and its whole raw line, byte for byte.

Pure: no database (the Reference is the rules tests' one). Bounded: max_examples and a deadline.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from careflow_ha.data.importer import OPTIONAL, REQUIRED, classify, parse_csv, storable
from tests.plugins.timeouts import scaled
from tests.unit.data.test_import_rules import REF  # pets 7 (cat, clinic 2, visit 501) and 8 (dog, born 2026-06-01)

MARK_NUL, MARK_BAD = "\u2400", "\u2421"  # placeholders, replaced by a NUL byte / a non-UTF-8 byte after encoding
#: Bounded in count and time; no example database (it would leave .hypothesis/ in the clone).
BOUNDED = settings(max_examples=150, deadline=timedelta(seconds=scaled(5)),
                   suppress_health_check=[HealthCheck.too_slow], database=None)

good_rows = st.fixed_dictionaries({
    "pet_id": st.sampled_from(["7", "8", " 7 "]),
    "test_code": st.sampled_from(["CREA", "crea", "ALT"]),
    "collected_at": st.datetimes(min_value=datetime(2026, 6, 2), max_value=datetime(2026, 11, 25)).map(
        lambda d: d.replace(microsecond=0).isoformat(sep=" ")),
    "value": st.floats(min_value=0.1, max_value=29.0).map(lambda v: f"{v:.2f}"),
}).map(lambda r: {**r, "visit_id": "501" if r["pet_id"].strip() == "7" else ""})

#: (kind, column, replacement value): each makes the row fail in that column, whatever the rest holds.
BREAKS = {
    "pet_id": ["seven", "7.5", "", "7\n8", 'x"y'],
    "test_code": ["", "K9X", "CR\nEA", 'C"REA', "CREA,ALT"],
    "collected_at": ["2026-02-30 09:00", "2026-13-01", "", "yesterday", "2026-10-02\n10:15", "2031-01-01 00:00"],
    "value": ["abc", "1,2", "", "nan", "inf", "1e400", "1.\n2", '"3"x', "-5", "1_0", "\u0661"],
    "visit_id": ["v1", "999", "1.5", "\u0665\u0660\u0661"],  # the last: 501 in Arabic-Indic digits
}


@st.composite
def broken_files(draw):
    """(file bytes, header, [(expected first line, raw row text, broken column or None)])."""
    with_visit = draw(st.booleans())
    header = draw(st.permutations(REQUIRED + (OPTIONAL if with_visit else ())))
    header_text = [draw(st.sampled_from([c, c.upper(), f" {c} "])) for c in header]
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator=eol, quoting=quoting)
    writer.writerow(header_text)
    expected, line = [], 2
    for _ in range(draw(st.integers(1, 12))):
        row = draw(good_rows)
        broken = draw(st.one_of(st.none(), st.sampled_from(header)))
        cells = [row[c] for c in header]
        kind = None
        if broken is not None:
            kind = draw(st.sampled_from(["value", "nul", "undecodable", "fields"]))
            i = header.index(broken)
            if kind == "value":
                cells[i] = draw(st.sampled_from(BREAKS[broken]))
            elif kind == "nul":
                cells[i] += MARK_NUL
            elif kind == "undecodable":
                cells[i] = MARK_BAD + cells[i]
            elif broken == header[-1]:
                cells.append("extra")  # extra fields are reported on the header's last column
            else:
                broken = header[len(header) - 1]
                cells = cells[:-1]  # a missing last field is reported on that column
        start = out.tell()
        writer.writerow(cells)
        text = out.getvalue()[start:]
        expected.append((line, text[: -len(eol)], broken))
        line += len(re.findall(r"\r\n|\r|\n", text))
    data = out.getvalue().encode("utf-8").replace(MARK_NUL.encode(), b"\x00").replace(MARK_BAD.encode(), b"\xff")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    return data, header, expected


@BOUNDED
@given(broken_files())
def test_every_row_is_accepted_or_quarantined_with_its_column(case):
    data, header, expected = case
    parsed = parse_csv(data, "gen.csv")
    outcomes = list(classify(parsed, REF))

    accepted = [rec for rec, row, _ in outcomes if row is not None]
    quarantined = [(rec, reasons) for rec, row, reasons in outcomes if row is None]
    assert len(expected) == len(parsed.records) == len(accepted) + len(quarantined)
    for (rec, row, reasons), (line, raw, broken) in zip(outcomes, expected, strict=True):
        assert (row is None) != (reasons == []), "exactly one of: a row to load, or reasons"
        assert rec.line_no == line
        assert storable(rec.raw) == storable(raw.replace(MARK_NUL, "\x00").replace(MARK_BAD, "\udcff"))
        for reason in reasons:
            assert reason.column in header and reason.startswith(reason.column + ": "), reason
        if broken is None:
            assert row is not None, (rec.raw, reasons)
        else:
            assert broken in {r.column for r in reasons}, (broken, rec.raw, reasons)


@BOUNDED
@given(st.lists(good_rows, min_size=1, max_size=20), st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_good_rows_survive_any_quoting_bom_and_line_ending(rows, eol, bom):
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=[*REQUIRED, *OPTIONAL], lineterminator=eol, quoting=csv.QUOTE_ALL)
    writer.writeheader()
    writer.writerows(rows)
    data = (b"\xef\xbb\xbf" if bom else b"") + out.getvalue().encode()
    loaded = [row for _, row, _ in classify(parse_csv(data, "good.csv"), REF)]
    assert all(row is not None for row in loaded)
    assert [(r.pet_id, r.test_code) for r in loaded] == [(int(x["pet_id"]), x["test_code"].upper()) for x in rows]
    assert all(r.collected_at.tzinfo is not None and r.collected_at.utcoffset() == timedelta(hours=9)
               for r in loaded), "naive timestamps are Seoul time"
