"""ACME in the running service against a real authority: pebble on loopback (tests/support/pebble.py).

Each test starts its own pebble (its http-01 checks go to the service's HTTP
binding) and the service as in production, with acme_ca_bundle trusting
pebble's HTTPS. Clients check what is served with pebble's root as their only
CA: curl (HTTPS, names given by --resolve), ldapsearch (StartTLS and
ldaps://), openssl s_client (which key type a client that takes only RSA or
only ECDSA signatures gets). Waiting is polling /healthz with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import ssl
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from cryptography import x509
from support import eventually, free_port
from support.certs import make_cert
from support.http import held_connection, request_on
from support.pebble import PebbleCA
from support.web import PASSWORD, PASSWORD_HASH

pytestmark = pytest.mark.real_client

AUTH = ("admin", PASSWORD)
NAMES = ("pbx.acme.test", "phones.acme.test")
LDAP_PASSWORD = "acme-test-phones"
ISSUE_TIMEOUT = 90.0


@pytest.fixture
def pebble(tmp_path):
    started: list[PebbleCA] = []

    def start(http_port: int, validity_seconds: int | None = None) -> PebbleCA:
        ca = PebbleCA(tmp_path / f"pebble{len(started)}", http_port, validity_seconds).start()
        started.append(ca)
        return ca

    yield start
    for ca in started:
        ca.stop()


def acme_service(service, pebble, validity_seconds=None, names=NAMES, env=None, **settings):
    http_port = free_port()
    ca = pebble(http_port, validity_seconds)
    svc = service({
        "ip_http_port": f"127.0.0.1:{http_port}", "ip_https_port": f"127.0.0.1:{free_port()}",
        "ip_ldap_port": f"127.0.0.1:{free_port()}", "ip_ldaps_port": f"127.0.0.1:{free_port()}",
        "ldap_password": LDAP_PASSWORD, "admin_password_hash": PASSWORD_HASH,
        "acme_domains": " ".join(names), "acme_email": "admin@pbx.acme.test",
        "acme_directory": ca.directory, "acme_ca_bundle": str(ca.bundle), **settings,
    }, env=env)
    return svc, ca


def health(svc) -> dict:
    return requests.get(svc.url("/healthz"), timeout=10).json()


def wait_for(svc, predicate, what: str, timeout: float = ISSUE_TIMEOUT) -> dict:
    """The certificate /healthz shows once `predicate` holds for it."""
    def certificate_if_seen():
        certificate = health(svc)["certificate"]
        return certificate if predicate(certificate) else None

    return eventually(certificate_if_seen, timeout, interval=0.2,
                      what=lambda: f"{what}: {health(svc)['certificate']}\n{svc.log[-4000:]}")


def issued(cert: dict) -> bool:
    return cert["source"] == "ACME" and {c["kind"] for c in cert["chains"]} == {"ECDSA", "RSA"}


def write_root(ca: PebbleCA, folder: Path) -> Path:
    path = folder / "pebble-root.pem"
    path.write_bytes(ca.root_pem())
    return path


def curl_https(svc, root: Path, name: str, path: str = "/healthz") -> subprocess.CompletedProcess:
    port = svc.port("ip_https_port")
    return subprocess.run(["curl", "-sS", "--cacert", str(root), "--resolve", f"{name}:{port}:127.0.0.1",
                           "-o", "/dev/null", "-w", "%{http_code} %{ssl_verify_result}", f"https://{name}:{port}{path}"],
                          capture_output=True, text=True, timeout=30)


def ldapsearch(root: Path, url: str, *extra: str, check_certificate: bool = True) -> subprocess.CompletedProcess:
    """ldapsearch by name, in a mount namespace of its own whose /etc/hosts gives NAMES 127.0.0.1
    (libldap checks the certificate against the URL's host, which it must also resolve)."""
    hosts = root.with_name("hosts")
    hosts.write_text("127.0.0.1 localhost " + " ".join(NAMES) + "\n")
    private_mounts = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "-rm"]
    env = dict(os.environ, LDAPTLS_CACERT=str(root), LDAPTLS_REQCERT="demand" if check_certificate else "never")
    return subprocess.run([*private_mounts, "--", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts),
                           "ldapsearch", "-x", "-H", url, *extra, "-D", "phonebook", "-w", LDAP_PASSWORD,
                           "-b", "dc=pbx", "-s", "base", "(objectClass=*)", "1.1"],
                          capture_output=True, text=True, env=env, timeout=30)


