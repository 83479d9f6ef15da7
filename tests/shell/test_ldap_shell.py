"""The LDAP shell in-process on port 0 (gevent sockets): idle timeout, StartTLS, caps, throttle, sensors, bugs."""

from __future__ import annotations

import gc
import sqlite3
import time
from types import SimpleNamespace

import gevent
import pytest
from gevent import socket as gsocket, ssl as gssl
from gevent.event import Event
from support import ldap_wire as w
from support.ldap import complete, read_until_done
from support.wait import eventually

from greenservers.addressbook import AddressBook, ChangeReader, addressbook_for
from greenservers.config.settings import Settings
from greenservers.process import offload
from greenservers.proto import ldap
from greenservers.proto.ldap.limits import USAGE_GRAIN
from greenservers.sensors import SensorRegistry
from greenservers.shells import ldap as shell, ldap_follower
from greenservers.tls.certificates import ensure_certificate

PASSWORD = "shell-secret"


@pytest.fixture
def served(tmp_path):
    settings = Settings.from_raw({"ldap_password": PASSWORD, "data_dir": str(tmp_path / "data")}, tmp_path)
    pair = ensure_certificate(settings)
    # gevent's SSLContext: this process is not monkey-patched (the worker is: ARCHITECTURE.md)
    context = gssl.SSLContext(gssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pair.cert_path), str(pair.key_path))
    runtime = SimpleNamespace(settings=settings, sensors=SensorRegistry(), tls=SimpleNamespace(context=context, pair=pair))
    addressbook_for(runtime).add({"display_name": "Reception", "extension": "9"})
    service = shell.LdapService(runtime)
    servers = []

    def start(setting: str = "ip_ldap_port"):
        listener = gsocket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        server = service.make_server(SimpleNamespace(sock=listener, setting=setting))
        server.start()
        servers.append(server)
        return listener.getsockname()[1]

    yield service, runtime, start
    for server in servers:
        server.stop(timeout=1)


def connect(port: int):
    return gsocket.create_connection(("127.0.0.1", port), timeout=5)


def test_search_and_sensors(served):
    service, runtime, start = served
    port = start()
    sock = connect(port)
    sock.sendall(w.bind(1, "phonebook", PASSWORD))
    assert read_until_done(sock)[0].code == 0
    assert runtime.sensors.value("ldap_connections_open") == 1
    sock.sendall(w.search(2, "(ipPhone=9)", attributes=["cn"]))
    responses = read_until_done(sock)
    assert responses[0].attributes == {"cn": ["Reception"]}
    assert runtime.sensors.value("ldap_searches") == 1
    sock.sendall(w.unbind(3))
    assert sock.recv(10) == b""
    sock.close()
    # the probe yields to the hub (time.sleep is not gevent's here): the server's greenlet cleans up meanwhile
    eventually(lambda: gevent.sleep(0.001) or runtime.sensors.value("ldap_connections_open") == 0)


def test_idle_connection_is_closed(served):
    service, runtime, start = served
    service.idle_timeout = 0.2
    sock = connect(start())
    sock.settimeout(5)
    assert sock.recv(10) == b""  # closed by the server, well before the client's 5 s


def test_failed_binds_are_counted_and_throttled_per_address(served):
    service, runtime, start = served
    service.throttle.first = 0.01  # keep the test quick; the doubling is tested without sockets
    sock = connect(start())
    for message_id in (1, 2):
        sock.sendall(w.bind(message_id, "phonebook", "wrong"))
        assert read_until_done(sock)[0].code == ldap.INVALID_CREDENTIALS
    assert runtime.sensors.value("ldap_binds_failed") == 2
    assert service.throttle.failures("127.0.0.1", time.monotonic()) == 2


def test_starttls_then_search_and_ldaps(served):
    service, runtime, start = served
    client_context = gssl.SSLContext(gssl.PROTOCOL_TLS_CLIENT)
    client_context.load_verify_locations(cafile=str(runtime.tls.pair.cert_path))
    sock = connect(start())
    sock.sendall(w.extended(1, ldap.OID_STARTTLS))
    assert read_until_done(sock)[0].code == 0
    tls = client_context.wrap_socket(sock, server_hostname="localhost")
    tls.sendall(w.bind(2, "phonebook", PASSWORD) + w.search(3, "(cn=rec*)", attributes=["1.1"]))
    responses = read_until_done(tls)
    responses += read_until_done(tls) if len(responses) < 3 else []
    assert [r.code for r in responses if r.tag != ldap.SEARCH_RESULT_ENTRY] == [0, 0]
    tls.sendall(w.extended(4, ldap.OID_STARTTLS))
    assert read_until_done(tls)[0].code == ldap.OPERATIONS_ERROR
    tls.close()
    ldaps = client_context.wrap_socket(connect(start("ip_ldaps_port")), server_hostname="127.0.0.1")
    ldaps.sendall(w.search(1, base="", scope=0, attributes=["supportedExtension"]))
    assert ldap.OID_STARTTLS in read_until_done(ldaps)[0].attributes["supportedExtension"]
    ldaps.close()


