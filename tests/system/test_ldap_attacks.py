"""The LDAP server attacked as a hostile phone network would: the running service with 8,000 contacts.

The phone book's password is in every provisioning file, so an attacker can
bind. Expensive filters through OpenLDAP's ldapsearch (time limits, the other
clients and services served meanwhile); unfinished messages over raw sockets,
before and after a bind (the memory they may hold, and that it comes back).
Ordering and counts are asserted, never a duration.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
from support import ldap_service, ldap_wire as w

from greenservers.proto import ldap

pytestmark = pytest.mark.real_client

PASSWORD = "phones-secret-15"
ADMIN_PASSWORD = "ldap-attacks-admin-pw"
COUNT = 8000
# the costliest filter items there are (an untyped extensible match tries every attribute and the
# DN), within the limit of 256 units: alone, a search takes most of a second; (sn=*77) matches one
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
    """Poll `condition` (bounded by `timeout`) until it returns a true value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not reached: {what}")


def rss_mib(svc) -> float:
    for line in Path(f"/proc/{svc.worker_pids[0]}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


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


def flood(svc, sources: list[str], bind: bool) -> list[socket.socket]:
    """From each source address, a connection that announces 255 KiB and sends all but its last 1 KiB."""
    socks = []
    for source in sources:
        sock = socket.socket()
        socks.append(sock)
        sock.bind((source, 0))
        sock.settimeout(10)
        sock.connect(("127.0.0.1", svc.port("ip_ldap_port")))
        if bind:
            sock.sendall(w.bind(1, "phonebook", PASSWORD))
            assert w.parse_responses(sock.recv(100))[0].code == 0
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
    before, oversize = rss_mib(svc), sensors(svc)["ldap_oversize_closed"]
    socks = flood(svc, [f"127.0.7.{n}" for n in range(1, 201)], bind=False)
    try:
        wait_for(lambda: sensors(svc)["ldap_oversize_closed"] >= oversize + 200, "200 connections refused")
        during = rss_mib(svc)
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
    before, oversize = rss_mib(svc), sensors(svc)["ldap_oversize_closed"]
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
        during = rss_mib(svc)
        assert during - before < ldap.MAX_BUFFERED / 2**20 + 8, (before, during)  # bounded by the cap, not 50 MiB
    finally:
        for sock in socks:
            sock.close()
    wait_for(lambda: sensors(svc)["ldap_buffered_bytes"] == 0, "the held bytes given back")
    after = rss_mib(svc)
    assert after - before < 4, (before, during, after)  # and the memory with them
    assert_still_answering(svc)
