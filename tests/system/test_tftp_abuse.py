"""TFTP as an attacker uses it, against the running service: raw UDP requests that are never
acknowledged (timeout 255, spoofed-looking sources), what they hold and what they draw; a spoofed
burst followed by the phone whose address it used; a device of an IPv6 /64 against a phone of
the same /64 (in a network namespace); a file name that tries to forge a log line; and the
real clients (curl, atftp, tftp-hpa) through a relay that loses their first packets.

Spoofing is simulated the only way a test can: sources that never acknowledge
(a spoofed request's answer goes to someone who never asked). Bytes are
counted on the attacker's sockets: amplification = bytes received / bytes sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import struct
import subprocess
import tempfile
import threading
import time

import pytest
import requests
from support import ServiceProcess, eventually, free_port, free_udp_port
from support.netns import in_network_namespace
from support.tftp_clients import atftp_get, curl_tftp, tftp_hpa
from support.tftp_relay import LossyRelay
from support.web import PASSWORD, PASSWORD_HASH

from greenservers import ratelog
from greenservers.proto import tftp as proto

FILE, FILE_SIZE = "firmware.bin", 20 * 512 + 100  # 21 blocks of 512
PER_CLIENT = 8
PLAIN_REQUEST = b"\x00\x01ab.cfg\x00octet\x00"  # 15 bytes, as in the issue
LIMITS = proto.Limits()


@pytest.fixture(scope="module")
def tftp(tmp_path_factory):
    port = free_udp_port()
    svc = ServiceProcess(tmp_path_factory.mktemp("tftp-abuse"), {
        "ip_tftp_port": f"127.0.0.1:{port}", "ip_http_port": f"127.0.0.1:{free_port()}",
        "admin_password_hash": PASSWORD_HASH, "tftp_max_per_client": PER_CLIENT,
    })
    root = svc.directory / "data" / "tftp"
    root.mkdir(parents=True)
    svc.files = {FILE: os.urandom(FILE_SIZE), "ab.cfg": os.urandom(4096)}
    for name, content in svc.files.items():
        (root / name).write_bytes(content)
    svc.start()
    yield svc
    svc.stop()


def sensors(svc) -> dict[str, int]:
    answer = requests.get(svc.url("/api/sensors"), auth=("admin", PASSWORD), timeout=10)
    answer.raise_for_status()
    return {row["name"]: row["value"] for row in answer.json()["sensors"]}


def wait_until(condition, svc, timeout: float = 30.0) -> dict[str, int]:
    """The sensors once `condition(sensors)` holds (polled; fails after `timeout`)."""
    return eventually(lambda: condition(values := sensors(svc)) and values, timeout, interval=0.1, what=lambda: sensors(svc))


def wait_for_sensor(svc, name: str, at_least: int) -> dict[str, int]:
    return wait_until(lambda values: values[name] >= at_least, svc)


def attacker(source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.settimeout(5)
    return sock


def rrq(name: str, **options) -> bytes:
    out = b"\x00\x01" + name.encode() + b"\x00octet\x00"
    for key, value in options.items():
        out += key.encode() + b"\x00" + str(value).encode() + b"\x00"
    return out


def drain(sock: socket.socket, wait: float = 0.5) -> list[bytes]:
    """What is still arriving on `sock` (nothing more comes once its transfer has ended)."""
    sock.settimeout(wait)
    got = []
    try:
        while True:
            got.append(sock.recv(70000))
    except TimeoutError:
        return got


@pytest.mark.real_client
def test_timeout_255_never_acknowledged_holds_no_slot_for_long_and_draws_two_small_oacks(tftp):
    """The issue's attack: eight requests with timeout 255 from one address, never acknowledged."""
    port, before = tftp.port("ip_tftp_port"), sensors(tftp)
    request = rrq(FILE, timeout=255, blksize=1428, tsize=0)
    socks = [attacker() for _ in range(PER_CLIENT)]
    try:
        for sock in socks:
            sock.sendto(request, ("127.0.0.1", port))
        first = [sock.recv(70000) for sock in socks]
        assert all(d[:2] == b"\x00\x06" and b"timeout" not in d and b"blksize\x001428" in d for d in first), first[0]
        assert [sock.recv(70000) for sock in socks] == first  # the one retransmission, after 1 s
        # a ninth request from the same address is served at once: it takes the oldest unverified slot
        with attacker() as ninth:
            ninth.sendto(rrq(FILE, blksize=1428), ("127.0.0.1", port))
            oack, tid = ninth.recvfrom(70000)
            assert oack[:2] == b"\x00\x06", oack
            ninth.sendto(b"\x00\x04\x00\x00", tid)
            assert ninth.recv(70000)[:4] == b"\x00\x03\x00\x01"
            ninth.sendto(b"\x00\x05\x00\x00done\x00", tid)
        after = wait_for_sensor(tftp, "tftp_first_packets_unacknowledged", before["tftp_first_packets_unacknowledged"] + PER_CLIENT)
        received = [first[i] * 2 + b"".join(drain(sock)) for i, sock in enumerate(socks)]
        assert all(len(r) == 2 * len(first[0]) for r in received)  # nothing after the retransmission
        amplification = sum(map(len, received)) / (len(request) * len(socks))
        assert amplification < 2, amplification  # two OACKs smaller than the request
        assert after["tftp_transfers_active"] == 0
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.real_client
def test_a_plain_request_never_acknowledged_draws_data_1_twice(tftp):
    with attacker() as sock:
        sock.sendto(PLAIN_REQUEST, ("127.0.0.1", tftp.port("ip_tftp_port")))
        got = [sock.recv(70000), sock.recv(70000)]
        before = sensors(tftp)["tftp_first_packets_unacknowledged"]
        wait_for_sensor(tftp, "tftp_first_packets_unacknowledged", before + 1)
        got += drain(sock)
    assert [d[:4] for d in got] == [b"\x00\x03\x00\x01"] * 2  # was six times: 3,096 bytes
    assert sum(map(len, got)) == 2 * 516


