"""The HTTP shell in-process (gevent, loopback): requests are answered at once until a millisecond of them
has run since the loop's last poll, then in one line, one per turn of the loop, whether each is a
connection's first request or a later one; a chunked body is refused unread."""

from __future__ import annotations

import time
from collections import Counter

import gevent
import pytest
from gevent import socket

from greenservers.proto.http import ConnectionGate
from greenservers.sensors import SensorRegistry
from greenservers.shells.http import TURN_WORK, CappedWSGIServer
from greenservers.shells.loop import WorkLine

CONNECTIONS = 12


class AccessLog:
    """What gunicorn's handler writes its access lines to (the worker gives it gunicorn's logger)."""

    def access(self, *args) -> None:
        pass

    def write(self, *args) -> None:
        pass


@pytest.fixture
def served():
    """(a CappedWSGIServer on loopback around an app that notes the loop's iteration of each request, those
    iterations); stopped after the test."""
    iterations: list[int] = []

    def app(environ, start_response):
        iterations.append(gevent.get_hub().loop.iteration)
        end = time.perf_counter() + 0.6 * TURN_WORK  # work: two answers fit in a turn's budget, a third does not
        while time.perf_counter() < end:
            pass
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    gate = ConnectionGate(lambda: (1000, 100_000), time.monotonic)
    server = CappedWSGIServer(listener, app, gate, WorkLine(TURN_WORK), SensorRegistry(), log=AccessLog(), error_log=AccessLog())
    server.start()
    yield server, iterations
    server.stop(timeout=1)


def test_requests_of_many_connections_are_answered_a_millisecond_of_them_per_turn_of_the_loop(served):
    """Each waiting for a turn of its own (or none, for a connection's first request), they all went on after
    the same poll: 150 connections of one client held the loop for 150 requests, and an NTP client's p99 read
    95-220 ms. Now the first are answered at once, until a millisecond of answers has run; then one per turn."""
    server, iterations = served
    clients = []
    try:
        for _ in range(CONNECTIONS):
            clients.append(socket.create_connection(server.address))
        gevent.sleep(0.2)  # every connection accepted, each waiting for its request
        for _round in range(2):  # a connection's first request, then a later one on it
            for client in clients:
                client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")  # all of them ready at the same poll
            for client in clients:
                client.settimeout(10)
                answer = b""
                while not answer.endswith(b"ok"):
                    received = client.recv(1000)
                    assert received, f"closed without an answer: {answer!r}"
                    answer += received
        assert len(iterations) == 2 * CONNECTIONS
        per_turn = Counter(iterations).values()
        assert max(per_turn) <= 2, iterations  # two fit in a millisecond, never a third between two polls
    finally:
        for client in clients:
            client.close()


def test_a_chunked_body_is_refused_unread_and_the_connection_closed(served):
    """gevent reads a chunked body (and discards what the application leaves) a chunk at a time: a client sending
    1-byte chunks never lets the read wait, and 60,000 of them held the loop 330-540 ms."""
    server, iterations = served
    with socket.create_connection(server.address) as client:
        client.settimeout(10)
        client.sendall(b"POST /login HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\na\r\n" * 2000)
        answer = b""
        while received := client.recv(65536):
            answer += received
    assert answer.startswith(b"HTTP/1.1 411 Length Required\r\n") and b"Content-Length" in answer
    assert iterations == []  # the application never saw it
    with socket.create_connection(server.address) as client:  # a body with a Content-Length is read as before
        client.settimeout(10)
        client.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
        answer = b""
        while received := client.recv(65536):
            answer += received
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and len(iterations) == 1
