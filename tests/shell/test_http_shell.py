"""The HTTP shell in-process (gevent, loopback): many connections' requests wait in one line, one per turn
of the event loop, whether each is a connection's first request or a later one."""

from __future__ import annotations

import time

import gevent
from gevent import socket

from greenservers.proto.http import ConnectionGate
from greenservers.sensors import SensorRegistry
from greenservers.shells.http import CappedWSGIServer
from greenservers.shells.loop import Turns

CONNECTIONS = 12


class AccessLog:
    """What gunicorn's handler writes its access lines to (the worker gives it gunicorn's logger)."""

    def access(self, *args) -> None:
        pass

    def write(self, *args) -> None:
        pass


def test_requests_of_many_connections_are_served_one_per_turn_of_the_loop():
    """Each waiting for a turn of its own (or none, for a connection's first request), they all went on after
    the same poll: 150 connections of one client held the loop for 150 requests, and an NTP client's p99 read
    95-220 ms. In one line, a turn of the loop serves one of them."""
    iterations: list[int] = []

    def app(environ, start_response):
        iterations.append(gevent.get_hub().loop.iteration)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    gate = ConnectionGate(lambda: (1000, 100_000), time.monotonic)
    server = CappedWSGIServer(listener, app, gate, Turns(), SensorRegistry(), log=AccessLog(), error_log=AccessLog())
    server.start()
    clients = []
    try:
        for _ in range(CONNECTIONS):
            clients.append(socket.create_connection(listener.getsockname()))
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
        assert len(set(iterations)) == len(iterations), iterations  # never two in one turn of the loop
    finally:
        for client in clients:
            client.close()
        server.stop(timeout=1)
