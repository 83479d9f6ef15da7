"""Who a client is, and the one per-client limiter: every service that limits clients keys its limits here.

A client is its IPv4 address, or its IPv6 /64: one host gets a whole /64
and can pick any address in it, so limits on IPv6 addresses one by one
would not hold it. An IPv4 client of a dual-stack socket (`::ffff:a.b.c.d`)
is that IPv4 address (`client_key`), and is shown as it (`plain_address`).

But every phone of an IPv6 LAN is in the same /64, so a limit sized for one
client would serve a LAN of hundreds of phones as one. Such a limit applies
per address instead, and a /64 as a whole holds at most a larger share of it
(`Shares`: the limits that apply to an address are its own and, for an IPv6
address, its /64's; `address_groups` names what it counts under). Users:
TFTP's transfer slots, upload quota and uploaded files kept, NTP's request
rate, the new phones a source adds to the Phones record, LDAP's searches in
progress, unfinished paged searches and connections.

`ClientTable` keeps one entry per client in bounded memory (the least
recently seen client is forgotten beyond `max_keys`, a bucket's debt kept
behind it, for that key only); the caller passes the monotonic time in (sans-IO). Two limits
are built on it:

- `TokenBuckets`: a bucket per client that fills at `rate` up to `capacity`.
  Users: TFTP's unacknowledged bytes per destination address
  (proto.tftp.Admission: keyed by the exact address, not the client key),
  the HTTP gate's spare share for clients admitted rarely lately
  (proto.http.ConnectionGate), and through `AddressBuckets` (a table of
  addresses and one of /64s, `Shares` of rate and capacity): NTP's request
  rate (proto.ntp.RateLimiter), TFTP's upload volume per hour (shells.tftp)
  and the new phones a source may add to the Phones record
  (provisioning.phones.seen).
- `FailureBackoff`: each client's last `limit` failures within `window`
  seconds, and the wait they earn. Users: the failed-login limit
  (web.auth: `retry_after` once `limit` failures fall within the window),
  and the LDAP bind throttle (proto.ldap.limits.BindThrottle: a delay
  doubling with each recent failure).

`ClientCounts` is what each client holds now — connections or searches in
progress, bytes buffered — and the total; it keeps only clients that hold
something, so it is bounded by what is held. Users: LDAP's connection caps,
searches in progress, unfinished paged searches (all three counted per
address and per /64, `Shares`) and buffered bytes (proto.ldap.limits); the
files uploads/ keeps per address and per /64 (provisioning.uploads).
"""

from __future__ import annotations

import ipaddress
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple


@lru_cache(maxsize=4096)  # parsing an IPv6 address costs 19 µs, more than an NTP answer; a phone sends many
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


def address_groups(address: str | None) -> tuple[str, ...]:
    """What a per-address limit counts `address` under: the address as the socket gives it (an IPv4 client of
    a dual-stack socket as its IPv4 address) and, for an IPv6 address, its /64 as a whole (`client_key`)."""
    key = client_key(address)
    if not key.endswith("/64"):
        return (key,)
    return (address, key)


class Shares(NamedTuple):
    """A limit per address, and the larger share an IPv6 /64 as a whole may hold of what it limits."""

    per_address: float
    per_prefix: float

    def of(self, address: str | None) -> list[tuple[str, float]]:
        """The limits that apply to `address`: [(the address, per_address)], and for an IPv6 address
        (its /64, per_prefix) after it."""
        return list(zip(address_groups(address), self, strict=False))  # an IPv4 address: its own limit only


def plain_address(host: str) -> str:
    """An IPv4 client of a dual-stack socket (`::ffff:192.0.2.1`) as the IPv4 address the
    administrator knows; any other address as it is."""
    return host[7:] if host.startswith("::ffff:") and "." in host else host


DEBT_SLOT_BITS = 16
DEBT_SLOTS = 1 << DEBT_SLOT_BITS  # where TokenBuckets keep the debts of buckets pushed out of their table (1 MiB once used)