def test_connection_cap_per_address(served):
    service, runtime, start = served
    service.caps = ldap.ConnectionCaps(per_client=2, total=10)
    port = start()
    held = [connect(port), connect(port)]
    eventually(lambda: gevent.sleep(0.001) or service.caps.open == 2)  # both admitted before the third arrives
    third = connect(port)
    assert third.recv(10) == b""
    for sock in held + [third]:
        sock.close()


def test_when_every_slot_is_taken_an_idle_connection_of_the_client_holding_most_makes_room(served):
    service, runtime, start = served
    service.caps = ldap.ConnectionCaps(per_client=4, total=4)
    port = start()
    hog = [gsocket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0)) for _ in range(4)]
    eventually(lambda: gevent.sleep(0.001) or service.caps.open == 4)  # all four admitted, each waiting for a request
    phone = connect(port)  # 127.0.0.1: the hog's oldest idle connection gives its place
    phone.sendall(w.search(1, base="", scope=0, attributes=["supportedExtension"]))
    assert read_until_done(phone)[-1].code == 0
    assert hog[0].recv(10) == b""
    assert runtime.sensors.value("ldap_crowded_out") == 1 and service.caps.open == 4
    for sock in hog + [phone]:
        sock.close()


def test_an_address_beginning_tls_handshakes_past_its_pace_is_closed_before_the_handshake(served):
    """One address opening 800 LDAPS connections a second made every other client's handshake wait 120 ms in
    line (each costs the server up to a millisecond). Past its pace, its connections close before one."""
    from greenservers.proto.clients import AddressBuckets, Shares

    service, runtime, start = served
    service.handshake_pace = AddressBuckets(Shares(0.0, 0.0), Shares(2, 2))  # two, then none
    port = start("ip_ldaps_port")
    context = gssl.SSLContext(gssl.PROTOCOL_TLS_CLIENT)  # gevent's: its handshake lets the server run
    context.load_verify_locations(cafile=str(runtime.tls.pair.cert_path))
    shaken = [context.wrap_socket(connect(port), server_hostname="localhost") for _ in range(2)]
    with pytest.raises((OSError, gssl.SSLError)):
        context.wrap_socket(connect(port), server_hostname="localhost")  # the third: closed, no handshake
    starttls = connect(start())  # StartTLS counts the same
    starttls.sendall(w.extended(1, ldap.OID_STARTTLS))
    assert read_until_done(starttls)[0].code == 0
    with pytest.raises((OSError, gssl.SSLError)):
        context.wrap_socket(starttls, server_hostname="localhost")
    for sock in shaken:
        sock.close()


def test_a_bug_is_logged_and_the_server_keeps_serving(served, caplog, monkeypatch):
    service, runtime, start = served
    port = start()
    monkeypatch.setitem(ldap.OPERATIONS, ldap.SEARCH_REQUEST, lambda *args: 1 / 0)
    sock = connect(port)
    sock.sendall(w.search(1, base="", scope=0))
    assert sock.recv(10) == b""
    assert "LDAP connection from 127.0.0.1 failed" in caplog.text
    monkeypatch.undo()
    sock = connect(port)
    sock.sendall(w.search(1, base="", scope=0))
    assert read_until_done(sock)[-1].code == 0


def test_pipelined_searches_beyond_one_batch_are_all_answered(served):
    service, runtime, start = served
    sock = connect(start())
    sock.sendall(w.bind(1, "phonebook", PASSWORD) + b"".join(w.search(10 + i, "(ipPhone=9)", attributes=["1.1"]) for i in range(40)))
    data, done = b"", []
    while len(done) < 40:
        chunk = sock.recv(65536)
        assert chunk
        data += chunk
        if complete(data):
            done = [r.message_id for r in w.parse_responses(data) if r.tag == ldap.SEARCH_RESULT_DONE]
    assert done == list(range(10, 50))
    sock.close()


