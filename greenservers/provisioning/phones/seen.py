"""The phones that fetched provisioning files: which files, with what result, from where and when.

The TFTP and /prov/ shells call `note_fetch` for every read request. Only
names that mean a phone are recorded (profiles.phone_file: a stock profile,
or a per-phone file a vendor's phones ask for); any other name is not. A
phone is keyed by the MAC in the name (``001565abcdef.boot``), or, for a
file of every phone (``cfg.xml``, ``snomD785.htm``), by its address and
vendor. The vendor and model come from the name and the HTTP User-Agent.

Nobody authenticates these requests, so the record is bounded whatever a
device sends:

- per phone: MAX_FILES files (the oldest dropped); names, User-Agents,
  models and addresses cut to MAX_TEXT characters, control characters
  removed; so a phone takes at most MAX_PHONE_BYTES, and the record at most
  MAX_PHONES of them (under 2 MB);
- new phones: each address that answered (see trust below) may add
  NEW_PER_SOURCE at once, then one every 1/NEW_PER_SOURCE_RATE seconds, and
  an IPv6 /64 as a whole (the phones of a LAN, or one device using as many
  of its addresses as it likes) NEW_PER_PREFIX at once, then one every
  1/NEW_PER_PREFIX_RATE seconds (proto.clients.AddressBuckets); fetches that
  could be forged (unanswered UDP) name no real source, so they all share
  one bucket (NEW_UNVERIFIED, NEW_UNVERIFIED_RATE) and spend nobody else's;
- when full, a new phone takes the place of the least recently seen phone
  of the lowest trust, never of one trusted more than itself, nor of one
  whose address answered and that was seen in the last KEEP_SEEN (a day):
  a review's device fetching from 130 IPv4 addresses of its own, 16 new
  phones each, replaced every real phone of a full record in 3 s. Then a
  newcomer whose address answered takes the place of the least recently seen
  phone of the address recorded most often, if that address holds two more
  than the newcomer's (a device that filled the record, and kept it fresh,
  locked new phones out for good). Trust
  (`verified_by`): "http" for a fetch over HTTP or HTTPS (TCP: the address
  answered), "tftp" for a TFTP transfer whose first packet was acknowledged
  (the address got it), "" for only unanswered TFTP requests, which anyone
  can send with a forged source address. So spoofed TFTP requests can push
  out only phones seen just as doubtfully, a dozen a minute; and they change
  nothing of a phone whose address answered (its files, vendor, model,
  address, when it was seen).

Kept across restarts in data_dir/phones.sqlite3 (greenservers.provisioning.phones.store;
an older version's phones.json is carried over once and removed): in the
gevent worker only the phones changed since the last save are written, at
most once per SAVE_DELAY seconds, copied ROWS_PER_STEP at a time with the loop
serving between, written in a thread of the hub's pool; elsewhere
(the CLI, tests) at once. Changed on the event loop only.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import threading
import time
from collections import Counter, OrderedDict
from itertools import islice
from pathlib import Path

import gevent
from gevent import monkey

from ...process.offload import NativeLock, run_off_loop
from ...proto.clients import AddressBuckets, Shares, plain_address
from ...shells.loop import serve_ready_then_continue
from . import profiles
from .store import FILE_NAME, PhoneStore, legacy_phones, retire_legacy

log = logging.getLogger("greenservers.phones")

MAX_PHONES = 2000
MAX_FILES = 4
MAX_TEXT = 64  # file names, User-Agents, models, addresses
# a phone's row at most: six texts, two times, 4 x (name, result, via, time) and the JSON around them
MAX_PHONE_BYTES = 6 * MAX_TEXT + 2 * 20 + MAX_FILES * (MAX_TEXT + 10 + 6 + 20 + 16) + 64
NEW_PER_SOURCE, NEW_PER_SOURCE_RATE = 16, 1 / 15  # new phones an address may add at once, then per second
# The same for an IPv6 /64 as a whole: every phone of an IPv6 LAN is in one /64, and one host owning a /64 may
# fetch from as many of its 2^64 addresses as it likes. A quarter of the record at once, then 30 a minute: the
# 500 phones of a LAN booting together appear at once, a LAN of 1,000 within 17 minutes; such a host replaces a
# quarter of a full record at once, the whole record only after 50 minutes of fetches over TCP (a phone it pushed
# out comes back with its next fetch, on its own source's allowance), while every other address and /64 keeps its own.
NEW_PER_PREFIX, NEW_PER_PREFIX_RATE = MAX_PHONES // 4, 1 / 2
NEW_UNVERIFIED, NEW_UNVERIFIED_RATE = 64, 1 / 5  # the same for every unanswered UDP source together
KEEP_SEEN = 86400  # seconds a phone whose address answered is kept, however full the record
SAVE_DELAY = 5.0
ROWS_PER_STEP = 100  # rows of changed phones copied for a save between turns of the loop: well under a millisecond
DAY = 86400
RESULTS = ("served", "not found", "refused", "failed")
TRUST = ("", "tftp", "http")  # verified_by, least trusted first
FIELDS = ("id", "mac", "vendor", "model", "address", "user_agent", "first_seen", "last_seen", "verified_by")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _clean(text: str, limit: int = MAX_TEXT) -> str:
    return _CONTROL.sub("", (text or "")[:4 * limit])[:limit]


def trust_of(via: str, result: str, answered: bool = False) -> str:
    """What one fetch proves about its source address (see the module docstring); `answered`: a TFTP transfer
    whose first packet was acknowledged (it may have failed later)."""
    if via in ("http", "https"):
        return "http"
    return "tftp" if result == "served" or answered else ""


class PhoneRegistry:
    """The record of one data_dir (see the module docstring)."""

    def __init__(self, path: Path, clock=time.time):
        self.path = Path(path)
        self.clock = clock
        self.phones: OrderedDict[str, dict] = OrderedDict()  # key -> phone, least recently seen first
        self.new_per_source = AddressBuckets(Shares(NEW_PER_SOURCE_RATE, NEW_PER_PREFIX_RATE), Shares(NEW_PER_SOURCE, NEW_PER_PREFIX))
        # one bucket for every unanswered source together (its key "" is no IPv6 address: no /64 bucket is used)
        self.new_unverified = AddressBuckets(Shares(NEW_UNVERIFIED_RATE, 0), Shares(NEW_UNVERIFIED, 0), max_keys=1)
        self.not_recorded = 0  # new phones refused by the rates or the bounds
        self._dirty: dict[str, bool] = {}  # keys changed (True) or forgotten (False) since the last save
        self._save_pending = False
        self._lock = NativeLock()  # one write at a time (writes run in the pool's threads)
        self.store = PhoneStore(self.path, clock())
        for phone in self.store.rows():
            self.phones[phone.pop("key")] = self._from_row(phone)
        if not self.phones:
            self._carry_over(legacy_phones(self.path, clock()))

    # -- recording ---------------------------------------------------------------

    def note(self, name: str, address: str, result: str, via: str, user_agent: str = "", answered: bool = False) -> dict | None:
        """Record one fetch; the phone's entry, or None when it is not recorded (see the module docstring)."""
        found = profiles.phone_file(name)
        if found is None:
            return None
        ua_vendor, ua_model = profiles.from_user_agent(_clean(user_agent, 4 * MAX_TEXT))
        vendor = found.vendor or ua_vendor
        if not found.mac and not vendor:
            return None
        key = found.mac or f"{_clean(address)} {vendor}"
        trust = trust_of(via, result, answered)
        now = self.clock()
        phone = self.phones.get(key)
        if phone is None:
            if not self._admit(address, trust, now):
                self.not_recorded += 1
                return None
            phone = {"id": found.mac or "a" + hashlib.sha256(key.encode()).hexdigest()[:15], "mac": found.mac, "vendor": "",
                     "model": "", "address": "", "user_agent": "", "first_seen": now, "verified_by": trust, "files": {}}
            self.phones[key] = phone
        elif not trust and phone["verified_by"]:
            # what may be forged says nothing of a phone whose address answered: a review's unanswered requests
            # turned its "got its configuration" into "last fetch: failed", its vendor into another, and kept it seen
            return phone
        else:
            self.phones.move_to_end(key)
        phone["vendor"] = vendor or phone["vendor"]
        # a User-Agent's model only with its own vendor's files (one naming another vendor made a "poly GXP2170")
        phone["model"] = _clean(ua_model if ua_model and ua_vendor == vendor else found.model) or phone["model"]
        phone["address"] = _clean(address)
        phone["user_agent"] = _clean(user_agent) or phone["user_agent"]
        phone["verified_by"] = max(phone["verified_by"], trust, key=TRUST.index)
        phone["last_seen"] = now
        files = phone["files"]
        name = _clean(name)
        files.pop(name, None)
        files[name] = {"result": result if result in RESULTS else "failed", "at": now, "via": _clean(via, 8)}
        while len(files) > MAX_FILES:
            files.pop(next(iter(files)))
        self._changed(key)
        return phone

    def _admit(self, address: str, trust: str, now: float) -> bool:
        """Whether a new phone from `address` may be recorded now (a place made for it if the record is full)."""
        # the source of a request that may be forged says nothing: such requests share one bucket, and cannot spend
        # the allowance of the address they name
        buckets, source = (self.new_per_source, address) if trust else (self.new_unverified, "")
        if buckets.take(source, 1, now) is not None:
            return False
        if len(self.phones) >= MAX_PHONES and not self._evict_for(trust, now, address):
            buckets.give(source, 1, now)  # nobody it may replace: its allowance is not spent
            return False
        return True

    def _evict_for(self, trust: str, now: float, address: str) -> bool:
        """Forget the least recently seen phone of the lowest trust recorded, unless that trust is above `trust`,
        or the phone's address answered and it was seen within KEEP_SEEN; then, for a newcomer whose address
        answered, the least recently seen phone of the address recorded the most often, if that is at least
        two more than the newcomer's (see the module docstring)."""
        oldest: dict[str, str] = {}  # trust -> the least recently seen key of it
        for key, phone in self.phones.items():
            oldest.setdefault(phone["verified_by"], key)
            if "" in oldest:
                break
        for level in TRUST[:TRUST.index(trust) + 1]:
            key = oldest.get(level)
            if key is not None and (not level or self.phones[key]["last_seen"] <= now - KEEP_SEEN):
                self._forget_key(key)
                return True
        if not trust:
            return False
        held = Counter(phone["address"] for phone in self.phones.values())  # a look at each (2,000: about 0.3 ms)
        most, count = held.most_common(1)[0]
        if count < held[_clean(address)] + 2:
            return False
        key = next(key for key, phone in self.phones.items() if phone["address"] == most)
        self._forget_key(key)
        return True

    def _forget_key(self, key: str) -> None:
        del self.phones[key]
        self._changed(key, kept=False)

    def forget(self, phone_id: str) -> bool:
        for key, phone in self.phones.items():
            if phone["id"] == phone_id:
                self._forget_key(key)
                return True
        return False

    # -- reading -----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.phones)

    def listing(self, offset: int = 0, limit: int | None = None) -> list[dict]:
        """Phones last seen first, from `offset`, at most `limit` (all: None), each with its files newest first
        (copies: safe to hand out)."""
        chosen = islice(reversed(self.phones.values()), offset, None if limit is None else offset + limit)
        return [{**{f: phone[f] for f in FIELDS},
                 "files": [{"name": name, **info} for name, info in reversed(phone["files"].items())]} for phone in chosen]

    def trusted_since(self, seconds: float) -> list[tuple[str, float]]:
        """(address, when last seen) of the phones seen in the last `seconds` whose address answered over TFTP
        or connected over HTTP (not spoofed), least recently seen first."""
        cutoff = self.clock() - seconds
        return [(phone["address"], phone["last_seen"]) for phone in self.phones.values()
                if phone["verified_by"] and phone["address"] and phone["last_seen"] >= cutoff]

    def proven_at(self, mac: str, address: str) -> bool:
        """Whether the phone of `mac` (lower case) is recorded at `address` by a fetch its address answered (TFTP
        acknowledged, or HTTP): what a forged request cannot make."""
        phone = self.phones.get(mac)
        return phone is not None and bool(phone["verified_by"]) and plain_address(phone["address"]) == plain_address(_clean(address))

    def seen_since(self, seconds: float) -> int:
        cutoff = self.clock() - seconds
        return sum(1 for phone in self.phones.values() if phone["last_seen"] >= cutoff)

    # -- keeping it ---------------------------------------------------------------

    @staticmethod
    def _row(key: str, phone: dict) -> tuple:
        """A phone as the store's row (its COLUMNS' order), a copy the loop may change meanwhile."""
        files = [[name, info["result"], info["at"], info["via"]] for name, info in phone["files"].items()]
        return (key, *(phone[f] for f in FIELDS), files)

    @staticmethod
    def _from_row(row: dict) -> dict:
        phone = {f: row[f] for f in FIELDS}
        phone["files"] = {name: {"result": result, "at": at, "via": via} for name, result, at, via in row["files"][-MAX_FILES:]}
        return phone

    def _changed(self, key: str, kept: bool = True) -> None:
        self._dirty[key] = kept
        if not monkey.is_module_patched("threading"):
            self.save()
        elif not self._save_pending:
            self._save_pending = True
            gevent.spawn_later(SAVE_DELAY, self._save_later)

    def _take_changes(self, step: int | None = None) -> dict[str, tuple | None]:
        """The rows of the phones changed since the last save (None: forgotten). `step`: that many at a time, the
        loop served between them (a row changed meanwhile is taken as it is then, and marked for the next save too)."""
        dirty, self._dirty = list(self._dirty.items()), {}
        step = step or max(1, len(dirty))
        changes: dict[str, tuple | None] = {}
        for start in range(0, len(dirty), step):
            if start:
                serve_ready_then_continue()
            for key, kept in dirty[start:start + step]:
                phone = self.phones.get(key) if kept else None
                changes[key] = self._row(key, phone) if phone is not None else None
        return changes

    def _save_later(self) -> None:
        self._save_pending = False
        changes = self._take_changes(ROWS_PER_STEP)
        try:
            run_off_loop(self._write, changes)
        except Exception:
            log.exception("could not save %s", self.path)
            for key in changes:  # tried again with the next save
                self._dirty.setdefault(key, key in self.phones)

    def save(self) -> None:
        """Write what changed now (at shutdown, or outside the gevent worker)."""
        self._save_pending = False
        self._write(self._take_changes())

    def _write(self, changes: dict[str, tuple | None]) -> None:
        if changes:
            with self._lock:
                self.store.write(changes)

    def _carry_over(self, legacy: list) -> None:
        """An older version's phones.json, under today's bounds: only files that mean a phone, MAX_FILES of them,
        texts cut; a phone left with none is dropped. Written, then the old file removed."""
        for old in legacy[-MAX_PHONES:]:
            try:
                kept = [(_clean(name), info) for name, info in dict(old["files"]).items() if profiles.phone_file(str(name))]
                if not kept:
                    continue
                files = {name: {"result": str(info["result"]), "at": float(info["at"]), "via": _clean(str(info["via"]), 8)}
                         for name, info in kept[-MAX_FILES:]}
                phone = {f: _clean(str(old.get(f, ""))) for f in FIELDS if f not in ("first_seen", "last_seen", "verified_by")}
                phone.update(first_seen=float(old["first_seen"]), last_seen=float(old["last_seen"]), files=files,
                             verified_by=max((trust_of(i["via"], i["result"]) for i in files.values()), key=TRUST.index))
                self.phones[_clean(str(old["key"]), 2 * MAX_TEXT)] = phone
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                log.warning("%s: a phone of phones.json not carried over (%s)", self.path.name, exc)
        with self._lock:
            self.store.write({key: self._row(key, phone) for key, phone in self.phones.items()})
        retire_legacy(self.path)
        if legacy:
            log.info("%d phones carried over from phones.json into %s; phones.json removed", len(self.phones), self.path.name)