def served_leaf(port: int, name: str, sigalgs: str, starttls: bool = False) -> x509.Certificate:
    """The leaf `openssl s_client` gets when it offers only `sigalgs`."""
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name, "-sigalgs", sigalgs, "-showcerts"]
    if starttls:
        args += ["-starttls", "ldap"]
    out = subprocess.run(args, input="", capture_output=True, text=True, timeout=30).stdout
    return x509.load_pem_x509_certificates(out.encode())[0]


def kind_of(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = cert.public_key()
    return "RSA" if isinstance(key, rsa.RSAPublicKey) else "ECDSA" if isinstance(key, ec.EllipticCurvePublicKey) else "?"


def test_issuance_for_two_names_is_trusted_by_https_and_ldap_without_restart(service, pebble, tmp_path):
    svc, ca = acme_service(service, pebble)
    workers = svc.worker_pids
    cert = wait_for(svc, issued, "the ECDSA and RSA certificates")
    root = write_root(ca, tmp_path)

    for chain in cert["chains"]:
        assert set(chain["names"]) == set(NAMES) and "Pebble" in chain["issuer"]
    renewal_info = wait_for(svc, lambda c: c["acme"]["state"] == "waiting", "the next check planned")["acme"]["renewal_info"]
    assert renewal_info == "not offered by this authority"  # pebble 2.4 has no ARI: the lifetime rule alone
    for name in NAMES:
        assert curl_https(svc, root, name).stdout == "200 0"
        starttls = ldapsearch(root, f"ldap://{name}:{svc.port('ip_ldap_port')}", "-ZZ")
        assert starttls.returncode == 0, starttls.stderr
        ldaps = ldapsearch(root, f"ldaps://{name}:{svc.port('ip_ldaps_port')}")
        assert ldaps.returncode == 0, ldaps.stderr
    # a name the certificate does not hold is refused, though the server answers it
    assert ldapsearch(root, f"ldaps://localhost:{svc.port('ip_ldaps_port')}", check_certificate=False).returncode == 0
    assert ldapsearch(root, f"ldaps://localhost:{svc.port('ip_ldaps_port')}").returncode != 0
    for sigalgs, kind in (("RSA-PSS+SHA256:RSA+SHA256", "RSA"), ("ECDSA+SHA256", "ECDSA")):
        for port, starttls in ((svc.port("ip_https_port"), False), (svc.port("ip_ldaps_port"), False), (svc.port("ip_ldap_port"), True)):
            leaf = served_leaf(port, NAMES[0], sigalgs, starttls)
            assert kind_of(leaf) == kind, (port, sigalgs)
            assert set(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)) == set(
                NAMES
            )

    # files: private folder, private files
    folder = svc.directory / "data" / "tls" / "acme"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())
    assert len(list(folder.glob("*.crt"))) == 2 and len(list(folder.glob("*.key"))) == 3  # two chains, and the account key

    # visible: audit log, sensors, the page
    audit = [json.loads(line) for line in (svc.directory / "data" / "audit.log").read_text().splitlines()]
    assert any(
        entry["who"] == "acme" and "ECDSA" in entry["note"] and "RSA" in entry["note"] and "issued" in entry["note"] for entry in audit
    )
    metrics = requests.get(svc.url("/metrics"), auth=AUTH, timeout=10).text
    assert re.search(r"^greenservers_acme_certificates_issued_total 2(\.0)?$", metrics, re.M)
    assert re.search(r"^greenservers_tls_certificate_seconds_left \d", metrics, re.M)
    page = requests.get(svc.url("/settings/ports"), auth=AUTH, timeout=10).text
    assert 'id="cert-source">ACME<' in page and "Pebble" in page and NAMES[1] in page
    assert svc.worker_pids == workers




