"""TFTP transfers without I/O: requests, option negotiation and the two transfer state machines.

Theory of operation
-------------------
A transfer starts with a request (RRQ or WRQ, RFC 1350 §5) on the server's
well-known port; the shell answers from a fresh socket (a new transfer ID,
RFC 1350 §4) and drives one machine per transfer here. A machine is fed
datagrams (`receive(datagram, now)`) and clock ticks (`timeout(now)` once
`now >= deadline`) and returns the datagrams to send. It never touches a
socket, a file or the clock: the file content comes from an injected
`Source` (size + `read(offset, length)`), an upload goes to an injected
`Sink` (`write`, `commit`, `abort`). Packets are encoded and decoded with
tftpy's packet classes only, picked by opcode as tftpy's factory does; their
decode() raises TftpException, UnicodeDecodeError or struct.error on bad
input, and all of them become IllegalOperation ("malformed"). tftpy cannot
decode an empty option value (RFC 2090's "multicast"): such a request is
served without its options.

Options (RFC 2347 OACK) understood here:
- blksize (RFC 2348): 8..65464 octets; larger requests are lowered to our maximum.
- tsize (RFC 2349): the file size for a read; the announced size for a write
  (refused with "disk full" when over the upload limit).
- timeout (RFC 2349): 1..MAX_TIMEOUT (10) s, our retransmission timeout once
  the transfer is established. RFC 2349 allows 1..255, and so do tftp-hpa's
  in.tftpd and atftpd; but the server must use the client's value or leave the
  option out of the OACK, and 255 s x 6 attempts let one never-answered request
  hold a transfer for 25 minutes (in.tftpd backs off to 63 x the timeout: 4.5
  hours). Clients ask for little: curl 6 s, U-Boot 5 s; one that asks for more
  is served with our own 1 s, which only means earlier retransmissions.
- windowsize (RFC 7440): blocks sent per acknowledgement, 1..MAX_WINDOWSIZE.
Unknown or out-of-range options are left out of the OACK (RFC 2347); when no
option is left, the transfer starts as in plain RFC 1350 (DATA 1 or ACK 0).

Reads (the sender, RFC 7440 §4): send a window of blocks after the last
acknowledged one and wait. An ACK for block n inside the window advances the
window to n+1 (an ACK short of the window's end means the client lost what
follows and the rest is sent again). An ACK we already acted on, or an older
one, is ignored: only a timeout retransmits, so a delayed duplicate ACK can
never double the traffic (the Sorcerer's Apprentice bug, RFC 1123 §4.2.3.1).
The final block is the first one shorter than blksize (possibly empty).

Writes (the receiver): in-order DATA is passed to the sink and acknowledged
every `windowsize` blocks and at the end; out-of-order or repeated DATA is
answered with one ACK of the last in-order block (once per gap, so a window
of stray packets cannot start an ACK storm). After the final block the
machine dallies one timeout to re-acknowledge a retransmitted final DATA
(RFC 1350 §6). The sink is committed before the final ACK, so a failed
commit answers an ERROR instead; any failure aborts the sink.

Block numbers are 16 bits on the wire and kept unbounded inside; past 65535
they roll over to 0, as tftp-hpa, curl and atftp expect. A timeout resends
the last window (or ACK) at most `max_retries` times, then the transfer
fails silently (the peer has vanished).

The first packet (the OACK, DATA 1 of a request without options, or a
write's ACK 0) goes to an address nobody has verified: a request's source is
trivially spoofed, and whatever we send it is reflected at whoever owns that
address. Until the peer acknowledges it (ACK 0 or 1, or DATA 1), a transfer
is *unverified*: the first packet is sent again `first_packet_retries` (1)
times after our own 1 s timeout (a negotiated timeout takes effect with the
OACK's acknowledgement), the transfer then waits for a late acknowledgement
until `first_packet_hold` (8 s: a client's own retransmission, after its 5 or
6 s timeout, still finds it) and gives up. Every byte sent while unverified
is taken from an `Allowance`: the source's bucket of unacknowledged bytes,
shared by all its transfers (see `Admission`); what the bucket refuses is not
sent (as if lost; a first packet refused ends the transfer at once), and the
bytes come back to the bucket when the peer acknowledges.

Each machine's dispatch is a table (state, event) -> handler with a named
fallback, `_on_unexpected`.

`Admission` is the admission policy of the whole server: transfers per
client and in total are limited, but an unverified transfer past its first
retransmission (a real client would have answered by then) holds its slot
only until someone needs it: a request that finds the limits reached takes
the slot of the oldest such transfer (of the same client when the per-client
limit is what is reached), and is refused as busy only when every slot is
held by a verified or a younger transfer (not even answered when every slot
of its own client awaits an acknowledgement). It also keeps the sources'
allowances: a request from a source whose allowance is spent is not read.
"""

