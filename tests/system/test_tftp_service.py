"""Real-client tests of the TFTP service and /prov/ against the running service (IPv4 and ::1).

Clients: curl (with and without --tftp-blksize), atftp (--option "blksize 1428",
--option "windowsize 8"), tftp-hpa (`tftp -m binary`), and a bare UDP socket
for what the clients cannot send (traversal names, aborted uploads).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket
import struct
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest
from support import ServiceProcess, eventually, free_port, free_udp_port
from support.netns import in_network_namespace
from support.tftp_clients import atftp_get, curl_tftp, tftp_hpa

HOSTS = ["127.0.0.1", "::1"]
BIG = 10 * 1024 * 1024
TEMPLATE = ("ntp={{ ntp_server }} ldap={{ server }}:{{ ldap_port }} ldaps={{ ldaps_port }} base={{ ldap_base }} user={{ ldap_user }} "
            "pw={{ ldap_password }} mac={{ mac }}\n")


def populate(root: Path) -> dict[str, bytes]:
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "big.bin": os.urandom(BIG),
        "empty.bin": b"",
        "exact512.bin": bytes(range(256)) * 2,
    }
    for name, content in files.items():
        (root / name).write_bytes(content)
    (root / "{mac}.cfg.j2").write_text(TEMPLATE)
    (root / "broken.cfg.j2").write_text("first\n{{ undefined_thing }}\n")
    (root.parent / "secret.txt").write_text("do not serve\n")
    os.symlink(root.parent / "secret.txt", root / "leak.txt")
    return files


@pytest.fixture(scope="module")
def tftp(tmp_path_factory):
    port, http_port = free_udp_port(), free_port()
    settings = {
        "ip_tftp_port": f"127.0.0.1:{port} [::1]:{port}",
        "ip_http_port": f"127.0.0.1:{http_port} [::1]:{http_port}",
        "ip_ntp_port": f"127.0.0.1:{free_udp_port()}",
        "ip_ldap_port": f"127.0.0.1:{free_port()}",
        "ip_ldaps_port": f"127.0.0.1:{free_port()}",
        "ldap_base": "dc=example,dc=com",
        "ldap_password": "phones-pass-1",
        "tftp_max_per_client": 20,
    }
    svc = ServiceProcess(tmp_path_factory.mktemp("tftp"), settings)
    svc.files = populate(svc.directory / "data" / "tftp")
    svc.start()
    yield svc
    svc.stop()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


CLIENTS = {
    "curl": lambda host, port, name, out: curl_tftp(host, port, name, "-o", out),
    "curl-blksize": lambda host, port, name, out: curl_tftp(host, port, name, "--tftp-blksize", "1428", "-o", out),
    "atftp-blksize": lambda host, port, name, out: atftp_get(host, port, name, out, "blksize 1428"),
    "atftp-windowsize": lambda host, port, name, out: atftp_get(host, port, name, out, "windowsize 8"),
    "atftp-largest": lambda host, port, name, out: atftp_get(host, port, name, out, "blksize 65464", "windowsize 4"),
    "tftp-hpa": lambda host, port, name, out: tftp_hpa(host, port, "get", name, out),
}


def fetch(client: str, host: str, port: int, name: str, out: Path, server: ServiceProcess | None = None) -> subprocess.CompletedProcess:
    """The client's download of `name` into `out`; a client that hangs fails the test with the end of its
    output and, if given, of the server's log (atftp traces every packet it sends and receives)."""
    if out.exists():
        out.unlink()
    command = CLIENTS[client](host, port, name, str(out)) + (["--trace"] if client.startswith("atftp") else [])
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as hung:
        said = hung.stderr or b""  # bytes, whatever `text` asked
        said = said.decode(errors="replace") if isinstance(said, bytes) else said
        log = server.log[-4000:] if server is not None else "(not given)"
        pytest.fail(f"{client} {name} from {host} hung for 60 s; its last output:\n{said[-3000:]}\nthe server's log:\n{log}")


@pytest.mark.real_client
@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_real_clients_download_byte_identical(tftp, tmp_path, client, host):
    port = tftp.port("ip_tftp_port")
    for name in ("big.bin", "empty.bin", "exact512.bin"):
        out = tmp_path / name
        result = fetch(client, host, port, name, out, tftp)
        assert result.returncode == 0, (client, name, result.stderr[-3000:])
        got = out.read_bytes() if out.exists() else None
        if got is None and name == "empty.bin" and client.startswith("curl"):
            got = b""  # curl creates no output file for an empty body
        assert got is not None and sha(got) == sha(tftp.files[name]), (client, host, name)