def test_outputs_are_sent_with_each_run_of_bytes_joined_and_events_in_their_place():
    searched, close = ldap.Searched(2), ldap.Close()
    outputs = [b"e1", b"e2", b"e3", b"done", searched, b"next", close, b"x", b"y"]
    assert shell._coalesced(outputs) == [b"e1e2e3done", searched, b"next", close, b"xy"]
    assert shell._coalesced([searched, b"a"]) == [searched, b"a"]
    assert shell._coalesced([b"a"]) == [b"a"]


EXPENSIVE = "(|" + "(cn~=zzyzx)" * 100 + "(sn=*77))"  # a scan: every contact checked against 101 items


def add_contacts(runtime, count: int) -> None:
    rows = "".join(f"Person{i},Name{i:05d},+1 555 {i:07d}\n" for i in range(count))
    addressbook_for(runtime).import_csv("first_name,last_name,work\n" + rows)


def bound_connection(port: int, source: str = "127.0.0.1"):
    sock = gsocket.socket()
    sock.bind((source, 0))
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    sock.sendall(w.bind(1, "phonebook", PASSWORD))
    assert read_until_done(sock)[0].code == 0
    return sock


def read_search(sock) -> list[w.Response]:
    responses = []
    while not responses or responses[-1].tag == ldap.SEARCH_RESULT_ENTRY:
        responses += read_until_done(sock)
    return responses


def test_a_long_search_runs_in_slices_and_another_clients_search_goes_first(served):
    service, runtime, start = served
    add_contacts(runtime, 10000)  # the heavy search takes a few hundred milliseconds, a tenth of that on a fast machine
    port = start()
    heavy = bound_connection(port, "127.0.0.1")
    light = bound_connection(port, "127.0.0.2")  # another client
    heavy.sendall(w.search(2, EXPENSIVE, attributes=["sn"]))

    eventually(lambda: gevent.sleep(0.001) or service.fair.usage("127.0.0.1", time.monotonic()) >= 2 * USAGE_GRAIN,
               timeout=30, interval=0, what="the heavy search's usage worth more than the light client's (none)")
    assert service.fair.running_from("127.0.0.1") == 1, "the heavy search ended before the light one was sent"
    light.sendall(w.search(2, "(sn=name00042)", attributes=["sn"]))
    answer = read_search(light)
    assert [r.attributes["sn"] for r in answer[:-1]] == [["Name00042"]] and answer[-1].code == 0
    assert service.fair.running == 1  # answered while the heavy search still runs
    responses = read_search(heavy)
    assert responses[-1].code == 0 and len(responses) - 1 == 100  # Name...77: one in a hundred
    assert runtime.sensors.value("ldap_searches_delayed") >= 1  # the heavy one waited behind the light one
    assert runtime.sensors.value("ldap_searches_running") == 0 and runtime.sensors.value("ldap_longest_hold_microseconds") > 0
    heavy.close()
    light.close()


def test_searches_over_the_per_client_cap_are_answered_busy(served):
    service, runtime, start = served
    add_contacts(runtime, 2000)
    service.fair = service.gate.fair = ldap.FairShare(per_client=1)
    port = start()
    first, second = bound_connection(port), bound_connection(port)
    first.sendall(w.search(2, EXPENSIVE, attributes=["1.1"]))
    eventually(lambda: gevent.sleep(0.001) or service.fair.running, timeout=30, interval=0)
    second.sendall(w.search(2, "(sn=name00042)", attributes=["1.1"]))
    assert read_search(second)[-1].code == ldap.BUSY
    assert read_search(first)[-1].code == 0
    assert runtime.sensors.value("ldap_searches_busy") == 1
    second.sendall(w.search(3, "(sn=name00042)", attributes=["1.1"]))  # its turn now
    assert read_search(second)[-1].code == 0
    first.close()
    second.close()


def test_a_bug_in_a_slice_ends_its_connection_only(served, caplog, monkeypatch):
    service, runtime, start = served
    port = start()
    real = ldap.SearchCursor.run
    monkeypatch.setattr(ldap.SearchCursor, "run", lambda self, until: 1 / 0)
    broken = bound_connection(port)
    broken.sendall(w.search(2, "(cn=*)"))
    assert broken.recv(10) == b""
    assert "LDAP connection from 127.0.0.1 failed" in caplog.text and "ZeroDivisionError" in caplog.text
    monkeypatch.setattr(ldap.SearchCursor, "run", real)
    sock = bound_connection(port)
    sock.sendall(w.search(2, "(ipPhone=9)", attributes=["cn"]))
    assert read_search(sock)[0].attributes == {"cn": ["Reception"]}
    assert service.fair.running == 0
    sock.close()


