"""The LDAP address-book server's shell: sockets, TLS, timeouts, caps, search turns, logging.

One LdapService serves every `ip_ldap_port` binding (plain, StartTLS offered)
and every `ip_ldaps_port` binding (TLS from the first byte), with gevent
StreamServers. Each connection runs one greenlet that feeds received bytes
to a sans-IO `LdapSession` (greenservers/proto/ldap/) and acts on what it
returns: bytes are sent, `StartTLS` wraps the socket with the current
certificate (`runtime.tls.context`, read per connection), `BindFailed` is
counted, logged (rate-limited) and answered only after a per-client delay,
`Close` ends the connection, and a `SearchCursor` is run in slices.

Searches never hold the event loop for long: a `SearchGate` runs one slice
(SLICE seconds of matching, sorting or encoding) at a time, in the order
`FairShare` chooses (the client that used the least recent search time
first), and lets the loop poll and serve whatever is ready between two
slices. Searches in progress are capped per address and per IPv6 /64 and the running ones in
total (the rest are answered busy); a search whose answer waits for its
client to read is suspended meanwhile (it holds no slot of the total), and
some slots are kept for clients with no search in progress.

Nor does a connection whose socket always has data (requests pipelined
without end): after TURN_MESSAGES messages or TURN_WORK seconds of work
without waiting for its client (a read that found no data, so the loop
polled meanwhile), its greenlet gets in line (shells.loop's Turns), and one
such connection goes on per turn of the loop, however many there are. It
reads no more while a request it read is unanswered, so what a connection
has outstanding is at most one read (RECV_SIZE bytes), one search at a time.

Connections are capped per client and in total, the bytes of unfinished
messages are capped across connections (BufferBudget), unfinished paged
searches per client, in total and in idle time (PagedBudget), a connection
idle for `idle_timeout` seconds is closed, and so is one whose client reads
nothing of what it is sent for WRITE_STALL seconds. A client is an IPv4
address or an IPv6 /64, but connections, searches in progress and
unfinished paged searches are capped per address, an IPv6 /64 as a whole
holding a larger share (proto.ldap.limits).

The directory a search reads is kept current with the address book by a
`DirectoryFollower` (shells/ldap_follower.py).
"""

from __future__ import annotations

import contextlib
import resource
import socket
import ssl
import time
from functools import partial

import gevent
from gevent import socket as gsocket
from gevent.event import Event
from gevent.hub import Waiter
from gevent.server import StreamServer

from ..addressbook import AddressBook, addressbook_for
from ..proto import ldap as proto
from ..proto.clients import AddressBuckets, client_key, plain_address
from ..ratelog import RateLimitedLog
from ..services import Service
from .handshake import handshake
from .ldap_follower import DirectoryFollower
from .loop import Turns, WorkLine, serve_ready_then_continue

IDLE_TIMEOUT = 120.0  # phones keep a connection between searches; longer is a leak
HANDSHAKE_TIMEOUT = 10.0
MAX_PER_CLIENT = 256  # per address: a NAT can hide many phones behind one (an IPv6 /64 may hold a quarter of all)
MAX_TOTAL = 4096
RECV_SIZE = 65536  # also what one connection may have read and not answered yet
WRITE_STALL = 10.0  # seconds a send may wait without its client reading a byte; then the connection closes
TURN_MESSAGES = 256  # messages a connection answers before the loop serves others
TURN_WORK = 0.001  # seconds a connection works before the loop serves others
SLICE = 0.002  # seconds one search runs before the event loop serves the others


def _coalesced(outputs: list) -> list:
    """The outputs with each run of bytes joined: one send (a system call) for a slice's entries and its SearchResultDone."""
    if len(outputs) < 2:
        return outputs
    joined: list = []
    run: list[bytes] = []  # joined once at its end: adding each entry to the bytes so far copied them all again
    for item in outputs:
        if isinstance(item, bytes):
            run.append(item)
            continue
        if run:
            joined.append(b"".join(run))
            run = []
        joined.append(item)
    if run:
        joined.append(b"".join(run))
    return joined


class WriteStalled(Exception):
    """The client read nothing of an answer for WRITE_STALL seconds."""


