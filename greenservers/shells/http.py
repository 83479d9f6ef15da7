"""The HTTP and HTTPS service: gevent's pywsgi servers behind one process-wide gate.

One HttpService serves every `ip_http_port` and `ip_https_port` binding (the
registry, greenservers.services, says which speak TLS), each with a
CappedWSGIServer around the web application (greenservers.web), plain HTTP
with the ACME answers and the HTTPS redirect in front of it (plain_http_app).

Every accepted connection asks the shared ConnectionGate first. Over a cap,
plain HTTP gets a canned `503` with `Retry-After` and TLS connections are
closed before any handshake: turning a connection away costs one send, never
a request parse or a TLS handshake, so it cannot slow the ones being served.
When every slot is taken, the gate may name an idle connection of the
address holding the most of them: it is shut down, and the newcomer takes its slot.

A plain-HTTP connection turned away while an ACME http-01 validation is
under way gets its request line read first (at most CHALLENGE_PEEK_BYTES,
within CHALLENGE_PEEK_TIMEOUT): a token being validated is answered, anything
else gets the 503. At most MAX_PEEKING are read at once, MAX_PEEKS_PER_CLIENT
of one client, and when all places are taken the oldest connection that has
sent nothing yet is closed to make room (proto.http.ChallengePeeks): a
validator sends its request at once, so silent connections cannot crowd it
out. Outside a validation a refusal stays one send.

One connection cannot hold the event loop, nor can many (a `WorkLine`, shells.loop): once
a request's head is read, it is answered at once while nobody waits in line
and the requests answered since the loop last polled took less than
TURN_WORK; otherwise its greenlet waits in one line with every other
connection's (shells.loop's Turns), and one of them goes on per turn of the
loop, after everything else that was ready has been served. A client
pipelining requests, or one keeping 150 connections busy, no longer has its
requests served back to back between two polls (each connection waiting for
a turn of its own, or none for its first request, they all went on after the
same poll: an NTP client's p99 read 95-220 ms; 1.5-3.8 ms in line), and a
phone's or a browser's request, when the line is empty, waits for nothing
(every request waiting for a turn added one turn of the loop to each: an
LDAP search slice, under a flood of costly searches). A connection is also paced: over
proto.http.REQUESTS_PER_SECOND requests a second on one connection (a burst of
one second's worth), a request is answered `429` with `Retry-After` and the
connection is closed. Answers are written as they are made, each with a
deadline (IO_TIMEOUT): a client that pipelines and does not read finds the
server waiting on its full socket, buffering nothing more, until it closes.

Slow clients cannot hold slots: the request line and headers must arrive
within HEADER_TIMEOUT (a total deadline, so a drip-feeding slow-loris does
not reset it), an idle keep-alive connection is closed after
KEEPALIVE_TIMEOUT (each answer that keeps its connection says so: `Keep-Alive:
timeout=15`), a TLS handshake must finish within HANDSHAKE_TIMEOUT (a total deadline too;
its steps wait in the same line as requests: shells.handshake) and each read
or write of a body within IO_TIMEOUT.

What a client's bad bytes make happen is logged like every other line a peer
can trigger (greenservers.ratelog): at INFO, one line per client and interval
with the count of those held back, never the socket's repr nor more than a
short, escaped sample of what the client sent. That is a request gevent
could not parse (answered 400: garbage, a TLS ClientHello sent to the plain
HTTP port, a bad header) and a TLS handshake that failed on the client's
data (garbage, or plain HTTP sent to the HTTPS port). A peer that merely
went away, or timed out, is closed silently.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import socket
import ssl
import time

import gevent
from gevent import pywsgi
from gevent.pool import Group
from gunicorn.workers.ggevent import PyWSGIHandler

from ..proto import http as proto_http
from ..proto.acme import challenge_answer, http_response, request_target
from ..proto.clients import client_key, plain_address
from ..proto.http import OVER_MAX_CONN, ChallengePeeks, ConnectionGate, redirect_target
from ..provisioning.files import port_for
from ..ratelog import RateLimitedLog, printable
from ..services import BY_SETTING, Service
from .handshake import handshake
from .loop import WorkLine


def _tunable(name: str, default: float) -> float:
    """A timeout or a rate, overridable from the environment (tuning, and other values in tests)."""
    return float(os.environ.get(f"GREENSERVERS_HTTP_{name}", default))


HEADER_TIMEOUT = _tunable("HEADER_TIMEOUT", 10.0)
KEEPALIVE_TIMEOUT = _tunable("KEEPALIVE_TIMEOUT", 15.0)
HANDSHAKE_TIMEOUT = _tunable("HANDSHAKE_TIMEOUT", 10.0)
IO_TIMEOUT = _tunable("IO_TIMEOUT", 30.0)
REQUESTS_PER_SECOND = _tunable("REQUESTS_PER_SECOND", proto_http.REQUESTS_PER_SECOND)  # on one connection
MAX_REJECTING = 256  # rejections being written at once; beyond, close at once
MAX_PEEKING = 128  # refused connections read at once for an ACME challenge; beyond, the oldest silent one is closed
MAX_PEEKS_PER_CLIENT = 8  # of one client (validators come from several addresses, one connection each)
CHALLENGE_PEEK_BYTES = 2048  # a validation's request line fits many times over
CHALLENGE_PEEK_TIMEOUT = 0.5  # a validator sends its request as soon as it is connected
LINGER_SECONDS = 1.0  # after a last answer, input read and dropped so that the close does not reset the answer away...
LINGER_BYTES = 256 * 1024  # ...for at most this long and this much
TURN_WORK = 0.001  # seconds of answers between two polls of the loop; past it, requests wait in line

REJECT_400 = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 12\r\n"
    b"Connection: close\r\n\r\n"
    b"Bad request\n"
)
REJECT_429_BODY = b"Too many requests on one connection; retry later.\n"
REJECT_411_BODY = b"Send the request's body with a Content-Length (not chunked).\n"
REJECT_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Retry-After: 1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 35\r\n"
    b"Connection: close\r\n\r\n"
    b"Too many connections; retry later.\n"
)

log = logging.getLogger("greenservers.http")
TLS_RECORD = "\x16\x03"  # how a TLS ClientHello starts


class HeaderTimeout(gevent.Timeout):
    """The client did not send a complete request head in time."""


class Connection:
    """An admitted connection, as the gate knows it: closed from outside to make room for another client."""

    __slots__ = ("sock", "source")

    def __init__(self, sock, source: str):
        self.sock, self.source = sock, source

    def close_for_room(self) -> None:
        """Its greenlet reads end-of-file (or a TLS error) and ends the connection the usual way."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class CappedHandler(PyWSGIHandler):
    """gunicorn's pywsgi handler (its access log) with deadlines on the request head; it tells
    the gate when its connection waits for a request and when it is serving one, answers a request
    when the line says (a WorkLine), and answers 429 to a request over the connection's pace."""

    _requests_seen = 0
    _over_pace = False  # the request just read is over the connection's pace
    _answered_too_fast = False
    _length_required = False  # the request's body has a Transfer-Encoding: answered 411, its body unread
    connection: Connection | None = None

    def handle_one_request(self):
        limit = HEADER_TIMEOUT if self._requests_seen == 0 else KEEPALIVE_TIMEOUT
        self._requests_seen += 1
        self.server.gate.waiting(self.connection)
        self._head_timer = HeaderTimeout.start_new(limit)
        try:
            result = super().handle_one_request()
        finally:
            self._head_timer.close()
        if self._answered_too_fast:
            self.server.sensors.add("http_requests_too_fast")
            self._peer_line("more than %g requests a second on one connection: answered 429 and closed", REQUESTS_PER_SECOND)
            _linger(self.socket)
        elif self._length_required:
            self._peer_line("a request body with a Transfer-Encoding: answered 411 and closed")
            _linger(self.socket)
        return result

    def read_request(self, raw_requestline):
        try:
            read = super().read_request(raw_requestline)
        finally:
            self._head_timer.close()  # the head is in: the application runs without it
            if not self.server.gate.serving(self.connection):
                self._over_pace = self.close_connection = True
        # a chunked body is read (and what the application leaves, discarded) a chunk at a time, and a client
        # sending 1-byte chunks never lets the read wait: 60,000 of them held the loop 330-540 ms. No client of
        # ours sends one (browsers, curl and scripts give a Content-Length), so none is read: 411 (RFC 9110 §15.5.12)
        if self.headers.get("Transfer-Encoding") is not None:
            self._length_required = self.close_connection = True
        return read

    def handle_one_response(self):
        # the request's head is in (waiting before it is read would be spent while no request is there)
        self.server.line.wait_for_turn()
        started = time.perf_counter()
        try:
            return self._respond()
        finally:
            self.server.line.spent(time.perf_counter() - started)

    def _respond(self):
        if self._length_required:
            self.application = _length_required
            self.wsgi_input.chunked_input, self.wsgi_input.content_length = False, 0  # not even discarded
        elif self._over_pace:
            self.application = _too_many_requests
            self._answered_too_fast = True
        return super().handle_one_response()

    def start_response(self, status, headers, exc_info=None):
        write = super().start_response(status, headers, exc_info)
        if not self.close_connection:
            # when the server closes an idle connection: a client that honours it does not send a request on a
            # connection being closed (and need not retry it)
            self.response_headers.append((b"Keep-Alive", b"timeout=%d" % int(KEEPALIVE_TIMEOUT)))
        return write

    def _handle_client_error(self, ex):
        """A request head gevent could not parse: 400, and one rate-limited line (see the module docstring)."""
        if isinstance(ex, (ConnectionError, socket.timeout, ssl.SSLError)):
            return None  # the peer went away or broke its TLS mid-head: nothing to answer
        # http.client's HTTPException: more than 100 header lines, or one too long (gevent parses with it)
        if not isinstance(ex, (ValueError, OSError, http.client.HTTPException)):  # not the client's bytes: our bug, with its traceback
            return super()._handle_client_error(ex)
        reason = getattr(ex, "formatted_message", None) or str(ex) or type(ex).__name__
        tls_on_plain = self.server.tls_holder is None and (self.requestline or "").startswith(TLS_RECORD)
        hint = " (a TLS handshake sent to the plain-HTTP port: use https://)" if tls_on_plain else ""
        self._peer_line("bad HTTP request, answered 400%s: %s", hint, printable(reason))
        return "400", REJECT_400

    def log_error(self, msg, *args):
        """gevent's way to log what a client did wrong, should it use it elsewhere: the same rate-limited line."""
        self._peer_line("%s", printable(msg % args if args else msg))

    def _peer_line(self, message: str, *args) -> None:
        """A line the client caused: rate-limited per client, at INFO, without the socket's repr."""
        source = self.connection.source if self.connection is not None else client_key(self.client_address[0])
        self.server.peer_log.info("bad-request", source, message, *args)

    def handle_error(self, t, v, tb):
        """An error while answering. A socket error is the peer's doing (it stopped reading, timed out,
        broke its TLS): the connection is closed without a traceback. Anything else is ours: logged as gevent does."""
        if issubclass(t, OSError):
            if issubclass(t, socket.timeout):
                self.server.sensors.add("http_timeouts")
            self.close_connection = True
            return
        super().handle_error(t, v, tb)

    _local_addr = None

    def get_environ(self):
        env = super().get_environ()
        if self._local_addr is None:  # once per connection, not per request
            try:
                self._local_addr = self.socket.getsockname()[0]
            except OSError:
                self._local_addr = ""
        env["greenservers.local_addr"] = self._local_addr
        return env