def tls_connection(port: int, root: Path, name: str) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(root))
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(sock, server_hostname=name)


def serial_of(tls: ssl.SSLSocket) -> str:
    return f"{x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number:x}"


def http_get_on(tls: ssl.SSLSocket, name: str) -> bytes:
    """One keep-alive request on an open connection; its status line."""
    tls.sendall(f"GET /healthz HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += tls.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += tls.recv(65536)
    return head.split(b"\r\n", 1)[0]


def test_renewal_is_served_without_restart_and_open_connections_carry_on(service, pebble, tmp_path):
    from support import ldap_wire as w
    from support.ldap import read_until_done

    # pebble issues certificates valid for 30 s: renewal is due after 20 s (a third of the lifetime left)
    svc, ca = acme_service(service, pebble, validity_seconds=30, env={"GREENSERVERS_HTTP_KEEPALIVE_TIMEOUT": "120"})
    workers = svc.worker_pids
    first = wait_for(svc, issued, "the first certificates")
    first_serials = {c["serial"] for c in first["chains"]}
    root = write_root(ca, tmp_path)

    https = tls_connection(svc.port("ip_https_port"), root, NAMES[0])
    assert http_get_on(https, NAMES[0]) == b"HTTP/1.1 200 OK" and serial_of(https) in first_serials
    ldaps = tls_connection(svc.port("ip_ldaps_port"), root, NAMES[1])
    ldaps.sendall(w.bind(1, "phonebook", LDAP_PASSWORD))
    assert [r.code for r in read_until_done(ldaps)] == [0]

    renewed = wait_for(
        svc, lambda c: issued(c) and not first_serials & {ch["serial"] for ch in c["chains"]}, "the renewed certificates", 90
    )
    assert renewed["acme"]["last_result"] == "issued" and renewed["acme"]["last_error"] == ""
    with tls_connection(svc.port("ip_https_port"), root, NAMES[0]) as fresh:  # new connections: the new certificate
        assert serial_of(fresh) in {c["serial"] for c in renewed["chains"]} | set(_later_serials(svc))
    with tls_connection(svc.port("ip_ldaps_port"), root, NAMES[1]) as fresh:
        assert serial_of(fresh) not in first_serials

    # the connections opened before carry on, with the certificate they began with
    assert http_get_on(https, NAMES[0]) == b"HTTP/1.1 200 OK" and serial_of(https) in first_serials
    ldaps.sendall(w.search(2, base="dc=pbx", scope=0, attributes=["1.1"]))
    assert read_until_done(ldaps)[-1].code == 0
    https.close()
    ldaps.close()

    audit = (svc.directory / "data" / "audit.log").read_text()
    assert "renewed" in audit and "less than a third of its lifetime left" in audit
    assert svc.worker_pids == workers


def _later_serials(svc) -> list[str]:
    """Serials served now (a second renewal may have come between two looks)."""
    return [c["serial"] for c in health(svc)["certificate"]["chains"]]


def test_authority_down_keeps_the_working_certificate_shows_the_error_and_retries_later(service, pebble, tmp_path):
    svc, ca = acme_service(service, pebble)
    first = wait_for(svc, issued, "the certificates")
    root = write_root(ca, tmp_path)
    ca.stop_pebble()

    answer = requests.put(
        svc.url("/api/settings/ports"), auth=AUTH, timeout=10, json={"acme_domains": " ".join(NAMES + ("new.acme.test",))}
    )
    assert answer.status_code == 200
    failed = wait_for(svc, lambda c: c["acme"]["failures_in_a_row"] >= 1, "the failed attempt", 60)
    acme = failed["acme"]
    assert acme["last_result"] == "failed" and acme["last_error"] == "ACME: the authority could not be reached"  # public: the category
    assert failed["source"] == "ACME" and failed["chains"] == first["chains"]  # the working certificate stays
    assert curl_https(svc, root, NAMES[0]).stdout == "200 0"
    # the retry is a minute later, not at once
    from datetime import datetime
    wait = datetime.fromisoformat(acme["next_check"]) - datetime.fromisoformat(acme["last_attempt"])
    assert 55 <= wait.total_seconds() <= 65, acme
    assert "retrying after 1 failed attempt" in acme["next_check_reason"]
    page = requests.get(svc.url("/settings/ports"), auth=AUTH, timeout=10).text
    assert 'id="acme-error"' in page and f"cannot reach {ca.directory}" in page  # behind the login: in full
    failures = [line for line in svc.lines if "ordering a certificate for" in line and "failed" in line]
    assert len(failures) == 1, failures  # logged once
    assert health(svc)["certificate"]["acme"]["failures_in_a_row"] == 1  # still one: nothing retried meanwhile


def test_a_failing_challenge_leaves_the_certificate_in_use_and_names_the_name(service, pebble, tmp_path):
    # every name answers 127.0.0.1 but this one, whose address nothing listens on: its validation fails
    http_port = free_port()
    ca = pebble(http_port)
    ca.point_name_at("elsewhere.acme.test", "127.0.0.2")
    svc = service({
        "ip_http_port": f"127.0.0.1:{http_port}", "ip_https_port": f"127.0.0.1:{free_port()}",
        "acme_domains": "pbx.acme.test elsewhere.acme.test", "acme_directory": ca.directory, "acme_ca_bundle": str(ca.bundle),
        "admin_password_hash": PASSWORD_HASH,
    })
    failed = wait_for(svc, lambda c: c["acme"]["failures_in_a_row"] >= 1, "the failed attempt")
    assert failed["source"] == "self-signed" and failed["days_left"] > 700
    assert failed["acme"]["last_error"] == "ACME: the authority could not validate a name (http-01)"
    page = requests.get(svc.url("/settings/ports"), auth=AUTH, timeout=10).text
    assert "validation failed: elsewhere.acme.test" in page
    assert not list((svc.directory / "data" / "tls" / "acme").glob("*.crt"))  # nothing half-stored


def test_challenge_gets_through_when_the_connection_caps_are_full(service, pebble, tmp_path):
    svc, ca = acme_service(service, pebble, env={"GREENSERVERS_HTTP_KEEPALIVE_TIMEOUT": "120"}, acme_domains="", http_max_conn=1)
    port = svc.port("ip_http_port")
    with held_connection(port):  # the only slot is taken: other connections are turned away
        assert _get(port, "/healthz").startswith(b"HTTP/1.1 503")
        assert _get(port, "/.well-known/acme-challenge/no-such-token").startswith(b"HTTP/1.1 503")  # no validation: no way in
        _turn_acme_on_by_hand(svc)
        svc.wait_for_log("new HTTPS and LDAPS connections use it now", timeout=ISSUE_TIMEOUT)
    assert ca.validations() >= 2
    def sensors_once_admitted() -> dict | None:
        """The sensors, once the held connection's slot is freed (when the server notices the close). The answer is
        dropped here: its keep-alive connection would hold the one slot for as long as it lives."""
        answer = requests.get(svc.url("/api/sensors"), auth=AUTH, timeout=10)
        return None if answer.status_code == 503 else {s["name"]: s["value"] for s in answer.json()["sensors"]}

    sensors = eventually(sensors_once_admitted)
    assert sensors["http_rejected_max_conn"] >= 2 + ca.validations()  # pebble's checks came in through the refusal
    # the cap of one: the connection just closed may still hold the slot
    answer = eventually(lambda: not (got := _get(port, "/.well-known/acme-challenge/no-such-token")).startswith(b"HTTP/1.1 503") and got)
    assert answer.startswith(b"HTTP/1.1 404")  # admitted: a token not being validated is not found


def _turn_acme_on_by_hand(svc) -> None:
    """acme_domains set by a hand edit of the file and SIGHUP: the API is behind the caps too."""
    svc.settings["acme_domains"] = " ".join(NAMES)
    svc.config_path.write_text(svc.config_path.read_text().replace('acme_domains = ""', f'acme_domains = "{" ".join(NAMES)}"'))
    svc.signal_master(1)


FLOOD_SOURCES = [f"127.0.0.{n}" for n in range(2, 34)]  # enough clients to take every peek place (8 each)
FLOOD_HELD = 2.5  # seconds each silent connection stays open: longer than a peek waits
FLOOD_MAX_OPEN = 700


def _silent_connections(port: int, stop: threading.Event, opened: list[int]) -> None:
    """New connections from FLOOD_SOURCES in turn, about 400 a second, each left open and silent for FLOOD_HELD
    seconds (at most FLOOD_MAX_OPEN at once), until `stop`."""
    held: list[tuple[socket.socket, float]] = []
    try:
        while not stop.wait(0.1):
            now = time.monotonic()
            for sock, _ in [h for h in held if now - h[1] >= FLOOD_HELD]:
                sock.close()
            held = [h for h in held if now - h[1] < FLOOD_HELD]
            for _ in range(min(40, FLOOD_MAX_OPEN - len(held))):
                sock = socket.socket()
                sock.setblocking(False)
                sock.bind((FLOOD_SOURCES[opened[0] % len(FLOOD_SOURCES)], 0))
                with contextlib.suppress(BlockingIOError):
                    sock.connect(("127.0.0.1", port))
                held.append((sock, now))
                opened[0] += 1
    finally:
        for sock, _ in held:
            sock.close()


def test_challenge_gets_through_a_flood_of_silent_refused_connections(service, pebble, tmp_path):
    """Every connection is refused (both slots held, by two clients: neither holds most, so neither gives one up)
    and many clients keep refused connections open without a word: the validator's request is still read and
    answered (the oldest silent connection gives up its place)."""
    svc, ca = acme_service(service, pebble, env={"GREENSERVERS_HTTP_KEEPALIVE_TIMEOUT": "120"}, acme_domains="", http_max_conn=2)
    port = svc.port("ip_http_port")
    stop, opened = threading.Event(), [0]
    flood = threading.Thread(target=_silent_connections, args=(port, stop, opened))

    def outcome() -> str | None:
        for line in svc.lines:
            if "new HTTPS and LDAPS connections use it now" in line:
                return "issued"
            if "ordering a certificate for" in line and "failed" in line:
                return line
        return None

    with held_connection(port) as first, held_connection(port, source="127.0.0.200") as second:
        flood.start()
        try:
            eventually(lambda: opened[0] >= 2 * FLOOD_MAX_OPEN, what="the flood under way")
            _turn_acme_on_by_hand(svc)
            result = eventually(outcome, ISSUE_TIMEOUT, interval=0.2, what="the order's outcome")
        finally:
            stop.set()
            flood.join()
        assert result == "issued", result
        # both slots were held all along (they still answer): every validation came in through a refusal
        assert request_on(first) == request_on(second) == b"HTTP/1.1 200 OK"
    assert ca.validations() >= 2


def _get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_bad_acme_settings_are_refused_with_a_400_naming_the_field(service, tmp_path):
    svc = service({"ip_http_port": f"127.0.0.1:{free_port()}", "admin_password_hash": PASSWORD_HASH})
    (tmp_path / "not-pem.txt").write_text("hello\n")
    for changes, reason in (({"acme_domains": "pbx.example.com 192.0.2.7"}, "is an IP address"),
                            ({"acme_domains": "*.example.com"}, "wildcard"),
                            ({"acme_email": "admin-at-example.com"}, "not an e-mail address"),
                            ({"acme_directory": "http://ca.example/directory"}, "https://"),
                            ({"acme_ca_bundle": str(tmp_path / "missing.pem")}, "cannot be read"),
                            ({"acme_ca_bundle": str(tmp_path / "not-pem.txt")}, "no PEM certificate")):
        answer = requests.put(svc.url("/api/settings/ports"), auth=AUTH, json=changes, timeout=10)
        assert answer.status_code == 400, changes
        (field,) = changes
        assert list(answer.json()["errors"]) == [field] and reason in answer.json()["errors"][field]
    assert "acme_" not in svc.config_path.read_text()  # nothing written


def test_uploaded_certificate_serves_until_acme_has_one_and_again_when_acme_is_off(service, pebble, tmp_path):
    cert, key = make_cert(name="pbx.test")
    (tmp_path / "up.crt").write_bytes(cert)
    (tmp_path / "up.key").write_bytes(key)
    svc, ca = acme_service(service, pebble, tls_cert=str(tmp_path / "up.crt"), tls_key=str(tmp_path / "up.key"))
    wait_for(svc, issued, "the ACME certificates")
    page = requests.get(svc.url("/settings/ports"), auth=AUTH, timeout=10).text
    assert "The uploaded certificate is kept and serves again if ACME is turned off" in page
    assert requests.put(svc.url("/api/settings/ports"), auth=AUTH, json={"acme_domains": ""}, timeout=10).status_code == 200
    certificate = health(svc)["certificate"]
    assert certificate["source"] == "uploaded" and certificate["chains"][0]["subject"] == "CN=pbx.test"


def test_the_generated_pair_gives_rsa_or_ecdsa_by_the_clients_signature_algorithms(service):
    svc = service({"ip_https_port": f"127.0.0.1:{free_port()}", "ip_ldap_port": f"127.0.0.1:{free_port()}",
                   "ip_ldaps_port": f"127.0.0.1:{free_port()}"})
    for sigalgs, kind in (("RSA-PSS+SHA256:RSA+SHA256", "RSA"), ("ECDSA+SHA256", "ECDSA")):
        for port, starttls in ((svc.port("ip_https_port"), False), (svc.port("ip_ldaps_port"), False), (svc.port("ip_ldap_port"), True)):
            leaf = served_leaf(port, "localhost", sigalgs, starttls)
            assert kind_of(leaf) == kind and leaf.issuer == leaf.subject, (port, sigalgs)
    # a client that takes both (curl, browsers) gets ECDSA: the generated ECDSA certificate verifies it
    assert subprocess.run(["curl", "-sS", "--cacert", str(svc.cert_path), "-o", "/dev/null", svc.url("/healthz", "https")],
                          capture_output=True, timeout=30).returncode == 0


def test_a_renewal_window_from_the_authority_brings_renewal_forward(service, pebble, tmp_path):
    """ARI (RFC 9773): pebble's certificates last five years, so only the window can make this renewal."""
    from datetime import UTC, datetime, timedelta

    from support.pebble import RenewalInfo

    http_port = free_port()
    ca = pebble(http_port)
    ari = RenewalInfo(ca, lambda now: (now - timedelta(minutes=2), now - timedelta(minutes=1)))  # passed: renew now
    try:
        # a window renews a certificate 6 hours old at least (an authority that always says "now" makes no storm
        # of orders: tests/core/test_acme_core.py); pebble's are seconds old here
        svc = service({"ip_http_port": f"127.0.0.1:{http_port}", "ip_https_port": f"127.0.0.1:{free_port()}",
                       "acme_domains": " ".join(NAMES), "acme_directory": ari.directory, "acme_ca_bundle": str(ca.bundle)},
                      env={"GREENSERVERS_ACME_ARI_MIN_AGE": "0"})
        audit = svc.directory / "data" / "audit.log"
        wait_for(svc, lambda c: audit.exists() and "renewed" in audit.read_text(), "the renewal ARI asked for")
        renewed = health(svc)["certificate"]  # read after the audit entry: the renewed certificates are served
        first = {s for s in ari.first_serials}
        assert len(first) == 2 and not first & {int(c["serial"], 16) for c in renewed["chains"]}
        assert "inside the renewal window the authority suggests (ARI)" in (svc.directory / "data" / "audit.log").read_text()
        # the new certificates are asked about too, get a window a month out, and are kept. Waited for: the
        # windows the service took in, not the front being asked (asked, the service is still mid-look, one
        # certificate asked about, the old windows shown, the state still "ordering")
        def new_windows_taken_in(certificate) -> bool:
            windows = certificate["acme"]["renewal_windows"].values()
            in_a_week = datetime.now(UTC) + timedelta(days=7)
            return len(windows) == 2 and all(datetime.fromisoformat(w["start"]) > in_a_week for w in windows)

        later = wait_for(svc, new_windows_taken_in, "the windows ARI gives the new certificates")
        assert later["acme"]["renewal_info"] == "offered" and set(ari.asked) - first
        assert {c["serial"] for c in later["chains"]} == {c["serial"] for c in renewed["chains"]}
        assert later["acme"]["state"] == "waiting" and later["acme"]["last_result"] == "issued"
        assert (svc.directory / "data" / "audit.log").read_text().count("renewed") == 1
    finally:
        ari.stop()


def test_an_authority_whose_windows_always_say_now_gets_no_storm_of_orders(service, pebble, tmp_path):
    """A review's authority answered every certificate, the new ones too, with a window already past: 21
    renewals and 270 validations in 75 s. A certificate is renewed for a window once it is 6 hours old."""
    from datetime import UTC, datetime, timedelta

    from support.pebble import RenewalInfo

    http_port = free_port()
    ca = pebble(http_port)
    now_window = lambda now: (now - timedelta(minutes=2), now - timedelta(minutes=1))  # noqa: E731
    ari = RenewalInfo(ca, now_window, later_window=now_window)
    try:
        svc = service({"ip_http_port": f"127.0.0.1:{http_port}", "ip_https_port": f"127.0.0.1:{free_port()}",
                       "acme_domains": " ".join(NAMES), "acme_directory": ari.directory, "acme_ca_bundle": str(ca.bundle)})

        def waiting_with_the_windows_taken_in(certificate) -> bool:
            acme = certificate["acme"]
            return acme["state"] == "waiting" and acme["renewal_info"] == "offered" and len(acme["renewal_windows"]) == 2

        settled = wait_for(svc, waiting_with_the_windows_taken_in, "the windows of the issued certificates taken in")
        assert len(ari.asked) >= 2 and sum("ACME: ordering" in line for line in svc.lines) == 1
        due = datetime.fromisoformat(settled["acme"]["next_check"])
        assert due >= datetime.now(UTC) + timedelta(hours=5)  # the window's renewal waits for the certificates' age
        audit = (svc.directory / "data" / "audit.log").read_text()
        assert audit.count("issued") == 1 and "renewed" not in audit
    finally:
        ari.stop()


def test_an_authority_that_forgot_the_account_gets_it_registered_again(service, pebble, tmp_path):
    svc, ca = acme_service(service, pebble)
    wait_for(svc, issued, "the certificates")
    accounts = svc.directory / "data" / "tls" / "acme" / "account.json"
    first_account = json.loads(accounts.read_text())[ca.directory]["uri"]
    ca.stop_pebble()
    ca.start()  # a new pebble on the same ports: it knows no account (and has a new root)

    more = NAMES + ("more.acme.test",)
    answer = requests.put(svc.url("/api/settings/ports"), auth=AUTH, timeout=10,
                          json={"acme_domains": " ".join(more), "acme_email": "pbx-admin@acme.test"})
    assert answer.status_code == 200
    cert = wait_for(svc, lambda c: issued(c) and all(set(ch["names"]) == set(more) for ch in c["chains"]), "certificates for three names")
    assert cert["acme"]["failures_in_a_row"] == 0
    account = json.loads(accounts.read_text())[ca.directory]
    assert account["uri"] != first_account and account["contact"] == ["mailto:pbx-admin@acme.test"]
    assert curl_https(svc, write_root(ca, tmp_path), "more.acme.test").stdout == "200 0"