_registries: dict[Path, PhoneRegistry] = {}
_registries_lock = threading.Lock()


def registry_for(runtime) -> PhoneRegistry:
    """The record of the runtime's current data_dir, read on first use (off the event loop)."""
    path = runtime.settings.data_path / FILE_NAME
    registry = _registries.get(path)
    if registry is None:
        loaded = run_off_loop(PhoneRegistry, path)
        with _registries_lock:
            registry = _registries.setdefault(path, loaded)
        if registry is not loaded:
            loaded.store.close()
    return registry


def note_fetch(runtime, name: str, address: str, result: str, via: str, user_agent: str = "", answered: bool = False) -> None:
    """What the shells call; never raises (a record is not worth a failed transfer)."""
    try:
        registry_for(runtime).note(name, address, result, via, user_agent, answered)
    except Exception:
        log.exception("could not record the fetch of %s", _clean(name))


def proven_at(runtime, mac: str, address: str) -> bool:
    """PhoneRegistry.proven_at of the runtime's record; False if it cannot be read."""
    try:
        return registry_for(runtime).proven_at(mac, address)
    except Exception:
        log.exception("could not read the record of phones")
        return False


def save_all() -> None:
    for registry in list(_registries.values()):
        try:
            registry.save()
        except (OSError, sqlite3.Error) as exc:
            log.warning("could not save %s: %s", registry.path, exc)


def seen_last_day() -> int:
    """For the sensor: phones of the process's data_dir seen in the last 24 hours. It is read in event-loop
    callbacks (SNMP), where nothing may block: a record not loaded yet (the worker loads it at start) counts 0."""
    from ...process import runtime

    if runtime._current is None:
        return 0
    registry = _registries.get(runtime._current.settings.data_path / FILE_NAME)
    return registry.seen_since(DAY) if registry is not None else 0
