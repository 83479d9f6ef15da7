"""The phones that fetched provisioning files: which files, with what result, from where and when.

The TFTP and /prov/ shells call `note_fetch` for every read request. A
phone is keyed by the MAC in the file name (``001565abcdef.boot``), or,
for a file without one (``cfg.xml``, ``snomD785.htm``), by its address and
vendor; a request that names neither a MAC nor a vendor we know (from the
file name or the HTTP User-Agent) is not recorded. The vendor and model
come from the stock profile the name matches (greenservers.provisioning.phones.profiles)
and from the User-Agent.

Bounded whatever a device sends: at most MAX_PHONES phones (the one seen
longest ago is forgotten first), MAX_FILES files per phone (the oldest
dropped), names and User-Agents cut and stripped of control characters.
Kept across restarts in data_dir/phones.json (0600, written atomically):
in the gevent worker at most once per SAVE_DELAY seconds, serialised and
written off the event loop, so a device fetching in a loop changes memory,
not the disk rate; elsewhere (the CLI, tests) at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path

import gevent
from gevent import monkey

from ...config.private import make_private_dir
from ...config.store import atomic_write
from ...process.offload import run_off_loop
from . import profiles

log = logging.getLogger("greenservers.phones")

MAX_PHONES = 2000
MAX_FILES = 16
MAX_NAME = 128
MAX_USER_AGENT = 200
SAVE_DELAY = 5.0
DAY = 86400
FILE_NAME = "phones.json"
RESULTS = ("served", "not found", "refused", "failed")
_MAC_RUN = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{12}(?![0-9A-Fa-f])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _clean(text: str, limit: int) -> str:
    return _CONTROL.sub("", text or "")[:limit]


def mac_in(name: str) -> str:
    """The MAC a requested name holds (lower case), or "": no run of 12 hex digits, or one starting with
    000000 (Yealink's y000000000066.cfg, Poly's 000000000000.cfg are files for every phone)."""
    stock = profiles.stock_match(name)
    if stock is not None:
        return stock.mac
    match = _MAC_RUN.search(name.rsplit("/", 1)[-1])
    mac = match.group(0).lower() if match else ""
    return "" if mac.startswith("000000") else mac


class PhoneRegistry:
    """The record of one data_dir (see the module docstring). Changed on the event loop only."""

    def __init__(self, path: Path, clock=time.time):
        self.path = Path(path)
        self.clock = clock
        self.phones: OrderedDict[str, dict] = OrderedDict()  # key -> phone, least recently seen first
        self._save_pending = False
        self._lock = threading.Lock()  # one write at a time
        self._load()

    # -- recording ---------------------------------------------------------------

    def note(self, name: str, address: str, result: str, via: str, user_agent: str = "") -> dict | None:
        """Record one fetch; the phone's entry, or None when the request names no MAC and no vendor."""
        name = _clean(name, MAX_NAME)
        user_agent = _clean(user_agent, MAX_USER_AGENT)
        stock = profiles.stock_match(name)
        mac = mac_in(name)
        ua_vendor, ua_model = profiles.from_user_agent(user_agent)
        vendor = stock.vendor.key if stock else ua_vendor
        if not mac and not vendor:
            return None
        key = mac or f"{address} {vendor}"
        now = self.clock()
        phone = self.phones.pop(key, None)
        if phone is None:
            phone = {"id": mac or "a" + hashlib.sha256(key.encode()).hexdigest()[:15], "mac": mac, "vendor": "", "model": "",
                     "address": "", "user_agent": "", "first_seen": now, "files": {}}
            while len(self.phones) >= MAX_PHONES:
                self.phones.popitem(last=False)
        phone["vendor"] = vendor or phone["vendor"]
        phone["model"] = ua_model or (stock.model if stock else "") or phone["model"]
        phone["address"] = _clean(address, 64)
        phone["user_agent"] = user_agent or phone["user_agent"]
        phone["last_seen"] = now
        files = phone["files"]
        files.pop(name, None)
        files[name] = {"result": result if result in RESULTS else "failed", "at": now, "via": via}
        while len(files) > MAX_FILES:
            files.pop(next(iter(files)))
        self.phones[key] = phone
        self._changed()
        return phone

    def forget(self, phone_id: str) -> bool:
        for key, phone in self.phones.items():
            if phone["id"] == phone_id:
                del self.phones[key]
                self._changed()
                return True
        return False

    def listing(self) -> list[dict]:
        """Every phone, last seen first, each with its files newest first (copies: safe to hand out)."""
        out = []
        for phone in reversed(self.phones.values()):
            entry = {k: v for k, v in phone.items() if k != "files"}
            entry["files"] = [{"name": name, **info} for name, info in reversed(phone["files"].items())]
            out.append(entry)
        return out

    def seen_since(self, seconds: float) -> int:
        cutoff = self.clock() - seconds
        return sum(1 for phone in self.phones.values() if phone["last_seen"] >= cutoff)

    # -- keeping it ---------------------------------------------------------------

    def _changed(self) -> None:
        if not monkey.is_module_patched("threading"):
            self.save()
        elif not self._save_pending:
            self._save_pending = True
            gevent.spawn_later(SAVE_DELAY, self._save_later)

    def _save_later(self) -> None:
        self._save_pending = False
        snapshot = [(key, {**phone, "files": dict(phone["files"])}) for key, phone in self.phones.items()]  # ~1 ms for 2,000
        try:
            run_off_loop(self._write, snapshot)
        except Exception:
            log.exception("could not save %s", self.path)

    def save(self) -> None:
        """Write the record now (at shutdown, or outside the gevent worker)."""
        self._save_pending = False
        self._write(list(self.phones.items()))

    def _write(self, items) -> None:
        data = json.dumps({"version": 1, "phones": [{"key": key, **phone} for key, phone in items]}, separators=(",", ":"))
        with self._lock:
            make_private_dir(self.path.parent)
            atomic_write(self.path, data.encode("utf-8"))

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("%s not read (%s); starting with no phones recorded", self.path, exc)
            return
        try:
            phones = json.loads(raw)["phones"]
            for phone in phones[-MAX_PHONES:]:
                key = str(phone.pop("key"))
                phone["files"] = dict(list(phone["files"].items())[-MAX_FILES:])
                for field in ("id", "mac", "vendor", "model", "address", "user_agent"):
                    phone[field] = str(phone.get(field, ""))
                phone["first_seen"], phone["last_seen"] = float(phone["first_seen"]), float(phone["last_seen"])
                self.phones[key] = phone
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = self.path.with_name(f"{self.path.name}.broken-{int(self.clock())}")
            log.warning("%s is not a record of phones (%s); kept as %s, starting with none", self.path, exc, aside.name)
            self.phones.clear()
            with contextlib.suppress(OSError):
                self.path.rename(aside)


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
    return registry


def note_fetch(runtime, name: str, address: str, result: str, via: str, user_agent: str = "") -> None:
    """What the shells call; never raises (a record is not worth a failed transfer)."""
    try:
        registry_for(runtime).note(name, address, result, via, user_agent)
    except Exception:
        log.exception("could not record the fetch of %s", name)


def save_all() -> None:
    for registry in list(_registries.values()):
        try:
            registry.save()
        except OSError as exc:
            log.warning("could not save %s: %s", registry.path, exc)


def seen_last_day() -> int:
    """For the sensor: phones of the process's data_dir seen in the last 24 hours. It is read in event-loop
    callbacks (SNMP), where nothing may block: a record not loaded yet (the worker loads it at start) counts 0."""
    from ...process import runtime

    if runtime._current is None:
        return 0
    registry = _registries.get(runtime._current.settings.data_path / FILE_NAME)
    return registry.seen_since(DAY) if registry is not None else 0
