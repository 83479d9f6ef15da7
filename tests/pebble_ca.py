"""A real ACME authority for the tests: Debian's pebble with pebble-challtestsrv as its DNS.

Everything listens on loopback ports picked at run time. pebble serves its
ACME directory over HTTPS with a certificate made here (a small CA of its
own: `bundle` is what `acme_ca_bundle` points at); the certificates it issues
chain to a root that only its management interface gives out (`root_pem`).
challtestsrv answers every name with 127.0.0.1 (no AAAA, so pebble checks
http-01 on the IPv4 loopback), unless a test gives a name another address.
Readiness is a port that accepts, never a sleep; both processes are stopped by PID.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support import free_port, free_udp_port

PEBBLE = "/usr/bin/pebble"
CHALLTESTSRV = "/usr/bin/pebble-challtestsrv"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_server_tls(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a leaf for 127.0.0.1/localhost: (ca.pem, cert.pem, key.pem) in `folder`."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("pebble test CA")).issuer_name(_name("pebble test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "pebble-ca.pem", folder / "pebble-cert.pem", folder / "pebble-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)  # polling a port for readiness, with a deadline
    raise AssertionError(f"{proc.args[0]} did not listen on {port} within {timeout}s")


class PebbleCA:
    """pebble + challtestsrv on loopback. `http_port` is where pebble checks http-01 answers."""

    def __init__(self, folder: Path, http_port: int, validity_seconds: int | None = None):
        self.folder = Path(folder)
        self.http_port = http_port
        self.validity_seconds = validity_seconds
        self.port = free_port()
        self.management_port = free_port()
        self.dns_port = free_udp_port()
        self.dns_management_port = free_port()
        self.bundle, cert, key = make_server_tls(self.folder)
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(cert), "privateKey": str(key),
            "httpPort": http_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
        }}
        if validity_seconds:
            config["pebble"]["certificateValidityPeriod"] = validity_seconds
        self.config = self.folder / "pebble-config.json"
        self.config.write_text(json.dumps(config))
        self.pebble: subprocess.Popen | None = None
        self.dns: subprocess.Popen | None = None
        self.pebble_log = self.folder / "pebble.log"

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self) -> "PebbleCA":
        if self.dns is None:
            self.dns = subprocess.Popen(
                [CHALLTESTSRV, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-dns01", f"127.0.0.1:{self.dns_port}",
                 "-http01", "", "-https01", "", "-tlsalpn01", "", "-management", f"127.0.0.1:{self.dns_management_port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            wait_for_port(self.dns_management_port, self.dns)
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        with open(self.pebble_log, "ab") as log:
            self.pebble = subprocess.Popen([PEBBLE, "-config", str(self.config), "-dnsserver", f"127.0.0.1:{self.dns_port}"],
                                           stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_for_port(self.port, self.pebble)
        wait_for_port(self.management_port, self.pebble)
        return self

    def stop_pebble(self) -> None:
        _stop(self.pebble)

    def stop(self) -> None:
        _stop(self.pebble)
        _stop(self.dns)

    def _management(self, path: str) -> bytes:
        context = ssl.create_default_context(cafile=str(self.bundle))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.management_port}{path}", context=context, timeout=10) as answer:
            return answer.read()

    def root_pem(self) -> bytes:
        """The root the issued certificates chain to (a new one each time pebble starts)."""
        return self._management("/roots/0")

    def point_name_at(self, name: str, address: str) -> None:
        """challtestsrv answers `name` with `address` from now on."""
        body = json.dumps({"host": name, "addresses": [address]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.dns_management_port}/add-a", data=body, method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def validations(self) -> int:
        """How many http-01 checks pebble has made so far."""
        return self.pebble_log.read_text(errors="replace").count("Attempting to validate w/ HTTP")


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
