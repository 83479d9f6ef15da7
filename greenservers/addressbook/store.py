"""The address book's store: contacts in SQLite in data_dir, and the change log LDAP follows.

One `AddressBook` per process and data_dir (`addressbook_for(runtime)`)
opens one SQLite connection (WAL, busy timeout) per thread that uses it: the
event loop's and the pool's threads (run_off_loop) each read their own, WAL
lets readers go on beside a writer, and SQLite's BEGIN IMMEDIATE puts writers
one after the other. (One connection behind a lock shared by the loop and
the pool's threads left requests without an answer for good: in the worker
the lock was gevent's, which native threads cannot wait on safely.) It keeps no
copy of the contacts: `get`, `page` and the export read SQLite a page at a time,
`find` (the admin search, off the event loop) its search index (search.py), so a book of 100,000
contacts costs the worker no memory of its own.

Every write commits in one transaction, off the event loop (a single change's
validation, reads and commit held it for milliseconds); triggers on the contacts table
record each added, changed or deleted contact's id in `contact_changes`,
whoever wrote it (this process, the CLI, an administrator's sqlite3 shell).
`ChangeReader` (a connection of its own) is how the LDAP server follows the
book: it notices a commit by `PRAGMA data_version` and reads the log after
the last change it applied; the subscribers of this process's book are
called after each of its commits, so the LDAP server applies it at once. The
log keeps the last LOG_KEEP changes; a reader further behind reads the whole
book again. An import runs off the event loop on a connection of its own:
readers go on meanwhile, and writers wait only for its commit (`import_rows`).
A writer kept out past BUSY_TIMEOUT gets BookBusy.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

from ..config.private import ensure_private_file, make_private_dir
from ..process.offload import NativeLock, ThreadLocal, run_in_child, run_off_loop, run_when_idle
from .csv import csv_body, csv_rows, csv_text, to_csv
from .model import FIELDS, MAX_CONTACTS, MAX_SEARCH_LENGTH, BookBusy, Contact, ContactError, ContactNotFound, ImportRejected, validate

log = logging.getLogger("greenservers.addressbook")

PAGE = 1000  # contacts read from SQLite at a time (an export, the admin search, the LDAP index's build)
CHECKPOINT_WRITES = 100  # this process's writes between two WAL checkpoints (a change writes about 8 pages; SQLite's own is 1,000 pages)
BUSY_TIMEOUT = 10.0  # seconds a writer waits for another's commit before it gives up (BookBusy)
LOG_KEEP = 250_000  # changes the log keeps: an import of MAX_CONTACTS logs an add each (a replacing one a delete
# each too: a reader that far behind reads the book anew, as it would once most of it changed)
CACHE_KIB = 512  # SQLite's page cache of each connection (a thread's; its default 2 MiB, times the pool's threads)
STAGE_STEP = 1000  # records an import validates between two looks at its patience for idle cores (run_when_idle)

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
_STAGE = f"INSERT INTO staged.contacts VALUES ({', '.join('?' * len(FIELDS))})"
_LAST_CHANGE = "SELECT seq FROM sqlite_sequence WHERE name = 'contact_changes'"


def _connect(path: Path, checkpoints: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode (writes open their own BEGIN IMMEDIATE transaction); unless
    `checkpoints`, a commit on it never checkpoints the WAL (its owner does, off the event loop)."""
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against a process crash
    if not checkpoints:
        db.execute("PRAGMA wal_autocheckpoint=0")
    return db


