"""ACME in the running service against a real authority: pebble on loopback (tests/pebble_ca.py).

Each test starts its own pebble (its http-01 checks go to the service's HTTP
binding) and the service as in production, with acme_ca_bundle trusting
pebble's HTTPS. Clients check what is served with pebble's root as their only
CA: curl (HTTPS, names given by --resolve), ldapsearch (StartTLS and
ldaps://), openssl s_client (which key type a client that takes only RSA or
only ECDSA signatures gets). Waiting is polling /healthz with a deadline.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import subprocess
import time
from pathlib import Path

import pytest
import requests
from cryptography import x509

from pebble_ca import PebbleCA
from support import free_port
from test_web_auth import PASSWORD, PASSWORD_HASH

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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = health(svc)
        if predicate(state["certificate"]):
            return state["certificate"]
        time.sleep(0.2)
    raise AssertionError(f"{what} not seen within {timeout}s: {health(svc)['certificate']}\n{svc.log[-4000:]}")


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
            assert set(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)) == set(NAMES)

    # files: private folder, private files
    folder = svc.directory / "data" / "tls" / "acme"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())
    assert len(list(folder.glob("*.crt"))) == 2 and len(list(folder.glob("*.key"))) == 3  # two chains, and the account key

    # visible: audit log, sensors, the page
    audit = [json.loads(line) for line in (svc.directory / "data" / "audit.log").read_text().splitlines()]
    assert any(entry["who"] == "acme" and "ECDSA" in entry["note"] and "RSA" in entry["note"] and "issued" in entry["note"] for entry in audit)
    metrics = requests.get(svc.url("/metrics"), auth=AUTH, timeout=10).text
    assert "greenservers_acme_certificates_issued_total 2" in metrics
    assert "greenservers_tls_certificate_days_left " in metrics
    page = requests.get(svc.url("/settings/ports"), auth=AUTH, timeout=10).text
    assert 'id="cert-source">ACME<' in page and "Pebble" in page and NAMES[1] in page
    assert svc.worker_pids == workers


