"""The address book in the real service (gunicorn + gevent worker), driven by curl and requests."""

from __future__ import annotations

import csv
import io
import json
import subprocess

import requests
from support import free_port

from greenservers.addressbook import FORMULA_STARTS, AddressBook
from greenservers.passwords import hash_password

PASSWORD = "s3cret phone book"


def curl(*args: str) -> subprocess.CompletedProcess:
    command = ["curl", "--silent", "--show-error", "--max-time", "20", "--user", f"admin:{PASSWORD}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def test_import_search_export_through_the_running_service(service, tmp_path):
    svc = service({"ip_http_port": f"127.0.0.1:{free_port()}", "admin_password_hash": hash_password(PASSWORD)})
    api = svc.url("/api/addressbook")
    rows = ["first_name,last_name,company,work,mobile,extension,email"]
    rows += [f"First{i},Last{i},Company {i % 7},+49 30 {i:07d},0171 {i:07d},{100 + i},user{i}@example.com" for i in range(1000)]
    csv_file = tmp_path / "book.csv"
    csv_file.write_text("\n".join(rows) + "\n", encoding="utf-8")

    # curl, as an administrator's script would send it: all or nothing.
    bad = tmp_path / "bad.csv"
    bad.write_text("last_name,work\nGood,1\nBad,phone\n", encoding="utf-8")
    refused = curl("--write-out", "\n%{http_code}", "-H", "Content-Type: text/csv", "--data-binary", f"@{bad}", f"{api}/import")
    assert refused.stdout.rstrip().endswith("400") and '"row":3' in refused.stdout.replace(" ", "")
    done = curl("--fail", "-H", "Content-Type: text/csv", "--data-binary", f"@{csv_file}", f"{api}/import")
    assert done.returncode == 0, done.stderr
    assert '"imported":1000' in done.stdout.replace(" ", "")
    svc.wait_for_log("address book: imported 1000 contacts")

    auth = ("admin", PASSWORD)
    found = requests.get(api, params={"q": "0049-30-000-0777"}, auth=auth, timeout=10).json()
    assert [c["last_name"] for c in found] == ["Last777"]
    assert requests.get(api, auth=auth, timeout=10).status_code == 200
    assert requests.get(api, timeout=10).status_code == 401

    exported = curl("--fail", f"{api}/export")
    assert exported.returncode == 0
    assert exported.stdout.splitlines() == ["first_name,last_name,display_name,company,work,mobile,home,extension,email"] + [
        f"First{i},Last{i},,Company {i % 7},'+49 30 {i:07d},0171 {i:07d},,{100 + i},user{i}@example.com" for i in range(1000)
    ]  # a cell that would start a formula in a spreadsheet gets an apostrophe in front

    # The service keeps the contacts in data_dir; a change made to that file by
    # another process (here: this test) is seen by the service at once.
    outside = AddressBook(svc.directory / "data" / "addressbook.sqlite3")
    try:
        assert len(outside.contacts()) == 1000
        outside.add({"display_name": "Added Elsewhere", "extension": "999"})
    finally:
        outside.close()
    found = requests.get(api, params={"q": "elsewhere"}, auth=auth, timeout=10).json()
    assert [c["display_name"] for c in found] == ["Added Elsewhere"]


def test_export_over_https_starts_no_formula_and_imports_back_the_same(service):
    """Issue 15, item 9, with the real export: curl over HTTPS, then the export imported again."""
    svc = service({"ip_https_port": f"127.0.0.1:{free_port()}", "admin_password_hash": hash_password(PASSWORD)})
    api = svc.url("/api/addressbook", "https")
    tls = ("--cacert", str(svc.cert_path))
    contacts = [
        {"last_name": "Plus", "work": "+49-30-1234", "mobile": "-1-2", "home": "+1 (555) 010-0100"},
        {"company": "'s-Hertogenbosch Telecom", "email": "'quoted@example.com", "extension": "12#"},
        {"first_name": "Plain", "work": "030 1234"},
    ]
    for fields in contacts:
        added = curl(*tls, "--fail", "-H", "Content-Type: application/json", "--data-binary", json.dumps(fields), api)
        assert added.returncode == 0, added.stderr
    before = requests.get(api, auth=("admin", PASSWORD), verify=str(svc.cert_path), timeout=10).json()
    exported = curl(*tls, "--fail", f"{api}/export")
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.reader(io.StringIO(exported.stdout)))
    assert not any(cell.startswith(FORMULA_STARTS) for row in rows for cell in row), rows
    assert rows[1][4:6] == ["'+49-30-1234", "'-1-2"]
    replaced = curl(*tls, "--fail", "-H", "Content-Type: text/csv", "--data-binary", exported.stdout, f"{api}/import?replace=1")
    assert json.loads(replaced.stdout) == {"imported": 3, "total": 3}, replaced.stderr
    after = requests.get(api, auth=("admin", PASSWORD), verify=str(svc.cert_path), timeout=10).json()
    assert [{k: v for k, v in c.items() if k != "id"} for c in after] == [{k: v for k, v in c.items() if k != "id"} for c in before]
    assert curl(*tls, "--fail", f"{api}/export").stdout == exported.stdout