class CappedWSGIServer(pywsgi.WSGIServer):
    """One listening socket; connections admitted by the shared gate."""

    def __init__(self, listener, application, gate: ConnectionGate, line: WorkLine, sensors, tls_holder=None,
                 challenges=None, **kwargs):
        """`challenges()`: the ACME http-01 tokens being validated now (plain HTTP only); `line`: when every
        binding's requests are answered."""
        super().__init__(listener, application, handler_class=CappedHandler, **kwargs)
        self.gate, self.line = gate, line
        self.sensors = sensors
        self.tls_holder = tls_holder
        self.challenges = challenges or dict
        self.connections = Group()
        self.rejecting = Group()
        self.peeking = Group()
        self.peeks = ChallengePeeks(MAX_PEEKING, MAX_PEEKS_PER_CLIENT)
        self.room_log = RateLimitedLog(log)
        self.peer_log = RateLimitedLog(log)  # a client's bad requests and failed handshakes
        if tls_holder is not None:
            self.environ["wsgi.url_scheme"] = "https"
            self.environ["HTTPS"] = "on"

    def do_handle(self, client, address):
        source = client_key(address[0])
        peer = plain_address(address[0])
        connection = Connection(client, source)
        refused = self.gate.admit(source, connection, peer)
        if refused == OVER_MAX_CONN:
            crowded_out = self.gate.make_room(source, peer)  # the address holding the most slots gives up an idle one
            if crowded_out is not None:
                crowded_out.close_for_room()
                self.sensors.add("http_crowded_out")
                self.room_log.info("room", crowded_out.source, "holds the most of http_max_conn: its idle HTTP connections "
                                   "are closed to let addresses holding fewer in")
                refused = self.gate.admit(source, connection, peer)
        if refused is not None:
            self.sensors.add(f"http_rejected_{refused}")
            if self.tls_holder is None and self.challenges() and self._peek(source, client):
                return
            if self.tls_holder is None and len(self.rejecting) < MAX_REJECTING:
                self.rejecting.spawn(_answer_and_close, client, REJECT_503)
            else:
                _close(client)
            return
        self.sensors.add("http_connections_accepted")
        self.sensors.set("http_connections_open", self.gate.open)
        self.connections.spawn(self._serve, client, address, connection)

    def _serve(self, client, address, connection: Connection):
        try:
            if self.tls_holder is not None:
                # the TLS socket takes the connection's place before the handshake, so that a
                # handshake never started can be shut down to make room
                client = self.tls_holder.context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
                connection.sock = client
                try:
                    handshake(client, self.line, HANDSHAKE_TIMEOUT)
                except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                    return  # the peer went away (or was closed to make room)
                except ssl.SSLError as exc:
                    hint = " (plain HTTP sent to the HTTPS port: use https://)" if exc.reason == "HTTP_REQUEST" else ""
                    self.peer_log.info("tls-handshake", connection.source, "TLS handshake failed%s: %s", hint,
                                       exc.reason or type(exc).__name__)
                    return
            client.settimeout(IO_TIMEOUT)
            handler = self.handler_class(client, address, self)
            handler.connection = connection
            handler.handle()
        except (TimeoutError, HeaderTimeout):
            self.sensors.add("http_timeouts")
        except (ssl.SSLError, ConnectionError, OSError):
            pass  # a peer that vanished or spoke no TLS: close silently
        except Exception:
            log.exception("error serving %s", address)
        finally:
            _close(client)
            self.gate.release(connection)
            self.sensors.set("http_connections_open", self.gate.open)

    def stop_gracefully(self, timeout: float) -> None:
        """Stop accepting; let requests in flight finish for up to `timeout` seconds."""
        self.close()
        self.connections.join(timeout=timeout)
        self.connections.kill(block=False)
        self.rejecting.kill(block=False)
        self.peeking.kill(block=False)

    def _peek(self, source: str, client) -> bool:
        """Read a refused connection for an ACME challenge, if it gets a place (see the module docstring)."""
        admitted, silent = self.peeks.admit(source, client)
        if silent is not None:
            with contextlib.suppress(OSError):
                silent.shutdown(socket.SHUT_RDWR)  # its greenlet reads end-of-file and closes it
        if admitted:
            self.peeking.spawn(self._answer_challenge_or_503, client)
        return admitted

    def _answer_challenge_or_503(self, client) -> None:
        """A refused connection during an ACME validation: the challenge answer if that is what it
        asks for (the authority's check must not fail because the caps are full), else the 503."""
        head = b""
        try:
            deadline = time.monotonic() + CHALLENGE_PEEK_TIMEOUT
            while b"\n" not in head and len(head) < CHALLENGE_PEEK_BYTES and (left := deadline - time.monotonic()) > 0:
                client.settimeout(left)
                data = client.recv(CHALLENGE_PEEK_BYTES - len(head))
                if not data:
                    break
                head += data
                self.peeks.heard(client)
        except OSError:
            pass
        finally:
            self.peeks.done(client)
        target = request_target(head)
        answer = challenge_answer(target[0], target[1], self.challenges()) if target else None
        if answer is None or not answer[0].startswith("200"):
            _answer_and_close(client, REJECT_503)
            return
        _answer_and_close(client, http_response(answer[0], answer[1], head_only=target[0] == "HEAD"))


