"""Limits kept per client: who a peer is (its IPv4 address, or its IPv6 /64), and a token bucket per client.

One host gets a whole /64 and can pick any address in it, so limits on IPv6
addresses one by one would not hold it; an IPv4 client of a dual-stack socket
(`::ffff:a.b.c.d`) is that IPv4 address.

`TokenBuckets` is the one per-client rate limit of the project (NTP's request
rate, TFTP's unacknowledged bytes and upload volume): a bucket per key that
fills at `rate` up to `capacity`, in bounded memory. Sans-IO: the caller
passes the monotonic time in.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict


def client_key(address: str | None) -> str:
    """The identity a per-client limit applies to ("-" when the address is unknown).

    `address` is the text the socket layer gives, canonical already, so an
    IPv4 address is used as it is (parsing it would cost more than an NTP answer).
    """
    if not address:
        return "-"
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return f"{ipaddress.IPv6Address(ip.packed[:8] + bytes(8))}/64"


def plain_address(host: str) -> str:
    """An IPv4 client of a dual-stack socket (`::ffff:192.0.2.1`) as the IPv4 address the
    administrator knows; any other address as it is."""
    return host[7:] if host.startswith("::ffff:") and "." in host else host


class TokenBuckets:
    """A token bucket per key; the least recently seen keys are forgotten beyond `max_keys`.

    A key seen for the first time (or again after being forgotten) starts with a
    full bucket. `rate` and `capacity` may be changed at any time (a setting changed).
    Each entry is a list [tokens, time of the last refill, ...]: a subclass may keep
    more per key after those two (see `new_entry`).
    """

    def __init__(self, rate: float, capacity: float, max_keys: int = 4096):
        self.rate, self.capacity, self.max_keys = rate, capacity, max_keys
        self._entries: OrderedDict[str, list] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def new_entry(self, now: float) -> list:
        return [float(self.capacity), now]

    def entry(self, key: str, now: float) -> list:
        """The key's entry, refilled up to `now`."""
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self.max_keys:
                self._entries.popitem(last=False)
            entry = self._entries[key] = self.new_entry(now)
        else:
            self._entries.move_to_end(key)
            if now > entry[1]:
                entry[0] = min(float(self.capacity), entry[0] + (now - entry[1]) * self.rate)
            entry[1] = now
        return entry

    def level(self, key: str, now: float) -> float:
        return self.entry(key, now)[0]

    def take(self, key: str, amount: float, now: float, floor: float | None = None) -> float:
        """Take `amount` (down to `floor` at most, if given); the level left."""
        entry = self.entry(key, now)
        entry[0] -= amount
        if floor is not None and entry[0] < floor:
            entry[0] = floor
        return entry[0]

    def give(self, key: str, amount: float, now: float) -> None:
        """Return `amount` taken before (never above the capacity)."""
        entry = self.entry(key, now)
        entry[0] = min(float(self.capacity), entry[0] + amount)
