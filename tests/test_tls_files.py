"""Certificates: the generated one, and the checks that refuse an unusable custom one."""

import datetime
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from greenservers.config.settings import Settings
from greenservers.tls.certificates import CertificateError, check_pem, ensure_certificate, server_context


def make_pair(days_valid=30, start_offset_days=-1):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pbx.test")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now + datetime.timedelta(days=start_offset_days))
        .not_valid_after(now + datetime.timedelta(days=start_offset_days + days_valid)).sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_generated_certificate_names_host_localhost_and_loopback(tmp_path):
    settings = Settings.from_raw({"data_dir": str(tmp_path / "data")})
    pair = ensure_certificate(settings)
    assert pair.self_signed and pair.key_path.stat().st_mode & 0o077 == 0
    cert = x509.load_pem_x509_certificate(pair.cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")} <= set(san.get_values_for_type(x509.IPAddress))
    # kept on the next start, and usable
    assert ensure_certificate(settings).cert_path.read_bytes() == pair.cert_path.read_bytes()
    server_context(pair)


def test_custom_certificate_is_used(tmp_path):
    cert, key = make_pair()
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    settings = Settings.from_raw({"tls_cert": "c.pem", "tls_key": "k.pem"}, tmp_path)
    pair = ensure_certificate(settings)
    assert not pair.self_signed and pair.subject == "CN=pbx.test"


def test_mismatched_key_is_refused():
    cert, _ = make_pair()
    _, other_key = make_pair()
    with pytest.raises(CertificateError, match="does not match"):
        check_pem(cert, other_key)


def test_expired_is_refused():
    cert, key = make_pair(days_valid=2, start_offset_days=-10)
    with pytest.raises(CertificateError, match="expired on"):
        check_pem(cert, key)


def test_not_yet_valid_is_refused():
    cert, key = make_pair(start_offset_days=3)
    with pytest.raises(CertificateError, match="not valid before"):
        check_pem(cert, key)


def test_garbage_is_refused():
    cert, key = make_pair()
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        check_pem(b"hello", key)
    with pytest.raises(CertificateError, match="not a PEM private key"):
        check_pem(cert, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


def test_unreadable_file_is_refused(tmp_path):
    settings = Settings.from_raw({"tls_cert": "missing.pem", "tls_key": "missing.key"}, tmp_path)
    with pytest.raises(CertificateError, match="cannot be read"):
        ensure_certificate(settings)
