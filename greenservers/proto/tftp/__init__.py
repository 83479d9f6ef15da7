"""TFTP without I/O: requests, option negotiation, the two transfer state machines and admission.

A transfer starts with a request (RRQ or WRQ, RFC 1350 §5) on the server's
well-known port; the shell (greenservers.shells.tftp) admits it or not
(`admission`: slots per client and in total, and what an unverified source
may be sent), negotiates its options (`options`) and answers it from a fresh
socket, driving one state machine per transfer (`transfers`) over the bytes
of an injected source or sink (`content`). Packets are tftpy's (`packets`).
Each module's docstring tells its part of the theory of operation; this
package exports what the shell and the tests use.
"""

from .admission import ALLOWANCE_REFILL, ANSWERED_FOR, FIRST_PACKET_MAX, MIN_PACE, Admission, Allowance, Hearing, Slot
from .content import MAX_NETASCII_BYTES, NETASCII_CHUNK, BytesSource, NetasciiDecoder, NetasciiSource, Sink, Source, netascii_starts
from .options import MAX_TIMEOUT, MAX_WINDOW_BYTES, MAX_WINDOWSIZE, Limits, Negotiated, Request, negotiate, parse_request
from .packets import (
    BLOCK_MODULO,
    DEFAULT_BLKSIZE,
    MAX_BLKSIZE,
    MIN_BLKSIZE,
    MODES,
    OP_ACK,
    OP_DATA,
    OP_ERROR,
    OP_OACK,
    OP_RRQ,
    OP_WRQ,
    AccessViolation,
    DiskFull,
    FileExists,
    FileNotFound,
    IllegalOperation,
    OptionRefused,
    TftpError,
    decode,
    encode_ack,
    encode_data,
    encode_error,
    encode_oack,
)
from .transfers import EVENT_OF_OPCODE, FINISHED, STREAMING, Event, ReadTransfer, State, Transfer, WriteTransfer

__all__ = [
    "ALLOWANCE_REFILL", "ANSWERED_FOR", "AccessViolation", "Admission", "Allowance", "BLOCK_MODULO", "BytesSource",
    "DEFAULT_BLKSIZE", "DiskFull", "EVENT_OF_OPCODE", "Event", "FINISHED", "FIRST_PACKET_MAX", "FileExists",
    "FileNotFound", "Hearing", "IllegalOperation", "Limits", "MAX_BLKSIZE", "MAX_NETASCII_BYTES", "MAX_TIMEOUT",
    "MAX_WINDOW_BYTES", "MAX_WINDOWSIZE", "MIN_BLKSIZE", "MIN_PACE", "MODES", "NETASCII_CHUNK", "Negotiated", "NetasciiDecoder",
    "NetasciiSource", "OP_ACK", "OP_DATA", "OP_ERROR", "OP_OACK", "OP_RRQ", "OP_WRQ", "OptionRefused", "ReadTransfer", "Request",
    "STREAMING", "Sink", "Slot", "Source", "State", "TftpError", "Transfer", "WriteTransfer", "decode", "encode_ack",
    "encode_data", "encode_error", "encode_oack", "negotiate", "netascii_starts", "parse_request",
]
