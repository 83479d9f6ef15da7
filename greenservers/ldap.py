"""The LDAP address-book server's shell: sockets, TLS, timeouts, caps, search turns, logging.

One LdapService serves every `ip_ldap_port` binding (plain, StartTLS offered)
and every `ip_ldaps_port` binding (TLS from the first byte), with gevent
StreamServers. Each connection runs one greenlet that feeds received bytes
to a sans-IO `LdapSession` (greenservers/proto/ldap.py) and acts on what it
returns: bytes are sent, `StartTLS` wraps the socket with the current
certificate (`runtime.tls.context`, read per connection), `BindFailed` is
counted, logged (rate-limited) and answered only after a per-client delay,
`Close` ends the connection, and a `SearchCursor` is run in slices.

Searches never hold the event loop for long: a `SearchGate` runs one slice
(SLICE seconds of matching, sorting or encoding) at a time, in the order
`FairShare` chooses (the client that used the least recent search time
first), and lets the loop poll and serve whatever is ready between two
slices. Searches in progress are capped per client and in total (the rest
are answered busy). Connections are capped per client and in total, the
bytes of unfinished messages are capped across connections (BufferBudget),
and a connection idle for `idle_timeout` seconds is closed. A client is an
IPv4 address or an IPv6 /64. The address book is indexed off the event loop
(greenservers/offload.py) when it changed, so a large rebuild does not stall
other connections.
"""

from __future__ import annotations

import resource
import socket
import ssl
import sys
import time
from functools import partial

import gevent
from gevent.event import Event
from gevent.hub import Waiter
from gevent.lock import Semaphore
from gevent.server import StreamServer

from .addressbook import addressbook_for
from .offload import build_off_loop
from .proto import ldap as proto
from .proto.clients import client_key, plain_address
from .ratelog import RateLimitedLog
from .services import Service

IDLE_TIMEOUT = 120.0  # phones keep a connection between searches; longer is a leak
HANDSHAKE_TIMEOUT = 10.0
MAX_PER_CLIENT = 256  # a NAT can hide many phones behind one address
MAX_TOTAL = 4096
RECV_SIZE = 65536
DISMANTLE_PAUSE = 0.001  # seconds between the steps that free a replaced directory
DISMANTLE_WAIT = 1.0  # seconds between looks at whether a search still reads a replaced directory
DISMANTLE_PATIENCE = 600.0  # seconds it waits for them (a client's paged search may go on)
SLICE = 0.002  # seconds one search runs before the event loop serves the others


def _total_cap() -> int:
    """At most half the process's file descriptors go to LDAP connections."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, min(MAX_TOTAL, soft // 2)) if soft > 0 else MAX_TOTAL


class SearchGate:
    """Runs searches' slices one at a time, in FairShare's order, with a turn of the event loop between two.

    After each slice the loop must poll and serve every ready request (an NTP
    query, a phone's search arriving) before the next slice runs: a zero timer of
    lower priority than the sockets' watchers marks that turn. Handing the turn to
    the next greenlet directly would not: gevent runs up to 50 ready callbacks
    before it polls again.

    When no slice is running or waiting, and the loop has turned since the last
    one, a connection's greenlet runs its slice itself (a phone's search, done in
    one slice, costs no hand-over). Otherwise `run()` queues the search, and one
    greenlet (the dispatcher) runs the slices one after the other and hands each
    slice's outputs back to the greenlet that sends them.
    """

    def __init__(self, fair: proto.FairShare, slice_seconds: float = SLICE, clock=time.monotonic):
        self.fair = fair
        self.slice_seconds = slice_seconds
        self.clock = clock
        self.longest = 0.0  # the most CPU time a slice took so far, in seconds
        self._busy = False  # a slice runs, or the loop has not turned since the last one
        self._work = Event()
        self._dispatcher: gevent.Greenlet | None = None

    def run(self, ticket: proto.SearchTicket, cursor: proto.SearchCursor) -> list:
        """Wait for the search's turn; one slice of `cursor`; what it produced."""
        if not self._busy and not self.fair.waiting:
            self._busy = True
            try:
                return self._slice(ticket, cursor)
            finally:
                self._turn_the_loop()
        waiter = Waiter()
        ticket.turn = (waiter, cursor)
        self.fair.want(ticket)
        if self._dispatcher is None or self._dispatcher.dead:
            self._dispatcher = gevent.spawn(self._dispatch)
        self._work.set()
        return waiter.get()

    def _slice(self, ticket: proto.SearchTicket, cursor: proto.SearchCursor) -> list:
        started, cpu = self.clock(), time.thread_time()
        try:
            return cursor.run(started + self.slice_seconds)
        finally:
            now = self.clock()
            self.fair.charge(ticket.client, now - started, now)
            self.longest = max(self.longest, time.thread_time() - cpu)

    def _turn_the_loop(self) -> None:
        """Busy until the loop has polled and served what is ready (a timer of lower priority than the sockets')."""
        timer = gevent.get_hub().loop.timer(0.0, priority=-1)  # libev runs pending watchers by priority
        timer.start(self._turned, timer)

    def _turned(self, timer) -> None:
        timer.close()
        self._busy = False
        if self.fair.waiting:
            self._work.set()

    def _dispatch(self) -> None:
        hub = gevent.get_hub()
        while True:
            self._work.wait()
            self._work.clear()
            if self._busy:
                continue  # _turned() wakes it
            ticket = self.fair.next(self.clock())
            if ticket is None:
                continue
            waiter, cursor = ticket.turn
            ticket.turn = None
            self._busy = True
            try:
                outputs = self._slice(ticket, cursor)
            except Exception as exc:  # a bug: the connection's greenlet reports it
                hub.loop.run_callback(waiter.throw, type(exc), exc, exc.__traceback__)
            else:
                hub.loop.run_callback(waiter.switch, outputs)
            self._turn_the_loop()