class Slices:
    """A search cursor's stand-in for the gate: each slice busies the CPU a millisecond and notes its name and greenlet."""

    def __init__(self, name: str, order: list, before=None, clock=None):
        self.name, self.order, self.before = name, order, before
        self.clock = clock  # a SteppedClock: each slice takes its step instead of a millisecond of CPU
        self.greenlets: list = []
        self.iterations: list[int] = []  # the loop's iteration each slice ran in

    def run(self, until: float) -> list:
        if self.before is not None:
            self.before()
            self.before = None
        if self.clock is not None:
            self.clock.now += self.clock.step
        else:
            end = time.perf_counter() + 0.001
            while time.perf_counter() < end:  # never gives the loop a chance by itself
                pass
        self.order.append(self.name)
        self.greenlets.append(gevent.getcurrent())
        self.iterations.append(gevent.get_hub().loop.iteration)
        return [self.name]


class SteppedClock:
    def __init__(self, step: float):
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        return self.now


def test_the_gate_lets_the_loop_serve_a_ready_socket_and_what_it_spawned_between_two_slices():
    # what a ready socket's greenlet spawns (a TFTP listener's transfer) is a callback of the hub, which runs callbacks
    # only at its next turn: the dispatcher lets them go first, so the transfer does not wait for another slice
    gate = shell.SearchGate(ldap.FairShare())
    ready, peer = gsocket.socketpair()
    order: list = []

    def serve_one() -> None:
        ready.recv(10)
        order.append("served")
        gevent.spawn(order.append, "spawned")

    def search(name: str, before=None) -> None:
        ticket = gate.fair.start(name)
        cursor = Slices(name, order, before)
        for _ in range(3):
            assert gate.run(ticket, cursor) == [name]
        gate.fair.end(ticket)

    try:
        waiting = gevent.spawn(serve_one)
        gevent.idle()  # it waits in recv now
        searches = [gevent.spawn(search, "a", lambda: peer.send(b"x")), gevent.spawn(search, "b")]
        gevent.joinall([waiting, *searches], timeout=30, raise_error=True)
        assert order[:3] == ["a", "served", "spawned"] and sorted(order[3:]) == ["a", "a", "b", "b", "b"]
    finally:
        ready.close()
        peer.close()


def test_a_search_after_a_wait_for_its_client_runs_in_its_own_greenlet():
    gate = shell.SearchGate(ldap.FairShare())
    ours, theirs = gsocket.socketpair()
    order: list = []
    cursor = Slices("a", order)

    def sequential_client() -> None:  # a phone: a search, then a wait for its next request
        ticket = gate.fair.start("a")
        for _ in range(3):
            gate.run(ticket, cursor)
            # the client's next request is there at the loop's next poll, before the turn's timer fires
            gevent.get_hub().loop.run_callback(theirs.send, b"x")
            ours.recv(1)
        gate.fair.end(ticket)

    try:
        serving = gevent.spawn(sequential_client)
        serving.join(timeout=30)
        assert serving.successful()
        assert order == ["a"] * 3 and cursor.greenlets == [serving] * 3  # no hand-over to the dispatcher
    finally:
        ours.close()
        theirs.close()


def test_short_slices_without_a_poll_between_share_one_slice_s_time():
    clock = SteppedClock(shell.SLICE / 5)  # each slice takes a fifth of a slice's time
    gate = shell.SearchGate(ldap.FairShare(), clock=clock)
    cursor = Slices("a", [], clock=clock)

    def pipelining() -> None:  # its next request is always there: it never waits for the loop
        ticket = gate.fair.start("a")
        for _ in range(12):
            gate.run(ticket, cursor)
        gate.fair.end(ticket)

    client = gevent.spawn(pipelining)
    client.join(timeout=30)
    assert client.successful()
    # a new slice starts while less than half a slice's time went by since the loop's last poll: three, then a poll
    per_iteration = [cursor.iterations.count(i) for i in sorted(set(cursor.iterations))]
    assert per_iteration == [3, 3, 3, 3]
    assert cursor.greenlets[:3] == [client] * 3 and cursor.greenlets[3] is not client  # then handed to the dispatcher


