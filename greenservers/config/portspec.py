"""Port binding lists: the one place that knows their syntax.

A list is space separated; each token is one of

    5060                 all IPv4 and IPv6 addresses (one dual-stack [::] socket)
    0.0.0.0:5060         all IPv4 addresses only
    [::]:5060            all IPv6 addresses only (IPV6_V6ONLY=1)
    192.168.1.2:5060     one IPv4 address
    [2001:db8::4]:5060   one IPv6 address (brackets required)

Parsing is pure: no sockets, no DNS. A bad list is refused whole with a
message that quotes the bad token.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

_PORT_ONLY = re.compile(r"[0-9]+")
_IPV4_AND_PORT = re.compile(r"([0-9.]+):([0-9]+)")
_BRACKETED_AND_PORT = re.compile(r"\[([^\]]+)\]:([0-9]+)")
# [IPv6]:PORT binds that address alone (IPV6_V6ONLY); IPv4:PORT an IPv4 address
_HOST_FORMS = ((_BRACKETED_AND_PORT, ipaddress.IPv6Address, "IPv6", socket.AF_INET6, True),
               (_IPV4_AND_PORT, ipaddress.IPv4Address, "IPv4", socket.AF_INET, False))


class PortSpecError(ValueError):
    """A binding list that cannot be used; the message quotes the bad token."""


@dataclass(frozen=True, order=True)
class Binding:
    """One socket to bind: address family, host, port and IPV6_V6ONLY."""

    family: int
    host: str
    port: int
    v6only: bool

    @property
    def is_dual_stack(self) -> bool:
        return self.family == socket.AF_INET6 and not self.v6only

    @property
    def is_wildcard(self) -> bool:
        return self.host in ("0.0.0.0", "::")

    def covers(self, other: Binding) -> bool:
        """True when binding both on one machine would collide (same port)."""
        if self.port != other.port:
            return False
        if self.is_dual_stack or other.is_dual_stack:
            return True
        if self.family != other.family:
            return False
        return self.is_wildcard or other.is_wildcard or self.host == other.host

    def __str__(self) -> str:
        if self.is_dual_stack:
            return str(self.port)
        if self.family == socket.AF_INET6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def display(self) -> str:
        """The address as an administrator reads it in an error message."""
        if self.family == socket.AF_INET6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def _port(token: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or not 1 <= int(text) <= 65535:
        raise PortSpecError(f"{token!r}: the port must be a number from 1 to 65535")
    return int(text)


def parse_binding(token: str) -> Binding:
    """Parse one token of a binding list."""
    if _PORT_ONLY.fullmatch(token):
        return Binding(socket.AF_INET6, "::", _port(token, token), v6only=False)
    for pattern, address_type, kind, family, v6only in _HOST_FORMS:
        match = pattern.fullmatch(token)
        if match:
            host, port = match.groups()
            try:
                address = address_type(host)
            except ValueError:
                raise PortSpecError(f"{token!r}: {host!r} is not an {kind} address") from None
            return Binding(family, str(address), _port(token, port), v6only=v6only)
    raise PortSpecError(f"{token!r}: {_why_not(token)}")


def _why_not(token: str) -> str:
    if token.count(":") >= 2 and not token.startswith("["):
        return "an IPv6 address needs brackets, like [2001:db8::4]:5060"
    if token.startswith("[") and "]" in token and not token.endswith("]") and "]:" not in token:
        return "expected [IPv6 address]:port"
    if token.startswith("[") and token.endswith("]"):
        return "the port is missing; expected [IPv6 address]:port"
    if token.endswith(":"):
        return "the port is missing"
    host = token.rsplit(":", 1)[0]
    if re.search(r"[A-Za-z_]", host) and ":" in token:
        return "host names are not accepted; use an IP address"
    if token.lstrip("+-").isdigit():
        return "the port must be a number from 1 to 65535"
    return "expected PORT, IPv4:PORT or [IPv6]:PORT"


def parse_bindings(text: str) -> tuple[Binding, ...]:
    """Parse a whole binding list; empty means the service is off."""
    if not isinstance(text, str):
        raise PortSpecError(f"{text!r}: a binding list must be a string")
    bindings: list[Binding] = []
    for token in text.split():
        binding = parse_binding(token)
        for earlier in bindings:
            if earlier.covers(binding):
                raise PortSpecError(
                    f"{token!r}: overlaps {str(earlier)!r} (the same port on the same addresses)"
                )
        bindings.append(binding)
    return tuple(bindings)


def format_bindings(bindings: tuple[Binding, ...]) -> str:
    return " ".join(str(b) for b in bindings)