@pytest.mark.real_client
def test_a_flood_from_one_source_that_never_acknowledges_draws_no_more_than_its_allowance(tftp):
    """200 plain requests from one address (spoofed, as far as the server can tell): eight transfers start
    (tftp_max_per_client); the rest are dropped unread, as every slot of that client awaits an acknowledgement
    (later ones would be refused as busy until the address's allowance is spent, then dropped unread too)."""
    port, source = tftp.port("ip_tftp_port"), "127.0.0.77"
    before = sensors(tftp)
    socks = [attacker(source) for _ in range(200)]
    started = time.monotonic()
    try:
        for sock in socks:
            sock.sendto(PLAIN_REQUEST, ("127.0.0.1", port))
        # the allowance is spent (requests are dropped), and the eight transfers have given up
        wait_for_sensor(tftp, "tftp_sends_withheld", before["tftp_sends_withheld"] + 1)
        wait_for_sensor(tftp, "tftp_first_packets_unacknowledged", before["tftp_first_packets_unacknowledged"] + PER_CLIENT)
        got = [d for _ in range(2) for sock in socks for d in drain(sock, wait=0.01)]  # twice: the retransmissions, if allowed
    finally:
        for sock in socks:
            sock.close()
    elapsed = time.monotonic() - started
    capacity = PER_CLIENT * (1 + LIMITS.first_packet_retries) * proto.FIRST_PACKET_MAX
    allowed = capacity + elapsed * capacity / proto.ALLOWANCE_REFILL + proto.FIRST_PACKET_MAX
    received = sum(map(len, got))
    assert 0 < received <= allowed, (received, allowed)
    kinds = {d[:4] for d in got}
    assert kinds <= {b"\x00\x03\x00\x01", b"\x00\x05\x00\x00"}, kinds  # DATA 1 and "busy": nothing else, nothing more
    tftp.wait_for_log("127.0.0.77: request dropped: ")


