"""Certificates: the generated one, and the checks that refuse an unusable custom one; how an ACME failure is
described (in full behind the login, by category alone on the public /healthz)."""

import ipaddress
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from support.certs import make_cert

from greenservers.config.settings import Settings
from greenservers.tls.acme import AcmeManager, OrderRequest, describe_error
from greenservers.tls.certificates import CertificateError, check_pem, check_upload, ensure_certificate, load_chain, server_context

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


def rsa_pair(bits: int, damaged: bool = False) -> tuple[bytes, bytes]:
    """(certificate, key) as PEM with an RSA key of `bits`; `damaged`: its private exponent is wrong (the public
    key, so the match with the certificate, is right)."""
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(65537, bits)
    if damaged:
        n = key.private_numbers()
        key = rsa.RSAPrivateNumbers(n.p, n.q, n.d + 2, n.dmp1, n.dmq1, n.iqmp, n.public_numbers).private_key(
            unsafe_skip_rsa_key_validation=True)
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pbx.example.org")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=30))
            .sign(rsa.generate_private_key(65537, 2048), hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


@pytest.mark.parametrize("bits", [1024, 4160])
def test_an_rsa_key_outside_2048_to_4096_bits_is_refused(bits):
    """An uploaded RSA-8192 key made every handshake, anyone's, cost 36-56 ms of the loop."""
    cert, key = rsa_pair(bits)
    with pytest.raises(CertificateError, match=f"RSA key has {bits} bits; use 2048 to 4096"):
        check_pem(cert, key)


def test_an_uploaded_rsa_key_is_checked_whole_a_loaded_one_is_not():
    """The whole check (its primes) holds the GIL 60 ms at 2048 bits: an upload's runs in a child process
    (check_upload), which also answers what the page says of the pair; a key loaded from its file must match its
    certificate, and is loaded as it is."""
    cert, key = rsa_pair(2048, damaged=True)
    assert "damaged" in check_upload(cert, key).problem
    check_pem(cert, key)  # it matches its certificate
    good_cert, good_key = rsa_pair(2048)
    leaf, _ = check_pem(good_cert, good_key)
    assert check_upload(good_cert, good_key) == (None, leaf.subject.rfc4514_string(), leaf.not_valid_after_utc)


def test_a_chain_must_be_in_order_and_short():
    """A review's authority issued a chain of 300 (stored and served: every client's handshake failed) and one
    whose intermediate had not signed the leaf."""
    ca = make_cert("Test CA")
    leaf, key = make_cert("pbx.example.org", issuer=ca)
    check_pem(leaf + ca[0], key, new_chain=True)
    with pytest.raises(CertificateError, match="certificate 1 of the chain is not signed by certificate 2"):
        check_pem(leaf + make_cert("Other CA")[0], key, new_chain=True)
    with pytest.raises(CertificateError, match="certificate 2 of the chain is not signed by certificate 3"):
        check_pem(leaf + ca[0] + make_cert("Other CA")[0], key, new_chain=True)
    with pytest.raises(CertificateError, match="a chain of 7 certificates; at most 6"):
        check_pem(leaf + ca[0] * 6, key, new_chain=True)
    assert "not signed" in check_upload(leaf + make_cert("Other CA")[0], key).problem  # an upload's is new


def test_a_configured_chain_out_of_order_still_loads(tmp_path):
    """A file configured before the chain checks (its root before its intermediate, as a CA bundle appended
    makes it; OpenSSL loads it) must not stop the worker from starting after an upgrade."""
    root = make_cert("Root CA")
    intermediate = make_cert("Intermediate CA", issuer=root)
    leaf, key = make_cert("pbx.example.org", issuer=intermediate)
    cert_path, key_path = tmp_path / "c.pem", tmp_path / "k.pem"
    cert_path.write_bytes(leaf + root[0] + intermediate[0])
    key_path.write_bytes(key)
    assert load_chain(cert_path, key_path, "tls_cert").subject == "CN=pbx.example.org"


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


def test_an_acme_failure_is_public_only_as_its_category(tmp_path):
    """A local file error names a path: the log and the Ports page (detail) have it, /healthz only the category."""
    folder = tmp_path / "secret-looking-folder" / "tls" / "acme"
    request = OrderRequest(("pbx.test",), "", "https://ca.test/dir", None, folder)
    problem = describe_error(PermissionError(13, "Permission denied", str(folder / "ecdsa-1.key")), request)
    assert str(folder) in problem.detail and "Permission denied" in problem.detail
    assert problem.category == "ACME: the certificates could not be stored (a local file error)"
    manager = AcmeManager(SimpleNamespace(settings=Settings.from_raw({"acme_domains": "pbx.test"})))
    manager.status.last_error = problem
    manager.status.renewal_info, manager.status.renewal_info_detail = "could not be fetched", f"reading {folder}: denied"
    public, behind_login = manager.view(), manager.view(detail=True)
    assert public["last_error"] == problem.category and public["renewal_info"] == "could not be fetched"
    assert str(tmp_path) not in json.dumps(public)
    assert behind_login["last_error"] == problem.detail and str(folder) in behind_login["renewal_info"]
    unexpected = describe_error(ValueError(f"odd value in {Path('/etc/greenservers/secret.toml')}"), request)
    assert unexpected.category == "ACME: an unexpected error (the log has it)" and "/etc" in unexpected.detail
