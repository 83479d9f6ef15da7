"""TFTP admission without I/O: which requests get a transfer, and what unverified sources may be sent.

`Admission` is the admission policy of the whole server: transfers per
client and in total are limited, but an unverified transfer past its first
retransmission (a real client would have answered by then) holds its slot
only until someone needs it: a request that finds the limits reached takes
the slot of the oldest such transfer (of the same client when the per-client
limit is what is reached), and is refused as busy only when every slot is
held by a verified or a younger transfer (not even answered when every slot
of its own client awaits an acknowledgement). A client, for these fairness
limits, is proto.clients' client key (an IPv4 address, an IPv6 /64).

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
    """One admitted transfer: whose it is (its client key), when it began, whether it was verified or released;
    `owner` is the shell's handle (its greenlet) for ending it when its slot is taken."""

    __slots__ = ("client", "started", "verified", "released", "evicted", "owner")

    def __init__(self, client: str, started: float):
        self.client, self.started = client, started
        self.verified = self.released = self.evicted = False
        self.owner = None


class Admission:
    """Which requests get a transfer (see the module docstring), and what unverified sources may be sent.

    Slots: at most `max_total` transfers, `max_per_client` per client (its
    client key). A request over either limit takes the slot of the oldest
    unverified transfer past its first retransmission (of the same client for
    the per-client limit); failing that, it is refused as busy, or not answered
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
        self.max_total = self.max_per_client = 1
        self.active = 0
        self.per_client: Counter[str] = Counter()
        self.verified_per_client: Counter[str] = Counter()
        self._unverified: dict[Slot, None] = {}  # in order of admission: the oldest first
        self._unverified_of: dict[str, dict[Slot, None]] = {}  # the same, per client

    def configure(self, max_total: int, max_per_client: int) -> None:
        """The limits in force (settings change at run time)."""
        self.max_total, self.max_per_client = max_total, max_per_client
        self.buckets.capacity = max_per_client * (1 + self.limits.first_packet_retries) * FIRST_PACKET_MAX
        self.buckets.rate = self.buckets.capacity / ALLOWANCE_REFILL

    # -- what a source may be sent before it acknowledges anything

    def hears(self, destination: str, client: str, now: float) -> Hearing:
        """Whether a request is read at all: not when the allowance of its source address (`destination`,
        where answers go) is spent, nor while every slot of its client awaits an acknowledgement and none
        may be given up yet."""
        if self.buckets.level(destination, now) <= 0:
            return Hearing.SPENT
        if (self.per_client[client] >= self.max_per_client and not self.verified_per_client[client]
                and self._oldest_unverified(client, now) is None):
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
        """A slot for a new transfer of `client` (None: busy) and the slots taken for it from
        unverified transfers (their owners must be ended)."""
        evicted = []
        if self.per_client[client] >= self.max_per_client:
            evicted.append(self._oldest_unverified(client, now))
        elif self.active >= self.max_total:
            evicted.append(self._oldest_unverified(None, now))
        if evicted == [None]:
            return None, []
        for slot in evicted:
            slot.evicted = True
            self.release(slot)
        slot = Slot(client, now)
        self.active += 1
        self.per_client[client] += 1
        self._unverified[slot] = None
        self._unverified_of.setdefault(client, {})[slot] = None
        return slot, evicted

    def _oldest_unverified(self, client: str | None, now: float) -> Slot | None:
        """The oldest unverified transfer (of `client`, or of anyone) if it is past its first retransmission."""
        slots = self._unverified if client is None else self._unverified_of.get(client, {})
        oldest = next(iter(slots), None)
        return oldest if oldest is not None and oldest.started <= now - self.limits.timeout else None

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
        _decrement(self.per_client, slot.client)
        if slot.verified:
            _decrement(self.verified_per_client, slot.client)

    def _forget_unverified(self, slot: Slot) -> None:
        self._unverified.pop(slot, None)
        mine = self._unverified_of.get(slot.client)
        if mine is not None:
            mine.pop(slot, None)
            if not mine:
                del self._unverified_of[slot.client]


def _decrement(counter: Counter, key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