def rrq(name: bytes, mode: bytes = b"octet", **options) -> bytes:
    out = b"\x00\x01" + name + b"\0" + mode + b"\0"
    for key, value in options.items():
        out += key.encode() + b"\0" + str(value).encode() + b"\0"
    return out


def exchange(host: str, port: int, datagram: bytes, timeout: float = 5.0) -> tuple[bytes, tuple]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(datagram, (host, port))
        return sock.recvfrom(70000)


@pytest.mark.real_client
@pytest.mark.parametrize("host", HOSTS)
def test_mac_request_is_rendered_with_the_right_ntp_and_ldap_addresses(tftp, tmp_path, host):
    port = tftp.port("ip_tftp_port")
    out = tmp_path / "cfg"
    result = fetch("curl", host, port, "0004F2ABCDEF.cfg", out)
    assert result.returncode == 0, result.stderr
    ldap_port, ldaps_port = tftp.port("ip_ldap_port"), tftp.port("ip_ldaps_port")
    assert out.read_text() == (
        f"ntp={host} ldap={host}:{ldap_port} ldaps={ldaps_port} base=dc=example,dc=com user=phonebook pw=phones-pass-1 mac=0004f2abcdef\n"
    )
    # the reply comes from the address the request went to (a new port: RFC 1350 transfer ID)
    reply, source = exchange(host, port, rrq(b"0004f2abcdef.cfg"))
    assert reply[:4] == b"\x00\x03\x00\x01" and source[0] == host and source[1] != port


@pytest.mark.real_client
def test_http_prov_serves_what_tftp_serves(tftp, tmp_path):
    tftp_out = tmp_path / "cfg"
    assert fetch("atftp-blksize", "127.0.0.1", tftp.port("ip_tftp_port"), "0004f2abcdef.cfg", tftp_out).returncode == 0
    with urllib.request.urlopen(tftp.url("/prov/0004f2abcdef.cfg"), timeout=10) as response:
        assert response.read() == tftp_out.read_bytes()
    with urllib.request.urlopen(tftp.url("/prov/big.bin"), timeout=10) as response:
        assert sha(response.read()) == sha(tftp.files["big.bin"])
    with urllib.request.urlopen(tftp.url("/prov/0004f2abcdef.cfg", host="::1"), timeout=10) as response:
        assert response.read().startswith(b"ntp=::1 ldap=::1:")
    # a Host header that is neither an address nor a DNS name is not put into a phone's configuration
    connection = http.client.HTTPConnection("127.0.0.1", tftp.port("ip_http_port"), timeout=10)
    connection.request("GET", "/prov/0004f2abcdef.cfg", headers={"Host": "bad_host!name"})
    body = connection.getresponse().read()
    connection.close()
    assert b"bad_host" not in body and body.startswith(b"ntp="), body  # the server's own name instead
    for path, status in [("/prov/..%2fsecret.txt", 403), ("/prov/leak.txt", 403), ("/prov/nothing.cfg", 404), ("/prov/broken.cfg", 500)]:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(tftp.url(path), timeout=10)
        assert info.value.code == status, path


@pytest.mark.real_client
@pytest.mark.parametrize("name, code", [
    (b"../secret.txt", 2), (b"/etc/passwd", 2), (b"leak.txt", 2), (b"..\\secret.txt", 2), (b"x" * 300, 2),
    (b"a/../../secret.txt", 2), (b"{mac}.cfg.j2", 2), (b"nothing.cfg", 1), (b"broken.cfg", 0),
])
def test_traversal_and_bad_names_answer_a_tftp_error(tftp, name, code):
    reply, _ = exchange("127.0.0.1", tftp.port("ip_tftp_port"), rrq(name))
    assert reply[:2] == b"\x00\x05" and struct.unpack("!H", reply[2:4])[0] == code, reply


