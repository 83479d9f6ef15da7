"""The real service (gunicorn + GreenWorker) on loopback: HTTP and HTTPS side by side,
binding forms, bind failures, connection caps, timeouts, redirect, SIGHUP, keep-alive pipelining (the
loop's turns, the pace per connection). Clients: curl and raw sockets."""

import contextlib
import json
import signal
import socket
import ssl
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from support import eventually, free_port, free_udp_port
from support.http import Pipeline

from greenservers.passwords import hash_password
from greenservers.proto.http import REQUESTS_PER_SECOND


def curl(*args, timeout=20):
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=timeout)


def test_http_and_https_side_by_side_on_ipv4_and_ipv6(service):
    svc = service({"ip_http_port": str(free_port()), "ip_https_port": str(free_port())})
    for host in ("127.0.0.1", "::1"):
        plain = curl("-w", "%{http_code}", "-o", "/dev/null", svc.url("/healthz", host=host))
        assert plain.stdout == "200", plain.stderr
        secure = curl(
            "--cacert",
            str(svc.cert_path),
            "-w",
            "%{http_code} %{ssl_verify_result}",
            "-o",
            "/dev/null",
            svc.url("/healthz", "https", host=host),
        )
        assert secure.stdout == "200 0", secure.stderr
    health = json.loads(curl("--cacert", str(svc.cert_path), svc.url("/healthz", "https")).stdout)
    assert health["services"]["https"]["bindings"] == [{"address": f"[::]:{svc.port('ip_https_port')}", "state": "serving"}]
    assert health["services"]["snmp"]["on"] is False
    # TLS 1.2 and newer only
    old = curl("-k", "--tlsv1.0", "--tls-max", "1.1", svc.url("/healthz", "https"))
    assert old.returncode != 0
    tls12 = curl("-k", "--tlsv1.2", "--tls-max", "1.2", "-o", "/dev/null", "-w", "%{http_code}", svc.url("/healthz", "https"))
    assert tls12.stdout == "200"


def refused(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.settimeout(2)
        try:
            s.connect((host, port))
        except ConnectionRefusedError:
            return True
    return False


def test_ipv6_only_wildcard_refuses_ipv4(service):
    port = free_port()
    service({"ip_http_port": f"[::]:{port}"})
    assert refused("127.0.0.1", port)
    assert curl("-o", "/dev/null", "-w", "%{http_code}", f"http://[::1]:{port}/healthz").stdout == "200"


def test_ipv4_and_ipv6_wildcards_together(service):
    port = free_port()
    service({"ip_http_port": f"0.0.0.0:{port} [::]:{port}"})
    for url in (f"http://127.0.0.1:{port}/healthz", f"http://[::1]:{port}/healthz"):
        assert curl("-o", "/dev/null", "-w", "%{http_code}", url).stdout == "200"


def test_bind_failure_exits_naming_setting_address_and_error(service):
    http_port, taken = free_port(), free_port()
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("0.0.0.0", taken))
    holder.listen()
    try:
        svc = service({"ip_http_port": str(http_port), "ip_https_port": str(taken)}, expect_ready=False)
        code = svc.wait_exit(timeout=30)  # it exits (a start is given 30 s): no worker booted again and again
        assert code != 0
        assert f"ip_https_port: cannot bind [::]:{taken}: Address already in use" in svc.log
        assert refused("127.0.0.1", http_port) and refused("::1", http_port)
    finally:
        holder.close()


def test_invalid_configuration_stops_the_start_with_reasons(service):
    svc = service({"ip_http_port": "80 web", "http_max_conn": 0}, expect_ready=False)
    assert svc.wait_exit(timeout=15) == 1
    assert "ip_http_port: 'web'" in svc.log and "http_max_conn: 0 is out of range" in svc.log


def _connect(port, host="127.0.0.1"):
    s = socket.create_connection((host, port), timeout=5)
    return s


def _read_some(sock, wait):
    sock.settimeout(wait)
    try:
        return sock.recv(4096)
    except TimeoutError:
        return None
    except ConnectionResetError:
        return b""


def _read_response(sock):
    """One whole HTTP/1.1 response with a Content-Length."""
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += sock.recv(4096)
    return data