class IdleWatch:
    """A connection's idleness. It ends a read that waited `seconds` (TimeoutError thrown into its greenlet), with
    one timer per idle period rather than one per read: a socket timeout makes and cancels a timer at every read
    that waits (about 4 us, a twentieth of a phone's search). The greenlet marks its reads (`reading_since`);
    the timer, when it fires, throws only into a read that has waited long enough, and is set again for what is
    left otherwise. It is also the connection as the caps know it: one waiting for its client's next request
    may be closed to make room for another client (`idle`, `close_for_room`)."""

    __slots__ = ("seconds", "reading_since", "_greenlet", "_timer", "_sock")

    def __init__(self, seconds: float, sock):
        self.seconds = seconds
        self.reading_since: float | None = None  # when the read in progress began (monotonic), None: not reading
        self._sock = sock  # the connection's own socket (under TLS too: shut down, TLS reads end as well)
        self._greenlet = gevent.getcurrent()
        self._timer = None
        self._arm(seconds)

    def _arm(self, after: float) -> None:
        self._timer = gevent.get_hub().loop.timer(after)
        self._timer.start(self._expired)

    def _expired(self) -> None:
        self._timer.close()
        since = self.reading_since
        left = self.seconds if since is None else since + self.seconds - time.monotonic()
        if left <= 0:
            self._greenlet.throw(TimeoutError(f"idle for {self.seconds:g} s"))
        else:
            self._arm(left)

    def close(self) -> None:
        self._timer.close()

    @staticmethod
    def idle(watch: IdleWatch) -> bool:
        return watch.reading_since is not None

    def close_for_room(self) -> None:
        """Its greenlet's read ends (end of file) and the connection ends the usual way."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)


def _total_cap() -> int:
    """At most half the process's file descriptors go to LDAP connections."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, min(MAX_TOTAL, soft // 2)) if soft > 0 else MAX_TOTAL


