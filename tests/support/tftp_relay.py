"""A lossy TFTP relay for tests: real clients talk to the service through it, and it loses chosen packets.

TFTP changes ports mid-conversation (the server answers from a new transfer
ID, RFC 1350 §4), so a plain UDP forwarder will not do. Clients send their
request to the relay's `port`; it forwards the request from a socket of its
own per client (to the service, each client is one peer) and gives each
transfer ID of the service a socket of its own towards the client, so the
client sees a new transfer ID as it must. What it loses is decided by
`drop(direction, transfer, index)`: direction "down" (service to client) or
"up", `transfer` the serial number of the service's transfer ID (0 for the
first the relay saw), `index` the datagram's number within that transfer and
direction (0 for the first). Requests themselves are never lost.

Runs in a thread of the test process, on loopback; `close()` stops it, once it has handled every
datagram that reached it before.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Callable

Drop = Callable[[str, int, int], bool]
DRAIN_ROUNDS = 100  # at close, rounds of handling what is already waiting (each datagram passed on can draw an answer)


class LossyRelay:
    def __init__(self, service_port: int, drop: Drop, host: str = "127.0.0.1"):
        self.service, self.drop, self.host = (host, service_port), drop, host
        self.selector = selectors.DefaultSelector()
        self.listener = self._socket(self._from_client_request)
        self.port = self.listener.getsockname()[1]
        self.upstream_of: dict[tuple, socket.socket] = {}  # client address -> socket towards the service
        self.downstream_of: dict[tuple, tuple] = {}  # (upstream socket, service TID) -> (socket towards the client, its state)
        self.dropped: list[tuple[str, int, int]] = []
        self.transfers = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _socket(self, handler, data=None) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.host, 0))
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ, (handler, data))
        return sock

    def _run(self) -> None:
        while not self.stopping.is_set():
            self._handle_ready(timeout=0.1)
        # what reached the relay before close() is handled too, so that `dropped` misses none of it
        # (a client's last datagram, sent just before it exits, would otherwise race the closing)
        for _ in range(DRAIN_ROUNDS):
            if not self._handle_ready(timeout=0):
                break

    def _handle_ready(self, timeout: float) -> bool:
        """Handles the datagrams waiting now (or within `timeout`); False when there were none."""
        ready = self.selector.select(timeout=timeout)
        for key, _ in ready:
            handler, data = key.data
            try:
                datagram, source = key.fileobj.recvfrom(70000)
            except OSError:  # an ICMP error of an earlier send: the other side is gone
                continue
            handler(key.fileobj, datagram, source, data)
        return bool(ready)

    def _from_client_request(self, sock, datagram: bytes, client: tuple, data) -> None:
        upstream = self.upstream_of.get(client)
        if upstream is None:
            upstream = self.upstream_of[client] = self._socket(self._from_service, client)
        upstream.sendto(datagram, self.service)

    def _from_service(self, upstream, datagram: bytes, tid: tuple, client: tuple) -> None:
        known = self.downstream_of.get((upstream, tid))
        if known is None:
            state = {"upstream": upstream, "tid": tid, "serial": self.transfers, "up": 0, "down": 0}
            self.transfers += 1
            known = self.downstream_of[(upstream, tid)] = (self._socket(self._from_client, state), state)
        downstream, state = known
        self._pass(downstream, datagram, client, state, "down")

    def _from_client(self, downstream, datagram: bytes, client: tuple, state: dict) -> None:
        self._pass(state["upstream"], datagram, state["tid"], state, "up")

    def _pass(self, out: socket.socket, datagram: bytes, to: tuple, state: dict, direction: str) -> None:
        index = state[direction]
        state[direction] += 1
        if self.drop(direction, state["serial"], index):
            self.dropped.append((direction, state["serial"], index))
            return
        with contextlib.suppress(OSError):
            out.sendto(datagram, to)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()

