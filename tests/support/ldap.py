"""LDAP answers read off a socket for the tests (requests are built with ldap_wire)."""

from __future__ import annotations

import ldap_wire as w

from greenservers.proto import ber, ldap


def read_until_done(sock) -> list[w.Response]:
    """The responses up to the one that ends the operation (anything but a search entry), or to the close."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return w.parse_responses(data)
        data += chunk
        responses = w.parse_responses(data) if _complete(data) else []
        if responses and responses[-1].tag != ldap.SEARCH_RESULT_ENTRY:
            return responses


def _complete(data: bytes) -> bool:
    pos = 0
    while pos < len(data):
        try:
            size = ber.frame_length(data[pos:])
        except ber.Incomplete:
            return False
        pos += size
    return pos == len(data)
