"""TLS certificate files: the generated self-signed pair, checks of a custom one, contexts.

HTTPS and LDAPS share one certificate. What is served, in this order
(README, "Certificates"): the ACME certificates, when acme_domains is set and
they have been issued (data_dir/tls/acme/, see greenservers.tls.acme); else the
uploaded or configured one (tls_cert, tls_key); else the generated self-signed
one. A custom certificate is refused with a clear message when it cannot be
read, does not parse, has expired, its key does not match, or its RSA key
is shorter than 2048 or longer than 4096 bits; an uploaded RSA key is
checked whole once, in a child process (`check_upload`).

The generated certificate is a pair, ECDSA P-256 and RSA-2048, with the host
name, localhost and the loopback addresses in its subjectAltName (libldap
checks the name it resolved `localhost` to); ACME issues such a pair too. Both
chains go into one context: OpenSSL gives each client the one its signature
algorithms allow (ECDSA first, where the client takes both), so phones that
verify only RSA signatures still connect.

Contexts are built in the worker, after gevent's monkey-patching (one made
before it fails in wrap_socket); `TLSContextHolder` lets new connections pick up a new
certificate without a restart.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import json
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ..config.private import make_private_dir
from ..config.store import atomic_write
from ..sensors import watch_certificate_expiry
from .groups import only_elliptic_curves

SELF_SIGNED_DAYS = 825
RSA_BITS = 2048  # of the RSA keys we make
RSA_MIN_BITS, RSA_MAX_BITS = 2048, 4096  # of those we serve
MAX_CHAIN = 6  # certificates of a chain served (a leaf, its intermediates, perhaps a cross-signed root)
ACME_FOLDER = ("tls", "acme")
ACME_CURRENT = "current.json"  # which files of ACME_FOLDER hold the certificates in use (greenservers.tls.acme writes it)

SELF_SIGNED, UPLOADED, ACME = "self-signed", "uploaded", "ACME"

log = logging.getLogger("greenservers.tls")


class CertificateError(ValueError):
    """A certificate or key that cannot be used; the message says why."""


@dataclass(frozen=True)
class Chain:
    """One certificate chain and its key, as files, with what the page shows of its leaf."""

    kind: str  # "ECDSA", "RSA", or the key type's name
    cert_path: Path
    key_path: Path
    subject: str
    issuer: str
    names: tuple[str, ...]
    serial: int
    not_before: datetime.datetime
    not_after: datetime.datetime


@dataclass(frozen=True)
class CertificatePair:
    """What HTTPS and LDAPS serve: one chain per key type, and where they come from."""

    source: str  # SELF_SIGNED, UPLOADED or ACME
    chains: tuple[Chain, ...]

    @property
    def cert_path(self) -> Path:
        return self.chains[0].cert_path

    @property
    def key_path(self) -> Path:
        return self.chains[0].key_path

    @property
    def subject(self) -> str:
        return self.chains[0].subject

    @property
    def not_after(self) -> datetime.datetime:
        return min(c.not_after for c in self.chains)

    @property
    def self_signed(self) -> bool:
        return self.source == SELF_SIGNED

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(c.kind for c in self.chains)


def key_kind(public_key) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "ECDSA"
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RSA"
    return type(public_key).__name__.replace("PublicKey", "").lstrip("_")


def dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(san.get_values_for_type(x509.DNSName)) + tuple(str(a) for a in san.get_values_for_type(x509.IPAddress))


def check_pem(cert_pem: bytes, key_pem: bytes, now: datetime.datetime | None = None, label: str = "certificate",
              whole_key_check: bool = False, new_chain: bool = False) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """Parse a PEM chain and key; refuse expired, not-yet-valid or mismatched ones, and RSA keys of fewer than
    RSA_MIN_BITS or more than RSA_MAX_BITS (an 8192-bit key made every handshake cost 36-56 ms of the loop).

    `whole_key_check`: an RSA key's consistency is checked too (its primes: 60 ms of CPU at 2048 bits, 0.5 s at
    4096, 7 s at 8192, holding the GIL): for an upload, in a child process (`check_upload`). A key loaded
    from its file (ours, generated or from ACME, or the admin's, checked when uploaded) must match its
    certificate, which is checked every time.

    `new_chain`: an upload's or an authority's chain, which must be in order and short (`_check_chain`); a
    file already configured is served as it was (a chain with its root before its intermediate, which
    OpenSSL loads and TLS 1.3 clients accept, must not stop the worker from starting after an upgrade)."""
    now = now or datetime.datetime.now(datetime.UTC)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise CertificateError(f"{label}: not a PEM certificate ({exc})") from None
    if new_chain:
        _check_chain(chain, label)
    leaf = chain[0]
    _check_rsa_size(leaf.public_key(), label, "the certificate's")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None, unsafe_skip_rsa_key_validation=True)
    except TypeError:
        raise CertificateError(f"{label}: the private key is encrypted; give an unencrypted key") from None
    except ValueError as exc:
        raise CertificateError(f"{label}: not a PEM private key ({exc})") from None
    _check_rsa_size(key, label, "the private")
    if leaf.not_valid_after_utc < now:
        raise CertificateError(f"{label}: expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if leaf.not_valid_before_utc > now:
        raise CertificateError(f"{label}: not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, pub) != leaf.public_key().public_bytes(der, pub):
        raise CertificateError(f"{label}: the private key does not match the certificate")
    if whole_key_check and isinstance(key, rsa.RSAPrivateKey):
        try:
            serialization.load_pem_private_key(key_pem, password=None)
        except ValueError as exc:
            raise CertificateError(f"{label}: the RSA private key is damaged ({exc})") from None
    return leaf, chain


def _check_chain(chain: list[x509.Certificate], label: str) -> None:
    """At most MAX_CHAIN certificates, each signed by the next (a review's authority issued a chain of 300,
    stored and served: every client's handshake failed; and one whose intermediate had not signed the leaf)."""
    if len(chain) > MAX_CHAIN:
        raise CertificateError(f"{label}: a chain of {len(chain)} certificates; at most {MAX_CHAIN} (the certificate, "
                               "then the intermediates that signed it, in order)")
    for number, (child, parent) in enumerate(itertools.pairwise(chain), start=1):
        try:
            child.verify_directly_issued_by(parent)
        except UnsupportedAlgorithm:
            continue  # a signature this library cannot check (RSA-PSS, say): the clients will
        except (ValueError, TypeError, InvalidSignature):
            raise CertificateError(f"{label}: certificate {number} of the chain is not signed by certificate {number + 1}; "
                                   "give the certificate first, then each intermediate that signed the one before") from None


def _check_rsa_size(key, label: str, whose: str) -> None:
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)) and not RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS:
        raise CertificateError(f"{label}: {whose} RSA key has {key.key_size} bits; use {RSA_MIN_BITS} to {RSA_MAX_BITS} "
                               f"(or ECDSA): a larger key makes every TLS handshake cost the server tens of milliseconds")


