"""NTP server core, sans-IO: request bytes + receive time + clock state in, the reply or a refusal out.

Theory of operation
-------------------
The phones are SNTP clients (RFC 4330, now folded into RFC 5905 §14): they
send one 48-byte mode-3 packet and compute their offset from four times:
T1 = their transmit time (which we echo back as "origin"), T2 = our receive
time, T3 = our transmit time and T4 = their receive time (RFC 5905 §8). So:

* origin (RFC 5905 §7.3) is the client's transmit timestamp copied *byte for
  byte*. Clients (chronyd randomises it) match the answer on these 8 bytes;
  a float round trip (ntplib) breaks that.
* T2 is taken as the datagram arrives (the shell passes the kernel's
  receive timestamp) and T3 as late as possible: `transmit_clock()` is
  called as the very last step of building the reply.
* The header says what our clock is worth (RFC 5905 §7.3, §11.2): leap
  indicator, stratum, precision, root delay, root dispersion, reference ID
  and reference time. `server_state()` derives them from a snapshot of the
  kernel clock (adjtimex: synchronised or not, leap second pending, maximum
  error) and, when the local time daemon can tell (chronyc tracking), its
  upstream's stratum, reference and root distance. An unsynchronised kernel
  clock is answered with leap indicator 3 (alarm) and stratum 16, which
  clients refuse, unless `ntp_local_stratum` asks to serve the local clock
  anyway at that stratum (like chrony's `local stratum`, reference ID
  127.127.1.1).

Abuse (RFC 5905 §7.4, §9.2; RFC 8633 §3 "mode 6 and 7"):

* Only mode 3 (client) is answered, versions 3 and 4, the version echoed.
  Control (6) and private (7, the monlist amplifier) requests, other modes,
  packets shorter than 48 bytes, and lengths an RFC 7822 extension field
  chain cannot have are dropped. The answer is always 48 bytes, never larger
  than the request, so the server cannot amplify.
* A per-client rate limiter (chrony's `ratelimit`): a token bucket per
  address, and one per IPv6 /64 as a whole, PREFIX_SHARE times larger (the
  phones of an IPv6 LAN share one /64; one host can rotate through all its
  addresses, and then meets the /64's), in bounded memory (least recently
  seen clients forgotten). A client over its limit gets a Kiss-o'-Death
  `RATE` packet (stratum 0, LI 3, the timestamps carrying no time, as ntpd
  does) at most once per KOD_INTERVAL and is otherwise ignored; its requests
  while limited keep the bucket empty, so a flood stays silenced until it
  slows down.

What the responder returns is the cores' one shape (proto.results): the reply,
or a `Refused` event (its reason) followed by the KoD when one is sent; the
shell counts and logs from it. Nothing here imports a socket, gevent or time:
the shell (greenservers/shells/ntp.py) passes the clock readings in, and
tests drive it with a fake clock.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial
from typing import NamedTuple

from .clients import AddressBuckets, Shares, TokenBuckets
from .results import Event, Output

NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01
PACKET_LEN = 48
MAX_REQUEST_LEN = 1024  # a header, extension fields and a MAC fit well within
SUPPORTED_VERSIONS = frozenset({3, 4})

MODE_CLIENT, MODE_SERVER, MODE_CONTROL, MODE_PRIVATE = 3, 4, 6, 7
LEAP_NONE, LEAP_INSERT, LEAP_DELETE, LEAP_ALARM = 0, 1, 2, 3
STRATUM_KOD, MAX_STRATUM, STRATUM_UNSYNCHRONISED = 0, 15, 16
PHI = 15e-6  # RFC 5905 §7.2: frequency tolerance, seconds of dispersion per second
LOCAL_REFERENCE_ID = bytes([127, 127, 1, 1])  # chrony's and ntpd's "local clock" reference
UNKNOWN_REFERENCE_ID = bytes(4)
KISS_RATE = b"RATE"
# synchronised, but no daemon says to what: claim a modest stratum, so a
# client that also has a better source prefers it
STRATUM_WHEN_UPSTREAM_UNKNOWN = 4

# rate limiter, per address: sized for a site of phones behind one IPv4 address (a NAT):
# 500 phones polling every 64 s make 8 requests a second; a flood makes thousands.
# chronyd's default (1 per 8 s, burst 8) suits hosts.
RATE_PER_SECOND = 8.0  # sustained requests an address may make
BURST = 64  # requests an address may make at once (phones booting together behind a NAT)
# An IPv6 /64 as a whole: a LAN of phones, each with its own address, or one device using
# as many of its 2^64 addresses as it likes. 16 times an address's: a LAN of 1,000 phones
# booting together is answered at once (burst 1,024), and 8,000 polling every 64 s (128 a
# second); a device owning the /64 gets 128 answers a second (about 12 KB/s of 48-byte
# answers, and a victim of spoofed requests no more), a load the server does not notice,
# while every other client keeps its own buckets.
PREFIX_SHARE = 16
KOD_INTERVAL = 8.0  # seconds between two KoD packets to one limited address or /64
KOD_MIN_POLL = 4  # log2 seconds a KoD asks the client to wait at least
MAX_CLIENTS = 8192  # addresses remembered at once, and /64s as many (about 1 MB each)

_HEADER = struct.Struct("!BBbbII4sQ8sQ")  # everything up to the transmit timestamp
_STATE = struct.Struct("!bII4sQ")  # precision .. reference time: the clock's part of the header
_TIMESTAMP = struct.Struct("!Q")


# -- number formats (RFC 5905 §6) -------------------------------------------------


def ntp_timestamp(unix_ns: int) -> int:
    """NTP 64-bit timestamp (32.32 fixed point, era wraps in 2036) of a Unix time in ns."""
    seconds, nanoseconds = divmod(unix_ns, 1_000_000_000)
    return (((seconds + NTP_UNIX_OFFSET) & 0xFFFFFFFF) << 32) | ((nanoseconds << 32) // 1_000_000_000)


def unix_ns(ntp: int) -> int:
    """Unix time in ns of an NTP timestamp (RFC 4330 §3: top bit clear means era 1, from 2036)."""
    seconds = ntp >> 32
    if not seconds & 0x80000000:
        seconds += 1 << 32
    return (seconds - NTP_UNIX_OFFSET) * 1_000_000_000 + (((ntp & 0xFFFFFFFF) * 1_000_000_000) >> 32)


def ntp_short(seconds: float) -> int:
    """NTP short format (16.16 fixed point), clamped to its range; not a number: the largest."""
    if not seconds < 65536.0:  # also NaN: an unknown error is as bad as it gets
        return 0xFFFFFFFF
    return max(0, min(0xFFFFFFFF, int(seconds * 65536 + 0.5)))


# -- what our clock is worth ----------------------------------------------------


@dataclass(frozen=True)
class KernelClock:
    """A snapshot of the kernel clock discipline (adjtimex/ntp_adjtime)."""

    synchronised: bool  # STA_UNSYNC clear and the state is not TIME_ERROR
    leap: int  # LEAP_NONE, LEAP_INSERT (STA_INS) or LEAP_DELETE (STA_DEL)
    max_error: float  # seconds; the daemon's root distance, growing 500 ppm by itself
    read_at_ns: int  # Unix time of the snapshot


@dataclass(frozen=True)
class Upstream:
    """What the local time daemon says about the source the kernel clock follows."""

    stratum: int  # the stratum the daemon itself serves: the upstream's plus one
    reference_id: bytes
    reference_time_ns: int
    root_delay: float
    root_dispersion: float


@dataclass(frozen=True)
class ServerState:
    """The header fields every answer carries until the next snapshot."""

    leap: int
    stratum: int
    precision: int  # log2 seconds
    root_delay: float
    root_dispersion: float
    reference_id: bytes
    reference_time: int  # NTP timestamp; 0: never synchronised

    @property
    def synchronised(self) -> bool:
        return self.leap != LEAP_ALARM and self.stratum < STRATUM_UNSYNCHRONISED

    @cached_property
    def packed(self) -> bytes:
        """Bytes 3..23 of every answer (precision .. reference time): packed once per snapshot."""
        return _STATE.pack(self.precision, ntp_short(self.root_delay), ntp_short(self.root_dispersion),
                           self.reference_id, self.reference_time)


def server_state(kernel: KernelClock, upstream: Upstream | None, local_stratum: int, precision: int) -> ServerState:
    """Derive the header fields from the clock snapshot (see the module docstring)."""
    now_ns = kernel.read_at_ns
    if kernel.synchronised and upstream is not None and 1 <= upstream.stratum <= MAX_STRATUM:
        age = max(0.0, (now_ns - upstream.reference_time_ns) / 1e9)
        return ServerState(
            kernel.leap, upstream.stratum, precision, upstream.root_delay,
            upstream.root_dispersion + PHI * age, upstream.reference_id, ntp_timestamp(upstream.reference_time_ns),
        )
    if kernel.synchronised:
        # the kernel's maximum error is the root distance the daemon last set, plus its growth
        return ServerState(
            kernel.leap, STRATUM_WHEN_UPSTREAM_UNKNOWN, precision, 0.0, kernel.max_error,
            UNKNOWN_REFERENCE_ID, ntp_timestamp(now_ns),
        )
    if local_stratum:
        return ServerState(LEAP_NONE, local_stratum, precision, 0.0, 0.0, LOCAL_REFERENCE_ID, ntp_timestamp(now_ns))
    return ServerState(LEAP_ALARM, STRATUM_UNSYNCHRONISED, precision, 0.0, 0.0, UNKNOWN_REFERENCE_ID, 0)


def parse_chronyc_tracking(text: str) -> Upstream | None:
    """The Upstream from `chronyc -c tracking` output; None if chronyd is not synchronised.

    Fields: ref ID (hex), ref name, stratum, ref time (Unix s), offsets (4),
    skew, root delay, root dispersion, update interval, leap status.
    """
    fields = text.strip().split(",")
    if len(fields) < 14 or fields[13] == "Not synchronised":
        return None
    try:
        reference_id = bytes.fromhex(fields[0].rjust(8, "0"))
        stratum = int(fields[2])
        seconds, _, fraction = fields[3].partition(".")
        reference_time_ns = int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])
        root_delay, root_dispersion = float(fields[10]), float(fields[11])
    except ValueError:
        return None
    if len(reference_id) != 4 or not 1 <= stratum <= MAX_STRATUM:
        return None
    if not (0.0 <= root_delay < 65536.0 and 0.0 <= root_dispersion < 65536.0):  # nan/inf would break ntp_short
        return None
    return Upstream(stratum, reference_id, reference_time_ns, root_delay, root_dispersion)


# -- requests ----------------------------------------------------------------------


class Refused(Event, Exception):
    """A request not answered normally; `kiss_code` is the wire reference ID of a KoD, None: dropped.
    Raised inside the responder, it is also the event the responder returns for the shell to count and log.
    `kind` is one of a few fixed words (the log's rate limit counts by it): the reason may hold a length or a
    version, and as the kind it made 1,800 kinds of a line, each with its own budget."""

    def __init__(self, reason: str, kind: str, kiss_code: bytes | None = None):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.kiss_code = kiss_code


class Request(NamedTuple):
    version: int
    mode: int
    poll: int
    transmit: bytes  # the client's transmit timestamp, 8 raw bytes


def parse_request(data: bytes) -> Request:
    """Split the header; raises Refused (drop) for anything but a well-formed v3/v4 packet."""
    if len(data) < PACKET_LEN:
        raise Refused(f"short packet ({len(data)} bytes)", "short")
    if len(data) > MAX_REQUEST_LEN or len(data) % 4:
        raise Refused(f"malformed packet ({len(data)} bytes)", "malformed")
    first, poll = data[0], data[2]
    return Request((first >> 3) & 7, first & 7, poll - 256 if poll > 127 else poll, bytes(data[40:48]))


ANSWERED, KISSED, DROPPED = "answered", "kissed", "dropped"  # verdicts (verdict_of)


def verdict_of(outputs: list) -> str:
    """What became of a request, from what the responder returned (see NtpResponder.respond)."""
    first = outputs[0]
    if isinstance(first, bytes):
        return ANSWERED
    return KISSED if len(outputs) > 1 else DROPPED


# -- rate limiting -------------------------------------------------------------------


class RequestBuckets(TokenBuckets):
    """A token bucket of requests per key (proto.clients.TokenBuckets) that also keeps when the key's next KoD is due."""

    def __init__(self, rate: float, burst: float, max_keys: int, kod_interval: float):
        super().__init__(rate, burst, max_keys)
        self.kod_interval = kod_interval

    def new_entry(self, now: float) -> list:
        return [float(self.capacity), now, now]  # tokens, last refill, next KoD at

    def kod_due(self, key: str, now: float) -> bool:
        """Whether the key, just refused, gets a KoD (then the next is due KOD_INTERVAL later)."""
        entry = self._entries[key]
        if now < entry[2]:
            return False
        entry[2] = now + self.kod_interval
        return True


class RateLimiter(AddressBuckets):
    """The request rate of each address (`rate`, `burst`) and of each IPv6 /64 as a whole (`prefix_share` times
    both): proto.clients.AddressBuckets of RequestBuckets; `check(address, now)` gives the verdict.

    Every request takes a token, answered or not, and a bucket may go as far
    into debt as it can hold: a client sending faster than the rate stays
    limited; one that slows down is answered again after at most
    2 * burst / rate seconds. A request is counted against its /64 only when
    its address is within its own rate: one address flooding spends its own
    bucket, not its neighbours'. A /64 in debt (a device cycling through its
    addresses) is refused before its address is looked at, so such a flood
    adds a new address to the table only as fast as the /64's bucket refills,
    and forgets no one else's.
    """

    def __init__(self, rate: float = RATE_PER_SECOND, burst: int = BURST, kod_interval: float = KOD_INTERVAL,
                 max_clients: int = MAX_CLIENTS, prefix_share: float = PREFIX_SHARE):
        super().__init__(Shares(rate, rate * prefix_share), Shares(burst, burst * prefix_share), max_clients,
                         table=partial(RequestBuckets, kod_interval=kod_interval))

    def check(self, address: str, now: float) -> str:
        refused = self.take(address, 1.0, now, refused_pays=True)
        if refused is None:
            return ANSWERED
        table, key = refused
        return KISSED if table.kod_due(key, now) else DROPPED


# -- answers -----------------------------------------------------------------------


def _li_vn_mode(leap: int, version: int, mode: int) -> int:
    return (leap << 6) | (version << 3) | mode


def build_reply(request: Request, state: ServerState, received_ns: int, transmit_clock: Callable[[], int]) -> bytes:
    """The mode-4 answer (RFC 5905 §7.3); `transmit_clock()` (Unix ns) is read last."""
    header = (bytes((_li_vn_mode(state.leap, request.version, MODE_SERVER), state.stratum, request.poll & 0xFF))
              + state.packed + request.transmit + _TIMESTAMP.pack(ntp_timestamp(received_ns)))
    return header + _TIMESTAMP.pack(ntp_timestamp(transmit_clock()))


def build_kiss(request: Request, state: ServerState, code: bytes) -> bytes:
    """A Kiss-o'-Death (RFC 5905 §7.4): stratum 0, LI 3, the code as reference ID, no time in it."""
    return _HEADER.pack(
        _li_vn_mode(LEAP_ALARM, request.version, MODE_SERVER), STRATUM_KOD, max(request.poll, KOD_MIN_POLL),
        state.precision, 0, 0, code, 0, request.transmit, int.from_bytes(request.transmit, "big"),
    ) + request.transmit


def _answer_client(request: Request, client: str, limiter: RateLimiter | None, now: float) -> None:
    """Mode 3: check the version and the client's rate; returns normally when it is to be answered."""
    if request.version not in SUPPORTED_VERSIONS:
        raise Refused(f"unsupported version {request.version}", "version")
    if limiter is None:
        return
    verdict = limiter.check(client, now)
    if verdict is KISSED:
        raise Refused("rate limited, kiss-o'-death sent", "rate", KISS_RATE)
    if verdict is DROPPED:
        raise Refused("rate limited", "rate")


def _refuse_mode(request: Request, client: str, limiter: RateLimiter | None, now: float) -> None:
    """The named fallback: every mode but 3 is dropped unanswered."""
    raise Refused(MODE_NAMES.get(request.mode, f"mode {request.mode}") + " request", f"mode {request.mode}")  # 8 kinds


MODE_NAMES = {0: "reserved (mode 0)", 1: "symmetric active (mode 1)", 2: "symmetric passive (mode 2)",
              4: "server (mode 4)", 5: "broadcast (mode 5)", MODE_CONTROL: "control (mode 6)",
              MODE_PRIVATE: "private (mode 7)"}
MODE_HANDLERS = {MODE_CLIENT: _answer_client}


class NtpResponder:
    """Answers requests; holds only the rate limiter's state."""

    def __init__(self, limiter: RateLimiter | None = None):
        self.limiter = limiter if limiter is not None else RateLimiter()

    def respond(self, data: bytes, client: str, received_ns: int, state: ServerState, now: float,
                transmit_clock: Callable[[], int]) -> list[Output]:
        """One datagram from `client` (address text) received at `received_ns` (Unix ns): [reply],
        or [Refused] followed by the kiss-o'-death when one is due (proto.results).

        `now` is a monotonic time for the rate limiter; `transmit_clock()`
        returns the Unix time in ns and is called as late as possible.
        """
        try:
            request = parse_request(data)
            MODE_HANDLERS.get(request.mode, _refuse_mode)(request, client, self.limiter, now)
        except Refused as refusal:
            refusal.__traceback__ = None
            if refusal.kiss_code is None:
                return [refusal]
            return [refusal, build_kiss(request, state, refusal.kiss_code)]
        return [build_reply(request, state, received_ns, transmit_clock)]
