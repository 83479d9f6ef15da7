"""A LAN of phones in one IPv6 /64, in a private network namespace: NTP's rate, LDAP's searches in progress and
its unfinished paged searches and TFTP uploads are limited per address, and the /64 as a whole holds a larger share.

Real clients from many addresses of one /64: chronyd -Q (its `bindacqaddress`) and ldapsearch (OpenLDAP's
SOCKET_BIND_ADDRESSES) all get answers, while one address of the /64 flooding is limited on its own, and a
device using many addresses of another /64 (NTP) or many addresses of the phones' /64 (LDAP) stays within
the /64's share while the others are served. Phones of the LAN paging through the directory at once
(ldapsearch -E pr=) each get every entry, while one address keeping many paged searches gives up only its
own, and a device cycling the addresses of its /64 keeps no more than the /64's share in memory.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from support import ServiceProcess, eventually, free_port, free_udp_port, ldap_wire as w
from support.ldap import read_until_done
from support.netns import in_network_namespace

from greenservers.addressbook import AddressBook
from greenservers.passwords import hash_password
from greenservers.proto import ldap, ntp
from greenservers.proto.ldap import limits

pytestmark = pytest.mark.real_client

SERVER = "fd00:64::1"
PHONES = [f"fd00:64::1:{n:x}" for n in range(1, 25)]  # 24 phones of one LAN
FLOODER = "fd00:64::66"  # one address of that LAN, flooding
HOLDERS = [f"fd00:64::2:{n:x}" for n in range(1, 11)]  # addresses of the LAN holding searches their answers stall
NEIGHBOUR = "fd00:65::1"  # a phone of another /64
DEVICE = [f"fd00:66::{n:x}" for n in range(1, 41)]  # one device using 40 addresses of its own /64
WITNESS = "fd00:67::1"  # asks last: its answer means every request before it was handled
PAGERS = [f"fd00:64::3:{n:x}" for n in range(1, 17)]  # phones of the LAN paused between two pages
BROWSERS = [f"fd00:64::4:{n:x}" for n in range(1, 13)]  # phones of the LAN paging straight through, meanwhile
CYCLER = [f"fd00:68::{n:x}" for n in range(1, 65)]  # one device using 64 addresses of its /64, 8 paged searches each
SHARE = limits.MAX_SEARCHES - limits.MAX_SEARCHES // limits.RESERVED_SHARE  # searches in progress a /64 may hold
PASSWORD, ADMIN_PASSWORD = "lan-phones-pw", "lan-admin-pw"
CONTACTS = 2000


def ntp_request() -> bytes:
    return bytes([0x23]) + bytes(39) + os.urandom(8)


def burst(sources: list[str], count: int, port: int) -> tuple[int, int, int, float]:
    """`count` requests from each of `sources` at once, then every answer that came: (sent, answered, kissed,
    seconds from the first request to the last answer read). After each source's requests the witness asks
    too, and waits for its answer: the server answers in order, so each source's requests were all read
    before the next one's are sent (all at once, a fast client filled the server's receive buffer, and the
    kernel dropped what came after, whatever its source)."""
    socks = []
    for source in sources:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((source, 0))
        socks.append(sock)
    started = time.monotonic()
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as witness:
        witness.bind((WITNESS, 0))
        for sock in socks:
            for _ in range(count):
                sock.sendto(ntp_request(), (SERVER, port))
            witness_answered(witness, port)
    answered = kissed = 0
    for sock in socks:
        sock.setblocking(False)
        while True:
            try:
                reply = sock.recv(2048)
            except BlockingIOError:
                break
            kissed += reply[1] == 0
            answered += reply[1] != 0
        sock.close()
    return len(sources) * count, answered, kissed, time.monotonic() - started


def witness_answered(witness: socket.socket, port: int, tries: int = 20) -> None:
    """The witness's request answered (asked again each half second, `tries` times at most)."""
    request = ntp_request()
    witness.settimeout(0.5)
    for _ in range(tries):
        witness.sendto(request, (SERVER, port))
        with contextlib.suppress(TimeoutError):
            while True:
                reply = witness.recv(2048)
                if reply[24:32] == request[40:48]:  # the answer's origin timestamp: this request's transmit time
                    return
    raise AssertionError(f"the witness got no answer to {tries} tries")


