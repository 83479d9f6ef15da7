"""The kernel's socket filter admitting only datagrams from trusted networks: how SNMP sheds an untrusted flood.

A flood of datagrams from addresses a shell drops anyway (SNMP's sources
not in `snmp_trusted`) still costs a system call and a turn of the loop for
each, read only to be dropped. `program(networks, family)` compiles the
networks into classic BPF, the filter language of SO_ATTACH_FILTER, which
the kernel runs on each datagram before it is queued on the socket: a
datagram from elsewhere is dropped there, never read, never woken for, and
takes no room in the receive buffer that the trusted clients' requests wait
in. The program follows `proto.snmp.address_in` exactly: on a dual-stack
socket an IPv4 client (`::ffff:a.b.c.d` to recvfrom) matches an IPv4 network
or an IPv6 one holding its mapped address, and an IPv6 source in
`::ffff:0:0/96` matches the IPv4 networks too; on an IPv4 socket IPv4
networks only.

`KernelShed` is a shell's use of it: the shell tells it how many datagrams
it dropped (`dropped`); past FLOOD_DATAGRAMS in a second it attaches the
filter for SHED_SECONDS, then takes it off to see whether the flood goes on
(the user-space drop, with its log line naming each source, is kept for
ordinary mistakes: a monitoring system not yet in the list). While it is
on, `tick` (once a second) rebuilds it when the networks change and says how
many datagrams the kernel dropped since it last looked (the socket's drop
counter, SO_MEMINFO, counting a full receive buffer's losses too: a flood
fills the buffer before it is a second old; the first reading of a shed
counts every loss since the socket was bound or the last shed ended). Linux only: where the
kernel refuses (or the list is too long for a program), the shell goes on
dropping in user space and says why in its log (`failure`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import socket
import struct
from collections.abc import Iterable

FLOOD_DATAGRAMS = 1000  # dropped within a second: a flood (an ordinary mistake sends a few a second)
SHED_SECONDS = 10.0  # how long the kernel drops for, once a flood is seen
MAX_INSTRUCTIONS = 4096  # the kernel's BPF_MAXINSNS

SO_ATTACH_FILTER, SO_DETACH_FILTER, SO_MEMINFO = 26, 27, 55  # Linux's values; Python does not export them
SK_MEMINFO_DROPS, SK_MEMINFO_VARS = 8, 9

# classic BPF: struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}
_INSTRUCTION = struct.Struct("=HBBI")
LD_W, LD_B = 0x00 | 0x00 | 0x20, 0x00 | 0x10 | 0x20  # BPF_LD | size | BPF_ABS
ALU_AND, ALU_RSH = 0x04 | 0x50, 0x04 | 0x70  # BPF_ALU | op | BPF_K
JEQ, JA = 0x05 | 0x10, 0x05 | 0x00  # BPF_JMP | op | BPF_K
RET = 0x06  # BPF_RET | BPF_K: the bytes to keep, 0 drops
TAX, TXA = 0x07 | 0x00, 0x07 | 0x80  # BPF_MISC
NET = 0x100000  # SKF_NET_OFF, negated: loads from the IP header, wherever the datagram's data begins
KEEP, DROP = 0xFFFFFFFF, 0

MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _at(offset: int) -> int:
    """k of a load from the IP header's `offset`."""
    return (offset - NET) & 0xFFFFFFFF


def _words(value: int) -> list[int]:
    """A 128-bit number as its four 32-bit words, first first (BPF loads in network order)."""
    return [(value >> shift) & 0xFFFFFFFF for shift in (96, 64, 32, 0)]


def _ipv4_networks(networks: Iterable[_Network], family: int) -> list[ipaddress.IPv4Network]:
    """The IPv4 networks an IPv4 source is checked against: on a dual-stack socket, the IPv6 networks'
    share of ::ffff:0:0/96 too (a client there is `::ffff:a.b.c.d` to address_in)."""
    found = []
    for net in networks:
        if net.version == 4:
            found.append(net)
        elif family == socket.AF_INET6 and net.overlaps(MAPPED):
            inner = net if net.prefixlen >= MAPPED.prefixlen else MAPPED
            found.append(ipaddress.IPv4Network((int(inner.network_address) & 0xFFFFFFFF, inner.prefixlen - 96)))
    return found


