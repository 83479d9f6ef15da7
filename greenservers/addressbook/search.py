"""The admin search's index: every contact's folded names and numbers in a table of the book's own SQLite file.

`contact_search` holds, per contact, its four name fields folded (`fold_name`)
and its four numbers folded (`fold_number`), each set joined by a newline
(no folded name, and no query, holds one: a match never spans two fields).
A search is then one pass of SQLite's `instr` over that table, in C, instead
of a Python scan that read and folded every contact (100,000 contacts: 1.9 s).
Its matches are exactly `matcher`'s (model.py): a name field contains the
folded query, or a number contains the query's folded number.

The table follows the change log the LDAP server follows (store.py), so it is
right whoever wrote the book (this process, the CLI, a sqlite3 shell): before
a search, the changes logged since the last one it applied are folded again;
a table that is new, or behind a pruned log, is built anew a page at a time.
Each page is its own short write transaction (SQLite serializes them across
threads and processes), so writers of the book wait at most one page.

Everything here runs off the event loop (`AddressBook.find` calls `find`
with run_off_loop), on a connection of its own opened per search.
"""

from __future__ import annotations

from pathlib import Path

from .model import FIELDS, NAME_FIELDS, NUMBER_FIELDS, Contact, fold_name, fold_number, looks_like_number
from .store import ChangeReader, _Transaction, make_schema

STEP = 500  # contacts folded per write transaction (about 5 ms of work): what a writer of the book waits at most

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS contact_search (id INTEGER PRIMARY KEY, names TEXT NOT NULL, numbers TEXT NOT NULL)",
    # one row: the last change of the log folded into the table; built_to, while it is built anew, the last id folded
    "CREATE TABLE IF NOT EXISTS contact_search_state (one INTEGER PRIMARY KEY CHECK (one = 0), seq INTEGER NOT NULL, built_to INTEGER)",
]
_PAGE = f"SELECT c.id, {', '.join(f'c.{name}' for name in FIELDS)} FROM contacts c JOIN contact_search s ON s.id = c.id"
_MATCH = "instr(s.names, :text) > 0 OR (:number != '' AND instr(s.numbers, :number) > 0)"


def search_row(contact: Contact) -> tuple[int, str, str]:
    """A contact's row of the index: (id, folded names, folded numbers)."""
    return (contact.id,
            "\n".join(fold_name(getattr(contact, field)) for field in NAME_FIELDS),
            "\n".join(fold_number(getattr(contact, field)) for field in NUMBER_FIELDS))


class SearchIndex(ChangeReader):
    """The admin search over one book's file: `find` brings the index up to date, then searches it."""

    def __init__(self, path: Path):
        super().__init__(path)
        make_schema(self._db, _SCHEMA)

    def find(self, q: str, offset: int, limit: int | None) -> tuple[list[Contact], int]:
        """(the contacts `offset` to `offset + limit` that match `q`, in id order; how many match in all).
        `q` is not empty; it is matched as the book was when the search began."""
        self.catch_up()
        params = {"text": fold_name(q), "number": fold_number(q) if looks_like_number(q) else "",
                  "limit": -1 if limit is None else limit, "offset": offset}
        db = self._db
        db.execute("BEGIN")  # one read transaction: the page and the count see the same book
        try:
            rows = db.execute(f"{_PAGE} WHERE {_MATCH} ORDER BY s.id LIMIT :limit OFFSET :offset", params).fetchall()
            if offset == 0 and (limit is None or len(rows) < limit):
                total = len(rows)  # the page holds every match: no second pass to count them
            else:
                total = db.execute(f"SELECT count(*) FROM contact_search s WHERE {_MATCH}", params).fetchone()[0]
        finally:
            db.execute("COMMIT")
        return [Contact(*row) for row in rows], total

    def catch_up(self) -> None:
        """Fold what changed since the last search (or build the index anew), STEP contacts per transaction."""
        while self._step():
            pass

    def _step(self) -> bool:
        """One transaction of catching up; False when the index is up to date."""
        db = self._db
        with _Transaction(db):
            state = db.execute("SELECT seq, built_to FROM contact_search_state").fetchone()
            if state is None:
                self._start_building()
                return True
            seq, built_to = state
            if built_to is not None:
                contacts = self.after(built_to, STEP)
                self._store(contacts)
                db.execute("UPDATE contact_search_state SET built_to = ?", (contacts[-1].id if contacts else None,))
                return True
            changes = self.changes_after(seq, STEP)
            if changes is None:  # the log no longer reaches back to the last change folded
                self._start_building()
                return True
            logged, last = changes
            ids = list(dict.fromkeys(logged))  # a contact changed twice: folded once
            if not ids:
                return False
            db.executemany("DELETE FROM contact_search WHERE id = ?", [(id_,) for id_ in ids])
            self._store(self.contacts(ids))  # a changed id missing from the book was deleted
            db.execute("UPDATE contact_search_state SET seq = ?", (last,))
            return True

    def _start_building(self) -> None:
        """Empty the index; the log's changes from now on are folded once it is built."""
        db = self._db
        db.execute("DELETE FROM contact_search")
        db.execute("INSERT OR REPLACE INTO contact_search_state (one, seq, built_to) VALUES (0, ?, 0)", (self.last_change(),))

    def _store(self, contacts: list[Contact]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO contact_search (id, names, numbers) VALUES (?, ?, ?)", map(search_row, contacts))
