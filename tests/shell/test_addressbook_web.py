"""/api/addressbook and the /addressbook page through Flask's test client (no sockets)."""

from __future__ import annotations

import base64
import csv
import io
import random
import re
import sqlite3

import pytest

from greenservers import addressbook as ab
from greenservers.addressbook import store as ab_store
from greenservers.config.settings import Settings
from greenservers.config.store import ConfigStore
from greenservers.passwords import hash_password
from greenservers.process import offload
from greenservers.process.runtime import Runtime
from greenservers.web import create_app

PASSWORD = "correct horse"
PASSWORD_HASH = hash_password(PASSWORD)  # once: scrypt is slow on purpose
AUTH = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
WRONG = {"Authorization": "Basic " + base64.b64encode(b"admin:wrong").decode()}


def make_app(directory, password_hash=PASSWORD_HASH):
    raw = {"data_dir": str(directory / "data")}
    if password_hash:
        raw["admin_password_hash"] = password_hash
    runtime = Runtime(ConfigStore(directory / "greenservers.toml"), Settings.from_raw(raw, directory))
    app = create_app(runtime)
    app.config["TESTING"] = True
    return app, runtime


@pytest.fixture
def app_and_book(tmp_path):
    app, runtime = make_app(tmp_path)
    book = ab.addressbook_for(runtime)
    yield app, book
    ab_store._books.pop(book.path).close()


@pytest.fixture
def client(app_and_book):
    return app_and_book[0].test_client()


@pytest.fixture
def book(app_and_book):
    return app_and_book[1]


ANNA = {
    "first_name": "Anna", "last_name": "Müller", "company": "Acme", "work": "+49 (30) 1234-567",
    "extension": "201", "email": "anna@example.com",
}

ENDPOINTS = [
    ("GET", "/api/addressbook"),
    ("POST", "/api/addressbook"),
    ("GET", "/api/addressbook/1"),
    ("PUT", "/api/addressbook/1"),
    ("DELETE", "/api/addressbook/1"),
    ("POST", "/api/addressbook/import"),
    ("GET", "/api/addressbook/export"),
    ("GET", "/addressbook"),
]


# -- authentication ------------------------------------------------------------------


@pytest.mark.parametrize("method, path", ENDPOINTS)
def test_every_endpoint_needs_the_admin(client, book, method, path):
    book.add(ANNA)
    before = book.export_csv()
    for headers in ({}, WRONG):
        response = client.open(path, method=method, headers=headers, json={"last_name": "X"})
        assert response.status_code == 401, (method, path, headers)
        assert "Basic" in response.headers["WWW-Authenticate"]
        assert b"M\xc3\xbcller" not in response.data
    assert book.export_csv() == before


def test_no_admin_password_set_means_no_access(tmp_path):
    app, runtime = make_app(tmp_path, password_hash="")
    response = app.test_client().get("/api/addressbook", headers=AUTH)
    assert response.status_code == 503 and b"passwd" in response.data


# -- add, list, get, change, delete --------------------------------------------------


def test_add_answers_201_with_the_id(client, book):
    response = client.post("/api/addressbook", json=ANNA, headers=AUTH)
    assert response.status_code == 201
    body = response.get_json()
    assert isinstance(body["id"], int) and body["last_name"] == "Müller" and body["home"] == ""
    assert response.headers["Location"].endswith(f"/api/addressbook/{body['id']}")
    assert book.get(body["id"]).fields() == {**dict.fromkeys(ab.FIELDS, ""), **ANNA}
    assert client.get(f"/api/addressbook/{body['id']}", headers=AUTH).get_json() == body


