"""TFTP admission without I/O: which requests get a transfer, and what unverified sources may be sent.

`Admission` is the admission policy of the whole server: transfers per
client and in total are limited, but an unverified transfer holds its slot
only until someone needs it: a request that finds the limits reached takes
the slot of the oldest unverified transfer (of the same client when the
per-client limit is what is reached), and is refused as busy only when
verified transfers hold every slot (not even answered when every slot of its
own client awaits an acknowledgement). Of its own address's transfers, it
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

It also keeps the allowances (`Allowance`) of what may be sent unacknowledged,
per destination address: the exact address that receives the bytes, as a
request's source may be spoofed and whatever is sent goes there. A request
whose source has spent its allowance is not read (`hears`) until it has some
again; the bytes one /64 can be sent unacknowledged are bounded by its slots.
Keyed by the /64, a device using many of its own addresses could spend the
allowance of every phone of its /64.
"""

from __future__ import annotations

from collections import Counter
from enum import Enum

from ..clients import Shares
from .options import Limits
from .packets import DEFAULT_BLKSIZE

FIRST_PACKET_MAX = DEFAULT_BLKSIZE + 4  # DATA 1 of a request without options; an OACK or ERROR is smaller
ALLOWANCE_REFILL = 60.0  # seconds for an empty allowance to fill again (see Admission)


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
    released; `owner` is the shell's handle (its greenlet) for ending it when its slot is taken."""

    __slots__ = ("client", "groups", "started", "verified", "released", "evicted", "owner")

    def __init__(self, client: str, groups: tuple[str, ...], started: float):
        self.client, self.groups, self.started = client, groups, started  # groups: the address, maybe its /64
        self.verified = self.released = self.evicted = False
        self.owner = None


class Admission:
    """Which requests get a transfer (see the module docstring), and what unverified sources may be sent.

    Slots: at most `max_total` transfers, `max_per_client` per client address,
    `max_per_prefix` per IPv6 /64. A request over a limit takes the slot of the
    oldest unverified transfer past its first retransmission (of the same
    address, or /64, for those limits); failing that, it is refused as busy, or not answered
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

    def configure(self, max_total: int, max_per_client: int) -> None:
        """The limits in force (settings change at run time)."""
        self.max_total, self.max_per_client = max_total, max_per_client
        self.max_per_prefix = max(max_per_client, max_total // 4)
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
        for group, limit in limits:
            if (self.active if group is None else self.per_client[group]) < limit:
                continue
            victim = self._oldest_unverified(group, now, any_age=group != client)
            if victim is None:
                return None, evicted
            victim.evicted = True
            self.release(victim)
            evicted.append(victim)
        slot = Slot(client, groups, now)
        self.active += 1
        self._unverified[slot] = None
        for group in groups:
            self.per_client[group] += 1
            self._unverified_of.setdefault(group, {})[slot] = None
        return slot, evicted

    def _oldest_unverified(self, group: str | None, now: float, any_age: bool) -> Slot | None:
        """The oldest unverified transfer (of an address or /64, or of anyone): past its first retransmission,
        unless `any_age`."""
        slots = self._unverified if group is None else self._unverified_of.get(group, {})
        oldest = next(iter(slots), None)
        if oldest is None or any_age:
            return oldest
        return oldest if oldest.started <= now - self.limits.timeout else None

    def verified(self, slot: Slot) -> None:
        if slot.verified or slot.released:
            return
        slot.verified = True
        self.verified_per_client[slot.client] += 1
        self._forget_unverified(slot)

    def release(self, slot: Slot) -> None:
        """The transfer is over (or evicted); a second call does nothing."""
        if slot.released:
            return
        slot.released = True
        self._forget_unverified(slot)
        self.active -= 1
        for group in slot.groups:
            _decrement(self.per_client, group)
        if slot.verified:
            _decrement(self.verified_per_client, slot.client)

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
