"""TLS handshakes in-process (gevent, loopback): their steps take turns with the loop (a WorkLine), and the
deadline is for the whole handshake, however the client drips its bytes."""

from __future__ import annotations

import ssl
import time
from collections import Counter

import gevent
import pytest
from gevent import socket
from gevent.server import StreamServer
from support.certs import make_cert

from greenservers.shells.handshake import HandshakeTimeout, handshake
from greenservers.shells.loop import WorkLine
from greenservers.tls.groups import only_elliptic_curves

CLIENTS = 24


class NotedLine(WorkLine):
    """A WorkLine that notes the loop's iteration of each piece of work."""

    def __init__(self, budget: float):
        super().__init__(budget)
        self.pieces: list[int] = []

    def spent(self, seconds: float) -> None:
        self.pieces.append(gevent.get_hub().loop.iteration)
        super().spent(seconds)


@pytest.fixture
def tls_server(tmp_path):
    """(start(line, seconds) -> (port, outcomes), the client context): a TLS server whose connections shake
    hands through `handshake` and then close; each outcome is "done" or the exception's class name."""
    cert, key = make_cert("127.0.0.1")
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    only_elliptic_curves(context)
    client_context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    client_context.check_hostname = False
    servers = []

    def start(line: WorkLine, seconds: float = 10.0):
        outcomes: list[str] = []

        def serve(sock, _address):
            tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            try:
                handshake(tls, line, seconds)
                outcomes.append("done")
            except Exception as exc:
                outcomes.append(type(exc).__name__)
            finally:
                tls.close()

        server = StreamServer(("127.0.0.1", 0), serve)
        server.start()
        servers.append(server)
        return server.server_port, outcomes

    yield start, client_context
    for server in servers:
        server.stop(timeout=1)


def hellos_at_once(port: int, client_context: ssl.SSLContext, count: int) -> None:
    """`count` clients send their ClientHello at the same time (made in memory, sent before any is answered),
    then each completes its handshake."""
    clients = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = client_context.wrap_bio(incoming, outgoing)
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        clients.append((sock, tls, incoming, outgoing))
    for sock, _tls, _incoming, outgoing in clients:
        sock.sendall(outgoing.read())  # every hello is there before the server's next poll
    for sock, tls, incoming, outgoing in clients:
        sock.settimeout(10)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                data = sock.recv(65536)
                assert data, "the server closed during the handshake"
                incoming.write(data)
        if outgoing.pending:
            sock.sendall(outgoing.read())  # the client's Finished
        sock.close()


def shake_hands_at_once(tls_server, budget: float) -> NotedLine:
    """CLIENTS hellos at once to a server whose line has `budget`; each handshake completed; the line."""
    start, client_context = tls_server
    line = NotedLine(budget)
    port, outcomes = start(line)
    hellos_at_once(port, client_context, CLIENTS)
    deadline = time.monotonic() + 10
    while len(outcomes) < CLIENTS and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert outcomes == ["done"] * CLIENTS
    return line


def test_handshakes_arriving_together_take_a_step_per_turn_of_the_loop_past_the_budget(tls_server):
    """A hundred hellos at once were a hundred handshake steps between two polls (45-50 ms with an RSA key).
    With a budget of 0, a step runs only in a turn of the loop no other step ran in."""
    line = shake_hands_at_once(tls_server, budget=0.0)
    per_turn = Counter(line.pieces)
    assert max(per_turn.values()) == 1, per_turn.most_common(3)
    assert len(per_turn) >= 2 * CLIENTS  # each handshake's steps: the hello answered, the client's Finished read


def test_handshakes_within_the_budget_run_together(tls_server):
    """Under the budget, steps go on in the same turn: a phone's handshake waits for nothing."""
    line = shake_hands_at_once(tls_server, budget=10.0)
    assert max(Counter(line.pieces).values()) > 1
    assert len(line.turns) == 0


def test_the_deadline_is_for_the_whole_handshake_not_each_byte(tls_server):
    """A socket timeout restarts at each byte: a client dripping its hello held its connection for good."""
    start, client_context = tls_server
    port, outcomes = start(WorkLine(), seconds=0.5)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    sock = socket.create_connection(("127.0.0.1", port))
    started = time.monotonic()
    closed = None
    for byte in hello[:-1]:  # never the whole hello
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            closed = time.monotonic() - started
            break
        gevent.sleep(0.1)
        if outcomes:
            closed = time.monotonic() - started
            break
    sock.close()
    assert outcomes == [HandshakeTimeout.__name__]
    assert closed is not None and closed < 5  # 0.5 s, not a byte's 0.5 s after the last of many bytes
