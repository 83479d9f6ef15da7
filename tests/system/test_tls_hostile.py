"""TLS attacked from the phone network, as a review did, against the real service with OpenSSL's own client.

- A ClientHello offering only a finite-field group (ffdhe8192) made the server compute 170 ms of key
  exchange on the event loop, for nothing computed by the client: over HTTPS, LDAPS and LDAP's StartTLS
  it is now refused, and the curves browsers and phones use are served as before (X25519 for OpenSSL's
  default hello, so no HelloRetryRequest).
- A client dripping its ClientHello one byte at a time held its connection (and an HTTP slot) for as long
  as it liked: each byte restarted the handshake's timeout. The deadline is now for the whole handshake.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time

import pytest
from support import free_port

OPENSSL_TIMEOUT = 20


def s_client(port: int, *args: str) -> str:
    """`openssl s_client` to 127.0.0.1:port, nothing sent; its output (stdout and stderr)."""
    done = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost", *args],
                          input="", capture_output=True, text=True, timeout=OPENSSL_TIMEOUT)
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def tls_service(tmp_path_factory):
    from support import ServiceProcess

    ports = {"ip_https_port": f"127.0.0.1:{free_port()}", "ip_ldaps_port": f"127.0.0.1:{free_port()}",
             "ip_ldap_port": f"127.0.0.1:{free_port()}"}
    svc = ServiceProcess(tmp_path_factory.mktemp("tls"), {**ports, "ldap_password": "tls-secret"},
                         env={"GREENSERVERS_HTTP_HANDSHAKE_TIMEOUT": "1.5"})
    svc.start()
    yield svc
    svc.stop()


WAYS = {
    "https": lambda svc: (svc.port("ip_https_port"), ()),
    "ldaps": lambda svc: (svc.port("ip_ldaps_port"), ()),
    "ldap-starttls": lambda svc: (svc.port("ip_ldap_port"), ("-starttls", "ldap")),
}


@pytest.mark.parametrize("way", WAYS)
def test_a_finite_field_group_is_refused_and_the_curves_are_served(tls_service, way):
    port, extra = WAYS[way](tls_service)
    refused = s_client(port, *extra, "-tls1_3", "-groups", "ffdhe8192")
    assert "handshake failure" in refused or "no suitable key share" in refused.lower(), refused[-600:]
    assert "Server Temp Key" not in refused
    tls12 = s_client(port, *extra, "-tls1_2", "-groups", "ffdhe8192")  # and no DHE of TLS 1.2 either
    assert "Server Temp Key: DH" not in tls12 and "Cipher is (NONE)" in tls12, tls12[-600:]
    for group, shown in (("X25519", "X25519"), ("P-256", "prime256v1"), ("P-384", "secp384r1")):
        served = s_client(port, *extra, "-groups", group)
        assert f"Server Temp Key: {'ECDH, ' if group != 'X25519' else ''}{shown}" in served, served[-600:]
    default = s_client(port, *extra)  # OpenSSL's own hello: an X25519 share, taken as it is
    assert "Server Temp Key: X25519" in default, default[-600:]


def test_python_clients_and_curl_still_connect(tls_service):
    context = ssl.create_default_context(cafile=str(tls_service.cert_path))
    with socket.create_connection(("127.0.0.1", tls_service.port("ip_https_port")), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert tls.recv(100).startswith(b"HTTP/1.1 200")
    done = subprocess.run(["curl", "-sS", "--cacert", str(tls_service.cert_path), "-o", "/dev/null", "-w", "%{http_code}",
                           f"https://localhost:{tls_service.port('ip_https_port')}/healthz"],
                          capture_output=True, text=True, timeout=30)
    assert done.stdout == "200", done.stderr


def drip_hello(port: int, seconds: float) -> float | None:
    """Send a ClientHello one byte every 0.25 s, never its last byte, for up to `seconds`; when the server
    closed the connection (seconds after the first byte), None if it did not."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(0.25)
        for byte in hello[:-1]:
            if time.monotonic() - started > seconds:
                return None
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(100) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                continue  # still open: the next byte
            except OSError:
                return time.monotonic() - started
    return None


def test_a_dripped_hello_is_closed_at_the_handshake_deadline(tls_service):
    closed = drip_hello(tls_service.port("ip_https_port"), seconds=8)
    assert closed is not None, "the HTTPS connection was still open 8 s into a dripped hello (deadline 1.5 s)"
    assert closed < 6