def test_the_built_directory_and_a_merged_import_are_frozen_for_the_collector(served, monkeypatch):
    """Full collections skip the directory: frozen once built and again once an import is merged into it."""
    service, runtime, _ = served
    monkeypatch.setattr(offload.monkey, "is_module_patched", lambda name: name == "threading")  # as in the worker
    try:
        directory = service.directory(runtime.settings.ldap_base)
        assert id(directory) not in {id(o) for o in gc.get_objects()}
        before = directory.keys["sn"]
        addressbook_for(runtime).import_csv("first_name,last_name\n" + "".join(f"F{i},L{i}\n" for i in range(300)))
        eventually(lambda: gevent.sleep(0.01) or (len(service.directory(runtime.settings.ldap_base)) == 301  # the hub merges
                                                  and runtime.sensors.value("ldap_directory_pending") == 0))  # to its end
        merged = service.directory(runtime.settings.ldap_base).keys["sn"]  # made by the merge (the count of frozen objects
        assert merged is not before and id(merged) not in {id(o) for o in gc.get_objects()}  # falls as replaced ones go)
    finally:
        gc.unfreeze()  # the other tests' process as it was


def test_full_collections_are_off_while_an_import_is_merged_and_on_again_even_when_the_merge_fails(served, monkeypatch, caplog):
    service, runtime, _ = served
    monkeypatch.setattr(offload.monkey, "is_module_patched", lambda name: name == "threading")  # as in the worker
    before = gc.get_threshold()
    seen = []
    merge_steps = ldap.Directory.merge_steps

    def failing(self, contacts):
        for n, step in enumerate(merge_steps(self, contacts)):
            seen.append(gc.get_threshold()[2])
            if n == 3:
                raise RuntimeError("a bug in the merge")
            yield step

    try:
        service.directory(runtime.settings.ldap_base)
        monkeypatch.setattr(ldap.Directory, "merge_steps", failing)
        addressbook_for(runtime).import_csv("first_name,last_name\n" + "".join(f"F{i},L{i}\n" for i in range(300)))
        eventually(lambda: gevent.sleep(0.01) or "could not index the address book" in caplog.text)  # the hub runs the follower
        assert seen and set(seen) == {offload.NEVER}
        assert gc.get_threshold() == before
    finally:
        monkeypatch.setattr(ldap.Directory, "merge_steps", merge_steps)
        gc.unfreeze()


def _found(port: int, flt: str) -> list[str]:
    """The cn of every entry a bound search for `flt` finds."""
    sock = connect(port)
    try:
        sock.sendall(w.bind(1, "phonebook", PASSWORD) + w.search(2, flt, attributes=["cn"]))
        responses = read_until_done(sock)
        responses += read_until_done(sock) if len(responses) < 2 else []
        return [r.attributes["cn"][0] for r in responses if r.tag == ldap.SEARCH_RESULT_ENTRY]
    finally:
        sock.close()


def _held_merges(monkeypatch, after: int = 0) -> Event:
    """Every merge into a directory (a build, an import) waits until the event returned is set: at its start (the
    follower waits with it), or after `after` steps, in steps that do nothing (the follower applies changes between)."""
    release = Event()
    merge_steps = ldap.Directory.merge_steps

    def held(self, contacts):
        if not after:
            release.wait()
        for n, step in enumerate(merge_steps(self, contacts), 1):
            yield step
            while n == after and not release.is_set():
                yield

    monkeypatch.setattr(ldap.Directory, "merge_steps", held)
    return release


def test_a_search_that_notices_a_change_waits_until_it_is_applied_even_on_a_busy_machine(served, monkeypatch):
    """A change by another process (as the CLI makes it), applied slower than CATCH_UP (a busy machine),
    is still found by the search that noticed it."""
    service, runtime, start = served
    monkeypatch.setattr(ldap_follower, "FRESH", 0.0)  # every search looks for changes (not only one in FRESH seconds)
    port = start()
    assert _found(port, "(sn=elsewhere)") == []  # the directory is built
    put_or_delete = ldap_follower.DirectoryFollower._put_or_delete

    def busy(self, *args):
        gevent.sleep(3 * ldap_follower.CATCH_UP)
        return put_or_delete(self, *args)

    monkeypatch.setattr(ldap_follower.DirectoryFollower, "_put_or_delete", busy)
    other = AddressBook(addressbook_for(runtime).path)  # another connection: no notification, only the search's look
    try:
        other.add({"first_name": "Added", "last_name": "Elsewhere"})
    finally:
        other.close()
    assert _found(port, "(sn=elsewhere)") == ["Added Elsewhere"]


