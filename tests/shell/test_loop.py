"""shells.loop: a greenlet that never blocks on its own still lets the loop poll and serve every ready socket
between two of its steps (real sockets on loopback, no waiting on time)."""

from __future__ import annotations

import time

import gevent
import pytest
from gevent import socket

from greenservers.shells import loop
from greenservers.shells.loop import Turns, after_the_loop_turns, run_in_turns, serve_ready_then_continue

STEPS = 5


def _busy(milliseconds: float) -> None:
    """CPU work that never gives the loop a chance by itself."""
    end = time.perf_counter() + milliseconds / 1000
    while time.perf_counter() < end:
        pass


@pytest.fixture
def sockets():
    """(a UDP server socket on loopback, a client socket), closed after the test."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield server, client
    server.close()
    client.close()


def _serve_one(server, order: list, echo: bool = False) -> None:
    """Wait for one datagram, note that it was served (and send it back if `echo`)."""
    data, peer = server.recvfrom(100)
    order.append("served")
    if echo:
        server.sendto(data, peer)


def test_a_datagram_that_arrives_during_a_step_is_served_before_the_next_step(sockets):
    server, client = sockets
    order: list = []

    def steps() -> None:
        for step in range(STEPS):
            if step == 0:
                client.sendto(b"ping", server.getsockname())  # ready at the next poll
            _busy(2)
            order.append(step)
            serve_ready_then_continue()

    waiting = gevent.spawn(_serve_one, server, order, echo=True)  # started first: it waits in recvfrom when the steps begin
    working = gevent.spawn(steps)
    gevent.joinall([waiting, working], timeout=30, raise_error=True)
    assert order == [0, "served", 1, 2, 3, 4]
    client.settimeout(5)
    assert client.recv(100) == b"ping"


def test_work_run_in_turns_lets_a_datagram_be_served_between_its_steps_and_returns_its_value(sockets):
    server, client = sockets
    order: list = []

    def steps():
        for step in range(STEPS):
            if step == 0:
                client.sendto(b"ping", server.getsockname())  # ready at the next poll
            _busy(2)  # past the slice: a turn after each step
            order.append(step)
            yield
        return "counted"

    waiting = gevent.spawn(_serve_one, server, order)
    working = gevent.spawn(run_in_turns, steps(), 0.001)
    gevent.joinall([waiting, working], timeout=30, raise_error=True)
    assert working.value == "counted"
    assert order == [0, "served", 1, 2, 3, 4]


def test_the_callback_runs_in_the_hub_after_the_ready_sockets(sockets):
    server, client = sockets
    order: list = []

    waiting = gevent.spawn(_serve_one, server, order)
    gevent.idle()  # it waits in recvfrom now
    client.sendto(b"ping", server.getsockname())
    after_the_loop_turns(order.append, "turned")
    _busy(2)
    waiting.join(timeout=30)
    gevent.idle()
    assert order == ["served", "turned"]


def test_greenlets_in_line_go_on_one_per_turn_with_the_ready_sockets_served_between(sockets):
    server, client = sockets
    order: list = []
    turns = Turns()

    def serve() -> None:
        while True:
            server.recvfrom(100)
            order.append("served")

    def work(name: str) -> None:
        for _ in range(3):
            turns.take()
            _busy(1)
            order.append(name)
            client.sendto(b"ping", server.getsockname())  # ready at the next poll

    serving = gevent.spawn(serve)
    try:
        gevent.idle()  # it waits in recvfrom now
        workers = [gevent.spawn(work, name) for name in "abc"]
        gevent.joinall(workers, timeout=30, raise_error=True)
        turns.take()  # the last datagram served meanwhile
        # waiting each for a turn of its own, all three would go on after the same poll: a, b, c, served x 3
        assert order == ["a", "served", "b", "served", "c", "served"] * 3
        assert len(turns) == 0
    finally:
        serving.kill()


def test_a_greenlet_killed_in_line_leaves_it(monkeypatch):
    turns = Turns()
    # the turn is held back while the test looks at the line: on a busy machine it could come first
    held = []
    monkeypatch.setattr(loop, "after_the_loop_turns", lambda callback, *args: held.append((callback, args)))
    gone = [gevent.spawn(turns.take) for _ in range(2)]
    gevent.idle()
    assert len(turns) == 2
    gevent.killall(gone)
    assert len(turns) == 0
    monkeypatch.undo()
    for callback, args in held:  # the turn comes, and finds no one in line
        callback(*args)
    turns.take()  # the line goes on
