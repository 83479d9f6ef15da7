"""Private files and folders: what greenservers writes is readable by the service user only.

Every file with data or secrets is created 0600 and every folder 0700, by
an explicit mode at creation (and the process umask 077 for what others
create for us, such as SQLite's -wal and -shm files), so there is no moment
in which another local user could read them. `tighten` brings an existing
install to the same modes at start; it never follows a symlink.

Ownership: a replaced file keeps its owner and group, and a file or folder
made by root takes the owner and group of the folder it is made in, so a
command run as root (`python -m greenservers passwd`) beside a service that
runs as its own user never leaves it a file it cannot read. A process that
is not root cannot give a file away, so it refuses to replace another
user's file and says which user to run as (`ForeignFileError`).
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from dataclasses import dataclass, field
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
PRIVATE_UMASK = 0o077
GROUP_AND_OTHER = 0o077


class ForeignFileError(PermissionError):
    """A file that belongs to another user, which this (non-root) process must not replace."""


def use_private_umask() -> None:
    """What this process creates without an explicit mode is private too."""
    os.umask(PRIVATE_UMASK)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _as_root() -> bool:
    return os.geteuid() == 0


def _take_owner_of(fd: int, like: os.stat_result) -> None:
    """Give the open file `fd` the owner and group of `like` (root only; a no-op when equal)."""
    mine = os.fstat(fd)
    if _as_root() and (mine.st_uid, mine.st_gid) != (like.st_uid, like.st_gid):
        os.fchown(fd, like.st_uid, like.st_gid)


def open_private(path: Path | str, flags: int = os.O_WRONLY, exclusive: bool = False) -> int:
    """Open `path`, creating it 0600 when missing (`exclusive`: it must not exist yet).

    A file created by root takes the owner and group of its folder.
    """
    path = Path(path)
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        if exclusive:
            raise
        return os.open(path, flags)
    try:
        _take_owner_of(fd, os.stat(path.parent))
    except BaseException:
        os.close(fd)
        raise
    return fd


def ensure_private_file(path: Path | str) -> None:
    """Create `path` empty and private when missing (before another library opens it)."""
    os.close(open_private(path, os.O_RDONLY))


def make_private_dir(path: Path | str) -> Path:
    """mkdir -p with mode 0700; a folder made by root takes the owner and group of its parent."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, PRIVATE_DIR)
        except FileExistsError:
            continue  # made meanwhile by another process
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            _take_owner_of(fd, os.stat(folder.parent))
        finally:
            os.close(fd)
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(path))
    return path


def replacement_owner(target: Path) -> os.stat_result | None:
    """The stat of the file that a write to `target` replaces (None: there is none).

    Raises ForeignFileError when this process is not root and the file is another user's:
    replacing it would take it away from its owner.
    """
    try:
        current = os.stat(target)
    except FileNotFoundError:
        return None
    if not _as_root() and current.st_uid != os.geteuid():
        owner = user_name(current.st_uid)
        raise ForeignFileError(f"{target} belongs to user {owner}; run this as {owner} (or as root) so the file keeps its owner")
    return current


def keep_owner(fd: int, replaced: os.stat_result | None) -> None:
    """Before a rename over `replaced`: the new file (open as `fd`) gets its owner and group."""
    if replaced is not None:
        _take_owner_of(fd, replaced)


# -- tightening an existing install ------------------------------------------------


@dataclass
class Tightened:
    changed: list[str] = field(default_factory=list)
    not_ours: list[str] = field(default_factory=list)  # another user's: left as it is

    def summary(self) -> str:
        text = f"made {len(self.changed)} file(s) and folder(s) private (0600/0700)"
        if self.not_ours:
            text += f"; {len(self.not_ours)} belong to other users and were left as they are"
        return text


def _tighten_fd(fd: int, shown: str, result: Tightened) -> None:
    info = os.fstat(fd)
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        return
    mode = stat.S_IMODE(info.st_mode)
    if not mode & GROUP_AND_OTHER:
        return
    try:
        os.fchmod(fd, mode & ~GROUP_AND_OTHER)
    except PermissionError:
        result.not_ours.append(shown)
        return
    result.changed.append(shown)


def _open_no_follow(name: str, dir_fd: int | None = None) -> int | None:
    """An fd of `name` itself, never of what a symlink points to; None for what cannot be opened."""
    try:
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dir_fd)
    except OSError:  # a symlink (ELOOP), a socket, one we may not read
        return None


def tighten(path: Path | str, result: Tightened | None = None) -> Tightened:
    """Strip group and other permissions from `path` and, for a folder, everything under it.

    Symlinks are neither changed nor followed (each name is opened with O_NOFOLLOW relative
    to its folder), so a link planted in the TFTP root cannot make us touch a file elsewhere.
    """
    result = result if result is not None else Tightened()
    fd = _open_no_follow(str(path))
    if fd is None:
        return result
    try:
        _tighten_fd(fd, str(path), result)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            for folder, dirs, files, dir_fd in os.fwalk(str(path), follow_symlinks=False):
                for name in dirs + files:
                    child = _open_no_follow(name, dir_fd)
                    if child is not None:
                        try:
                            _tighten_fd(child, os.path.join(folder, name), result)
                        finally:
                            os.close(child)
    finally:
        os.close(fd)
    return result


def tighten_install(config_file: Path, data_dir: Path) -> Tightened:
    """At start: the configuration file and the whole data folder made private (see `tighten`)."""
    result = Tightened()
    if Path(config_file).exists():
        tighten(config_file, result)
    if Path(data_dir).exists():
        tighten(data_dir, result)
    return result
