"""The phone address book: contacts kept in SQLite in data_dir.

One `AddressBook` per process and data_dir (`addressbook_for(runtime)`)
owns one SQLite connection (WAL, busy timeout) behind a lock. It keeps no
copy of the contacts: `get`, `page`, `find` (the admin search, off the event
loop) and the export read SQLite a page at a time, so a book of 100,000
contacts costs no memory of its own.

Every write commits in one transaction; triggers on the contacts table
record each added, changed or deleted contact's id in `contact_changes`,
whoever wrote it (this process, the CLI, an administrator's sqlite3 shell).
`ChangeReader` (a connection of its own) is how the LDAP server follows the
book: it notices a commit by `PRAGMA data_version` and reads the log after
the last change it applied; the subscribers of this process's book are
called after each of its commits, so the LDAP server applies it at once. The
log keeps the last LOG_KEEP changes; a reader further behind rebuilds.

Validation is per field and all-or-nothing: `ContactError.errors` maps each
bad field to a message naming it. A CSV import (header row) is validated
while it is inserted, in one transaction that is rolled back on any problem;
`ImportRejected.errors` lists `{row, field, message}` (row 1 is the header,
so row numbers match a spreadsheet's).

No exported cell starts a formula (OWASP's CSV injection): a cell that would
start with one of FORMULA_STARTS (= + - @, tab, CR, LF, or the full-width
＝ ＋ － ＠), or with an apostrophe, gets one apostrophe in front, which
spreadsheets read as "this is text". An import takes one leading apostrophe
off a cell exactly where it is followed by one of those characters, which is
where an export put it: an export imported again gives the same contacts
("+49-30-1234" -> "'+49-30-1234" -> "+49-30-1234"; "'s-Hertogenbosch" keeps
its apostrophe either way).

Names and numbers are folded as the LDAP server folds them (fold_name,
fold_number of greenservers/proto/ldap.py), so the admin search and LDAP
agree: a number matches regardless of formatting, "+" written "00"
("+49 (30) 123-4" -> "0049301234").
"""

from __future__ import annotations

import csv
import io
import logging
import re
import sqlite3
import threading
from dataclasses import dataclass, fields as dataclass_fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .config.private import ensure_private_file, make_private_dir
from .offload import build_off_loop, run_off_loop
from .proto.ldap import fold_name, fold_number

log = logging.getLogger("greenservers.addressbook")

FIELDS = ("first_name", "last_name", "display_name", "company", "work", "mobile", "home", "extension", "email")
NAME_FIELDS = ("first_name", "last_name", "display_name", "company")
NUMBER_FIELDS = ("work", "mobile", "home", "extension")

MAX_CONTACTS = 200_000  # the whole book; an import that would pass it is refused
MAX_IMPORT_BYTES = 24 * 1024 * 1024  # room for MAX_CONTACTS contacts of typical length
MAX_REPORTED_ERRORS = 100  # an import report lists at most this many problems
MAX_SEARCH_LENGTH = 100
PAGE = 1000  # contacts read from SQLite at a time (an export, the admin search, the LDAP index's build)
LOG_KEEP = 250_000  # changes the log keeps: a replacing import of MAX_CONTACTS logs a delete and an add each

MAX_NAME = 128
MAX_NUMBER = 32
MAX_NUMBER_DIGITS = 20  # E.164 allows 15; room for a 00 prefix and carrier codes
MAX_EXTENSION = 16
MAX_EMAIL = 254  # RFC 5321 path limit

_NUMBER_RE = re.compile(r"\+?[0-9 ()./\-]+")
_NON_DIGITS = re.compile(r"[^0-9]+")
_EXTENSION_RE = re.compile(r"[0-9*#]+")
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_EMAIL_RE = re.compile(rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~.\-]+@{_DNS_LABEL}(?:\.{_DNS_LABEL})+")
# A cell starting with one of these is a formula to a spreadsheet (CSV injection, as OWASP
# lists them); the full-width forms as a precaution: a spreadsheet that normalises what it
# reads (NFKC) would take them for the ASCII ones.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
TEXT_MARK = "'"  # what makes a spreadsheet take a cell as text
_MARKED_STARTS = FORMULA_STARTS + (TEXT_MARK,)


