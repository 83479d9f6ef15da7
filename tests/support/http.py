"""Raw HTTP connections for the tests of the connection caps: one held open (keep-alive) to take a slot;
one pipelining requests (Pipeline)."""

from __future__ import annotations

import contextlib
import re
import socket
import threading

from .wait import eventually


def request_on(sock: socket.socket) -> bytes:
    """One keep-alive GET /healthz on an open connection, its answer read to the end (so that the next
    one starts clean); the status line."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    while length and len(body) < int(length.group(1)) and (chunk := sock.recv(65536)):
        body += chunk
    return head.split(b"\r\n", 1)[0]


def held_connection(port: int, timeout: float = 10.0, source: str = "") -> socket.socket:
    """A connection the gate admitted and that stays open (keep-alive), from `source` (a loopback
    address) if given; retried while a slot is still held by a connection the client already
    closed but the server has not yet noticed."""
    def admitted() -> socket.socket | None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0) if source else None)
        if request_on(sock) == b"HTTP/1.1 200 OK":
            return sock
        sock.close()
        return None

    return eventually(admitted, timeout, what="a connection admitted")


class Pipeline:
    """One connection pipelining requests: all of them written at once by a thread (then its write side shut),
    and, with `read`, every answer read by another thread as it comes."""

    def __init__(self, port: int, requests: bytes, read: bool = True, receive_buffer: int | None = None):
        self.sock = socket.socket()
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(60)
        self.sock.connect(("127.0.0.1", port))
        self._requests = requests
        self._chunks: list[bytes] = []
        self.ended = threading.Event()  # the server closed the connection (all read)
        self._threads = [threading.Thread(target=self._write, daemon=True)]
        if read:
            self._threads.append(threading.Thread(target=self._read, daemon=True))

    def __enter__(self) -> Pipeline:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()
        for thread in self._threads:
            thread.join(10)

    def _write(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(self._requests)
            self.sock.shutdown(socket.SHUT_WR)

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while chunk := self.sock.recv(1 << 20):
                self._chunks.append(chunk)
        self.ended.set()

    @property
    def received(self) -> bytes:
        return b"".join(list(self._chunks))

    def statuses(self) -> list[bytes]:
        """The status line of every answer read so far."""
        return re.findall(rb"HTTP/1\.1 \d\d\d [^\r]*", self.received)
