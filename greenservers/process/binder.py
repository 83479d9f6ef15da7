"""The binder: owns every listening socket of every service.

`bind_all` binds a whole plan (setting, transport, binding) before anything
serves, and is all or nothing: if one socket cannot be bound, the ones
already bound are closed and `BindError` names the setting, the address and
the OS error, e.g. ``ip_https_port: cannot bind [::]:443: Address already in use``.

Sockets are bound in the worker process, after gevent's monkey-patching, so
they are gevent sockets from the start (DESIGN.md §7: an inherited blocking
socket hangs a DatagramServer). Ports below 1024 need root or
CAP_NET_BIND_SERVICE on the process (see deploy/greenservers.service).
"""

from __future__ import annotations

import errno
import socket
import sys
from dataclasses import dataclass

from ..config.portspec import Binding
from ..services import SERVICES

TCP_BACKLOG = 1024
UDP_BUFFER = 1 << 20  # room for a burst of requests (a boot storm of phones)


class BindError(RuntimeError):
    def __init__(self, setting: str, binding: Binding, error: OSError):
        self.setting, self.binding, self.error = setting, binding, error
        reason = error.strerror or str(error)
        super().__init__(f"{setting}: cannot bind {binding.display}: {reason}")


@dataclass
class Bound:
    setting: str
    transport: str
    binding: Binding
    sock: socket.socket

    @property
    def address(self) -> str:
        return self.binding.display

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def open_socket(binding: Binding, transport: str) -> socket.socket:
    """Create, configure and bind one socket (listening, for TCP); raises OSError."""
    kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
    try:
        sock = socket.socket(binding.family, kind)
    except OSError as exc:
        if binding.is_dual_stack and exc.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
            # a machine without IPv6: "PORT" still means all IPv4 addresses
            return open_socket(Binding(socket.AF_INET, "0.0.0.0", binding.port, False), transport)
        raise
    try:
        if transport == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # accepted sockets inherit it: small answers go out at once, not after a delayed ACK
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
            except OSError:
                pass
            _enable_pktinfo(sock, binding.family)
        if binding.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if binding.v6only else 0)
        sock.bind((binding.host, binding.port))
        if transport == "tcp":
            sock.listen(TCP_BACKLOG)
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise


IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python 3.11 does not export it
PKTINFO_KINDS = {(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO), (socket.IPPROTO_IP, IP_PKTINFO)}


def pktinfo_of(ancillary) -> list:
    """The IP_PKTINFO / IPV6_PKTINFO item of a datagram's ancillary data (as a list of at most
    one, ready for sendmsg): a reply sent with it leaves from the address the request came to."""
    return [item for item in ancillary if (item[0], item[1]) in PKTINFO_KINDS][:1]


def local_address(ancillary, bound_host: str) -> tuple[str, int]:
    """(local address, interface index) a datagram came in on, from its pktinfo; else the bound host."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            # ipi_spec_dst: the local address to answer from (also right for a broadcast request)
            return socket.inet_ntop(socket.AF_INET, data[4:8]), int.from_bytes(data[:4], sys.byteorder)
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 20:
            return socket.inet_ntop(socket.AF_INET6, data[:16]), int.from_bytes(data[16:20], sys.byteorder)
    return bound_host, 0


def _enable_pktinfo(sock: socket.socket, family: int) -> None:
    """Ask for each datagram's local address (a wildcard socket must answer from it)."""
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            try:  # IPv4 clients of a dual-stack socket
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            except OSError:
                pass
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    except (OSError, AttributeError):
        pass


def bind_all(plan: list[tuple[str, str, Binding]]) -> list[Bound]:
    """Bind every socket of the plan, or none: raises BindError after closing the rest."""
    bound: list[Bound] = []
    try:
        for setting, transport, binding in plan:
            try:
                sock = open_socket(binding, transport)
            except OSError as exc:
                raise BindError(setting, binding, exc) from None
            bound.append(Bound(setting, transport, binding, sock))
    except BaseException:
        for item in bound:
            item.close()
        raise
    return bound


def plan_for(settings) -> list[tuple[str, str, Binding]]:
    """The (setting, transport, binding) triples of every service's binding list (greenservers.services)."""
    return [(spec.setting, spec.transport, binding) for spec in SERVICES for binding in getattr(settings, spec.setting)]