@dataclass(frozen=True)
class Contact:
    """One contact: its id and the nine fields, all str ("" when empty)."""

    id: int
    first_name: str = ""
    last_name: str = ""
    display_name: str = ""
    company: str = ""
    work: str = ""
    mobile: str = ""
    home: str = ""
    extension: str = ""
    email: str = ""

    @property
    def name(self) -> str:
        """What a phone shows: display_name, else "first last", else company."""
        return self.display_name or " ".join(p for p in (self.first_name, self.last_name) if p) or self.company

    def fields(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in FIELDS}

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, **self.fields()}


assert tuple(f.name for f in dataclass_fields(Contact)) == ("id",) + FIELDS


class ContactError(ValueError):
    """A contact failed validation; `errors` maps each bad field to a message that names it."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


class ContactNotFound(KeyError):
    """No contact with that id."""


class ImportRejected(ValueError):
    """A CSV import was refused and nothing changed; `errors` is [{row, field, message}]."""

    def __init__(self, errors: list[dict[str, Any]], total: int | None = None):
        self.errors = errors[:MAX_REPORTED_ERRORS]
        self.total = total if total is not None else len(errors)
        first = self.errors[0] if self.errors else {"row": 0, "field": "", "message": "rejected"}
        more = f" (and {self.total - 1} more)" if self.total > 1 else ""
        super().__init__(f"row {first['row']}, {first['field'] or 'row'}: {first['message']}{more}")


# -- searching -------------------------------------------------------------------


def looks_like_number(text: str) -> bool:
    """True when `text` is made of phone-number characters and has a digit."""
    return bool(_NUMBER_RE.fullmatch(text.strip())) and any(ch.isdigit() for ch in text)


def _matcher(q: str) -> Callable[[Contact], bool]:
    """Whether a contact's names or company contain `q` (folded), or its numbers `q`'s number (folded)."""
    text = fold_name(q)
    number = fold_number(q) if looks_like_number(q) else ""

    def matches(contact: Contact) -> bool:
        for field in NAME_FIELDS:
            if text in fold_name(getattr(contact, field)):
                return True
        if number:
            for field in NUMBER_FIELDS:
                if number in fold_number(getattr(contact, field)):
                    return True
        return False
    return matches


# -- validation -----------------------------------------------------------------


def _check_text(field: str, value: str) -> str | None:
    if len(value) > MAX_NAME:
        return f"{field} is longer than {MAX_NAME} characters"
    if value.startswith(FORMULA_STARTS):
        return f"{field} must not start with = + - or @ (a spreadsheet would run it as a formula)"
    return None


def _check_number(field: str, value: str) -> str | None:
    if len(value) > MAX_NUMBER:
        return f"{field} is longer than {MAX_NUMBER} characters"
    if not _NUMBER_RE.fullmatch(value):
        return f"{field} {value!r} is not a phone number (digits, an optional leading +, spaces, ( ) - . /)"
    digits = len(_NON_DIGITS.sub("", value))
    if digits == 0:
        return f"{field} {value!r} has no digits"
    if digits > MAX_NUMBER_DIGITS:
        return f"{field} has more than {MAX_NUMBER_DIGITS} digits"
    return None


def _check_extension(field: str, value: str) -> str | None:
    if len(value) > MAX_EXTENSION or not _EXTENSION_RE.fullmatch(value):
        return f"{field} {value!r} is not an extension (1 to {MAX_EXTENSION} of 0-9 * #)"
    return None


def _check_email(field: str, value: str) -> str | None:
    if len(value) > MAX_EMAIL:
        return f"{field} is longer than {MAX_EMAIL} characters"
    local = value.partition("@")[0]
    if not _EMAIL_RE.fullmatch(value) or len(local) > 64 or local.startswith(("=", "+", "-", ".")) or ".." in local or local.endswith("."):
        return f"{field} {value!r} is not an e-mail address like name@example.com"
    return None


FIELD_CHECKS: dict[str, Callable[[str, str], str | None]] = {
    "first_name": _check_text,
    "last_name": _check_text,
    "display_name": _check_text,
    "company": _check_text,
    "work": _check_number,
    "mobile": _check_number,
    "home": _check_number,
    "extension": _check_extension,
    "email": _check_email,
}


def _clean(field: str, raw: Any) -> tuple[str, str | None]:
    """The stored form of one field's value, and its error (or None)."""
    if raw is None:
        return "", None
    if isinstance(raw, int) and not isinstance(raw, bool) and field in NUMBER_FIELDS:
        raw = str(raw)  # JSON clients send extensions as numbers
    if not isinstance(raw, str):
        return "", f"{field} must be a string"
    value = " ".join(raw.split())  # collapse whitespace, newlines and tabs included
    if not value.isprintable():  # control, format, surrogate, unassigned characters
        return "", f"{field} contains control or unprintable characters"
    if not value:
        return "", None
    return value, FIELD_CHECKS[field](field, value)


