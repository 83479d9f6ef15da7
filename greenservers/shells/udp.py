"""What the UDP shells share: the read turn, each datagram's local address (pktinfo) and kernel receive time,
replies sent from its local address, ICMP errors.

A socket bound to a wildcard address ("PORT", 0.0.0.0:PORT, [::]:PORT,
`Binding.is_wildcard`) on a host with several addresses must answer from the
address each request came to: a client drops a reply from another source.
So the binder asks the kernel for every UDP datagram's local address
(`enable_pktinfo`: IP_PKTINFO, IPV6_RECVPKTINFO), and it comes with the
datagram's ancillary data:

- `UdpServer`, the base of the SNMP and NTP servers, handles each datagram
  inline in the socket's read callback (spawn=None: the cores never block,
  so the kernel's receive buffer is the only queue), for READ_TURN seconds
  at most per callback (`turn_left`): then the loop polls and serves the
  other sockets before this one's next datagrams (gevent's callback reads
  up to 100, and 100 costly SNMP requests held the loop 100-300 ms); `reply()` sends from
  the request's local address on a wildcard socket (`pktinfo_of`), or lets
  routing choose where the kernel refuses that pktinfo.
- TFTP answers each request from a socket of its own, bound to the
  request's `local_address`.

NTP and TFTP's listener also ask for each datagram's kernel receive time
(SO_TIMESTAMPNS, `received_ns`): NTP's receive timestamp, and how long a
TFTP request waited in the socket's buffer.

An ICMP error caused by an earlier reply (a vanished peer) surfaces as an
error of the next receive on the socket (ICMP_ERRORS): nothing to answer.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import sys
import time

from gevent.server import DatagramServer

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python 3.11 does not export it
PKTINFO_KINDS = {(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO), (socket.IPPROTO_IP, IP_PKTINFO)}
PKTINFO_SPACE = socket.CMSG_SPACE(20) * 2  # room for IPV6_PKTINFO (20) and/or IP_PKTINFO (12)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's value; Python 3.11 does not export it
TIMESTAMP_SPACE = socket.CMSG_SPACE(16)  # a struct timespec
_TIMESPEC = struct.Struct("@qq")
ICMP_ERRORS = (errno.EAGAIN, errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH)
SEND_BUFFER_FULL = (errno.EAGAIN, errno.ENOBUFS)
MAX_BUFFERED = 10.0  # seconds a datagram could have waited in a buffer being read: longer, the clock was stepped
READ_TURN = 0.002  # seconds of datagrams one read callback handles


def enable_pktinfo(sock: socket.socket, family: int) -> None:
    """Ask for each datagram's local address (a wildcard socket must answer from it)."""
    with contextlib.suppress(OSError, AttributeError):  # a kernel without them: replies leave as routing says
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            with contextlib.suppress(OSError):  # IPv4 clients of a dual-stack socket
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)


def pktinfo_of(ancillary) -> list:
    """The IP_PKTINFO / IPV6_PKTINFO item of a datagram's ancillary data (as a list of at most
    one, ready for sendmsg): a reply sent with it leaves from the address the request came to."""
    return [item for item in ancillary if (item[0], item[1]) in PKTINFO_KINDS][:1]


def received_ns(ancillary) -> int | None:
    """When the kernel received the datagram (SO_TIMESTAMPNS, time.time_ns's clock), None if it did not say."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return seconds * 1_000_000_000 + nanoseconds
    return None


def waited_since(received: int | None) -> float:
    """Seconds a datagram waited in its socket's buffer since the kernel received it (`received_ns`); 0 when the
    kernel did not say, or when the wall clock was stepped meanwhile (negative, or longer than MAX_BUFFERED)."""
    if received is None:
        return 0.0
    waited = (time.time_ns() - received) / 1e9
    return waited if 0.0 <= waited <= MAX_BUFFERED else 0.0


def local_address(ancillary, bound_host: str) -> tuple[str, int]:
    """(local address, interface index) a datagram came in on, from its pktinfo; else the bound host."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            # ipi_spec_dst: the local address to answer from (also right for a broadcast request)
            return socket.inet_ntop(socket.AF_INET, data[4:8]), int.from_bytes(data[:4], sys.byteorder)
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 20:
            return socket.inet_ntop(socket.AF_INET6, data[:16]), int.from_bytes(data[16:20], sys.byteorder)
    return bound_host, 0


class UdpServer(DatagramServer):
    """One bound UDP socket whose datagrams are handled inline, and answered from the address they came to."""

    def __init__(self, bound):
        super().__init__(bound.sock, spawn=None)
        self.bound = bound
        self.wildcard = bound.binding.is_wildcard  # only then may the reply's source need choosing
        self._turn_iteration, self._turn_started = -1, 0.0  # the loop's iteration this socket's turn began in, and when

    def turn_left(self) -> bool:
        """Whether the read callback may handle another datagram: READ_TURN seconds since its first. A
        subclass's do_read asks it first, and returns None (the callback ends) when it says no: the socket
        stays readable, and the loop calls back once it has polled."""
        iteration, now = self.loop.iteration, time.perf_counter()
        if iteration != self._turn_iteration:
            self._turn_iteration, self._turn_started = iteration, now
            return True
        return now - self._turn_started < READ_TURN

    def reply(self, data: bytes, address, ancillary=()) -> OSError | None:
        """Send `data` to `address`, from the request's local address on a wildcard socket. Returns the
        error of a send that failed; a full send buffer is not one (a datagram lost, as on the wire)."""
        try:
            pktinfo = pktinfo_of(ancillary) if self.wildcard else None
            if pktinfo:
                try:
                    self._socket.sendmsg([data], pktinfo, 0, address)
                    return None
                except OSError as exc:
                    if exc.errno in SEND_BUFFER_FULL:
                        return None
                    # a kernel that refuses this pktinfo: let routing pick the source address
            self._socket.sendto(data, address)
        except OSError as exc:
            return None if exc.errno in SEND_BUFFER_FULL else exc
        return None