def test_add_invalid_answers_400_naming_each_field(client, book):
    response = client.post("/api/addressbook", json={"last_name": "A", "work": "call me", "email": "nope", "fax": "1"}, headers=AUTH)
    assert response.status_code == 400
    errors = response.get_json()["errors"]
    assert set(errors) == {"work", "email", "fax"}
    assert all(field in message for field, message in errors.items())
    assert client.post("/api/addressbook", json={"email": "a@example.com"}, headers=AUTH).get_json()["errors"].keys() == {"first_name"}
    assert book.contacts() == []


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'"text"'])
def test_add_needs_a_json_object(client, book, body):
    response = client.post("/api/addressbook", data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400 and "errors" in response.get_json()
    assert book.contacts() == []


def test_list_search_and_paging(client, book):
    anna = book.add(ANNA)
    bernd = book.add({"first_name": "Bernd", "last_name": "Schmidt", "mobile": "0171 555 0100"})
    listed = client.get("/api/addressbook", headers=AUTH)
    assert listed.status_code == 200
    assert listed.get_json() == [anna.as_dict(), bernd.as_dict()]
    assert listed.headers["X-Total-Count"] == "2"
    # A number typed with different formatting, + written as 00.
    assert client.get("/api/addressbook", query_string={"q": "0049 30 123 45 67"}, headers=AUTH).get_json() == [anna.as_dict()]
    assert client.get("/api/addressbook", query_string={"q": "0171-555-0100"}, headers=AUTH).get_json() == [bernd.as_dict()]
    assert client.get("/api/addressbook", query_string={"q": "SCHMI"}, headers=AUTH).get_json() == [bernd.as_dict()]
    assert client.get("/api/addressbook", query_string={"q": "acme"}, headers=AUTH).get_json() == [anna.as_dict()]
    assert client.get("/api/addressbook", query_string={"q": "nobody"}, headers=AUTH).get_json() == []
    assert client.get("/api/addressbook?offset=1&limit=5", headers=AUTH).get_json() == [bernd.as_dict()]
    assert client.get("/api/addressbook?limit=1", headers=AUTH).get_json() == [anna.as_dict()]
    bad = client.get("/api/addressbook?limit=-3", headers=AUTH)
    assert bad.status_code == 400 and "limit" in bad.get_json()["errors"]


def test_change(client, book):
    anna = book.add(ANNA)
    response = client.put(f"/api/addressbook/{anna.id}", json={"mobile": "0171 1", "company": ""}, headers=AUTH)
    assert response.status_code == 200
    assert response.get_json() == {**anna.as_dict(), "mobile": "0171 1", "company": ""}
    assert book.get(anna.id).mobile == "0171 1"


def test_change_invalid_and_missing(client, book):
    anna = book.add(ANNA)
    bad = client.put(f"/api/addressbook/{anna.id}", json={"email": "x@", "company": "New"}, headers=AUTH)
    assert bad.status_code == 400 and "email" in bad.get_json()["errors"]["email"]
    assert book.get(anna.id) == anna
    assert client.put("/api/addressbook/9999", json={"company": "X"}, headers=AUTH).status_code == 404
    assert client.put(f"/api/addressbook/{anna.id}", data="x", headers=AUTH).status_code == 415  # no Content-Type
    assert client.put(f"/api/addressbook/{anna.id}", data="x", headers={**AUTH, "Content-Type": "application/json"}).status_code == 400


def test_delete(client, book):
    anna = book.add(ANNA)
    assert client.delete(f"/api/addressbook/{anna.id}", headers=AUTH).status_code == 200
    assert book.get(anna.id) is None
    assert client.delete(f"/api/addressbook/{anna.id}", headers=AUTH).status_code == 404
    assert client.get(f"/api/addressbook/{anna.id}", headers=AUTH).status_code == 404


# -- import and export -------------------------------------------------------------


def post_csv(client, text, **query):
    data = text.encode("utf-8") if isinstance(text, str) else text
    return client.post("/api/addressbook/import", data=data, query_string=query, headers={**AUTH, "Content-Type": "text/csv"})


def test_import_all_rows(client, book):
    response = post_csv(client, "first_name,last_name,work\nAnna,Müller,+49 30 1\nBernd,Schmidt,030 2\n")
    assert response.status_code == 200 and response.get_json()["imported"] == 2
    assert [c.last_name for c in book.contacts()] == ["Müller", "Schmidt"]


def test_import_with_a_bad_row_in_the_middle_imports_nothing(client, book):
    kept = book.add({"last_name": "Kept"})
    text = "last_name,work,email\nOne,1,\nTwo,2,\nThree,two,three\nFour,4,\nFive,5,\n"
    response = post_csv(client, text)
    assert response.status_code == 400
    body = response.get_json()
    assert [(e["row"], e["field"]) for e in body["errors"]] == [(4, "work"), (4, "email")]
    assert all(e["field"] in e["message"] for e in body["errors"])
    assert book.contacts() == [kept]


def test_import_refuses_what_is_not_utf8_csv(client, book):
    response = post_csv(client, "last_name\nM\xfcller\n".encode("latin-1"))
    assert response.status_code == 400 and "UTF-8" in response.get_json()["errors"][0]["message"]
    response = post_csv(client, "nothing,known\n1,2\n")
    assert response.status_code == 400 and {e["row"] for e in response.get_json()["errors"]} == {1}
    assert book.contacts() == []


def test_import_refuses_an_oversized_body(client, book):
    response = post_csv(client, b"last_name\n" + b"A\n" * (ab.MAX_IMPORT_BYTES // 2 + 64 * 1024))
    assert response.status_code in (400, 413)
    assert book.contacts() == []


def test_export_round_trip(client, book, tmp_path):
    book.add(ANNA)
    book.add({"display_name": 'Reception "Main", 1st floor', "extension": "100"})
    book.add({"company": "Ünïcödé GmbH", "home": "(030) 12.34/5"})
    response = client.get("/api/addressbook/export", headers=AUTH)
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    text = response.get_data(as_text=True)
    assert next(csv.reader(io.StringIO(text))) == list(ab.FIELDS)
    # Into another, empty address book: the same contacts come back.
    other_app, other_runtime = make_app(tmp_path / "other")
    other = ab.addressbook_for(other_runtime)
    try:
        imported = post_csv(other_app.test_client(), text)
        assert imported.status_code == 200 and imported.get_json()["imported"] == 3
        assert [c.fields() for c in other.contacts()] == [c.fields() for c in book.contacts()]
    finally:
        ab_store._books.pop(other.path).close()
    # And replacing this book with its own export changes nothing but the ids.
    assert post_csv(client, text, replace="1").get_json() == {"imported": 3, "total": 3}
    assert client.get("/api/addressbook/export", headers=AUTH).get_data(as_text=True) == text


def test_a_change_through_the_api_reaches_subscribers_at_once(client, book):
    seen = []
    book.subscribe(lambda: seen.append(book.version))
    client.post("/api/addressbook", json=ANNA, headers=AUTH)
    post_csv(client, "last_name\nA\n")
    assert len(seen) == 2 and seen[0] < seen[1]


def test_search_pages_and_counts_through_the_api_as_a_scan_of_the_book_does(client, book):
    """A book of random contacts (a fixed seed), searched through the API page by page: each page and
    X-Total-Count are what matching every contact with the documented rules (`matcher`) gives."""
    rng = random.Random(20261201)
    people = ["Anna", "Jürgen", "Straße", "Zoë", "O'Brien", "Müller", "Schmidt", "Acme GmbH", "Ｗidgets"]
    rows = ["first_name,last_name,display_name,company,work,mobile,home,extension"]
    for _ in range(600):
        first, last, company = (rng.choice(people + [""]) for _ in range(3))
        numbers = [rng.choice(["", f"+49 30 {rng.randrange(10 ** 6):06d}", f"(0171) {rng.randrange(10 ** 5)}-1"]) for _ in range(3)]
        rows.append(",".join([first, last or "Lastly", rng.choice(["", "Reception"]), company, *numbers, rng.choice(["", "1", "201"])]))
    imported = client.post("/api/addressbook/import", data="\n".join(rows) + "\n", headers={**AUTH, "Content-Type": "text/csv"})
    assert imported.status_code == 200
    contacts = book.contacts()
    for q in ["anna", "STRASSE", "ü", "o'b", "ｗid", "0049 30 1", "+49-30", "0171 ", "1-1", "201", "e", "nobody"]:
        matches = ab.matcher(q)
        expected = [c.as_dict() for c in contacts if matches(c)]
        for offset, limit in [(0, None), (0, 50), (37, 25), (len(expected), 10)]:
            paging = {"offset": offset, **({"limit": limit} if limit else {})}
            got = client.get("/api/addressbook", query_string={"q": q, **paging}, headers=AUTH)
            assert got.status_code == 200
            assert got.get_json() == expected[offset:None if limit is None else offset + limit], (q, offset, limit)
            assert got.headers["X-Total-Count"] == str(len(expected))
    assert sum(1 for c in contacts if ab.matcher("anna")(c)) > 50  # the pages above were full ones


# -- the page ---------------------------------------------------------------------


def test_page_lists_and_searches(client, book):
    book.add(ANNA)
    book.add({"last_name": "<script>alert(1)</script>", "work": "0171 1"})
    page = client.get("/addressbook", headers=AUTH)
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "Müller" in html and "+49 (30) 1234-567" in html
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    found = client.get("/addressbook", query_string={"q": "49-30-1234567"}, headers=AUTH).get_data(as_text=True)
    assert "Müller" in found and "&lt;script&gt;" not in found


# -- the page's forms, as a logged-in browser uses them ------------------------------

TOKEN_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
BROWSER = {"Accept": "text/html"}


@pytest.fixture
def browser(client):
    """A test client logged in through the login form; `.token` is its CSRF token."""
    return log_in(client)


def log_in(client):
    login_page = client.get("/login", headers=BROWSER).get_data(as_text=True)
    form = {"csrf_token": TOKEN_RE.search(login_page)[1], "username": "admin", "password": PASSWORD}
    response = client.post("/login", data=form, headers=BROWSER)
    assert response.status_code == 303
    client.token = TOKEN_RE.search(client.get("/addressbook", headers=BROWSER).get_data(as_text=True))[1]
    return client


def test_page_sends_an_anonymous_browser_to_the_login(client):
    response = client.get("/addressbook", headers=BROWSER)
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_page_add_contact(browser, book):
    response = browser.post("/addressbook/add", data={**ANNA, "csrf_token": browser.token}, headers=BROWSER)
    assert response.status_code == 303 and response.headers["Location"].endswith("/addressbook")
    assert [c.fields() for c in book.contacts()] == [{**dict.fromkeys(ab.FIELDS, ""), **ANNA}]
    page = browser.get("/addressbook", headers=BROWSER).get_data(as_text=True)
    assert "Added Anna Müller." in page and 'id="contact-1"' in page


def test_page_forms_need_the_csrf_token(browser, book):
    anna = book.add(ANNA)
    posts = (
        ("/addressbook/add", {"last_name": "X"}),
        (f"/addressbook/{anna.id}/delete", {}),
        (f"/addressbook/{anna.id}", {"last_name": "X"}),
    )
    for path, data in posts:
        for token in (None, "forged"):
            form = dict(data, **({"csrf_token": token} if token else {}))
            assert browser.post(path, data=form, headers=BROWSER).status_code == 403, (path, token)
    upload = {"file": (io.BytesIO(b"last_name\nX\n"), "x.csv")}
    assert browser.post("/addressbook/import", data=upload, content_type="multipart/form-data", headers=BROWSER).status_code == 403
    # The JSON API with the session cookie (not Basic) needs the token in a header.
    assert browser.post("/api/addressbook", json={"last_name": "X"}).status_code == 403
    assert browser.post("/api/addressbook", json={"last_name": "X"}, headers={"X-CSRF-Token": browser.token}).status_code == 201
    assert [c.last_name for c in book.contacts()] == ["Müller", "X"]


def test_page_add_invalid_shows_the_messages_and_keeps_the_values(browser, book):
    form = {"last_name": "Keep me", "work": "call me", "csrf_token": browser.token}
    response = browser.post("/addressbook/add", data=form, headers=BROWSER)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert 'value="Keep me"' in html and 'id="e-work"' in html and "is not a phone number" in html
    assert book.contacts() == []


def test_page_edit_and_delete(browser, book):
    anna = book.add(ANNA)
    form_page = browser.get(f"/addressbook?edit={anna.id}", headers=BROWSER).get_data(as_text=True)
    assert f'action="/addressbook/{anna.id}"' in form_page and 'value="anna@example.com"' in form_page
    changed = {**anna.fields(), "mobile": "0171 2", "csrf_token": browser.token}
    assert browser.post(f"/addressbook/{anna.id}", data=changed, headers=BROWSER).status_code == 303
    assert book.get(anna.id).mobile == "0171 2"
    refused = browser.post(f"/addressbook/{anna.id}", data={**changed, "email": "x"}, headers=BROWSER)
    assert refused.status_code == 400 and book.get(anna.id).email == "anna@example.com"
    assert browser.post(f"/addressbook/{anna.id}/delete", data={"csrf_token": browser.token}, headers=BROWSER).status_code == 303
    assert book.contacts() == []
    assert "Deleted Anna Müller." in browser.get("/addressbook", headers=BROWSER).get_data(as_text=True)


def test_while_another_writer_holds_the_book_every_write_answers_503_with_why_and_nothing_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(ab_store, "BUSY_TIMEOUT", 0.2)
    app, runtime = make_app(tmp_path)
    book = ab.addressbook_for(runtime)
    client = app.test_client()
    anna = book.add(ANNA)
    holder = sqlite3.connect(book.path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer: the CLI, a sqlite3 shell, an import's commit
        writes = [client.post("/api/addressbook", json={"last_name": "New"}, headers=AUTH),
                  client.put(f"/api/addressbook/{anna.id}", json={"last_name": "Changed"}, headers=AUTH),
                  client.delete(f"/api/addressbook/{anna.id}", headers=AUTH),
                  post_csv(client, "last_name\nA\n")]
        for response in writes:
            assert response.status_code == 503 and response.headers["Retry-After"] == "5"
            assert response.get_json() == {"error": "the address book is busy: another writer has held it for 0.2 s; "
                                                    "nothing was changed, try again"}
        browsing = log_in(app.test_client())
        page = browsing.post("/addressbook/add", data={**ANNA, "csrf_token": browsing.token}, headers=BROWSER)
        assert page.status_code == 503 and "the address book is busy" in page.get_data(as_text=True)
        holder.execute("ROLLBACK")
        assert book.contacts() == [anna]
        assert client.put(f"/api/addressbook/{anna.id}", json={"last_name": "Changed"}, headers=AUTH).status_code == 200
    finally:
        holder.close()
        ab_store._books.pop(book.path).close()


def test_an_import_whose_process_ends_without_an_answer_answers_500_with_what_the_admin_can_rely_on(client, book, monkeypatch):
    def stopped(*_):
        raise offload.ChildFailed("import_rows", "did not end within 600 s; it was stopped")

    monkeypatch.setattr(ab_store, "run_in_child", stopped)
    response = post_csv(client, "last_name\nA\n")
    assert response.status_code == 500 and "Retry-After" not in response.headers  # not known whether it was stored
    assert response.get_json() == {"error": "the import's process did not end within 600 s; it was stopped, so whether the "
                                            "import was stored is not known: an import is stored whole or not at all; "
                                            "look at the address book before you try again"}


def test_page_import_upload(browser, book):
    bad = {"csrf_token": browser.token, "file": (io.BytesIO(b"last_name,work\nA,1\nB,x\nC,3\n"), "book.csv")}
    response = browser.post("/addressbook/import", data=bad, content_type="multipart/form-data", headers=BROWSER)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "Nothing was imported" in html and "row 3, <code>work</code>" in html
    assert book.contacts() == []
    good = {"csrf_token": browser.token, "file": (io.BytesIO(b"last_name,work\nA,1\nB,2\n"), "book.csv")}
    assert browser.post("/addressbook/import", data=good, content_type="multipart/form-data", headers=BROWSER).status_code == 303
    assert [c.last_name for c in book.contacts()] == ["A", "B"]
    replace = {"csrf_token": browser.token, "replace": "1", "file": (io.BytesIO(b"last_name\nC\n"), "book.csv")}
    assert browser.post("/addressbook/import", data=replace, content_type="multipart/form-data", headers=BROWSER).status_code == 303
    assert [c.last_name for c in book.contacts()] == ["C"]
    # a larger form is parsed off the loop: its uploaded file stays open for the view (once it was closed: 500)
    rows = "".join(f"Name{n},+49 30 {1000000 + n}\n" for n in range(400)).encode()
    large = {"csrf_token": browser.token, "file": (io.BytesIO(b"last_name,work\n" + rows), "book.csv")}
    assert len(rows) > 8192
    assert browser.post("/addressbook/import", data=large, content_type="multipart/form-data", headers=BROWSER).status_code == 303
    assert len(book.contacts()) == 401


@pytest.mark.parametrize("count", [0, 1, 999, 1000, 1001, 2500])
def test_the_contact_list_is_encoded_in_slices_exactly_as_jsonify_would(count):
    from flask import Flask, jsonify

    from greenservers.addressbook import Contact
    from greenservers.web.addressbook import _json_list

    contacts = [Contact(id=i + 1, first_name=f'Jörg "{i}"', work=f"+49 {i}") for i in range(count)]

    class Book:
        def find_here(self, q, offset, limit):
            return list(contacts), len(contacts)

    pieces, total = _json_list(Book(), "", 0, None)
    with Flask(__name__).app_context():
        assert b"".join(pieces) == jsonify([c.as_dict() for c in contacts]).get_data() and total == count