def validate(fields: dict[str, Any], base: dict[str, str] | None = None) -> dict[str, str]:
    """All nine fields, cleaned; `base` gives the values of fields not in `fields`.

    Raises ContactError naming every bad field (unknown keys included).
    """
    if not isinstance(fields, dict):
        raise ContactError({"contact": "a contact is an object of fields"})
    errors: dict[str, str] = {}
    for key in fields:
        if key not in FIELD_CHECKS and key != "id":
            errors[str(key)[:64]] = f"no such field {str(key)[:64]!r}; fields are {', '.join(FIELDS)}"
    cleaned = dict(base) if base else dict.fromkeys(FIELDS, "")
    for field in FIELDS:
        if field in fields:
            cleaned[field], error = _clean(field, fields[field])
            if error:
                errors[field] = error
    if not errors and not any(cleaned[f] for f in NAME_FIELDS):
        errors["first_name"] = "a contact needs a name: first_name, last_name, display_name or company"
    if errors:
        raise ContactError(errors)
    return cleaned


# -- CSV ---------------------------------------------------------------------------


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
    return list(csv_rows(text, max_rows))


def csv_rows(text: str, max_rows: int = MAX_CONTACTS) -> Iterator[dict[str, str]]:
    """The validated rows of a CSV text with a header row, one at a time; at the end (or at the first
    problem with the header) raises ImportRejected with every problem. Keeps no rows: a caller that
    stores them as they come undoes that when it is raised (AddressBook.import_csv: one transaction)."""
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
                continue  # blank lines, and rows of empty cells left by spreadsheets
            if rows >= max_rows:
                problem(row_number, "", f"more than {max_rows} contacts")
                break
            if len(record) != len(header):
                problem(row_number, "", f"{len(record)} columns where the header has {len(header)}")
                continue
            try:
                row = validate({h: csv_value(v) for h, v in zip(header, record) if h != "id"})
            except ContactError as exc:
                for field, message in exc.errors.items():
                    problem(row_number, field, message)
                continue
            rows += 1
            if not total_errors:
                yield row
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


# -- the store -------------------------------------------------------------------

_SCHEMA = [
    f"""CREATE TABLE IF NOT EXISTS contacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    {", ".join(f"{name} TEXT NOT NULL DEFAULT ''" for name in FIELDS)}
)""",
    # the change log: every writer's changes, by trigger (AUTOINCREMENT: a seq is never used twice)
    "CREATE TABLE IF NOT EXISTS contact_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, contact_id INTEGER NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS contact_added AFTER INSERT ON contacts "
    "BEGIN INSERT INTO contact_changes (contact_id) VALUES (new.id); END",
    "CREATE TRIGGER IF NOT EXISTS contact_changed AFTER UPDATE ON contacts "
    "BEGIN INSERT INTO contact_changes (contact_id) VALUES (new.id); END",
    "CREATE TRIGGER IF NOT EXISTS contact_deleted AFTER DELETE ON contacts "
    "BEGIN INSERT INTO contact_changes (contact_id) VALUES (old.id); END",
]
_COLUMNS = ", ".join(FIELDS)
_SELECT = f"SELECT id, {_COLUMNS} FROM contacts"
_INSERT = f"INSERT INTO contacts ({_COLUMNS}) VALUES ({', '.join('?' * len(FIELDS))})"
_UPDATE = f"UPDATE contacts SET {', '.join(f'{name} = ?' for name in FIELDS)} WHERE id = ?"
_LAST_CHANGE = "SELECT seq FROM sqlite_sequence WHERE name = 'contact_changes'"


def _connect(path: Path) -> sqlite3.Connection:
    # autocommit mode; writes open their own BEGIN IMMEDIATE transaction
    db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against a process crash
    db.execute("PRAGMA busy_timeout=10000")
    return db


