"""The LDAP server in the running service with 1,000 contacts, driven by OpenLDAP's ldapsearch/ldapmodify.

One service for the module: LDAP (plain + StartTLS) and LDAPS on dual-stack
ports, HTTP for the sensors. The address book is written through
AddressBook before the start. Then bad input over raw sockets: random
bytes, truncated and over-long lengths, deep filters, a 10 MB message and
many idle connections; after each the service still answers.
"""

from __future__ import annotations

import base64
import csv
import io
import os
import random
import socket
import subprocess
import time

import pytest
import requests
from support import ldap_service, ldap_wire as w

from greenservers.addressbook import AddressBook
from greenservers.proto import ldap

pytestmark = pytest.mark.real_client

PASSWORD = "phones-secret-7"
ADMIN_PASSWORD = "ldap-test-admin-pw"
COUNT = 1000
FIRST = ["John", "Anna", "Peter", "Maria", "Klaus", "Sabine", "Thomas", "Julia", "Jörg", "Zoë"]
LAST = ["Smith", "Müller", "Schmidt", "Meier", "Schulz", "Becker", "Wagner", "Hoffmann", "Jones", "O'Brien",
        "Weber", "Koch", "Richter", "Klein", "Wolf", "Neumann", "Braun", "Krüger", "Zimmermann", "Hartmann"]


def contacts() -> list[dict]:
    rng = random.Random(42)
    rows = []
    for i in range(COUNT):
        rows.append({
            "first_name": FIRST[i % len(FIRST)], "last_name": f"{LAST[i % len(LAST)]}{i // len(LAST)}",
            "display_name": "", "company": rng.choice(["ACME", "Widgets", ""]),
            "work": f"+49 30 {1000000 + i}", "mobile": f"0171-{2000000 + i}" if i % 3 == 0 else "",
            "home": f"(089) {3000000 + i}" if i % 5 == 0 else "", "extension": str(100 + i), "email": "",
        })
    rows.append({"first_name": "", "last_name": "", "display_name": "Reception", "company": "ACME", "work": "030 555 0100",
                 "mobile": "", "home": "", "extension": "9", "email": "desk@example.org"})
    return rows


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(contacts()[0]))
    writer.writeheader()
    writer.writerows(contacts())
    proc = ldap_service(tmp_path_factory.mktemp("ldap"), out.getvalue(), PASSWORD, ADMIN_PASSWORD, ldaps=True)
    yield proc
    proc.stop()


def url(svc, scheme: str = "ldap", host: str = "127.0.0.1") -> str:
    key = "ip_ldaps_port" if scheme == "ldaps" else "ip_ldap_port"
    return f"{scheme}://{host}:{svc.port(key)}"


def ldapsearch(svc, *args: str, scheme: str = "ldap", host: str = "127.0.0.1", bind: bool = True,
               program: str = "ldapsearch", stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, LDAPTLS_CACERT=str(svc.cert_path), LDAPTLS_REQCERT="demand")
    credentials = ["-D", "cn=phonebook,dc=pbx", "-w", PASSWORD] if bind else []
    base = ["-b", "dc=pbx"] if program == "ldapsearch" else []
    return subprocess.run([program, "-x", "-H", url(svc, scheme, host), *credentials, *base, *args],
                          capture_output=True, text=True, env=env, input=stdin, timeout=30)


def dns(result: subprocess.CompletedProcess) -> list[str]:
    """The DNs in ldapsearch's LDIF output ("dn:: " lines are base64, for non-ASCII names)."""
    found = []
    for line in result.stdout.splitlines():
        if line.startswith("dn: "):
            found.append(line[4:])
        elif line.startswith("dn:: "):
            found.append(base64.b64decode(line[5:]).decode())
    return found


def sensors(svc) -> dict[str, int]:
    return svc.sensors(ADMIN_PASSWORD)


def assert_still_answering(svc) -> None:
    result = ldapsearch(svc, "-LLL", "(cn=reception)", "ipPhone")
    assert result.returncode == 0 and "ipPhone: 9" in result.stdout, result.stderr
    assert svc.proc.poll() is None