def program(networks: Iterable[_Network], family: int) -> bytes | None:
    """The filter admitting datagrams from `networks` only, for a socket of `family`; None when it would be
    longer than the kernel takes."""
    networks = tuple(networks)
    code: list[tuple[int, int, int, int]] = []

    def emit(op: int, k: int = 0, jt: int = 0, jf: int = 0) -> int:
        code.append((op, jt, jf, k))
        return len(code) - 1

    def ipv4_checks() -> None:  # the source in X
        for net in _ipv4_networks(networks, family):
            emit(TXA)
            emit(ALU_AND, int(net.netmask))
            emit(JEQ, int(net.network_address), 0, 1)
            emit(RET, KEEP)
        emit(RET, DROP)

    if family == socket.AF_INET6:
        emit(LD_B, _at(0))
        emit(ALU_RSH, 4)
        emit(JEQ, 4, 0, 1)
        to_ipv4 = emit(JA)  # an IPv4 datagram on the dual-stack socket
        for net in (net for net in networks if net.version == 6):
            checks = [(i, mask, value) for i, (mask, value) in
                      enumerate(zip(_words(int(net.netmask)), _words(int(net.network_address)), strict=True)) if mask]
            for n, (i, mask, value) in enumerate(checks):
                left = len(checks) - n - 1  # word checks after this one, 3 instructions each
                emit(LD_W, _at(8 + 4 * i))
                emit(ALU_AND, mask)
                emit(JEQ, value, 0, 3 * left + 1)  # a mismatch skips the rest of this network and its RET
            emit(RET, KEEP)
        # an IPv6 source in ::ffff:0:0/96 is also its IPv4 address to address_in
        for i, word in enumerate(_words(int(MAPPED.network_address))[:3]):
            emit(LD_W, _at(8 + 4 * i))
            emit(JEQ, word, 0, 7 - 2 * i)  # no: to the DROP after the jump below
        emit(LD_W, _at(20))
        emit(TAX)
        to_checks = emit(JA)
        emit(RET, DROP)
        ipv4 = emit(LD_W, _at(12))
        emit(TAX)
        checks = len(code)
        ipv4_checks()
        code[to_ipv4] = (JA, 0, 0, ipv4 - to_ipv4 - 1)
        code[to_checks] = (JA, 0, 0, checks - to_checks - 1)
    else:
        emit(LD_W, _at(12))
        emit(TAX)
        ipv4_checks()
    if len(code) > MAX_INSTRUCTIONS:
        return None
    return b"".join(_INSTRUCTION.pack(*instruction) for instruction in code)


def attach(sock: socket.socket, filter_program: bytes) -> None:
    """Put `filter_program` on `sock` (replacing any filter it had, atomically). OSError if the kernel refuses."""
    buffer = ctypes.create_string_buffer(filter_program, len(filter_program))
    fprog = struct.pack("@HP", len(filter_program) // _INSTRUCTION.size, ctypes.addressof(buffer))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies the program


def detach(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # none attached
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)


def drops(sock: socket.socket) -> int:
    """The socket's drop counter: datagrams its filter refused or its full buffer could not take (a u32)."""
    return struct.unpack(f"={SK_MEMINFO_VARS}I", sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * SK_MEMINFO_VARS))[SK_MEMINFO_DROPS]


class TooLong(OSError):
    """The networks make a program longer than the kernel takes."""


def _why(refusal: OSError) -> str:
    """Why the kernel does not drop, as the shell logs it."""
    if isinstance(refusal, TooLong):
        return "the trusted list holds too many networks for a kernel filter"
    return f"the kernel refused the filter ({refusal.strerror or refusal})"


class KernelShed:
    """One socket's flood shedding: when the kernel drops for its shell, and how much it dropped."""

    def __init__(self, sock: socket.socket, family: int):
        self.sock, self.family = sock, family
        self.window_started, self.window_dropped = -1e9, 0  # the current second's drops in user space
        self.until: float | None = None  # while attached: when it comes off
        self.networks: tuple | None = None  # what the attached filter admits
        self.counted = 0  # the drop counter when last read (a new socket's starts at 0)
        self.refused: tuple | None = None  # networks too many for a filter (not compiled again)
        self.retry_at = -1e9  # after the kernel refused a filter: when to ask again
        self.failure: str | None = None  # why the kernel does not drop (for the shell's log), until the shell takes it

    @property
    def attached(self) -> bool:
        return self.until is not None

    def dropped(self, count: int, now: float, networks: tuple) -> bool:
        """`count` datagrams dropped in user space at `now`; True when that made a flood and the kernel drops from
        now on (the shell says so in its log)."""
        if now - self.window_started >= 1.0:
            self.window_started, self.window_dropped = now, 0
        self.window_dropped += count
        if self.window_dropped <= FLOOD_DATAGRAMS or self.attached or networks == self.refused or now < self.retry_at:
            return False
        try:
            drops(self.sock)  # the counter must be readable: what the kernel drops is counted
            self._attach(networks)
        except OSError as exc:  # not Linux, or the kernel refuses (optmem_max): user space drops
            self.failure = _why(exc)
            if isinstance(exc, TooLong):
                self.refused = networks  # not compiled again until the networks change
            else:
                self.retry_at = now + 60.0
            return False
        self.until = now + SHED_SECONDS  # the next tick counts from the last reading: a full buffer's drops before it too
        return True

    def tick(self, now: float, networks: tuple) -> int:
        """Once a second while attached: the kernel's drops since the last tick; the filter follows `networks`,
        and comes off after SHED_SECONDS."""
        if not self.attached:
            return 0
        if now >= self.until:
            self._off()
        elif networks != self.networks:
            try:
                self._attach(networks)
            except OSError as exc:  # the new list refused: every datagram to user space again
                self._off()
                self.failure = _why(exc)
        try:
            counted = drops(self.sock)
        except OSError:
            return 0
        new, self.counted = (counted - self.counted) & 0xFFFFFFFF, counted
        return new

    def _off(self) -> None:
        detach(self.sock)
        self.until, self.networks = None, None

    def _attach(self, networks: tuple) -> None:
        compiled = program(networks, self.family)
        if compiled is None:
            raise TooLong("too many networks for a socket filter")
        attach(self.sock, compiled)
        self.networks = networks
