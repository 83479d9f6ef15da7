"""Certificates: the generated one, and the checks that refuse an unusable custom one."""

import ipaddress

import pytest
from cryptography import x509
from support.certs import make_cert

from greenservers.config.settings import Settings
from greenservers.tls.certificates import CertificateError, check_pem, ensure_certificate, server_context

PBX = "pbx.test"


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
    cert, key = make_cert(PBX)
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    settings = Settings.from_raw({"tls_cert": "c.pem", "tls_key": "k.pem"}, tmp_path)
    pair = ensure_certificate(settings)
    assert not pair.self_signed and pair.subject == "CN=pbx.test"


def test_mismatched_key_is_refused():
    cert, _ = make_cert(PBX)
    _, other_key = make_cert(PBX)
    with pytest.raises(CertificateError, match="does not match"):
        check_pem(cert, other_key)


def test_expired_is_refused():
    cert, key = make_cert(PBX, from_days=-10, until_days=-8)
    with pytest.raises(CertificateError, match="expired on"):
        check_pem(cert, key)


def test_not_yet_valid_is_refused():
    cert, key = make_cert(PBX, from_days=3, until_days=33)
    with pytest.raises(CertificateError, match="not valid before"):
        check_pem(cert, key)


def test_garbage_is_refused():
    cert, key = make_cert(PBX)
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        check_pem(b"hello", key)
    with pytest.raises(CertificateError, match="not a PEM private key"):
        check_pem(cert, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


def test_unreadable_file_is_refused(tmp_path):
    settings = Settings.from_raw({"tls_cert": "missing.pem", "tls_key": "missing.key"}, tmp_path)
    with pytest.raises(CertificateError, match="cannot be read"):
        ensure_certificate(settings)
