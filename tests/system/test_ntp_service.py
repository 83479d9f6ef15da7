"""The NTP service running for real (gunicorn, the binder, the gevent shell) against real clients:
chronyd -Q, ntplib over IPv4 and ::1, sntp/ntpdate on port 123 inside a private network
namespace, mode 6/7 requests unanswered, and a flood answered with a KoD then silence.

The kernel clock of a test machine (or container) is often unsynchronised, and then the
server rightly answers "unsynchronised" (LI 3, stratum 16), which every real client
refuses. So the servers the clients must accept run with `ntp_local_stratum = 8`: on an
unsynchronised machine they serve the local clock at stratum 8 (like chrony's `local
stratum 8`); on a synchronised one the setting is ignored and they serve the real state.
The namespace test also runs one server with the setting off and checks the clients'
verdict against what the kernel says.
"""

from __future__ import annotations

import re
import signal
import socket
import struct
import subprocess
import time

import ntplib
import pytest
from support import ServiceProcess, eventually, free_udp_port
from support.netns import in_network_namespace
from vectors.ntp_vectors import REQUESTS

from greenservers.proto import ntp
from greenservers.shells.ntp import read_kernel_clock

pytestmark = pytest.mark.real_client
LOCAL_STRATUM = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_udp_port()
    svc = ServiceProcess(tmp_path_factory.mktemp("ntp"), {
        "ip_ntp_port": f"127.0.0.1:{port} [::1]:{port}", "ntp_local_stratum": LOCAL_STRATUM,
    })
    svc.start()
    yield svc
    svc.stop()


def expected_stratum() -> int:
    return LOCAL_STRATUM if not read_kernel_clock().synchronised else -1  # -1: whatever the upstream gives


def request(version=4, transmit: bytes = b"\x9b\x62\xae\x77\x8a\x4a\x00\xb6", mode=3) -> bytes:
    return bytes([(version << 3) | mode]) + bytes(39) + transmit


def udp_client(family=socket.AF_INET, source="127.0.0.1") -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.settimeout(5)
    return sock


# -- real clients against the running service --------------------------------------------


def test_chronyd_accepts_the_server_with_a_small_offset(server, tmp_path):
    conf = tmp_path / "chrony.conf"
    conf.write_text(f"pidfile {tmp_path}/chronyd.pid\nport 0\ncmdport 0\nbindcmdaddress /\n")  # no clash with a system chronyd
    port = server.port("ip_ntp_port")
    result = subprocess.run(["chronyd", "-f", str(conf), "-Q", "-t", "20", f"server 127.0.0.1 port {port} iburst"],
                            capture_output=True, text=True, timeout=30)
    found = re.search(r"System clock wrong by (-?[0-9.]+) seconds", result.stderr + result.stdout)
    assert result.returncode == 0 and found, result.stderr
    assert abs(float(found.group(1))) < 0.010


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("version", [3, 4])
def test_ntplib(server, host, version):
    response = ntplib.NTPClient().request(host, port=server.port("ip_ntp_port"), version=version, timeout=5)
    assert response.version == version and response.mode == 4
    # same clock on both ends: the offset is within 10 ms, plus at most half the round trip a loaded
    # machine may add (RFC 5905 §8: the error of an offset is bounded by half the delay)
    assert abs(response.offset) < 0.010 + response.delay / 2
    assert response.leap != 3 and 1 <= response.stratum <= 15
    if expected_stratum() > 0:
        assert response.stratum == LOCAL_STRATUM and response.ref_id == 0x7F7F0101
    assert response.recv_time <= response.tx_time


@pytest.mark.parametrize("client", sorted(REQUESTS))
def test_golden_requests_get_their_origin_back_byte_for_byte(server, client):
    data = bytes.fromhex(REQUESTS[client])
    with udp_client() as sock:
        before = time.time_ns()
        sock.sendto(data, ("127.0.0.1", server.port("ip_ntp_port")))
        reply = sock.recv(2048)
        after = time.time_ns()
    assert len(reply) == 48 and reply[0] & 7 == 4 and (reply[0] >> 3) & 7 == (data[0] >> 3) & 7
    assert reply[24:32] == data[40:48]
    receive, transmit = struct.unpack("!QQ", reply[32:48])
    assert before <= ntp.unix_ns(receive) <= ntp.unix_ns(transmit) <= after


def test_mode_6_and_7_and_malformed_requests_get_no_answer(server):
    """Sent first, answered never: the first datagram back is the answer to the mode-3 marker."""
    mode6_readvar = bytes.fromhex("160200010000000000000000")  # ntpq -c rv
    mode7_monlist = bytes.fromhex("1700032a") + bytes(44)
    refused = [mode6_readvar, mode6_readvar + bytes(36), mode7_monlist, bytes(47), request(version=2),
               request(mode=1), request() + b"\0"]
    marker = request(transmit=b"MARKER!!")
    with udp_client() as sock:
        for data in refused + [marker]:
            sock.sendto(data, ("127.0.0.1", server.port("ip_ntp_port")))
        assert sock.recv(2048)[24:32] == b"MARKER!!"
    server.wait_for_log("NTP request refused: control (mode 6) request")
    server.wait_for_log("NTP request refused: private (mode 7) request")