@pytest.mark.real_client
def test_an_honest_client_is_never_short_of_allowance(tftp, tmp_path):
    """Fifty sequential downloads from one address: each acknowledgement gives its bytes back."""
    port = tftp.port("ip_tftp_port")
    for n in range(50):
        result = subprocess.run(tftp_hpa("127.0.0.1", port, "get", "ab.cfg", tmp_path / "x"),
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and (tmp_path / "x").read_bytes() == tftp.files["ab.cfg"], (n, result.stderr)


# -- the real clients through a relay that loses packets -----------------------------------------------


CLIENTS = {  # each fetches `name` through the relay at `port`
    "curl": lambda port, name, out: curl_tftp("127.0.0.1", port, name, "-o", out),  # OACK first (blksize, tsize, timeout)
    "atftp": lambda port, name, out: atftp_get("127.0.0.1", port, name, out, "blksize 1428"),
    "tftp-hpa": lambda port, name, out: tftp_hpa("127.0.0.1", port, "get", name, out),  # DATA 1 first
    # the option is declined, no other is asked for: no OACK, DATA 1 first
    "atftp-timeout-255": lambda port, name, out: atftp_get("127.0.0.1", port, name, out, "timeout 255"),
}
LOSSES = {
    "first packet lost": lambda direction, transfer, index: direction == "down" and index == 0,
    "first acknowledgement lost": lambda direction, transfer, index: direction == "up" and index == 0,
    # both copies of the first packet: only the client's own retransmission of its request can help
    "first packet and its retransmission lost": lambda direction, transfer, index: direction == "down" and transfer == 0 and index < 2,
}
# atftp aborts on a second OACK ("tftp: unexpected OACK": its client accepts one OACK only outside multicast),
# so a lost ACK of the OACK ends its download against any server that retransmits the OACK, in.tftpd too
CLIENT_LIMITATIONS = {("atftp", "first acknowledgement lost")}


def fetch_through(svc, drop, client: str, name: str, out) -> tuple[subprocess.CompletedProcess, LossyRelay]:
    relay = LossyRelay(svc.port("ip_tftp_port"), drop)
    try:
        return subprocess.run(CLIENTS[client](relay.port, name, str(out)), capture_output=True, text=True, timeout=120), relay
    finally:
        relay.close()


@pytest.mark.real_client
@pytest.mark.parametrize("client, loss", [(client, loss) for client in sorted(CLIENTS) for loss in sorted(LOSSES)
                                          if (client, loss) not in CLIENT_LIMITATIONS])
def test_real_clients_fetch_when_their_first_packets_are_lost(tftp, tmp_path, client, loss):
    result, relay = fetch_through(tftp, LOSSES[loss], client, FILE, tmp_path / "out")
    assert result.returncode == 0, (client, loss, result.stdout + result.stderr, relay.dropped)
    assert hashlib.sha256((tmp_path / "out").read_bytes()).digest() == hashlib.sha256(tftp.files[FILE]).digest()
    assert relay.dropped, "the relay lost nothing: the case was not exercised"


@pytest.mark.real_client
@pytest.mark.parametrize("client", ["curl", "atftp", "tftp-hpa"])
def test_real_clients_fetch_when_packets_are_lost_mid_transfer(tftp, tmp_path, client):
    """The third datagram towards the client and the fourth towards the service are lost: each loss
    costs a timeout (curl's 6 s, as it asks for timeout 6; 1 s for the others). The file has blocks
    enough (8 of atftp's 1428 octets) that the fourth is never the last acknowledgement: losing that
    one costs the client nothing, and it raced the client's exit (the case was not always exercised)."""
    def drop(direction, transfer, index):
        return index == (2 if direction == "down" else 3)
    result, relay = fetch_through(tftp, drop, client, FILE, tmp_path / "out")
    assert result.returncode == 0, (client, result.stdout + result.stderr, relay.dropped)
    assert (tmp_path / "out").read_bytes() == tftp.files[FILE]
    assert {d for d, _, _ in relay.dropped} == {"down", "up"}


def test_the_relay_counts_per_transfer_and_direction():
    """The relay itself: a request passes, the n-th datagram of a transfer is the one the policy sees."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server, attacker() as client:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        seen = []
        relay = LossyRelay(server.getsockname()[1], lambda *key: seen.append(key) or key == ("down", 0, 1))
        try:
            client.sendto(b"request", ("127.0.0.1", relay.port))
            request, upstream = server.recvfrom(100)
            for n in range(3):
                server.sendto(struct.pack("!H", n), upstream)
            got = [client.recvfrom(100) for _ in range(2)]
            assert [d for d, _ in got] == [struct.pack("!H", 0), struct.pack("!H", 2)] and got[0][1][1] != relay.port
            client.sendto(b"ack", got[0][1])
            assert server.recvfrom(100) == (b"ack", upstream)
        finally:
            relay.close()
    assert request == b"request" and seen == [("down", 0, 0), ("down", 0, 1), ("down", 0, 2), ("up", 0, 0)]


# -- a spoofed burst, then the phone whose address it used ---------------------------------------------


def phone_service(service, tmp_path) -> ServiceProcess:
    svc = service({"ip_tftp_port": f"127.0.0.1:{free_udp_port()}", "ip_http_port": f"127.0.0.1:{free_port()}",
                   "admin_password_hash": PASSWORD_HASH, "tftp_max_per_client": PER_CLIENT})
    root = svc.directory / "data" / "tftp"
    root.mkdir(parents=True, exist_ok=True)
    (root / "ab.cfg").write_bytes(b"phone settings\n" * 100)
    return svc


@pytest.mark.real_client
@pytest.mark.parametrize("burst", [PER_CLIENT + 1, 40])
def test_a_spoofed_burst_does_not_shut_out_the_phone_at_its_address(service, tmp_path, burst):
    """The review's attack: a burst of RRQs "from" a phone's address (here 127.0.0.1, the address tftp-hpa's requests
    come from), never acknowledged, then silence. The first PER_CLIENT take every slot of that client; the others
    are dropped while those await their acknowledgement. Once the spoofed transfers have given up, the phone
    (tftp-hpa) is heard at once: none of its requests is dropped, however quiet the network."""
    svc = phone_service(service, tmp_path)
    port = svc.port("ip_tftp_port")
    socks = [attacker() for _ in range(burst)]  # open and never read: the answers go nowhere, as to a spoofed source
    try:
        for sock in socks:
            sock.sendto(rrq("ab.cfg"), ("127.0.0.1", port))
        # every request accounted for and every transfer given up (the network is quiet): begun (then given up
        # unacknowledged), refused while the client's slots were taken, or, on a loaded machine where requests
        # waited in the socket's buffer, shed
        spoofed = wait_until(lambda v: v["tftp_transfers_active"] == 0 and v["tftp_first_packets_unacknowledged"]
                             + v["tftp_sends_withheld"] + v["tftp_requests_shed"] >= burst, svc)
        assert 0 < spoofed["tftp_first_packets_unacknowledged"] <= PER_CLIENT, spoofed  # never more than its slots
        out = tmp_path / "ab.cfg"
        result = subprocess.run(tftp_hpa("127.0.0.1", port, "get", "ab.cfg", out),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and out.read_bytes() == b"phone settings\n" * 100, result.stderr
        after = wait_for_sensor(svc, "tftp_transfers_done", 1)
        assert after["tftp_sends_withheld"] == spoofed["tftp_sends_withheld"], (spoofed, after)  # its request was read at once
    finally:
        for sock in socks:
            sock.close()


# -- a device on several addresses whose transfers crawl --------------------------------------------------


@pytest.mark.real_client
def test_transfers_that_crawl_do_not_hold_every_slot_from_the_phones(service, tmp_path):
    """A review's device held all 500 slots from 63 addresses, each transfer acknowledged once every 5 s (100
    four-byte ACKs a second in all): every phone was refused as busy. Here 2 addresses hold the 4 slots with
    transfers acknowledged once, then never. A phone (curl) is served on probation at once; once the crawlers have
    held their slots for PACE_GRACE, the phone's answered request takes one of theirs, and that crawler is told."""
    svc = service({"ip_tftp_port": f"127.0.0.1:{free_udp_port()}", "ip_http_port": f"127.0.0.1:{free_port()}",
                   "admin_password_hash": PASSWORD_HASH, "tftp_max_transfers": 4, "tftp_max_per_client": 2})
    root = svc.directory / "data" / "tftp"
    root.mkdir(parents=True, exist_ok=True)
    (root / "big.bin").write_bytes(os.urandom(1 << 20))
    (root / "ab.cfg").write_bytes(b"phone settings\n" * 100)
    port = svc.port("ip_tftp_port")
    crawlers = [attacker(f"127.0.0.{60 + n // 2}") for n in range(4)]
    try:
        for sock in crawlers:  # each verified (ACK 0 of the OACK, ACK 1), then never a block more
            sock.sendto(rrq("big.bin", timeout=10), ("127.0.0.1", port))
            oack, peer = sock.recvfrom(70000)
            assert oack[:2] == b"\x00\x06"
            sock.sendto(b"\x00\x04\x00\x00", peer)
            assert sock.recv(70000)[:4] == b"\x00\x03\x00\x01"
            sock.sendto(b"\x00\x04\x00\x01", peer)
        wait_until(lambda values: values["tftp_transfers_active"] == 4, svc)
        out = tmp_path / "ab.cfg"

        def phone_fetches() -> bool:
            result = subprocess.run(curl_tftp("127.0.0.1", port, "ab.cfg", "-o", out), capture_output=True, timeout=30)
            assert result.returncode == 0, result.stderr  # never busy: on probation while no crawler is judged yet
            return sensors(svc)["tftp_transfers_slow_ended"] >= 1

        eventually(phone_fetches, timeout=30, interval=0.25, what="a crawler's slot given to the phone")
        assert out.read_bytes() == b"phone settings\n" * 100
        assert any("gave its slot to a new request" in line and "bytes a second each" in line for line in svc.lines)
        told = []
        for sock in crawlers:  # the crawler whose transfer ended is told why (among its DATA 2's retransmissions)
            told += [d for d in drain(sock, 0.2) if d[:2] == b"\x00\x05"]
        assert len(told) == 1 and b"slow transfer gave its slot" in told[0], told
        assert sensors(svc)["tftp_transfers_active"] == 3  # the crawlers' other three; the phone's is done
    finally:
        for sock in crawlers:
            sock.close()