def _close(sock) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def _linger(sock) -> None:
    """After a connection's last answer: shut our side, then read and drop what the client still sends (at
    most LINGER_BYTES within LINGER_SECONDS), so that closing with its input unread does not reset the
    connection before the client has read the answer."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline, drained = time.monotonic() + LINGER_SECONDS, 0
        while drained < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            data = sock.recv(65536)
            if not data:
                break
            drained += len(data)
    except OSError:
        pass


def _answer_and_close(client, answer: bytes) -> None:
    """A refused connection's one answer (the 503, or an ACME challenge's), then the close."""
    try:
        client.settimeout(1.0)
        client.sendall(answer)
        _linger(client)
    except OSError:
        pass
    finally:
        _close(client)


def _too_many_requests(environ, start_response):
    """The answer to a request over its connection's pace (the connection closes after it)."""
    start_response("429 Too Many Requests", [("Retry-After", "1"), ("Content-Type", "text/plain; charset=utf-8"),
                                             ("Content-Length", str(len(REJECT_429_BODY))), ("Connection", "close")])
    return [REJECT_429_BODY]


def _length_required(environ, start_response):
    """The answer to a request whose body has a Transfer-Encoding (the connection closes after it)."""
    start_response("411 Length Required", [("Content-Type", "text/plain; charset=utf-8"),
                                           ("Content-Length", str(len(REJECT_411_BODY))), ("Connection", "close")])
    return [REJECT_411_BODY]


