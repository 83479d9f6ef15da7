"""The global configuration file: TOML read and written with tomlkit.

An administrator's comments and layout survive every rewrite, because only
the changed values are replaced in the parsed document. Writes are atomic:
a temporary file in the same folder is written, fsynced and renamed over the
old one, so a crash at any point leaves either the old or the new file.
The file holds secrets, so it is written with mode 0600, and it keeps
its owner and group (a command run as root beside the service). A temporary file
is named after the process writing it, so one left by a crashed process is
recognised and removed (`remove_orphans`) when the file is next opened.
Every read-change-write holds an advisory lock (flock on the file's folder),
so a command such as `passwd` and a save on the web page made at the same
moment both land: neither rewrites the file from a stale reading.
A file that cannot be read or parsed is reported by line and column, never
with the character at fault (it may be one of a secret's).

A running server notices when another process changes the file (`ChangeWatch`,
polled by the worker): the store remembers the signature (device, inode,
size, mtime) of the content it last read or wrote, and a file whose signature
differs, and stayed the same for one poll, is read again. A missing file is
never taken for "all defaults" then.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions

from .private import keep_owner, make_private_dir, open_private, replacement_owner
from .settings import DECLARATIONS, GENERATED, GROUPS, Settings, SettingsError, generate_secret

CONFIG_ENV = "GREENSERVERS_CONFIG"
DEFAULT_FILE = "greenservers.toml"
LOCK_WAIT_SECONDS = 10  # a writer holds the lock for milliseconds; longer means a process is stuck


class ConfigFileError(ValueError):
    """The file cannot be read or is not valid TOML; the message says where."""


# tomlkit's messages for these quote the character at fault; the others hold no value
_CHARACTER_ERRORS = {
    tomlkit.exceptions.InvalidCharInStringError: "invalid character in a string",
    tomlkit.exceptions.UnexpectedCharError: "unexpected character",
    tomlkit.exceptions.InvalidControlChar: "a control character in a string (write it as \\uXXXX)",
}


def _parse_problem(exc: tomlkit.exceptions.ParseError) -> str:
    what = _CHARACTER_ERRORS.get(type(exc))
    return f"{what} at line {exc.line} col {exc.col}" if what else str(exc)


MISSING = ("missing",)  # the signature of a file that is not there


def signature(info: os.stat_result) -> tuple[int, int, int, int]:
    """What changes when a file is replaced (inode) or written in place (size, mtime)."""
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def default_config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_FILE).absolute()


def atomic_write(path: Path, data: bytes) -> os.stat_result:
    """Replace `path` with `data` so that readers see the old or the new file only; the new file's stat.

    The new file is private (0600) and keeps the owner and group of the one it replaces
    (greenservers.config.private: a non-root process refuses to replace another user's file).
    """
    path = Path(path)
    replaced = replacement_owner(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = open_private(tmp, os.O_WRONLY, exclusive=True)
    try:
        with os.fdopen(fd, "wb") as out:
            keep_owner(out.fileno(), replaced)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
            written = os.fstat(out.fileno())  # before the rename: what a stat of `path` then finds (ctime aside)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return written


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def remove_orphans(folder: Path, pattern: re.Pattern) -> list[str]:
    """Remove the files of `folder` whose names match `pattern` and whose writer (group "pid") is gone.

    Files of live processes are left alone, so this is safe while other writers
    (a CLI command beside the service) work in the same folder. Returns the names removed.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and entry.is_file(follow_symlinks=False) and process_gone(int(match["pid"])):
            try:
                os.unlink(entry.path)
                removed.append(entry.name)
            except FileNotFoundError:
                pass
    return removed


class ConfigStore:
    """Reads and atomically rewrites one configuration file."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path).absolute() if path else default_config_path()
        self.seen: tuple | None = None  # signature of the content last read or written here; None: unknown
        remove_orphans(self.path.parent, re.compile(re.escape(f".{self.path.name}.") + r"(?P<pid>\d+)\.\d+\.tmp"))

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One writer at a time, of any process or thread: each locks the file's folder on a descriptor of
        its own, and flock excludes every other open description (it may wait: call it off the event loop)."""
        make_private_dir(self.path.parent)
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            deadline = time.monotonic() + LOCK_WAIT_SECONDS
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the close
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ConfigFileError(f"{self.path}: another process has been writing it for "
                                              f"{LOCK_WAIT_SECONDS} s (its folder is locked); nothing was changed") from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)

    def signature_now(self) -> tuple | None:
        """The file's signature now (MISSING when absent, None when it cannot be looked at)."""
        try:
            return signature(os.stat(self.path))
        except FileNotFoundError:
            return MISSING
        except OSError:
            return None

    def read_document(self) -> tomlkit.TOMLDocument:
        try:
            with open(self.path, "rb") as file:
                before = signature(os.fstat(file.fileno()))
                data = file.read()
                after = signature(os.fstat(file.fileno()))
            self.seen = after if before == after else None  # written to while read: read it again
            text = data.decode("utf-8")
        except FileNotFoundError:
            self.seen = MISSING
            return tomlkit.document()
        except UnicodeDecodeError as exc:
            line = exc.object[:exc.start].count(b"\n") + 1
            raise ConfigFileError(f"{self.path}: not UTF-8 text (line {line})") from None
        except OSError as exc:
            raise ConfigFileError(f"{self.path}: cannot read: {exc}") from None
        try:
            return tomlkit.parse(text)
        except tomlkit.exceptions.ParseError as exc:
            raise ConfigFileError(f"{self.path}: not valid TOML: {_parse_problem(exc)}") from None

    def load(self) -> Settings:
        """The effective settings of the file (defaults for what it lacks)."""
        return self._settings_of(self.read_document())

    def _settings_of(self, document: tomlkit.TOMLDocument) -> Settings:
        raw = {key: _plain(value) for key, value in document.items()}
        nested = [key for key, value in raw.items() if isinstance(value, dict)]
        if nested:
            raise SettingsError({key: "tables are not used; write settings at the top level" for key in nested})
        return Settings.from_raw(raw, self.base_dir)

    def update(self, changes: dict[str, Any]) -> Settings:
        """Validate `changes` against the file's current content and write them, all or nothing."""
        with self._writing():
            document = self.read_document()
            current = self._settings_of(document)
            new = current.with_changes(changes)
            for name, value in changes.items():
                if name in document:
                    document[name] = value
                else:
                    document.add(name, value)
            self.seen = signature(atomic_write(self.path, tomlkit.dumps(document).encode("utf-8")))
            return new

    def ensure_generated(self) -> Settings:
        """Give generated secrets (ldap_password) a value once and keep it in the file."""
        settings = self.load()
        missing = {s.name: generate_secret() for s in DECLARATIONS if settings.raw.get(s.name) is GENERATED}
        return self.update(missing) if missing else settings

    def create(self, overrides: dict[str, Any] | None = None) -> Settings:
        """Write a new file holding every setting, each with its description as a comment."""
        overrides = dict(overrides or {})
        document = tomlkit.document()
        document.add(tomlkit.comment("greenservers configuration. Every setting is listed with its default."))
        document.add(tomlkit.comment("Check it with: python -m greenservers check-config"))
        for group, title in GROUPS.items():
            document.add(tomlkit.nl())
            document.add(tomlkit.comment(f"--- {title} ---"))
            for setting in DECLARATIONS:
                if setting.group != group:
                    continue
                value = overrides.get(setting.name, setting.default)
                if value is GENERATED:
                    value = generate_secret()
                document.add(tomlkit.comment(setting.description))
                document.add(setting.name, value)
        settings = self._settings_of(document)
        with self._writing():
            self.seen = signature(atomic_write(self.path, tomlkit.dumps(document).encode("utf-8")))
        return settings


