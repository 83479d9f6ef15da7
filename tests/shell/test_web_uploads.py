"""The /uploads page with Flask's test client: only the admin sees (a page at a time), downloads and deletes phones'
uploads (one, or many at once from the page or the API)."""

from __future__ import annotations

import os

import pytest
from support.web import HTML, WebFixture, basic, csrf_of

from greenservers.provisioning import uploads

EVIL = "<img src=x onerror=alert(1)>.html"


@pytest.fixture
def web(tmp_path):
    uploads._spaces.clear()
    fixture = WebFixture(tmp_path, {"data_dir": "data", "tftp_write": True})
    settings = fixture.runtime.settings
    for name, data, client in (("0004f2abcdef-app.log", b"log line\n" * 100, "192.0.2.7"), (EVIL, b"<html>phish</html>", "2001:db8::9")):
        upload = uploads.begin(settings, name, client)
        upload.write(data)
        upload.commit()
    fixture.folder = uploads.uploads_folder(settings)
    return fixture


def test_without_credentials_nothing_is_listed_downloaded_or_deleted(web):
    assert web.client.get("/uploads", headers=HTML).status_code == 302  # to the login page
    for path in ("/uploads", "/uploads/0004f2abcdef-app.log"):
        answer = web.client.get(path)
        assert answer.status_code == 401 and b"log line" not in answer.data
    assert web.client.post("/uploads/0004f2abcdef-app.log/delete").status_code == 401
    assert web.client.get("/uploads/0004f2abcdef-app.log", headers=basic(password="wrong")).status_code == 401
    assert sorted(os.listdir(web.folder)) == sorted(["0004f2abcdef-app.log", EVIL])


def test_the_page_lists_name_size_time_and_address_escaped_and_is_in_the_navigation(web):
    web.login()
    page = web.client.get("/uploads", headers=HTML)
    assert page.status_code == 200
    text = page.text
    assert "0004f2abcdef-app.log" in text and "900 bytes" in text and "192.0.2.7" in text and "UTC" in text
    assert "2001:db8::9" in text and "2 files" in text
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;.html" in text
    assert '<a href="/uploads"' in text  # the navigation


def test_download_is_an_attachment_never_a_page(web):
    web.login()
    for name, body in (("0004f2abcdef-app.log", b"log line\n" * 100), (EVIL, b"<html>phish</html>")):
        answer = web.client.get(f"/uploads/{name}")
        assert answer.status_code == 200 and answer.data == body
        assert answer.headers["Content-Type"] == "application/octet-stream"
        assert answer.headers["Content-Disposition"].startswith("attachment;")
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert web.client.get("/uploads/nothing.log").status_code == 404
    assert web.client.get("/uploads/.partial-1-aa").status_code in (403, 404)
    assert web.client.get("/uploads/..%2F..%2Fgreenservers.toml").status_code == 404


def test_delete_needs_the_forms_csrf_token(web):
    web.login()
    token = csrf_of(web.client.get("/uploads", headers=HTML).text)
    assert web.client.post("/uploads/0004f2abcdef-app.log/delete", headers=HTML).status_code == 403
    assert web.client.post("/uploads/0004f2abcdef-app.log/delete", data={"csrf_token": "forged"}, headers=HTML).status_code == 403
    assert web.client.post("/uploads/0004f2abcdef-app.log/delete", headers=basic()).status_code == 403  # Basic alone is not enough
    assert "0004f2abcdef-app.log" in os.listdir(web.folder)
    used = uploads.space_of(web.runtime.settings).used
    answer = web.client.post("/uploads/0004f2abcdef-app.log/delete", data={"csrf_token": token}, headers=HTML)
    assert answer.status_code == 303 and answer.location == "/uploads"
    assert os.listdir(web.folder) == [EVIL]
    assert uploads.space_of(web.runtime.settings).used == used - 900
    assert "Deleted 0004f2abcdef-app.log" in web.client.get("/uploads", headers=HTML).text
    again = web.client.post("/uploads/0004f2abcdef-app.log/delete", data={"csrf_token": token}, headers=HTML)
    assert again.status_code == 303 and "already deleted" in web.client.get("/uploads", headers=HTML).text


