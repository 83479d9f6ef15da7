"""shells.loop: a greenlet that never blocks on its own still lets the loop poll and serve every ready socket
between two of its steps (real sockets on loopback, no waiting on time)."""

from __future__ import annotations

import time

import gevent
from gevent import socket

from greenservers.shells.loop import after_the_loop_turns, serve_ready_then_continue

STEPS = 5


def _busy(milliseconds: float) -> None:
    """CPU work that never gives the loop a chance by itself."""
    end = time.perf_counter() + milliseconds / 1000
    while time.perf_counter() < end:
        pass


def test_a_datagram_that_arrives_during_a_step_is_served_before_the_next_step():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    order: list = []

    def serve_one() -> None:
        data, peer = server.recvfrom(100)
        order.append("served")
        server.sendto(data, peer)

    def steps() -> None:
        for step in range(STEPS):
            if step == 0:
                client.sendto(b"ping", server.getsockname())  # ready at the next poll
            _busy(2)
            order.append(step)
            serve_ready_then_continue()

    try:
        waiting = gevent.spawn(serve_one)  # started first: it waits in recvfrom when the steps begin
        working = gevent.spawn(steps)
        gevent.joinall([waiting, working], timeout=30, raise_error=True)
        assert order == [0, "served", 1, 2, 3, 4]
        client.settimeout(5)
        assert client.recv(100) == b"ping"
    finally:
        server.close()
        client.close()


def test_the_callback_runs_in_the_hub_after_the_ready_sockets():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    order: list = []

    def serve_one() -> None:
        server.recvfrom(100)
        order.append("served")

    try:
        waiting = gevent.spawn(serve_one)
        gevent.idle()  # it waits in recvfrom now
        client.sendto(b"ping", server.getsockname())
        after_the_loop_turns(order.append, "turned")
        _busy(2)
        waiting.join(timeout=30)
        gevent.idle()
        assert order == ["served", "turned"]
    finally:
        server.close()
        client.close()