def chronyd_query(directory: Path, source: str, port: int) -> subprocess.Popen:
    conf = directory / f"chrony-{source.replace(':', '_')}.conf"
    conf.write_text(f"pidfile {conf}.pid\nport 0\ncmdport 0\nbindcmdaddress /\nbindacqaddress {source}\n")
    return subprocess.Popen(["chronyd", "-f", str(conf), "-Q", "-t", "30", f"server {SERVER} port {port} iburst"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def ldapsearch(source: str, port: int, *args: str) -> subprocess.Popen:
    env = dict(os.environ, LDAPSOCKET_BIND_ADDRESSES=source)
    return subprocess.Popen(["ldapsearch", "-x", "-H", f"ldap://[{SERVER}]:{port}", "-D", "phonebook", "-w", PASSWORD,
                             "-b", "dc=pbx", "-LLL", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def outcome(proc: subprocess.Popen) -> int:
    proc.communicate(timeout=60)
    return proc.returncode


def stalled_searches(source: str, port: int, count: int) -> list[socket.socket]:
    """`count` connections from `source`, each asking for everyone 40 times and reading nothing (a tiny receive
    window): each holds one search in progress, waiting for its client to read."""
    held = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET6)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.bind((source, 0))
        sock.settimeout(10)
        sock.connect((SERVER, port))
        sock.sendall(w.bind(1, "phonebook", PASSWORD))
        assert w.parse_responses(sock.recv(100))[0].code == 0
        sock.sendall(b"".join(w.search(2 + n, "(objectClass=*)") for n in range(40)))
        held.append(sock)
    return held


def lan_probe() -> dict:
    directory = Path(tempfile.mkdtemp())
    book = AddressBook(directory / "data" / "addressbook.sqlite3")
    book.import_csv("first_name,last_name,work\n" + "".join(f"Person{i},Name{i:05d},+1 555 {i:07d}\n" for i in range(CONTACTS)))
    book.close()
    ntp_port, ldap_port = free_udp_port(), free_port()
    svc = ServiceProcess(directory, {"ip_ntp_port": f"[{SERVER}]:{ntp_port}", "ip_ldap_port": f"[{SERVER}]:{ldap_port}",
                                     "ip_http_port": f"127.0.0.1:{free_port()}", "ntp_local_stratum": 8,
                                     "ldap_password": PASSWORD, "admin_password_hash": hash_password(ADMIN_PASSWORD)})
    svc.start()
    found: dict = {}
    held: list[socket.socket] = []
    try:
        # NTP: one address of the LAN floods; then the 24 phones resync together with chronyd
        found["flood"] = burst([FLOODER], 4 * ntp.BURST, ntp_port)
        phones = [chronyd_query(directory, phone, ntp_port) for phone in PHONES]
        found["chronyd"] = [("System clock wrong by" in proc.communicate(timeout=60)[0], proc.returncode) for proc in phones]
        # a device using 40 addresses of its /64, 64 requests each (each within its own address's burst)
        found["device"] = burst(DEVICE, ntp.BURST, ntp_port)
        found["neighbour"] = burst([NEIGHBOUR, PHONES[0]], 1, ntp_port)
        # LDAP: one address of the LAN holds its four searches; every phone still searches, at once
        held += stalled_searches(FLOODER, ldap_port, limits.MAX_SEARCHES_PER_CLIENT)

        def waiting(count: int):
            state = svc.sensors(ADMIN_PASSWORD)
            return state if state["ldap_searches_waiting_on_clients"] == count and state["ldap_searches_running"] == 0 else None

        eventually(lambda: waiting(len(held)), timeout=30, what="the flooder's searches waiting on it")
        found["flooder search"] = outcome(ldapsearch(FLOODER, ldap_port, "(sn=name00042)", "sn"))
        # (20 of them: with the flooder's 4, at most the /64's share even if every search overlaps)
        searches = [ldapsearch(phone, ldap_port, f"(sn=name{n:05d})", "sn") for n, phone in enumerate(PHONES[:SHARE - 4])]
        found["phone searches"] = [outcome(proc) for proc in searches]
        # more addresses of the LAN hold searches, up to the /64's share: then the /64 is busy, another /64 is not
        for holder in HOLDERS:
            held += stalled_searches(holder, ldap_port, 2)
        found["share held"] = eventually(lambda: waiting(len(held)), timeout=30,
                                         what="the /64's share of searches held")["ldap_searches_waiting_on_clients"]
        found["lan search at its share"] = outcome(ldapsearch(PHONES[1], ldap_port, "(sn=name00042)", "sn"))
        found["neighbour search"] = outcome(ldapsearch(NEIGHBOUR, ldap_port, "(sn=name00042)", "sn"))
        found["busy counted"] = svc.sensors(ADMIN_PASSWORD)["ldap_searches_busy"]
        found["ntp refused counted"] = svc.sensors(ADMIN_PASSWORD)["ntp_requests_refused"]
    finally:
        for sock in held:
            sock.close()
        svc.stop()
    return found


def test_a_lan_of_phones_in_one_64_is_served_while_an_address_or_a_64_over_its_share_is_limited():
    addresses = (SERVER, *PHONES, FLOODER, *HOLDERS, NEIGHBOUR, *DEVICE, WITNESS)
    found = in_network_namespace(lan_probe, addresses=tuple(f"{a}/64" for a in addresses), timeout=240)
    # NTP: the flooding address gets its own burst (and what refills meanwhile), one KoD, then silence
    sent, answered, kissed, seconds = found["flood"]
    assert ntp.BURST <= answered <= ntp.BURST + ntp.RATE_PER_SECOND * seconds + 1 and kissed == 1, found["flood"]
    # ... and 24 phones of its /64 resyncing together are all answered
    assert found["chronyd"] == [[True, 0]] * len(PHONES), found["chronyd"]
    # a device using many addresses of its /64 gets the /64's share, one KoD; the others are answered
    sent, answered, kissed, seconds = found["device"]
    share = ntp.BURST * ntp.PREFIX_SHARE
    assert share <= answered <= share + ntp.RATE_PER_SECOND * ntp.PREFIX_SHARE * seconds + 1 < sent, found["device"]
    assert kissed == 1, found["device"]
    assert found["neighbour"][1:3] == [2, 0], found["neighbour"]
    # LDAP: the address holding its four searches is busy; every phone of its /64 is answered, at once
    assert found["flooder search"] == ldap.BUSY
    assert found["phone searches"] == [0] * (SHARE - 4)
    # the /64 as a whole holds at most its share (the flooder's 4 and 2 of each holder's); another /64 is still served
    assert found["share held"] == 4 + 2 * len(HOLDERS) == SHARE
    assert found["lan search at its share"] == ldap.BUSY and found["neighbour search"] == 0
    assert found["busy counted"] == 2  # the flooder's and the LAN's at its share: sensor ldap_searches_busy
    flood_sent, flood_answered = found["flood"][:2]
    device_sent, device_answered = found["device"][:2]
    assert found["ntp refused counted"] == flood_sent - flood_answered + device_sent - device_answered


# -- paged searches (RFC 2696) from the phones of one /64 ------------------------------------------

PAGED_CONTACTS = 8000  # a paged search of everyone with pages of one keeps 8,000 ids (32 KB)
PAGE = 500
PROMPT = "Enter for the next"


def paging(source: str, port: int, prompt: bool) -> subprocess.Popen:
    """ldapsearch paging through every contact from `source`; with `prompt`, it asks on its stdout (line-buffered
    by stdbuf, so the prompt is seen) and waits for a line on its stdin before each page after the first."""
    env = dict(os.environ, LDAPSOCKET_BIND_ADDRESSES=source)
    mode = "prompt" if prompt else "noprompt"
    return subprocess.Popen(["stdbuf", "-oL", "ldapsearch", "-x", "-H", f"ldap://[{SERVER}]:{port}", "-D", "phonebook",
                             "-w", PASSWORD, "-b", "dc=pbx", "-LLL", "-E", f"pr={PAGE}/{mode}", "(sn=*)", "sn"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def asked_for_next_page(proc: subprocess.Popen, timeout: float = 30.0) -> bytes:
    """What `proc` wrote up to its prompt for the next page (its first page read: its cookie is held)."""
    said, deadline = b"", time.monotonic() + timeout
    while PROMPT.encode() not in said:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
        assert chunk, f"no prompt for the next page: {said[-300:]!r}"
        said += chunk
    return said


def every_entry(proc: subprocess.Popen, said: bytes = b"") -> tuple[int, int, str]:
    """(exit code, entries read, what it said on stderr)."""
    out, err = proc.communicate(b"\n" * (PAGED_CONTACTS // PAGE + 2), timeout=60)
    return proc.returncode, sum(line.startswith("sn: ") for line in (said + out).decode().splitlines()), err.decode()


def paged_from(source: str, port: int, count: int) -> tuple[socket.socket, list[bytes]]:
    """A connection from `source` starting `count` paged searches of everyone with pages of one: their cookies."""
    sock = socket.socket(socket.AF_INET6)
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect((SERVER, port))
    sock.sendall(w.bind(1, "phonebook", PASSWORD))
    assert w.parse_responses(sock.recv(100))[0].code == 0
    cookies = []
    for n in range(count):
        sock.sendall(w.search(2 + n, "(sn=*)", controls=[w.paged(1)]))
        done = read_until_done(sock)[-1]
        assert done.code == 0, done
        cookies.append(w.paged_cookie(done.controls[ldap.OID_PAGED_RESULTS])[1])
    return sock, cookies


def next_page(sock: socket.socket, cookie: bytes) -> int:
    sock.sendall(w.search(100, "(sn=*)", controls=[w.paged(1, cookie)]))
    return read_until_done(sock)[-1].code



def paging_probe() -> dict:
    directory = Path(tempfile.mkdtemp())
    book = AddressBook(directory / "data" / "addressbook.sqlite3")
    book.import_csv("first_name,last_name,work\n" + "".join(f"Person{i},Name{i:05d},+1 555 {i:07d}\n" for i in range(PAGED_CONTACTS)))
    book.close()
    port = free_port()
    svc = ServiceProcess(directory, {"ip_ldap_port": f"[{SERVER}]:{port}", "ip_http_port": f"127.0.0.1:{free_port()}",
                                     "ldap_password": PASSWORD, "admin_password_hash": hash_password(ADMIN_PASSWORD)})
    svc.start()
    found: dict = {}
    socks: list[socket.socket] = []

    def kept(count: int):
        state = svc.sensors(ADMIN_PASSWORD)
        return state if state["ldap_paged_searches_open"] == count else None

    try:
        # 16 phones of the LAN read their first page and pause: 16 paged searches held at once
        paused = [paging(phone, port, prompt=True) for phone in PAGERS]
        said = [asked_for_next_page(proc) for proc in paused]
        found["held by the paused"] = svc.sensors(ADMIN_PASSWORD)["ldap_paged_searches_open"]
        # one address of the LAN keeps 12 over two connections: it gives up its own 4 oldest, no phone's
        first, first_cookies = paged_from(FLOODER, port, 6)
        second, second_cookies = paged_from(FLOODER, port, 6)
        socks += [first, second]
        found["greedy pages"] = [next_page(first, cookie) for cookie in first_cookies] + \
                                [next_page(second, cookie) for cookie in second_cookies]
        found["held with the greedy"] = svc.sensors(ADMIN_PASSWORD)["ldap_paged_searches_open"]
        # 12 more phones page straight through meanwhile, all at once
        browsing = [paging(phone, port, prompt=False) for phone in BROWSERS]
        found["browsers"] = [every_entry(proc) for proc in browsing]
        # then the paused phones go on to their last page
        found["paused"] = [every_entry(proc, told) for proc, told in zip(paused, said, strict=True)]
        for sock in socks:
            sock.close()
        socks.clear()
        eventually(lambda: kept(0), timeout=30, what="every paged search given back")
        # a device cycling the addresses of its /64, 8 paged searches of everyone on each: the /64's share is kept
        before = svc.worker_rss_mib
        cookies = []
        for source in CYCLER:
            sock, mine = paged_from(source, port, 8)
            socks.append(sock)
            cookies += [(sock, cookie) for cookie in mine]
        found["kept for the device"] = svc.sensors(ADMIN_PASSWORD)["ldap_paged_searches_open"]
        during = svc.worker_rss_mib
        found["device's first and last"] = [next_page(*cookies[0]), next_page(*cookies[-1])]
        found["lan phone meanwhile"] = every_entry(paging(PHONES[0], port, prompt=False))
        for sock in socks:
            sock.close()
        socks.clear()
        eventually(lambda: kept(0), timeout=30, what="the device's paged searches given back")
        found["memory"] = [before, during, svc.worker_rss_mib]
    finally:
        for sock in socks:
            sock.close()
        svc.stop()
    return found


def test_phones_of_one_64_page_through_the_directory_at_once_and_an_address_or_a_64_keeps_only_its_share():
    addresses = (SERVER, *PHONES, *PAGERS, *BROWSERS, FLOODER, *CYCLER)
    found = in_network_namespace(paging_probe, addresses=tuple(f"{a}/64" for a in addresses), timeout=240)
    # 16 phones of one /64 each hold a paged search at once (8 per /64 gave up their oldest)
    assert found["held by the paused"] == len(PAGERS)
    # one address keeping 12 gives up its own oldest 4 (an invalid cookie), keeps 8, and takes no phone's
    assert found["greedy pages"] == [ldap.UNWILLING_TO_PERFORM] * 4 + [0] * 8, found["greedy pages"]
    assert found["held with the greedy"] == len(PAGERS) + limits.MAX_PAGED_PER_CLIENT
    # every phone, paused or paging straight through meanwhile, got every entry
    assert found["browsers"] == [[0, PAGED_CONTACTS, ""]] * len(BROWSERS), found["browsers"]
    assert found["paused"] == [[0, PAGED_CONTACTS, ""]] * len(PAGERS), found["paused"]
    # a device cycling 64 addresses of its /64 (512 paged searches) keeps the /64's share: its oldest went
    assert found["kept for the device"] == limits.MAX_PAGED_PER_PREFIX
    assert found["device's first and last"] == [ldap.UNWILLING_TO_PERFORM, 0]
    assert found["lan phone meanwhile"] == [0, PAGED_CONTACTS, ""]
    before, during, after = found["memory"]
    assert during - before < 4 and after - before < 4, found["memory"]  # 512 would have kept ~16 MiB


# -- TFTP uploads from the phones of one /64 -------------------------------------------------------

UPLOAD_SERVER = "fd00:70::1"  # on no interface: a local route to its /64 names each client's source (`src`)
UPLOADERS = [f"fd00:64::5:{n:x}" for n in range(1, 41)]  # 40 phones of the LAN, one log each
UPLOAD_FLOODER = "fd00:64::5:66"  # one address of that LAN uploading until refused
LOG_KIB, BIG_KIB = 100, 300


def tftp_put_from(source: str, port: int, local: Path, name: str) -> str:
    """tftp-hpa's `put` from `source` (it binds no address, so the route to the server names the source it uses):
    what it said ("" when all went well; it exits 0 after an error too)."""
    subprocess.run(["ip", "-6", "route", "replace", "local", "fd00:70::/64", "dev", "lo", "src", source], check=True)
    result = subprocess.run(["tftp", "-6", "-m", "binary", UPLOAD_SERVER, str(port), "-c", "put", str(local), name],
                            capture_output=True, text=True, timeout=30)
    return (result.stdout + result.stderr).strip() or str(result.returncode or "")


def upload_probe() -> dict:
    Path("/proc/sys/net/ipv6/ip_nonlocal_bind").write_text("1")  # this namespace's: the server binds UPLOAD_SERVER
    subprocess.run(["ip", "-6", "route", "add", "local", "fd00:70::/64", "dev", "lo", "src", UPLOADERS[0]], check=True)
    directory = Path(tempfile.mkdtemp())
    log, big = directory / "log", directory / "big"
    log.write_bytes(os.urandom(LOG_KIB * 1024))
    big.write_bytes(os.urandom(BIG_KIB * 1024))
    tftp_port = free_udp_port()
    svc = ServiceProcess(directory, {"ip_tftp_port": f"[{UPLOAD_SERVER}]:{tftp_port}", "ip_http_port": f"127.0.0.1:{free_port()}",
                                     "tftp_write": True, "tftp_upload_mib_per_hour": 1,
                                     "admin_password_hash": hash_password(ADMIN_PASSWORD)})
    svc.start()
    found: dict = {}
    try:
        found["phones"] = [tftp_put_from(phone, tftp_port, log, f"phone-{n}.log") for n, phone in enumerate(UPLOADERS)]
        found["flooded"] = []
        for n in range(8):  # bounded: 1 MiB an hour is three of these at most
            found["flooded"].append(tftp_put_from(UPLOAD_FLOODER, tftp_port, big, f"big-{n}.log"))
            if found["flooded"][-1]:
                break
        found["after"] = tftp_put_from(UPLOADERS[0].replace("5:1", "6:1"), tftp_port, log, "after.log")
        found["stored"] = sorted(os.listdir(directory / "data" / "tftp" / "uploads"))
        found["refused counted"] = svc.sensors(ADMIN_PASSWORD)["tftp_uploads_refused_rate"]
    finally:
        svc.stop()
    return found


def test_phones_of_one_64_upload_each_on_their_own_quota_and_an_address_over_its_quota_is_refused():
    """40 phones of one /64 upload a 100 KiB log each with tftp-hpa, 6.4 MiB with the file charges: all are stored
    (with the quota per /64 of before, 1 MiB for them all, six were); one address over its own 1 MiB is refused as
    "disk full", and another phone of the /64 still uploads."""
    addresses = (*UPLOADERS, UPLOAD_FLOODER, UPLOADERS[0].replace("5:1", "6:1"))
    found = in_network_namespace(upload_probe, addresses=tuple(f"{a}/64" for a in addresses), timeout=240)
    assert found["phones"] == [""] * len(UPLOADERS), found
    *stored_big, refusal = found["flooded"]
    assert stored_big == [""] * (1024 // (64 + BIG_KIB)), found  # two fit in its hour, the third is refused
    assert refusal == ("Error code 3: disk full: this address has uploaded its 1 MiB for the hour (tftp_upload_mib_per_hour); "
                       "try again later")
    assert found["after"] == "" and found["refused counted"] == 1
    stored = [f"phone-{n}.log" for n in range(len(UPLOADERS))] + [f"big-{n}.log" for n in range(len(found["flooded"]) - 1)]
    assert found["stored"] == sorted([*stored, "after.log"])