def plain_http_app(app, runtime):
    """WSGI middleware of the plain-HTTP servers: ACME http-01 answers, then 301/308 to HTTPS when it is on."""

    def application(environ, start_response):
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/")
        acme = runtime.acme
        answer = challenge_answer(method, path, acme.pending if acme is not None else {})
        if answer is not None:
            start_response(
                answer[0], [("Content-Type", "text/plain"), ("Content-Length", str(len(answer[1]))), ("Cache-Control", "no-store")]
            )
            return [b""] if method == "HEAD" else [answer[1]]
        settings = runtime.settings
        https = settings.ip_https_port
        if settings.http_redirect_https and https:
            local = plain_address(environ.get("greenservers.local_addr", ""))
            port = port_for(https, local)  # the HTTPS binding this client reaches best, as provisioning picks it
            target = redirect_target(
                environ.get("REQUEST_METHOD", "GET"),
                environ.get("PATH_INFO", "/"),
                environ.get("QUERY_STRING", ""),
                environ.get("HTTP_HOST"),
                local or "localhost",
                port,
            )
            if target is not None:
                runtime.sensors.add("http_redirects")
                start_response(target.status, [("Location", target.location), ("Content-Length", "0"), ("Cache-Control", "no-store")])
                return [b""]
        return app(environ, start_response)

    return application