@pytest.mark.real_client
def test_traversal_with_tftp_hpa_is_refused_and_logged(tftp, tmp_path):
    result = subprocess.run(
        tftp_hpa("127.0.0.1", tftp.port("ip_tftp_port"), "get", "../secret.txt", tmp_path / "s"),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert (
        "Access violation" in result.stdout + result.stderr
        or "outside" in result.stdout + result.stderr
        or "not served" in result.stdout + result.stderr
    )
    assert not (tmp_path / "s").exists() or (tmp_path / "s").read_bytes() == b""
    tftp.wait_for_log("../secret.txt refused")
    tftp.wait_for_log("broken.cfg.j2: line 2")


@pytest.mark.real_client
def test_upload_refused_by_default(tftp, tmp_path):
    (tmp_path / "log.txt").write_text("phone log\n")
    result = subprocess.run(
        tftp_hpa("127.0.0.1", tftp.port("ip_tftp_port"), "put", tmp_path / "log.txt", "phone.log"),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert "disabled" in result.stdout + result.stderr
    assert not (tftp.directory / "data" / "tftp" / "uploads" / "phone.log").exists()


@pytest.fixture(scope="module")
def writable(tmp_path_factory):
    port = free_udp_port()
    svc = ServiceProcess(
        tmp_path_factory.mktemp("tftpw"), {"ip_tftp_port": f"127.0.0.1:{port} [::1]:{port}", "tftp_write": True, "tftp_max_per_client": 2}
    )
    svc.files = populate(svc.directory / "data" / "tftp")
    svc.start()
    yield svc
    svc.stop()


def put(svc, host: str, local: Path, remote: str) -> str:
    result = subprocess.run(tftp_hpa(host, svc.port("ip_tftp_port"), "put", local, remote), capture_output=True, text=True, timeout=30)
    return result.stdout + result.stderr


@pytest.mark.real_client
@pytest.mark.parametrize("host", HOSTS)
def test_upload_accepted_when_enabled_and_never_overwrites(writable, tmp_path, host):
    uploads = writable.directory / "data" / "tftp" / "uploads"
    name = f"0004f2abcdef-app-{'v6' if ':' in host else 'v4'}.log"
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(os.urandom(100_000))
    second.write_bytes(b"replacement\n")
    assert put(writable, host, first, name) == ""
    assert (uploads / name).read_bytes() == first.read_bytes()
    assert "exists" in put(writable, host, second, name)
    assert (uploads / name).read_bytes() == first.read_bytes()
    # a served file's name lands in uploads/, the served file is untouched
    served = "exact512.bin" if ":" in host else "big.bin"
    assert put(writable, host, second, served) == ""
    assert (uploads / served).read_bytes() == b"replacement\n"
    assert sha((writable.directory / "data" / "tftp" / served).read_bytes()) == sha(writable.files[served])
    assert not [n for n in os.listdir(uploads) if n.startswith(".")]


def upload_first_block(sock: socket.socket, port: int, name: bytes):
    """WRQ `name` and one full DATA block, both acknowledged; the server's transfer ID."""
    sock.settimeout(5)
    sock.sendto(b"\x00\x02" + name + b"\x00octet\x00", ("127.0.0.1", port))
    reply, tid = sock.recvfrom(100)
    assert reply == b"\x00\x04\x00\x00"
    sock.sendto(b"\x00\x03\x00\x01" + b"a" * 512, tid)
    assert sock.recvfrom(100)[0] == b"\x00\x04\x00\x01"
    return tid


@pytest.mark.real_client
def test_aborted_and_oversized_uploads_leave_no_file(writable):
    uploads = writable.directory / "data" / "tftp" / "uploads"
    port = writable.port("ip_tftp_port")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        tid = upload_first_block(sock, port, b"aborted.log")
        sock.sendto(b"\x00\x05\x00\x00gave up\x00", tid)
    reply, _ = exchange("127.0.0.1", port, b"\x00\x02huge.log\x00octet\x00tsize\x00999999999\x00")
    assert reply[:4] == b"\x00\x05\x00\x03"
    reply, _ = exchange("127.0.0.1", port, b"\x00\x02../escape.log\x00octet\x00")
    assert reply[:4] == b"\x00\x05\x00\x02"
    eventually(lambda: not any(n.startswith(".partial") for n in os.listdir(uploads)), 10)
    assert not [n for n in os.listdir(uploads) if "aborted" in n or "huge" in n or n.startswith(".")]


@pytest.mark.real_client
def test_simultaneous_transfers_per_client_are_limited(writable):
    """tftp_max_per_client is 2: with one transfer established and one awaiting its acknowledgement,
    a third request is refused as busy. (A client whose every slot awaits an acknowledgement gets no
    answer at all, and takes an old slot once it is past its retransmission: see test_tftp_abuse.)"""
    port = writable.port("ip_tftp_port")
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for sock in socks:
            sock.settimeout(5)
        socks[0].sendto(rrq(b"big.bin"), ("127.0.0.1", port))
        first, tid = socks[0].recvfrom(2000)
        socks[0].sendto(b"\x00\x04\x00\x01", tid)  # established; then left waiting for the ACK of DATA 2
        assert first[:4] == b"\x00\x03\x00\x01" and socks[0].recv(2000)[:4] == b"\x00\x03\x00\x02"
        socks[1].sendto(rrq(b"big.bin"), ("127.0.0.1", port))
        second, tid2 = socks[1].recvfrom(2000)
        assert second[:4] == b"\x00\x03\x00\x01"
        socks[2].sendto(rrq(b"big.bin"), ("127.0.0.1", port))
        busy = socks[2].recv(2000)
        assert busy[:4] == b"\x00\x05\x00\x00" and b"busy" in busy
        for sock, peer in ((socks[0], tid), (socks[1], tid2)):  # end the two so later tests start clean
            sock.sendto(b"\x00\x05\x00\x00done\x00", peer)
        writable.wait_for_log("too many transfers")
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.real_client
def test_tftp_hpa_netascii_round_trip(tftp, tmp_path):
    text = b"line one\nline two\r\nbare cr\r end\n" * 100
    (tftp.directory / "data" / "tftp" / "notes.txt").write_bytes(text)
    out = tmp_path / "notes.txt"
    result = subprocess.run(tftp_hpa("127.0.0.1", tftp.port("ip_tftp_port"), "get", "notes.txt", out, mode="netascii"),
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0 and out.read_bytes() == text, result.stderr


def wildcard_probe() -> dict:
    """Inside a private network namespace (support.netns), where the service may bind the wildcard address and the
    standard port 69: every reply must come from the address the request was sent to, IPv4 through the dual-stack
    socket included (IP_PKTINFO/IPV6_PKTINFO)."""
    svc = ServiceProcess(tempfile.mkdtemp(), {"ip_tftp_port": "69", "ip_ntp_port": "", "ntp_server": "ntp.example.org"})
    root = svc.directory / "data" / "tftp"
    root.mkdir(parents=True)
    (root / "{mac}.cfg.j2").write_text("server={{ server }} ntp={{ ntp_server }}")
    svc.start()
    results = {}
    try:
        for host in ("127.0.0.1", "127.0.0.2", "::1", "::2"):
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(5)
                sock.sendto(b"\x00\x01001122AABBCC.cfg\x00octet\x00", (host, 69))
                reply, source = sock.recvfrom(1000)
                sock.sendto(b"\x00\x04\x00\x01", source)
                results[host] = [source[0], reply[4:].decode()]
        # a window cannot go out as one segmented (GSO) send when blksize exceeds the MTU: one datagram at a time
        (root / "window.bin").write_bytes(bytes(range(256)) * 400)
        subprocess.run(["ip", "link", "set", "lo", "mtu", "1280"], check=True)
        out = svc.directory / "window.out"
        subprocess.run(atftp_get("127.0.0.1", 69, "window.bin", out, "blksize 1428", "windowsize 8"), capture_output=True, timeout=30)
        results["small-mtu window"] = out.read_bytes() == (root / "window.bin").read_bytes()
    finally:
        svc.stop()
    return results


@pytest.mark.real_client
def test_wildcard_binding_answers_from_the_address_the_request_came_to(tmp_path):
    results = in_network_namespace(wildcard_probe, addresses=("::2/128",), timeout=60)
    for host in ("127.0.0.1", "127.0.0.2", "::1", "::2"):
        assert results[host] == [host, f"server={host} ntp=ntp.example.org"], results
    assert results["small-mtu window"] is True


@pytest.mark.real_client
def test_partial_upload_of_a_killed_worker_is_removed_by_the_next(service):
    port = free_udp_port()
    svc = service({"ip_tftp_port": f"127.0.0.1:{port}", "tftp_write": True})
    uploads = svc.directory / "data" / "tftp" / "uploads"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        upload_first_block(sock, port, b"phone.log")
    assert [n for n in os.listdir(uploads) if n.startswith(".partial-")]  # mid-upload
    [worker] = svc.worker_pids
    os.kill(worker, signal.SIGKILL)  # a crash: nothing gets to abort the upload
    svc.wait_for_log("removed 1 partial upload(s) left by a process that ended mid-upload", timeout=30)
    assert svc.worker_pids != [worker]
    assert os.listdir(uploads) == []