def test_bind_and_name_prefix_search(svc):
    result = ldapsearch(svc, "-LLL", "(|(cn=zoë*)(sn=zoë*))", "cn", "telephoneNumber")
    assert result.returncode == 0, result.stderr
    assert len(dns(result)) == COUNT // len(FIRST)


@pytest.mark.parametrize("vendor_filter, typed, expected", [
    ("(|(cn=%)(sn=%))", "hartmann1*", 11),  # Yealink: sn Hartmann1 and Hartmann10..19
    ("(&(telephoneNumber=*)(sn=%))", "krüger4*", 11),  # Snom name
    ("(|(telephoneNumber=%)(mobile=%)(homePhone=%))", "+49 30 100-0042", 1),  # Gigaset number
    ("(|(telephoneNumber=%)(mobile=%)(homePhone=%))", "0171 2000003", 1),
    ("(|(telephoneNumber=%)(mobile=%)(homePhone=%))", "0049.89.3000005", 1),
    ("(displayName=%)", "RECEPTION", 1),  # Gigaset name, case-insensitive
    ("(&(telephoneNumber=%)(sn=*))", "030 5550100", 1),  # Snom number
])
def test_vendor_filters(svc, vendor_filter, typed, expected):
    result = ldapsearch(svc, "-LLL", vendor_filter.replace("%", typed), "cn")
    assert result.returncode == 0, result.stderr
    assert len(dns(result)) == expected, result.stdout


def test_starttls_with_the_certificate_verified(svc):
    result = ldapsearch(svc, "-ZZ", "-LLL", "(cn=reception)", "cn", host="localhost")
    assert result.returncode == 0, result.stderr
    assert dns(result) == ["cn=Reception,dc=pbx"]


def test_ldaps_with_the_certificate_verified(svc):
    result = ldapsearch(svc, "-LLL", "(ipPhone=109)", "sn", scheme="ldaps", host="localhost")
    assert result.returncode == 0, result.stderr
    assert "sn: O'Brien0" in result.stdout


def test_ldaps_over_ipv6(svc):
    result = ldapsearch(svc, "-LLL", "(ipPhone=109)", "sn", scheme="ldaps", host="[::1]")
    assert result.returncode == 0, result.stderr