class HttpService(Service):
    """Every HTTP and HTTPS binding: a CappedWSGIServer each, all behind one ConnectionGate whose
    caps (http_max_conn, http_max_conn_rate) are read from the settings at each admission."""

    name = "http"

    def __init__(self, runtime):
        super().__init__(runtime)
        self.gate = ConnectionGate(lambda: (runtime.settings.http_max_conn, runtime.settings.http_max_conn_rate), time.monotonic,
                                   REQUESTS_PER_SECOND)
        self.line = WorkLine(TURN_WORK)  # all bindings' requests

    def make_server(self, bound) -> CappedWSGIServer:
        runtime = self.runtime
        log = runtime.access_log
        if BY_SETTING[bound.setting].tls:
            return CappedWSGIServer(bound.sock, runtime.web_app, self.gate, self.line, runtime.sensors, tls_holder=runtime.tls,
                                    log=log, error_log=log)
        acme = runtime.acme
        return CappedWSGIServer(bound.sock, plain_http_app(runtime.web_app, runtime), self.gate, self.line, runtime.sensors,
                                challenges=lambda: acme.pending, log=log, error_log=log)

    def stop_server(self, server: CappedWSGIServer, timeout: float = 1.0) -> None:
        """Stop accepting; requests in flight finish on their own."""
        server.close()

    def drain(self, server: CappedWSGIServer, timeout: float) -> None:
        server.stop_gracefully(timeout)