def _debt_slot(key: str) -> tuple[int, int]:
    """Where a key's debt is kept (the low bits of its keyed hash) and the rest of the hash, which tells its debt
    from another's in that slot."""
    hashed = hash(key)
    return hashed & (DEBT_SLOTS - 1), hashed >> DEBT_SLOT_BITS


class ClientTable:
    """An entry per client key; the least recently seen keys are forgotten beyond `max_keys`.

    An entry is a list made by `new_entry(now)` and brought up to date by
    `refresh(entry, now)` whenever it is looked up (subclasses define both).
    """

    def __init__(self, max_keys: int = 4096):
        self.max_keys = max_keys
        self._entries: OrderedDict[str, list] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def new_entry(self, now: float) -> list:
        raise NotImplementedError

    def refresh(self, entry: list, now: float) -> None:
        """Bring `entry` up to `now` (a refill, failures forgotten)."""

    def forgotten(self, key: str, entry: list, now: float) -> None:
        """`key`'s entry was pushed out of the table (it was the least recently seen)."""

    def made(self, key: str, entry: list, now: float) -> None:
        """`key`'s entry was just made by `new_entry` (it was new, or forgotten)."""

    def entry(self, key: str, now: float) -> list:
        """The key's entry, up to date at `now` (made if it is new or was forgotten)."""
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self.max_keys:
                self.forgotten(*self._entries.popitem(last=False), now)
            entry = self._entries[key] = self.new_entry(now)
            self.made(key, entry, now)
        else:
            self._entries.move_to_end(key)
            self.refresh(entry, now)
        return entry

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)


class TokenBuckets(ClientTable):
    """A token bucket per key, starting full. `rate` and `capacity` may be changed at any time
    (a setting changed). Each entry is a list [tokens, time of the last refill, ...]: a subclass
    may keep more per key after those two (see `new_entry`).

    A bucket pushed out of the table while short of full leaves its debt behind: when it would be
    full again, in a slot of `full_at` chosen by the low bits of its key's hash, beside the hash's
    other bits (`owed_by`), and a bucket made for the same key (slot and bits alike) starts that
    far from full. Else a source seen again after the table filled (4,096 others: forged UDP
    sources cost a packet each) found its bucket full: a device guessing phones' MACs over TFTP
    had its allowance again for every 4,096 forged requests. The str hash is keyed per process, so
    no key can be made to share another's slot and bits: a newcomer never pays another's debt. Two
    debts in one slot: the one paid off later is kept (the other bucket comes back full, as all did
    before). The slots are made at the first such eviction (most tables never fill).
    """

    def __init__(self, rate: float, capacity: float, max_keys: int = 4096):
        super().__init__(max_keys)
        self.rate, self.capacity = rate, capacity
        self.full_at: array | None = None  # per slot: when the debt left there is paid off
        self.owed_by: array | None = None  # per slot: the bits of the key's hash that are not the slot's

    def new_entry(self, now: float) -> list:
        return [float(self.capacity), now]

    def forgotten(self, key: str, entry: list, now: float) -> None:
        self.refresh(entry, now)
        owed = self.capacity - entry[0]
        if owed <= 0 or self.rate <= 0:  # full, or a table that never refills (sized later): nothing to keep
            return
        if self.full_at is None:
            self.full_at, self.owed_by = array("d", bytes(8 * DEBT_SLOTS)), array("q", bytes(8 * DEBT_SLOTS))
        slot, owner = _debt_slot(key)
        paid_off = now + owed / self.rate
        if paid_off >= self.full_at[slot] or self.owed_by[slot] == owner:
            self.full_at[slot], self.owed_by[slot] = paid_off, owner

    def made(self, key: str, entry: list, now: float) -> None:
        if self.full_at is not None:
            slot, owner = _debt_slot(key)
            if self.owed_by[slot] == owner and self.full_at[slot] > now:
                entry[0] = self.capacity - (self.full_at[slot] - now) * self.rate
                self.full_at[slot] = 0.0  # back in the table: its debt is its entry's again

    def refresh(self, entry: list, now: float) -> None:
        if now > entry[1]:
            entry[0] = min(float(self.capacity), entry[0] + (now - entry[1]) * self.rate)
        entry[1] = now

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