from __future__ import annotations

import bisect
import enum
import logging
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from tftpy.TftpPacketTypes import (
    TftpPacketACK, TftpPacketDAT, TftpPacketERR, TftpPacketOACK, TftpPacketRRQ, TftpPacketWRQ,
)
from tftpy.TftpShared import TftpException

# tftpy logs every ERROR packet it decodes at level ERROR: a peer could flood the log through it.
logging.getLogger("tftpy").setLevel(logging.CRITICAL)

OP_RRQ, OP_WRQ, OP_DATA, OP_ACK, OP_ERROR, OP_OACK = 1, 2, 3, 4, 5, 6

DEFAULT_BLKSIZE = 512
MIN_BLKSIZE = 8
MAX_BLKSIZE = 65464  # RFC 2348: the largest that fits a UDP datagram
MAX_WINDOWSIZE = 64  # bounds the burst one ACK can cause
MAX_TIMEOUT = 10  # seconds; larger timeout options are declined (see the module docstring)
MAX_NETASCII_BYTES = 16 * 1024 * 1024  # converting needs one pass over the file: text files only
BLOCK_MODULO = 1 << 16
MODES = ("octet", "netascii")


# -- errors: each carries its TFTP error code (RFC 1350 §5, RFC 2347) --------


class TftpError(Exception):
    code = 0

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def datagram(self) -> bytes:
        return encode_error(self.code, self.message)


class FileNotFound(TftpError):
    code = 1


class AccessViolation(TftpError):
    code = 2


class DiskFull(TftpError):
    code = 3


class IllegalOperation(TftpError):
    code = 4


class FileExists(TftpError):
    code = 6


class OptionRefused(TftpError):
    code = 8


# -- packets (tftpy classes only) -------------------------------------------

# opcode -> tftpy class; what tftpy's TftpPacketFactory.parse() does, minus its eager
# debug-string formatting, which cost a third of the per-packet time in a boot storm
PACKET_CLASSES = {
    OP_RRQ: TftpPacketRRQ, OP_WRQ: TftpPacketWRQ, OP_DATA: TftpPacketDAT,
    OP_ACK: TftpPacketACK, OP_ERROR: TftpPacketERR, OP_OACK: TftpPacketOACK,
}
_MALFORMED = (TftpException, UnicodeDecodeError, struct.error, ValueError)


def decode(datagram: bytes, reusable: dict | None = None):
    """A tftpy packet object; raises IllegalOperation on anything malformed.

    `reusable` (opcode -> packet object) lets a transfer decode into the same few objects
    instead of new ones per datagram; the caller must be done with a packet before the next.
    """
    opcode = datagram[1] if len(datagram) > 2 and datagram[0] == 0 else None
    packet_class = PACKET_CLASSES.get(opcode)
    if packet_class is None:
        raise IllegalOperation("malformed packet: too short or unknown opcode")
    packet = reusable.get(opcode) if reusable is not None else None
    if packet is None:
        packet = packet_class()
        if reusable is not None:
            reusable[opcode] = packet
    packet.buffer = datagram
    try:
        return packet.decode()
    except _MALFORMED as exc:
        raise IllegalOperation(f"malformed packet: {exc}") from None


def encode_data(block: int, data: bytes, packet: TftpPacketDAT | None = None) -> bytes:
    """A DATA datagram; a sender may pass its own packet object to fill (one per transfer, not per block)."""
    packet = packet or TftpPacketDAT()
    packet.blocknumber = block % BLOCK_MODULO
    packet.data = data
    return packet.encode().buffer


def encode_ack(block: int) -> bytes:
    packet = TftpPacketACK()
    packet.blocknumber = block % BLOCK_MODULO
    return packet.encode().buffer


def encode_oack(options: dict[str, str]) -> bytes:
    packet = TftpPacketOACK()
    packet.options = options
    return packet.encode().buffer


