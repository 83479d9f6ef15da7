"""Capture the LDAP messages real OpenLDAP clients send, for tests/vectors/ldap_vectors.py.

Run once (python tests/vectors/ldap_capture.py > tests/vectors/ldap_vectors.py):
each client talks to a loopback socket answered by the sans-IO session (so it
gets far enough to send its searches); every message it sends is recorded
as hex, in order. Plain LDAP only: what goes inside TLS is the same bytes.
"""

import os
import socket
import subprocess
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from greenservers.addressbook import Contact  # noqa: E402
from greenservers.proto import ber, ldap  # noqa: E402

PASSWORD = "secret"
BIND = ["-x", "-D", "cn=phonebook,dc=pbx", "-w", PASSWORD, "-b", "dc=pbx"]

CAPTURES = [
    # name, program, arguments after -H URL
    ("root_dse", "ldapsearch", ["-x", "-b", "", "-s", "base", "+"]),
    ("anonymous_search", "ldapsearch", ["-x", "-b", "dc=pbx", "(cn=*)"]),
    ("bare_user_bind", "ldapsearch", ["-x", "-D", "phonebook", "-w", PASSWORD, "-b", "dc=pbx", "-s", "one", "(objectClass=*)", "1.1"]),
    ("wrong_password", "ldapsearch", ["-x", "-D", "cn=phonebook,dc=pbx", "-w", "wrong", "-b", "dc=pbx"]),
    (
        "yealink_name",
        "ldapsearch",
        BIND + ["-z", "50", "(|(cn=jo*)(sn=jo*))", "cn", "sn", "givenName", "company", "telephoneNumber", "mobile", "ipPhone"],
    ),
    ("yealink_number", "ldapsearch", BIND + ["(|(telephoneNumber=+49301234567)(mobile=+49301234567)(ipPhone=+49301234567))", "cn"]),
    ("snom_name", "ldapsearch", BIND + ["(&(telephoneNumber=*)(sn=Smi*))", "cn", "sn", "telephoneNumber"]),
    ("snom_number", "ldapsearch", BIND + ["(&(telephoneNumber=030 1234567)(sn=*))", "sn"]),
    ("gigaset_name", "ldapsearch", BIND + ["(displayName=john*)", "displayName", "telephoneNumber"]),
    ("gigaset_number", "ldapsearch", BIND + ["(|(telephoneNumber=0171-555)(mobile=0171-555)(homePhone=0171-555))", "displayName"]),
    ("substring_any", "ldapsearch", BIND + ["(cn=*mit*)", "cn"]),
    (
        "all_filter_types",
        "ldapsearch",
        BIND + ["(&(!(cn=nobody))(|(sn>=a)(sn<=z))(givenName~=jon)(cn:caseIgnoreMatch:=John Smith)(objectClass=inetOrgPerson))", "*"],
    ),
    ("paged", "ldapsearch", BIND + ["-E", "pr=2/noprompt", "(objectClass=person)", "cn"]),
    ("sorted", "ldapsearch", BIND + ["-E", "sss=sn", "(objectClass=person)", "sn"]),
    ("size_limit", "ldapsearch", BIND + ["-z", "1", "(objectClass=person)", "cn"]),
    ("types_only", "ldapsearch", BIND + ["-A", "(cn=John Smith)"]),
    ("whoami", "ldapwhoami", ["-x", "-D", "cn=phonebook,dc=pbx", "-w", PASSWORD]),
    ("compare", "ldapcompare", ["-x", "-D", "cn=phonebook,dc=pbx", "-w", PASSWORD, "cn=John Smith,dc=pbx", "sn:Smith"]),
]
MODIFY = ("modify", "ldapmodify", ["-x", "-D", "cn=phonebook,dc=pbx", "-w", PASSWORD],
          "dn: cn=John Smith,dc=pbx\nchangetype: modify\nreplace: mobile\nmobile: 1\n")

CONTACTS = [
    Contact(1, "John", "Smith", "", "ACME", "+49 30 1234567", "0171 555", "", "201", "john@example.org"),
    Contact(2, "Anna", "Müller", "", "", "030-99887766", "", "", "202", ""),
    Contact(3, "Jonas", "Schmitt", "", "Widgets", "", "+49 171 555", "", "", ""),
]


def serve_once(listener: socket.socket, record: list[bytes]) -> None:
    conn, _ = listener.accept()
    directory = ldap.Directory("dc=pbx", CONTACTS)
    session = ldap.LdapSession(lambda: ldap.Policy(password=PASSWORD), lambda base: directory, lambda: 0.0)
    buffer = b""
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buffer += data
            while True:
                try:
                    size = ber.frame_length(buffer)
                except ber.Incomplete:
                    break
                if len(buffer) < size:
                    break
                record.append(buffer[:size])
                buffer = buffer[size:]
            items = session.receive(data)
            while items:
                item = items.pop(0)
                if isinstance(item, ldap.SearchCursor):
                    while not item.done:
                        items += item.run(float("inf"))
                elif isinstance(item, bytes):
                    conn.sendall(item)
                elif isinstance(item, ldap.Close):
                    return
                if not items and session.backlog:
                    items = session.receive(b"")


def capture(program: str, args: list[str], stdin: str | None = None) -> list[bytes]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    record: list[bytes] = []
    thread = threading.Thread(target=serve_once, args=(listener, record))
    thread.start()
    url = f"ldap://127.0.0.1:{listener.getsockname()[1]}"
    subprocess.run([program, "-H", url, *args], input=stdin, capture_output=True, text=True, timeout=10)
    thread.join(10)
    listener.close()
    return record


def main() -> None:
    print('"""LDAP messages sent by OpenLDAP 2.5 clients (ldapsearch, ldapwhoami, ldapcompare, ldapmodify),')
    print("captured by tests/vectors/ldap_capture.py against the sans-IO session; hex per message, in order.")
    print("The directory they ran against: ldap_capture.CONTACTS under dc=pbx, password 'secret'.")
    print('"""')
    print()
    print("CAPTURED = {")
    for name, program, args in CAPTURES:
        messages = capture(program, args)
        print(f"    {name!r}: [")
        for raw in messages:
            print(f"        {raw.hex()!r},")
        print("    ],")
    name, program, args, stdin = MODIFY
    print(f"    {name!r}: [")
    for raw in capture(program, args, stdin):
        print(f"        {raw.hex()!r},")
    print("    ],")
    print("}")


if __name__ == "__main__":
    main()
