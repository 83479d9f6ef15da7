"""Bookkeeping for the shell, per client and in total (sans-IO): fair shares of search time, bytes held,
unfinished paged searches, failed binds and connections. A client is an IPv4 address or an IPv6 /64
(proto/clients.py's `client_key`), except for searches in progress, unfinished paged searches and
connections: those are limited per address, and an IPv6 /64 as a whole holds a larger share
(proto/clients.py's `Shares`), as the phones of an IPv6 LAN share one /64. The tables per client are
proto/clients.py's."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..clients import ClientCounts, FailureBackoff, Holdings, Shares, TokenBuckets

# -- fair shares of search time, and buffered bytes (pure bookkeeping for the shell) ----

MAX_SEARCHES_PER_CLIENT = 4  # searches in progress per address (running, or waiting for their client to read)
MAX_SEARCHES = 32  # running in total: each holds its filter and, sorted or paged, every match
RESERVED_SHARE = 4  # a quarter of MAX_SEARCHES is started only for clients (IPv4 address, IPv6 /64) with none in progress
# An IPv6 /64 as a whole (a LAN of phones; or one device with 2^64 addresses) may have in progress
# every running slot but the reserve: 24. The phones of a ring group looking up a caller at the
# same moment can then run as many searches at once as the server runs for anyone, while the
# reserve stays for the other clients (a /64 with one in progress no longer takes from it), the
# /64's searches take their turns by the search time it used as a whole (FairShare's budgets are per
# client), and its searches its addresses do not read (suspended, holding no running slot) are 24
# at most, not 4 for each of its addresses.
SEARCH_BUDGET = 10.0  # seconds of search time a client may use before it waits behind lighter clients
SEARCH_REFILL = 0.5  # seconds of it given back per second
USAGE_GRAIN = 0.01  # seconds: usages compared in these (a phone's search takes about 0.2 ms)
MAX_CLIENTS_REMEMBERED = 10000


@dataclass(eq=False)
class SearchTicket:
    """A search admitted by FairShare; `turn` is the shell's handle to wake it."""

    client: str  # its client key (IPv4 address, IPv6 /64): its budget of search time
    groups: tuple[str, ...] = ()  # what it is counted under: its address, and an IPv6 address's /64
    turn: object = None
    delayed: bool = False
    arrival: int = 0
    suspended: bool = False  # waiting for its client to read what it was sent: not running


