"""TLS certificate files: the generated self-signed one, checks of a custom one, contexts.

HTTPS and LDAPS share one certificate. A custom certificate (tls_cert,
tls_key) is refused with a clear message when it cannot be read, does not
parse, has expired, or its key does not match. Without one, a self-signed
certificate is generated into data_dir/tls/ on first start, with the host
name, localhost and the loopback addresses in its subjectAltName (libldap
checks the name it resolved `localhost` to).

Contexts are built in the worker, after gevent's monkey-patching
(DESIGN.md §7); `TLSContextHolder` lets new connections pick up a new
certificate without a restart.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .files import make_private_dir
from .store import atomic_write

SELF_SIGNED_DAYS = 825


class CertificateError(ValueError):
    """A certificate or key that cannot be used; the message says why."""


@dataclass(frozen=True)
class CertificatePair:
    cert_path: Path
    key_path: Path
    not_after: datetime.datetime
    subject: str
    self_signed: bool


def check_pem(cert_pem: bytes, key_pem: bytes, now: datetime.datetime | None = None, label: str = "certificate") -> tuple[x509.Certificate, list[x509.Certificate]]:
    """Parse a PEM chain and key; refuse expired, not-yet-valid or mismatched ones."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise CertificateError(f"{label}: not a PEM certificate ({exc})") from None
    leaf = chain[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CertificateError(f"{label}: the private key is encrypted; give an unencrypted key") from None
    except ValueError as exc:
        raise CertificateError(f"{label}: not a PEM private key ({exc})") from None
    if leaf.not_valid_after_utc < now:
        raise CertificateError(f"{label}: expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if leaf.not_valid_before_utc > now:
        raise CertificateError(f"{label}: not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, pub) != leaf.public_key().public_bytes(der, pub):
        raise CertificateError(f"{label}: the private key does not match the certificate")
    return leaf, chain


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"{what} {path}: cannot be read: {exc.strerror or exc}") from None


def generate_self_signed(cert_path: Path, key_path: Path, hostname: str | None = None) -> None:
    hostname = hostname or socket.gethostname()
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(n) for n in dict.fromkeys([hostname, socket.getfqdn(), "localhost"]) if n]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "greenservers")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    make_private_dir(cert_path.parent)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    atomic_write(key_path, key_pem)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def self_signed_paths(data_dir: Path) -> tuple[Path, Path]:
    return data_dir / "tls" / "selfsigned.crt", data_dir / "tls" / "selfsigned.key"


def ensure_certificate(settings) -> CertificatePair:
    """The certificate to serve: the custom one (checked) or the generated one."""
    if settings.tls_cert:
        cert_path = settings.resolve(settings.tls_cert)
        key_path = settings.resolve(settings.tls_key) if settings.tls_key else cert_path
        leaf, _ = check_pem(_read(cert_path, "tls_cert"), _read(key_path, "tls_key"), label=f"tls_cert {cert_path}")
        return CertificatePair(cert_path, key_path, leaf.not_valid_after_utc, leaf.subject.rfc4514_string(), False)
    cert_path, key_path = self_signed_paths(settings.data_path)
    try:
        leaf, _ = check_pem(cert_path.read_bytes(), key_path.read_bytes())
    except (OSError, CertificateError):
        generate_self_signed(cert_path, key_path)
        leaf, _ = check_pem(cert_path.read_bytes(), key_path.read_bytes())
    return CertificatePair(cert_path, key_path, leaf.not_valid_after_utc, leaf.subject.rfc4514_string(), True)


def server_context(pair: CertificatePair) -> ssl.SSLContext:
    """A server-side context: TLS 1.2 and newer, the pair loaded."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(str(pair.cert_path), str(pair.key_path))
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"{pair.cert_path}: cannot be loaded: {exc}") from None
    return context


class TLSContextHolder:
    """The current server context; replaced whole so new connections use a new certificate."""

    def __init__(self, pair: CertificatePair):
        self.pair = pair
        self.context = server_context(pair)

    def replace(self, pair: CertificatePair) -> None:
        context = server_context(pair)
        self.pair, self.context = pair, context
