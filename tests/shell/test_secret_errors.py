"""An error about a secret setting never holds any part of its value (issue 15, item 7): the JSON API and
the Ports page, through Flask's test client."""

from __future__ import annotations

import logging

import pytest
from support.secret_values import GOOD_COMMUNITY, GOOD_LDAP_PASSWORD, leaks, refused
from support.web import HTML, WebFixture, basic


@pytest.fixture
def web(tmp_path):
    return WebFixture(tmp_path, {"snmp_community": GOOD_COMMUNITY, "ldap_password": GOOD_LDAP_PASSWORD})


@pytest.mark.parametrize("name", ["snmp_community", "ldap_password"])
def test_api_put_refusal_holds_no_part_of_the_secret(web, name, caplog):
    caplog.set_level(logging.DEBUG, logger="greenservers")
    for label, value in refused(name).items():
        answer = web.client.put("/api/settings/ports", json={name: value}, headers=basic())
        assert answer.status_code == 400 and answer.json["errors"][name], label
        assert not leaks(answer.text, value) and not leaks(answer.text, GOOD_COMMUNITY), (label, answer.text)
    assert web.runtime.settings.snmp_community == GOOD_COMMUNITY
    for label, value in refused(name).items():
        assert not leaks(caplog.text, value), label


@pytest.mark.parametrize("name", ["snmp_community", "ldap_password"])
def test_page_refusal_holds_no_part_of_the_secret(web, name):
    web.login()
    for label, value in refused(name).items():
        if not isinstance(value, str):
            continue  # a form sends text only
        answer = web.client.post("/settings/ports", data={"csrf_token": web.page_token(), name: value}, headers=HTML)
        assert answer.status_code == 400 and f'id="e-{name}"' in answer.text, label
        assert not leaks(answer.text, value), label
    assert web.runtime.settings.snmp_community == GOOD_COMMUNITY