# -- a storm of spoofed requests faster than the server reads -------------------------------------------


def spoofed_storm(port: int, request: bytes, rate: float, seconds: float, stop: threading.Event) -> int:
    """Send `request` from a new source of 127.20.0.0/16 each time (IP_PKTINFO picks the source of each datagram,
    as a spoofer's raw socket would), `rate` a second, for `seconds` at most; the answers go nowhere. How many."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))  # the answers come to this port of every 127.20.x.y: never read
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sent, started = 0, time.monotonic()
    try:
        while not stop.is_set() and sent < rate * seconds:
            due = started + sent / rate
            if due > time.monotonic():
                stop.wait(due - time.monotonic())
            source = socket.inet_aton(f"127.20.{sent >> 8 & 255}.{sent & 255 or 1}")
            info = struct.pack("@i4s4s", 0, source, b"\0\0\0\0")
            with contextlib.suppress(OSError):
                sock.sendmsg([request], [(socket.IPPROTO_IP, 8, info)], 0, ("127.0.0.1", port))  # 8: IP_PKTINFO
            sent += 1
    finally:
        sock.close()
    return sent


@pytest.mark.real_client
def test_a_phone_that_booted_before_is_served_through_a_storm_of_spoofed_requests(service, tmp_path):
    """A review's 3,000 spoofed requests a second from many sources: the server reads 1,000 a second, the rest
    waited in the socket's buffer, the kernel dropped what came when it was full, and 3 of 3 phones got no
    answer. Requests that waited past SHED_AFTER are now shed unless their address answered lately: the phone
    (curl, from an address that fetched before the storm) is served every time, the storm's are counted shed."""
    svc = phone_service(service, tmp_path)
    port = svc.port("ip_tftp_port")
    out = tmp_path / "ab.cfg"

    def fetch() -> subprocess.CompletedProcess:
        return subprocess.run(curl_tftp("127.0.0.1", port, "ab.cfg", "-o", out), capture_output=True, timeout=30)

    assert fetch().returncode == 0  # before the storm: the phone's address has answered
    stop = threading.Event()
    storm = threading.Thread(target=spoofed_storm, args=(port, rrq("ab.cfg"), 3000.0, 20.0, stop), daemon=True)
    storm.start()
    try:
        wait_for_sensor(svc, "tftp_requests_shed", 500)  # the server is behind: a quarter of a second of requests waits
        results = [fetch() for _ in range(3)]
        assert storm.is_alive()  # served during the storm (before, the phone's first answer came once it had ended)
        assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
        assert out.read_bytes() == b"phone settings\n" * 100
    finally:
        stop.set()
        storm.join(30)
    assert sensors(svc)["tftp_requests_shed"] >= 500


