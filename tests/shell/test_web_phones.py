"""The Phones page and API (the record of phones, greenservers.provisioning.phones.seen) through Flask's test client."""

from __future__ import annotations

import re
import sqlite3

import pytest
from support.web import HTML, PASSWORD, WebFixture, basic, csrf_of

from greenservers.provisioning.phones import seen

AUTH = basic()


@pytest.fixture
def app(tmp_path):
    yield WebFixture(tmp_path).app
    seen._registries.clear()


def test_prov_fetches_show_on_the_api_and_the_page(app):
    client = app.test_client()
    ua = {"User-Agent": "Mozilla/4.0 (compatible; snomD785-SIP 10.1.33.33)"}
    assert client.get("/prov/snomD785.htm", headers=ua).status_code == 200
    assert client.get("/prov/snomD785-000413ABCDEF.htm", headers=ua).status_code == 404
    assert client.get("/api/phones").status_code == 401
    body = client.get("/api/phones", headers=AUTH).get_json()
    assert body["seen_last_24h"] == 2
    by_mac = {p["mac"]: p for p in body["phones"]}
    assert by_mac["000413abcdef"]["files"][0]["result"] == "not found" and by_mac["000413abcdef"]["model"] == "D785"
    assert by_mac[""]["vendor"] == "snom" and by_mac[""]["files"][0] == {
        **by_mac[""]["files"][0],
        "name": "snomD785.htm",
        "result": "served",
    }
    page = client.get("/phones", headers={**AUTH, **HTML}).get_data(as_text=True)
    assert "000413abcdef" in page and "not found" in page and "Snom D7xx D785" in page


def test_forget_from_the_page_needs_the_csrf_token(app):
    client = app.test_client()
    client.get("/prov/cfg000b82abcdef.xml")
    login_page = client.get("/login", headers=HTML).get_data(as_text=True)
    client.post("/login", data={"csrf_token": csrf_of(login_page), "username": "admin", "password": PASSWORD}, headers=HTML)
    page = client.get("/phones", headers=HTML).get_data(as_text=True)
    assert re.search(r'name="phone" value="000b82abcdef"', page)
    assert client.post("/phones/forget", data={"phone": "000b82abcdef"}, headers=HTML).status_code == 403
    token = csrf_of(page)
    response = client.post("/phones/forget", data={"phone": "000b82abcdef", "csrf_token": token}, headers=HTML)
    assert response.status_code == 303
    assert client.get("/api/phones", headers=AUTH).get_json()["phones"] == []


def test_forget_over_the_api(app):
    client = app.test_client()
    client.get("/prov/cfg000b82abcdef.xml")
    assert client.delete("/api/phones/000b82abcdef", headers=AUTH).status_code == 204
    assert client.delete("/api/phones/000b82abcdef", headers=AUTH).status_code == 404
    stored = sqlite3.connect(app.config["GREENSERVERS_RUNTIME"].settings.data_path / "phones.sqlite3")
    assert stored.execute("SELECT count(*) FROM phones").fetchone() == (0,)


def fill(app, count: int) -> None:
    registry = seen.registry_for(app.config["GREENSERVERS_RUNTIME"])
    for i in range(count):
        assert registry.note(f"0004f2{i:06x}-phone.cfg", f"192.0.2.{i % 250}", "served", "http")


def test_the_api_answers_in_bounded_pages(app):
    client = app.test_client()
    fill(app, 130)
    first = client.get("/api/phones", headers=AUTH).get_json()
    assert (len(first["phones"]), first["total"], first["offset"], first["limit"]) == (50, 130, 0, 50)
    assert first["phones"][0]["mac"] == "0004f2000081" and first["phones"][0]["verified_by"] == "http"
    rest = client.get("/api/phones?offset=50&limit=200", headers=AUTH).get_json()
    assert [p["mac"] for p in rest["phones"]] == [f"0004f2{i:06x}" for i in range(79, -1, -1)]
    assert client.get("/api/phones?offset=130", headers=AUTH).get_json()["phones"] == []
    for query, named in (("limit=201", "limit"), ("limit=0", "limit"), ("offset=-1", "offset"), ("limit=ten", "limit")):
        response = client.get(f"/api/phones?{query}", headers=AUTH)
        assert response.status_code == 400 and named in response.get_json()["error"], query


def test_the_page_shows_a_page_at_a_time(app):
    client = app.test_client()
    fill(app, 120)
    page = client.get("/phones", headers={**AUTH, **HTML}).get_data(as_text=True)
    assert page.count('class="field phone"') == 50 and "120 phones recorded" in page and "page 1 of 3" in page
    assert 'id="phone-0004f2000077"' in page and "seen over HTTP(S)" in page and 'href="/phones?page=2"' in page
    last = client.get("/phones?page=3", headers={**AUTH, **HTML}).get_data(as_text=True)
    assert last.count('class="field phone"') == 20 and 'id="phone-0004f2000000"' in last and 'rel="next"' not in last
    assert client.get("/phones?page=4", headers={**AUTH, **HTML}).headers["Location"].endswith("/phones?page=3")
    response = client.get("/phones?page=x", headers={**AUTH, **HTML})
    assert response.status_code == 400 and "page must be a whole number of 1 or more" in response.get_data(as_text=True)


def test_forged_tftp_phones_are_shown_as_such(app):
    seen.registry_for(app.config["GREENSERVERS_RUNTIME"]).note("001565abcdef.boot", "192.0.2.5", "failed", "tftp")
    page = app.test_client().get("/phones", headers={**AUTH, **HTML}).get_data(as_text=True)
    assert "unanswered UDP only: could be forged" in page
