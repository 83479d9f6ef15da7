"""TFTP packets (RFC 1350 §5, RFC 2347): decoded and encoded with tftpy's packet classes only.

They are picked by opcode as tftpy's factory does; their decode() raises
TftpException, UnicodeDecodeError or struct.error on bad input, and all of
them become IllegalOperation ("malformed"). Every error carries its TFTP
error code, so a refusal is answered with the right ERROR packet.

tftpy's two modules used here import nothing but logging, struct and sys, but
the package's __init__ imports tftpy's own client and server (socket, select),
which a sans-IO core must not: unless tftpy is imported already, the package
is entered without running its __init__ (`_packets_only`), so that
`tftpy.TftpPacketTypes` and `tftpy.TftpShared` are the usual modules, and
nothing else of tftpy is loaded.
"""

from __future__ import annotations

import importlib.util
import logging
import struct
import sys


def _packets_only() -> None:
    """Make `import tftpy.X` load tftpy's submodule X alone, if tftpy is not imported yet."""
    if "tftpy" not in sys.modules:
        spec = importlib.util.find_spec("tftpy")
        sys.modules["tftpy"] = importlib.util.module_from_spec(spec)  # the package with its path, its __init__ not run


_packets_only()

from tftpy.TftpPacketTypes import TftpPacketACK, TftpPacketDAT, TftpPacketERR, TftpPacketOACK, TftpPacketRRQ, TftpPacketWRQ  # noqa: E402
from tftpy.TftpShared import TftpException  # noqa: E402

# tftpy logs every ERROR packet it decodes at level ERROR: a peer could flood the log through it.
logging.getLogger("tftpy").setLevel(logging.CRITICAL)

OP_RRQ, OP_WRQ, OP_DATA, OP_ACK, OP_ERROR, OP_OACK = 1, 2, 3, 4, 5, 6

DEFAULT_BLKSIZE = 512
MIN_BLKSIZE = 8
MAX_BLKSIZE = 65464  # RFC 2348: the largest that fits a UDP datagram
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