def encode_error(code: int, message: str) -> bytes:
    packet = TftpPacketERR()
    packet.errorcode = code
    # tftpy encodes the message from its per-instance table: give it ours
    packet.errmsgs = {code: message.encode("ascii", "replace")[:200]}
    return packet.encode().buffer


# -- requests and option negotiation ------------------------------------------


@dataclass(frozen=True)
class Request:
    write: bool
    filename: str
    mode: str
    options: dict[str, str]  # names lower-cased (RFC 2347: case-insensitive)


def parse_request(datagram: bytes) -> Request:
    try:
        packet = decode(datagram)
    except IllegalOperation:
        # tftpy refuses empty option values (RFC 2090's "multicast\0\0"): serve such a
        # request without its options (RFC 2347 lets a server ignore them)
        packet = decode(_without_options(datagram))
    if packet.opcode not in (OP_RRQ, OP_WRQ):
        raise IllegalOperation(f"expected a read or write request, got opcode {packet.opcode}")
    if packet.mode not in MODES:
        raise IllegalOperation(f"transfer mode {packet.mode!r} not supported")
    options = {str(k).lower(): str(v) for k, v in packet.options.items()}
    return Request(packet.opcode == OP_WRQ, packet.filename, packet.mode, options)


def _without_options(datagram: bytes) -> bytes:
    end_of_name = datagram.find(b"\0", 2)
    end_of_mode = datagram.find(b"\0", end_of_name + 1) if end_of_name >= 0 else -1
    if end_of_mode < 0 or datagram[:2] not in (b"\0\1", b"\0\2"):
        raise IllegalOperation("malformed request")
    return datagram[:end_of_mode + 1]


@dataclass(frozen=True)
class Limits:
    max_blksize: int = MAX_BLKSIZE
    max_windowsize: int = MAX_WINDOWSIZE
    timeout: float = 1.0  # retransmission timeout unless the client negotiates one
    max_retries: int = 5
    first_packet_retries: int = 1  # the unacknowledged first packet is sent again this often...
    first_packet_hold: float = 8.0  # ... and a late acknowledgement is awaited this long in all
    upload_max_bytes: int = 16 * 1024 * 1024


@dataclass
class Negotiated:
    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: float = 1.0
    oack: dict[str, str] = field(default_factory=dict)  # what the OACK acknowledges; empty: no OACK


def _whole(value: str) -> int | None:
    value = value.strip()
    return int(value) if value.isdigit() and len(value) < 12 else None


def _blksize(result: Negotiated, value: str, request: Request, size: int | None, limits: Limits) -> None:
    asked = _whole(value)
    if asked is not None and asked >= MIN_BLKSIZE:
        result.blksize = min(asked, limits.max_blksize)
        result.oack["blksize"] = str(result.blksize)


def _tsize(result: Negotiated, value: str, request: Request, size: int | None, limits: Limits) -> None:
    announced = _whole(value)
    if announced is None:
        return
    if request.write:
        if announced > limits.upload_max_bytes:
            raise DiskFull(f"upload of {announced} bytes is over the limit of {limits.upload_max_bytes}")
        result.oack["tsize"] = str(announced)
    elif size:  # curl refuses "tsize 0" in an OACK as invalid; RFC 2347 lets us leave the option out
        result.oack["tsize"] = str(size)


def _timeout(result: Negotiated, value: str, request: Request, size: int | None, limits: Limits) -> None:
    seconds = _whole(value)
    if seconds is not None and 1 <= seconds <= MAX_TIMEOUT:
        result.timeout = float(seconds)
        result.oack["timeout"] = str(seconds)


def _windowsize(result: Negotiated, value: str, request: Request, size: int | None, limits: Limits) -> None:
    asked = _whole(value)
    if asked is not None and asked >= 1:
        result.windowsize = min(asked, limits.max_windowsize)
        result.oack["windowsize"] = str(result.windowsize)


OPTION_HANDLERS = {"blksize": _blksize, "tsize": _tsize, "timeout": _timeout, "windowsize": _windowsize}


def negotiate(request: Request, size: int | None, limits: Limits) -> Negotiated:
    """The options we accept (unknown ones are ignored, RFC 2347); `size` is the file's for a read."""
    result = Negotiated(timeout=limits.timeout)
    for name, value in request.options.items():
        handler = OPTION_HANDLERS.get(name)
        if handler is not None:
            handler(result, value, request, size, limits)
    return result