def test_a_search_does_not_wait_for_an_import_to_be_merged(served, monkeypatch):
    """While an import's merge is held back, a search that notices it answers from the directory as it was;
    the sensors say how many contacts the directory holds and how many it is applying."""
    service, runtime, start = served
    port = start()
    assert _found(port, "(sn=imported*)") == []

    def directory_sensors():
        gevent.sleep(0.01)  # the follower runs meanwhile (the probe's wait is not gevent's here)
        return runtime.sensors.value("ldap_directory_entries"), runtime.sensors.value("ldap_directory_pending")

    assert directory_sensors() == (1, 0)
    release = _held_merges(monkeypatch)
    try:
        other = AddressBook(addressbook_for(runtime).path)
        try:
            other.import_csv("first_name,last_name\n" + "".join(f"F{i},Imported{i}\n" for i in range(300)))
        finally:
            other.close()
        assert _found(port, "(sn=imported*)") == []  # answered while the merge waits (the client's timeout is 5 s)
        eventually(lambda: directory_sensors() == (1, 300))
    finally:
        release.set()
    eventually(lambda: gevent.sleep(0.01) or len(_found(port, "(sn=imported*)")) == 300)
    eventually(lambda: directory_sensors() == (301, 0))


def test_an_edit_read_from_the_log_with_an_import_does_not_wait_for_the_import_to_be_merged(served, monkeypatch):
    """An import, then at once an edit of a contact the directory holds and one of a contact just imported: the
    follower reads them from the log together. The edits are applied before the merge, not as part of it: found
    while the merge is held back."""
    service, runtime, start = served
    port = start()
    assert _found(port, "(ipPhone=77)") == []  # the directory is built
    release = _held_merges(monkeypatch)
    try:
        other = AddressBook(addressbook_for(runtime).path)  # another process's writes: the follower reads them in one look
        try:
            other.import_csv("first_name,last_name\n" + "".join(f"F{i},Imported{i}\n" for i in range(300)))
            other.change(other.after(0, 1)[0].id, {"extension": "77"})
            other.change(other.after(0, 301)[-1].id, {"last_name": "Fixed"})  # the import's last contact
        finally:
            other.close()
        eventually(lambda: _found(port, "(ipPhone=77)") == ["Reception"])  # while the merge waits
        eventually(lambda: _found(port, "(sn=fixed)") == ["F299 Fixed"])
        assert _found(port, "(sn=imported*)") == []
    finally:
        release.set()
    eventually(lambda: gevent.sleep(0.01) or len(_found(port, "(sn=imported*)")) == 299)
    assert _found(port, "(ipPhone=77)") == ["Reception"]
    assert _found(port, "(sn=fixed)") == ["F299 Fixed"]


class _HeldLogReads:
    """The follower reads the log 10 changes a page (an import of 300: 30 pages); at each page number given it waits
    until `go_on()`: `wait_for(n)` returns once it waits there. `ends`: the change each page was read up to."""

    def __init__(self, monkeypatch, *at: int):
        monkeypatch.setattr(ldap_follower, "LOG_PAGE", 10)
        self.ends: list[int | None] = []
        self._reached = {n: Event() for n in at}
        self._go = {n: Event() for n in at}
        changes_after = ChangeReader.changes_after

        def page_by_page(reader, seq, limit, through=None):
            if limit == ldap_follower.LOG_PAGE:  # a page of the import's log (not of the changes made meanwhile)
                self.ends.append(through)
                if len(self.ends) in self._reached:
                    self._reached[len(self.ends)].set()
                    self._go[len(self.ends)].wait()
            return changes_after(reader, seq, limit, through)

        monkeypatch.setattr(ChangeReader, "changes_after", page_by_page)

    def wait_for(self, page: int) -> None:
        assert self._reached[page].wait(5)

    def go_on(self, page: int | None = None) -> None:
        """Past `page`, or past every page it waits at."""
        for n, event in self._go.items():
            if page in (None, n):
                event.set()