def test_root_dse(svc):
    result = subprocess.run(["ldapsearch", "-x", "-H", url(svc), "-b", "", "-s", "base", "-LLL", "+"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "namingContexts: dc=pbx" in result.stdout
    assert "supportedLDAPVersion: 3" in result.stdout
    assert f"supportedExtension: {ldap.OID_STARTTLS}" in result.stdout
    assert f"supportedControl: {ldap.OID_PAGED_RESULTS}" in result.stdout


def test_paging_returns_every_entry_once(svc):
    result = ldapsearch(svc, "-E", "pr=20/noprompt", "(objectClass=*)", "1.1")
    assert result.returncode == 0, result.stderr
    found = dns(result)
    assert len(found) == len(set(found)) == COUNT + 2  # the contacts, Reception and the base entry
    assert result.stdout.count("pagedresults: estimate=1002") == (COUNT + 2 + 19) // 20


def test_server_side_sorting(svc):
    result = ldapsearch(svc, "-E", "sss=sn", "-LLL", "(cn=john*)", "sn")
    assert result.returncode == 0, result.stderr
    surnames = [line[4:] for line in result.stdout.splitlines() if line.startswith("sn: ")]
    assert len(surnames) == COUNT // len(FIRST) and surnames == sorted(surnames, key=str.casefold)


def test_size_limits(svc):
    result = ldapsearch(svc, "-z", "5", "(sn=*)", "1.1")
    assert result.returncode == ldap.SIZE_LIMIT_EXCEEDED and len(dns(result)) == 5
    result = ldapsearch(svc, "(objectClass=*)", "1.1")  # the server's limit
    assert result.returncode == ldap.SIZE_LIMIT_EXCEEDED and len(dns(result)) == ldap.SERVER_SIZE_LIMIT


def test_anonymous_and_wrong_password_are_refused_and_counted(svc):
    before = sensors(svc)["ldap_binds_failed"]
    result = ldapsearch(svc, "(cn=*)", bind=False)
    assert result.returncode == ldap.INSUFFICIENT_ACCESS_RIGHTS and not dns(result)
    env = dict(os.environ)
    result = subprocess.run(["ldapsearch", "-x", "-H", url(svc), "-D", "phonebook", "-w", "wrong", "-b", "dc=pbx"],
                            capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == ldap.INVALID_CREDENTIALS
    assert sensors(svc)["ldap_binds_failed"] >= before + 2
    svc.wait_for_log("LDAP bind as")  # one line per address and minute
    assert PASSWORD not in svc.log and "wrong" not in svc.log


def test_ldapmodify_is_refused(svc):
    change = "dn: cn=Reception,dc=pbx\nchangetype: modify\nreplace: ipPhone\nipPhone: 10\n"
    result = ldapsearch(svc, program="ldapmodify", stdin=change)
    assert result.returncode == ldap.UNWILLING_TO_PERFORM, result.stderr
    assert_still_answering(svc)


def test_a_change_to_the_address_book_is_visible_at_once(svc):
    book = AddressBook(svc.directory / "data" / "addressbook.sqlite3")
    try:
        contact = book.add({"first_name": "Newly", "last_name": "Added", "work": "+1 555 0199"})
        result = ldapsearch(svc, "-LLL", "(telephoneNumber=0015550199)", "cn")
        assert dns(result) == ["cn=Newly Added,dc=pbx"]
        book.delete(contact.id)
        assert dns(ldapsearch(svc, "-LLL", "(sn=added)", "cn")) == []
    finally:
        book.close()


def test_searches_and_connections_are_counted(svc):
    before = sensors(svc)
    assert_still_answering(svc)
    after = sensors(svc)
    assert after["ldap_searches"] >= before["ldap_searches"] + 1
    with socket.create_connection(("127.0.0.1", svc.port("ip_ldap_port"))) as held:
        held.sendall(w.bind(1, "phonebook", PASSWORD))
        assert w.parse_responses(held.recv(100))[0].code == 0
        assert sensors(svc)["ldap_connections_open"] >= 1


# -- bad input -----------------------------------------------------------------------------


def exchange(svc, data: bytes, wait: float = 3.0) -> bytes:
    """Send `data`, read until the server closes (or `wait` passes); what came back."""
    received = b""
    with socket.create_connection(("127.0.0.1", svc.port("ip_ldap_port")), timeout=wait) as sock:
        try:
            sock.sendall(data)
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionError):
            pass
    return received


def test_random_bytes(svc):
    rng = random.Random(3)
    for _ in range(20):
        exchange(svc, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))), wait=1.0)
    assert_still_answering(svc)


@pytest.mark.parametrize("data", [
    b"\x30\x84\xff\xff\xff\xff\x02\x01\x01",  # over-long length: 4 GiB
    b"\x30\x85\x01\x00\x00\x00\x00",  # a length field of 5 bytes
    b"\x30\x80\x02\x01\x01\x42\x00\x00\x00",  # indefinite length
    w.bind(1, "phonebook", PASSWORD) + w.search(2, "(" + "!(" * 100 + "cn=x" + ")" * 101),  # deeply nested filter
])
def test_bad_lengths_and_nesting_get_a_notice_of_disconnection(svc, data):
    responses = w.parse_responses(exchange(svc, data))
    assert responses[-1].name == ldap.OID_NOTICE_OF_DISCONNECTION and responses[-1].code == ldap.PROTOCOL_ERROR
    assert_still_answering(svc)


def test_truncated_message_then_silence_is_only_a_held_connection(svc):
    data = w.bind(1, "phonebook", PASSWORD)
    assert exchange(svc, data[:-3], wait=0.5) == b""  # nothing to answer yet; the server waits for the rest
    assert_still_answering(svc)


