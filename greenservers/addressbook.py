"""The phone address book: contacts kept in SQLite in data_dir.

One `AddressBook` per process and data_dir (`addressbook_for(runtime)`)
owns one SQLite connection (WAL, busy timeout) behind a lock, and an
in-memory copy of every contact, ordered by id. Readers (the LDAP server,
the JSON API, the admin page) read that copy; every write goes to SQLite in
one transaction first, then updates the copy, bumps `version` and calls the
subscribers, so a change is visible to LDAP searches at once. A change
committed by another process (the CLI) is noticed when the copy is next read,
and the copy is reloaded off the event loop (greenservers/offload.py).

Validation is per field and all-or-nothing: `ContactError.errors` maps each
bad field to a message naming it. CSV import (header row) is validated as a
whole before anything is written and then inserted in one transaction;
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

Phone numbers match regardless of formatting: `number_key` keeps the digits
only, with a leading `+` written as `00` ("+49 (30) 123-4" -> "0049301234").
`fold` is the case-insensitive form of names. The LDAP server uses both, so
the two searches agree.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import sqlite3
import threading
import unicodedata
from dataclasses import dataclass, fields as dataclass_fields
from pathlib import Path
from typing import Any, Callable, Iterable

from .config.private import ensure_private_file, make_private_dir
from .offload import build_off_loop, run_off_loop

log = logging.getLogger("greenservers.addressbook")

FIELDS = ("first_name", "last_name", "display_name", "company", "work", "mobile", "home", "extension", "email")
NAME_FIELDS = ("first_name", "last_name", "display_name", "company")
NUMBER_FIELDS = ("work", "mobile", "home", "extension")

MAX_CONTACTS = 200_000  # the whole book; an import that would pass it is refused
MAX_IMPORT_BYTES = 24 * 1024 * 1024  # room for MAX_CONTACTS contacts of typical length
MAX_REPORTED_ERRORS = 100  # an import report lists at most this many problems
MAX_SEARCH_LENGTH = 100

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


# -- normalization shared with the LDAP server ---------------------------------


def fold(text: str) -> str:
    """Case- and width-insensitive form of a name (NFKC + casefold)."""
    return unicodedata.normalize("NFKC", text).casefold()


def number_key(text: str) -> str:
    """A phone number's digits only; a leading '+' becomes '00' so both spellings match."""
    stripped = text.strip()
    digits = _NON_DIGITS.sub("", stripped)
    return "00" + digits if stripped.startswith("+") else digits


def looks_like_number(text: str) -> bool:
    """True when `text` is made of phone-number characters and has a digit."""
    return bool(_NUMBER_RE.fullmatch(text.strip())) and any(ch.isdigit() for ch in text)


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

    rows: list[dict[str, str]] = []
    row_number = 1
    try:
        for record in reader:
            row_number += 1
            if not any(cell.strip() for cell in record):
                continue  # blank lines, and rows of empty cells left by spreadsheets
            if len(rows) >= max_rows:
                problem(row_number, "", f"more than {max_rows} contacts")
                break
            if len(record) != len(header):
                problem(row_number, "", f"{len(record)} columns where the header has {len(header)}")
                continue
            try:
                rows.append(validate({h: csv_value(v) for h, v in zip(header, record) if h != "id"}))
            except ContactError as exc:
                for field, message in exc.errors.items():
                    problem(row_number, field, message)
    except csv.Error as exc:
        problem(row_number, "", f"not CSV: {exc}")
    if total_errors:
        raise ImportRejected(errors, total_errors)
    return rows


def to_csv(contacts: Iterable[Contact]) -> str:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(FIELDS)
    for contact in contacts:
        writer.writerow([csv_cell(getattr(contact, f)) for f in FIELDS])
    return out.getvalue()


