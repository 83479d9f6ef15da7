"""The LDAP server attacked as a hostile phone network would: the running service with 30,000 contacts.

The phone book's password is in every provisioning file, so an attacker can
bind. Expensive filters through OpenLDAP's ldapsearch (time limits, the other
clients and services served meanwhile); unfinished messages over raw sockets,
before and after a bind (the memory they may hold, and that it comes back);
requests pipelined without end on one connection; connections that ask for
much and read nothing; paged searches left unfinished. Ordering and counts
are asserted, never a duration.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time

import pytest
import requests
from support import ldap_service, ldap_wire as w
from support.ldap import connection_from, read_until_done
from support.wait import eventually

from greenservers.proto import ber, ldap

pytestmark = pytest.mark.real_client

PASSWORD = "phones-secret-15"
ADMIN_PASSWORD = "ldap-attacks-admin-pw"
COUNT = 30000  # enough that three costly searches at once outlast a time limit of 1 s on a fast machine
# the costliest filter items there are (an untyped extensible match tries every attribute and the
# DN), within the limit of 256 units: alone, a search takes about a second (2026: 1.0 s on a fast core); (sn=*77) matches one
# contact in a hundred, spread over the book
EXPENSIVE = "(|" + "(:dn:2.5.13.4:=zzyzx)" * 15 + "(sn=*77))"


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    book = "first_name,last_name,work\n" + "".join(f"Person{i},Name{i:05d},+1 555 {i:07d}\n" for i in range(COUNT))
    proc = ldap_service(tmp_path_factory.mktemp("ldap-attacks"), book, PASSWORD, ADMIN_PASSWORD)
    yield proc
    proc.stop()


def ldapsearch(svc, *args: str, host: str = "127.0.0.1", wait: bool = True):
    command = ["ldapsearch", "-x", "-H", f"ldap://{host}:{svc.port('ip_ldap_port')}", "-D", "phonebook", "-w", PASSWORD,
               "-b", "dc=pbx", *args]
    if wait:
        return subprocess.run(command, capture_output=True, text=True, timeout=60)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def sensors(svc) -> dict[str, int]:
    return svc.sensors(ADMIN_PASSWORD)


def wait_for(condition, what: str, timeout: float = 30.0):
    """`condition()`'s first true value within `timeout` seconds (the suite's one way to wait)."""
    return eventually(condition, timeout, what=what)


def assert_still_answering(svc) -> None:
    result = ldapsearch(svc, "-LLL", "(sn=name00042)", "sn")
    assert result.returncode == 0 and "sn: Name00042" in result.stdout, result.stderr


# -- expensive filters ----------------------------------------------------------------------


def test_expensive_searches_are_cut_at_their_time_limit_while_other_clients_and_services_are_served(svc):
    before = sensors(svc)
    # three at once from one client (the cap is four): each gets a share of the slices, so each would
    # run several seconds; their time limit is one
    hogs = [ldapsearch(svc, "-l", "1", EXPENSIVE, "sn", wait=False) for _ in range(3)]
    try:
        wait_for(lambda: sensors(svc)["ldap_searches_running"] >= 3, "the three searches running")
        # another client (IPv6) searches, and HTTP answers, before any of them ends
        cheap = ldapsearch(svc, "-LLL", "(sn=name00042)", "sn", host="[::1]")
        assert cheap.returncode == 0 and cheap.stdout.count("sn: Name00042") == 1, cheap.stderr
        health = requests.get(f"http://127.0.0.1:{svc.port('ip_http_port')}/healthz", timeout=10)
        assert health.status_code == 200
        assert all(hog.poll() is None for hog in hogs), "the cheap search was answered after an expensive one ended"
        results = [hog.communicate(timeout=60) for hog in hogs]
    finally:
        for hog in hogs:
            if hog.poll() is None:
                hog.kill()
                hog.wait()
    for hog, (out, err) in zip(hogs, results, strict=True):
        found = out.count("\ndn: ")
        assert hog.returncode == ldap.TIME_LIMIT_EXCEEDED, err  # ldapsearch exits with the resultCode
        assert "Time limit exceeded" in out or "Time limit exceeded" in err
        assert 0 < found < COUNT // 100, found  # what was found so far: some, not all
    after = sensors(svc)
    assert after["ldap_searches_time_limited"] == before["ldap_searches_time_limited"] + 3
    assert after["ldap_searches_running"] == 0
    assert_still_answering(svc)


def test_a_fourth_expensive_search_from_a_busy_client_is_refused_busy(svc):
    hogs = [ldapsearch(svc, "-l", "2", EXPENSIVE, "1.1", wait=False) for _ in range(4)]
    try:
        wait_for(lambda: sensors(svc)["ldap_searches_running"] >= 4, "four searches running")
        busy = ldapsearch(svc, "-LLL", "(sn=name00042)", "sn")
        assert busy.returncode == ldap.BUSY, busy.stderr
        other = ldapsearch(svc, "-LLL", "(sn=name00042)", "sn", host="[::1]")  # another client is not
        assert other.returncode == 0 and "sn: Name00042" in other.stdout
    finally:
        for hog in hogs:
            hog.communicate(timeout=60)
    assert sensors(svc)["ldap_searches_busy"] >= 1


# -- unfinished messages: memory ----------------------------------------------------------

MESSAGE = 255 * 1024
HEADER = b"\x30\x83" + (MESSAGE - 5).to_bytes(3, "big")  # a message announcing 255 KiB


def bound_from(svc, source: str, receive_buffer: int | None = None) -> socket.socket:
    """A connection from `source`, bound as the phones are."""
    sock = connection_from(svc.port("ip_ldap_port"), source, receive_buffer=receive_buffer)
    sock.sendall(w.bind(1, "phonebook", PASSWORD))
    assert w.parse_responses(sock.recv(100))[0].code == 0
    return sock


def flood(svc, sources: list[str], bind: bool) -> list[socket.socket]:
    """From each source address, a connection that announces 255 KiB and sends all but its last 1 KiB."""
    socks = []
    for source in sources:
        sock = bound_from(svc, source) if bind else connection_from(svc.port("ip_ldap_port"), source)
        socks.append(sock)
        with contextlib.suppress(OSError):  # closed by the server already
            sock.sendall(HEADER + b"\x02\x01\x02" + b"\x00" * (MESSAGE - 1024))
    return socks


def notices(socks: list[socket.socket]) -> list[w.Response]:
    """The Notice of Disconnection each connection got before the server closed it (those it closed)."""
    found = []
    for sock in socks:
        sock.setblocking(False)
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            continue  # still open: the server holds it
        except ConnectionError:
            data = b""
        responses = w.parse_responses(data) if data else []
        found.append(responses[-1] if responses else None)
    return found


def test_before_a_bind_a_large_message_is_refused_from_its_header_and_costs_no_memory(svc):
    assert_still_answering(svc)
    before, oversize = svc.worker_rss_mib, sensors(svc)["ldap_oversize_closed"]
    socks = flood(svc, [f"127.0.7.{n}" for n in range(1, 201)], bind=False)
    try:
        wait_for(lambda: sensors(svc)["ldap_oversize_closed"] >= oversize + 200, "200 connections refused")
        during = svc.worker_rss_mib
        got = notices(socks)
        assert len(got) == 200 and all(n is not None and n.name == ldap.OID_NOTICE_OF_DISCONNECTION for n in got)
        assert all(n.code == ldap.PROTOCOL_ERROR and "over the limit of 8192 bytes before a bind" in n.diagnostic for n in got)
        assert during - before < 8, (before, during)  # 200 x 255 KiB would be 50 MiB: nothing was buffered
    finally:
        for sock in socks:
            sock.close()
    assert_still_answering(svc)


def test_after_a_bind_unfinished_messages_are_capped_across_connections_and_their_memory_comes_back(svc):
    assert_still_answering(svc)
    before, oversize = svc.worker_rss_mib, sensors(svc)["ldap_oversize_closed"]
    socks = flood(svc, [f"127.0.8.{n}" for n in range(1, 201)], bind=True)
    try:
        held_each = MESSAGE - 1024
        # every connection is either refused or held, and what is held stays under the cap
        state = wait_for(lambda: (lambda s: s if s["ldap_oversize_closed"] - oversize + s["ldap_buffered_bytes"] // held_each >= 200
                                  else None)(sensors(svc)), "every connection refused or held")
        held = state["ldap_buffered_bytes"]
        assert ldap.MAX_BUFFERED - held_each <= held <= ldap.MAX_BUFFERED
        refused = [n for n in notices(socks) if n is not None]
        assert len(refused) == 200 - held // held_each
        assert all(n.code == ldap.BUSY and "unfinished input" in n.diagnostic for n in refused)
        during = svc.worker_rss_mib
        assert during - before < ldap.MAX_BUFFERED / 2**20 + 8, (before, during)  # bounded by the cap, not 50 MiB
    finally:
        for sock in socks:
            sock.close()
    wait_for(lambda: sensors(svc)["ldap_buffered_bytes"] == 0, "the held bytes given back")
    after = svc.worker_rss_mib
    assert after - before < 4, (before, during, after)  # and the memory with them
    assert_still_answering(svc)


# -- requests pipelined without end on one connection -----------------------------------------

STORM_LIMIT = 512 * 2**20  # the storm stops here, or after STORM_SECONDS, or when the test is done
STORM_SECONDS = 60.0


class Storm:
    """One connection pipelining a small request without end (bound first if `bind`), in chunks of 64 KiB that each
    end with a Who am I? request: the answers to those, read by another thread, are the server's progress."""

    def __init__(self, svc, request: bytes, bind: bool):
        self.sock = socket.create_connection(("127.0.0.1", svc.port("ip_ldap_port")), timeout=10)
        if bind:
            self.sock.sendall(w.bind(1, "phonebook", PASSWORD))
            assert w.parse_responses(self.sock.recv(100))[0].code == 0
        self.sent, self.stop, self.ended = 0, threading.Event(), threading.Event()
        marker = w.extended(7, ldap.OID_WHOAMI)
        self.chunk = request * ((65536 - len(marker)) // len(request)) + marker
        self.answers = 0
        threading.Thread(target=self._drain, daemon=True).start()
        threading.Thread(target=self._send, daemon=True).start()

    def _drain(self) -> None:
        data = b""
        with contextlib.suppress(OSError):
            while chunk := self.sock.recv(1 << 20):
                data += chunk
                responses, data = _split(data)
                self.answers += sum(1 for r in responses if r.message_id == 7)

    def _send(self) -> None:
        deadline = time.monotonic() + STORM_SECONDS
        try:
            while not self.stop.is_set() and self.sent < STORM_LIMIT and time.monotonic() < deadline:
                self.sock.sendall(self.chunk)
                self.sent += len(self.chunk)
        except OSError:
            pass
        finally:
            self.ended.set()

    def close(self) -> None:
        self.stop.set()
        self.ended.wait(STORM_SECONDS)
        self.sock.close()


def _split(data: bytes) -> tuple[list[w.Response], bytes]:
    """The whole responses at the start of `data`, and the rest."""
    pos = 0
    while pos < len(data):
        try:
            size = ber.frame_length(data[pos:pos + 6])
        except ber.Incomplete:
            break
        if pos + size > len(data):
            break
        pos += size
    return w.parse_responses(data[:pos]), data[pos:]


@pytest.mark.parametrize("kind", ["abandon, unbound", "who am I, bound"])
def test_a_connection_pipelining_without_end_does_not_hold_the_other_clients_and_services(svc, kind):
    if kind.startswith("abandon"):
        request, bind = w.message(5, ber.integer(3, 0x50)), False
    else:
        request, bind = w.extended(5, ldap.OID_WHOAMI), True
    storm = Storm(svc, request, bind)
    try:
        wait_for(lambda: storm.answers >= 4 or storm.ended.is_set(), "the storm served")
        # more is sent than is answered: from here on, the server's socket always has data
        wait_for(lambda: storm.sent >= (storm.answers + 32) * len(storm.chunk) or storm.ended.is_set(), "the storm ahead")
        answered = storm.answers
        # another LDAP client, and HTTP, are answered while the storm goes on (and it is served too)
        assert_still_answering(svc)
        health = requests.get(f"http://127.0.0.1:{svc.port('ip_http_port')}/healthz", timeout=30)
        assert health.status_code == 200
        assert not storm.ended.is_set(), "the others were answered only once the storm ended"
        wait_for(lambda: storm.answers > answered, "the storm served on")
    finally:
        storm.close()
    assert_still_answering(svc)


# -- connections that ask for much and read nothing ---------------------------------------------


def test_connections_that_read_nothing_hold_no_search_slot_and_are_closed_when_their_answers_stall(svc):
    """8 sources x 4 connections with a tiny receive buffer, each pipelining 40 searches for everything and
    reading nothing: a phone's search is answered (not busy), and they are closed once nothing moves."""
    before = sensors(svc)
    held = []
    try:
        for source in range(8):
            for _ in range(4):
                sock = bound_from(svc, f"127.0.10.{source + 1}", receive_buffer=1024)
                held.append(sock)
                sock.sendall(b"".join(w.search(2 + n, "(objectClass=*)") for n in range(40)))
        # each connection's search waits for its client to read, holding no slot; the server has nothing to do (those
        # refused busy, for the slots kept for clients with no search in progress, went through their 40 searches)
        def settled():
            first, second = sensors(svc), sensors(svc)
            return second if (second["ldap_searches_running"] == 0 and second["ldap_searches_waiting_on_clients"] >= 8
                              and second["ldap_searches"] == first["ldap_searches"]) else None

        state = wait_for(settled, "the searches waiting on their clients")
        waiting = state["ldap_searches_waiting_on_clients"]
        phone = ldapsearch(svc, "-LLL", "(sn=name00017)", "cn")
        assert phone.returncode == 0 and "cn: Person17 Name00017" in phone.stdout, (phone.returncode, phone.stderr)
        # nothing moves on those connections: each is closed after the write deadline
        after = wait_for(lambda: (lambda s: s if s["ldap_write_stalled_closed"] >= before["ldap_write_stalled_closed"] + waiting
                                  else None)(sensors(svc)), "the stalled connections closed", timeout=60)
        assert after["ldap_searches_waiting_on_clients"] == 0 and after["ldap_searches_running"] == 0
        assert after["ldap_connections_open"] == 32 - waiting
    finally:
        for sock in held:
            sock.close()
    assert_still_answering(svc)


# -- paged searches left unfinished ---------------------------------------------------------------


def test_unfinished_paged_searches_are_bounded_per_client_and_their_memory_comes_back(svc):
    """One address opens 64 connections x 8 paged searches (page size 1) over everything and never finishes them."""
    assert_still_answering(svc)
    before = svc.worker_rss_mib
    conns, cookies = [], []
    try:
        for _ in range(64):
            sock = bound_from(svc, "127.0.11.1")
            conns.append(sock)
            for n in range(8):
                sock.sendall(w.search(2 + n, "(objectClass=*)" if n % 2 else "(cn=*)", controls=[w.paged(1)]))
                done = read_until_done(sock)[-1]
                assert done.code == 0
                cookies.append((sock, 2 + n, "(objectClass=*)" if n % 2 else "(cn=*)",
                                w.paged_cookie(done.controls[ldap.OID_PAGED_RESULTS])[1]))
        state = sensors(svc)
        assert state["ldap_paged_searches_open"] == ldap.MAX_PAGED_PER_CLIENT  # not 512
        during = svc.worker_rss_mib
        # the first ones were given up (an invalid cookie: the client starts again); the last ones go on
        sock, message_id, text, cookie = cookies[0]
        sock.sendall(w.search(100, text, controls=[w.paged(1, cookie)]))
        assert read_until_done(sock)[-1].code == ldap.UNWILLING_TO_PERFORM
        sock, message_id, text, cookie = cookies[-1]
        sock.sendall(w.search(100, text, controls=[w.paged(1, cookie)]))
        responses = read_until_done(sock)
        assert len(responses) == 2 and responses[-1].code == 0
        # another client pages through a thousand meanwhile (not all 30,000: the allocator keeps some of what
        # so long an answer took, which this test is not about)
        other = ldapsearch(svc, "-E", "pr=100/noprompt", "(sn=name00*)", "sn", host="[::1]")
        assert other.returncode == 0 and other.stdout.count("\nsn: ") == 1000, other.stderr
    finally:
        for sock in conns:
            sock.close()
    wait_for(lambda: sensors(svc)["ldap_paged_searches_open"] == 0 and sensors(svc)["ldap_connections_open"] == 0,
             "the paged searches given back")
    after = svc.worker_rss_mib
    assert during - before < 4 and after - before < 4, (before, during, after)  # 512 would have kept ~16 MiB
    assert_still_answering(svc)