class AddressBook:
    """The contacts of one data_dir; safe to share between greenlets and threads."""

    def __init__(self, path: Path):
        self.path = Path(path)
        make_private_dir(self.path.parent)
        ensure_private_file(self.path)  # SQLite makes -wal and -shm with the database file's mode and owner
        self._per_thread = ThreadLocal()
        self._connections: list[sqlite3.Connection] = []  # every thread's, for close()
        self._connections_lock = NativeLock()
        make_schema(self._db, _SCHEMA)  # the LDAP server opens the book on the event loop
        self._subscribers: list[Callable[[], None]] = []
        self._writes = 0  # since the last checkpoint

    # -- reading ---------------------------------------------------------------

    @property
    def version(self) -> int:
        """The last change's number in the log: it grows with every change, whichever process made it."""
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
        every contact when `q` is empty. Searched in the book's search index (search.py), off the event loop."""
        # off the loop: a page of 1,000 held it 7.6 ms (all 100,000: most of a second); count(*) reads every row
        return run_off_loop(self.find_here, q, offset, limit)

    def find_here(self, q: str, offset: int = 0, limit: int | None = 100) -> tuple[list[Contact], int]:
        """`find`, in this thread (one of the pool's, in the worker)."""
        q = (q or "").strip()[:MAX_SEARCH_LENGTH]
        if not q:
            return self.page(offset, limit), len(self)
        from .search import SearchIndex  # search.py builds on this module

        index = SearchIndex(self.path)
        try:
            return index.find(q, offset, limit)
        finally:
            index.close()

    def export_csv(self) -> str:
        return "".join(self.export_chunks())

    def export_chunks(self) -> Iterator[str]:
        """The CSV export, a page of contacts per chunk (each read and encoded off the event loop: a page read on it held it 7 ms)."""
        yield to_csv(())
        after = 0
        while page := run_off_loop(self.after, after, PAGE):
            yield run_off_loop(csv_body, page)
            after = page[-1].id

    def _read(self, sql: str, params: tuple) -> list[Contact]:
        return [Contact(*row) for row in self._db.execute(sql, params).fetchall()]

    # -- writing ---------------------------------------------------------------

    def add(self, fields: dict) -> Contact:
        contact = run_off_loop(self._add, fields)
        self._notify()
        return contact

    def change(self, id: int, fields: dict) -> Contact:
        """Change the given fields of contact `id` (others keep their values)."""
        contact = run_off_loop(self._change, id, fields)
        self._notify()
        return contact

    def delete(self, id: int) -> bool:
        deleted = run_off_loop(self._delete, id)
        if deleted:
            self._notify()
        return deleted

    # A single change's validation and transaction (with the reads, the trigger, the log's pruning and, at
    # a checkpoint, its fsync) run off the event loop: on the loop a change held it for milliseconds.

    def _add(self, fields: dict) -> Contact:
        values = validate(fields)
        with self._transaction() as db:
            if db.execute("SELECT count(*) FROM contacts").fetchone()[0] >= MAX_CONTACTS:
                raise ContactError({"contact": f"the address book is full ({MAX_CONTACTS} contacts)"})
            cursor = db.execute(_INSERT, [values[f] for f in FIELDS])
            _prune_log(db)
        return Contact(cursor.lastrowid, **values)

    def _change(self, id: int, fields: dict) -> Contact:
        with self._transaction() as db:
            current = self.get(id)  # on this thread's connection: in the transaction
            if current is None:
                raise ContactNotFound(id)
            values = validate(fields, base=current.fields())
            db.execute(_UPDATE, [values[f] for f in FIELDS] + [current.id])
            _prune_log(db)
        return Contact(current.id, **values)

    def _delete(self, id: int) -> bool:
        with self._transaction() as db:
            deleted = db.execute("DELETE FROM contacts WHERE id = ?", (int(id),)).rowcount
            _prune_log(db)
        return bool(deleted)

    def import_csv(self, text: str | bytes, replace: bool = False) -> int:
        """Add every row of `text` (CSV, header row; bytes: UTF-8, decoded in the child) in one transaction, or none
        of them.

        With `replace`, the imported rows replace the whole address book. Raises
        ImportRejected (nothing changed) listing the problems by row and field,
        BookBusy if another writer held the book past BUSY_TIMEOUT (nothing
        changed), or ChildFailed if the child ended without an answer. Runs in a
        child process in the worker (seconds of CPU: see process/offload.py and
        `import_rows`): readers go on meanwhile, other writers wait only for its
        short commit.
        """
        count = run_in_child(import_rows, self.path, text, replace)
        self._notify()
        return count

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback()` after each change this process commits (in the thread that asked for it: the loop's, in the worker)."""
        self._subscribers.append(callback)

    def reader(self) -> ChangeReader:
        """A connection of its own to follow the book's changes (for one greenlet or thread)."""
        return ChangeReader(self.path)

    def close(self) -> None:
        """Close every thread's connection (a thread that reads the book afterwards opens one again)."""
        with self._connections_lock:
            connections, self._connections = self._connections, []
            self._per_thread = ThreadLocal()
        for db in connections:
            db.close()

    # -- inside ------------------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        """This thread's connection, opened at its first use."""
        db = getattr(self._per_thread, "db", None)
        if db is None:
            db = _connect(self.path, checkpoints=False)  # the WAL is checkpointed by `_checkpoint`
            db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            with self._connections_lock:
                self._connections.append(db)
                self._per_thread.db = db
        return db

    def _transaction(self):
        return _Transaction(self._db)

    def _notify(self) -> None:
        """A write committed: the subscribers are told, then the WAL is checkpointed if it is due."""
        for callback in list(self._subscribers):
            try:
                callback()
            except Exception:  # one subscriber's bug must not undo or hide the change
                log.exception("address book subscriber failed")
        self._writes += 1
        if self._writes >= CHECKPOINT_WRITES:
            self._writes = 0
            run_off_loop(self._checkpoint)

    def _checkpoint(self) -> None:
        """Copy the WAL's pages into the database file, on a connection of its own (readers and writers go on)."""
        db = _connect(self.path)
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()


def import_rows(path: Path, text: str | bytes, replace: bool) -> int:
    """AddressBook.import_csv's work, on a connection of its own (in the worker's child process): the count imported.

    The rows are parsed and validated into a table in memory first, holding no lock on the book, at idle
    priority (`run_when_idle`: 50,000 rows take about a second of CPU); then one short transaction stores
    them (50,000: about 0.1 s), so other writers (a change on the page, the admin search's index) wait for
    that, not for the whole import.
    """
    if isinstance(text, bytes):  # decoded here: 24 MB took 15 ms holding the GIL, and pickling the text 15 more
        text = csv_text(text)
    db = _connect(path)
    try:
        db.execute("ATTACH ':memory:' AS staged")
        run_when_idle(_stage_steps(db, text))  # IDLE_PATIENCE at most
        count = db.execute("SELECT count(*) FROM staged.contacts").fetchone()[0]
        with _Transaction(db):
            kept = 0 if replace else db.execute("SELECT count(*) FROM contacts").fetchone()[0]
            if kept + count > MAX_CONTACTS:
                message = f"the address book would hold {kept + count} contacts; the limit is {MAX_CONTACTS}"
                raise ImportRejected([{"row": 0, "field": "", "message": message}])
            if replace:
                db.execute("DELETE FROM contacts")
            db.execute(f"INSERT INTO main.contacts ({_COLUMNS}) SELECT {_COLUMNS} FROM staged.contacts ORDER BY rowid")
            _prune_log(db)
    finally:
        db.close()
    return count


def _stage_steps(db: sqlite3.Connection, text: str) -> Iterator[None]:
    """Steps that put the rows of `text`, validated, into the table staged.contacts (a database in memory: the
    book is not locked), STAGE_STEP records of the file a step. Raises ImportRejected as csv_rows does."""
    db.execute(f"CREATE TABLE staged.contacts ({_COLUMNS})")
    db.execute("BEGIN")  # one transaction: a commit per row would cost more than the validation
    try:
        records = csv_rows(text)
        while batch := list(islice(records, STAGE_STEP)):
            db.executemany(_STAGE, [[row[f] for f in FIELDS] for row in batch if row is not None])
            yield
        db.execute("COMMIT")
    finally:
        if db.in_transaction:  # refused, or the steps were closed before their end; not if SQLite rolled back itself
            db.execute("ROLLBACK")


def make_schema(db: sqlite3.Connection, statements: list[str]) -> None:
    """Run `statements` (each CREATE TABLE|TRIGGER IF NOT EXISTS <name> ...) in one transaction, unless every
    name is in the file already: then no write lock is taken (another writer's transaction is not waited for)."""
    names = [statement.split()[5] for statement in statements]
    made = db.execute(f"SELECT count(*) FROM sqlite_master WHERE name IN ({', '.join('?' * len(names))})", names).fetchone()[0]
    if made < len(names):
        with _Transaction(db):
            for statement in statements:
                db.execute(statement)


def _prune_log(db: sqlite3.Connection) -> None:
    db.execute("DELETE FROM contact_changes WHERE seq <= ?", (_last_change(db) - LOG_KEEP,))


def _last_change(db: sqlite3.Connection) -> int:
    row = db.execute(_LAST_CHANGE).fetchone()
    return row[0] if row else 0


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

    def changes_after(self, seq: int, limit: int, through: int | None = None) -> tuple[list[int], int] | None:
        """(the ids of the contacts changed after change `seq`, one per change in their order: an id twice is a
        contact changed again, the last change read), at most `limit` changes, none after change `through` if
        given; None if the log no longer reaches back to `seq` (pruned: the reader must read the whole book)."""
        if through is None:
            rows = self._db.execute("SELECT seq, contact_id FROM contact_changes WHERE seq > ? ORDER BY seq LIMIT ?",
                                    (seq, limit)).fetchall()
        else:
            rows = self._db.execute("SELECT seq, contact_id FROM contact_changes WHERE seq > ? AND seq <= ? "
                                    "ORDER BY seq LIMIT ?", (seq, through, limit)).fetchall()
        if not rows:
            if through is not None and seq < through and self._pruned_after(seq):  # the log has no holes
                return None
            return [], seq
        if rows[0][0] > seq + 1 and self._pruned_after(seq):
            return None  # pruned (a rollback leaves no hole: it gives its numbers back)
        return [contact_id for _, contact_id in rows], rows[-1][0]

    def _pruned_after(self, seq: int) -> bool:
        first = self._db.execute("SELECT min(seq) FROM contact_changes").fetchone()[0]
        return first is None or first > seq + 1

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
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception; BookBusy if another writer holds the book
    past BUSY_TIMEOUT (SQLite's own error says only "database is locked")."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:  # and its extended codes (BUSY_RECOVERY...)
                raise BookBusy(BUSY_TIMEOUT) from None
            raise
        return self.db

    def __exit__(self, kind, value, traceback):
        if kind is None:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:  # not if SQLite rolled back itself (a full disk): its error is the one raised
            self.db.execute("ROLLBACK")
        return False


_books: dict[Path, AddressBook] = {}
_books_lock = threading.Lock()
_resolved: tuple[object, Path] | None = None  # (settings, its book's path): resolving data_dir reads the file system


def addressbook_for(runtime) -> AddressBook:
    """The process's AddressBook for the runtime's current data_dir, made on first use."""
    global _resolved
    settings = runtime.settings
    if _resolved is None or _resolved[0] is not settings:
        _resolved = settings, settings.data_path / "addressbook.sqlite3"
    path = _resolved[1]
    with _books_lock:
        book = _books.get(path)
        if book is None:
            book = _books[path] = AddressBook(path)
        return book
