"""Where the record of phones is kept: data_dir/phones.sqlite3, one row per phone, written a changed phone at a time.

greenservers.provisioning.phones.seen keeps the record in memory and hands
this store the phones that changed since its last save (a row, or None for
one forgotten); `write` upserts and deletes just those rows in one
transaction, in a thread of the hub's pool. Nothing is ever written whole, so a save costs what changed, not
what is kept. The file is private like the address book (0600, created
before SQLite opens it, so its -wal and -shm files get the same mode), in WAL
mode with synchronous=NORMAL: a commit survives the process's end, and the
disk is flushed at checkpoints, not at every save.

A file SQLite cannot read is set aside (phones.sqlite3.broken-<time>) and
the record starts empty. The record of an older version, data_dir/phones.json,
is read once (`legacy_phones`) and removed (`retire_legacy`) once its phones,
under today's bounds, are in the new file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from ...config.private import ensure_private_file, make_private_dir

log = logging.getLogger("greenservers.phones")

FILE_NAME = "phones.sqlite3"
LEGACY_FILE_NAME = "phones.json"
COLUMNS = ("key", "id", "mac", "vendor", "model", "address", "user_agent", "first_seen", "last_seen", "verified_by", "files")
_SCHEMA = """CREATE TABLE IF NOT EXISTS phones (
    key TEXT PRIMARY KEY, id TEXT NOT NULL, mac TEXT NOT NULL, vendor TEXT NOT NULL, model TEXT NOT NULL,
    address TEXT NOT NULL, user_agent TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    verified_by TEXT NOT NULL, files TEXT NOT NULL)"""
_UPSERT = (f"INSERT INTO phones ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
           f"ON CONFLICT(key) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in COLUMNS[1:])}")


class PhoneStore:
    """The SQLite file of one data_dir. Used by one thread at a time (the record sees to it)."""

    def __init__(self, path: Path, now: float):
        self.path = Path(path)
        make_private_dir(self.path.parent)
        db = None
        try:
            db = self._open()
            db.execute("SELECT count(*) FROM phones").fetchone()
            self._db = db
        except sqlite3.DatabaseError as exc:
            if db is not None:
                db.close()
            aside = self.path.with_name(f"{self.path.name}.broken-{int(now)}")
            log.warning("%s is not a record of phones (%s); kept as %s, starting with none", self.path, exc, aside.name)
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(OSError):
                    self.path.with_name(self.path.name + suffix).unlink()
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        ensure_private_file(self.path)
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(_SCHEMA)
        return db

    def rows(self) -> Iterator[dict]:
        """Every phone kept, least recently seen first (`files` decoded)."""
        for row in self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM phones ORDER BY last_seen"):
            phone = dict(zip(COLUMNS, row, strict=True))
            phone["files"] = json.loads(phone["files"])
            yield phone

    def write(self, changed: dict[str, tuple | None]) -> None:
        """Upsert the phones given (tuples in COLUMNS' order, `files` a list of lists), delete the keys given None."""
        upserts = [(*phone[:-1], json.dumps(phone[-1], separators=(",", ":"))) for phone in changed.values() if phone is not None]
        deletes = [(key,) for key, phone in changed.items() if phone is None]
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(_UPSERT, upserts)
            self._db.executemany("DELETE FROM phones WHERE key = ?", deletes)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


def legacy_phones(path: Path, now: float) -> Iterable[dict]:
    """The phones of an older version's phones.json beside `path` (least recently seen first, as it wrote them);
    a file that is not such a record is set aside (phones.json.broken-<time>) and yields none."""
    legacy = path.with_name(LEGACY_FILE_NAME)
    try:
        raw = legacy.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("%s not read (%s); its phones are not carried over", legacy, exc)
        return []
    try:
        phones = json.loads(raw)["phones"]
        if not isinstance(phones, list):
            raise TypeError("'phones' is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        aside = legacy.with_name(f"{legacy.name}.broken-{int(now)}")
        log.warning("%s is not a record of phones (%s); kept as %s", legacy, exc, aside.name)
        with contextlib.suppress(OSError):
            legacy.rename(aside)
        return []
    return phones


def retire_legacy(path: Path) -> None:
    """Remove the older version's phones.json beside `path`: its phones are in the new file now."""
    with contextlib.suppress(FileNotFoundError):
        path.with_name(LEGACY_FILE_NAME).unlink()
