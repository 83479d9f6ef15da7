#!/usr/bin/env python3
"""Flood isolation: while one service is flooded, a legitimate client of every service measures p99 latency and lost answers.

    python bench/flood.py [--seconds 10] [--only http,snmp,...]

One greenservers process with every service on 127.0.0.1 (bench/services.py).
First an idle phase (the probes alone), then one phase per flood; the flood
runs in its own process (so the probes' timing is not skewed by its loop) and
every flood is bounded in count and in time:

  http-login  wrong admin passwords over HTTP Basic from 200 addresses (127.0.6.x, each
        refused after 5 failures), 4 at a time: every guess is a 50 ms scrypt check
  http  new TCP connections from one source (127.0.0.5) at 10 x http_max_conn_rate, each
        sending a GET and closing (the cap is process-wide, but the gate keeps a spare share
        of it for the other clients, such as the HTTP probe)
  http-pipeline  one client (127.0.0.7) pipelining GETs for a missing /prov/ file on one keep-alive
        connection as fast as it can send them, reading every answer (a new connection when the
        server closes one); counted: the answers it got
  snmp  GetRequests from an untrusted source (127.0.0.2; snmp_trusted is 127.0.0.1) at full speed
  ntp   mode-3 requests from one source (127.0.0.4) at full speed: its rate limit answers a KoD now and then
  ldap  1,000 idle connections (from 127.0.2.1-8: the per-address cap is 256), held for the phase
  tftp  a read-request storm for a real file (plain requests: DATA 1 is the answer) from 64
        sources (127.0.3.x) that never acknowledge, as spoofed requests would: each source is
        answered until its allowance of unacknowledged bytes is spent, then dropped unread.
        The bytes that come back to the sources are counted (reflection: bytes back / bytes
        sent, over the phase and the 10 s after it)
  tftp-boot  a boot storm: 100 phones (127.0.4.x) each fetching a 2 MiB file in lock-step
        (512-byte blocks) as fast as they can, and again, for the phase
  ldap-filters  the costliest searches that fit the request limits, against 100,000 contacts
        (imported for the phase, the small book put back after it), from 8 bound connections
        (127.0.9.1-4, two each) at once, one search after another: 15 untyped extensible
        matches on every attribute and the DN, 255 distinct approximate matches, 63 substring
        filters of four pieces (each a scan of the joined names), 200 approximate matches under
        30 nested NOTs, 254 ordering matches, 7 values of 1 KiB non-ASCII (decoding), and every
        contact sorted by 8 keys in pages of 500; half with a 1 s time limit, half with the
        server's. The LDAP server's sensors after the phase are printed too.
  ldap-pipeline  requests pipelined without end, 64 KiB per send, answers read and dropped:
        Abandon requests on one connection that never binds (127.0.12.1) and Who am I? requests
        on 4 bound connections (127.0.12.2-5)
  ldap-tls  TLS handshakes begun as fast as they can from 8 sources (127.0.14.1-8), 4 threads
        each: connect, StartTLS, a ClientHello made once and replayed (the flood computes nothing;
        the server makes a key exchange and a signature for each), read the server's first
        flight, close; counted: the server's answers
  ldap-hold  8 sources (127.0.13.1-8) x 4 connections, each bound with a 1 KiB receive buffer,
        pipelining 40 searches for everything (all attributes) and reading nothing, held for the
        phase (the server closes each once its client has read nothing for 10 s), against 5,000
        contacts (imported for the phase: the answers must not fit in the sockets' buffers)

The probes (services.py) send 20 requests/s each with a 1 s timeout. Target:
under every flood, the *other* services' p99 < 50 ms and nothing lost (ldap-filters:
< 10 ms). The flooded service's own probe (for LDAP, another client's phone search) is
reported too (marked), not judged: turning a flood away is its job. Results:
bench/results/flood.json and a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import memory  # noqa: E402
import services  # noqa: E402
from common import RESULTS, machine  # noqa: E402

from greenservers.passwords import hash_password  # noqa: E402

TARGET_P99_MS = 50.0
TARGETS_P99_MS = {"ldap-filters": 10.0}  # phases judged against another target
HTTP_MAX_CONN_RATE = 100
MAX_DATAGRAMS = 3_000_000  # any UDP flood stops after this many, whatever the time
MAX_PIPELINED = 3_000_000  # the pipelining flood stops after sending this many requests, whatever the time
LDAP_IDLE = 1000
TFTP_SOURCES = 64
BOOT_PHONES = 100
BOOT_FILE, BOOT_FILE_SIZE = "firmware.bin", 2 * 1024 * 1024
LOGIN_SOURCES, LOGIN_GUESSES = 200, 5  # 5: the failed logins an address may make before it is refused a while
LDAP_FLOOD_CONTACTS = 100_000
LDAP_FLOOD_CONNECTIONS = 8  # two from each of four addresses (the cap is four searches in progress per client)
PIPELINE_WHOAMI = 4  # bound connections pipelining Who am I? (one more pipelines Abandon unbound)
HOLD_SOURCES, HOLD_PER_SOURCE, HOLD_SEARCHES, HOLD_CONTACTS = 8, 4, 40, 5000
TLS_SOURCES = 8
ADMIN_PASSWORD = "the flood bench's admin password"


# -- the floods (each runs in a child process until `seconds` pass or its count is reached) ----


def flood_http(port: int, seconds: float, counter) -> None:
    rate = 10 * HTTP_MAX_CONN_RATE
    request = b"GET /healthz HTTP/1.1\r\nHost: flood\r\n\r\n"
    start = time.monotonic()
    sent = 0
    while sent < rate * seconds:
        due = start + sent / rate
        now = time.monotonic()
        if now > start + seconds + 1:
            break
        if due > now:
            time.sleep(due - now)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0, source_address=("127.0.0.5", 0)) as sock:
                sock.sendall(request)
        except OSError:
            pass
        sent += 1
    counter.value = sent


def flood_http_pipeline(port: int, seconds: float, counter) -> None:
    """Keep-alive pipelining from one source: requests written back to back while a thread reads the answers."""
    import threading

    request = b"GET /prov/nothing.bin HTTP/1.1\r\nHost: flood\r\n\r\n"
    chunk = request * (65536 // len(request))
    deadline, answers, sent = time.monotonic() + seconds, [0], 0

    def read_answers(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := sock.recv(1 << 20):
                answers[0] += data.count(b"HTTP/1.1 ")

    while time.monotonic() < deadline and sent < MAX_PIPELINED:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=1.0, source_address=("127.0.0.7", 0))
        except OSError:
            continue
        sock.settimeout(10.0)  # a server stalled by the flood is still read from
        reader = threading.Thread(target=read_answers, args=(sock,), daemon=True)
        reader.start()
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline and sent < MAX_PIPELINED:
                sock.sendall(chunk)
                sent += len(chunk) // len(request)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        reader.join(2.0)
        sock.close()
    counter.value = answers[0]


def flood_http_login(port: int, seconds: float, counter) -> None:
    """Password guessing spread over LOGIN_SOURCES addresses (each is blocked after a few failures):
    Basic credentials with a wrong password, 4 at a time, each a new connection."""
    import base64
    import threading
    request = (b"GET /api/sensors HTTP/1.1\r\nHost: flood\r\nConnection: close\r\nAuthorization: Basic "
               + base64.b64encode(b"admin:not the password") + b"\r\n\r\n")
    deadline, lock, sent = time.monotonic() + seconds, threading.Lock(), [0]

    def guesser(first: int) -> None:
        for n in range(first, LOGIN_SOURCES * LOGIN_GUESSES, 4):
            if time.monotonic() >= deadline:
                return
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5.0,
                                              source_address=(f"127.0.6.{1 + n % LOGIN_SOURCES}", 0)) as sock:
                    sock.sendall(request)
                    sock.recv(100)
            except OSError:
                pass
            with lock:
                sent[0] += 1

    threads = [threading.Thread(target=guesser, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counter.value = sent[0]


def _datagram_flood(port: int, source: str, payload_of, seconds: float, counter) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    deadline = time.monotonic() + seconds
    sent = 0
    while sent < MAX_DATAGRAMS:
        for _ in range(256):
            try:  # noqa: SIM105 -- the flood's own hot loop: a try costs nothing until something is raised
                sock.send(payload_of(sent))
            except (BlockingIOError, ConnectionRefusedError):
                pass  # a full send buffer or an ICMP error: keep going, the flood is the point
            sent += 1
        if time.monotonic() >= deadline:
            break
    sock.close()
    counter.value = sent


def flood_snmp(port: int, seconds: float, counter) -> None:
    _datagram_flood(port, "127.0.0.2", lambda n: services.SNMP_GET_UPTIME, seconds, counter)


def flood_ntp(port: int, seconds: float, counter) -> None:
    _datagram_flood(port, "127.0.0.4", lambda n: services.NTP_REQUEST[:40] + n.to_bytes(8, "big"), seconds, counter)


def flood_tftp(port: int, seconds: float, counter, replies) -> None:
    """Plain read requests from TFTP_SOURCES sources at full speed; `replies` counts the bytes that come back."""
    request = b"\x00\x01" + services.PROBE_FILE.encode() + b"\x00octet\x00"
    socks = []
    for i in range(TFTP_SOURCES):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((f"127.0.3.{i + 1}", 0))
        sock.setblocking(False)
        socks.append(sock)
    deadline = time.monotonic() + seconds
    sent = back = rounds = 0
    while sent < MAX_DATAGRAMS and time.monotonic() < deadline:
        for sock in socks:
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                sock.sendto(request, ("127.0.0.1", port))
            sent += 1
        rounds += 1
        if rounds % 64 == 0:  # now and then, so that counting what comes back slows the flood little
            back += sum(_received(sock) for sock in socks)
    settle = time.monotonic() + 10  # what the transfers started last still send (a first packet's retransmission)
    while time.monotonic() < settle:
        back += sum(_received(sock) for sock in socks)
        time.sleep(0.05)
    for sock in socks:
        sock.close()
    counter.value, replies.value = sent, back


def _received(sock: socket.socket) -> int:
    """Bytes waiting on a non-blocking socket (read and counted)."""
    total = 0
    while True:
        try:
            total += len(sock.recv(70000))
        except (BlockingIOError, ConnectionRefusedError):
            return total


def flood_tftp_boot(port: int, seconds: float, counter) -> None:
    """BOOT_PHONES lock-step downloads at once, each started again when it ends; counts the DATA acknowledged."""
    import selectors

    request = b"\x00\x01" + BOOT_FILE.encode() + b"\x00octet\x00"
    selector = selectors.DefaultSelector()

    def start(phone: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((f"127.0.4.{phone + 1}", 0))
        sock.setblocking(False)
        sock.sendto(request, ("127.0.0.1", port))
        selector.register(sock, selectors.EVENT_READ, phone)

    def restart(sock: socket.socket, phone: int) -> None:
        selector.unregister(sock)
        sock.close()
        start(phone)

    for phone in range(BOOT_PHONES):
        start(phone)
    deadline = time.monotonic() + seconds
    acked = 0
    while time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.2):
            sock, phone = key.fileobj, key.data
            try:
                datagram, peer = sock.recvfrom(1024)
            except OSError:
                continue
            if datagram[:2] != b"\x00\x03":  # an ERROR (busy): try again with a new transfer
                restart(sock, phone)
                continue
            sock.sendto(b"\x00\x04" + datagram[2:4], peer)
            acked += 1
            if len(datagram) < 516:  # the last block: this phone boots again
                restart(sock, phone)
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    counter.value = acked


def flood_ldap(port: int, seconds: float, counter) -> None:
    services.raise_fd_limit(LDAP_IDLE + 512)
    held = []
    deadline = time.monotonic() + seconds
    for i in range(LDAP_IDLE):
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((f"127.0.2.{i % 8 + 1}", 0))
            sock.settimeout(2.0)
            sock.connect(("127.0.0.1", port))
            held.append(sock)
        except OSError:
            sock.close()
        if time.monotonic() >= deadline:
            break
    counter.value = len(held)
    time.sleep(max(0.0, deadline - time.monotonic()))
    alive = 0
    for sock in held:  # how many the server still holds open (not closed on us) at the end
        sock.setblocking(False)
        try:
            alive += sock.recv(1) != b""
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
        sock.close()
    counter.value = alive


def expensive_ldap_searches() -> list[tuple[str, dict]]:
    """The costliest searches within the limits (256 filter units, depth 32, 1 KiB values): (name, ldap_wire.search arguments)."""
    ext = "(|" + "(:dn:2.5.13.4:=zzyzx)" * 15 + "(cn~=zzyzx))"  # 1 + 15 x (14 attributes + 2 for the DN) + 1 units
    attrs = ["cn", "sn", "givenName", "displayName", "o", "mail"]
    approx = "(|" + "".join(f"({attrs[i % 6]}~=q{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}x)" for i in range(255)) + ")"
    substrings = "(|" + "(cn=*a*e*r*n*)" * 63 + ")"
    nested = "(!" * 30 + "(|" + "(sn~=zzyzx)" * 200 + ")" + ")" * 30
    ordering = "(|" + "(cn>=zzzz)(sn<=a)" * 127 + ")"
    decoding = "(|" + ("(cn:2.5.13.2:=" + "ä" * 496 + ")") * 7 + ")"
    everyone = services.ldap_wire.sort("sn", "-cn", "givenName", "-o", "mail", "telephoneNumber", "-mobile", "uid")
    return [("extensible", {"filter_text": ext}), ("approximate", {"filter_text": approx}),
            ("substrings", {"filter_text": substrings}), ("nested", {"filter_text": nested}),
            ("ordering", {"filter_text": ordering}), ("decoding", {"filter_text": decoding}),
            ("sorted", {"filter_text": "(objectClass=*)", "controls": [everyone, services.ldap_wire.paged(500)]})]


def flood_ldap_filters(port: int, seconds: float, counter) -> None:
    """LDAP_FLOOD_CONNECTIONS bound connections, each sending the expensive searches in turn, one at a time."""
    import threading

    searches = expensive_ldap_searches()
    deadline, lock, done = time.monotonic() + seconds, threading.Lock(), [0]

    def connection(number: int) -> None:
        probe = services.LdapProbe(port)
        try:
            probe.sock = socket.socket()
            probe.sock.bind((f"127.0.9.{1 + number % 4}", 0))
            probe.sock.settimeout(60)
            probe.sock.connect(("127.0.0.1", port))
            probe.sock.sendall(services.ldap_wire.bind(1, "phonebook", services.LDAP_PASSWORD))
            probe._read_until(0x61)
            for turn in range(10_000):
                if time.monotonic() >= deadline:
                    return
                _, arguments = searches[(number + turn) % len(searches)]
                probe.sock.sendall(services.ldap_wire.search(turn + 2, attributes=["cn"], time_limit=1 if number % 2 else 0,
                                                             **arguments))
                probe._read_until(0x65)
                with lock:
                    done[0] += 1
        except (OSError, services.Lost, services.ber.BerError):
            pass
        finally:
            probe.close()

    threads = [threading.Thread(target=connection, args=(n,)) for n in range(LDAP_FLOOD_CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counter.value = done[0]


def flood_ldap_pipeline(port: int, seconds: float, counter) -> None:
    """One unbound connection pipelining Abandon, PIPELINE_WHOAMI bound ones pipelining Who am I?; the answers dropped."""
    import threading

    wire = services.ldap_wire
    abandon = wire.message(5, services.ber.integer(3, 0x50))
    whoami = wire.extended(5, "1.3.6.1.4.1.4203.1.11.3")
    deadline, lock, sent = time.monotonic() + seconds, threading.Lock(), [0]

    def connection(source: str, request: bytes, bind: bool) -> None:
        chunk = request * (65536 // len(request))
        sock = socket.socket()
        try:
            sock.bind((source, 0))
            sock.settimeout(5)
            sock.connect(("127.0.0.1", port))
            if bind:
                sock.sendall(wire.bind(1, "phonebook", services.LDAP_PASSWORD))
                sock.recv(100)
            threading.Thread(target=_drop_answers, args=(sock,), daemon=True).start()
            while time.monotonic() < deadline:
                sock.sendall(chunk)
                with lock:
                    sent[0] += len(chunk) // len(request)
        except OSError:
            pass
        finally:
            sock.close()

    threads = [threading.Thread(target=connection, args=("127.0.12.1", abandon, False))]
    threads += [threading.Thread(target=connection, args=(f"127.0.12.{2 + n}", whoami, True)) for n in range(PIPELINE_WHOAMI)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counter.value = sent[0]


def flood_ldap_tls(port: int, seconds: float, counter) -> None:
    """TLS_SOURCES x 4 threads beginning TLS handshakes (StartTLS, a replayed ClientHello) as fast as they can."""
    import ssl
    import threading

    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    starttls = services.ldap_wire.extended(1, "1.3.6.1.4.1.1466.20037")
    deadline, lock, answered = time.monotonic() + seconds, threading.Lock(), [0]

    def source(address: str) -> None:
        while time.monotonic() < deadline:
            sock = socket.socket()
            try:
                sock.bind((address, 0))
                sock.settimeout(2)
                sock.connect(("127.0.0.1", port))
                sock.sendall(starttls)
                sock.recv(100)
                sock.sendall(hello)
                if sock.recv(65536):
                    with lock:
                        answered[0] += 1
            except OSError:
                pass
            finally:
                sock.close()

    threads = [threading.Thread(target=source, args=(f"127.0.14.{1 + n % TLS_SOURCES}",)) for n in range(4 * TLS_SOURCES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counter.value = answered[0]


def _drop_answers(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while sock.recv(1 << 20):
            pass


def flood_ldap_hold(port: int, seconds: float, counter) -> None:
    """HOLD_SOURCES x HOLD_PER_SOURCE bound connections with a 1 KiB receive buffer, each pipelining HOLD_SEARCHES
    searches for everything and reading nothing, for the phase."""
    wire = services.ldap_wire
    searches = b"".join(wire.search(2 + n, "(objectClass=*)") for n in range(HOLD_SEARCHES))
    deadline, held = time.monotonic() + seconds, []
    for source in range(HOLD_SOURCES):
        for _ in range(HOLD_PER_SOURCE):
            sock = socket.socket()
            held.append(sock)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
                sock.bind((f"127.0.13.{source + 1}", 0))
                sock.settimeout(5)
                sock.connect(("127.0.0.1", port))
                sock.sendall(wire.bind(1, "phonebook", services.LDAP_PASSWORD))
                sock.recv(100)
                sock.sendall(searches)
                counter.value += HOLD_SEARCHES
            except OSError:
                pass
    time.sleep(max(0.0, deadline - time.monotonic()))
    for sock in held:
        sock.close()


def with_contacts(server: services.Greenservers, csv_text: str) -> None:
    """Replace the address book from this process (the service notices it) and wait until LDAP serves the new one:
    the last contact imported is found (a replacing import is indexed anew and swapped in whole)."""
    book = services.AddressBook(Path(server.proc.settings["data_dir"]) / "addressbook.sqlite3")
    try:
        book.import_csv(csv_text, replace=True)
        last = book.page(len(book) - 1, 1)[0]
    finally:
        book.close()
    memory.wait_for_ldap(server, f"(uid={last.id})")


FLOODS = {
    "http": (flood_http, f"{10 * HTTP_MAX_CONN_RATE} new connections/s (10 x http_max_conn_rate)"),
    "http-pipeline": (flood_http_pipeline, "one keep-alive connection pipelining GETs as fast as it can"),
    "http-login": (flood_http_login, f"admin password guessing from {LOGIN_SOURCES} addresses, 4 at a time"),
    "snmp": (flood_snmp, "untrusted source at full speed"),
    "ntp": (flood_ntp, "one source at full speed"),
    "ldap": (flood_ldap, f"{LDAP_IDLE} idle connections"),
    "tftp": (flood_tftp, f"read-request storm from {TFTP_SOURCES} sources, never acknowledged"),
    "tftp-boot": (flood_tftp_boot, f"boot storm: {BOOT_PHONES} phones fetching 2 MiB in lock-step, again and again"),
    "ldap-filters": (flood_ldap_filters, f"the costliest searches within the limits, {LDAP_FLOOD_CONNECTIONS} connections at once, "
                                         f"{LDAP_FLOOD_CONTACTS:,} contacts"),
    "ldap-pipeline": (flood_ldap_pipeline, f"Abandon pipelined unbound on one connection, Who am I? bound on {PIPELINE_WHOAMI}"),
    "ldap-tls": (flood_ldap_tls, f"TLS handshakes (StartTLS, a replayed hello) from {TLS_SOURCES} sources as fast as they can"),
    "ldap-hold": (flood_ldap_hold, f"{HOLD_SOURCES} sources x {HOLD_PER_SOURCE} connections pipelining {HOLD_SEARCHES} searches "
                                   "for everything, reading nothing"),
}
UNIT = {"http": "connections", "http-pipeline": "answers received", "http-login": "wrong passwords",
        "snmp": "datagrams", "ntp": "datagrams",
        "ldap": "connections held to the end", "tftp": "requests", "tftp-boot": "blocks acknowledged", "ldap-filters": "searches answered",
        "ldap-pipeline": "requests pipelined", "ldap-hold": "searches pipelined", "ldap-tls": "handshakes answered"}
# a flood is named after the service it floods, unless listed here
SERVICE_OF_FLOOD = {"tftp-boot": "tftp", "http-login": "http", "http-pipeline": "http", "ldap-filters": "ldap", "ldap-pipeline": "ldap",
                    "ldap-hold": "ldap", "ldap-tls": "ldap"}
REQUEST_BYTES = {"tftp": 2 + len(services.PROBE_FILE) + 1 + len("octet") + 1}  # floods that count the bytes sent back
# what a phase needs before it and puts back after it
PREPARE = {"ldap-filters": lambda server: with_contacts(server, memory.contacts_csv(LDAP_FLOOD_CONTACTS)),
           "ldap-hold": lambda server: with_contacts(server, memory.contacts_csv(HOLD_CONTACTS))}
RESTORE = {"ldap-filters": lambda server: with_contacts(server, services.CONTACTS_CSV),
           "ldap-hold": lambda server: with_contacts(server, services.CONTACTS_CSV)}
LDAP_SENSORS = ("ldap_searches", "ldap_searches_time_limited", "ldap_searches_delayed", "ldap_searches_busy",
                "ldap_write_stalled_closed", "ldap_longest_hold_microseconds")
LDAP_SENSOR_PHASES = ("ldap-filters", "ldap-pipeline", "ldap-hold")  # phases that print the LDAP sensors' change


def measure(server: services.Greenservers, flood: str | None, seconds: float) -> dict:
    """One phase: the flood (if any) in a child process, the probes here, both for `seconds`."""
    context = multiprocessing.get_context("spawn")
    counter, replies = context.Value("q", 0), context.Value("q", 0)
    child = None
    if flood:
        function, _ = FLOODS[flood]
        port = server.ports[SERVICE_OF_FLOOD.get(flood, flood)]
        extra = (replies,) if flood in REQUEST_BYTES else ()
        child = context.Process(target=function, args=(port, seconds + 1.0, counter, *extra), daemon=True)
        child.start()
        time.sleep(1.0)  # the flood reaches full strength (and the idle connections are open) before we measure
    try:
        probes = services.run_probes(server, seconds)
    finally:
        if child is not None:
            child.join(seconds + 30)
            if child.is_alive():
                child.terminate()
                child.join(5)
    return {"probes": probes, "flood_count": counter.value if flood else 0, "reply_bytes": replies.value}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--only", default="", help="comma-separated floods (default: all)")
    args = parser.parse_args()
    services.raise_fd_limit(8192)  # the server inherits it: 1,000 LDAP connections plus the TFTP storm's sockets
    floods = [f for f in (args.only.split(",") if args.only else FLOODS)]
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "seconds": args.seconds,
               "target_p99_ms": TARGET_P99_MS, "cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        server = services.start_greenservers(Path(tmp), {"http_max_conn_rate": HTTP_MAX_CONN_RATE,
                                                         "admin_password_hash": hash_password(ADMIN_PASSWORD)})
        (Path(tmp) / "data" / "tftp" / BOOT_FILE).write_bytes(os.urandom(BOOT_FILE_SIZE))
        try:
            results["services"] = [s for s in services.PROBES if server.has(s)]
            services.run_probes(server, 1.0)  # warm-up: first requests load templates, build the directory
            phases = [None] + [f for f in floods if server.has(SERVICE_OF_FLOOD.get(f, f))]
            for flood in phases:
                label = "none (idle)" if flood is None else f"{flood}: {FLOODS[flood][1]}"
                print(f"-- flood: {label}", flush=True)
                if flood in PREPARE:
                    PREPARE[flood](server)
                before = sensors(server) if flood in LDAP_SENSOR_PHASES else {}
                phase = measure(server, flood, args.seconds)
                flooded = SERVICE_OF_FLOOD.get(flood, flood)
                target = TARGETS_P99_MS.get(flood, TARGET_P99_MS)
                verdict_ok = all(p["lost"] == 0 and p["p99_ms"] < target
                                 for name, p in phase["probes"].items() if name != flooded)
                case = {"flood": label, "flooded": flooded, "flood_count": phase["flood_count"],
                        "flood_unit": UNIT.get(flood, ""), "probes": phase["probes"], "target_met": verdict_ok,
                        "target_p99_ms": target, "worker_rss_mb": round(services.rss_mb(server.worker_pid), 1),
                        "worker_fds": services.open_fds(server.worker_pid)}
                if flood in LDAP_SENSOR_PHASES:
                    after = sensors(server)
                    case["ldap_sensors"] = {name: after[name] - (0 if name.startswith("ldap_longest") else before[name])
                                            for name in LDAP_SENSORS}
                    print(f"   LDAP during the phase: {case['ldap_sensors']}", flush=True)
                if flood in RESTORE:
                    RESTORE[flood](server)
                results["cases"].append(case)
                for name, p in phase["probes"].items():
                    mark = " (flooded)" if name == flooded else ""
                    print(f"   {name:5}{mark:10} p99 {p['p99_ms']:7.2f} ms  median {p['median_ms']} ms  lost {p['lost']:3}"
                          f" {p['lost_reasons'] or ''}", flush=True)
                if flood in REQUEST_BYTES:
                    case["request_bytes"] = phase["flood_count"] * REQUEST_BYTES[flood]
                    case["reply_bytes"] = phase["reply_bytes"]
                    print(f"   bytes back to the flooding sources: {case['reply_bytes']:,} for {case['request_bytes']:,} sent "
                          f"(x{case['reply_bytes'] / max(1, case['request_bytes']):.4f})", flush=True)
                if flood:
                    print(f"   flood sent: {phase['flood_count']:,} {UNIT[flood]}; target (p99 < {target:.0f} ms) "
                          f"{'met' if verdict_ok else 'MISSED'}", flush=True)
            log = server.proc.log
        finally:
            server.stop()
    results["log_tracebacks"] = log.count("Traceback")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "flood.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    return 0 if all(c["target_met"] for c in results["cases"]) else 1


def sensors(server: services.Greenservers) -> dict[str, int]:
    import requests

    body = requests.get(f"http://127.0.0.1:{server.ports['http']}/api/sensors", auth=("admin", ADMIN_PASSWORD), timeout=10).json()
    return {row["name"]: row["value"] for row in body["sensors"]}


def table(results: dict) -> str:
    names = results["services"]
    lines = [f"\nflood isolation — {results['date']} — {results['machine']} — p99 / lost per legitimate client "
             f"(target p99 < {results['target_p99_ms']:.0f} ms, 0 lost; * = the flooded service itself)",
             "| flood | " + " | ".join(names) + " | flood sent |", "|---" * (len(names) + 2) + "|"]
    for case in results["cases"]:
        cells = []
        for name in names:
            p = case["probes"].get(name)
            star = "*" if name == case["flooded"] else ""
            cells.append("—" if p is None else f"{p['p99_ms']:.1f} ms / {p['lost']}{star}")
        sent = f"{case['flood_count']:,} {case['flood_unit']}" if case["flooded"] else ""
        if "reply_bytes" in case:
            sent += f"; {case['reply_bytes']:,} bytes back for {case['request_bytes']:,}"
        own_target = case.get("target_p99_ms", results["target_p99_ms"]) != results["target_p99_ms"]
        target = f" (target p99 < {case['target_p99_ms']:.0f} ms)" if own_target else ""
        lines.append(f"| {case['flood']}{target} | " + " | ".join(cells) + f" | {sent} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