# -- file content -----------------------------------------------------------


class Source(Protocol):
    size: int

    def read(self, offset: int, length: int) -> bytes: ...


class Sink(Protocol):
    def write(self, data: bytes) -> None:
        """Keep the next piece; raise TftpError to refuse it (a budget or quota): the transfer is aborted."""

    def commit(self) -> None:
        """Make the upload visible; raise TftpError to refuse it."""

    def abort(self) -> None: ...


class BytesSource:
    """A rendered template or any content held in memory."""

    def __init__(self, data: bytes):
        self.data = data
        self.size = len(data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset:offset + length]

    def close(self) -> None:
        pass


class NetasciiSource:
    """Netascii view of a source (RFC 764): LF -> CR LF, CR -> CR NUL, with random access.

    The conversion is per byte, so the output offset of each input chunk is
    known after one counting pass; a read converts only the chunks it covers.
    """

    CHUNK = 64 * 1024

    def __init__(self, inner: Source):
        self.inner = inner
        self.starts = [0]  # output offset where input chunk i begins
        for offset in range(0, inner.size, self.CHUNK):
            chunk = inner.read(offset, self.CHUNK)
            self.starts.append(self.starts[-1] + len(chunk) + chunk.count(b"\n") + chunk.count(b"\r"))
        self.size = self.starts[-1]
        self._cached: tuple[int, bytes] = (-1, b"")

    def _converted(self, index: int) -> bytes:
        if self._cached[0] != index:
            raw = self.inner.read(index * self.CHUNK, self.CHUNK)
            self._cached = (index, raw.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n"))
        return self._cached[1]

    def read(self, offset: int, length: int) -> bytes:
        out = bytearray()
        while length > 0 and offset < self.size:
            index = bisect.bisect_right(self.starts, offset) - 1
            piece = self._converted(index)[offset - self.starts[index]:][:length]
            out += piece
            offset += len(piece)
            length -= len(piece)
        return bytes(out)


class NetasciiDecoder:
    """Netascii to local text for uploads: CR LF -> LF, CR NUL -> CR; a CR split across blocks is held."""

    def __init__(self, sink: Sink):
        self.sink = sink
        self.held_cr = False

    def write(self, data: bytes) -> None:
        if self.held_cr:
            data = b"\r" + data
            self.held_cr = False
        if data.endswith(b"\r"):
            data, self.held_cr = data[:-1], True
        self.sink.write(data.replace(b"\r\n", b"\n").replace(b"\r\0", b"\r"))

    def commit(self) -> None:
        if self.held_cr:
            self.sink.write(b"\r")
            self.held_cr = False
        self.sink.commit()

    def abort(self) -> None:
        self.sink.abort()


# -- the transfer state machines ----------------------------------------------


class State(enum.Enum):
    AWAIT_OACK_ACK = "awaiting the ACK of the OACK"
    SENDING = "sending"
    RECEIVING = "receiving"
    DALLYING = "dallying after the final ACK"
    DONE = "done"
    FAILED = "failed"

    __hash__ = object.__hash__  # identity, in C: the dispatch table is looked up per packet, and Enum hashes in Python


class Event(enum.Enum):
    DATA = "DATA"
    ACK = "ACK"
    ERROR = "ERROR"
    TIMEOUT = "timeout"
    OTHER = "unexpected packet"
    MALFORMED = "malformed packet"

    __hash__ = object.__hash__


EVENT_OF_OPCODE = {OP_DATA: Event.DATA, OP_ACK: Event.ACK, OP_ERROR: Event.ERROR}
FINISHED = (State.DONE, State.FAILED)
STREAMING = (State.SENDING, State.RECEIVING)  # the states a transfer spends its packets in


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


class Transfer:
    """Common part of both machines: dispatch, the first packet's schedule, retransmission bookkeeping, failure."""

    TABLE: dict[tuple[State, Event], str] = {}

    def __init__(self, negotiated: Negotiated, limits: Limits, allowance: Allowance | None = None):
        self.blksize = negotiated.blksize
        self.windowsize = negotiated.windowsize
        self.rto = limits.timeout  # ours until the peer acknowledges: the options are not agreed before
        self.negotiated_rto = negotiated.timeout
        self.oack = negotiated.oack
        self.max_retries = limits.max_retries
        self.first_retries, self.first_hold = limits.first_packet_retries, limits.first_packet_hold
        self.allowance = allowance
        self.state: State | None = None
        self.deadline: float | None = None
        self.started_at = 0.0
        self.retries = 0
        self.verified = False  # the peer acknowledged our first packet: it is at the address it claims
        self.unacknowledged = False  # failed because the first packet was never acknowledged
        self.withheld = False  # failed at once: the source's allowance did not permit the first packet
        self.failure: str | None = None  # why it failed, for the log
        self.peer_vanished = False  # failed by timeouts or the peer's own ERROR: nothing to log loudly
        self._handlers = {key: getattr(self, name) for key, name in self.TABLE.items()}  # bound once: a hot path
        self._packets: dict = {}  # decode()'s reusable packet objects: no handler keeps a packet

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def start(self, now: float) -> list[bytes]:
        """The first packet (the OACK, DATA 1 or ACK 0), if the source's allowance permits it."""
        self.started_at = now
        if self.allowance is None:
            return self._first_packet(now)
        if not self.allowance.permits(now):
            self._fail("nothing sent: the source's allowance of unacknowledged bytes is spent", vanished=True)
            self.withheld = True
            return []
        out = self._first_packet(now)
        self.allowance.take(sum(map(len, out)), now)
        return out

    def _first_packet(self, now: float) -> list[bytes]:
        raise NotImplementedError

    def _verify(self, now: float) -> None:
        """The peer acknowledged our first packet: the negotiated timeout applies, the allowance comes back."""
        self.verified, self.rto, self.retries = True, self.negotiated_rto, 0
        if self.allowance is not None:
            self.allowance.refund(now)

    def receive(self, datagram: bytes, now: float) -> list[bytes]:
        try:
            packet = decode(datagram, self._packets)
            event = EVENT_OF_OPCODE.get(packet.opcode, Event.OTHER)
        except IllegalOperation:
            packet, event = None, Event.MALFORMED
        return self._dispatch(event, packet, now)

    def timeout(self, now: float) -> list[bytes]:
        if self.deadline is None or now < self.deadline:
            return []
        if self.verified or self.allowance is None:
            return self._dispatch(Event.TIMEOUT, None, now)
        # unverified: a timeout sends the first packet again, if the allowance permits
        if not self.allowance.permits(now):
            self._retry(now)  # the schedule runs on as if this copy were lost on the way
            return []
        out = self._dispatch(Event.TIMEOUT, None, now)
        self.allowance.take(sum(map(len, out)), now)
        return out

    def _dispatch(self, event: Event, packet, now: float) -> list[bytes]:
        return self._handlers.get((self.state, event), self._on_unexpected)(packet, now)

    def _on_unexpected(self, packet, now: float) -> list[bytes]:
        if self.finished:
            return []
        what = f"opcode {packet.opcode}" if packet is not None else "a malformed packet"
        self._fail(f"unexpected {what} in state {self.state.value}")
        return [encode_error(IllegalOperation.code, "unexpected packet")]

    def _on_peer_error(self, packet, now: float) -> list[bytes]:
        message = packet.errmsg.decode("ascii", "replace") if packet.errmsg else ""
        self._fail(f"peer sent error {packet.errorcode} {message!r}", vanished=True)
        return []  # never acknowledge an ERROR (RFC 1350 §7)

    def _retry(self, now: float) -> bool:
        """Count one retransmission; False (and failed) when the retries are used up."""
        self.retries += 1
        if not self.verified:
            if self.retries > self.first_retries:
                self._fail(f"first packet not acknowledged within {self.first_hold:g} s", vanished=True)
                self.unacknowledged = True
                return False
            # the last retransmission of the first packet: then only wait, until the hold is over
            self.deadline = now + self.rto if self.retries < self.first_retries else self.started_at + self.first_hold
            return True
        if self.retries > self.max_retries:
            self._fail(f"no answer after {self.max_retries} retransmissions", vanished=True)
            return False
        self.deadline = now + self.rto
        return True

    def _fail(self, reason: str, vanished: bool = False) -> None:
        self.state, self.deadline, self.failure, self.peer_vanished = State.FAILED, None, reason, vanished


class ReadTransfer(Transfer):
    """The server side of an RRQ: sends `source` in windows of blocks."""

    TABLE = {
        (State.AWAIT_OACK_ACK, Event.ACK): "_on_oack_acknowledged",
        (State.AWAIT_OACK_ACK, Event.TIMEOUT): "_on_timeout",
        (State.AWAIT_OACK_ACK, Event.ERROR): "_on_peer_error",
        (State.SENDING, Event.ACK): "_on_ack",
        (State.SENDING, Event.TIMEOUT): "_on_timeout",
        (State.SENDING, Event.ERROR): "_on_peer_error",
    }

    def __init__(self, source: Source, negotiated: Negotiated, limits: Limits = Limits(), allowance: Allowance | None = None):
        super().__init__(negotiated, limits, allowance)
        self.source = source
        self.last_block = source.size // self.blksize + 1  # the first short block ends the file
        self.acked = 0  # highest block the client acknowledged
        self.sent = 0  # highest block sent
        self.bytes_sent = 0
        self._data_packet = TftpPacketDAT()

    def _first_packet(self, now: float) -> list[bytes]:
        self.deadline = now + self.rto
        if self.oack:
            self.state = State.AWAIT_OACK_ACK
            return [encode_oack(self.oack)]
        self.state = State.SENDING
        return self._send_window(now)

    def _send_window(self, now: float) -> list[bytes]:
        first, last = self.acked + 1, min(self.acked + self.windowsize, self.last_block)
        offset = (first - 1) * self.blksize
        if first == last:  # lock-step, the common case (windowsize 1)
            data = self.source.read(offset, self.blksize)
            self.sent, self.bytes_sent = last, self.bytes_sent + len(data)
            return [encode_data(first, data, self._data_packet)]
        chunk = self.source.read(offset, (last - first + 1) * self.blksize)
        datagrams = []
        for block in range(first, last + 1):
            start = (block - first) * self.blksize
            data = chunk[start:start + self.blksize]
            datagrams.append(encode_data(block, data, self._data_packet))
            self.bytes_sent += len(data)
        self.sent = last
        return datagrams

    def _block_of(self, wire: int) -> int | None:
        """The block an ACK's 16-bit number means, if it lies in [acked, sent]; else None."""
        block = self.acked + ((wire - self.acked) % BLOCK_MODULO)
        return block if block <= self.sent else None

    def _on_oack_acknowledged(self, packet, now: float) -> list[bytes]:
        if packet.blocknumber != 0:
            return []
        self._verify(now)
        self.state, self.deadline = State.SENDING, now + self.rto
        return self._send_window(now)

    def _on_ack(self, packet, now: float) -> list[bytes]:
        block = self._block_of(packet.blocknumber)
        if block is None or block == self.acked:
            return []  # old or repeated ACK: only a timeout retransmits (Sorcerer's Apprentice)
        if not self.verified:
            self._verify(now)
        self.acked, self.retries = block, 0
        if block == self.last_block:
            self.state, self.deadline = State.DONE, None
            return []
        self.deadline = now + self.rto
        return self._send_window(now)

    def _on_timeout(self, packet, now: float) -> list[bytes]:
        if not self._retry(now):
            return []
        if self.state is State.AWAIT_OACK_ACK:
            return [encode_oack(self.oack)]
        return self._send_window(now)


class WriteTransfer(Transfer):
    """The server side of a WRQ: receives blocks into `sink`."""

    TABLE = {
        (State.RECEIVING, Event.DATA): "_on_data",
        (State.RECEIVING, Event.TIMEOUT): "_on_timeout",
        (State.RECEIVING, Event.ERROR): "_on_peer_error",
        (State.DALLYING, Event.DATA): "_on_data_after_end",
        (State.DALLYING, Event.TIMEOUT): "_on_dally_over",
        (State.DALLYING, Event.ERROR): "_on_dally_over",
    }

    def __init__(self, sink: Sink, negotiated: Negotiated, limits: Limits = Limits(), netascii: bool = False,
                 allowance: Allowance | None = None):
        super().__init__(negotiated, limits, allowance)
        self.sink = NetasciiDecoder(sink) if netascii else sink
        self.max_bytes = limits.upload_max_bytes
        self.expected = 1  # next block wanted
        self.unacked = 0  # in-order blocks received since the last ACK
        self.gap_answered_for = 0  # `expected` value whose gap was already answered
        self.bytes_received = 0

    def _first_packet(self, now: float) -> list[bytes]:
        self.state, self.deadline = State.RECEIVING, now + self.rto
        return [self._handshake()]

    def _handshake(self) -> bytes:
        return encode_oack(self.oack) if self.oack else encode_ack(0)

    def _current_ack(self) -> bytes:
        return self._handshake() if self.expected == 1 else encode_ack(self.expected - 1)

    def _on_data(self, packet, now: float) -> list[bytes]:
        if packet.blocknumber != self.expected % BLOCK_MODULO:
            if self.gap_answered_for == self.expected:
                return []
            self.gap_answered_for, self.unacked = self.expected, 0
            return [self._current_ack()]
        data = packet.data
        if len(data) > self.blksize:
            return self._abort(IllegalOperation(f"block of {len(data)} bytes is over the blksize {self.blksize}"))
        self.bytes_received += len(data)
        if self.bytes_received > self.max_bytes:
            return self._abort(DiskFull(f"upload is over the limit of {self.max_bytes} bytes"))
        if not self.verified:
            self._verify(now)
        try:
            self.sink.write(data)
        except TftpError as exc:  # the sink refuses more (a budget or a quota)
            return self._abort(exc)
        block = self.expected
        self.expected, self.retries, self.unacked = block + 1, 0, self.unacked + 1
        self.deadline = now + self.rto
        if len(data) < self.blksize:
            try:
                self.sink.commit()
            except TftpError as exc:
                return self._abort(exc)
            self.final_ack = encode_ack(block)
            self.state = State.DALLYING
            return [self.final_ack]
        if self.unacked >= self.windowsize:
            self.unacked = 0
            return [encode_ack(block)]
        return []

    def _on_timeout(self, packet, now: float) -> list[bytes]:
        if not self._retry(now):
            return []  # _fail aborted the sink
        self.unacked = 0
        return [self._current_ack()]

    def _on_data_after_end(self, packet, now: float) -> list[bytes]:
        if packet.blocknumber == (self.expected - 1) % BLOCK_MODULO:
            return [self.final_ack]  # our final ACK was lost
        return []

    def _on_dally_over(self, packet, now: float) -> list[bytes]:
        self.state, self.deadline = State.DONE, None
        return []

    def _abort(self, error: TftpError) -> list[bytes]:
        self._fail(error.message)
        return [error.datagram()]

    def _fail(self, reason: str, vanished: bool = False) -> None:
        if self.state is State.RECEIVING:
            self.sink.abort()
        super()._fail(reason, vanished)


# -- admission: transfer slots and what unverified sources may be sent ---------------------


FIRST_PACKET_MAX = DEFAULT_BLKSIZE + 4  # DATA 1 of a request without options; an OACK or ERROR is smaller
ALLOWANCE_REFILL = 60.0  # seconds for an empty allowance to fill again (see Admission)


class Slot:
    """One admitted transfer: whose it is, when it began, whether it was verified or released;
    `owner` is the shell's handle (its greenlet) for ending it when its slot is taken."""

    __slots__ = ("client", "started", "verified", "released", "evicted", "owner")

    def __init__(self, client: str, started: float):
        self.client, self.started = client, started
        self.verified = self.released = self.evicted = False
        self.owner = None


class Admission:
    """Which requests get a transfer (see the module docstring), and what unverified sources may be sent.

    Slots: at most `max_total` transfers, `max_per_client` per client (its
    address). A request over either limit takes the slot of the oldest
    unverified transfer past its first retransmission (of the same client for
    the per-client limit); failing that, it is refused as busy, or not answered
    at all when every slot of its client awaits an acknowledgement (the client
    has acknowledged nothing it was sent: it is spoofed or it has what it
    needs). Allowance: a peers.TokenBuckets of bytes per source key (IPv4
    address, IPv6 /64) with room for `max_per_client` first packets sent 1 +
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

    def hears(self, key: str, client: str, now: float) -> bool:
        """Whether a request is read at all: not when the source's allowance (`key`) is spent, nor
        while every slot of the client awaits an acknowledgement and none may be given up yet."""
        if self.buckets.level(key, now) <= 0:
            return False
        return not (self.per_client[client] >= self.max_per_client and not self.verified_per_client[client]
                    and self._oldest_unverified(client, now) is None)

    def allowance(self, key: str, now: float, transfer: bool = True) -> Allowance:
        """The allowance of a source: for an admitted request's transfer, its first packet paid for at once
        (see Allowance); else for a refusal (an ERROR) to it."""
        allowance = Allowance(self.buckets, key)
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
