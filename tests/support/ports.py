"""Free ports for the servers tests and benchmarks start: never in the kernel's ephemeral range, never twice."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_handed_out: set[int] = set()


def _ephemeral_range() -> range:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return range(low, high + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on all IPv4 and IPv6 addresses for `kind` (and, for safety, the other kind).

    Picked outside the kernel's ephemeral range, and never twice in one test run: between
    the pick and the service's own bind, an outgoing socket (a client, a TFTP transfer)
    could otherwise be given the same port by the kernel.
    """
    ephemeral = _ephemeral_range()
    candidates = [p for p in range(10000, 32768) if p not in ephemeral and p not in _handed_out]
    for port in random.sample(candidates, min(200, len(candidates))):
        try:
            for either in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET6, either) as s:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                    s.bind(("::", port))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port")


def free_udp_port() -> int:
    return free_port(socket.SOCK_DGRAM)
