"""The two TFTP transfer state machines, without I/O: a read's sender and a write's receiver.

The shell answers a request from a fresh socket (a new transfer ID, RFC 1350
§4) and drives one machine per transfer. A machine is fed datagrams
(`receive(datagram, now)`) and clock ticks (`timeout(now)` once
`now >= deadline`) and returns the datagrams to send (proto.results: bytes
only; what became of the transfer is the machine's state). It never touches
a socket, a file or the clock: the content comes from an injected Source, an
upload goes to an injected Sink (proto.tftp.content).

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
is taken from an `Allowance` (proto.tftp.admission): the source's bucket of
unacknowledged bytes, shared by all its transfers; what the bucket refuses is
not sent (as if lost; a first packet refused ends the transfer at once), and
the bytes come back to the bucket when the peer acknowledges.

Each machine's dispatch is a table (state, event) -> handler with a named
fallback, `_on_unexpected`.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable

from .admission import Allowance
from .content import NetasciiDecoder, Sink, Source
from .options import DEFAULT_LIMITS, Limits, Negotiated
from .packets import (
    BLOCK_MODULO,
    OP_ACK,
    OP_DATA,
    OP_ERROR,
    DiskFull,
    IllegalOperation,
    TftpError,
    TftpPacketDAT,
    decode,
    encode_ack,
    encode_data,
    encode_error,
    encode_oack,
)


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


def dispatch_table(handlers: dict[State, dict[Event, str]]) -> dict[tuple[State, Event], str]:
    """A machine's dispatch table, (state, event) -> handler name, written state by state."""
    return {(state, event): name for state, of_state in handlers.items() for event, name in of_state.items()}
@functools.cache
def _handlers_of(machine: type) -> dict[tuple[State, Event], Callable]:
    """A machine class's dispatch table with its functions looked up once: a hot path. Functions, called with
    the machine: its bound methods, kept by each machine, made a reference cycle per transfer, which only the
    cyclic collector frees (under a flood of spoofed requests, full collections of 80,000 objects held the
    loop 93-179 ms every 1.25 s)."""
    return {key: getattr(machine, name) for key, name in machine.TABLE.items()}


FINISHED = (State.DONE, State.FAILED)
STREAMING = (State.SENDING, State.RECEIVING)  # the states a transfer spends its packets in


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
        self._handlers = _handlers_of(type(self))
        self._packets: dict = {}  # decode()'s reusable packet objects: no handler keeps a packet

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def commits_with(self, datagram: bytes) -> bool:
        """Whether receiving `datagram` may make the sink commit (sync a file to disk): a shell then receives
        it where it may wait. A read never commits."""
        return False

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
        return self._handlers.get((self.state, event), type(self)._on_unexpected)(self, packet, now)

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

    TABLE = dispatch_table({
        State.AWAIT_OACK_ACK: {Event.ACK: "_on_oack_acknowledged", Event.TIMEOUT: "_on_timeout", Event.ERROR: "_on_peer_error"},
        State.SENDING: {Event.ACK: "_on_ack", Event.TIMEOUT: "_on_timeout", Event.ERROR: "_on_peer_error"},
    })

    def __init__(self, source: Source, negotiated: Negotiated, limits: Limits = DEFAULT_LIMITS, allowance: Allowance | None = None):
        super().__init__(negotiated, limits, allowance)
        self.source = source
        self.last_block = source.size // self.blksize + 1  # the first short block ends the file
        self.acked = 0  # highest block the client acknowledged
        self.sent = 0  # highest block sent
        self.bytes_sent = 0
        self._data_packet = TftpPacketDAT()

    @property
    def moved(self) -> int:
        """Bytes the peer has acknowledged (for admission's pace: how fast it takes what it asked for)."""
        return self.acked * self.blksize

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

    TABLE = dispatch_table({
        State.RECEIVING: {Event.DATA: "_on_data", Event.TIMEOUT: "_on_timeout", Event.ERROR: "_on_peer_error"},
        State.DALLYING: {Event.DATA: "_on_data_after_end", Event.TIMEOUT: "_on_dally_over", Event.ERROR: "_on_dally_over"},
    })

    def __init__(self, sink: Sink, negotiated: Negotiated, limits: Limits = DEFAULT_LIMITS, netascii: bool = False,
                 allowance: Allowance | None = None):
        super().__init__(negotiated, limits, allowance)
        self.sink = NetasciiDecoder(sink) if netascii else sink
        self.max_bytes = limits.upload_max_bytes
        self.expected = 1  # next block wanted
        self.unacked = 0  # in-order blocks received since the last ACK
        self.gap_answered_for = 0  # `expected` value whose gap was already answered
        self.bytes_received = 0

    @property
    def moved(self) -> int:
        """Bytes received (for admission's pace)."""
        return self.bytes_received

    def commits_with(self, datagram: bytes) -> bool:
        # the block expected, shorter than a whole one, ends the upload (a look at its bytes, not a decode)
        return (self.state is State.RECEIVING and int.from_bytes(datagram[:2], "big") == OP_DATA
                and len(datagram) - 4 < self.blksize and int.from_bytes(datagram[2:4], "big") == self.expected % BLOCK_MODULO)

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
