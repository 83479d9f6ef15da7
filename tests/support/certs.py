"""Certificates made for a test: an ECDSA pair, self-signed or signed by another, valid (or not) when the test says."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_cert(name: str = "pbx.example.org", from_days: float = -5 / 1440, until_days: float = 30.0,
              issuer: tuple[bytes, bytes] | None = None) -> tuple[bytes, bytes]:
    """(certificate, key) as PEM: P-256, `name` as its CN and DNS name, valid from `from_days` to `until_days` from now;
    self-signed, or signed by `issuer` (a pair this made)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signer = subject, key
    if issuer is not None:
        issuer_name = x509.load_pem_x509_certificate(issuer[0]).subject
        signer = serialization.load_pem_private_key(issuer[1], password=None)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=from_days)).not_valid_after(now + datetime.timedelta(days=until_days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(signer, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
