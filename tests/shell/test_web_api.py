"""The settings API (GET/PUT /api/settings/ports) with Flask's test client."""

from __future__ import annotations

import json
import logging

import pytest
import tomlkit
from support.web import WebFixture, basic

from greenservers.audit import AUDIT_FILE
from greenservers.config.settings import DECLARATIONS

COMMUNITY = "api-c0mmunity-s3cret"
URL = "/api/settings/ports"


@pytest.fixture
def web(tmp_path):
    return WebFixture(tmp_path, {"snmp_community": COMMUNITY, "ip_http_port": "8080"})


def put(web, body, headers=None):
    return web.client.put(URL, json=body, headers={**basic(), **(headers or {})})


def audit_lines(web) -> list[dict]:
    path = web.runtime.settings.data_path / AUDIT_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_get_needs_auth(web):
    assert web.client.get(URL).status_code == 401
    assert web.client.get(URL, headers=basic(password="wrong")).status_code == 401


def test_get_answers_every_ports_setting_with_secrets_masked(web):
    answer = web.client.get(URL, headers=basic())
    assert answer.status_code == 200
    body = answer.json
    assert set(body) == {s.name for s in DECLARATIONS if s.on_ports_page}
    assert body["ip_http_port"] == "8080" and body["http_max_conn"] == 1000 and body["tftp_write"] is False
    assert body["snmp_community"] == {"set": True} and body["ldap_password"] == {"set": True}
    assert COMMUNITY not in answer.text and "scrypt$" not in answer.text


def test_partial_put_applies_at_once_and_answers_the_effective_settings(web):
    answer = put(web, {"http_max_conn": 5, "tftp_write": True})
    assert answer.status_code == 200
    assert answer.json["http_max_conn"] == 5 and answer.json["tftp_write"] is True
    assert answer.json["ip_http_port"] == "8080"  # untouched fields are still there
    assert "X-Restart-Needed" not in answer.headers
    assert web.runtime.settings.http_max_conn == 5 and web.runtime.settings.tftp_write is True
    document = tomlkit.parse(web.config_text)
    assert document["http_max_conn"] == 5 and document["tftp_write"] is True


def test_put_is_all_or_nothing(web):
    before = web.config_text
    answer = put(web, {"http_max_conn": 7, "ip_snmp_port": "161 nope", "snmp_trusted": "pbx.example.org", "ntp_local_stratum": 99})
    assert answer.status_code == 400
    errors = answer.json["errors"]
    assert set(errors) == {"ip_snmp_port", "snmp_trusted", "ntp_local_stratum"}
    assert "nope" in errors["ip_snmp_port"] and "pbx.example.org" in errors["snmp_trusted"] and "99" in errors["ntp_local_stratum"]
    assert web.config_text == before
    assert web.runtime.settings.http_max_conn == 1000
    assert audit_lines(web) == []


@pytest.mark.parametrize(("body", "field"), [
    ({"no_such_thing": 1}, "no_such_thing"),
    ({"admin_password_hash": "scrypt$1$2$3$4$5"}, "admin_password_hash"),
    ([1, 2], "_body"),
    ({"http_max_conn": "lots"}, "http_max_conn"),
    ({"http_max_conn": True}, "http_max_conn"),
])
def test_put_refuses_bad_fields(web, body, field):
    before = web.config_text
    answer = put(web, body)
    assert answer.status_code == 400 and field in answer.json["errors"]
    assert web.config_text == before


def test_put_needs_json(web):
    answer = web.client.put(URL, data="http_max_conn=5", headers={**basic(), "Content-Type": "text/plain"})
    assert answer.status_code in (403, 415)  # text/plain is what a cross-site form can send
    answer = web.client.put(URL, data="{not json", headers={**basic(), "Content-Type": "application/json"})
    assert answer.status_code == 400
    assert web.runtime.settings.http_max_conn == 1000


def test_put_without_auth_changes_nothing(web):
    answer = web.client.put(URL, json={"http_max_conn": 5})
    assert answer.status_code == 401
    answer = web.client.put(URL, json={"http_max_conn": 5}, headers=basic(password="bad"))
    assert answer.status_code == 401
    assert web.runtime.settings.http_max_conn == 1000


def test_get_then_put_back_changes_nothing(web):
    body = web.client.get(URL, headers=basic()).json
    answer = put(web, body)
    assert answer.status_code == 200
    assert web.runtime.settings.snmp_community == COMMUNITY
    assert audit_lines(web) == []


def test_put_sets_a_secret_without_echoing_or_logging_it(web, caplog):
    caplog.set_level(logging.DEBUG, logger="greenservers")
    answer = put(web, {"snmp_community": "fresh-s3cret", "ldap_password": "another-s3cret"})
    assert answer.status_code == 200
    assert answer.json["snmp_community"] == {"set": True}
    assert "s3cret" not in answer.text
    assert web.runtime.settings.snmp_community == "fresh-s3cret"
    assert "s3cret" not in caplog.text
    assert "s3cret" not in (web.runtime.settings.data_path / AUDIT_FILE).read_text()
    assert "snmp_community: (set) -> (changed)" in caplog.text


def test_put_of_a_binding_says_restart_needed(web):
    answer = put(web, {"ip_tftp_port": 1069})
    assert answer.status_code == 200
    assert answer.json["ip_tftp_port"] == "1069"  # kept as a binding list (string) in the file
    assert answer.headers["X-Restart-Needed"] == "ip_tftp_port"
    assert tomlkit.parse(web.config_text)["ip_tftp_port"] == "1069"


def test_put_is_audited_with_who_when_and_where(web):
    web.client.put(URL, json={"http_max_conn_rate": 50}, headers=basic(), environ_base={"REMOTE_ADDR": "2001:db8::7"})
    (entry,) = audit_lines(web)
    assert entry["who"] == "admin" and entry["address"] == "2001:db8::7" and entry["via"] == "API (HTTP Basic)"
    assert entry["changes"] == [{"setting": "http_max_conn_rate", "old": 100, "new": 50}]
    assert entry["time"].endswith("+00:00")


def test_put_writes_numbers_and_switches_as_toml_types(web):
    answer = put(web, {"http_max_conn": "500", "tftp_write": "true", "ntp_local_stratum": 10})
    assert answer.status_code == 200
    assert answer.json["http_max_conn"] == 500 and answer.json["tftp_write"] is True
    document = tomlkit.parse(web.config_text)
    assert document["http_max_conn"] == 500 and document["tftp_write"] is True and document["ntp_local_stratum"] == 10