class LdapService(Service):
    name = "ldap"

    def __init__(self, runtime):
        super().__init__(runtime)
        self.caps = proto.ConnectionCaps(MAX_PER_CLIENT, _total_cap())
        self.throttle = proto.BindThrottle()
        self.fair = proto.FairShare()
        self.gate = SearchGate(self.fair)
        self.buffers = proto.BufferBudget()
        self.peer_log = RateLimitedLog(self.log)
        self.idle_timeout = IDLE_TIMEOUT
        self.longest_hold = 0.0
        self.waits = 0  # times a greenlet waited for the directory (its receive() did not hold the loop meanwhile)
        self._policy_of: tuple[object, proto.Policy] | None = None
        self._cache_of: tuple[object, proto.DirectoryCache] | None = None
        self._caches: dict[object, proto.DirectoryCache] = {}
        self._rebuild = Semaphore(1)
        self._prebuilt = None

    def make_server(self, bound):
        if not self._prebuilt:  # index a large address book now, not at the first phone's search
            self._prebuilt = gevent.spawn(self._prebuild)
        return StreamServer(bound.sock, partial(self.handle, bound.setting == "ip_ldaps_port"))

    def _prebuild(self) -> None:
        try:
            self.directory(self.runtime.settings.ldap_base)
        except Exception:  # the first search will try again and report it
            self.log.exception("could not index the address book")

    # -- what the sessions read --------------------------------------------

    def policy(self) -> proto.Policy:
        settings = self.runtime.settings
        cached = self._policy_of
        if cached is None or cached[0] is not settings:
            policy = proto.Policy(base=settings.ldap_base, user=settings.ldap_user, password=settings.ldap_password,
                                  anonymous=settings.ldap_anonymous, plain_bind=settings.ldap_plain_bind)
            self._policy_of = cached = (settings, policy)
        return cached[1]

    def directory(self, base: str) -> proto.Directory:
        settings = self.runtime.settings
        cached = self._cache_of
        if cached is None or cached[0] is not settings:
            book = addressbook_for(self.runtime)
            cache = self._caches.get(book)
            if cache is None:
                cache = self._caches[book] = proto.DirectoryCache(lambda: book.version, book.contacts)
            self._cache_of = cached = (settings, cache)
        cache = cached[1]
        if not cache.stale(base):
            return cache.directory
        self.waits += 1
        with self._rebuild:  # one rebuild at a time; the others wait for its result
            return cache.current(base, run=build_off_loop, retire=self._retire)

    def _retire(self, old: proto.Directory) -> None:
        holder = [old]
        del old
        gevent.spawn(self._dismantle, holder)

    @staticmethod
    def _dismantle(holder: list) -> None:
        """Free a replaced snapshot in steps between other greenlets' turns, once nothing else uses it."""
        directory = holder.pop()
        # searches in progress, and paged results a client still reads, hold it: wait for them
        for _ in range(int(DISMANTLE_PATIENCE / DISMANTLE_WAIT)):
            if sys.getrefcount(directory) <= 2:  # this name and getrefcount's argument
                break
            gevent.sleep(DISMANTLE_WAIT)
        else:
            return  # someone keeps it: it is freed whole when they let go
        for _ in directory.dismantle():
            # a timer, not sleep(0): gevent runs 50 ready callbacks before it looks at the clock,
            # and 50 steps of about a millisecond held every timer back by 50 ms
            gevent.sleep(DISMANTLE_PAUSE)

    # -- connections ---------------------------------------------------------

    def handle(self, tls_first: bool, sock, address) -> None:
        peer = plain_address(address[0])
        client = client_key(address[0])
        sensors = self.runtime.sensors
        if not self.caps.admit(client):
            self.peer_log.warning("cap", client, "LDAP connection refused: %d open from %s, %d in total",
                                  self.caps.open_from(client), client, self.caps.open)
            sock.close()
            return
        sensors.set("ldap_connections_open", self.caps.open)
        session = proto.LdapSession(self.policy, self.directory, time.monotonic, tls=tls_first, client=client, buffers=self.buffers)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # answers go out whole; no Nagle delay
            self._serve(sock, session, peer, tls_first)
        except ssl.SSLError as exc:  # a client that speaks no (or bad) TLS: its fault, logged rate-limited
            self.peer_log.warning("tls", peer, "LDAP TLS failed: %s", exc.reason or exc)
        except (socket.timeout, ConnectionError, OSError):
            pass  # vanished or silent peer: close quietly
        except Exception:
            self.log.exception("LDAP connection from %s failed", peer)
        finally:
            sock.close()
            session.close()
            self.caps.release(client)
            sensors.set("ldap_connections_open", self.caps.open)
            sensors.set("ldap_buffered_bytes", self.buffers.held)

    def _start_tls(self, sock):
        sock.settimeout(HANDSHAKE_TIMEOUT)
        return self.runtime.tls.context.wrap_socket(sock, server_side=True)

    def _serve(self, sock, session: proto.LdapSession, peer: str, tls_first: bool) -> None:
        if tls_first:
            sock = self._start_tls(sock)
        sensors = self.runtime.sensors
        while True:
            if session.backlog:  # pipelined messages beyond one batch: answer them before reading more
                data = b""
            else:
                sock.settimeout(self.idle_timeout)
                data = sock.recv(RECV_SIZE)
                if not data:
                    return
            started, waits = time.thread_time(), self.waits
            items = session.receive(data)
            if self.waits == waits:  # it ran without a pause: all that time, the loop served nothing else
                self._held(time.thread_time() - started)
            sensors.set("ldap_buffered_bytes", self.buffers.held)
            for item in items:
                if isinstance(item, proto.SearchCursor):
                    if self._search(item, sock, session.client, peer):
                        return
                    continue
                sock = self._act(item, sock, session, session.client, peer)
                if sock is None:
                    return

    def _act(self, item, sock, session: proto.LdapSession | None, client: str, peer: str):
        """Do what one output says; the socket to go on with (another after StartTLS), None to close."""
        sensors = self.runtime.sensors
        if isinstance(item, bytes):
            sock.sendall(item)
        elif isinstance(item, proto.Searched):
            sensors.add("ldap_searches")
            if item.time_limited:
                sensors.add("ldap_searches_time_limited")
        elif isinstance(item, proto.BindFailed):
            sensors.add("ldap_binds_failed")
            self.peer_log.warning("bind", peer, "LDAP bind as %r refused (resultCode %d)", item.name[:80], item.result_code)
            gevent.sleep(self.throttle.failed(client, time.monotonic()))
        elif isinstance(item, proto.StartTLS):
            sock = self._start_tls(sock)
            session.tls_started()
        elif isinstance(item, proto.Close):
            if item.oversize:
                sensors.add("ldap_oversize_closed")
                self.peer_log.warning("oversize", peer, "LDAP connection closed: %s", item.reason)
            elif item.reason:
                self.peer_log.warning("protocol", peer, "LDAP protocol error, disconnected: %s", item.reason)
            return None
        return sock

    def _search(self, cursor: proto.SearchCursor, sock, client: str, peer: str) -> bool:
        """Run a search to its end, a slice per turn, sending as it goes; True if the connection must close."""
        sensors = self.runtime.sensors
        ticket = self.fair.start(client)
        if ticket is None:
            sensors.add("ldap_searches_busy")
            self.peer_log.warning("busy", client, "LDAP search refused as busy: %d in progress from %s, %d in total",
                                  self.fair.running_from(client), client, self.fair.running)
            outputs = cursor.refuse(proto.BUSY, "too many searches in progress; try again")
        else:
            outputs = []
        sensors.set("ldap_searches_running", self.fair.running)
        try:
            while True:
                for item in outputs:
                    if self._act(item, sock, None, client, peer) is None:
                        return True
                if cursor.done:
                    return False
                outputs = self.gate.run(ticket, cursor)
                self._held(self.gate.longest)
        finally:
            if ticket is not None:
                self.fair.end(ticket)
                sensors.set("ldap_searches_running", self.fair.running)
                sensors.set("ldap_searches_delayed", self.fair.delayed)

    def _held(self, seconds: float) -> None:
        """Count the CPU time one piece of LDAP work took without letting the loop serve others
        (CPU, not wall time: the kernel running other processes meanwhile is not ours)."""
        if seconds > self.longest_hold:
            self.longest_hold = seconds
            self.runtime.sensors.set("ldap_longest_hold_microseconds", int(seconds * 1e6))