def test_max_conn_20_of_50_served_the_rest_get_503_fast(service):
    # the 20 admitted ones send their request last: given a minute (not 10 s) for it, however loaded the machine
    svc = service({"ip_http_port": str(free_port()), "http_max_conn": 20, "http_max_conn_rate": 10000},
                  env={"GREENSERVERS_HTTP_HEADER_TIMEOUT": "60"})
    port = svc.port("ip_http_port")
    sockets = [_connect(port) for _ in range(50)]
    try:
        answers: dict[int, bytes] = {}  # socket number -> what it was sent unasked (a refusal)

        def thirty_answered() -> bool:
            for number, sock in enumerate(sockets):
                if number not in answers and (answer := _read_some(sock, 0.001)) is not None:
                    answers[number] = answer
            return len(answers) >= 30

        # waited for, not slept on (a loaded machine may take longer); a 21st admitted connection would leave
        # too few answers, a 31st refusal too many here or a 503 below where each waiting one must get a 200
        eventually(thirty_answered, 30, what=lambda: f"{len(answers)} of 50 connections refused")
        rejected = [answer for answer in answers.values() if answer]
        waiting = [sock for number, sock in enumerate(sockets) if number not in answers]
        assert len(waiting) == 20 and len(rejected) == 30, [a[:20] for a in answers.values()]
        for answer in rejected:
            assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and b"Retry-After: 1\r\n" in answer
        for s in waiting:  # the 20 admitted ones are served
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        for s in waiting:
            assert _read_some(s, 5).startswith(b"HTTP/1.1 200")
    finally:
        for s in sockets:
            s.close()
    # once they are closed, new connections are served again
    assert curl("-o", "/dev/null", "-w", "%{http_code}", svc.url("/healthz")).stdout == "200"


def test_max_conn_rate_10_a_burst_of_100_gets_about_10_per_second(service):
    svc = service({"ip_http_port": str(free_port()), "http_max_conn_rate": 10})
    port = svc.port("ip_http_port")

    def one(_):
        with _connect(port) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = b""
            s.settimeout(5)
            while chunk := s.recv(4096):
                data += chunk
            return data[:12]

    started = time.monotonic()
    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(one, range(100)))
    elapsed = time.monotonic() - started
    served = codes.count(b"HTTP/1.1 200")
    assert served + codes.count(b"HTTP/1.1 503") == 100
    assert 10 <= served <= 10 + 10 * elapsed + 1, (served, elapsed)
    # sustained: over ~2 s of tries, about 10 per second get through
    served, tries, started = 0, 0, time.monotonic()
    while time.monotonic() - started < 2.0 and tries < 2000:
        tries += 1
        served += one(0) == b"HTTP/1.1 200"
    elapsed = time.monotonic() - started
    assert 10 * elapsed - 12 <= served <= 10 * elapsed + 12, (served, elapsed)


def _healthz_code(url_host: str, port: int) -> str:
    return curl("-g", "-o", "/dev/null", "-w", "%{http_code}", f"http://{url_host}:{port}/healthz").stdout


def test_a_client_holding_every_slot_gives_an_idle_one_to_another_client(service):
    svc = service({"ip_http_port": str(free_port()), "http_max_conn": 20, "http_max_conn_rate": 10000,
                   "admin_password_hash": hash_password("crowd admin")})
    port = svc.port("ip_http_port")
    hog = [_connect(port) for _ in range(20)]  # 127.0.0.1: connected, no request yet
    try:
        hog[-1].sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")  # served in accept order: all 20 are in
        assert _read_response(hog[-1]).startswith(b"HTTP/1.1 200")
        assert _healthz_code("127.0.0.1", port) == "503"  # the same client gets nothing from itself
        assert _healthz_code("[::1]", port) == "200"  # another client: the hog's oldest idle connection made room
        assert _read_some(hog[0], 5) == b""
        assert all(_read_some(s, 0.05) is None for s in hog[1:])  # the others stay open
        sensors = curl("-g", "--user", "admin:crowd admin", f"http://[::1]:{port}/api/sensors")  # the slot ::1 freed
        counted = {row["name"]: row["value"] for row in json.loads(sensors.stdout)["sensors"]}
        assert counted["http_crowded_out"] == 1 and counted["http_rejected_max_conn"] == 1
    finally:
        for s in hog:
            s.close()


