"""GET /prov/ with Flask's test client: what it answers is never a page on the admin's origin, and uploads are not among it."""

from __future__ import annotations

import pytest
from support.web import WebFixture


@pytest.fixture
def web(tmp_path):
    fixture = WebFixture(tmp_path, {"data_dir": "data"})
    root = fixture.runtime.settings.data_path / "tftp"
    (root / "uploads").mkdir(parents=True)
    files = {
        "page.html": "<html><script>alert(1)</script></html>", "snom760.htm": "<html><setting>1</setting></html>",
        "y000000000025.cfg": "#!version:1.0.0.1\n", "phone.xml": "<config/>", "sip.ld": "\x7fELF", "noext": "?",
        "uploads/x.html": "<html><meta http-equiv=refresh content='0;url=https://evil.example'></html>",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "{mac}.html.j2").write_text("<html>{{ mac }}</html>")
    return fixture


@pytest.mark.parametrize("name, media_type", [
    ("page.html", "text/plain; charset=utf-8"), ("snom760.htm", "text/plain; charset=utf-8"),
    ("0004f2abcdef.html", "text/plain; charset=utf-8"),  # a rendered template
    ("y000000000025.cfg", "text/plain; charset=utf-8"), ("phone.xml", "application/xml; charset=utf-8"),
    ("sip.ld", "application/octet-stream"), ("noext", "application/octet-stream"),
])
def test_provisioning_files_have_an_inert_type_and_no_sniffing(web, name, media_type):
    answer = web.client.get(f"/prov/{name}")
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == media_type
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("path", ["/prov/uploads/x.html", "/prov/uploads/", "/prov/uploads/.partial-1-aa"])
def test_uploads_are_not_served_over_http(web, path):
    answer = web.client.get(path)
    assert answer.status_code in (403, 404)
    assert "evil.example" not in answer.text and answer.headers["Content-Type"].startswith("text/plain")
