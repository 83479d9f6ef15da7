"""LDAP for the tests: the service with an address book, and answers read off a socket (requests are built with ldap_wire)."""

from __future__ import annotations

from pathlib import Path

from greenservers.proto import ber, ldap

from . import ldap_wire as w
from .ports import free_port
from .service import ServiceProcess


def read_until_done(sock) -> list[w.Response]:
    """The responses up to the one that ends the operation (anything but a search entry), or to the close."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return w.parse_responses(data)
        data += chunk
        responses = w.parse_responses(data) if complete(data) else []
        if responses and responses[-1].tag != ldap.SEARCH_RESULT_ENTRY:
            return responses


def complete(data: bytes) -> bool:
    """Whether `data` is whole LDAP messages, none cut."""
    pos = 0
    while pos < len(data):
        try:
            size = ber.frame_length(data[pos:])
        except ber.Incomplete:
            return False
        pos += size
    return pos == len(data)


def ldap_service(directory: Path, contacts_csv: str, ldap_password: str, admin_password: str, ldaps: bool = False) -> ServiceProcess:
    """The service with `contacts_csv` in its address book: LDAP (IPv4 and IPv6, LDAPS too if asked) and HTTP on 127.0.0.1."""
    from greenservers.addressbook import AddressBook
    from greenservers.passwords import hash_password

    book = AddressBook(Path(directory) / "data" / "addressbook.sqlite3")
    book.import_csv(contacts_csv)
    book.close()
    settings = {"ip_ldap_port": str(free_port()), "ip_http_port": f"127.0.0.1:{free_port()}", "ldap_password": ldap_password,
                "admin_password_hash": hash_password(admin_password)}
    if ldaps:
        settings["ip_ldaps_port"] = str(free_port())
    return ServiceProcess(directory, settings).start()
