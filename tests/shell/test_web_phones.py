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