def test_an_edit_committed_while_an_import_s_log_is_read_is_found_before_that_read_ends(served, monkeypatch):
    """An administrator's first edit after an import is committed while the follower reads the import's log,
    page by page: it is applied between two of those pages, not after the last one (then after the merge too)."""
    service, runtime, start = served
    port = start()
    assert _found(port, "(ipPhone=77)") == []  # the directory is built
    held = _HeldLogReads(monkeypatch, 8, 12)  # 8: past MEANWHILE (64) changes read, a large read
    book = addressbook_for(runtime)
    try:
        book.import_csv("first_name,last_name\n" + "".join(f"F{i},Imported{i}\n" for i in range(300)))
        held.wait_for(8)
        book.change(book.after(0, 1)[0].id, {"extension": "77"})
        gevent.sleep(2 * ldap_follower.FRESH)  # the next search looks at the book
        assert _found(port, "(sn=nobody)") == []  # a phone's search, whose look sees the edit before the follower
        held.go_on(8)
        held.wait_for(12)
        eventually(lambda: gevent.sleep(0.01) or _found(port, "(ipPhone=77)") == ["Reception"])
        assert len(held.ends) == 12  # the read of the import's log has not ended
    finally:
        held.go_on()
    eventually(lambda: gevent.sleep(0.01) or len(_found(port, "(sn=imported*)")) == 300)
    assert _found(port, "(ipPhone=77)") == ["Reception"]


def test_another_import_committed_while_an_import_s_log_is_read_is_read_after_it(served, monkeypatch):
    """Another process's import committed while the follower reads one's log is too large to apply between its
    pages: it is read after it, though the follower's look at the book that saw it is spent."""
    service, runtime, start = served
    port = start()
    assert _found(port, "(sn=second*)") == []
    held = _HeldLogReads(monkeypatch, 8)
    try:
        addressbook_for(runtime).import_csv("first_name,last_name\n" + "".join(f"F{i},First{i}\n" for i in range(300)))
        held.wait_for(8)
        other = AddressBook(addressbook_for(runtime).path)  # another process: no notification, only the follower's look
        try:
            other.import_csv("first_name,last_name\n" + "".join(f"S{i},Second{i}\n" for i in range(100)))
        finally:
            other.close()
    finally:
        held.go_on()
    eventually(lambda: gevent.sleep(0.01) or len(_found(port, "(sn=first*)")) == 300)
    eventually(lambda: gevent.sleep(0.01) or len(_found(port, "(sn=second*)")) == 100)


def test_a_log_pruned_past_what_the_follower_read_while_it_read_an_import_builds_the_directory_anew(served, monkeypatch):
    """The log is pruned ahead of the follower while it reads an import's (another process's import of more than
    LOG_KEEP changes would do it): the rest of the import is not skipped, the directory is built anew."""
    service, runtime, start = served
    port = start()
    assert _found(port, "(sn=imported*)") == []
    held = _HeldLogReads(monkeypatch, 8)
    book = addressbook_for(runtime)
    try:
        book.import_csv("first_name,last_name\n" + "".join(f"F{i},Imported{i}\n" for i in range(300)))
        held.wait_for(8)
        book.add({"display_name": "Late", "extension": "55"})
        pruning = sqlite3.connect(book.path)  # what pruning does once the log runs LOG_KEEP changes past the read's end
        try:
            with pruning:
                pruning.execute("DELETE FROM contact_changes WHERE seq <= ?", (held.ends[-1],))
        finally:
            pruning.close()
    finally:
        held.go_on()
    eventually(lambda: gevent.sleep(0.01) or len(_found(port, "(sn=imported*)")) == 300)
    assert _found(port, "(ipPhone=55)") == ["Late"]


