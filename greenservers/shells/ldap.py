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

The directory follows the address book (`DirectoryFollower`, one greenlet per
book): it is built once, a slice of work at a time between turns of the event
loop, then changed a contact at a time as the book's change log says
(greenservers/addressbook/store.py). A change this process commits wakes it at once;
one by another process (the CLI) is noticed by polling the book every POLL
seconds, and by a search (at most one look every FRESH seconds). A search
waits until a few changes noticed are applied (a phone finds the contact it
was just given), never for an import. A large backlog (an import) is merged in slices, and other contacts'
changes are applied between them. Only a new base DN,
a log pruned past what the follower read, or a change of most of the book (an
import replacing it) builds a new directory, which replaces the old one when it
is complete; the old one is freed in steps once no search holds it.
"""

from __future__ import annotations

import resource
import socket
import ssl
import sys
import time
from collections.abc import Iterable, Iterator
from functools import partial
from itertools import islice

import gevent
from gevent import socket as gsocket
from gevent.event import Event
from gevent.hub import Waiter
from gevent.server import StreamServer

from ..addressbook import AddressBook, ChangeReader, addressbook_for
from ..process.offload import freeze_the_built, no_full_collections
from ..proto import ldap as proto
from ..proto.clients import client_key, plain_address
from ..ratelog import RateLimitedLog
from ..services import Service
from .loop import Turns, serve_ready_then_continue

IDLE_TIMEOUT = 120.0  # phones keep a connection between searches; longer is a leak
HANDSHAKE_TIMEOUT = 10.0
MAX_PER_CLIENT = 256  # per address: a NAT can hide many phones behind one (an IPv6 /64 may hold a quarter of all)
MAX_TOTAL = 4096
RECV_SIZE = 65536  # also what one connection may have read and not answered yet
WRITE_STALL = 10.0  # seconds a send may wait without its client reading a byte; then the connection closes
TURN_MESSAGES = 256  # messages a connection answers before the loop serves others
TURN_WORK = 0.001  # seconds a connection works before the loop serves others
DISMANTLE_PAUSE = 0.001  # seconds between the steps that free a replaced directory
DISMANTLE_WAIT = 1.0  # seconds between looks at whether a search still reads a replaced directory
DISMANTLE_PATIENCE = 600.0  # seconds it waits for them (a client's paged search may go on)
SLICE = 0.002  # seconds one search runs before the event loop serves the others
POLL = 0.015  # seconds between looks for changes another process committed to the address book
FRESH = 0.005  # a search looks first too, if the last look is older than this (a look: about 6 us and 3 system calls)
CATCH_UP = 0.1  # seconds a search waits at a time for a change it noticed to be applied (and at most, for an import's)
APPLIED_WITHIN = 2.0  # seconds it waits at most for a few changes (milliseconds of work, unless the machine is very busy)
APPLY_SLICE = 0.001  # seconds of directory changes between two turns of the event loop
READ_PAGE = 64  # contacts read from the book per query: a read of 250 held the loop 2.5-3 ms, past APPLY_SLICE
LOG_PAGE = 1000  # changes read from the log per query (about a millisecond)
REBUILD_SHARE = 0.5  # more changed contacts than this share of the directory: built anew rather than changed
MEANWHILE = 64  # changes of other contacts applied between a merge's slices; more wait for it to end


def _coalesced(outputs: list) -> list:
    """The outputs with each run of bytes joined: one send (a system call) for a slice's entries and its SearchResultDone."""
    if len(outputs) < 2:
        return outputs
    joined: list = []
    for item in outputs:
        if isinstance(item, bytes) and joined and isinstance(joined[-1], bytes):
            joined[-1] += item
        else:
            joined.append(item)
    return joined


class WriteStalled(Exception):
    """The client read nothing of an answer for WRITE_STALL seconds."""


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
    greenlet that sends them. `counted()` is called when a search gets in line
    and when one is taken from it (FairShare's counts changed, and others may
    read them meanwhile). Between two, it waits for a zero timer of lower
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
        while True:
            if not self.fair.waiting:
                self._work.wait()
                self._work.clear()
                continue
            if not self._may_run():
                serve_ready_then_continue()
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


def _pages(ids: Iterable[int]) -> Iterator[list[int]]:
    """`ids` READ_PAGE at a time."""
    each = iter(ids)
    while page := list(islice(each, READ_PAGE)):
        yield page


