"""The admin interface attacked as issue 15's review did: the real service, curl over HTTPS.

Sessions (item 6): a session cookie copied before logout, or kept across a new password (set
on the page or with `python -m greenservers passwd`) or a restart, no longer logs anyone in.

Cross-site requests (item 2): a browser that cached the admin's Basic credentials sends them
with whatever another site makes it send: a form post (urlencoded, multipart, text/plain),
`fetch` in no-cors mode or `sendBeacon` (text/plain, or no Content-Type at all), each with
`Origin` and `Sec-Fetch-Site` saying where it came from. None of these may change anything;
the scripts of the README keep working.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from support import free_port
from support.web import PASSWORD, PASSWORD_HASH, csrf_of

EVIL = "https://evil.example"
FORM_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x")


class Admin:
    """curl against one running service over HTTPS, as the admin with HTTP Basic."""

    def __init__(self, svc):
        self.svc = svc
        self.base = svc.url("", "https").rstrip("/")

    def __call__(self, method: str, path: str, *args: str, auth: bool = True) -> tuple[int, str]:
        command = ["curl", "-sS", "--max-time", "20", "--cacert", str(self.svc.cert_path), "-X", method,
                   "-w", "\n%{http_code}", *(["-u", f"admin:{PASSWORD}"] if auth else []), *args, self.base + path]
        done = subprocess.run(command, input="", capture_output=True, text=True, timeout=30)
        body, _, code = done.stdout.rpartition("\n")
        assert code.isdigit(), done.stderr
        return int(code), body

    def json(self, method: str, path: str, body, *headers: str) -> tuple[int, str]:
        args = ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        for header in headers:
            args += ["-H", header]
        return self(method, path, *args)

    def state(self) -> tuple[str, str]:
        """What an attack must not change: the address book (its export) and the Ports settings."""
        book = self("GET", "/api/addressbook/export")
        ports = self("GET", "/api/settings/ports")
        assert book[0] == ports[0] == 200
        return book[1], ports[1]


@pytest.fixture
def admin(service):
    svc = service({"ip_https_port": f"127.0.0.1:{free_port()}", "admin_password_hash": PASSWORD_HASH})
    return Admin(svc)


def test_the_issues_attack_and_every_cross_site_body_change_nothing(admin):
    code, body = admin.json("POST", "/api/addressbook", {"first_name": "Alice", "work": "+49 30 1"})
    assert code == 201, body
    alice = json.loads(body)["id"]
    before = admin.state()

    # exactly as in the issue: no Content-Type, a foreign Origin, the whole book replaced
    code, body = admin("POST", "/api/addressbook/import?replace=1", "-H", "Content-Type:", "-H", f"Origin: {EVIL}",
                       "--data-binary", "first_name\nMallory")
    assert code == 415 and "text/csv" in json.loads(body)["error"], body
    # without the Origin (sendBeacon of a Blob without a type sends none either way)
    for path, data, expected in (("/api/addressbook/import", "first_name\nMallory", "text/csv"),
                                 ("/api/addressbook", '{"first_name": "Mallory"}', "application/json"),
                                 (f"/api/addressbook/{alice}", '{"first_name": "Mallory"}', "application/json"),
                                 ("/api/settings/ports", '{"http_max_conn": 5}', "application/json")):
        method = "PUT" if path.startswith(("/api/settings", f"/api/addressbook/{alice}")) else "POST"
        code, body = admin(method, path, "-H", "Content-Type:", "--data-binary", data)
        assert code == 415 and expected in json.loads(body)["error"] and "had none" in json.loads(body)["error"], body
        # what a cross-site form, fetch(no-cors) or sendBeacon can send
        for content_type in FORM_TYPES:
            code, body = admin(method, path, "-H", f"Content-Type: {content_type}", "--data-binary", data)
            assert code == 415, (path, content_type, body)
        code, body = admin(method, path, "-F", "file=@-;filename=x.csv", "--form-string", "x=1")
        assert code == 415, (path, "curl -F", body)
        # the right type is not enough when the browser says another site sent it
        right = ["-H", f"Content-Type: {expected}", "--data-binary", data]
        for header in (f"Origin: {EVIL}", "Origin: null", f"Origin: {admin.base.replace('https:', 'http:')}",
                       "Sec-Fetch-Site: cross-site", "Sec-Fetch-Site: same-site"):
            code, body = admin(method, path, *right, "-H", header)
            assert code == 403 and "another site" in json.loads(body)["error"], (path, header, body)
    # a media type that merely looks like the one expected
    for content_type in ("application/json; foo=bar", "application/json-seq", "application/merge-patch+json",
                         "application/jsonx", "text/json", "application/json; charset=iso-8859-1", "application/json, text/plain"):
        code, body = admin("POST", "/api/addressbook", "-H", f"Content-Type: {content_type}", "--data-binary", '{"last_name": "M"}')
        assert code == 415, (content_type, body)
    for content_type in ("text/csv; charset=latin-1", "text/csv; header=present", "text/csvx", "text/x-csv"):
        code, body = admin("POST", "/api/addressbook/import", "-H", f"Content-Type: {content_type}", "--data-binary", "last_name\nM")
        assert code == 415, (content_type, body)
    # DELETE takes no body, but a browser's word on where it came from still counts
    for header in (f"Origin: {EVIL}", "Sec-Fetch-Site: cross-site"):
        code, body = admin("DELETE", f"/api/addressbook/{alice}", "-H", header)
        assert code == 403, (header, body)
    # the forms: Basic credentials never stand in for the CSRF token, whatever the body
    for path in ("/logout", "/settings/ports", "/settings/ports/certificate", "/addressbook/add",
                 f"/addressbook/{alice}", f"/addressbook/{alice}/delete", "/addressbook/import"):
        for content_type in FORM_TYPES + ("application/json",):
            code, _ = admin("POST", path, "-H", f"Content-Type: {content_type}", "-H", f"Origin: {EVIL}",
                            "--data-binary", "http_max_conn=5&last_name=Mallory&first_name=Mallory")
            assert code == 403, (path, content_type)
        code, _ = admin("POST", path, "-F", "http_max_conn=5", "-F", "last_name=Mallory", "-F", "file=@-;filename=x.csv")
        assert code == 403, (path, "curl -F")
    assert admin.state() == before


def test_the_readme_scripts_keep_working(admin, tmp_path):
    # README, admin interface: PUT the Ports settings as JSON
    code, body = admin("PUT", "/api/settings/ports", "-H", "Content-Type: application/json",
                       "-d", '{"http_max_conn": 500, "snmp_location": "Rack 4"}')
    assert code == 200 and json.loads(body)["http_max_conn"] == 500, body
    # README, address book: import a file as text/csv, export, search
    book = tmp_path / "book.csv"
    book.write_text("first_name,last_name,work\nAnna,Müller,+49 30 1234\nBernd,Schmidt,030 999\n", encoding="utf-8")
    code, body = admin("POST", "/api/addressbook/import", "-H", "Content-Type: text/csv", "--data-binary", f"@{book}")
    assert code == 200 and json.loads(body)["imported"] == 2, body
    code, body = admin("GET", "/api/addressbook/export")
    assert code == 200 and "Müller" in body
    # a refused import (stored in the worker's child process): each problem by row and field, nothing kept
    code, body = admin("POST", "/api/addressbook/import", "-H", "Content-Type: text/csv",
                       "--data-binary", "last_name,work\nZora,+49 1\nYann,no number\n")
    refused = json.loads(body)
    assert code == 400 and refused["total_errors"] == 1 and refused["errors"][0]["row"] == 3, body
    assert refused["errors"][0]["field"] == "work" and "Zora" not in admin("GET", "/api/addressbook/export")[1]
    code, body = admin("GET", "/api/addressbook?q=0049%2030%201234")
    assert code == 200 and [c["last_name"] for c in json.loads(body)] == ["Müller"]
    # a charset parameter, and a browser's headers when they say this very origin
    code, body = admin("POST", "/api/addressbook", "-H", "Content-Type: application/json; charset=UTF-8",
                       "-H", f"Origin: {admin.base}", "-H", "Sec-Fetch-Site: same-origin", "--data-binary", '{"last_name": "Cora"}')
    assert code == 201, body
    cora = json.loads(body)["id"]
    code, body = admin("POST", "/api/addressbook/import?replace=1", "-H", "Content-Type: text/csv; charset=utf-8",
                       "--data-binary", "last_name\nDora\n")
    assert code == 200 and json.loads(body) == {"imported": 1, "total": 1}, body
    code, body = admin("PUT", f"/api/addressbook/{cora}", "-H", "Content-Type: application/json", "--data-binary", "{}")
    assert code == 404  # replaced away
    code, body = admin("GET", "/api/addressbook")
    dora = json.loads(body)[0]["id"]
    assert admin("DELETE", f"/api/addressbook/{dora}")[0] == 200
    # without credentials, still 401 first
    assert admin("POST", "/api/addressbook", "-H", "Content-Type: application/json", "--data-binary", "{}", auth=False)[0] == 401
    # README, admin interface: a new password through the API
    code, body = admin("PUT", "/api/settings/password", "-H", "Content-Type: application/json",
                       "-d", json.dumps({"current_password": PASSWORD, "new_password": "NEW pass"}))
    assert code == 200, body
    assert admin("GET", "/api/settings/ports")[0] == 401
    assert admin("GET", "/api/settings/ports", "-u", "admin:NEW pass", auth=False)[0] == 200


# -- sessions (item 6): real cookies in curl's cookie jars ---------------------------------------


HTML = ("-H", "Accept: text/html")


def log_in(admin: Admin, jar, password: str = PASSWORD) -> None:
    _, page = admin("GET", "/login", "-c", str(jar), "-b", str(jar), *HTML, auth=False)
    code, _ = admin("POST", "/login", "-c", str(jar), "-b", str(jar), *HTML, "--data-urlencode", f"csrf_token={csrf_of(page)}",
                    "--data-urlencode", "username=admin", "--data-urlencode", f"password={password}", auth=False)
    assert code == 303


def logged_in(admin: Admin, jar) -> bool:
    code, _ = admin("GET", "/settings/ports", "-b", str(jar), *HTML, auth=False)
    assert code in (200, 302)
    return code == 200


def post_form(admin: Admin, jar, path: str, **fields: str) -> int:
    _, page = admin("GET", "/settings/ports", "-b", str(jar), *HTML, auth=False)
    args = ["-b", str(jar), "-c", str(jar), *HTML, "--data-urlencode", f"csrf_token={csrf_of(page)}"]
    for name, value in fields.items():
        args += ["--data-urlencode", f"{name}={value}"]
    return admin("POST", path, *args, auth=False)[0]


def test_a_cookie_copied_before_logout_no_longer_works(admin, tmp_path):
    jar, stolen = tmp_path / "jar", tmp_path / "stolen"
    log_in(admin, jar)
    shutil.copy(jar, stolen)
    assert "greenservers_session" in stolen.read_text()
    assert logged_in(admin, jar) and logged_in(admin, stolen)
    assert post_form(admin, jar, "/logout") == 303
    assert not logged_in(admin, stolen) and not logged_in(admin, jar)
    assert admin("GET", "/api/settings/ports", "-b", str(stolen), auth=False)[0] == 401


def test_passwd_in_the_shell_ends_every_session(admin, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    log_in(admin, first)
    log_in(admin, second)
    mark = len(admin.svc.lines)
    passwd = subprocess.run([sys.executable, "-m", "greenservers", "passwd"], input="from the shell\n", capture_output=True,
                            text=True, env=dict(os.environ, GREENSERVERS_CONFIG=str(admin.svc.config_path)), timeout=60)
    assert passwd.returncode == 0, passwd.stderr
    admin.svc.wait_for_log("configuration file changed: configuration reloaded; changed: admin_password_hash", since=mark)  # no SIGHUP
    assert not logged_in(admin, first) and not logged_in(admin, second)
    assert admin("GET", "/api/settings/ports")[0] == 401
    code, _ = admin("GET", "/api/settings/ports", "-u", "admin:from the shell", auth=False)
    assert code == 200
    log_in(admin, first, password="from the shell")
    assert logged_in(admin, first)


def test_a_new_password_on_the_page_ends_the_other_sessions_and_a_restart_ends_all(admin, tmp_path):
    mine, other = tmp_path / "mine", tmp_path / "other"
    log_in(admin, mine)
    log_in(admin, other)
    code = post_form(admin, mine, "/settings/password", current_password=PASSWORD, new_password="paged anew",
                     new_password_again="paged anew")
    assert code == 303
    assert logged_in(admin, mine) and not logged_in(admin, other)
    admin.svc.stop()
    admin.svc.start()
    assert not logged_in(admin, mine)  # sessions live in the process only: nothing brings one back
    log_in(admin, mine, password="paged anew")
    assert logged_in(admin, mine)