class UploadChecked(NamedTuple):
    """An uploaded pair checked whole: what is wrong with it (None: nothing), else its leaf's subject and end."""

    problem: str | None
    subject: str = ""
    not_after: datetime.datetime | None = None


def check_upload(cert_pem: bytes, key_pem: bytes) -> UploadChecked:
    """An uploaded pair checked whole; for a child process (run_in_child), which answers what the page says of it."""
    try:
        leaf, _ = check_pem(cert_pem, key_pem, whole_key_check=True, new_chain=True)
    except CertificateError as exc:
        return UploadChecked(str(exc))
    return UploadChecked(None, leaf.subject.rfc4514_string(), leaf.not_valid_after_utc)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"{what} {path}: cannot be read: {exc.strerror or exc}") from None


def load_chain(cert_path: Path, key_path: Path, label: str, key_label: str | None = None) -> Chain:
    """A chain from its files, checked (check_pem)."""
    leaf, _ = check_pem(_read(cert_path, label), _read(key_path, key_label or label), label=f"{label} {cert_path}")
    return Chain(key_kind(leaf.public_key()), cert_path, key_path, leaf.subject.rfc4514_string(), leaf.issuer.rfc4514_string(),
                 dns_names(leaf), leaf.serial_number, leaf.not_valid_before_utc, leaf.not_valid_after_utc)


def private_key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def new_private_key(kind: str):
    """A new key of `kind` ("ECDSA": P-256, "RSA": 2048 bits; the RSA one takes up to a few hundred ms)."""
    return ec.generate_private_key(ec.SECP256R1()) if kind == "ECDSA" else rsa.generate_private_key(65537, RSA_BITS)


