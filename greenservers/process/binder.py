"""The binder: owns every listening socket of every service.

`bind_all` binds a whole plan (setting, transport, binding) before anything
serves, and is all or nothing: if one socket cannot be bound, the ones
already bound are closed and `BindError` names the setting, the address and
the OS error, e.g. ``ip_https_port: cannot bind [::]:443: Address already in use``.

Sockets are bound in the worker process, after gevent's monkey-patching, so
they are gevent sockets from the start (an inherited blocking socket hangs a
DatagramServer). UDP sockets are asked for each datagram's local address
(shells.udp.enable_pktinfo): a wildcard socket answers from it. Ports below 1024 need root or
CAP_NET_BIND_SERVICE on the process (see deploy/greenservers.service).
"""

from __future__ import annotations

import contextlib
import errno
import socket
from dataclasses import dataclass

from ..config.portspec import Binding
from ..services import SERVICES
from ..shells.udp import enable_pktinfo

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
        with contextlib.suppress(OSError):
            self.sock.close()


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
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
            enable_pktinfo(sock, binding.family)  # a wildcard socket's replies leave from the address asked
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
