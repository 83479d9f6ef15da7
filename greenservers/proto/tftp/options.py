"""TFTP requests and option negotiation (RFC 2347 OACK), without I/O.

Options understood here:
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
- windowsize (RFC 7440): blocks sent per acknowledgement, 1..MAX_WINDOWSIZE,
  and no more than MAX_WINDOW_BYTES in a window: what one ACK makes us send
  (a window sent again after a partial ACK or a timeout, or to a spoofed
  address by a blind ACK of the OACK) is at most one largest block. 64 blocks
  of 65464 octets made one 4-byte ACK cost 4 MiB, sent six times.
Unknown or out-of-range options are left out of the OACK (RFC 2347); when no
option is left, the transfer starts as in plain RFC 1350 (DATA 1 or ACK 0).
tftpy cannot decode an empty option value (RFC 2090's "multicast"): such a
request is served without its options.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .packets import DEFAULT_BLKSIZE, MAX_BLKSIZE, MIN_BLKSIZE, MODES, OP_RRQ, OP_WRQ, DiskFull, IllegalOperation, decode

MAX_WINDOWSIZE = 64  # bounds the burst one ACK can cause...
MAX_WINDOW_BYTES = 65536  # ...and so does this: a phone's 16 blocks of 1428 octets are 22 KiB
MAX_TIMEOUT = 10  # seconds; larger timeout options are declined (see the module docstring)


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


DEFAULT_LIMITS = Limits()


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
    if result.windowsize * result.blksize > MAX_WINDOW_BYTES:  # RFC 7440 §4 lets the server answer a smaller one
        result.windowsize = max(1, MAX_WINDOW_BYTES // result.blksize)
        result.oack["windowsize"] = str(result.windowsize)
    return result
