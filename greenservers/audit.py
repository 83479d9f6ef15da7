"""The audit log: every settings change (and every certificate ACME issues), appended to data_dir/audit.log.

One JSON object per line: when (UTC, ISO 8601), who, from which address,
through which way (web form, API), and for each changed setting the old and
the new value. Secret settings are masked before anything is written, so
the file (and the page that shows it) never holds a password or community.

The file is only ever appended to (O_APPEND, one write per entry, mode
0600, which its rotations keep); reading takes the tail only, so a long
history costs nothing to show.
Its size is bounded: past ROTATE_BYTES it becomes audit.log.1 (the older
ones move to .2 ... .KEEP_ROTATED, the oldest is dropped), as logrotate would.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config.private import make_private_dir, open_private
from .config.settings import BY_NAME

AUDIT_FILE = "audit.log"
TAIL_BYTES = 256 * 1024  # how much of the file's end is read to show recent entries
MAX_VALUE_CHARS = 500  # a value longer than this is shortened in the entry
ROTATE_BYTES = 4 * 1024 * 1024  # tens of thousands of changes per file
KEEP_ROTATED = 3

log = logging.getLogger("greenservers.audit")


def mask(name: str, value: Any) -> Any:
    """The value as it may be written down: secrets become "(set)" / "(not set)"."""
    setting = BY_NAME.get(name)
    if setting is not None and setting.secret:
        return "(set)" if value else "(not set)"
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        return value[:MAX_VALUE_CHARS] + "..."
    return value


def masked_changes(old: dict[str, Any], new: dict[str, Any], names: Iterable[str]) -> list[dict[str, Any]]:
    """[{setting, old, new}] for `names`, secrets masked (a changed secret reads "(changed)")."""
    changes = []
    for name in names:
        before, after = mask(name, old.get(name)), mask(name, new.get(name))
        setting = BY_NAME.get(name)
        if setting is not None and setting.secret and after == "(set)":
            after = "(changed)"
        changes.append({"setting": name, "old": before, "new": after})
    return changes


def describe(changes: list[dict[str, Any]]) -> str:
    """One line for the application log: "a: 1 -> 2, b: (set) -> (changed)"."""
    return ", ".join(f"{c['setting']}: {_short(c['old'])} -> {_short(c['new'])}" for c in changes)


MASKS = frozenset({"(set)", "(not set)", "(changed)"})


def _short(value: Any) -> str:
    if isinstance(value, str) and value in MASKS:
        return value
    return repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@dataclass
class AuditEntry:
    time: str
    who: str
    address: str
    via: str
    changes: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""


class AuditLog:
    """Append-only audit file; `recent()` gives the newest entries first."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    @classmethod
    def for_settings(cls, settings) -> AuditLog:
        return cls(settings.data_path / AUDIT_FILE)

    def record(self, who: str, address: str, via: str, changes: list[dict[str, Any]], note: str = "") -> AuditEntry:
        """Append one entry (changes already masked by `masked_changes`) and log it."""
        entry = AuditEntry(
            time=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            who=who, address=address or "-", via=via, changes=changes, note=note,
        )
        line = json.dumps(entry.__dict__, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            make_private_dir(self.path.parent)
            self._rotate_if_full()
            fd = open_private(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, line.encode("utf-8"))
            finally:
                os.close(fd)
        suffix = f" ({note})" if note else ""
        if changes:
            log.info("settings changed by %s from %s via %s: %s%s", who, entry.address, via, describe(changes), suffix)
        else:  # an event the service recorded by itself (a certificate issued by ACME)
            log.info("audit: %s (by %s via %s)", note or "-", who, via)
        return entry

    def _rotate_if_full(self) -> None:
        try:
            if self.path.stat().st_size < ROTATE_BYTES:
                return
        except FileNotFoundError:
            return
        for number in range(KEEP_ROTATED - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{number}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{number + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        log.info("audit log rotated: %s.1 holds the previous %d bytes", self.path.name, ROTATE_BYTES)

    def recent(self, limit: int = 50) -> list[AuditEntry]:
        """The newest `limit` entries, newest first (unreadable lines are skipped)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - TAIL_BYTES))
                tail = f.read()
        except FileNotFoundError:
            return []
        lines = tail.splitlines()
        if len(tail) == TAIL_BYTES and size > TAIL_BYTES:
            lines = lines[1:]  # the first line is probably cut
        entries = []
        for raw in reversed(lines):
            try:
                data = json.loads(raw)
                entries.append(AuditEntry(**{k: data.get(k, "") for k in AuditEntry.__dataclass_fields__}))
            except (ValueError, TypeError):
                continue
            if len(entries) >= limit:
                break
        return entries
