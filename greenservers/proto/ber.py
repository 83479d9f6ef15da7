"""A small, strict and fast BER codec for LDAP (RFC 4511 §5.1, X.690 §8).

LDAP messages use only a subset of BER, and this codec accepts only that:
one-byte tags (tag numbers 0..30), definite lengths (short form, or long
form with at most four length bytes), INTEGER/ENUMERATED of at most eight
content bytes, BOOLEAN of exactly one byte. Indefinite lengths, high tag
numbers, lengths running past their container and over-deep nesting are
refused with `BerError`, whose `result_code` is the LDAP resultCode to
answer with (protocolError, RFC 4511 §4.1.1).

Decoding works on offsets into one immutable `bytes` object (no copies of
sub-structures): `read_header(data, pos, end)` returns the tag and the
content's [start, end) span, and the typed readers take such spans.
Encoding builds `bytes` bottom-up with `tlv(tag, content)`; the SNMP agent
(proto.snmp) encodes its replies with it too.
"""

from __future__ import annotations

PROTOCOL_ERROR = 2  # LDAP resultCode for any malformed encoding (RFC 4511 §4.1.1)

MAX_LENGTH_BYTES = 4  # a length field above 4 GiB is never a valid LDAP message
MAX_INTEGER_BYTES = 8

# universal tags used by LDAP
BOOLEAN = 0x01
INTEGER = 0x02
OCTET_STRING = 0x04
NULL = 0x05
ENUMERATED = 0x0A
SEQUENCE = 0x30
SET = 0x31


class BerError(ValueError):
    """A malformed or over-limit encoding; `result_code` is the LDAP resultCode."""

    def __init__(self, message: str, result_code: int = PROTOCOL_ERROR):
        super().__init__(message)
        self.result_code = result_code


class TooMany(BerError):
    """More elements than the caller's limit (`children(..., limit)`)."""


class Incomplete(Exception):
    """More bytes are needed before the header can be read (framing only)."""


def read_header(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content_start, content_end) of the element at `pos`; it must end by `end`."""
    if pos + 2 > end:
        raise BerError("truncated element header")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise BerError("multi-byte tags are not used by LDAP")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise BerError("indefinite length is not allowed in LDAP (RFC 4511 §5.1)")
    else:
        count = first & 0x7F
        if count > MAX_LENGTH_BYTES:
            raise BerError(f"length field of {count} bytes")
        if pos + count > end:
            raise BerError("truncated length field")
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    if pos + length > end:
        raise BerError(f"element of {length} bytes runs past its container")
    return tag, pos, pos + length


def frame_length(buffer: bytes | bytearray) -> int:
    """Total size (header + content) of the element starting `buffer`; raises Incomplete."""
    size = len(buffer)
    if size < 2:
        raise Incomplete
    tag = buffer[0]
    if tag & 0x1F == 0x1F:
        raise BerError("multi-byte tags are not used by LDAP")
    first = buffer[1]
    if first < 0x80:
        return 2 + first
    if first == 0x80:
        raise BerError("indefinite length is not allowed in LDAP (RFC 4511 §5.1)")
    count = first & 0x7F
    if count > MAX_LENGTH_BYTES:
        raise BerError(f"length field of {count} bytes")
    if size < 2 + count:
        raise Incomplete
    return 2 + count + int.from_bytes(buffer[2:2 + count], "big")


def expect(data: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    """Read an element that must carry `tag`; returns its content span."""
    got, start, stop = read_header(data, pos, end)
    if got != tag:
        raise BerError(f"{what}: expected tag 0x{tag:02x}, got 0x{got:02x}")
    return start, stop


def read_integer(data: bytes, start: int, stop: int) -> int:
    size = stop - start
    if size == 0 or size > MAX_INTEGER_BYTES:
        raise BerError(f"INTEGER of {size} bytes")
    return int.from_bytes(data[start:stop], "big", signed=True)


def read_boolean(data: bytes, start: int, stop: int) -> bool:
    if stop - start != 1:
        raise BerError("BOOLEAN must be one byte")
    return data[start] != 0


def children(data: bytes, start: int, stop: int, limit: int | None = None, too_many: str = "") -> list[tuple[int, int, int]]:
    """The (tag, start, end) of every element inside a constructed content span.

    With `limit`, more elements than that raise TooMany(too_many) as soon as the
    one over it is read: a 256 KiB message of empty elements is not listed first.
    """
    out = []
    pos = start
    while pos < stop:
        if limit is not None and len(out) >= limit:
            raise TooMany(too_many or f"more than {limit} elements")
        tag, s, e = read_header(data, pos, stop)
        out.append((tag, s, e))
        pos = e
    return out


# -- encoding ------------------------------------------------------------------

SHORT_LENGTHS = [bytes((n,)) for n in range(0x80)] + [bytes((0x81, n)) for n in range(0x80, 0x100)]  # below 256


def encode_length(length: int) -> bytes:
    if length < 0x100:
        return SHORT_LENGTHS[length]
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 128:
        return bytes((tag, length)) + content
    return bytes((tag,)) + encode_length(length) + content


def integer(value: int, tag: int = INTEGER) -> bytes:
    if 0 <= value < 128:
        return bytes((tag, 1, value))
    size = (value + (value < 0)).bit_length() // 8 + 1
    return tlv(tag, value.to_bytes(size, "big", signed=True))


def enumerated(value: int) -> bytes:
    return integer(value, ENUMERATED)


def boolean(value: bool, tag: int = BOOLEAN) -> bytes:
    return bytes((tag, 1, 0xFF if value else 0))


def octets(value: bytes | str, tag: int = OCTET_STRING) -> bytes:
    if isinstance(value, str):
        value = value.encode()
    return tlv(tag, value)


def sequence(*parts: bytes, tag: int = SEQUENCE) -> bytes:
    return tlv(tag, b"".join(parts))