class SearchGate:
    """Runs searches' slices one at a time, in FairShare's order, with a poll of the event loop between two.

    A slice runs once the loop has polled since the last one ended (its
    iteration count moved on), so every socket ready meanwhile (an NTP query, a
    phone's search arriving) is served before or right beside the next slice.
    When no slice runs or waits, a connection's greenlet runs its slice itself:
    a phone's search, done in one slice, costs no hand-over and no timer. It
    does so too when the loop has not polled yet but the slices since its last
    poll took less than half a slice's time: the new one shares that slice's
    time (it ends when a whole slice would have), so the loop is held no longer
    than by one slice. A sequential client's next request often arrives before
    its connection has even asked for it.

    Otherwise `run()` queues the search, and one greenlet (the dispatcher) runs
    the slices one after the other and hands each slice's outputs back to the
    greenlet that sends them; before a slice it lets the greenlets spawned
    meanwhile start (gevent.sleep(0): the hub's callbacks run first).
    `counted()` is called when a search gets in line and when one is taken
    from it (FairShare's counts changed, and others may read them meanwhile).
    Between two, it waits for a zero timer of lower
    priority than the sockets' watchers (shells.loop): it fires once the loop
    has polled and served every ready socket. Handing the turn to the next
    greenlet directly would not do: gevent runs up to 50 ready callbacks before
    it polls again.
    """

    def __init__(self, fair: proto.FairShare, slice_seconds: float = SLICE, clock=time.monotonic, counted=lambda: None):
        self.fair = fair
        self.counted = counted
        self.slice_seconds = slice_seconds
        self.clock = clock
        self.longest = 0.0  # the most CPU time a slice took so far, in seconds
        self._running = False  # a slice runs
        self._ended = -1  # the loop's iteration in which the last slice ended
        self._first = 0.0  # when the first slice of that iteration started
        self._work = Event()
        self._dispatcher: gevent.Greenlet | None = None

    def _may_run(self) -> bool:
        """No slice runs, and the loop has polled since the last one ended."""
        return not self._running and gevent.get_hub().loop.iteration != self._ended

    def _shared_until(self) -> float | None:
        """When a slice that shares the time of those since the loop's last poll must end; None: it must wait for a poll."""
        if self._running:
            return None
        if gevent.get_hub().loop.iteration != self._ended:
            return self.clock() + self.slice_seconds
        until = self._first + self.slice_seconds
        return until if until - self.clock() > self.slice_seconds / 2 else None

    def run(self, ticket: proto.SearchTicket, cursor: proto.SearchCursor) -> list:
        """Wait for the search's turn; one slice of `cursor`; what it produced."""
        if not self.fair.waiting and (until := self._shared_until()) is not None:
            return self._slice(ticket, cursor, until)
        waiter = Waiter()
        ticket.turn = (waiter, cursor)
        self.fair.want(ticket)
        self.counted()
        if self._dispatcher is None or self._dispatcher.dead:
            self._dispatcher = gevent.spawn(self._dispatch)
        self._work.set()
        return waiter.get()

    def _slice(self, ticket: proto.SearchTicket, cursor: proto.SearchCursor, until: float | None = None) -> list:
        self._running = True
        started, cpu = self.clock(), time.thread_time()
        iteration = gevent.get_hub().loop.iteration
        if iteration != self._ended:  # the first slice since the loop's last poll
            self._first = started
        try:
            return cursor.run(started + self.slice_seconds if until is None else until)
        finally:
            now = self.clock()
            self.fair.charge(ticket.client, now - started, now)
            if now - started > self.longest:  # CPU time is at most the wall time: only then may it be the longest
                self.longest = max(self.longest, time.thread_time() - cpu)
            self._running = False
            self._ended = iteration

    def _dispatch(self) -> None:
        hub = gevent.get_hub()
        yielded = False  # since it was last woken, the dispatcher has let the hub's callbacks go first
        while True:
            if not self.fair.waiting:
                self._work.wait()
                self._work.clear()
                yielded = False
                continue
            if not self._may_run():
                serve_ready_then_continue()
                yielded = False
                continue
            if not yielded:
                # a greenlet spawned meanwhile (a TFTP transfer, a new connection) starts as a callback of the hub,
                # which runs them only after this slice otherwise: under costly searches a TFTP answer waited a
                # slice more than the inline ones of SNMP and NTP (bench/flood.py ldap-filters, 5 runs each: its
                # median 7.1 ms, 4.6 ms with this; p99 16.1 and 12.1 ms). Once per wake-up: gevent may cut a pass
                # of callbacks after 50, and a dispatcher that yielded again each time could be deferred for good
                yielded = True
                gevent.sleep(0)
                continue
            ticket = self.fair.next(self.clock())
            if ticket is None:  # it ended while waiting
                continue
            self.counted()
            waiter, cursor = ticket.turn
            ticket.turn = None
            try:
                outputs = self._slice(ticket, cursor)
            except Exception as exc:  # a bug: the connection's greenlet reports it
                hub.loop.run_callback(waiter.throw, type(exc), exc, exc.__traceback__)
            else:
                hub.loop.run_callback(waiter.switch, outputs)


