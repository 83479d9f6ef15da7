"""shells.udp: a socket whose datagrams keep coming lets the loop serve the other sockets every READ_TURN
(real loopback sockets, in-process under gevent; gevent's read callback alone would handle 100 in a row)."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import gevent

from greenservers.config.portspec import Binding
from greenservers.process.binder import open_socket
from greenservers.shells import udp
from greenservers.shells.udp import UdpServer

COSTLY = 0.001  # seconds of CPU each datagram of the flooded socket costs


class Recorder(UdpServer):
    """Handles each datagram by noting its name (and spending COSTLY seconds on the costly socket's)."""

    def __init__(self, name: str, order: list, cost: float):
        binding = Binding(socket.AF_INET, "127.0.0.1", 0, False)
        super().__init__(SimpleNamespace(sock=open_socket(binding, "udp"), binding=binding))
        self.name, self.order, self.cost = name, order, cost
        self.then = None

    def do_read(self):
        if not self.turn_left():
            return None
        try:
            data, address = self._socket.recvfrom(100)
        except BlockingIOError:
            return None
        return data, address

    def handle(self, data, address):
        if not self.order and self.then is not None:
            self.then()  # while the first is handled: what arrives now waits for the loop's next poll
        end = time.perf_counter() + self.cost
        while time.perf_counter() < end:
            pass
        self.order.append(self.name)


def test_a_datagram_for_another_socket_is_served_within_a_turn_of_a_flood():
    order: list[str] = []
    flooded, other = Recorder("flood", order, COSTLY), Recorder("other", order, 0.0)
    for server in (flooded, other):
        server.start()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        flooded.then = lambda: sender.sendto(b"y", other.socket.getsockname())
        for _ in range(50):  # all queued before the loop looks: 50 ms of work on one socket
            sender.sendto(b"x", flooded.socket.getsockname())
        with gevent.Timeout(10):
            while len(order) < 51:
                gevent.sleep(0.001)
        served_before = order.index("other")
        assert served_before <= udp.READ_TURN / COSTLY + 2, order  # not after all 50 (gevent's callback reads 100)
    finally:
        sender.close()
        for server in (flooded, other):
            server.stop()  # and its socket closed
