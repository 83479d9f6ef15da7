"""Phones' uploads (TFTP write, when `tftp_write` is on): where they land, how much they may take,
and what administrators see of them.

Uploads only create new files in ``uploads/`` under the TFTP root: written to
a hidden temporary file and linked to their name only when complete
(`os.link` fails if the name exists, so nothing is ever overwritten),
size-limited by the transfer; the uploading client's address is kept in the
file's extended attribute ``user.greenservers.client`` where the file system
has them. They are never served back: greenservers.provisioning.files refuses every
name under uploads/ (TFTP, /prov/ and templates' includes alike), and
administrators list, download and delete them on the /uploads page
(greenservers.web.uploads).

Space: everything in uploads/ together (complete files and uploads in
progress) stays within `tftp_upload_budget_mib`, and at most MAX_UPLOAD_FILES
files, of which one address holds at most MAX_FILES_PER_ADDRESS and an IPv6
/64 as a whole MAX_FILES_PER_PREFIX (proto.clients.ClientCounts, counted
under `address_groups`), so that no one client can fill the folder for every
phone. An upload that would pass any of these is refused
as "disk full" (TFTP error 3), at once when its announced size (tsize) or the
folder says so, else when the block that would pass it arrives: old uploads
are never deleted to make room (administrators delete them, many at once too:
`delete_uploads`). `UploadSpace` keeps the count: a scan of the folder (off
the event loop: 10,000 files take about 70 ms) when it changed behind this
process's back (its modification time) or a minute has passed, plus what this
process added and removed since.

A client's volume per hour is `HourlyQuota`'s: `tftp_upload_mib_per_hour` per
address, and QUOTA_PREFIX_SHARE times that for an IPv6 /64 as a whole
(proto.clients.AddressBuckets). The TFTP service passes each Upload a
`quota(size)` that answers None when it took `size` bytes, else what has
spent its allowance (the address, or its /64); the Upload then refuses the
block (QuotaSpent, also error 3). Each file costs FILE_CHARGE of that volume
besides its bytes (taken when it begins, with its announced size: those bytes
are not charged again as they arrive), so that one-byte files cannot be
uploaded by the thousand.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..config.private import make_private_dir, open_private
from ..config.store import remove_orphans
from ..process.offload import run_off_loop
from ..proto.clients import AddressBuckets, ClientCounts, Shares, address_groups
from .files import TEMPLATE_SUFFIX, UPLOAD_DIR, NotFound, ProvisioningError, Refused, check_name, tftp_root

MAX_UPLOAD_FILES = 10000
MAX_FILES_PER_ADDRESS = MAX_UPLOAD_FILES // 10  # one phone, or a site of phones behind one IPv4 address (a NAT)
# The files an IPv6 /64 as a whole may keep: every phone of an IPv6 LAN is in one /64, and one host owning a /64
# may upload from as many of its 2^64 addresses as it likes. A quarter of the folder, as for TFTP's transfer slots:
# the 500 phones of a LAN keep 5 files each (a boot and an app log, a backup) until an administrator deletes them,
# while such a host leaves three quarters of the folder to everyone else; the budget bounds the bytes of all.
MAX_FILES_PER_PREFIX = MAX_UPLOAD_FILES // 4
FILE_CHARGE = 64 * 1024  # bytes of the hourly quota each file costs besides its size: 256 files an hour of 16 MiB
# The hourly quota of an IPv6 /64 as a whole, in tftp_upload_mib_per_hour: every phone of an IPv6 LAN is in one
# /64, and one host owning a /64 may upload from as many of its 2^64 addresses as it likes. 8 times an address's
# (128 MiB, 2,048 files an hour by default): the 500 phones of a LAN rebooting together upload a boot and an app
# log each within the hour (4 files a phone), while such a host takes at most half the default upload budget
# (tftp_upload_budget_mib, 256 MiB) in an hour, reaches its /64's share of the files in little more, and every
# other address and /64 keeps its own quota; the budget and the folder's 10,000 files bound everyone together.
QUOTA_PREFIX_SHARE = 8
RESCAN_SECONDS = 60.0
CLIENT_ATTRIBUTE = "user.greenservers.client"
PARTIAL_UPLOAD = re.compile(r"\.partial-(?P<pid>\d+)-[0-9a-f]+")
MIB = 1024 * 1024


class AlreadyExists(ProvisioningError):
    tftp_code, http_status = 6, 409


class UploadsFull(ProvisioningError):
    """The upload budget (or the number of files) is used up."""

    tftp_code, http_status = 3, 507


class QuotaSpent(ProvisioningError):
    """The client has uploaded what it may this hour."""

    tftp_code, http_status = 3, 429


def uploads_folder(settings) -> Path:
    return tftp_root(settings) / UPLOAD_DIR


# -- what uploads/ holds ----------------------------------------------------------------


def _scan(folder: Path) -> tuple[int, ClientCounts]:
    """Bytes of the complete uploads (hidden temporary files left out), and their number per address and /64."""
    size = 0
    files = ClientCounts()
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                    size += entry.stat(follow_symlinks=False).st_size
                    files.add(address_groups(_client_of(entry.path)))
    except FileNotFoundError:
        pass
    return size, files


class UploadSpace:
    """The bytes and files uploads/ holds (`files_of`: the files per address and per IPv6 /64, and in all), and the bytes
    uploads in progress have written."""

    def __init__(self, folder: Path, clock: Callable[[], float] = time.monotonic):
        self.folder, self.clock = folder, clock
        self.stored = self.in_progress = 0
        self.files_of = ClientCounts()
        self._seen_mtime: int | None = None
        self._scanned_at = float("-inf")

    @property
    def used(self) -> int:
        return self.stored + self.in_progress

    @property
    def files(self) -> int:
        return self.files_of.total

    def _mtime(self) -> int | None:
        try:
            return os.stat(self.folder).st_mtime_ns
        except FileNotFoundError:
            return None

    def refresh(self) -> None:
        """Scan the folder again if it changed behind our back or a minute has passed."""
        if self._mtime() != self._seen_mtime or self.clock() - self._scanned_at > RESCAN_SECONDS:
            self._seen_mtime = self._mtime()  # before the scan: a change during it shows next time
            self.stored, self.files_of = run_off_loop(_scan, self.folder)
            self._scanned_at = self.clock()

    def changed_by_us(self) -> None:
        """This process created or removed a file in the folder: not a change behind its back."""
        self._seen_mtime = self._mtime()

    def check(self, budget: int, announced: int | None, client: str = "") -> None:
        """At the start of an upload from `client` (an address): UploadsFull if it cannot fit (its announced
        size, or a byte; a file more, of that client's too)."""
        self.refresh()
        if self.files >= MAX_UPLOAD_FILES:
            raise UploadsFull(f"disk full: {UPLOAD_DIR}/ already holds {MAX_UPLOAD_FILES} files")
        full = self.files_of.full(Shares(MAX_FILES_PER_ADDRESS, MAX_FILES_PER_PREFIX).of(client))
        if full is not None and full.endswith("/64"):
            raise UploadsFull(f"disk full: {UPLOAD_DIR}/ already holds {MAX_FILES_PER_PREFIX} files from this address's IPv6 /64, "
                              "the most one /64 may keep there")
        if full is not None:
            raise UploadsFull(f"disk full: {UPLOAD_DIR}/ already holds {MAX_FILES_PER_ADDRESS} files from this address, "
                              "the most one may keep there")
        if self.used + (announced or 1) > budget:
            raise UploadsFull(_budget_message(budget))

    def reserve(self, size: int, budget: int) -> None:
        if self.used + size > budget:
            raise UploadsFull(_budget_message(budget))
        self.in_progress += size

    def settle(self, size: int, kept: bool, client: str = "") -> None:
        """An upload of `size` bytes from `client` is over: kept (committed) or gone."""
        self.in_progress -= size
        if kept:
            self.stored += size
            self.files_of.add(address_groups(client))
        self.changed_by_us()

    def removed(self, size: int, client: str = "") -> None:
        """A file of `size` bytes uploaded by `client` was deleted."""
        self.stored = max(0, self.stored - size)
        if self.files_of.total > 0:  # a scan may have missed it already
            self.files_of.add(address_groups(client), -1)
        self.changed_by_us()


def _budget_message(budget: int) -> str:
    return (f"disk full: the upload budget of {budget // MIB} MiB (tftp_upload_budget_mib) is used up; "
            "uploads are kept until an administrator deletes them")


_spaces: dict[Path, UploadSpace] = {}


def space_of(settings) -> UploadSpace:
    """The one UploadSpace of the current uploads folder (shared by TFTP and the admin page)."""
    folder = uploads_folder(settings)
    space = _spaces.get(folder)
    if space is None:
        if len(_spaces) > 8:  # data_dir changes are rare; keep the cache bounded anyway
            _spaces.clear()
        space = _spaces[folder] = UploadSpace(folder)
    return space


def budget_bytes(settings) -> int:
    return settings.tftp_upload_budget_mib * MIB


# -- writing one -------------------------------------------------------------------------


def upload_target(settings, name: str) -> Path:
    """Where a write of `name` lands: uploads/NAME (a leading "uploads/" is accepted), new files only."""
    relative = check_name(name)
    if relative.parts[0] == UPLOAD_DIR:
        relative = PurePosixPath(*relative.parts[1:])
    if len(relative.parts) != 1 or relative.name.endswith(TEMPLATE_SUFFIX):
        raise Refused("uploads go straight into uploads/ and are not templates")
    root = tftp_root(settings).resolve()
    folder = root / UPLOAD_DIR
    make_private_dir(folder)
    folder = folder.resolve()
    if not folder.is_relative_to(root) or folder == root:
        raise Refused("the uploads folder leads outside the TFTP root")
    target = folder / relative.name
    if os.path.lexists(target):
        raise AlreadyExists(f"{UPLOAD_DIR}/{relative.name} exists; uploads never overwrite")
    return target


Quota = Callable[[int], str | None]  # takes `size` bytes: None, or what has spent its allowance (see HourlyQuota)


def begin(settings, name: str, client: str = "", announced: int | None = None, quota: Quota | None = None) -> Upload:
    """A new upload of `name` from `client`, if it may start (Refused, AlreadyExists, UploadsFull, QuotaSpent)."""
    target = upload_target(settings, name)
    space = space_of(settings)
    space.check(budget_bytes(settings), announced, client)
    if quota is not None and (spent := quota(FILE_CHARGE + (announced or 0))) is not None:
        raise QuotaSpent(quota_message(settings, spent))
    return Upload(target, space, budget_bytes(settings), client, quota,
                  lambda spent: quota_message(settings, spent), prepaid=announced or 0)


def quota_message(settings, spent: str) -> str:
    """The refusal of an upload whose address (`spent` an address) or IPv6 /64 (`spent` a /64) spent its hour's quota."""
    if spent.endswith("/64"):
        return (f"disk full: this address's IPv6 /64 has uploaded its {QUOTA_PREFIX_SHARE * settings.tftp_upload_mib_per_hour} "
                f"MiB for the hour ({QUOTA_PREFIX_SHARE} times tftp_upload_mib_per_hour); try again later")
    return (f"disk full: this address has uploaded its {settings.tftp_upload_mib_per_hour} MiB for the hour "
            "(tftp_upload_mib_per_hour); try again later")


class HourlyQuota:
    """The bytes each address, and each IPv6 /64 as a whole (QUOTA_PREFIX_SHARE times as many), may upload per hour,
    all of it at once if it likes (proto.clients.AddressBuckets: the /64 looked at first)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.buckets = AddressBuckets(Shares(0.0, 0.0), Shares(0, 0))  # sized from the settings at each upload

    def of(self, settings, address: str) -> Quota:
        """The quota of `address`, sized by today's tftp_upload_mib_per_hour."""
        per_hour = settings.tftp_upload_mib_per_hour * MIB
        capacity = Shares(per_hour, per_hour * QUOTA_PREFIX_SHARE)
        self.buckets.resize(Shares(capacity.per_address / 3600, capacity.per_prefix / 3600), capacity)

        def quota(size: int) -> str | None:
            refused = self.buckets.take(address, size, self.clock())
            return None if refused is None else refused[1]

        return quota


def remove_orphan_uploads(settings) -> list[str]:
    """Partial uploads whose process is gone (a crash mid-upload): removed, so none is ever left behind."""
    return remove_orphans(uploads_folder(settings), PARTIAL_UPLOAD)


class Upload:
    """A new file written to a hidden temporary name and linked into place only when complete.

    Each write is counted against the space's budget and the client's quota,
    beyond the `prepaid` bytes its quota was charged at the start (raising
    UploadsFull or QuotaSpent); the caller aborts the upload then.
    """

    def __init__(self, target: Path, space: UploadSpace | None = None, budget: int = 0, client: str = "",
                 quota: Quota | None = None, quota_message: Callable[[str], str] = str, prepaid: int = 0):
        self.target, self.space, self.budget, self.client = target, space, budget, client
        self.quota, self.quota_message, self.prepaid = quota, quota_message, prepaid
        self.written = 0
        self.temp = target.with_name(f".partial-{os.getpid()}-{secrets.token_hex(8)}")
        self.fd: int | None = open_private(self.temp, os.O_WRONLY, exclusive=True)
        if client:
            # the inode keeps it through the link to its name; a file system without extended attributes: the page shows no address
            with contextlib.suppress(OSError):
                os.setxattr(self.fd, CLIENT_ATTRIBUTE, client.encode())
        if space is not None:
            space.changed_by_us()

    def write(self, data: bytes) -> None:
        charge = max(0, len(data) - self.prepaid)
        self.prepaid -= len(data) - charge
        if charge and self.quota is not None and (spent := self.quota(charge)) is not None:
            raise QuotaSpent(self.quota_message(spent))
        if self.space is not None:
            self.space.reserve(len(data), self.budget)
        self.written += len(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def commit(self) -> None:
        """Make the file visible; AlreadyExists if the name appeared meanwhile (it is never replaced)."""
        os.fsync(self.fd)
        self._close()
        try:
            os.link(self.temp, self.target)
        except FileExistsError:
            raise AlreadyExists(f"{self.target.name} appeared during the upload; not overwritten") from None
        finally:
            self._remove_temp()
        self._settle(kept=True)

    def abort(self) -> None:
        self._close()
        self._remove_temp()
        self._settle(kept=False)

    close = abort  # after a commit there is nothing left to remove, nothing to settle

    def _settle(self, kept: bool) -> None:
        if self.space is not None:
            self.space, space = None, self.space  # once
            space.settle(self.written, kept, self.client)

    def _close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def _remove_temp(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp)


# -- what administrators see ------------------------------------------------------------------


@dataclass(frozen=True)
class UploadInfo:
    name: str
    size: int
    modified: float  # Unix time
    client: str  # the uploading address, "" when unknown


def _client_of(path: str) -> str:
    try:
        return os.getxattr(path, CLIENT_ATTRIBUTE, follow_symlinks=False).decode("ascii", "replace")[:64]
    except OSError:
        return ""


def _listing(folder: Path) -> list[UploadInfo]:
    found = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                info = entry.stat(follow_symlinks=False)
                found.append(UploadInfo(entry.name, info.st_size, info.st_mtime, _client_of(entry.path)))
    except FileNotFoundError:
        pass
    found.sort(key=lambda upload: (-upload.modified, upload.name))
    return found


def list_uploads(settings) -> list[UploadInfo]:
    """Every complete upload, newest first (read off the event loop: the folder may hold 10,000)."""
    return run_off_loop(_listing, uploads_folder(settings))


def upload_path(settings, name: str) -> Path:
    """The upload called `name`: a regular file right in uploads/ (no link), else NotFound."""
    relative = check_name(name)  # Refused: control characters, hidden names, "..", ...
    if len(relative.parts) != 1:
        raise NotFound(f"{name}: no such upload")
    path = uploads_folder(settings) / relative.name
    try:
        info = os.lstat(path)
    except OSError:
        raise NotFound(f"{name}: no such upload") from None
    if not stat.S_ISREG(info.st_mode):
        raise NotFound(f"{name}: no such upload")
    return path


def _unlink(settings, name: str) -> tuple[int, str]:
    """Delete an upload; its size and uploading address. NotFound if there is none of that name."""
    path = upload_path(settings, name)
    size, client = os.lstat(path).st_size, _client_of(str(path))
    try:
        os.unlink(path)
    except FileNotFoundError:
        raise NotFound(f"{name}: no such upload") from None
    return size, client


def delete_upload(settings, name: str) -> int:
    """Delete an upload; its size. NotFound if there is none of that name."""
    size, client = _unlink(settings, name)
    space_of(settings).removed(size, client)
    return size


def delete_uploads(settings, names: list[str]) -> tuple[int, int]:
    """Delete the uploads called `names` (at most MAX_UPLOAD_FILES of them), off the event loop: 10,000
    unlinks take a while; how many were deleted, and their bytes (a name already gone is passed over)."""
    def unlink_each() -> list[tuple[int, str]]:
        gone = []
        for name in names[:MAX_UPLOAD_FILES]:
            with contextlib.suppress(ProvisioningError):
                gone.append(_unlink(settings, name))
        return gone

    gone = run_off_loop(unlink_each)
    space = space_of(settings)
    for size, client in gone:
        space.removed(size, client)
    return len(gone), sum(size for size, _ in gone)