class FairShare:
    """Which search runs its next slice, so one client's expensive searches cannot starve others' cheap ones.

    Slices run one at a time (the shell's gate). Each client has a budget of
    search time (a token bucket: `budget` seconds, `refill` seconds given back per
    second); its usage is what it has spent and not got back. Of the searches
    waiting for a slice, the one whose client has the least usage goes first (the
    earliest among equals, to USAGE_GRAIN), so a client that has used much recent
    search time waits behind the others, and a phone that has used none goes next.
    When a search is passed over for another client's it counts once in `delayed`.

    Searches in progress are capped per address (`per_client`), per IPv6 /64
    as a whole (`per_prefix`) and the running ones in total (`start`
    refuses). A search whose answer waits for its client to read it is
    suspended (`suspend`, `resume`): it still counts for its address and /64,
    but holds no slot of the total, so clients that read nothing cannot take
    every slot. The last `reserved` slots are kept for clients (an IPv4
    address, an IPv6 /64) with no search in progress. A search resumed is let
    go on even past the total: it was admitted, and holds what it holds already.
    """

    def __init__(self, per_client: int = MAX_SEARCHES_PER_CLIENT, total: int = MAX_SEARCHES, budget: float = SEARCH_BUDGET,
                 refill: float = SEARCH_REFILL, max_clients: int = MAX_CLIENTS_REMEMBERED, reserved: int | None = None,
                 per_prefix: int | None = None):
        self.per_client, self.total = per_client, total
        self.reserved = total // RESERVED_SHARE if reserved is None else reserved
        self.per_prefix = max(per_client, total - self.reserved) if per_prefix is None else per_prefix
        self.delayed = 0
        self._in_progress = ClientCounts()  # per address and per /64: running or suspended
        self._suspended = 0
        self._budgets = TokenBuckets(refill, budget, max_clients)
        self._waiting: list[SearchTicket] = []  # in order of arrival
        self._arrivals = 0
        self._limits_of: tuple[str, list[tuple[str, float]]] | None = None  # the last address's (a phone's next search)

    def start(self, address: str) -> SearchTicket | None:
        """A ticket for a new search from `address`, or None when its address or its /64 has too many in progress
        or the server too many running."""
        cached = self._limits_of
        if cached is None or cached[0] != address:
            cached = self._limits_of = (address, Shares(self.per_client, self.per_prefix).of(address))
        limits = cached[1]
        client = limits[-1][0]  # the client key: the IPv4 address, or the IPv6 address's /64
        total = self.total if self.running_from(client) == 0 else self.total - self.reserved
        if self.running >= total:
            return None
        groups = self._in_progress.admit(limits, math.inf)
        return None if groups is None else SearchTicket(client, groups)

    def end(self, ticket: SearchTicket) -> None:
        if ticket in self._waiting:
            self._waiting.remove(ticket)
        self._in_progress.add(ticket.groups, -1)
        self.resume(ticket)

    def suspend(self, ticket: SearchTicket) -> None:
        """The ticket's search waits for its client to read: it gives its slot up meanwhile."""
        if not ticket.suspended:
            ticket.suspended = True
            self._suspended += 1

    def resume(self, ticket: SearchTicket) -> None:
        """Its client has read what it was sent: the search runs again."""
        if ticket.suspended:
            ticket.suspended = False
            self._suspended -= 1

    def want(self, ticket: SearchTicket) -> None:
        """The ticket's search waits for its next slice."""
        self._arrivals += 1
        ticket.arrival = self._arrivals
        self._waiting.append(ticket)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return self._in_progress.total - self._suspended

    @property
    def suspended(self) -> int:
        return self._suspended

    def running_from(self, key: str) -> int:
        """The searches in progress, running or suspended, of an address or an IPv6 /64 ("x::/64")."""
        return self._in_progress.of(key)

    def usage(self, client: str, now: float) -> float:
        """Seconds of search time `client` has spent and not got back (at most the budget)."""
        return self._budgets.capacity - self._budgets.level(client, now)

    def next(self, now: float) -> SearchTicket | None:
        """The waiting ticket to run now (removed from the waiting), or None."""
        if not self._waiting:
            return None
        usage = {ticket.client: 0 for ticket in self._waiting}
        for client in usage:  # in grains: clients that used about as little (phones) go in order of arrival
            usage[client] = int(self.usage(client, now) / USAGE_GRAIN)
        chosen = min(self._waiting, key=lambda t: (usage[t.client], t.arrival))
        for ticket in self._waiting:
            if ticket is chosen:
                break
            if ticket.client != chosen.client and not ticket.delayed:  # passed over for a lighter client
                ticket.delayed = True
                self.delayed += 1
        self._waiting.remove(chosen)
        return chosen

    def charge(self, client: str, seconds: float, now: float) -> None:
        """A slice of `seconds` ran for `client`."""
        self._budgets.take(client, seconds, now, floor=0.0)


MAX_BUFFERED = 16 * 1024 * 1024  # bytes of unfinished messages held across all connections
MAX_BUFFERED_PER_CLIENT = 4 * 1024 * 1024


class BufferBudget:
    """Bytes that sessions hold between reads (unfinished messages), capped in total and per client."""

    def __init__(self, total: int = MAX_BUFFERED, per_client: int = MAX_BUFFERED_PER_CLIENT):
        self.total, self.per_client = total, per_client
        self._by_holder: dict[object, tuple[str, int]] = {}
        self._by_client = ClientCounts()

    def hold(self, holder: object, client: str, size: int) -> bool:
        """`holder` now holds `size` bytes; False if that grew past a cap (the holder is then refused)."""
        held = self._by_holder.get(holder)
        before = 0 if held is None else held[1]
        if size == before:  # nothing changes (a request answered whole: nothing held before or after)
            return True
        self._set(holder, client, size)
        return size < before or (self.held <= self.total and self._by_client.of(client) <= self.per_client)

    @property
    def held(self) -> int:
        return self._by_client.total

    def release(self, holder: object) -> None:
        client, _ = self._by_holder.get(holder, ("", 0))
        self._set(holder, client, 0)

    def _set(self, holder: object, client: str, size: int) -> None:
        _, before = self._by_holder.pop(holder, (client, 0))
        self._by_client.add(client, size - before)
        if size:
            self._by_holder[holder] = (client, size)