# -- one device of an IPv6 /64 against a phone of the same /64 -----------------------------------------

SERVER6, PHONE6 = "fd00:1::1", "fd00:1::5"
ATTACKERS6 = [f"fd00:1::{0x100 + n:x}" for n in range(100)]
ATTACK_RATE, PHONE_FETCHES = 5.0, 10


def fetch_acknowledging(source: str, server: tuple[str, int], name: str) -> bytes | None:
    """One download from `source`, acknowledging every block, no retry (None: no answer within 2 s, or an error)."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(2)
        sock.sendto(rrq(name), server)
        content = b""
        try:
            while True:
                data, peer = sock.recvfrom(1024)
                if data[:2] != b"\x00\x03":
                    return None
                sock.sendto(b"\x00\x04" + data[2:4], peer)
                content += data[4:]
                if len(data) < 516:
                    return content
        except TimeoutError:
            return None


def slash64_probe() -> dict:
    """Inside a private network namespace whose lo holds a /64 (support.netns): a device sends requests from
    100 of its own addresses in turn (5 a second, never acknowledged, as the review did), and the phone at
    another address of the /64 fetches its file ten times meanwhile."""
    port = free_udp_port()
    svc = ServiceProcess(tempfile.mkdtemp(), {"ip_tftp_port": f"[{SERVER6}]:{port}", "ip_http_port": f"127.0.0.1:{free_port()}",
                                              "admin_password_hash": PASSWORD_HASH, "tftp_max_per_client": PER_CLIENT,
                                              "tftp_max_transfers": 4 * PER_CLIENT})  # a /64 holds a quarter: PER_CLIENT
    root = svc.directory / "data" / "tftp"
    root.mkdir(parents=True)
    content = os.urandom(1500)
    (root / "ab.cfg").write_bytes(content)
    svc.start()
    socks, stop, sent = [], threading.Event(), [0]

    def attack():
        while not stop.is_set() and sent[0] < 600:  # bounded: 2 minutes at most
            socks[sent[0] % len(socks)].sendto(rrq("ab.cfg"), (SERVER6, port))
            sent[0] += 1
            stop.wait(1 / ATTACK_RATE)

    try:
        for address in ATTACKERS6:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.bind((address, 0))  # open and never read
            socks.append(sock)
        thread = threading.Thread(target=attack, daemon=True)
        thread.start()
        eventually(lambda: sent[0] >= 3 * PER_CLIENT, timeout=60)  # the /64's slots taken and given up several times over
        fetched = [fetch_acknowledging(PHONE6, (SERVER6, port), "ab.cfg") == content for _ in range(PHONE_FETCHES)]
        attack_packets = sent[0]
        stop.set()
        thread.join()
        values = sensors(svc)
    finally:
        stop.set()
        for sock in socks:
            sock.close()
        svc.stop()
    return {"fetched": fetched, "attack packets": attack_packets, "withheld": values["tftp_sends_withheld"],
            "dropped lines": sum("request dropped" in line for line in svc.lines),
            "evicted lines": sum("gave its slot" in line for line in svc.lines)}


@pytest.mark.real_client
def test_a_device_using_many_addresses_of_its_64_does_not_deny_the_phone_of_that_64():
    """A /64 holds at most a quarter of the slots, the allowance of what may be sent unacknowledged is per exact
    address (who receives the bytes): the device spends only its own addresses' allowances, and the phone, whose
    requests each take the oldest unacknowledged slot of the /64 and acknowledge, completes every fetch. What it
    causes is logged once per /64, not once per address."""
    found = in_network_namespace(slash64_probe, addresses=tuple(f"{a}/64" for a in (SERVER6, PHONE6, *ATTACKERS6)), timeout=180)
    assert found["fetched"] == [True] * PHONE_FETCHES, found
    assert found["attack packets"] >= 3 * PER_CLIENT and found["withheld"] == 0, found
    assert found["dropped lines"] == 0 and found["evicted lines"] == 1, found


def test_a_file_name_with_a_newline_forges_no_log_line(tftp):
    """The review's injection: the name is logged escaped, on its own line's end, never as a line of its own."""
    forged = "[2026-12-01 10:00:00 +0000] [1] [INFO] admin logged in from 6.6.6.6"
    since = len(tftp.lines)
    with attacker("127.0.0.66") as sock:
        sock.sendto(rrq("x\n" + forged), ("127.0.0.1", tftp.port("ip_tftp_port")))
        assert sock.recv(1000)[:2] == b"\x00\x05"  # refused
    line = tftp.wait_for_log("127.0.0.66: RRQ x\\n" + forged + " refused: ", since=since)
    assert "\n" not in line and not any(line.startswith(forged) for line in tftp.lines[since:])


def test_requests_for_missing_files_from_many_sources_write_at_most_the_kinds_budget_of_lines(tftp):
    """The review's log flood (spoofed RRQs for missing files, each from another source): one line per client a
    minute does not hold when every request has its own source; at most LINES_PER_KIND of the kind are written
    (the rest are counted in one summary line when the minute is over)."""
    port, since = tftp.port("ip_tftp_port"), len(tftp.lines)
    before = sensors(tftp)
    accounted = before["tftp_transfers_failed"] + before["tftp_requests_shed"]
    socks = [attacker(f"127.0.1.{n}") for n in range(1, 201)]
    try:
        for sock in socks:
            sock.sendto(rrq("nothing-here"), ("127.0.0.1", port))
        # each refused or, on a loaded machine where requests waited in the socket's buffer, shed (its own kind)
        wait_until(lambda values: values["tftp_transfers_failed"] + values["tftp_requests_shed"] >= accounted + len(socks), tftp)
    finally:
        for sock in socks:
            sock.close()
    written = [line for line in tftp.lines[since:] if "RRQ nothing-here refused" in line]
    assert 0 < len(written) <= ratelog.LINES_PER_KIND, len(written)


@pytest.mark.real_client
def test_an_address_guessing_macs_is_refused_every_new_name_once_it_asked_for_its_allowance_of_absent_ones(tmp_path):
    """tftp-hpa and curl (TFTP and /prov/) from 127.0.0.1 ask for absent per-phone names until its allowance
    (prov_misses_per_hour, 5 here) is spent; then a phone's file that is there is refused to it too (the refusal
    tells nothing about which MACs exist), the per-phone file it was served before still is, and so are files
    without a MAC; another address is served."""
    tftp_port, http_port = free_udp_port(), free_port()
    svc = ServiceProcess(tmp_path / "svc", {"ip_tftp_port": f"127.0.0.1:{tftp_port}", "ip_http_port": f"127.0.0.1:{http_port}",
                                            "ip_ntp_port": "", "ip_ldap_port": "", "ip_ldaps_port": "", "ip_snmp_port": "",
                                            "admin_password_hash": PASSWORD_HASH, "prov_misses_per_hour": 5})
    root = svc.directory / "data" / "tftp"
    root.mkdir(parents=True)
    (root / "common.cfg").write_text("common\n")
    (root / "0004f2abcdef.cfg").write_text("sip password of one phone\n")
    (root / "0004f2000aaa.cfg").write_text("the phone at 127.0.0.1\n")
    svc.start()
    try:
        out = tmp_path / "out"

        def hpa(name: str) -> subprocess.CompletedProcess:
            return subprocess.run(tftp_hpa("127.0.0.1", tftp_port, "get", name, out), capture_output=True, text=True, timeout=30)

        def prov(name: str, source: str = "127.0.0.1") -> int:  # curl's status code of GET /prov/<name> from `source`
            answer = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--interface", source,
                                     f"http://127.0.0.1:{http_port}/prov/{name}"], capture_output=True, text=True, timeout=30)
            return int(answer.stdout)

        assert subprocess.run(curl_tftp("127.0.0.1", tftp_port, "0004f2000aaa.cfg", "-o", out), timeout=30).returncode == 0
        for n in range(3):  # five guesses, three over TFTP and two over HTTP: each "not found"
            missed = hpa(f"SEP0004f2{n:06x}.cnf.xml")
            assert "Error code 1" in missed.stdout + missed.stderr, missed
        for n in range(3, 5):
            assert prov(f"SEP0004f2{n:06x}.cnf.xml") == 404
        refused = hpa("0004f2abcdef.cfg")
        assert "prov_misses_per_hour" in refused.stdout + refused.stderr, refused
        assert prov("0004f2abcdef.cfg") == 429
        assert subprocess.run(curl_tftp("127.0.0.1", tftp_port, "0004f2000aaa.cfg", "-o", out), timeout=30).returncode == 0
        assert out.read_text() == "the phone at 127.0.0.1\n"  # what it was served, it still is
        assert prov("common.cfg") == 200  # no MAC in the name: never refused
        assert prov("0004f2abcdef.cfg", "127.0.0.2") == 200  # another address: its own allowance
        sensors = svc.sensors(PASSWORD)
        assert sensors["provisioning_refused_misses"] == 2
    finally:
        svc.stop()


@pytest.mark.real_client
def test_a_phone_recorded_at_its_address_gets_its_file_after_a_restart_while_its_allowance_is_spent(tmp_path):
    """curl fetches a phone's own file over TFTP (acknowledged: the record of phones holds its MAC at 127.0.0.1);
    after a restart (the names served lately are forgotten), tftp-hpa spends the address's allowance of absent
    names, as a device forging requests in the phone's address would: the phone still gets its file, another
    MAC's file is refused."""
    tftp_port = free_udp_port()
    svc = ServiceProcess(tmp_path / "svc", {"ip_tftp_port": f"127.0.0.1:{tftp_port}", "ip_http_port": f"127.0.0.1:{free_port()}",
                                            "ip_ntp_port": "", "ip_ldap_port": "", "ip_ldaps_port": "", "ip_snmp_port": "",
                                            "prov_misses_per_hour": 3})
    root = svc.directory / "data" / "tftp"
    root.mkdir(parents=True)
    (root / "0004f2000aaa.cfg").write_text("the phone at 127.0.0.1\n")
    (root / "0004f2abcdef.cfg").write_text("another phone's\n")
    out = tmp_path / "out"
    svc.start()
    try:
        assert subprocess.run(curl_tftp("127.0.0.1", tftp_port, "0004f2000aaa.cfg", "-o", out), timeout=30).returncode == 0
    finally:
        svc.stop()
    svc.start()
    try:
        for n in range(3):
            missed = subprocess.run(tftp_hpa("127.0.0.1", tftp_port, "get", f"SEP0004f2{n:06x}.cnf.xml", out),
                                    capture_output=True, text=True, timeout=30)
            assert "Error code 1" in missed.stdout + missed.stderr, missed
        refused = subprocess.run(tftp_hpa("127.0.0.1", tftp_port, "get", "0004f2abcdef.cfg", out), capture_output=True, text=True,
                                 timeout=30)
        assert "prov_misses_per_hour" in refused.stdout + refused.stderr, refused
        out.unlink(missing_ok=True)
        assert subprocess.run(curl_tftp("127.0.0.1", tftp_port, "0004f2000aaa.cfg", "-o", out), timeout=30).returncode == 0
        assert out.read_text() == "the phone at 127.0.0.1\n"
    finally:
        svc.stop()