# -- the store -------------------------------------------------------------------

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS contacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    {", ".join(f"{name} TEXT NOT NULL DEFAULT ''" for name in FIELDS)}
)
"""
_COLUMNS = ", ".join(FIELDS)
_INSERT = f"INSERT INTO contacts ({_COLUMNS}) VALUES ({', '.join('?' * len(FIELDS))})"
_UPDATE = f"UPDATE contacts SET {', '.join(f'{name} = ?' for name in FIELDS)} WHERE id = ?"


class AddressBook:
    """The contacts of one data_dir; safe to share between greenlets and threads."""

    def __init__(self, path: Path):
        self.path = Path(path)
        make_private_dir(self.path.parent)
        ensure_private_file(self.path)  # SQLite makes -wal and -shm with the database file's mode and owner
        # Autocommit mode; writes open their own BEGIN IMMEDIATE transaction.
        self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against a process crash
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.execute(_SCHEMA)
        self._lock = threading.RLock()
        self._version = 0
        self._subscribers: list[Callable[[], None]] = []
        self._by_id: dict[int, Contact] = {}
        self._search_keys: dict[int, tuple[str, str]] = {}
        self._data_version = -1
        with self._lock:
            self._reload()

    # -- reading ---------------------------------------------------------------

    @property
    def version(self) -> int:
        """Increases on every change (also one made by another process, noticed when read)."""
        with self._lock:
            self._notice_external_change()
            return self._version

    def contacts(self) -> list[Contact]:
        """Every contact, ordered by id (a copy of the in-memory list)."""
        with self._lock:
            self._notice_external_change()
            return list(self._by_id.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_id)

    def get(self, id: int) -> Contact | None:
        with self._lock:
            self._notice_external_change()
            try:
                return self._by_id.get(int(id))
            except (TypeError, ValueError):
                return None

    def search(self, q: str, limit: int = 100) -> list[Contact]:
        """Contacts whose names or company contain `q` (any case), or whose numbers contain its digits."""
        q = (q or "").strip()[:MAX_SEARCH_LENGTH]
        with self._lock:
            self._notice_external_change()
            if not q:
                return list(self._by_id.values())[: max(limit, 0)]
            text = fold(q)
            digits = number_key(q) if looks_like_number(q) else ""
            found: list[Contact] = []
            for contact_id, (names, numbers) in self._search_keys.items():
                if text in names or (digits and digits in numbers):
                    found.append(self._by_id[contact_id])
                    if len(found) >= limit:
                        break
            return found

    def export_csv(self) -> str:
        return run_off_loop(to_csv, self.contacts())  # 100,000 contacts: about 0.2 s of work

    # -- writing ---------------------------------------------------------------

    def add(self, fields: dict) -> Contact:
        values = validate(fields)
        with self._lock:
            self._notice_external_change()
            if len(self._by_id) >= MAX_CONTACTS:
                raise ContactError({"contact": f"the address book is full ({MAX_CONTACTS} contacts)"})
            with self._transaction():
                cursor = self._db.execute(_INSERT, [values[f] for f in FIELDS])
            contact = Contact(cursor.lastrowid, **values)
            self._remember(contact)
            self._changed()
        self._notify()
        return contact

    def change(self, id: int, fields: dict) -> Contact:
        """Change the given fields of contact `id` (others keep their values)."""
        with self._lock:
            self._notice_external_change()
            current = self._by_id.get(int(id))
            if current is None:
                raise ContactNotFound(id)
            values = validate(fields, base=current.fields())
            with self._transaction():
                self._db.execute(_UPDATE, [values[f] for f in FIELDS] + [current.id])
            contact = Contact(current.id, **values)
            self._remember(contact)
            self._changed()
        self._notify()
        return contact

    def delete(self, id: int) -> bool:
        with self._lock:
            self._notice_external_change()
            id = int(id)
            if id not in self._by_id:
                return False
            with self._transaction():
                self._db.execute("DELETE FROM contacts WHERE id = ?", (id,))
            del self._by_id[id]
            del self._search_keys[id]
            self._changed()
        self._notify()
        return True

    def import_csv(self, text: str, replace: bool = False) -> int:
        """Add every row of `text` (CSV, header row) in one transaction, or none of them.

        With `replace`, the imported rows replace the whole address book. Raises
        ImportRejected (nothing changed) listing the problems by row and field.
        """
        rows = build_off_loop(parse_csv, text)  # validated outside the lock: readers go on meanwhile
        with self._lock:
            self._notice_external_change()
            kept = 0 if replace else len(self._by_id)
            if kept + len(rows) > MAX_CONTACTS:
                message = f"the address book would hold {kept + len(rows)} contacts; the limit is {MAX_CONTACTS}"
                raise ImportRejected([{"row": 0, "field": "", "message": message}])
            build_off_loop(self._insert, rows, replace)
            self._changed()
        self._notify()
        return len(rows)

    def _insert(self, rows: list[dict], replace: bool) -> None:
        """The rows into SQLite in one transaction, then into the copy (the caller holds the lock;
        100,000 rows take about a second, off the event loop)."""
        last_id = max(self._by_id, default=0)
        with self._transaction():
            if replace:
                self._db.execute("DELETE FROM contacts")
            self._db.executemany(_INSERT, ([row[f] for f in FIELDS] for row in rows))
        if replace:
            self._reload()
        else:
            for contact in self._select("WHERE id > ?", (last_id,)):
                self._remember(contact)

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback()` after each committed change (from the thread that made it)."""
        with self._lock:
            self._subscribers.append(callback)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- inside ------------------------------------------------------------------

    def _transaction(self):
        return _Transaction(self._db)

    def _select(self, where: str = "", params: tuple = ()) -> list[Contact]:
        rows = self._db.execute(f"SELECT id, {_COLUMNS} FROM contacts {where} ORDER BY id", params).fetchall()
        return [Contact(*row) for row in rows]

    def _remember(self, contact: Contact) -> None:
        self._by_id[contact.id] = contact  # ids only grow (AUTOINCREMENT), so the dict stays in id order
        names = "\x00".join(fold(getattr(contact, f)) for f in NAME_FIELDS)
        numbers = "\x00".join(number_key(getattr(contact, f)) for f in NUMBER_FIELDS)
        self._search_keys[contact.id] = (names, numbers)

    def _reload(self) -> None:
        """Read every contact again (the caller holds the lock; 100,000 take most of a second)."""
        self._by_id = {}
        self._search_keys = {}
        for contact in self._select():
            self._remember(contact)
        self._data_version = self._db.execute("PRAGMA data_version").fetchone()[0]

    def _notice_external_change(self) -> None:
        """Reload when another connection (another process) committed since we last looked."""
        data_version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if data_version != self._data_version:
            build_off_loop(self._reload)
            self._version += 1  # subscribers hear of in-process changes only

    def _changed(self) -> None:
        self._version += 1

    def _notify(self) -> None:
        for callback in list(self._subscribers):
            try:
                callback()
            except Exception:  # one subscriber's bug must not undo or hide the change
                log.exception("address book subscriber failed")


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