class AddressBuckets:
    """A token bucket per address (`addresses`) and one per IPv6 /64 as a whole (`prefixes`), each its share of
    `rate` and `capacity` (`Shares`: an IPv4 address meets its own bucket only); `take` draws on both at once.

    The /64's bucket is looked at first: a /64 short of what is asked (a device cycling through its
    addresses) is refused before its address is looked up, so such a device adds addresses to the
    table only as fast as its /64's bucket refills, and pushes no one else's out. A request refused by
    its address costs its /64 nothing: one address spending its own bucket leaves its neighbours theirs.
    `table` makes each of the two tables (TokenBuckets, or a subclass keeping more per key).
    """

    def __init__(self, rate: Shares, capacity: Shares, max_keys: int = 4096, table=TokenBuckets):
        self.addresses = table(rate.per_address, capacity.per_address, max_keys)
        self.prefixes = table(rate.per_prefix, capacity.per_prefix, max_keys)

    def __len__(self) -> int:
        return len(self.addresses) + len(self.prefixes)

    def resize(self, rate: Shares, capacity: Shares) -> None:
        """New rates and capacities (a setting changed); every bucket keeps its level, within the new capacity."""
        self.addresses.rate, self.addresses.capacity = rate.per_address, capacity.per_address
        self.prefixes.rate, self.prefixes.capacity = rate.per_prefix, capacity.per_prefix

    def take(self, address: str | None, amount: float, now: float, refused_pays: bool = False) -> tuple[TokenBuckets, str] | None:
        """Take `amount` from the buckets of `address` (its own, its /64's) if each holds it, and at least one
        unit: None. Else the (table, key) of the bucket that refused, and nothing is taken from the other;
        with `refused_pays` the refusing bucket pays anyway, down to minus its capacity (a flood keeps
        itself in debt until it slows down, as NTP's rate limit does)."""
        need = max(amount, 1.0)
        groups = address_groups(address)
        prefix = None
        if len(groups) > 1:
            prefix = self.prefixes.entry(groups[1], now)
            if prefix[0] < need:
                return self._refused(self.prefixes, groups[1], prefix, amount, refused_pays)
        own = self.addresses.entry(groups[0], now)
        if own[0] < need:
            return self._refused(self.addresses, groups[0], own, amount, refused_pays)
        own[0] -= amount
        if prefix is not None:
            prefix[0] -= amount
        return None

    def give(self, address: str | None, amount: float, now: float) -> None:
        """Return `amount` taken before from the buckets of `address` (never above their capacity)."""
        groups = address_groups(address)
        self.addresses.give(groups[0], amount, now)
        if len(groups) > 1:
            self.prefixes.give(groups[1], amount, now)

    @staticmethod
    def _refused(table: TokenBuckets, key: str, entry: list, amount: float, pays: bool) -> tuple[TokenBuckets, str]:
        if pays:
            entry[0] = max(-float(table.capacity), entry[0] - amount)
        return table, key


