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
import socket
import ssl
import subprocess
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .ports import free_port, free_udp_port
from .service import stop_process
from .wait import eventually

PEBBLE = "/usr/bin/pebble"
CHALLTESTSRV = "/usr/bin/pebble-challtestsrv"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_server_tls(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a leaf for 127.0.0.1/localhost: (ca.pem, cert.pem, key.pem) in `folder`."""
    now = datetime.datetime.now(datetime.UTC)
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
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
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
    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    eventually(listening, timeout, what=f"{proc.args[0]} listening on {port}", retry_on=())


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

    def start(self) -> PebbleCA:
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
        stop_process(self.pebble)

    def stop(self) -> None:
        stop_process(self.pebble)
        stop_process(self.dns)

    def _get(self, url: str) -> bytes:
        context = ssl.create_default_context(cafile=str(self.bundle))
        with urllib.request.urlopen(url, context=context, timeout=10) as answer:
            return answer.read()

    def _management(self, path: str) -> bytes:
        return self._get(f"https://127.0.0.1:{self.management_port}{path}")

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


class RenewalInfo:
    """ACME Renewal Information (RFC 9773) for pebble 2.4, which has none: an HTTPS server on
    loopback whose directory is pebble's plus `renewalInfo`, answered here.

    Every other resource of the directory is pebble's own URL, so accounts, orders and
    certificates still come from pebble. A certificate ID is checked as a CA would: its
    authorityKeyIdentifier part must be the identifier of pebble's intermediate. The first
    serials asked about get `first_window(now)`; any later one `later_window(now)`, a window in a month
    unless given."""

    def __init__(self, ca: PebbleCA, first_window, later_window=None):
        import http.server
        import threading

        self.ca = ca
        self.first_window = first_window
        self.later_window = later_window or (lambda now: (now + datetime.timedelta(days=30), now + datetime.timedelta(days=31)))
        self.asked: list[int] = []  # serials, in the order asked about
        self.first_serials: set[int] = set()
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/dir":
                    directory = json.loads(ca._get(ca.directory))
                    directory["renewalInfo"] = f"https://127.0.0.1:{front.port}/renewal-info"
                    return self._json(200, directory)
                answer = front.answer(self.path)
                if answer is None:
                    return self._json(404, {"type": "urn:ietf:params:acme:error:malformed", "detail": "unknown certificate"})
                return self._json(200, answer, retry_after="21600")

            def _json(self, status, body, retry_after=None):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if retry_after:
                    self.send_header("Retry-After", retry_after)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(ca.folder / "pebble-cert.pem"), str(ca.folder / "pebble-key.pem"))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def answer(self, path: str):
        import base64

        prefix = "/renewal-info/"
        if not path.startswith(prefix) or path.count(".") != 1:
            return None
        aki_part, serial_part = path[len(prefix):].split(".")
        unb64 = lambda text: base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))  # noqa: E731
        intermediate = x509.load_pem_x509_certificate(self.ca._management("/intermediates/0"))
        if unb64(aki_part) != intermediate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest:
            return None
        serial = int.from_bytes(unb64(serial_part), "big", signed=True)
        self.asked.append(serial)
        if len(self.first_serials) < 2:
            self.first_serials.add(serial)
        now = datetime.datetime.now(datetime.UTC)
        start, end = self.first_window(now) if serial in self.first_serials else self.later_window(now)
        return {"suggestedWindow": {"start": start.isoformat().replace("+00:00", "Z"), "end": end.isoformat().replace("+00:00", "Z")}}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
