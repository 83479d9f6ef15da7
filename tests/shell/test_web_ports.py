"""The Ports page (/settings/ports) with Flask's test client: form, inline errors, secrets, audit, certificate."""

from __future__ import annotations

import datetime
import html
import io
import json
import logging
import re

import pytest
import tomlkit
from markupsafe import escape
from support.certs import make_cert
from support.web import HTML, WebFixture

from greenservers.audit import AUDIT_FILE
from greenservers.config.settings import DECLARATIONS, GROUPS
from greenservers.tls.certificates import TLSContextHolder, ensure_certificate

COMMUNITY = "c0mmunity-s3cret"
LDAP_PASSWORD = "ldap-pa55word-s3cret"


@pytest.fixture
def web(tmp_path):
    fixture = WebFixture(tmp_path, {"snmp_community": COMMUNITY, "ldap_password": LDAP_PASSWORD, "ip_ntp_port": "1123"})
    fixture.login()
    return fixture


def post(web, data: dict, follow: bool = False):
    data = {"csrf_token": web.page_token(), **data}
    return web.client.post("/settings/ports", data=data, headers=HTML, follow_redirects=follow)


def field_error(page: str, name: str) -> str | None:
    match = re.search(rf'<p class="error" id="e-{name}"[^>]*>(.*?)</p>', page, re.S)
    return html.unescape(match.group(1)) if match else None


def file_value(web, name: str):
    return tomlkit.parse(web.config_text).get(name)


def audit_lines(web) -> list[dict]:
    path = web.runtime.settings.data_path / AUDIT_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- what the page shows ------------------------------------------------------------------


def test_page_lists_every_ports_setting_grouped_with_descriptions(web):
    page = web.client.get("/settings/ports", headers=HTML).text
    shown = [s for s in DECLARATIONS if s.on_ports_page]
    for setting in shown:
        assert f'name="{setting.name}"' in page, setting.name
        assert str(escape(setting.description)) in page, setting.name
    assert 'name="admin_password_hash"' not in page
    # groups appear in the declared order, each setting inside its own group's section
    positions = [page.index(f'id="{group}"') for group in GROUPS]
    assert positions == sorted(positions)
    for setting in shown:
        group_start = page.index(f'id="{setting.group}"')
        assert page.index(f'name="{setting.name}"') > group_start
    assert 'value="1000"' in page  # http_max_conn's current value


KNOWN_LABELS = {  # as phone systems' Ports pages name them
    "ip_http_port": "HTTP Port", "ip_https_port": "HTTPS Port",
    "http_max_conn_rate": "Maximum number of HTTP connections per second",
    "http_max_conn": "Maximum number of HTTP connections (total)", "http_redirect_https": "Redirect to HTTPS",
    "ip_snmp_port": "SNMP Port", "snmp_trusted": "SNMP Trusted Addresses", "snmp_community": "SNMP Community",
    "ip_tftp_port": "TFTP Port", "tftp_write": "Allow TFTP Write", "ip_ntp_port": "NTP Port", "ntp_server": "NTP Server",
    "ip_ldap_port": "LDAP Port (TCP, StartTLS)", "ip_ldaps_port": "LDAP Port (TLS)",
}


def test_every_setting_is_declared_with_a_label_of_its_own():
    labels = {s.name: s.label for s in DECLARATIONS}
    assert all(labels.values()), [name for name, label in labels.items() if not label]
    assert len(set(labels.values())) == len(labels)
    assert {name: labels[name] for name in KNOWN_LABELS} == KNOWN_LABELS


def test_each_field_is_labelled_by_its_label_with_the_key_beside_it(web):
    page = web.client.get("/settings/ports", headers=HTML).text
    for setting in (s for s in DECLARATIONS if s.on_ports_page):
        match = re.search(rf'<label[^>]* for="{setting.name}">(.*?)</label>', page, re.S)
        assert match, setting.name
        text = html.unescape(re.sub(r"<input[^>]*>", "", match.group(1))).strip()
        assert text.startswith(f'{setting.label} <code class="key">{setting.name}</code>'), text


def test_page_shows_whether_each_service_is_on(web):
    page = web.client.get("/settings/ports", headers=HTML).text
    assert "NTP: on" in page and "<code>[::]:1123</code>" in page
    web.runtime.update({"ip_ntp_port": ""})
    page = web.client.get("/settings/ports", headers=HTML).text
    assert "NTP: off" in page


def test_page_never_contains_secret_values(web):
    page = web.client.get("/settings/ports", headers=HTML).text
    assert COMMUNITY not in page and LDAP_PASSWORD not in page
    assert "admin_password_hash" not in page and "scrypt$" not in page
    assert re.search(r'<code class="key">snmp_community</code> <span class="secret-state">\(set\)</span>', page)
    assert re.search(r'<input type="password" id="snmp_community" name="snmp_community" value=""', page)


