"""CSV import and export of contacts.

An import (header row; `,`, `;` or tab separated; a BOM allowed) is
validated row by row as it is read (`csv_rows`), keeping no rows: the store
inserts them as they come in one transaction and rolls it back on any
problem; `ImportRejected.errors` lists `{row, field, message}` (row 1 is the
header, so row numbers match a spreadsheet's).

No exported cell starts a formula (OWASP's CSV injection): a cell that would
start with one of FORMULA_STARTS (= + - @, tab, CR, LF, or the full-width
＝ ＋ － ＠), or with an apostrophe, gets one apostrophe in front, which
spreadsheets read as "this is text". An import takes one leading apostrophe
off a cell exactly where it is followed by one of those characters, which is
where an export put it: an export imported again gives the same contacts
("+49-30-1234" -> "'+49-30-1234" -> "+49-30-1234"; "'s-Hertogenbosch" keeps
its apostrophe either way).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any

from .model import (
    FIELD_CHECKS,
    FIELDS,
    FORMULA_STARTS,
    MAX_CONTACTS,
    MAX_IMPORT_BYTES,
    MAX_REPORTED_ERRORS,
    TEXT_MARK,
    Contact,
    ContactError,
    ImportRejected,
    validate,
)

_MARKED_STARTS = FORMULA_STARTS + (TEXT_MARK,)

# -- CSV ---------------------------------------------------------------------------


def csv_text(data: bytes) -> str:
    """An import's bytes as text (UTF-8; a byte order mark dropped); ImportRejected for a file over
    MAX_IMPORT_BYTES or one that is not UTF-8 (naming the first byte that is not)."""
    if len(data) > MAX_IMPORT_BYTES:
        raise ImportRejected([{"row": 0, "field": "", "message": f"the file is larger than {MAX_IMPORT_BYTES} bytes"}])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportRejected([{"row": 0, "field": "", "message": f"the file is not UTF-8 text (byte {exc.start})"}]) from None


def csv_cell(value: str) -> str:
    """A value as an exported cell: an apostrophe in front where it would start a formula, or with an apostrophe."""
    return TEXT_MARK + value if value.startswith(_MARKED_STARTS) else value


def csv_value(cell: str) -> str:
    """An imported cell's value: without the apostrophe csv_cell put in front (and only that one)."""
    return cell[1:] if cell.startswith(TEXT_MARK) and cell[1:].startswith(_MARKED_STARTS) else cell


def _dialect_of(header_line: str) -> str:
    """',' unless the header is clearly ';'- or tab-separated (spreadsheets in many locales)."""
    counts = {d: header_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def parse_csv(text: str, max_rows: int = MAX_CONTACTS) -> list[dict[str, str]]:
    """Validated rows of a CSV text with a header row; raises ImportRejected with every problem."""
    return [row for row in csv_rows(text, max_rows) if row is not None]


def csv_rows(text: str, max_rows: int = MAX_CONTACTS) -> Iterator[dict[str, str] | None]:
    """The validated rows of a CSV text with a header row, one at a time, and None for each record that is not
    one (blank, refused, or read after a problem: so a caller paces its work by records read, not rows kept);
    at the end (or at the first problem with the header) raises ImportRejected with every problem. Keeps no
    rows: a caller that stores them as they come undoes that when it is raised (an import's staging: one
    transaction, rolled back)."""
    if len(text) > MAX_IMPORT_BYTES:
        raise ImportRejected([{"row": 0, "field": "", "message": f"the file is larger than {MAX_IMPORT_BYTES} bytes"}])
    text = text.removeprefix("\ufeff")  # a byte-order mark from spreadsheet programs
    if not text.strip():
        raise ImportRejected([{"row": 1, "field": "", "message": "the file is empty; the first row must name the columns"}])
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_dialect_of(text.split("\n", 1)[0]), strict=True)
    errors: list[dict[str, Any]] = []
    total_errors = 0

    def problem(row: int, field: str, message: str) -> None:
        nonlocal total_errors
        total_errors += 1
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append({"row": row, "field": field, "message": message})

    try:
        header = [h.strip().lower() for h in next(reader)]
    except csv.Error as exc:
        raise ImportRejected([{"row": 1, "field": "", "message": f"not CSV: {exc}"}]) from None
    for name in header:
        if name not in FIELD_CHECKS and name != "id":  # id: exports of other tools; ignored
            problem(1, name[:64], f"unknown column {name[:64]!r}; columns are {', '.join(FIELDS)}")
    for name in set(header):
        if name and header.count(name) > 1:
            problem(1, name[:64], f"column {name[:64]!r} appears more than once")
    if not any(h in FIELD_CHECKS for h in header):
        problem(1, "", f"the first row must name the columns: {', '.join(FIELDS)}")
    if total_errors:
        raise ImportRejected(errors, total_errors)

    rows = 0
    row_number = 1
    try:
        for record in reader:
            row_number += 1
            if not any(cell.strip() for cell in record):
                yield None  # blank lines, and rows of empty cells left by spreadsheets
                continue
            if rows >= max_rows:
                problem(row_number, "", f"more than {max_rows} contacts")
                break
            if len(record) != len(header):
                problem(row_number, "", f"{len(record)} columns where the header has {len(header)}")
                yield None
                continue
            try:
                row = validate({h: csv_value(v) for h, v in zip(header, record, strict=True) if h != "id"})
            except ContactError as exc:
                for field, message in exc.errors.items():
                    problem(row_number, field, message)
                yield None
                continue
            rows += 1
            yield None if total_errors else row
    except csv.Error as exc:
        problem(row_number, "", f"not CSV: {exc}")
    if total_errors:
        raise ImportRejected(errors, total_errors)


_CSV_HEADER = ",".join(FIELDS) + "\r\n"


def to_csv(contacts: Iterable[Contact]) -> str:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(FIELDS)
    for contact in contacts:
        writer.writerow([csv_cell(getattr(contact, f)) for f in FIELDS])
    return out.getvalue()


def csv_body(contacts: Iterable[Contact]) -> str:
    """The rows of an export without its header (an export is made a page at a time)."""
    return to_csv(contacts)[len(_CSV_HEADER):]