def test_a_contact_of_an_import_changed_while_it_is_merged_is_found_changed_before_the_merge_ends(served, monkeypatch):
    """An administrator imports, then fixes one of the imported contacts at once: the fix is found while the merge
    goes on, whether the merge had read that contact (and holds it), holds it in a page read but not yet merged, or
    has yet to read it; and the merge's end does not bring an older copy back."""
    service, runtime, start = served
    port = start()
    assert _found(port, "(sn=imported*)") == []
    release = _held_merges(monkeypatch, after=11)  # 11 steps of 16 contacts read (of pages of 64), made, not indexed
    book = addressbook_for(runtime)
    try:
        book.import_csv("first_name,last_name\n" + "".join(f"F{i},Imported{i}\n" for i in range(300)))
        eventually(lambda: gevent.sleep(0.01) or len(service.directory(runtime.settings.ldap_base)) == 1 + 11 * 16)
        imported = [c.id for c in book.contacts() if c.last_name.startswith("Imported")]
        book.change(imported[0], {"last_name": "Fixed"})  # read and held by the merge
        book.change(imported[180], {"last_name": "Paged"})  # read in a page the merge has yet to take
        book.change(imported[250], {"last_name": "Unread"})  # not read yet
        book.delete(imported[1])
        for name, cn in (("fixed", "F0 Fixed"), ("paged", "F180 Paged"), ("unread", "F250 Unread")):
            eventually(lambda name=name, cn=cn: gevent.sleep(0.01) or _found(port, f"(sn={name})") == [cn])
        assert runtime.sensors.value("ldap_directory_pending") == 300  # the merge has not ended
    finally:
        release.set()
    eventually(lambda: gevent.sleep(0.01) or (runtime.sensors.value("ldap_directory_entries"),
                                              runtime.sensors.value("ldap_directory_pending")) == (300, 0))
    assert len(_found(port, "(sn=imported*)")) == 296
    assert [_found(port, f"(sn={name})") for name in ("fixed", "paged", "unread")] == [["F0 Fixed"], ["F180 Paged"], ["F250 Unread"]]
    assert _found(port, "(sn=imported1)") == []


def test_changes_of_an_imported_contact_beyond_what_a_merge_lets_go_wait_for_its_end(served, monkeypatch):
    """Each of a merge's own contacts taken out of it makes one of its steps longer (the loop held): past
    TAKEN_MAX of them, a change of another waits for the merge's end, and is applied then."""
    monkeypatch.setattr(ldap_follower, "TAKEN_MAX", 1)
    service, runtime, start = served
    port = start()
    assert _found(port, "(sn=imported*)") == []
    release = _held_merges(monkeypatch, after=11)
    book = addressbook_for(runtime)
    try:
        book.import_csv("first_name,last_name\n" + "".join(f"F{i},Imported{i}\n" for i in range(300)))
        eventually(lambda: gevent.sleep(0.01) or len(service.directory(runtime.settings.ldap_base)) == 1 + 11 * 16)
        imported = [c.id for c in book.contacts() if c.last_name.startswith("Imported")]
        book.change(imported[0], {"last_name": "Fixed"})
        eventually(lambda: gevent.sleep(0.01) or _found(port, "(sn=fixed)") == ["F0 Fixed"])  # the one let go
        book.change(imported[2], {"last_name": "Waiting"})
        book.change(book.after(0, 1)[0].id, {"extension": "79"})  # after it in the log: once found, that one was read
        eventually(lambda: gevent.sleep(0.01) or _found(port, "(ipPhone=79)") == ["Reception"])
        assert _found(port, "(sn=waiting)") == []
        assert runtime.sensors.value("ldap_directory_pending") == 300  # the merge has not ended
    finally:
        release.set()
    eventually(lambda: gevent.sleep(0.01) or _found(port, "(sn=waiting)") == ["F2 Waiting"])
    assert _found(port, "(sn=fixed)") == ["F0 Fixed"]
    assert len(_found(port, "(sn=imported*)")) == 298


def test_a_search_does_not_wait_for_a_change_the_follower_failed_to_apply(served, monkeypatch, caplog):
    """A bug (or a failing read) while a change is applied: searches go on from the directory as it is,
    without waiting for it (the bound on that wait is set out of reach here: only not waiting answers)."""
    service, runtime, start = served
    monkeypatch.setattr(ldap_follower, "FRESH", 0.0)
    monkeypatch.setattr(ldap_follower, "APPLIED_WITHIN", 600.0)
    port = start()
    assert _found(port, "(sn=elsewhere)") == []

    def failing(self, *args):
        raise RuntimeError("a bug while applying a change")

    monkeypatch.setattr(ldap_follower.DirectoryFollower, "_put_or_delete", failing)
    release = _held_merges(monkeypatch)  # the build that follows the failure, held back while the search asks
    try:
        other = AddressBook(addressbook_for(runtime).path)
        try:
            other.add({"first_name": "Added", "last_name": "Elsewhere"})
        finally:
            other.close()
        eventually(lambda: gevent.sleep(0.01) or "could not index the address book" in caplog.text)
        assert _found(port, "(sn=elsewhere)") == []  # answered (the client waits 5 s at most), from the directory as it was
    finally:
        release.set()
        monkeypatch.undo()
    eventually(lambda: gevent.sleep(0.01) or _found(port, "(sn=elsewhere)") == ["Added Elsewhere"])  # built anew
