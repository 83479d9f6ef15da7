"""Raw HTTP connections for the tests of the connection caps: one held open (keep-alive) to take a slot."""

from __future__ import annotations

import socket

from .wait import eventually


def request_on(sock: socket.socket) -> bytes:
    """One keep-alive GET /healthz on an open connection; the status line."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0]


def held_connection(port: int, timeout: float = 10.0) -> socket.socket:
    """A connection the gate admitted and that stays open (keep-alive); retried while a slot is
    still held by a connection the client already closed but the server has not yet noticed."""
    def admitted() -> socket.socket | None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if request_on(sock) == b"HTTP/1.1 200 OK":
            return sock
        sock.close()
        return None

    return eventually(admitted, timeout, what="a connection admitted")