class ChangeWatch:
    """When to read the configuration file again because another process changed it.

    `poll()` is called every POLL_SECONDS and answers CHANGED when the file's signature
    differs from what the store last read or wrote and has stayed the same since the
    previous poll: an atomic rename (every greenservers command) is complete at once, and
    waiting one poll keeps a hand edit written in place from being read mid-write. It
    answers GONE once when the file disappears (the running settings stay). A file read
    and refused (bad TOML, a bad value) counts as read: it is tried again only when it
    changes again.
    """

    POLL_SECONDS = 0.5
    CHANGED, GONE = "changed", "gone"

    def __init__(self, store: ConfigStore):
        self.store = store
        self._candidate: tuple | None = None
        self._gone_told = False

    def poll(self) -> str | None:
        now = self.store.signature_now()
        if now is None or now == self.store.seen:
            self._candidate = None
            return None
        if now == MISSING:
            told, self._gone_told = self._gone_told, True
            return None if told else self.GONE
        self._gone_told = False
        if now != self._candidate:
            self._candidate = now  # changed since the last poll: maybe still being written
            return None
        self._candidate = None
        return self.CHANGED


def _plain(value: Any) -> Any:
    """tomlkit items -> plain Python values."""
    unwrap = getattr(value, "unwrap", None)
    return unwrap() if unwrap else value