class FailureBackoff(ClientTable):
    """The times of each key's last `limit` failures within `window` seconds, and the wait they earn."""

    def __init__(self, limit: int, window: float, max_keys: int = 4096):
        super().__init__(max_keys)
        self.limit, self.window = limit, window

    def new_entry(self, now: float) -> list:
        return [deque(maxlen=self.limit)]

    def refresh(self, entry: list, now: float) -> None:
        times, cutoff = entry[0], now - self.window
        while times and times[0] <= cutoff:
            times.popleft()

    def failed(self, key: str, now: float) -> int:
        """Note one failure; the number within the window (at most `limit`)."""
        times = self.entry(key, now)[0]
        times.append(now)
        return len(times)

    def failures(self, key: str, now: float) -> int:
        """The failures of `key` within the window (without noting one, or keeping a key that has none)."""
        if key not in self._entries:
            return 0
        times = self.entry(key, now)[0]
        if not times:
            self.forget(key)
        return len(times)

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until `key` may try again: 0 while it has fewer than `limit` failures in the window."""
        if self.failures(key, now) < self.limit:
            return 0.0
        return max(0.0, self._entries[key][0][0] + self.window - now)

    def succeeded(self, key: str) -> None:
        self.forget(key)


class Holdings:
    """The connections each client holds, oldest first, and which clients hold the most: who gives one up when
    every slot is taken (`crowded_out`). A client here is whatever key the caller holds connections under (the
    HTTP gate and LDAP's caps: an address, so that the phones of an IPv6 LAN are not one client holding many).

    The client holding the most gives up one, of those holding at least two more than the newcomer's
    client (after the move it holds no fewer); only a connection `idle(connection)` says may go (it waits for
    its client's next request), its oldest. Clients are looked at from the most held down, and only those
    holding enough (the counts held, sorted: fewer than sqrt(2 * connections) of them); at most
    `look_at` connections are asked whether they are idle (when all are busy, the
    newcomer is turned away: a gate full of busy connections makes no room). A client holding nothing is
    not kept."""

    def __init__(self, look_at: int = 64):
        self.look_at = look_at
        self._of: dict[str, dict] = {}  # client -> its connections, oldest first
        self._by_count: dict[int, dict[str, None]] = {}  # n -> the clients holding n

    def count(self, client: str) -> int:
        connections = self._of.get(client)
        return len(connections) if connections is not None else 0

    def __len__(self) -> int:
        return len(self._of)

    def add(self, client: str, connection) -> None:
        connections = self._of.setdefault(client, {})
        connections[connection] = None
        self._moved(client, len(connections) - 1, len(connections))

    def remove(self, client: str, connection) -> None:
        connections = self._of.get(client)
        if connections is None or connection not in connections:
            return
        del connections[connection]
        if not connections:
            del self._of[client]
        self._moved(client, len(connections) + 1, len(connections))

    def crowded_out(self, newcomer: str, idle: Callable[[object], bool]):
        """The connection (its client's) to give up for a connection of `newcomer`, or None; not removed here."""
        enough, asked = self.count(newcomer) + 2, 0
        for held in sorted(self._by_count, reverse=True):  # the counts held: fewer than sqrt(2 * connections)
            if held < enough:
                return None
            for client in self._by_count[held]:
                for connection in self._of[client]:
                    if idle(connection):
                        return connection
                    asked += 1
                    if asked >= self.look_at:
                        return None
        return None

    def _moved(self, client: str, before: int, now: int) -> None:
        if before:
            clients = self._by_count[before]
            del clients[client]
            if not clients:
                del self._by_count[before]
        if now:
            self._by_count.setdefault(now, {})[client] = None


class ClientCounts:
    """What each client holds now (connections, searches in progress, bytes), and the total.

    A client holding nothing is not kept: the table is bounded by what is held,
    never by how many clients came and went.
    """

    def __init__(self):
        self.total = 0
        self._held: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._held)

    def of(self, key: str) -> int:
        return self._held.get(key, 0)

    def add(self, key: str | tuple[str, ...], amount: int = 1) -> None:
        """`key` holds `amount` more (less, if negative); a tuple of keys (`address_groups`) is one holder
        counted under each of them, and once in the total."""
        self.total += amount
        for one in (key,) if isinstance(key, str) else key:
            held = self._held.get(one, 0) + amount
            if held > 0:
                self._held[one] = held
            else:
                self._held.pop(one, None)

    def full(self, limits: list[tuple[str, float]]) -> str | None:
        """The first key of `limits` (`Shares.of`) that holds its limit already, or None."""
        held = self._held
        for key, limit in limits:  # a loop, not next() over a generator: this is asked once per search, per connection
            if held.get(key, 0) >= limit:
                return key
        return None

    def admit(self, limits: list[tuple[str, float]], total: int) -> tuple[str, ...] | None:
        """One more under every key of `limits` (`Shares.of`) if that keeps each within its limit and everyone
        within `total`: the keys it is counted under (to `add` back, negative, when it ends), or None."""
        if self.total >= total or self.full(limits) is not None:
            return None
        keys = tuple([key for key, _ in limits])
        self.add(keys)
        return keys