class AddressBook:
    """The contacts of one data_dir; safe to share between greenlets and threads."""

    def __init__(self, path: Path):
        self.path = Path(path)
        make_private_dir(self.path.parent)
        ensure_private_file(self.path)  # SQLite makes -wal and -shm with the database file's mode and owner
        self._db = _connect(self.path)
        with _Transaction(self._db):
            for statement in _SCHEMA:
                self._db.execute(statement)
        self._lock = threading.RLock()
        self._subscribers: list[Callable[[], None]] = []

    # -- reading ---------------------------------------------------------------

    @property
    def version(self) -> int:
        """The last change's number in the log: it grows with every change, whichever process made it."""
        with self._lock:
            return _last_change(self._db)

    def contacts(self) -> list[Contact]:
        """Every contact, ordered by id (the whole book in memory: for small books, tests and the CLI)."""
        return list(self.each())

    def each(self) -> Iterator[Contact]:
        """Every contact, ordered by id, read a page at a time."""
        after = 0
        while page := self.after(after, PAGE):
            yield from page
            after = page[-1].id

    def after(self, id: int, limit: int) -> list[Contact]:
        """Up to `limit` contacts with ids above `id`, ordered by id."""
        return self._read(f"{_SELECT} WHERE id > ? ORDER BY id LIMIT ?", (id, limit))

    def page(self, offset: int, limit: int | None) -> list[Contact]:
        """Contacts `offset` to `offset + limit` in id order (limit None: to the end)."""
        return self._read(f"{_SELECT} ORDER BY id LIMIT ? OFFSET ?", (-1 if limit is None else limit, offset))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM contacts").fetchone()[0]

    def get(self, id: int) -> Contact | None:
        try:
            found = self._read(f"{_SELECT} WHERE id = ?", (int(id),))
        except (TypeError, ValueError, OverflowError):
            return None
        return found[0] if found else None

    def search(self, q: str, limit: int = 100) -> list[Contact]:
        """Contacts whose names or company contain `q` (any case), or whose numbers contain its number."""
        return self.find(q, 0, limit)[0]

    def find(self, q: str, offset: int = 0, limit: int | None = 100) -> tuple[list[Contact], int]:
        """(the contacts `offset` to `offset + limit` of those `search` matches, how many match in all);
        every contact when `q` is empty. Read a page at a time, off the event loop."""
        q = (q or "").strip()[:MAX_SEARCH_LENGTH]
        if not q:
            return self.page(offset, limit), len(self)
        return run_off_loop(self._find, _matcher(q), offset, limit)

    def _find(self, matches: Callable[[Contact], bool], offset: int, limit: int | None) -> tuple[list[Contact], int]:
        found: list[Contact] = []
        total = 0
        for contact in self.each():
            if matches(contact):
                if total >= offset and (limit is None or len(found) < limit):
                    found.append(contact)
                total += 1
        return found, total

    def export_csv(self) -> str:
        return "".join(self.export_chunks())

    def export_chunks(self) -> Iterator[str]:
        """The CSV export, a page of contacts per chunk (each encoded off the event loop)."""
        yield to_csv(())
        after = 0
        while page := self.after(after, PAGE):
            yield run_off_loop(_csv_rows, page)
            after = page[-1].id

    def _read(self, sql: str, params: tuple) -> list[Contact]:
        with self._lock:
            return [Contact(*row) for row in self._db.execute(sql, params).fetchall()]

    # -- writing ---------------------------------------------------------------

    def add(self, fields: dict) -> Contact:
        values = validate(fields)
        with self._lock:
            with self._transaction():
                if self._db.execute("SELECT count(*) FROM contacts").fetchone()[0] >= MAX_CONTACTS:
                    raise ContactError({"contact": f"the address book is full ({MAX_CONTACTS} contacts)"})
                cursor = self._db.execute(_INSERT, [values[f] for f in FIELDS])
                _prune_log(self._db)
            contact = Contact(cursor.lastrowid, **values)
        self._notify()
        return contact

    def change(self, id: int, fields: dict) -> Contact:
        """Change the given fields of contact `id` (others keep their values)."""
        with self._lock:
            with self._transaction():
                current = self.get(id)
                if current is None:
                    raise ContactNotFound(id)
                values = validate(fields, base=current.fields())
                self._db.execute(_UPDATE, [values[f] for f in FIELDS] + [current.id])
                _prune_log(self._db)
            contact = Contact(current.id, **values)
        self._notify()
        return contact

    def delete(self, id: int) -> bool:
        with self._lock:
            with self._transaction():
                deleted = self._db.execute("DELETE FROM contacts WHERE id = ?", (int(id),)).rowcount
                _prune_log(self._db)
        if deleted:
            self._notify()
        return bool(deleted)

    def import_csv(self, text: str, replace: bool = False) -> int:
        """Add every row of `text` (CSV, header row) in one transaction, or none of them.

        With `replace`, the imported rows replace the whole address book. Raises
        ImportRejected (nothing changed) listing the problems by row and field.
        Rows are validated as they are inserted (none is kept in memory), off the
        event loop and on a connection of the import's own: readers go on meanwhile,
        other writers wait for the commit.
        """
        count = build_off_loop(self._import, text, replace)
        self._notify()
        return count

    def _import(self, text: str, replace: bool) -> int:
        db = _connect(self.path)
        try:
            with _Transaction(db):
                kept = 0 if replace else db.execute("SELECT count(*) FROM contacts").fetchone()[0]
                if replace:
                    db.execute("DELETE FROM contacts")
                count = 0

                def rows():
                    nonlocal count
                    for row in csv_rows(text):
                        count += 1
                        yield [row[f] for f in FIELDS]
                db.executemany(_INSERT, rows())
                if kept + count > MAX_CONTACTS:
                    message = f"the address book would hold {kept + count} contacts; the limit is {MAX_CONTACTS}"
                    raise ImportRejected([{"row": 0, "field": "", "message": message}])
                _prune_log(db)
        finally:
            db.close()
        return count

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback()` after each change this process commits (from the thread that made it)."""
        with self._lock:
            self._subscribers.append(callback)

    def reader(self) -> "ChangeReader":
        """A connection of its own to follow the book's changes (for one greenlet or thread)."""
        return ChangeReader(self.path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- inside ------------------------------------------------------------------

    def _transaction(self):
        return _Transaction(self._db)

    def _notify(self) -> None:
        for callback in list(self._subscribers):
            try:
                callback()
            except Exception:  # one subscriber's bug must not undo or hide the change
                log.exception("address book subscriber failed")


def _prune_log(db: sqlite3.Connection) -> None:
    db.execute("DELETE FROM contact_changes WHERE seq <= ?", (_last_change(db) - LOG_KEEP,))


def _last_change(db: sqlite3.Connection) -> int:
    row = db.execute(_LAST_CHANGE).fetchone()
    return row[0] if row else 0


def _csv_rows(contacts: Iterable[Contact]) -> str:
    return to_csv(contacts)[len(_CSV_HEADER):]


class ChangeReader:
    """Reads what changed in a book since a point of its change log, on a connection of its own.

    `changed()` is cheap (PRAGMA data_version: about 6 us) and true after any
    connection's commit, this process's or another's.
    """

    def __init__(self, path: Path):
        self._db = _connect(path)
        self._data_version = -1

    def changed(self) -> bool:
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return False
        self._data_version = version
        return True

    def last_change(self) -> int:
        return _last_change(self._db)

    def changes_after(self, seq: int, limit: int) -> tuple[list[int], int] | None:
        """(the ids of the contacts changed after change `seq`, the last change read), at most `limit` changes;
        None if the log no longer reaches back to `seq` (pruned: the reader must read the whole book)."""
        rows = self._db.execute("SELECT seq, contact_id FROM contact_changes WHERE seq > ? ORDER BY seq LIMIT ?",
                                (seq, limit)).fetchall()
        if not rows:
            return [], seq
        if rows[0][0] > seq + 1:
            first = self._db.execute("SELECT min(seq) FROM contact_changes").fetchone()[0]
            if first is not None and first > seq + 1:
                return None  # pruned (a rollback leaves no hole: it gives its numbers back)
        return list(dict.fromkeys(contact_id for _, contact_id in rows)), rows[-1][0]

    def contacts(self, ids: list[int]) -> list[Contact]:
        """The contacts of `ids` that exist (an id missing here was deleted)."""
        found = []
        for start in range(0, len(ids), 500):  # SQLite's limit on bound parameters is larger; this keeps a read short
            part = ids[start:start + 500]
            rows = self._db.execute(f"{_SELECT} WHERE id IN ({','.join('?' * len(part))})", part).fetchall()
            found += [Contact(*row) for row in rows]
        return found

    def after(self, id: int, limit: int) -> list[Contact]:
        return [Contact(*row) for row in self._db.execute(f"{_SELECT} WHERE id > ? ORDER BY id LIMIT ?", (id, limit)).fetchall()]

    def close(self) -> None:
        self._db.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, traceback):
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        return False


_books: dict[Path, AddressBook] = {}
_books_lock = threading.Lock()


def addressbook_for(runtime) -> AddressBook:
    """The process's AddressBook for the runtime's current data_dir, made on first use."""
    path = runtime.settings.data_path / "addressbook.sqlite3"
    with _books_lock:
        book = _books.get(path)
        if book is None:
            book = _books[path] = AddressBook(path)
        return book