# -- unfinished paged searches of every session ----

MAX_PAGED_PER_CLIENT = 8  # unfinished paged searches per address, across its connections; its oldest is given up
# An IPv6 /64 as a whole (a LAN of phones; or one device with 2^64 addresses) may keep 64: a phone
# browsing the directory keeps one while its user reads a page (PAGED_IDLE at most once left), so 64
# phones of a LAN, or 8 addresses at their own 8, page at once without giving up each other's; a
# device cycling its /64 keeps at most 64 (of the whole book, 64 x 200,000 ids would be 51 MB, so
# MAX_PAGED_IDS still bounds it; its new ones give up the /64's oldest, and never another client's
# unless the total is reached, when the client keeping the most ids gives up first); and sessions
# holding them are bounded by the /64's share of connections (ConnectionCaps) anyway.
MAX_PAGED_PER_PREFIX = 64
MAX_PAGED_IDS = 2_000_000  # ids all unfinished paged searches keep together (4 bytes each: 8 MB)
PAGED_IDLE = 60.0  # seconds an unfinished paged search is kept while no page of it is asked for


class PagedBudget:
    """Unfinished paged searches (RFC 2696: the results kept between two pages) of every session, bounded.

    Each is known by (owner, cookie); the owner is a session's searches, and
    `owner.drop(cookie)` forgets one the budget gives up. At most `per_client`
    per address and `per_prefix` per IPv6 /64 as a whole (`Shares`: a new one
    gives up the oldest of its address, or of its /64, at its limit), at most
    `total_ids` found ids kept altogether (the oldest of the client, an IPv4
    address or an IPv6 /64, keeping the most is given up), and none kept
    `idle` seconds after its last page was asked for (looked at whenever a
    paged search starts or goes on). A client sees a search given up as an
    invalid cookie, and starts again.
    """

    def __init__(self, per_client: int = MAX_PAGED_PER_CLIENT, total_ids: int = MAX_PAGED_IDS, idle: float = PAGED_IDLE,
                 per_prefix: int = MAX_PAGED_PER_PREFIX):
        self.per_client, self.total_ids, self.idle = per_client, total_ids, idle
        self.per_prefix = max(per_client, per_prefix)
        self._kept: OrderedDict[tuple, tuple[tuple[str, ...], int, float]] = OrderedDict()  # by last use: (groups, ids, last use)
        self._of_group: dict[str, OrderedDict[tuple, None]] = {}  # each address's and each /64's, oldest first
        self._held = ClientCounts()  # how many each address and each /64 keeps
        self._ids = ClientCounts()  # the ids each client (IPv4 address, IPv6 /64) keeps

    @property
    def open(self) -> int:
        return len(self._kept)

    @property
    def ids(self) -> int:
        return self._ids.total

    def kept_by(self, key: str) -> int:
        """The unfinished paged searches of an address or an IPv6 /64 ("x::/64")."""
        return self._held.of(key)

    def keep(self, owner, cookie: bytes, address: str, ids: int, now: float) -> None:
        """`owner` (a session of `address`) keeps `ids` found ids for the pages after the first, under `cookie`."""
        self.expire(now)
        limits = Shares(self.per_client, self.per_prefix).of(address)
        while (groups := self._held.admit(limits, math.inf)) is None:  # its address's, or its /64's, oldest goes
            full = self._held.full(limits)
            self._give_up(next(iter(self._of_group[full])))
        while self._kept and self._ids.total + ids > self.total_ids:
            heaviest = max(self._of_group, key=self._ids.of)
            self._give_up(next(iter(self._of_group[heaviest])))
        key = (owner, cookie)
        self._kept[key] = (groups, ids, now)
        for group in groups:
            self._of_group.setdefault(group, OrderedDict())[key] = None
        self._ids.add(groups[-1], ids)

    def touch(self, owner, cookie: bytes, now: float) -> None:
        """A page of it is asked for: idle from now."""
        key = (owner, cookie)
        kept = self._kept.get(key)
        if kept is not None:
            self._kept[key] = (kept[0], kept[1], now)
            self._kept.move_to_end(key)

    def release(self, owner, cookie: bytes) -> None:
        """`owner` forgot it (its last page sent, abandoned, the connection closed)."""
        key = (owner, cookie)
        kept = self._kept.pop(key, None)
        if kept is None:
            return
        groups, ids, _ = kept
        for group in groups:
            mine = self._of_group[group]
            del mine[key]
            if not mine:
                del self._of_group[group]
        self._held.add(groups, -1)
        self._ids.add(groups[-1], -ids)

    def expire(self, now: float) -> None:
        """Give up those idle for longer than `idle`."""
        cutoff = now - self.idle
        while self._kept:
            key, (_, _, used) = next(iter(self._kept.items()))
            if used > cutoff:
                break
            self._give_up(key)

    def _give_up(self, key: tuple) -> None:
        owner, cookie = key
        self.release(owner, cookie)
        owner.drop(cookie)


