"""TFTP admission without I/O: which requests get a transfer, and what unverified sources may be sent.

`Admission` is the admission policy of the whole server: transfers per
client and in total are limited, but an unverified transfer holds its slot
only until someone needs it: a request that finds the limits reached takes
the slot of the oldest unverified transfer (of the same client when the
per-client limit is what is reached); when verified transfers hold them, it
waits on probation (below) or is refused as busy (not even answered when
every slot of its own client awaits an acknowledgement). Of its own address's transfers, it
takes one only past its first retransmission (a real client would have
answered by then: a client's own burst is busy); of its /64's or anyone's,
whatever its age: spoofed requests from many addresses, 500 a second, held
every slot for less than a second each and phones were refused as busy. (At
the shell's REQUEST_RATE, 1,000 a second, a transfer keeps its slot half a
second at least with the default 500 slots, a /64's 125 ms: a phone on its LAN
answers in milliseconds.) A client, for these limits, is
an address: phones on an IPv6 LAN share one /64, so a /64 as the client
would give a hundred booting phones eight transfers. So that one device
using many addresses of its /64 cannot take every slot, a /64 (proto.clients'
client key) may hold at most a quarter of all slots (`max_per_prefix`).

Verified transfers are not given up to an unverified request, but they may
be to a verified one. A device on many addresses of its own (63 IPv4
addresses, or 4 /64s) acknowledging a block every few seconds held every slot
with about a hundred four-byte ACKs a second, and every phone was busy. So a
request that finds the limits reached by verified transfers is admitted on
probation (slots beyond `max_total` and a /64's share: at most
`max_probation` at once, a 32nd of `max_total` and 4 at least, one per
client; once they are all taken, a newcomer takes the place of the oldest
one not answered yet, or, when an answered one crawls below MIN_PACE itself,
contends for its place, one beyond them, and takes it once it answers):
once its peer acknowledges, the slowest transfer below MIN_PACE itself of the
slowest client whose `Pace` is below MIN_PACE gives its slot.
A client's pace is what its verified transfers moved per second of slot held,
over the last PACE_WINDOW seconds or so, ended transfers included (a device
that ends its transfers and asks again stays slow), and it is judged only
after PACE_GRACE seconds of slot held. A probationer that finds no slow client
keeps its transfer beyond the limits until it ends. A spoofed request never
acknowledges, so it never takes a verified transfer's slot: a phone over a
slow link, or waiting out its own retransmission timeout, loses its slot only
to a client that answers, and only while it moves less than MIN_PACE.

It also keeps the allowances (`Allowance`) of what may be sent unacknowledged,
per destination address: the exact address that receives the bytes, as a
request's source may be spoofed and whatever is sent goes there. A request
whose source has spent its allowance is not read (`hears`) until it has some
again; the bytes one /64 can be sent unacknowledged are bounded by its slots.
Keyed by the /64, a device using many of its own addresses could spend the
allowance of every phone of its /64.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from enum import Enum

from ..clients import Shares, client_key
from .options import Limits
from .packets import DEFAULT_BLKSIZE

FIRST_PACKET_MAX = DEFAULT_BLKSIZE + 4  # DATA 1 of a request without options; an OACK or ERROR is smaller
ALLOWANCE_REFILL = 60.0  # seconds for an empty allowance to fill again (see Admission)
PACE_WINDOW = 30.0  # seconds: a client's pace weighs what its transfers moved by e^(-age/PACE_WINDOW)
PACE_GRACE = 10.0  # seconds of slot held (in that weighting) before a client's pace is judged
SLOT_GRACE = PACE_GRACE / 4  # seconds of its own a transfer is judged after (`Slot.slow`); a new transfer of a known
# client starts with that much of its client's pace, so one that ends its transfers and asks again stays slow
MIN_PACE = 8192  # bytes a second per slot held: slower, a client's transfers may give their slots to a verified newcomer
# (a 512-byte block every 62 ms: a phone 50 ms away in lock-step moves 10 KiB/s; to hold 500 slots, 32 Mbit/s)
RANKING_SECONDS = 0.25  # one ranking of the slow clients serves the probationers verified this long (each costs a
# look at every verified transfer: a device that makes its probationers answer at the request rate does not pay for more)
PACES_KEPT = 4096  # clients whose pace is remembered; past it, half of those that hold no slot are forgotten
ANSWERED_FOR = 86400.0  # seconds an address that acknowledged a transfer counts as having answered (`answered_lately`)
ANSWERED_KEPT = 8192  # such addresses remembered, the least recently answered forgotten first
ANSWERED_PER_PREFIX = ANSWERED_KEPT // 16  # of one IPv6 /64: a device answering on many addresses of its /64 forgets
# its own first; to push out the phones of every other /64 and IPv4 address it must answer from 16 /64s


class Hearing(Enum):
    """Whether a request is read (`Admission.hears`), and if not, why."""

    HEARD = "heard"
    SPENT = "its destination's allowance is spent"  # until it refills above zero (`Admission.refilled_in`)
    AWAITING = "every slot of its client awaits an acknowledgement"  # until one may be given up: any new request


class Allowance:
    """What one transfer may send its peer before the peer acknowledges anything.

    Bytes are taken from the peer's bucket in `buckets` (a peers.TokenBuckets
    shared by all transfers of that source) while it is above zero, and given
    back when the peer acknowledges: an honest client never runs short, a
    spoofed source can draw only what its bucket holds and what refills. The
    first packet is paid for in advance (`reserved`, see Admission.allowance),
    when the request is admitted: a burst of requests from one source is
    then held to what its bucket holds, though their first packets are sent later.
    """

    def __init__(self, buckets, key: str):
        self.buckets, self.key, self.taken, self.reserved = buckets, key, 0, 0

    def reserve(self, size: int, now: float) -> None:
        self.buckets.take(self.key, size, now)
        self.reserved += size

    def permits(self, now: float) -> bool:
        """Whether anything more may be sent (the bucket may then go below zero by that one send)."""
        return self.reserved > 0 or self.buckets.level(self.key, now) > 0

    def take(self, size: int, now: float) -> None:
        """Pay for a send: from the reservation (what it does not need goes back), else from the bucket."""
        change = self.reserved - size
        self.reserved = 0
        if change > 0:
            self.buckets.give(self.key, change, now)
        elif change < 0:
            self.buckets.take(self.key, -change, now)
        self.taken += size

    def refund(self, now: float) -> None:
        """The peer acknowledged: all it was sent, and any reservation left, go back to its bucket."""
        self.release(now)
        if self.taken:
            self.buckets.give(self.key, self.taken, now)
            self.taken = 0

    def release(self, now: float) -> None:
        """The transfer is over: a reservation it did not use goes back."""
        if self.reserved:
            self.buckets.give(self.key, self.reserved, now)
            self.reserved = 0


class Slot:
    """One admitted transfer: whose it is (its client's address), when it began, whether it was verified or
    released, whether it is on probation; `owner` is the shell's handle (its greenlet) for ending it when its
    slot is taken, `transfer` its machine (what it moved: `Transfer.moved`), once it has one."""

    __slots__ = ("client", "groups", "started", "verified", "released", "evicted", "probation", "owner", "transfer",
                 "recent_moved", "recent_held", "paced_at")

    def __init__(self, client: str, groups: tuple[str, ...], started: float):
        self.client, self.groups, self.started = client, groups, started  # groups: the address, maybe its /64
        self.verified = self.released = self.evicted = self.probation = False
        self.owner = self.transfer = None
        self.recent_moved = self.recent_held = 0.0  # its own pace, weighted as its client's (`Pace`): since verified
        self.paced_at = started

    @property
    def pace_key(self) -> str:
        """Whose pace it counts in: its IPv4 address, or its IPv6 /64 (a device has as many addresses there as it likes)."""
        return self.groups[-1]

    def moved(self) -> int:
        return self.transfer.moved if self.transfer is not None else 0

    def count(self, moved: int, now: float) -> None:
        """`moved` bytes more of its own pace, as of `now` (when its client's pace counts it)."""
        if now > self.paced_at:
            keep = math.exp((self.paced_at - now) / PACE_WINDOW)
            self.recent_held = self.recent_held * keep + PACE_WINDOW * (1 - keep)
            self.recent_moved *= keep
            self.paced_at = now
        self.recent_moved += moved

    def slow(self) -> bool:
        """It moves under MIN_PACE itself, its client's pace before it counting as SLOT_GRACE seconds: a phone that
        shares a slow /64 moves itself out of reach within a second or two, and a device's transfer asked for
        again starts as slow as its client."""
        return self.recent_held >= SLOT_GRACE and self.recent_moved < MIN_PACE * self.recent_held

    def pace(self) -> float:
        return self.recent_moved / max(self.recent_held, 1e-9)


class Pace:
    """What one client's verified transfers moved per second of slot held, recent seconds weighing most
    (each second by e^(-age/PACE_WINDOW)); `slots`: its verified transfers now, and what each had moved
    when last counted."""

    __slots__ = ("moved", "held", "at", "slots")

    def __init__(self, now: float):
        self.moved = self.held = 0.0
        self.at = now
        self.slots: dict[Slot, int] = {}

    def age(self, now: float) -> None:
        """Bring the sums to `now`: the time held since (the transfers held now held it)."""
        if now > self.at:
            keep = math.exp((self.at - now) / PACE_WINDOW)
            self.held = self.held * keep + PACE_WINDOW * (1 - keep) * len(self.slots)
            self.moved *= keep
            self.at = now

    def take(self, slot: Slot) -> None:
        """Count what `slot` moved since it was last counted (as moved now, `at`: when in between is not known)."""
        moved = slot.moved()
        more = moved - self.slots[slot]
        self.moved += more
        slot.count(more, self.at)
        self.slots[slot] = moved

    def count(self, now: float) -> None:
        """Bring the sums to `now`, every transfer's bytes counted (a look at each: for a ranking, not per event)."""
        self.age(now)
        for slot in self.slots:
            self.take(slot)

    def slow(self) -> bool:
        return self.held >= PACE_GRACE and self.moved < MIN_PACE * self.held


class Admission:
    """Which requests get a transfer (see the module docstring), and what unverified sources may be sent.

    Slots: at most `max_total` transfers, `max_per_client` per client address,
    `max_per_prefix` per IPv6 /64. A request over a limit takes the slot of the
    oldest unverified transfer past its first retransmission (of the same
    address, or /64, for those limits); failing that, it waits on probation
    for a slow client's slot (see the module docstring), or is refused as busy, or not answered
    at all when every slot of its client awaits an acknowledgement (the client
    has acknowledged nothing it was sent: it is spoofed or it has what it
    needs). Allowance: a proto.clients.TokenBuckets of bytes per destination
    address with room for `max_per_client` first packets sent 1 +
    first_packet_retries times, filled again over ALLOWANCE_REFILL: honest
    clients are given back what they acknowledge and never wait for it, so the
    refill is what a spoofed source draws for as long as it is spoofed (here
    137 bytes a second by default, each spent evicting and starting a transfer:
    slower refills cost a flood less work); a bucket is never more than one
    packet below empty, so a victim is heard again seconds after the flood stops.
    """

    def __init__(self, limits: Limits, buckets):
        self.limits, self.buckets = limits, buckets
        self.max_total = self.max_per_client = self.max_per_prefix = 1
        self.active = 0
        self.per_client: Counter[str] = Counter()  # slots held per address, and per IPv6 /64 ("x::/64")
        self.verified_per_client: Counter[str] = Counter()  # per address
        self._unverified: dict[Slot, None] = {}  # in order of admission: the oldest first
        self._unverified_of: dict[str, dict[Slot, None]] = {}  # the same, per address and per /64
        self.max_probation = 1
        self.probation: dict[Slot, None] = {}  # the transfers on probation
        self.paces: dict[str, Pace] = {}  # by client (pace_key): those with verified transfers, and recent others
        self._slow: list[Pace] = []  # the slow clients, slowest first, as ranked at _ranked_at
        self._ranked_at = -math.inf
        self.answered: OrderedDict[str, float] = OrderedDict()  # address -> when it last acknowledged a first packet
        self._answered_in: dict[str, OrderedDict[str, None]] = {}  # an IPv6 /64 -> its addresses in `answered`

    def configure(self, max_total: int, max_per_client: int) -> None:
        """The limits in force (settings change at run time)."""
        self.max_total, self.max_per_client = max_total, max_per_client
        self.max_per_prefix = max(max_per_client, max_total // 4)
        self.max_probation = max(4, max_total // 32)
        self.buckets.capacity = max_per_client * (1 + self.limits.first_packet_retries) * FIRST_PACKET_MAX
        self.buckets.rate = self.buckets.capacity / ALLOWANCE_REFILL

    # -- what a source may be sent before it acknowledges anything

    def hears(self, address: str, now: float) -> Hearing:
        """Whether a request is read at all: not when the allowance of its source address (where answers
        go) is spent, nor while every slot of that address awaits an acknowledgement and none may be
        given up yet."""
        if self.buckets.level(address, now) <= 0:
            return Hearing.SPENT
        if (self.per_client[address] >= self.max_per_client and not self.verified_per_client[address]
                and self._oldest_unverified(address, now, any_age=False) is None):
            return Hearing.AWAITING
        return Hearing.HEARD

    def remember_answered(self, address: str, at: float) -> None:
        """`address` acknowledged a transfer `at` (or did so then, by the record of phones, at start)."""
        key = client_key(address)
        if address in self.answered:
            self.answered[address] = max(at, self.answered[address])
            self.answered.move_to_end(address)
            if key != address:
                self._answered_in[key].move_to_end(address)
            return
        if key != address:
            same = self._answered_in.setdefault(key, OrderedDict())
            if len(same) >= ANSWERED_PER_PREFIX:
                self._forget_answered(next(iter(same)))
            same[address] = None
        self.answered[address] = at
        if len(self.answered) > ANSWERED_KEPT:
            self._forget_answered(next(iter(self.answered)))

    def _forget_answered(self, address: str) -> None:
        del self.answered[address]
        key = client_key(address)
        same = self._answered_in.get(key)
        if same is not None:
            del same[address]
            if not same:
                del self._answered_in[key]

    def answered_lately(self, address: str, now: float) -> bool:
        """Whether `address` acknowledged a transfer in the last ANSWERED_FOR seconds (a phone that booted
        here before: its requests go first when the server sheds a storm's)."""
        at = self.answered.get(address)
        return at is not None and now - at < ANSWERED_FOR

    def refilled_in(self, destination: str, now: float) -> float:
        """Seconds until the allowance of `destination` is above zero (0 if it is)."""
        level = self.buckets.level(destination, now)
        if level > 0:
            return 0.0
        return (1 - level) / self.buckets.rate if self.buckets.rate > 0 else float("inf")

    def allowance(self, destination: str, now: float, transfer: bool = True) -> Allowance:
        """The allowance of a destination address: for an admitted request's transfer, its first packet paid
        for at once (see Allowance); else for a refusal (an ERROR) to it."""
        allowance = Allowance(self.buckets, destination)
        if transfer:
            allowance.reserve(FIRST_PACKET_MAX, now)
        return allowance

    # -- slots

    def admit(self, client: str, now: float) -> tuple[Slot | None, list[Slot]]:
        """A slot for a new transfer of the address `client` (None: busy) and the slots taken for it from
        unverified transfers (their owners must be ended, even when the request is then busy)."""
        limits: list[tuple[str | None, int]] = Shares(self.max_per_client, self.max_per_prefix).of(client)
        groups = tuple(group for group, _ in limits)  # the address, and an IPv6 address's /64
        limits.append((None, self.max_total))
        evicted: list[Slot] = []
        probation = False
        for group, limit in limits:
            if (self.active if group is None else self.per_client[group]) < limit:
                continue
            if group == client:
                victim = self._oldest_unverified(group, now, any_age=False)
            else:
                victim = self._oldest_unverified(group, now, any_age=True, probation=False)
                if victim is None:
                    # verified transfers hold the limit (of its /64 or of all): it may wait for an answer on probation
                    first_of_its_client = not any(other.pace_key == groups[-1] for other in self.probation)
                    if len(self.probation) < self.max_probation and first_of_its_client:
                        probation = True
                        continue
                    victim = self._oldest_unverified(group, now, any_age=True, probation=True)
                    if victim is None and first_of_its_client and len(self.probation) == self.max_probation \
                            and self._slow_probationer(now) is not None:
                        # answered probationers hold every place, one of them crawling: this one contends for its
                        # place, one beyond them, and takes it only once it answers (a spoofed request never does)
                        probation = True
                        continue
                    probation = victim is not None  # in the place of one beyond the limits: beyond them too
            if victim is None:
                return None, evicted
            victim.evicted = True
            self.release(victim)
            evicted.append(victim)
        slot = Slot(client, groups, now)
        if probation:
            slot.probation = True
            self.probation[slot] = None
        self.active += 1
        self._unverified[slot] = None
        for group in groups:
            self.per_client[group] += 1
            self._unverified_of.setdefault(group, {})[slot] = None
        return slot, evicted

    def _oldest_unverified(self, group: str | None, now: float, any_age: bool, probation: bool | None = None) -> Slot | None:
        """The oldest unverified transfer (of an address or /64, or of anyone): past its first retransmission,
        unless `any_age`; only those on probation, or only the others, unless `probation` is None."""
        slots = self._unverified if group is None else self._unverified_of.get(group, {})
        # passed over: at most the few on probation, or (admit asks for them only when no other is left) none
        oldest = next((slot for slot in slots if probation is None or slot.probation == probation), None)
        if oldest is None or any_age:
            return oldest
        return oldest if oldest.started <= now - self.limits.timeout else None

    def verified(self, slot: Slot, now: float) -> list[Slot]:
        """The peer acknowledged the transfer's first packet; the slots taken for it if it was on probation
        (their owners must be ended)."""
        if slot.verified or slot.released:
            return []
        slot.verified, slot.paced_at = True, now
        self.verified_per_client[slot.client] += 1
        self.remember_answered(slot.client, now)
        self._forget_unverified(slot)
        self._rank_if_stale(now)  # every client's pace counted lately (its sums current: not a count missing its bytes)
        pace = self._pace(slot.pace_key, now)
        if pace.slow():  # a device's transfer asked for again starts as slow as its client; a phone's, judged by itself
            slot.recent_held, slot.recent_moved = SLOT_GRACE, SLOT_GRACE * pace.moved / pace.held
        pace.age(now)
        pace.slots[slot] = slot.moved()
        if not slot.probation:
            return []
        evicted: list[Slot] = []
        if len(self.probation) > self.max_probation:  # a contender for a crawling probationer's place (admit)
            crawling = self._slow_probationer(now, slot)
            if crawling is None:
                return evicted  # none crawls now: it waits beyond them, one contender at most, until it ends
            crawling.evicted = True
            self.release(crawling, now)
            evicted.append(crawling)
        limits = [(group, self.max_per_prefix) for group in slot.groups[1:]]  # an IPv6 address's /64
        limits.append((None, self.max_total))
        for group, limit in limits:
            if (self.active if group is None else self.per_client[group]) > limit:  # one slot for it, not more
                victim = self._slowest_transfer(group, slot, now)
                if victim is None:
                    return evicted  # it goes on beyond the limit, on probation
                victim.evicted = True
                self.release(victim, now)
                evicted.append(victim)
        del self.probation[slot]
        slot.probation = False
        return evicted

    def _slowest_transfer(self, group: str | None, newcomer: Slot, now: float) -> Slot | None:
        """The slowest transfer below MIN_PACE itself (`Slot.slow`) of the slowest client below it (of the /64
        `group`, or of anyone), not the newcomer."""
        self._rank_if_stale(now)
        for pace in self._slow:
            if group is not None and pace is not self.paces.get(group):
                continue
            held = [slot for slot in pace.slots if slot is not newcomer and slot.slow()]
            if held:
                return min(held, key=Slot.pace)
        return None

    def _slow_probationer(self, now: float, newcomer: Slot | None = None) -> Slot | None:
        """The slowest answered probationer below MIN_PACE itself: its place beyond the limits goes to a newcomer
        (else a device whose probationers answered, then crawled, kept every place, and phones were busy)."""
        self._rank_if_stale(now)
        slow = [slot for slot in self.probation if slot.verified and slot is not newcomer and slot.slow()]
        return min(slow, key=Slot.pace) if slow else None

    def _rank_if_stale(self, now: float) -> None:
        """Rank the slow clients again if the last ranking is older than RANKING_SECONDS."""
        if now - self._ranked_at > RANKING_SECONDS:
            self._rank(now)

    def _rank(self, now: float) -> None:
        """The slow clients, slowest first: those holding no slot now too (counted when their last transfer
        ended), as a device that ends its transfers and asks again holds slots again before the next ranking."""
        slow = []
        for pace in self.paces.values():
            if pace.slots:
                pace.count(now)
            if pace.slow():
                slow.append(pace)
        slow.sort(key=lambda pace: pace.moved / pace.held)
        self._slow, self._ranked_at = slow, now

    def _pace(self, key: str, now: float) -> Pace:
        pace = self.paces.get(key)
        if pace is None:
            if len(self.paces) >= PACES_KEPT:
                idle = sorted((p.at, k) for k, p in self.paces.items() if not p.slots)
                for _, forgotten in idle[:max(1, len(idle) // 2)]:
                    del self.paces[forgotten]
            pace = self.paces[key] = Pace(now)
        return pace

    def release(self, slot: Slot, now: float | None = None) -> None:
        """The transfer is over (or evicted); a second call does nothing. `now`: when, for its client's pace
        (what it moved until then); None: when last counted."""
        if slot.released:
            return
        slot.released = True
        self._forget_unverified(slot)
        self.active -= 1
        for group in slot.groups:
            _decrement(self.per_client, group)
        if slot.probation:
            del self.probation[slot]
        if slot.verified:
            _decrement(self.verified_per_client, slot.client)
            pace = self.paces.get(slot.pace_key)
            if pace is not None and slot in pace.slots:
                pace.age(pace.at if now is None else now)
                pace.take(slot)
                del pace.slots[slot]
        slot.transfer = None

    def _forget_unverified(self, slot: Slot) -> None:
        self._unverified.pop(slot, None)
        for group in slot.groups:
            mine = self._unverified_of.get(group)
            if mine is not None:
                mine.pop(slot, None)
                if not mine:
                    del self._unverified_of[group]


def _decrement(counter: Counter, key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