def test_three_clients_sharing_every_slot_give_one_to_the_admin(service):
    """Only a client holding more than half gave one up: three addresses holding a third each (idle keep-alive
    connections, refreshed now and then) shut every other client out."""
    svc = service({"ip_http_port": str(free_port()), "http_max_conn": 21, "http_max_conn_rate": 10000})
    port = svc.port("ip_http_port")
    held = [socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(f"127.0.0.{2 + n % 3}", 0))
            for n in range(21)]
    admin = None
    try:
        held[-1].sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")  # served in accept order: all 21 are in
        assert _read_response(held[-1]).startswith(b"HTTP/1.1 200")
        admin = _connect(port)  # 127.0.0.1: one of the three gives up its oldest idle connection
        assert _read_some(held[0], 5) == b""
        assert _healthz_code("127.0.0.1", port) == "200"  # and again: the admin holds 1, the three 7, 7 and 6
    finally:
        for s in [*held, admin]:
            if s is not None:
                s.close()


def test_a_tls_handshake_never_started_makes_room_too(service):
    svc = service({"ip_https_port": str(free_port()), "http_max_conn": 5, "http_max_conn_rate": 10000})
    port = svc.port("ip_https_port")
    hog = [_connect(port) for _ in range(4)]  # TCP connected, no ClientHello: waiting for the handshake
    context = ssl.create_default_context(cafile=str(svc.cert_path))
    last = context.wrap_socket(_connect(port), server_hostname="localhost")
    try:
        last.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")  # served in accept order: all 5 are in
        assert _read_response(last).startswith(b"HTTP/1.1 200")
        code = curl("-g", "--cacert", str(svc.cert_path), "-o", "/dev/null", "-w", "%{http_code}", f"https://[::1]:{port}/healthz")
        assert code.stdout == "200", code.stderr
        assert _read_some(hog[0], 5) == b""  # the oldest of the hog's waiting connections made room
        assert all(_read_some(s, 0.05) is None for s in hog[1:])
    finally:
        for s in hog + [last]:
            s.close()


def test_a_client_flooding_the_rate_does_not_shut_out_another_client(service):
    svc = service({"ip_http_port": str(free_port()), "http_max_conn_rate": 100})
    port = svc.port("ip_http_port")
    stop_at = time.monotonic() + 4.0

    def flood(_):
        codes = []
        while time.monotonic() < stop_at and len(codes) < 20_000:
            with _connect(port) as s:
                s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                codes.append(_read_some(s, 5)[:12])
        return codes

    with ThreadPoolExecutor(3) as pool:
        flooding = pool.map(flood, range(3))
        other = []
        while time.monotonic() < stop_at - 0.5:  # about 3 a second from ::1, while 127.0.0.1 floods
            other.append(_healthz_code("[::1]", port))
            time.sleep(0.3)  # the pace of the other client, not a wait for readiness
        flood_codes = [code for codes in flooding for code in codes]
    assert len(other) >= 5 and other == ["200"] * len(other)
    served = flood_codes.count(b"HTTP/1.1 200") + flood_codes.count(b"HTTP/1.0 200")
    assert served < len(flood_codes) / 2 and served <= 100 * 4 + 100 + 10  # the flood met the rate, and only it


def test_tls_connection_over_the_cap_is_closed_and_caps_are_process_wide(service):
    # idle connections are kept a minute (not 15 s): a loaded machine must not free a slot mid-test
    svc = service({"ip_http_port": str(free_port()), "ip_https_port": str(free_port()), "http_max_conn": 5, "http_max_conn_rate": 10000},
                  env={"GREENSERVERS_HTTP_KEEPALIVE_TIMEOUT": "60"})
    held = [_connect(svc.port("ip_http_port")) for _ in range(5)]
    try:
        for s in held:  # each one served, and kept open: all five are admitted before the sixth comes
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert _read_response(s).startswith(b"HTTP/1.1 200")
        context = ssl.create_default_context(cafile=str(svc.cert_path))
        with (socket.create_connection(("127.0.0.1", svc.port("ip_https_port")), timeout=5) as raw,
              pytest.raises((ssl.SSLError, ConnectionError, OSError)),
              context.wrap_socket(raw, server_hostname="localhost") as tls):
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert tls.recv(100) == b""
            raise ConnectionError("closed")
    finally:
        for s in held:
            s.close()