def generate_self_signed(cert_path: Path, key_path: Path, hostname: str | None = None, kind: str = "ECDSA") -> None:
    hostname = hostname or socket.gethostname()
    key = new_private_key(kind)
    names = [x509.DNSName(n) for n in dict.fromkeys([hostname, socket.getfqdn(), "localhost"]) if n]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    now = datetime.datetime.now(datetime.UTC)
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
    atomic_write(key_path, private_key_pem(key))
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def self_signed_paths(data_dir: Path, kind: str = "ECDSA") -> tuple[Path, Path]:
    stem = "selfsigned" if kind == "ECDSA" else "selfsigned-rsa"
    return data_dir / "tls" / f"{stem}.crt", data_dir / "tls" / f"{stem}.key"


def _self_signed(data_dir: Path) -> CertificatePair:
    chains = []
    for kind in ("ECDSA", "RSA"):
        cert_path, key_path = self_signed_paths(data_dir, kind)
        try:
            chains.append(load_chain(cert_path, key_path, "generated certificate"))
        except CertificateError:
            generate_self_signed(cert_path, key_path, kind=kind)
            chains.append(load_chain(cert_path, key_path, "generated certificate"))
    return CertificatePair(SELF_SIGNED, tuple(chains))


def acme_folder(data_dir: Path) -> Path:
    return data_dir.joinpath(*ACME_FOLDER)


def acme_current(folder: Path) -> dict:
    """current.json of the ACME folder: {"chains": {kind: {"cert", "key", "directory", "names"}}}; {} when absent."""
    try:
        current = json.loads((folder / ACME_CURRENT).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.error("%s: cannot be read, the ACME certificates are not used: %s", folder / ACME_CURRENT, exc)
        return {}
    chains = current.get("chains") if isinstance(current, dict) else None
    return current if isinstance(chains, dict) and all(isinstance(f, dict) for f in chains.values()) else {}


def acme_files(folder: Path, files: dict) -> tuple[Path, Path]:
    """The certificate and key files of one entry of current.json, inside `folder` whatever it says."""
    return folder / Path(str(files.get("cert"))).name, folder / Path(str(files.get("key"))).name


def acme_certificate(data_dir: Path) -> CertificatePair | None:
    """The ACME certificates in use, or None when there are none (yet) that can be used."""
    folder = acme_folder(data_dir)
    chains = []
    for kind, files in sorted(acme_current(folder).get("chains", {}).items()):
        try:
            chains.append(load_chain(*acme_files(folder, files), f"ACME {kind} certificate"))
        except CertificateError as exc:
            log.warning("%s", exc)  # expired or damaged: the others (or the fallback) serve
    return CertificatePair(ACME, tuple(chains)) if chains else None


def ensure_certificate(settings) -> CertificatePair:
    """The certificate to serve: ACME's when on and issued, else the custom one (checked), else the generated pair."""
    if settings.acme_domains:
        issued = acme_certificate(settings.data_path)
        if issued is not None:
            return issued
    if settings.tls_cert:
        cert_path = settings.resolve(settings.tls_cert)
        key_path = settings.resolve(settings.tls_key) if settings.tls_key else cert_path
        return CertificatePair(UPLOADED, (load_chain(cert_path, key_path, "tls_cert", "tls_key"),))
    return _self_signed(settings.data_path)


def server_context(pair: CertificatePair) -> ssl.SSLContext:
    """A server-side context: TLS 1.2 and newer, key exchange on elliptic curves only (tls.groups), every chain
    of the pair loaded (one per key type)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    only_elliptic_curves(context)
    for chain in pair.chains:
        try:
            context.load_cert_chain(str(chain.cert_path), str(chain.key_path))
        except (OSError, ssl.SSLError) as exc:
            raise CertificateError(f"{chain.cert_path}: cannot be loaded: {exc}") from None
    return context


class TLSContextHolder:
    """The current server context; replaced whole so new connections use a new certificate
    (connections already open keep theirs)."""

    def __init__(self, pair: CertificatePair):
        self.pair = pair
        self.context = server_context(pair)
        watch_certificate_expiry(pair.not_after)

    def replace(self, pair: CertificatePair) -> None:
        self.install(pair, server_context(pair))

    def install(self, pair: CertificatePair, context: ssl.SSLContext) -> None:
        """Serve `pair` through `context` (made by server_context, perhaps in another thread)."""
        self.pair, self.context = pair, context
        watch_certificate_expiry(pair.not_after)


def check_ca_bundle(path: Path) -> None:
    """A PEM file of one or more CA certificates, or CertificateError saying why not."""
    data = _read(path, "CA bundle")
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateError(f"{path}: holds no PEM certificate") from None