def test_a_10_mb_message_is_refused_from_its_header(svc):
    body = w.search(2, "(cn=" + "x" * (10 * 1024 * 1024) + ")")
    received = b""
    with socket.create_connection(("127.0.0.1", svc.port("ip_ldap_port")), timeout=10) as sock:
        sock.sendall(body[:65536])  # the server decides on the header; the rest would only be discarded
        while chunk := sock.recv(65536):
            received += chunk
        with pytest.raises(OSError):  # the server has closed the connection
            for offset in range(65536, len(body), 1 << 20):
                sock.sendall(body[offset:offset + (1 << 20)])
    responses = w.parse_responses(received)
    assert responses[-1].name == ldap.OID_NOTICE_OF_DISCONNECTION and "over the limit" in responses[-1].diagnostic
    assert_still_answering(svc)


def test_many_idle_connections_are_capped_and_others_still_answered(svc):
    opened: list[socket.socket] = []
    try:
        for _ in range(1000):
            # all from 127.0.0.3, so that ldapsearch (from 127.0.0.1 and ::1) is another client
            sock = socket.socket()
            opened.append(sock)
            sock.bind(("127.0.0.3", 0))
            sock.settimeout(5)
            sock.connect(("127.0.0.1", svc.port("ip_ldap_port")))
        # the connections over the per-address cap are closed by the server at once
        deadline = time.monotonic() + 20
        alive = list(opened)
        while time.monotonic() < deadline:
            still = []
            for sock in alive:
                sock.settimeout(0.0)
                try:
                    if sock.recv(1) == b"":
                        continue  # closed by the server
                except BlockingIOError:
                    pass
                still.append(sock)
            alive = still
            if len(alive) <= 256:
                break
            time.sleep(0.05)  # polling the condition, bounded by the deadline
        assert len(alive) == 256
        svc.wait_for_log("LDAP connection refused")
        # another client address is still served, over IPv4 and IPv6
        for host in ("127.0.0.1", "[::1]"):
            result = ldapsearch(svc, "-LLL", "(cn=reception)", "cn", host=host)
            assert result.returncode == 0, result.stderr
    finally:
        for sock in opened:
            sock.close()
    assert_still_answering(svc)


def test_plain_ldap_on_the_ldaps_port_is_dropped_and_logged(svc):
    with socket.create_connection(("127.0.0.1", svc.port("ip_ldaps_port")), timeout=10) as sock:
        sock.sendall(w.bind(1, "phonebook", PASSWORD))
        try:
            while sock.recv(100):  # a TLS alert perhaps, then the close
                pass
        except ConnectionError:
            pass
    svc.wait_for_log("LDAP TLS failed")
    assert_still_answering(svc)


def set_settings(svc, changes: dict) -> None:
    response = requests.put(f"http://127.0.0.1:{svc.port('ip_http_port')}/api/settings/ports", json=changes,
                            auth=("admin", ADMIN_PASSWORD), timeout=10)
    assert response.status_code == 200, response.text


def test_plain_binds_off_and_anonymous_on_apply_without_restart(svc):
    set_settings(svc, {"ldap_plain_bind": False, "ldap_anonymous": True})
    try:
        result = ldapsearch(svc, "-LLL", "(cn=reception)", "cn")
        assert result.returncode == ldap.CONFIDENTIALITY_REQUIRED, result.stderr
        result = ldapsearch(svc, "-ZZ", "-LLL", "(cn=reception)", "cn", host="localhost")
        assert result.returncode == 0 and dns(result) == ["cn=Reception,dc=pbx"], result.stderr
        result = ldapsearch(svc, "-LLL", "(cn=reception)", "cn", bind=False)  # anonymous reading allowed now
        assert result.returncode == 0 and dns(result) == ["cn=Reception,dc=pbx"], result.stderr
    finally:
        set_settings(svc, {"ldap_plain_bind": True, "ldap_anonymous": False})
    assert_still_answering(svc)