def test_page_shows_the_ntp_server_phones_are_given(web):
    page = web.client.get("/settings/ports", headers=HTML).text
    assert re.search(r'id="ntp-for-phones">this server', page)
    web.runtime.update({"ip_ntp_port": "", "ntp_server": "pool.example.org"})
    page = web.client.get("/settings/ports", headers=HTML).text
    assert 'id="ntp-for-phones">pool.example.org<' in page


# -- saving ---------------------------------------------------------------------------------


def test_bad_port_list_is_shown_inline_and_nothing_is_saved(web):
    before = web.config_text
    answer = post(web, {"ip_tftp_port": "69 banana", "http_max_conn": "5", "snmp_community": "new-community"})
    assert answer.status_code == 400
    assert "banana" in field_error(answer.text, "ip_tftp_port")
    assert field_error(answer.text, "http_max_conn") is None
    assert "Nothing was saved" in answer.text
    assert 'value="69 banana"' in answer.text  # the bad value stays in its field to be corrected
    assert "new-community" not in answer.text  # a submitted secret is not echoed back
    assert web.config_text == before
    assert web.runtime.settings.http_max_conn == 1000 and web.runtime.settings.snmp_community == COMMUNITY
    assert audit_lines(web) == []


def test_overlapping_bindings_are_refused_inline(web):
    answer = post(web, {"ip_ldap_port": "8080", "ip_http_port": "8080"})
    assert answer.status_code == 400
    assert "overlaps" in (field_error(answer.text, "ip_ldap_port") or field_error(answer.text, "ip_http_port"))


def test_a_change_without_rebind_applies_at_once(web):
    answer = post(web, {"http_max_conn": "250", "snmp_location": "Rack 4 <top>"}, follow=True)
    assert answer.status_code == 200
    assert "Saved: http_max_conn, snmp_location. In effect now." in html.unescape(answer.text)
    assert "takes effect after restart" not in answer.text
    assert web.runtime.settings.http_max_conn == 250
    assert file_value(web, "http_max_conn") == 250  # a number in the file, not the string "250"
    assert file_value(web, "snmp_location") == "Rack 4 <top>"
    assert 'value="Rack 4 &lt;top&gt;"' in answer.text


def test_a_change_needing_rebind_says_so_plainly(web):
    answer = post(web, {"ip_tftp_port": "127.0.0.1:1069"}, follow=True)
    assert "Saved; takes effect after restart: ip_tftp_port." in answer.text
    assert file_value(web, "ip_tftp_port") == "127.0.0.1:1069"
    assert web.runtime.health()["restart_needed_for"] == ["ip_tftp_port"]


def test_with_live_rebinding_the_page_does_not_ask_for_a_restart(web):
    rebound = []
    web.runtime.rebinder = lambda new: rebound.append(new) or (lambda: None)  # binds, returns the undo
    answer = post(web, {"ip_tftp_port": "127.0.0.1:1069"}, follow=True)
    assert rebound and "Saved: ip_tftp_port. In effect now." in answer.text
    assert "restart" not in answer.text.lower()


def test_unchanged_form_saves_nothing(web):
    page = web.client.get("/settings/ports", headers=HTML).text
    fields = dict(re.findall(r'<input type="text"[^>]*name="(\w+)" value="([^"]*)"', page))
    answer = post(web, {k: html.unescape(v) for k, v in fields.items()}, follow=True)
    assert "No changes." in answer.text
    assert audit_lines(web) == []


def test_checkboxes_turn_settings_on_and_off(web):
    post(web, {"_bool": ["tftp_write", "ldap_plain_bind"], "tftp_write": "on", "ldap_plain_bind": "on"})
    assert web.runtime.settings.tftp_write is True and file_value(web, "tftp_write") is True
    post(web, {"_bool": ["tftp_write", "ldap_plain_bind"], "ldap_plain_bind": "on"})
    assert web.runtime.settings.tftp_write is False and file_value(web, "tftp_write") is False
    assert web.runtime.settings.ldap_plain_bind is True


def test_secret_is_replaced_only_when_a_new_value_is_given(web, caplog):
    caplog.set_level(logging.INFO, logger="greenservers")
    post(web, {"snmp_community": "", "http_max_conn": "999"})
    assert web.runtime.settings.snmp_community == COMMUNITY
    answer = post(web, {"snmp_community": "brand-new-community"}, follow=True)
    assert web.runtime.settings.snmp_community == "brand-new-community"
    assert "brand-new-community" not in answer.text
    assert "brand-new-community" not in caplog.text and COMMUNITY not in caplog.text
    audit_text = (web.runtime.settings.data_path / AUDIT_FILE).read_text()
    assert "brand-new-community" not in audit_text and COMMUNITY not in audit_text
    assert audit_lines(web)[-1]["changes"] == [{"setting": "snmp_community", "old": "(set)", "new": "(changed)"}]