# -- failed-bind throttle and connection caps (pure bookkeeping for the shell) ----


class BindThrottle(FailureBackoff):
    """Per-client delay before a failed bind is answered: doubles with each failure in the last `forget_after`
    seconds, up to `cap`."""

    def __init__(self, first: float = 0.25, cap: float = 8.0, forget_after: float = 600.0, max_clients: int = 10000):
        doublings = max(0, math.ceil(math.log2(cap / first))) if cap > first else 0
        super().__init__(doublings + 1, forget_after, max_clients)  # failures past these wait no longer
        self.first, self.cap = first, cap

    def delay(self, client: str, now: float) -> float:
        """Note one failed bind of `client`; how long to wait before answering it."""
        return min(self.cap, self.first * 2 ** (self.failed(client, now) - 1))


# TLS handshakes (LDAPS, StartTLS) an address (an IPv6 /64) may begin a second, and at once: far above phones
# (a NAT's too), far below a flood (each costs the server up to a millisecond: one address beginning 800 a second
# made every other client's handshake wait 120 ms in line)
HANDSHAKES_PER_SECOND, HANDSHAKE_BURST = Shares(50.0, 200.0), Shares(100, 400)


class ConnectionCaps:
    """Connections open per address, per IPv6 /64 as a whole and in total, all bounded.

    `per_client` is sized for an IPv4 address hiding a site behind a NAT. A /64 (a LAN of phones each
    keeping a connection; or one device with 2^64 addresses) may hold a quarter of the total, as a /64
    may hold a quarter of TFTP's transfers: three quarters stay for the other clients however a /64 is used.
    When the total is reached, the address holding the most (two more than the newcomer's: proto.clients.Holdings)
    gives up an idle connection (`make_room`): sixteen addresses holding 256 each shut every phone out before.
    A connection is any hashable handle the shell chooses.
    """

    def __init__(self, per_client: int, total: int, per_prefix: int | None = None):
        self.per_client, self.total = per_client, total
        self.per_prefix = max(per_client, total // 4) if per_prefix is None else per_prefix
        self._open = ClientCounts()
        self._held_by: dict = {}  # connection -> (what it is counted under, its address)
        self._holdings = Holdings()

    @property
    def open(self) -> int:
        return self._open.total

    def admit(self, address: str, connection) -> bool:
        """Count `connection` from `address`, unless that would pass a cap (False)."""
        limits = Shares(self.per_client, self.per_prefix).of(address)
        held = self._open.admit(limits, self.total)
        if held is None:
            return False
        self._held_by[connection] = held, address
        self._holdings.add(address, connection)
        return True

    def make_room(self, address: str, idle: Callable[[object], bool]):
        """When the total is reached: an idle connection (`idle(connection)`) to close so that `address` may have
        its place, released here; None: nothing to give, or `address` (its /64) is at a cap of its own (it would
        be turned away anyway). Addresses, not clients, are compared: the phones of an IPv6 LAN, one connection
        each, are one /64, and were given up one by one."""
        if self._open.total < self.total or self._open.full(Shares(self.per_client, self.per_prefix).of(address)) is not None:
            return None
        victim = self._holdings.crowded_out(address, idle)
        if victim is not None:
            self.release(victim)
        return victim

    def open_from(self, key: str) -> int:
        """Connections open from an address or an IPv6 /64 ("x::/64")."""
        return self._open.of(key)

    def release(self, connection) -> None:
        """`connection` is closed (again: nothing happens)."""
        held = self._held_by.pop(connection, None)
        if held is not None:
            self._open.add(held[0], -1)
            self._holdings.remove(held[1], connection)