def test_refusals_of_every_length_write_a_line_or_two_not_one_each(server):
    """A review sent a datagram of each length: each length was a kind of its own in the rate-limited log,
    and every datagram wrote a line (1,800 from one address; 54,000 a minute from 30)."""
    before = len(server.lines)
    with udp_client(source="127.0.0.77") as sock:
        for size in [*range(1, 48), *range(49, 400)]:
            sock.sendto(bytes([0x23]) + bytes(size - 1), ("127.0.0.1", server.port("ip_ntp_port")))
    with udp_client(source="127.0.0.78") as marker:  # read after them all (one socket's queue); this source is not rate limited
        marker.sendto(request(transmit=b"MARKER!!"), ("127.0.0.1", server.port("ip_ntp_port")))
        assert marker.recv(2048)[24:32] == b"MARKER!!"
    server.wait_for_log("NTP request refused: short packet", since=before)
    lines = [line for line in server.lines[before:] if "NTP request refused" in line and "127.0.0.77" in line]
    assert 1 <= len(lines) <= 3, lines  # short, malformed, rate limited: a line per kind and source a minute


def test_flood_gets_kod_then_silence_while_another_source_is_answered(server):
    port = server.port("ip_ntp_port")
    flood_count = 4 * ntp.BURST
    with udp_client(source="127.0.0.5") as flooder, udp_client(source="127.0.0.6") as other:
        for i in range(flood_count):
            flooder.sendto(request(transmit=struct.pack("!Q", i + 1)), ("127.0.0.1", port))
        # one socket, one queue: this is answered after all of the flood was handled
        other.sendto(request(transmit=b"OTHER!!!"), ("127.0.0.1", port))
        assert other.recv(2048)[24:32] == b"OTHER!!!"
        flooder.setblocking(False)
        replies = []
        while True:
            try:
                replies.append(flooder.recv(2048))
            except BlockingIOError:
                break
    normal = [r for r in replies if r[1] != 0]
    kisses = [r for r in replies if r[1] == 0]
    assert ntp.BURST <= len(normal) <= ntp.BURST + 8  # tokens refill while the flood is handled
    assert len(kisses) == 1 and replies[-1] is kisses[0]
    assert kisses[0][12:16] == b"RATE" and kisses[0][0] >> 6 == 3
    assert len(replies) < flood_count  # the rest was dropped


# -- standard port 123 in a private network namespace --------------------------------------

def port_123_probe(directory: str) -> dict:
    """Inside a private network namespace (support.netns): the service on port 123, asked by sntp, ntpdate, and from
    second addresses (a wildcard socket must answer from the address asked, or a connected client never sees it)."""
    def connected_query(family, source, host):
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(3)
            sock.bind((source, 0))  # so the route back to us has another source address than the one asked
            sock.connect((host, 123))
            sock.send(bytes([0x23]) + bytes(39) + b"ALIASED!")
            try:
                return sock.recv(2048)[24:32].decode()
            except OSError as exc:
                return repr(exc)

    results = {}
    for local_stratum in (8, 0):
        svc = ServiceProcess(f"{directory}/svc{local_stratum}", {"ip_ntp_port": "123", "ntp_local_stratum": local_stratum})
        svc.start()
        try:
            for name, argv in {"sntp": ["sntp", "-t", "2", "127.0.0.1"], "sntp6": ["sntp", "-t", "2", "::1"],
                               "ntpdate": ["ntpdate", "-q", "-t", "2", "127.0.0.1"]}.items():
                done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
                results[f"{name}/{local_stratum}"] = [done.returncode, done.stdout, done.stderr]
            if local_stratum:
                results["aliases"] = [connected_query(socket.AF_INET, "127.0.0.1", "10.9.8.7"),
                                      connected_query(socket.AF_INET6, "::1", "fd00::7")]
        finally:
            svc.stop()
    return results


def test_sntp_and_ntpdate_on_port_123_in_a_network_namespace(tmp_path):
    results = in_network_namespace(port_123_probe, tmp_path, addresses=("10.9.8.7/32", "fd00::7/128"), timeout=90)
    assert results["aliases"] == ["ALIASED!", "ALIASED!"]
    for name in ("sntp", "sntp6", "ntpdate"):
        code, out, err = results[f"{name}/8"]
        assert code == 0, err
        # e.g. "2026-11-26 11:35:05.856567 (+0000) -0.002633 +/- 0.003485 127.0.0.1 s8 no-leap"
        found = re.search(r"\) ([-+][0-9.]+) \+/- ([0-9.]+) \S+ s(\d+) ", out)
        assert found and abs(float(found.group(1))) < 0.010 + float(found.group(2)), out
        if expected_stratum() > 0:
            assert found.group(3) == str(LOCAL_STRATUM)
        # with ntp_local_stratum off, the clients trust us exactly when the kernel clock is synchronised
        code, out, err = results[f"{name}/0"]
        if read_kernel_clock().synchronised:
            assert code == 0, err
        else:
            assert code != 0 and "stratum too high" in err, (out, err)


def test_ntp_local_stratum_change_applies_without_restart(service):
    port = free_udp_port()
    svc = service({"ip_ntp_port": f"127.0.0.1:{port}", "ntp_local_stratum": 8})
    first = ntplib.NTPClient().request("127.0.0.1", port=port, version=4, timeout=5).stratum
    svc.config_path.write_text(svc.config_path.read_text().replace("ntp_local_stratum = 8", "ntp_local_stratum = 9"))
    svc.signal_master(signal.SIGHUP)  # the server also notices the change by itself: whichever reload comes first
    svc.wait_for_log("configuration reloaded; changed: ntp_local_stratum")
    expected = 9 if not read_kernel_clock().synchronised else first  # a synchronised clock ignores the setting
    # the clock state is rebuilt at most once a second
    eventually(lambda: ntplib.NTPClient().request("127.0.0.1", port=port, version=4, timeout=5).stratum == expected, 10,
               interval=0.2, what=f"stratum {expected}")