def test_a_new_base_dn_applies_without_restart(svc):
    set_settings(svc, {"ldap_base": "ou=Phones,dc=example,dc=com"})
    try:
        result = subprocess.run(["ldapsearch", "-x", "-H", url(svc), "-D", "cn=phonebook,ou=phones,dc=example,dc=com", "-w", PASSWORD,
                                 "-b", "dc=example,dc=com", "-LLL", "(ipPhone=9)", "1.1"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and dns(result) == ["cn=Reception,ou=Phones,dc=example,dc=com"], result.stderr
    finally:
        set_settings(svc, {"ldap_base": "dc=pbx"})
    assert_still_answering(svc)


def test_python_ldap3_client_over_ldaps_with_paging(svc):
    """A second, independent client implementation (ldap3: its own BER decoder and TLS handling)."""
    import ssl

    import ldap3

    tls = ldap3.Tls(ca_certs_file=str(svc.cert_path), validate=ssl.CERT_REQUIRED)
    server = ldap3.Server("localhost", port=svc.port("ip_ldaps_port"), use_ssl=True, tls=tls, get_info=ldap3.DSA)
    with ldap3.Connection(server, "phonebook", PASSWORD, auto_bind=True) as connection:
        assert "dc=pbx" in server.info.naming_contexts
        entries = list(connection.extend.standard.paged_search("dc=pbx", "(sn=Krüger4*)", attributes=["sn", "telephoneNumber"],
                                                               paged_size=4, generator=True))
        assert sorted(e["attributes"]["sn"][0] for e in entries) == sorted(["Krüger4"] + [f"Krüger{n}" for n in range(40, 50)])
        assert connection.search("dc=pbx", "(cn=reception)", attributes=["ipPhone"]) and connection.entries[0].ipPhone.value == "9"


def test_a_change_through_the_web_api_is_visible_to_the_next_ldapsearch(svc):
    api = svc.url("/api/addressbook")
    auth = ("admin", ADMIN_PASSWORD)
    added = requests.post(api, json={"first_name": "Webby", "last_name": "Zuse", "work": "030 7777 1234"}, auth=auth, timeout=10)
    assert added.status_code == 201, added.text
    contact_id = added.json()["id"]
    try:
        # the national number is found by its international prefix, as a phone types it
        assert dns(ldapsearch(svc, "-LLL", "(telephoneNumber=+49 30 7777 12*)", "cn")) == ["cn=Webby Zuse,dc=pbx"]
        changed = requests.put(f"{api}/{contact_id}", json={"last_name": "Zuser"}, auth=auth, timeout=10)
        assert changed.status_code == 200
        assert dns(ldapsearch(svc, "-LLL", "(sn=zuse)", "cn")) == []
        assert dns(ldapsearch(svc, "-LLL", "(sn=zuser)", "cn")) == ["cn=Webby Zuser,dc=pbx"]
        imported = requests.post(f"{api}/import", data="first_name,last_name\nWebby,Zuser\nImpy,Ort\n", auth=auth, timeout=30,
                                 headers={"Content-Type": "text/csv"})
        assert imported.status_code == 200, imported.text
        found = dns(ldapsearch(svc, "-LLL", "(|(sn=zuser)(sn=ort))", "cn"))
        assert sorted(found) == sorted([f"cn=Webby Zuser+uid={contact_id},dc=pbx", "cn=Impy Ort,dc=pbx",
                                        f"cn=Webby Zuser+uid={contact_id + 1},dc=pbx"])
    finally:
        for found in requests.get(api, params={"q": "zuser"}, auth=auth, timeout=10).json() + \
                requests.get(api, params={"q": "impy"}, auth=auth, timeout=10).json():
            requests.delete(f"{api}/{found['id']}", auth=auth, timeout=10)
    assert dns(ldapsearch(svc, "-LLL", "(|(sn=zuser)(sn=ort))", "cn")) == []