def many(web, count: int, client: str) -> list[str]:
    """`count` one-byte uploads from `client`, oldest first."""
    settings, names = web.runtime.settings, []
    for n in range(count):
        names.append(f"{client}-{n:04d}.log")
        upload = uploads.begin(settings, names[-1], client)
        upload.write(b"x")
        upload.commit()
        os.utime(web.folder / names[-1], (1_700_000_000 + n, 1_700_000_000 + n))
    return names


def test_the_page_shows_a_page_of_uploads_newest_first_and_links_the_others(web):
    names = many(web, 250, "192.0.2.50")
    web.login()
    first = web.client.get("/uploads", headers=HTML).text
    assert names[-1] in first and names[-98] in first and names[-99] not in first  # and the two uploads of the fixture
    assert "page 1 of 3" in first and 'href="/uploads?page=2"' in first and "252 files" in first
    last = web.client.get("/uploads?page=3", headers=HTML).text
    assert names[0] in last and names[-1] not in last and 'href="/uploads?page=2"' in last
    assert "page 3 of 3" in web.client.get("/uploads?page=99", headers=HTML).text  # past the end: the last page


def test_many_uploads_are_deleted_at_once_ticked_by_address_or_all_with_the_csrf_token(web):
    many(web, 30, "192.0.2.66")
    phone = many(web, 3, "192.0.2.8")
    web.login()
    token = csrf_of(web.client.get("/uploads", headers=HTML).text)
    assert web.client.post("/uploads/delete", data={"all": "1"}, headers=HTML).status_code == 403  # no token
    assert web.client.post("/uploads/delete", data={"all": "1"}, headers=basic()).status_code == 403  # a session's Basic: no
    assert len(os.listdir(web.folder)) == 35
    answer = web.client.post("/uploads/delete", data={"csrf_token": token, "name": phone[:2]}, headers=HTML)
    assert answer.status_code == 303 and "Deleted 2 uploads" in web.client.get("/uploads", headers=HTML).text
    web.client.post("/uploads/delete", data={"csrf_token": token, "client": "192.0.2.66"}, headers=HTML)
    assert sorted(os.listdir(web.folder)) == sorted(["0004f2abcdef-app.log", EVIL, phone[2]])
    assert uploads.space_of(web.runtime.settings).files_of.of("192.0.2.66") == 0
    web.client.post("/uploads/delete", data={"csrf_token": token, "client": "192.0.2.66"}, headers=HTML)
    assert "Nothing deleted: no uploads from 192.0.2.66 to delete" in web.client.get("/uploads", headers=HTML).text
    web.client.post("/uploads/delete", data={"csrf_token": token, "all": "1"}, headers=HTML)
    assert os.listdir(web.folder) == [] and uploads.space_of(web.runtime.settings).used == 0


def test_a_script_deletes_many_through_the_api(web):
    names = many(web, 3, "192.0.2.9")
    assert web.client.post("/api/uploads/delete", json={"names": names}).status_code == 401
    assert web.client.post("/api/uploads/delete", data={"names": names}, headers=basic()).status_code == 415  # a form: no
    assert web.client.post("/api/uploads/delete", json={"names": "x"}, headers=basic()).status_code == 400
    answer = web.client.post("/api/uploads/delete", json={"names": [*names[:2], "missing.log"]}, headers=basic())
    assert answer.status_code == 200 and answer.json == {"deleted": 2, "bytes": 2}
    assert web.client.post("/api/uploads/delete", json={"client": "192.0.2.9"}, headers=basic()).json == {"deleted": 1, "bytes": 1}
    assert web.client.post("/api/uploads/delete", json={"all": True}, headers=basic()).json["deleted"] == 2
    assert os.listdir(web.folder) == []