def test_bad_secret_is_refused_inline_without_echo(web):
    answer = post(web, {"snmp_community": "has space"})
    assert answer.status_code == 400
    assert field_error(answer.text, "snmp_community")
    assert "has space" not in answer.text


# -- audit ------------------------------------------------------------------------------------


def test_changes_are_audited_and_shown_latest_first(web):
    post(web, {"http_max_conn": "300"})
    post(web, {"http_max_conn": "400", "snmp_contact": "ops@example.org"})
    entries = audit_lines(web)
    assert len(entries) == 2
    latest = entries[-1]
    assert latest["who"] == "admin" and latest["address"] == "127.0.0.1" and latest["via"] == "web page"
    assert {"setting": "http_max_conn", "old": 300, "new": 400} in latest["changes"]
    assert {"setting": "snmp_contact", "old": "", "new": "ops@example.org"} in latest["changes"]
    datetime.datetime.fromisoformat(latest["time"])
    page = web.client.get("/settings/ports", headers=HTML).text
    audit = page[page.index('id="audit"'):]
    assert audit.index("300 → 400") < audit.index("1000 → 300")


# -- certificate upload ------------------------------------------------------------------------


def upload(web, cert: bytes, key: bytes, follow: bool = False):
    data = {"csrf_token": web.page_token(), "cert_file": (io.BytesIO(cert), "chain.pem"), "key_file": (io.BytesIO(key), "key.pem")}
    return web.client.post("/settings/ports/certificate", data=data, headers=HTML, content_type="multipart/form-data",
                           follow_redirects=follow)


@pytest.fixture
def web_tls(web):
    web.runtime.tls = TLSContextHolder(ensure_certificate(web.runtime.settings))
    return web


@pytest.mark.parametrize("problem", ["mismatched key", "expired", "not PEM", "missing key"])
def test_bad_certificate_is_refused_and_nothing_replaced(web_tls, problem):
    web = web_tls
    good_cert, good_key = make_cert()
    cert, key = {
        "mismatched key": (good_cert, make_cert()[1]),
        "expired": make_cert(from_days=-60, until_days=-1),
        "not PEM": (b"hello", good_key),
        "missing key": (good_cert, b""),
    }[problem]
    before_pair, before_config = web.runtime.tls.pair, web.config_text
    tls_files = sorted(p.name for p in (web.runtime.settings.data_path / "tls").iterdir())
    answer = upload(web, cert, key)
    assert answer.status_code == 400
    assert re.search(r'id="cert-error"[^>]*>Nothing was replaced: ', answer.text)
    assert web.runtime.tls.pair is before_pair and web.config_text == before_config
    assert sorted(p.name for p in (web.runtime.settings.data_path / "tls").iterdir()) == tls_files


def test_good_certificate_replaces_the_current_one_at_once(web_tls):
    web = web_tls
    cert, key = make_cert(name="pbx.example.org")
    answer = upload(web, cert, key, follow=True)
    assert answer.status_code == 200
    assert "Certificate installed: CN=pbx.example.org" in answer.text
    settings = web.runtime.settings
    assert settings.tls_cert.startswith("data/tls/uploaded-") and settings.tls_key.endswith(".key")
    assert settings.resolve(settings.tls_cert).read_bytes() == cert
    key_path = settings.resolve(settings.tls_key)
    assert key_path.read_bytes() == key and key_path.stat().st_mode & 0o077 == 0
    assert web.runtime.tls.pair.subject == "CN=pbx.example.org" and not web.runtime.tls.pair.self_signed
    assert file_value(web, "tls_cert") == settings.tls_cert
    assert "PRIVATE KEY" not in answer.text
    entry = audit_lines(web)[-1]
    assert "CN=pbx.example.org" in entry["note"]
    # a second upload keeps the previous pair (to go back by hand) and removes older ones
    first = settings.resolve(settings.tls_cert)
    upload(web, *make_cert(name="second.example.org"))
    upload(web, *make_cert(name="third.example.org"))
    assert web.runtime.tls.pair.subject == "CN=third.example.org"
    assert not first.exists()
    assert len(list((settings.data_path / "tls").glob("uploaded-*.crt"))) == 2


def test_certificate_may_be_pasted(web_tls):
    web = web_tls
    cert, key = make_cert(name="pasted.example.org")
    data = {"csrf_token": web.page_token(), "cert_pem": cert.decode(), "key_pem": key.decode()}
    answer = web.client.post("/settings/ports/certificate", data=data, headers=HTML)
    assert answer.status_code == 303
    assert web.runtime.tls.pair.subject == "CN=pasted.example.org"


def test_certificate_upload_needs_csrf(web_tls):
    cert, key = make_cert()
    web = web_tls
    files = {"cert_file": (io.BytesIO(cert), "c.pem"), "key_file": (io.BytesIO(key), "k.pem")}
    answer = web.client.post("/settings/ports/certificate", data=files, headers=HTML, content_type="multipart/form-data")
    assert answer.status_code == 403
    assert web.runtime.tls.pair.self_signed