def test_slow_loris_is_timed_out(service):
    svc = service(
        {"ip_http_port": str(free_port()), "http_max_conn": 2},
        env={"GREENSERVERS_HTTP_HEADER_TIMEOUT": "1", "GREENSERVERS_HTTP_KEEPALIVE_TIMEOUT": "1"},
    )
    port = svc.port("ip_http_port")
    started = time.monotonic()
    with _connect(port) as s:
        closed_after = None
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            try:
                s.sendall(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - started
                break
            if _read_some(s, 0.1) == b"":
                closed_after = time.monotonic() - started
                break
        assert closed_after is not None and closed_after < 4
    # keep-alive: an idle connection after one request is closed too
    with _connect(port) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        response = _read_response(s)
        assert response.startswith(b"HTTP/1.1 200")
        assert b"\r\nKeep-Alive: timeout=1\r\n" in response  # the client is told when an idle connection is closed
        s.settimeout(5)
        started = time.monotonic()
        assert s.recv(100) == b"" and time.monotonic() - started < 4
    assert curl("-o", "/dev/null", "-w", "%{http_code}", svc.url("/healthz")).stdout == "200"


def test_redirect_to_https(service):
    svc = service({"ip_http_port": str(free_port()), "ip_https_port": str(free_port()), "http_redirect_https": True})
    https = svc.port("ip_https_port")
    head = curl("-sI", svc.url("/settings/ports?x=1"))
    assert head.stdout.startswith("HTTP/1.1 301") and f"Location: https://127.0.0.1:{https}/settings/ports?x=1" in head.stdout
    post = curl(
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "-X",
        "POST",
        "-d",
        "a=1",
        "-H",
        "Host: pbx.example.com:8080",
        svc.url("/api/x"),
    )
    assert post.stdout == f"308 https://pbx.example.com:{https}/api/x"
    v6 = curl("-sI", svc.url("/", host="::1"))
    assert f"Location: https://[::1]:{https}/" in v6.stdout
    for path in ("/healthz", "/prov/nothing.cfg", "/.well-known/acme-challenge/abc"):
        code = curl("-s", "-o", "/dev/null", "-w", "%{http_code}", svc.url(path)).stdout
        assert code in ("200", "404"), (path, code)
    # following the redirect lands on HTTPS
    followed = curl("-sL", "--cacert", str(svc.cert_path), "-o", "/dev/null", "-w", "%{http_code} %{url_effective}", svc.url("/healthz?"))
    assert followed.stdout.startswith("200")


def test_no_redirect_without_an_https_binding(service):
    svc = service({"ip_http_port": str(free_port()), "http_redirect_https": True})
    assert curl("-s", "-o", "/dev/null", "-w", "%{http_code}", svc.url("/no-such-page")).stdout == "404"


def test_sighup_rereads_the_file_and_survives_a_broken_one(service):
    svc = service({"ip_http_port": str(free_port()), "http_max_conn": 1000})
    text = svc.config_path.read_text()
    svc.config_path.write_text(text.replace("http_max_conn = 1000", "http_max_conn = 7"))
    svc.signal_master(signal.SIGHUP)  # the server also notices the change by itself: whichever reload comes first
    svc.wait_for_log("configuration reloaded; changed: http_max_conn")
    svc.config_path.write_text('ip_http_port = "oops"\n')
    svc.signal_master(signal.SIGHUP)
    svc.wait_for_log("configuration not reloaded")
    assert svc.proc.poll() is None
    assert curl("-o", "/dev/null", "-w", "%{http_code}", svc.url("/healthz")).stdout == "200"


def _send_and_drain(port: int, data: bytes, tls: bool = False) -> bytes:
    """Connect, (TLS: handshake without checking the certificate), send `data`, read until the server closes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if tls:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        sock = context.wrap_socket(sock)
    answer = b""
    with sock:
        try:
            sock.sendall(data)
            while chunk := sock.recv(4096):
                answer += chunk
        except OSError:
            pass  # the server closed first (a failed handshake)
    return answer


def test_clients_bad_bytes_are_logged_rate_limited_at_info_without_the_socket(service):
    """Issue 15, item 10: hundreds of bad requests write a few INFO lines, no ERROR, no socket repr."""
    svc = service({"ip_http_port": f"127.0.0.1:{free_port()}", "ip_https_port": f"127.0.0.1:{free_port()}",
                   "http_max_conn_rate": 100_000})
    http, https = svc.port("ip_http_port"), svc.port("ip_https_port")
    before = len(svc.lines)
    for _ in range(300):  # a TLS ClientHello sent to the plain HTTP port
        assert _send_and_drain(http, b"\x16\x03\x01garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    for _ in range(300):  # garbage, then plain HTTP, to the HTTPS port: the handshake fails
        assert _send_and_drain(https, b"garbage\r\n\r\n") == b""
        assert _send_and_drain(https, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    many_headers = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: b\r\n" % n for n in range(101)) + b"\r\n"
    for data in (many_headers, b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n"):
        for _ in range(30):  # more headers, or a longer line, than http.client reads: a traceback each, once
            assert _send_and_drain(http, data).startswith(b"HTTP/1.1 400 ")
    for data in (b"\x16\x03\x01garbage\r\n\r\n", b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", b"GET / HTTP/7.1\r\n\r\n"):
        for _ in range(30):  # bad requests inside a good TLS connection
            assert _send_and_drain(https, data, tls=True).startswith(b"HTTP/1.1 400 ")
    assert curl("-o", "/dev/null", "-w", "%{http_code}", svc.url("/healthz")).stdout == "200"
    # a refused name cannot forge a line in the log (a CR overwrites the line shown on a terminal)
    forged = "/prov/x%0D[2026-01-01%2000:00:00%20+0000]%20[1]%20[INFO]%20all%20clear%1B[2K"
    assert curl("-g", "-o", "/dev/null", "-w", "%{http_code}", svc.url(forged)).stdout == "403"
    svc.wait_for_log("GET /prov/x\\r[2026-01-01 00:00:00 +0000] [1] [INFO] all clear\\x1b[2K refused")
    svc.wait_for_log("TLS handshake failed")
    lines = svc.lines[before:]
    assert not any("\r" in line or "\x1b" in line for line in svc.lines), lines
    peer_lines = [line for line in lines if "bad HTTP request" in line or "TLS handshake failed" in line]
    assert 3 <= len(peer_lines) <= 4, "\n".join(lines)  # one per kind and server (a minute apart at most)
    assert all("[INFO]" in line and "127.0.0.1: " in line for line in peer_lines), peer_lines
    assert "use https://" in peer_lines[0] and "Invalid HTTP method" in peer_lines[0]
    for line in lines:
        assert "[ERROR]" not in line and "Traceback" not in line, line
        assert "socket at 0x" not in line and "SSLSocket" not in line and "fd=" not in line, line


def test_a_client_that_stops_reading_is_timed_out_without_a_traceback(service):
    svc = service({"ip_http_port": f"127.0.0.1:{free_port()}", "admin_password_hash": hash_password("reader admin")},
                  env={"GREENSERVERS_HTTP_IO_TIMEOUT": "1"})
    tftp_root = svc.directory / "data" / "tftp"
    tftp_root.mkdir(parents=True, exist_ok=True)
    (tftp_root / "firmware.bin").write_bytes(bytes(32 * 1024 * 1024))  # more than both sockets' buffers hold
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", svc.port("ip_http_port")))
        sock.sendall(b"GET /prov/firmware.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")  # then reads no more

        def counted() -> dict:
            sensors = curl("--user", "admin:reader admin", svc.url("/api/sensors"))
            values = {row["name"]: row["value"] for row in json.loads(sensors.stdout)["sensors"]}
            return values if values["http_timeouts"] else None

        assert eventually(counted, 15, interval=0.2)["http_timeouts"] == 1
    assert "Traceback" not in svc.log and "[ERROR]" not in svc.log and "timed out" not in svc.log, svc.log


ADMIN = ("admin", "pipeline admin")
PIPELINED = 10_000


def _ntp_answer(port: int) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.sendto(b"\x23" + bytes(47), ("127.0.0.1", port))  # a client's mode-3 request
        return sock.recv(100)


def test_a_pipelining_client_does_not_hold_up_other_clients_or_ntp(service):
    """Each pipelined request waits for a turn of the loop: another client's /healthz and an NTP query are
    answered while the pipeline is still being served (the server counts it: every request is a redirect)."""
    svc = service({"ip_http_port": f"127.0.0.1:{free_port()}", "ip_https_port": f"127.0.0.1:{free_port()}",
                   "http_redirect_https": True, "ip_ntp_port": f"127.0.0.1:{free_udp_port()}",
                   "admin_password_hash": hash_password(ADMIN[1])},
                  env={"GREENSERVERS_HTTP_REQUESTS_PER_SECOND": "1000000"})  # the pace out of the way: the turns alone
    port = svc.port("ip_http_port")
    with Pipeline(port, b"GET /pipelined HTTP/1.1\r\nHost: t\r\n\r\n" * PIPELINED) as pipeline:
        eventually(pipeline.statuses, what="the pipeline's first answers")  # the server is at it now
        assert _healthz_code("127.0.0.1", port) == "200"
        assert len(_ntp_answer(svc.port("ip_ntp_port"))) == 48
        redirected = svc.sensors(ADMIN[1], "https")["http_redirects"]  # read after both were answered
        assert redirected < PIPELINED, "the pipeline was served to its end before the others"
        assert pipeline.ended.wait(60)
        statuses = pipeline.statuses()
    assert len(statuses) == PIPELINED and set(statuses) == {b"HTTP/1.1 301 Moved Permanently"}  # and all of it is served


def test_a_connection_over_its_pace_gets_a_429_and_is_closed(service):
    svc = service({"ip_http_port": f"127.0.0.1:{free_port()}", "admin_password_hash": hash_password(ADMIN[1])})
    requests_sent = 5000
    with Pipeline(svc.port("ip_http_port"), b"GET /prov/nothing.bin HTTP/1.1\r\nHost: t\r\n\r\n" * requests_sent) as pipeline:
        assert pipeline.ended.wait(60)  # closed by the server
        statuses = pipeline.statuses()
        received = pipeline.received
    assert REQUESTS_PER_SECOND <= len(statuses) - 1 < requests_sent - 1  # at least a second's worth, far from all of it
    assert {status[:13] for status in statuses[:-1]} == {b"HTTP/1.1 404 "} and statuses[-1] == b"HTTP/1.1 429 Too Many Requests"
    last = received[received.rindex(b"HTTP/1.1 429"):]
    assert b"\r\nRetry-After: 1\r\n" in last and b"\r\nConnection: close\r\n" in last and last.endswith(b"retry later.\n")
    assert svc.sensors(ADMIN[1])["http_requests_too_fast"] == 1
    assert any("answered 429 and closed" in line for line in svc.lines)
    assert curl("-o", "/dev/null", "-w", "%{http_code}", svc.url("/healthz")).stdout == "200"  # a new connection is served


def test_a_pipelining_client_that_does_not_read_is_closed_by_the_io_timeout(service):
    """Answers are written one at a time into the socket: a client that pipelines and reads nothing finds the
    server waiting on its full socket (holding nothing more) until the I/O timeout closes the connection."""
    svc = service({"ip_http_port": f"127.0.0.1:{free_port()}", "admin_password_hash": hash_password(ADMIN[1])},
                  env={"GREENSERVERS_HTTP_IO_TIMEOUT": "1"})
    tftp_root = svc.directory / "data" / "tftp"
    tftp_root.mkdir(parents=True, exist_ok=True)
    (tftp_root / "firmware.bin").write_bytes(bytes(1024 * 1024))
    asked = 64
    with Pipeline(svc.port("ip_http_port"), b"GET /prov/firmware.bin HTTP/1.1\r\nHost: t\r\n\r\n" * asked, read=False,
                  receive_buffer=4096) as pipeline:
        timed_out = eventually(lambda: svc.sensors(ADMIN[1])["http_timeouts"], 15, interval=0.2)
        assert timed_out == 1
        assert _healthz_code("127.0.0.1", svc.port("ip_http_port")) == "200"
        delivered = 0
        pipeline.sock.settimeout(5)
        with contextlib.suppress(OSError):
            while chunk := pipeline.sock.recv(1 << 20):
                delivered += len(chunk)
    assert delivered < asked * 1024 * 1024 / 4  # what the sockets' buffers held when the server gave up, not the answers
    assert "Traceback" not in svc.log and "[ERROR]" not in svc.log, svc.log
