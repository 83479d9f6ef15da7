"""The ACME client against a hostile authority on loopback (a real HTTPS server in a thread): every answer is
bounded in size and time, no redirect and no plain-HTTP address is followed, requests are paced, and the
authority's words cannot forge a log line."""

from __future__ import annotations

import http.server
import json
import socket
import ssl
import threading
import time

import pytest
import requests
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from support.pebble import make_server_tls

from greenservers.tls import acme
from greenservers.tls.acme import AuthorityMisbehaved, OrderRequest, describe_error

DIRECTORY = {"newNonce": "https://127.0.0.1:1/nonce", "newAccount": "https://127.0.0.1:1/acct", "newOrder": "https://127.0.0.1:1/order"}


class Authority:
    """An HTTPS server whose /dir answers what the test sets in `answer(handler)`; counts what it is asked."""

    def __init__(self, folder):
        ca, cert, key = make_server_tls(folder)
        self.ca = ca
        self.asked = 0
        self.answer = lambda handler: handler.json(DIRECTORY)
        authority = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                authority.asked += 1
                authority.answer(self)

            def json(self, body, extra: bytes = b""):
                data = json.dumps(body).encode() + extra
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def request(self, folder) -> OrderRequest:
        return OrderRequest(("pbx.test",), "", f"https://127.0.0.1:{self.server.server_address[1]}/dir", self.ca, folder)

    def stop(self):
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()


@pytest.fixture
def authority(tmp_path):
    made = Authority(tmp_path / "ca")
    yield made
    made.stop()


def test_a_well_behaved_directory_is_read(authority, tmp_path):
    client, _ = acme._client(authority.request(tmp_path))
    assert client.directory["newOrder"] == DIRECTORY["newOrder"]


def test_an_answer_past_its_size_is_refused_without_reading_the_rest(authority, tmp_path):
    """A review's authority sent a 200 MB directory: 775 MB of memory, the loop held 955 ms while it was parsed."""
    sent = [0]

    def endless(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(200 << 20))
        handler.end_headers()
        try:
            while sent[0] < 200 << 20:
                handler.wfile.write(b" " * 65536)
                sent[0] += 65536
        except OSError:
            pass  # the client gave up

    authority.answer = endless
    with pytest.raises(AuthorityMisbehaved, match="longer than 64 KiB") as refused:
        acme._client(authority.request(tmp_path))
    authority.stop()  # its handler has ended
    assert sent[0] < 8 << 20  # what the kernel's buffers took, not 200 MB
    problem = describe_error(refused.value, authority.request(tmp_path))
    assert problem.category == "ACME: the authority's answers were refused" and "64 KiB" in problem.detail


def test_an_answer_dripped_slowly_is_given_up_at_its_deadline(authority, tmp_path, monkeypatch):
    """Each read waits READ_TIMEOUT at most, the whole request ANSWER_SECONDS (shortened here to 0.5 s): a byte
    every 0.2 s, which no read's timeout ends, ends at the deadline rather than when the authority likes, in
    the answer's head as in its body."""
    monkeypatch.setattr(acme, "ANSWER_SECONDS", 0.5)
    data = json.dumps(DIRECTORY).encode()
    for where in ("head", "body"):
        sent, done = [], threading.Event()

        def drip(handler, where=where, sent=sent, done=done):
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(data)
            slow = head + data if where == "head" else data
            if where == "body":
                handler.wfile.write(head)
            for byte in slow:
                if done.is_set():
                    return
                try:
                    handler.wfile.write(bytes([byte]))
                    handler.wfile.flush()
                except OSError:
                    return  # the client gave up
                sent.append(byte)
                time.sleep(0.2)

        authority.answer = drip
        try:
            with pytest.raises(AuthorityMisbehaved, match="took longer than 0.5 s"):
                acme._client(authority.request(tmp_path))
            assert len(sent) < 20, where  # about 0.5 s of a byte every 0.2 s, not the whole answer
        finally:
            done.set()


def test_an_answer_cut_short_is_the_authority_unreachable_not_a_bug(authority, tmp_path):
    def cut(handler):
        handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"newNonce\"")
        handler.wfile.flush()
        handler.close_connection = True

    authority.answer = cut
    with pytest.raises(requests.exceptions.RequestException) as failed:
        acme._client(authority.request(tmp_path))
    assert describe_error(failed.value, authority.request(tmp_path)).category == "ACME: the authority could not be reached"


def test_a_redirect_is_not_followed(authority, tmp_path):
    """One led the client from the authority to a plain-HTTP address of the LAN."""
    lan = socket.socket()
    lan.bind(("127.0.0.1", 0))
    lan.listen(1)
    lan.settimeout(0.5)

    def redirect(handler):
        handler.send_response(302)
        handler.send_header("Location", f"http://127.0.0.1:{lan.getsockname()[1]}/internal-admin")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    authority.answer = redirect
    try:
        with pytest.raises(AuthorityMisbehaved, match="redirected"):
            acme._client(authority.request(tmp_path))
        with pytest.raises(TimeoutError):
            lan.accept()  # nobody came
    finally:
        lan.close()


def test_an_address_that_is_not_https_is_not_asked(authority, tmp_path):
    _, net = acme._client(authority.request(tmp_path))
    asked = authority.asked
    with pytest.raises(AuthorityMisbehaved, match="not https"):
        net.get(f"http://127.0.0.1:{authority.server.server_address[1]}/dir")
    assert authority.asked == asked


def test_requests_are_paced_after_a_burst(authority, tmp_path, monkeypatch):
    """The library polls an order as often as its Retry-After says: one of 0 made 200 requests in 10 s."""
    slept = []
    monkeypatch.setattr(acme.time, "sleep", slept.append)
    _, net = acme._client(authority.request(tmp_path))  # the first request of the burst
    for _ in range(acme.REQUESTS_BURST + 4):
        net.get(authority.request(tmp_path).directory)
    # the burst, then each request waits about a second (requests over loopback take far less)
    assert len(slept) >= 4 and all(0.5 < wait <= 1.0 / acme.REQUESTS_PER_SECOND for wait in slept[-4:])


def test_the_authoritys_words_cannot_forge_a_log_line(tmp_path):
    request = OrderRequest(("pbx.test",), "", "https://ca.test/dir", None, tmp_path)
    forged = messages.Error(detail="no\n2026-12-02 15:00:00 INFO greenservers.auth: admin logged in from 10.0.0.66\r\x1b[2K")
    detail = describe_error(forged, request).detail
    assert "\n" not in detail and "\r" not in detail and "\x1b" not in detail and "admin logged in" in detail


def test_the_signing_request_names_every_name_and_is_signed_by_the_key():
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.load_pem_x509_csr(acme._signing_request(key, ("pbx.example.org", "phones.example.org")))
    assert csr.is_signature_valid
    assert csr.public_key().public_numbers() == key.public_key().public_numbers()
    names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert names == ["pbx.example.org", "phones.example.org"]
