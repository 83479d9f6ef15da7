"""Who a peer is, for limits kept per client: its IPv4 address, or its IPv6 /64.

One host gets a whole /64 and can pick any address in it, so limits on IPv6
addresses one by one would not hold it; an IPv4 client of a dual-stack socket
(`::ffff:a.b.c.d`) is that IPv4 address.
"""

from __future__ import annotations

import ipaddress


def client_key(address: str | None) -> str:
    """The identity a per-client limit applies to ("-" when the address is unknown).

    `address` is the text the socket layer gives, canonical already, so an
    IPv4 address is used as it is (parsing it would cost more than an NTP answer).
    """
    if not address:
        return "-"
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return f"{ipaddress.IPv6Address(ip.packed[:8] + bytes(8))}/64"


def plain_address(host: str) -> str:
    """An IPv4 client of a dual-stack socket (`::ffff:192.0.2.1`) as the IPv4 address the
    administrator knows; any other address as it is."""
    return host[7:] if host.startswith("::ffff:") and "." in host else host