class LdapService(Service):
    name = "ldap"

    def __init__(self, runtime):
        super().__init__(runtime)
        self.caps = proto.ConnectionCaps(MAX_PER_CLIENT, _total_cap())
        self.throttle = proto.BindThrottle()
        self.fair = proto.FairShare()
        self.gate = SearchGate(self.fair, counted=self._count_line)
        self.buffers = proto.BufferBudget()
        self.paged = proto.PagedBudget()
        self.turns = Turns()  # connections that worked their share without waiting for their client
        self.handshakes = WorkLine()  # TLS handshakes' steps
        self.handshake_pace = AddressBuckets(proto.HANDSHAKES_PER_SECOND, proto.HANDSHAKE_BURST)
        self.peer_log = RateLimitedLog(self.log)
        self.idle_timeout = IDLE_TIMEOUT
        self.longest_hold = 0.0
        self.counts_shown = 0  # times the searches' counts were shown (_count_searches)
        self.waits = 0  # times a greenlet waited for the directory (its receive() did not hold the loop meanwhile)
        self._policy_of: tuple[object, proto.Policy] | None = None
        self._follower_of: tuple[object, DirectoryFollower] | None = None
        self._followers: dict[AddressBook, DirectoryFollower] = {}

    def make_server(self, bound):
        self.follower()  # index a large address book now, not at the first phone's search
        return StreamServer(bound.sock, partial(self.handle, bound.setting == "ip_ldaps_port"))

    # -- what the sessions read --------------------------------------------

    def policy(self) -> proto.Policy:
        settings = self.runtime.settings
        cached = self._policy_of
        if cached is None or cached[0] is not settings:
            policy = proto.Policy(base=settings.ldap_base, user=settings.ldap_user, password=settings.ldap_password,
                                  anonymous=settings.ldap_anonymous, plain_bind=settings.ldap_plain_bind)
            self._policy_of = cached = (settings, policy)
        return cached[1]

    def follower(self) -> DirectoryFollower:
        settings = self.runtime.settings
        cached = self._follower_of
        if cached is None or cached[0] is not settings:
            book = addressbook_for(self.runtime)
            follower = self._followers.get(book)
            if follower is None:
                follower = self._followers[book] = DirectoryFollower(book, settings.ldap_base, self.log, self._directory_state)
            self._follower_of = cached = (settings, follower)
        return cached[1]

    def _directory_state(self, follower: DirectoryFollower, entries: int, pending: int) -> None:
        """A follower's report: the sensors show the current book's (a former data_dir's follower may still run)."""
        if self._follower_of is None or self._follower_of[1] is follower:
            self.runtime.sensors.set("ldap_directory_entries", entries)
            self.runtime.sensors.set("ldap_directory_pending", pending)

    def directory(self, base: str) -> proto.Directory:
        follower = self.follower()
        catch_ups = follower.catch_ups
        directory = follower.current(base)
        if directory is None or follower.catch_ups != catch_ups:
            self.waits += 1  # this receive() waits (cooperatively) for the directory: built, or a change applied
        if directory is None:
            directory = follower.wait(base)
        return directory

    # -- connections ---------------------------------------------------------

    def handle(self, tls_first: bool, sock, address) -> None:
        peer = plain_address(address[0])
        client = client_key(address[0])
        sensors = self.runtime.sensors
        idle = IdleWatch(self.idle_timeout, sock)
        admitted = self.caps.admit(peer, idle)
        if not admitted and (crowded_out := self.caps.make_room(peer, IdleWatch.idle)) is not None:
            crowded_out.close_for_room()
            sensors.add("ldap_crowded_out")
            self.peer_log.warning("room", client, "LDAP: every connection slot taken; an idle connection of the address "
                                  "holding the most was closed to let %s in", client)
            admitted = self.caps.admit(peer, idle)
        if not admitted:
            idle.close()
            self.peer_log.warning("cap", client, "LDAP connection refused: %d open from %s, %d from %s, %d in total",
                                  self.caps.open_from(peer), peer, self.caps.open_from(client), client, self.caps.open)
            sock.close()
            return
        sensors.set("ldap_connections_open", self.caps.open)
        session = proto.LdapSession(self.policy, self.directory, time.monotonic, tls=tls_first, address=peer, buffers=self.buffers,
                                    paged=self.paged)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # answers go out whole; no Nagle delay
            self._serve(sock, session, peer, tls_first, idle)
        except WriteStalled:
            sensors.add("ldap_write_stalled_closed")
            self.peer_log.warning("stalled", peer, "LDAP connection from %s closed: it read nothing of its answers for %g s",
                                  peer, WRITE_STALL)
        except ssl.SSLError as exc:  # a client that speaks no (or bad) TLS: its fault, logged rate-limited
            self.peer_log.warning("tls", peer, "LDAP TLS failed: %s", exc.reason or exc)
        except (TimeoutError, ConnectionError, OSError):
            pass  # vanished or silent peer: close quietly
        except Exception:
            self.log.exception("LDAP connection from %s failed", peer)
        finally:
            idle.close()
            sock.close()
            session.close()
            self.caps.release(idle)
            sensors.set("ldap_connections_open", self.caps.open)
            sensors.set("ldap_buffered_bytes", self.buffers.held)
            sensors.set("ldap_paged_searches_open", self.paged.open)

    def _start_tls(self, sock, peer: str):
        """The socket wrapped in TLS (the handshake within HANDSHAKE_TIMEOUT, its steps in line: shells.handshake),
        its reads without a timeout (the IdleWatch's). An address (a /64) beginning handshakes faster than its pace
        (proto.ldap.HANDSHAKES_PER_SECOND) has its connection closed instead."""
        if self.handshake_pace.take(peer, 1.0, time.monotonic()) is not None:
            self.peer_log.warning("handshakes", client_key(peer), "LDAP TLS refused: %s begins TLS handshakes faster than "
                                  "%g a second", peer, proto.HANDSHAKES_PER_SECOND.per_address)
            raise ConnectionRefusedError("TLS handshakes too fast")
        tls = self.runtime.tls.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        handshake(tls, self.handshakes, HANDSHAKE_TIMEOUT)
        tls.settimeout(None)
        return tls

    def _serve(self, sock, session: proto.LdapSession, peer: str, tls_first: bool, idle: IdleWatch) -> None:
        if tls_first:
            sock = self._start_tls(sock, peer)
        else:
            sock.settimeout(None)  # a read waits until the IdleWatch ends it (a send that waits sets a timeout, then this back)
        sensors = self.runtime.sensors
        loop = gevent.get_hub().loop
        messages, work = 0, 0.0  # answered, and seconds spent, since this connection last let others go first
        while True:
            if messages >= TURN_MESSAGES or work >= TURN_WORK:
                # a socket that always has data never blocks, so the greenlet would never give the loop back
                self.turns.take()
                messages, work = 0, 0.0
            if session.backlog:  # pipelined messages beyond one batch: answer them before reading more
                data = b""
            else:
                asked = loop.iteration
                idle.reading_since = time.monotonic()
                data = sock.recv(RECV_SIZE)
                idle.reading_since = None
                if not data:
                    return
                if loop.iteration != asked:  # it waited, and the loop polled: a client that waits for its answers never waits in line
                    messages, work = 0, 0.0
            started, cpu, waits = time.perf_counter(), time.thread_time(), self.waits
            items = session.receive(data)
            # it ran without a pause: all that time, the loop served nothing else (its CPU time is read only
            # when it may be the longest: it is at most the wall time, and reading it is a system call)
            if self.waits == waits and time.perf_counter() - started > self.longest_hold:
                self._held(time.thread_time() - cpu)
            messages += session.answered
            sensors.set("ldap_buffered_bytes", self.buffers.held)
            for item in _coalesced(items):  # one send for a batch's answers
                if isinstance(item, proto.SearchCursor):
                    if self._search(item, sock, session.client, peer):
                        return
                    continue
                sock = self._act(item, sock, session, session.client, peer)
                if sock is None:
                    return
            # wall time: where this greenlet waited (a search's turn, a failed bind's delay) or the kernel ran
            # another process, that counts too, which only brings its next wait in line sooner
            work += time.perf_counter() - started

    def _act(self, item, sock, session: proto.LdapSession | None, client: str, peer: str):
        """Do what one output says; the socket to go on with (another after StartTLS), None to close."""
        sensors = self.runtime.sensors
        if isinstance(item, bytes):
            self._send(sock, item)
        elif isinstance(item, proto.Searched):
            sensors.add("ldap_searches")
            if item.time_limited:
                sensors.add("ldap_searches_time_limited")
        elif isinstance(item, proto.BindFailed):
            sensors.add("ldap_binds_failed")
            self.peer_log.warning("bind", peer, "LDAP bind as %r refused (resultCode %d)", item.name[:80], item.result_code)
            gevent.sleep(self.throttle.delay(client, time.monotonic()))
        elif isinstance(item, proto.StartTLS):
            sock = self._start_tls(sock, peer)
            session.tls_started()
        elif isinstance(item, proto.Close):
            if item.oversize:
                sensors.add("ldap_oversize_closed")
                self.peer_log.warning("oversize", peer, "LDAP connection closed: %s", item.reason)
            elif item.reason:
                self.peer_log.warning("protocol", peer, "LDAP protocol error, disconnected: %s", item.reason)
            return None
        return sock

    def _send(self, sock, data: bytes) -> None:
        """All of `data`, or WriteStalled when the client reads none of it for WRITE_STALL seconds."""
        rest = self._send_now(sock, data)
        if rest is not None:
            self._send_rest(sock, rest)

    @staticmethod
    def _send_now(sock, data: bytes) -> memoryview | None:
        """What of `data` the kernel did not take at once (a plain socket's send does not wait), None: all of it
        (most answers fit the kernel's buffer: no timeout is set and set back for them)."""
        view = memoryview(data)
        if type(sock) is gsocket.socket:
            try:
                sent = sock.send(view, 0, 0.0)  # a timeout of 0: EAGAIN raised, not waited for
            except BlockingIOError:
                sent = 0
            if sent == len(view):
                return None
            view = view[sent:]
        return view

    def _send_rest(self, sock, view: memoryview) -> None:
        """Send `view` waiting for the client to read: WriteStalled when it reads none of it for WRITE_STALL
        seconds (gevent's sendall timeout is for the whole send: a phone reading a long answer slowly is no fault)."""
        sock.settimeout(WRITE_STALL)
        try:
            while view:
                view = view[sock.send(view):]
        except TimeoutError:
            raise WriteStalled from None
        finally:
            sock.settimeout(None)

    def _search(self, cursor: proto.SearchCursor, sock, client: str, peer: str) -> bool:
        """Run a search to its end, a slice per turn, sending as it goes; True if the connection must close.
        While the client is waited for to read what a slice found, the search is suspended: a client that does
        not read holds no slot."""
        sensors = self.runtime.sensors
        ticket = self.fair.start(peer)
        if ticket is None:
            sensors.add("ldap_searches_busy")
            self.peer_log.warning("busy", client, "LDAP search refused as busy: %d in progress from %s, %d from %s, %d running in all",
                                  self.fair.running_from(peer), peer, self.fair.running_from(client), client, self.fair.running)
            outputs = cursor.refuse(proto.BUSY, "too many searches in progress; try again")
        else:
            outputs = []
        # the counts are shown before this greenlet lets others run (one may read them): when the gate queues
        # the search, and when it waits for its client to read; and again at its end if they were shown
        # meanwhile (with it in them). A phone's search, one slice sent at once, shows nothing: the counts
        # are what they were before it
        shown = self.counts_shown
        try:
            while True:
                for item in _coalesced(outputs):
                    if type(item) is bytes:
                        rest = self._send_now(sock, item)
                        if rest is None:
                            continue
                        if ticket is not None:
                            self.fair.suspend(ticket)
                            self._count_searches()
                        try:
                            self._send_rest(sock, rest)
                        finally:
                            if ticket is not None and not cursor.done:  # one that is done ends below, suspended
                                self.fair.resume(ticket)
                                self._count_searches()
                    elif self._act(item, sock, None, client, peer) is None:
                        return True
                if cursor.done:
                    return False
                outputs = self.gate.run(ticket, cursor)
                self._held(self.gate.longest)
        finally:
            if ticket is not None:
                self.fair.end(ticket)
                if self.counts_shown != shown:
                    self._count_searches()
            sensors.set("ldap_paged_searches_open", self.paged.open)

    def _count_searches(self) -> None:
        self.counts_shown += 1
        sensors = self.runtime.sensors
        sensors.set("ldap_searches_running", self.fair.running)
        sensors.set("ldap_searches_waiting_on_clients", self.fair.suspended)

    def _count_line(self) -> None:
        """The gate put a search in line or took one from it (FairShare.next counts the searches passed over)."""
        self._count_searches()
        self.runtime.sensors.set("ldap_searches_delayed", self.fair.delayed)

    def _held(self, seconds: float) -> None:
        """Count the CPU time one piece of LDAP work took without letting the loop serve others
        (CPU, not wall time: the kernel running other processes meanwhile is not ours)."""
        if seconds > self.longest_hold:
            self.longest_hold = seconds
            self.runtime.sensors.set("ldap_longest_hold_microseconds", int(seconds * 1e6))
