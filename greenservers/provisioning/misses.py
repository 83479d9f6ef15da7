"""How many absent provisioning files one address may ask for: guessing phones' MACs over TFTP and /prov/, slowed.

Both answer anyone (phones fetch their files before they know any credentials), so a per-phone
file (a SIP password in `<mac>.cfg`) is kept only by its name: the vendor's prefix and 24 bits.
Asking at the rate the servers answer (thousands of names a second), one device would try every
MAC of a vendor prefix within hours. So each address may ask for `prov_misses_per_hour` names
holding a MAC (files.MAC_RUN, as the server reads them) that are not there (all at once if it
likes: a site of phones behind one NAT address asks for many absent per-phone names at a mass
reboot), an IPv6 /64 as a whole PREFIX_SHARE times that (every phone of an IPv6 LAN is in one).

Once an address has spent them, it is refused every name holding a MAC that it was not served
lately, whether or not the file is there, so that a refusal tells nothing about which MACs exist;
what it was served (its last SERVED_KEPT names) it goes on being served, and so is a name whose
MAC the record of phones holds at that address from a fetch the address answered (`proven`: a
phone of that address rebooting gets its files, after a restart too). Names without a MAC (the
common files) are never counted nor refused. The allowance refills at `prov_misses_per_hour` an
hour. 0 turns the limit off.

Over TFTP a request's source is not proved (UDP): a device that sends requests for absent names
in a phone's address spends that phone's allowance, and while it goes on, a phone never recorded
there (a new one) is refused its per-phone file. The trade is set by `prov_misses_per_hour`
(0: no refusals, and no limit on guessing).
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable

from ..proto.clients import AddressBuckets, ClientTable, Shares
from . import files

PREFIX_SHARE = 8  # an IPv6 /64's allowance, in an address's
SERVED_KEPT = 16  # names served to an address that it is still served once its allowance is spent


class TooManyMisses(files.ProvisioningError):
    tftp_code, http_status = 0, 429


class _Served(ClientTable):
    """The names lately served to each address, the last SERVED_KEPT, oldest first, by their hash: 4,096 addresses
    of 16 names each hold under a MiB however long the names (the str hash is keyed per process: no name can be
    made to pass for another)."""

    def new_entry(self, now: float) -> list:
        return [array("q")]


class MissBudget:
    """Each address's (and /64's) allowance of absent names, and what each address was served lately."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.buckets = AddressBuckets(Shares(0.0, 0.0), Shares(0, 0))  # sized from the settings at each request
        self.served = _Served()

    def provide(self, settings, name: str, server: str, address: str,
                proven: Callable[[str], bool] = lambda mac: False) -> files.Content:
        """files.provide, for a request from `address`: TooManyMisses when its allowance is spent, it was not served
        `name` lately and the name's MAC (lower case) is not `proven` at the address; a file that is not there (or
        refused) spends one of its allowance."""
        per_hour = settings.prov_misses_per_hour
        mac = files.MAC_RUN.search(name)
        if not per_hour or mac is None:
            return files.provide(settings, name, server)
        capacity = Shares(per_hour, per_hour * PREFIX_SHARE)
        self.buckets.resize(Shares(capacity.per_address / 3600, capacity.per_prefix / 3600), capacity)
        now = self.clock()
        served, key = self.served.entry(address, now)[0], hash(name)
        if key not in served and self._spent(address, now) and not proven(mac.group().lower()):
            raise TooManyMisses(f"this address asked for more than {per_hour} absent files in the hour "
                                "(prov_misses_per_hour); try again later")
        try:
            content = files.provide(settings, name, server)
        except (files.NotFound, files.Refused):
            self.buckets.take(address, 1.0, now)
            raise
        if key in served:
            served.remove(key)
        served.append(key)
        if len(served) > SERVED_KEPT:
            del served[0]
        return content

    def _spent(self, address: str, now: float) -> bool:
        """Whether the address, or its /64, has less than one miss left (nothing taken)."""
        return self.buckets.take(address, 0.0, now) is not None