def _deleted_steps(directory: proto.Directory, ids: Iterable[int], present: dict[int, None]) -> Iterator[None]:
    """Steps that delete from the directory the contacts of `ids` the book no longer has (not `present`):
    a step per id, so that looking through an import's ids is cut in slices too."""
    for id_ in ids:
        if id_ not in present:
            directory.delete(id_)
        yield


class DirectoryFollower:
    """Keeps the Directory of one address book current (see the module's docstring): `current(base)`."""

    def __init__(self, book: AddressBook, base: str, log):
        self.book, self.base, self.log = book, base, log
        self.directory: proto.Directory | None = None
        self.applied = 0  # contacts added, changed or deleted since the directory was built
        self.catch_ups = 0  # times a search waited for a change it noticed to be applied
        self._built = Event()
        self._wake = Event()
        self._caught_up = Event()
        self._reader: ChangeReader | None = None
        self._looked = 0.0
        self._noticed = False
        self._large = False  # the change being read or applied is large (an import): searches do not wait for it
        self._seq = 0  # the last change of the book's log applied
        self._hub = gevent.get_hub()
        book.subscribe(self._notified)
        self._greenlet = gevent.spawn(self._run)

    def current(self, base: str) -> proto.Directory | None:
        """The directory of `base` if it is built, else None (then `wait()` for it).

        A change committed since the last look (by this process or another) is
        applied first (`_wait_applied`)."""
        directory = self.directory
        if directory is not None and directory.base == base:
            now = time.monotonic()
            if now - self._looked >= FRESH and self._reader is not None:
                self._looked = now
                if self._reader.changed():
                    self._noticed = True
                    self._caught_up.clear()
                    self._wake.set()
            if not self._caught_up.is_set():  # noticed here, or by the follower, which is applying it
                self._wait_applied()
            return directory
        if base != self.base:
            self.base = base
            self._built.clear()
            self._wake.set()
        return None

    def _wait_applied(self) -> None:
        """Until a change noticed is applied, so a phone finds the contact it was just given: a few changes
        APPLIED_WITHIN at most (milliseconds of work, but a busy machine once stretched them past CATCH_UP);
        a large change (an import: seconds of merging) not at all once the follower knows it is large, and
        CATCH_UP at most before (it reads the first page of the log)."""
        if self._large:
            return
        self.catch_ups += 1
        deadline = time.monotonic() + APPLIED_WITHIN
        while not self._caught_up.wait(CATCH_UP):
            if self._large or time.monotonic() >= deadline:
                return

    def wait(self, base: str) -> proto.Directory:
        while True:
            directory = self.current(base)
            if directory is not None:
                return directory
            self._built.wait()

    def _notified(self) -> None:
        """The book committed a change (called in the thread that made it)."""
        self._hub.loop.run_callback_threadsafe(self._wake.set)

    def _run(self) -> None:
        reader = self._reader = self.book.reader()
        try:
            while True:
                try:
                    self._follow(reader)
                except Exception:
                    self.log.exception("could not index the address book; trying again")
                    gevent.sleep(1.0)
        finally:
            reader.close()

    def _follow(self, reader: ChangeReader) -> None:
        """Build a directory, then apply changes until it must be built again."""
        base = self.base
        reader.changed()
        self._seq = reader.last_change()  # changes from here on are applied after the build
        directory = proto.Directory(base)
        with no_full_collections():  # a full collection would land in a slice
            self._run_steps(directory.merge_steps(self._each(reader)))
            old, self.directory, self.applied = self.directory, directory, 0
            if old is not None:
                LdapService.retire(old)
                del old
            freeze_the_built()
        self._large = False
        self._caught_up.set()  # what the build read is applied
        self._built.set()
        # a repeating timer wakes it to poll: a wait with a timeout would raise gevent.Timeout into this
        # greenlet each time it ran out (an exception thrown through greenlet's C++ code, 66 times a second)
        poll = self._hub.loop.timer(POLL, POLL)
        poll.start(self._wake.set)
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self.base != directory.base:
                    return
                if not (reader.changed() or self._noticed):
                    self._caught_up.set()
                    continue
                self._caught_up.clear()  # a search meanwhile waits for it too
                self._noticed = False
                ids = self._changed_ids(reader, directory)
                if ids is None or not self._apply(reader, directory, ids):
                    return  # build anew
                self._large = False
                self._caught_up.set()
        finally:
            poll.close()

    def _changed_ids(self, reader: ChangeReader, directory: proto.Directory) -> dict[int, None] | None:
        """The ids of the contacts changed since the last change read (which moves on), in the order of
        their changes (keys of a dict of ints: the cyclic collector does not track it, where it scanned a
        list or set of an import's 50,000 ids for milliseconds with the loop held); None when the directory
        must be built anew: the log was pruned past it, or most of the book changed (an import replacing
        it: built anew, then swapped in)."""
        ids: dict[int, None] = {}
        while True:
            got = reader.changes_after(self._seq, LOG_PAGE)
            if got is None:
                self._large = True
                return None
            changed, self._seq = got
            if not changed:
                return ids
            ids.update(dict.fromkeys(changed))
            if len(ids) > MEANWHILE:
                self._large = True
            if len(ids) > REBUILD_SHARE * max(len(directory), 1000):
                return None
            serve_ready_then_continue()  # a page of the log read: the loop serves the others before the next

    def _apply(self, reader: ChangeReader, directory: proto.Directory, ids: dict[int, None]) -> bool:
        """The contacts of `ids` as they are in the book now (absent: deleted) into the directory. Many
        (an import) are merged; a few are put one by one: either way the work is in proportion to them.
        While a merge runs, changes of other contacts are applied between its slices. False: the
        directory must be built anew."""
        present: dict[int, None] = {}  # as `ids`: not tracked by the collector

        def contacts():
            for page in _pages(ids):
                for contact in reader.contacts(page):
                    present[contact.id] = None
                    yield contact

        rebuild = False
        if len(ids) > max(256, len(directory) // 16):
            later: dict[int, None] = {}

            def meanwhile() -> None:
                nonlocal rebuild
                if rebuild or not (reader.changed() or self._noticed):
                    return
                self._noticed = False
                more = self._changed_ids(reader, directory)
                if more is None:
                    rebuild = True
                    return
                now = dict.fromkeys(i for i in more if i not in ids)
                if len(now) > MEANWHILE:  # another import: after this one
                    later.update(more)
                    return
                later.update(dict.fromkeys(i for i in more if i in ids))  # changed again: after the merge
                self._put_or_delete(reader, directory, now)
                self._caught_up.set()

            with no_full_collections():  # a full collection would land in a slice
                self._run_steps(directory.merge_steps(contacts()), meanwhile)
                self._run_steps(_deleted_steps(directory, ids, present))
                freeze_the_built()
            if later and not rebuild:
                rebuild = not self._apply(reader, directory, later)
        else:
            self._put_or_delete(reader, directory, ids)
        self._run_steps(directory.tidy_steps())
        self.applied += len(ids)
        return not rebuild

    def _put_or_delete(self, reader: ChangeReader, directory: proto.Directory, ids: dict[int, None]) -> None:
        present: dict[int, None] = {}
        for page in _pages(ids):
            contacts = reader.contacts(page)
            present.update(dict.fromkeys(c.id for c in contacts))
            self._run_steps(directory.put(c) for c in contacts)
        self._run_steps(_deleted_steps(directory, ids, present))

    @staticmethod
    def _each(reader: ChangeReader):
        after = 0
        while page := reader.after(after, READ_PAGE):
            yield from page
            after = page[-1].id

    @staticmethod
    def _run_steps(steps, meanwhile=None) -> None:
        """Run an iterator's steps, letting the loop serve what is ready every APPLY_SLICE seconds
        (and calling `meanwhile()` then, if given). A turn, not a sleep: the follower takes the time
        no one else needs, and a build is not stretched by pauses while nothing else waits."""
        deadline = time.monotonic() + APPLY_SLICE
        for _ in steps:
            if time.monotonic() >= deadline:
                serve_ready_then_continue()
                if meanwhile is not None:
                    meanwhile()
                deadline = time.monotonic() + APPLY_SLICE


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
        self.peer_log = RateLimitedLog(self.log)
        self.idle_timeout = IDLE_TIMEOUT
        self.longest_hold = 0.0
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
                follower = self._followers[book] = DirectoryFollower(book, settings.ldap_base, self.log)
            self._follower_of = cached = (settings, follower)
        return cached[1]

    def directory(self, base: str) -> proto.Directory:
        follower = self.follower()
        catch_ups = follower.catch_ups
        directory = follower.current(base)
        if directory is None or follower.catch_ups != catch_ups:
            self.waits += 1  # this receive() waits (cooperatively) for the directory: built, or a change applied
        if directory is None:
            directory = follower.wait(base)
        return directory

    @staticmethod
    def retire(old: proto.Directory) -> None:
        holder = [old]
        del old
        gevent.spawn(LdapService._dismantle, holder)

    @staticmethod
    def _dismantle(holder: list) -> None:
        """Free a replaced directory in steps between other greenlets' turns, once nothing else uses it."""
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
        held = self.caps.admit(peer)
        if held is None:
            self.peer_log.warning("cap", client, "LDAP connection refused: %d open from %s, %d from %s, %d in total",
                                  self.caps.open_from(peer), peer, self.caps.open_from(client), client, self.caps.open)
            sock.close()
            return
        sensors.set("ldap_connections_open", self.caps.open)
        session = proto.LdapSession(self.policy, self.directory, time.monotonic, tls=tls_first, address=peer, buffers=self.buffers,
                                    paged=self.paged)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # answers go out whole; no Nagle delay
            self._serve(sock, session, peer, tls_first)
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
            sock.close()
            session.close()
            self.caps.release(held)
            sensors.set("ldap_connections_open", self.caps.open)
            sensors.set("ldap_buffered_bytes", self.buffers.held)
            sensors.set("ldap_paged_searches_open", self.paged.open)

    def _start_tls(self, sock):
        sock.settimeout(HANDSHAKE_TIMEOUT)
        return self.runtime.tls.context.wrap_socket(sock, server_side=True)

    def _serve(self, sock, session: proto.LdapSession, peer: str, tls_first: bool) -> None:
        if tls_first:
            sock = self._start_tls(sock)
        sock.settimeout(self.idle_timeout)  # what a read waits at most (a send that waits changes it back)
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
                data = sock.recv(RECV_SIZE)
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
            sock = self._start_tls(sock)
            sock.settimeout(self.idle_timeout)
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
        """All of `data`, or WriteStalled when the client reads none of it for WRITE_STALL seconds (gevent's
        sendall timeout is for the whole send: a phone reading a long answer slowly is no fault).

        A plain socket tries first without waiting: most answers fit the kernel's buffer at once, and the
        socket keeps the idle timeout its reads wait with (not changed and changed back per answer)."""
        view = memoryview(data)
        if type(sock) is gsocket.socket:
            try:
                sent = sock.send(view, 0, 0.0)  # a timeout of 0: EAGAIN raised, not waited for
            except BlockingIOError:
                sent = 0
            view = view[sent:]
            if not view:
                return
        sock.settimeout(WRITE_STALL)
        try:
            while view:
                view = view[sock.send(view):]
        except TimeoutError:
            raise WriteStalled from None
        finally:
            sock.settimeout(self.idle_timeout)

    def _search(self, cursor: proto.SearchCursor, sock, client: str, peer: str) -> bool:
        """Run a search to its end, a slice per turn, sending as it goes; True if the connection must close.
        While what a slice found is sent, the search is suspended: a client that does not read holds no slot."""
        sensors = self.runtime.sensors
        ticket = self.fair.start(peer)
        if ticket is None:
            sensors.add("ldap_searches_busy")
            self.peer_log.warning("busy", client, "LDAP search refused as busy: %d in progress from %s, %d from %s, %d running in all",
                                  self.fair.running_from(peer), peer, self.fair.running_from(client), client, self.fair.running)
            outputs = cursor.refuse(proto.BUSY, "too many searches in progress; try again")
        else:
            outputs = []
        # the counts are shown before this greenlet lets others run (one may read them): when the gate
        # queues the search, and when it is suspended to send; a search done in one slice sets them twice
        try:
            while True:
                if outputs:
                    if ticket is not None:
                        self.fair.suspend(ticket)
                        self._count_searches()
                    try:
                        for item in _coalesced(outputs):
                            if self._act(item, sock, None, client, peer) is None:
                                return True
                    finally:
                        if ticket is not None and not cursor.done:  # one that is done ends below, suspended
                            self.fair.resume(ticket)
                            self._count_searches()
                if cursor.done:
                    return False
                outputs = self.gate.run(ticket, cursor)
                self._held(self.gate.longest)
        finally:
            if ticket is not None:
                self.fair.end(ticket)
                self._count_searches()
            sensors.set("ldap_paged_searches_open", self.paged.open)

    def _count_searches(self) -> None:
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
