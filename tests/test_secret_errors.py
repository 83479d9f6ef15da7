"""An error about a secret setting never holds any part of its value (issue 15, item 7).

Every path a refusal takes: the validators (through Setting.refusal), the JSON API,
the Ports page, check-config, and the log of a start and of a SIGHUP after a hand
edit, this last with the real service and curl over HTTPS.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess

import pytest

from greenservers.config.settings import DECLARATIONS, Invalid, Setting, Settings, SettingsError
from support import free_port
from test_cli import run as cli
from test_web_auth import HTML, PASSWORD, PASSWORD_HASH, WebFixture, basic

SECRETS = [s.name for s in DECLARATIONS if s.secret]
BAD_VALUES = {  # made of runs no name, message or page holds by chance
    "control character": "Qz7Kx\u0007Wv3Jp9",
    "space": "Qz7Kx Wv3Jp9",
    "over-long": "Qz7KxWv3Jp" * 14,  # 140 characters: over every secret's limit
    "non-ASCII": "Qz7Kxé-Wv3Jp9",
    "a number": 31415926,
    "a list": ["Qz7Kx", "Wv3Jp9"],
    "not a hash": "plainQz7KxWv3",
}
GOOD_COMMUNITY, GOOD_LDAP_PASSWORD = "Gd5Rm8Tc1", "Lp4Nq6Hs2"


def leaks(text: str, value) -> bool:
    """True when `text` holds any five characters in a row of `value` (as text or as its repr)."""
    for shown in {str(value), repr(value)[1:-1]}:
        if any(shown[i:i + 5] in text for i in range(len(shown) - 4)):
            return True
    return False


def refused(name: str) -> dict[str, object]:
    """The bad values `name`'s validator refuses, by label."""
    found = {}
    for label, value in BAD_VALUES.items():
        try:
            Settings.from_raw({name: value})
        except SettingsError:
            found[label] = value
    return found


def test_the_values_are_refused_where_it_matters():
    assert {"control character", "space", "over-long", "non-ASCII", "a number"} <= set(refused("snmp_community"))
    assert {"control character", "over-long", "a number"} <= set(refused("ldap_password"))
    assert "not a hash" in refused("admin_password_hash")


@pytest.mark.parametrize("name", SECRETS)
def test_no_refusal_of_a_secret_holds_any_part_of_it(name):
    for label, value in refused(name).items():
        with pytest.raises(SettingsError) as info:
            Settings.from_raw({name: value})
        message = info.value.errors[name]
        assert message and not leaks(message, value), (label, message)
        assert not leaks(str(info.value), value)


def test_the_rule_holds_for_a_validator_that_quotes_the_value_in_its_reason():
    def careless(raw):
        raise ValueError(f"{raw!r} is no good")

    secret = Setting("a_secret", "system", "", careless, "A secret.", secret=True)
    plain = Setting("a_setting", "system", "", careless, "Not secret.")
    assert secret.refusal(ValueError("'TopSecret' is no good")) == "is not valid"
    assert plain.refusal(ValueError("'x' is no good")) == "'x' is no good"
    assert secret.refusal(Invalid("is too short", "TopSecret")) == "is too short"
    assert plain.refusal(Invalid("is too short", "x")) == "'x' is too short"


def test_other_settings_still_quote_the_bad_value_cut_short():
    with pytest.raises(SettingsError) as info:
        Settings.from_raw({"snmp_location": "Room 101 " * 40, "http_max_conn": "lots"})
    assert info.value.errors["snmp_location"] == "'Room 101 Room 101 Ro'... is longer than 255 characters"
    assert info.value.errors["http_max_conn"] == "'lots' is not a whole number"


# -- the web interface (Flask's test client) ---------------------------------------------------


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


# -- check-config --------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["control character", "space", "over-long", "a number"])
def test_check_config_refusal_holds_no_part_of_the_secret(tmp_path, label):
    value = BAD_VALUES[label]
    config = tmp_path / "g.toml"
    config.write_text(f"snmp_community = {json.dumps(value)}\n")  # a JSON string or number is TOML too
    result = cli(["check-config"], config)
    assert result.returncode == 1 and "snmp_community: " in result.stderr, result.stderr
    assert not leaks(result.stdout + result.stderr, value), result.stderr


@pytest.mark.parametrize("text, problem", [
    ('ldap_password = "Qz7Kx\\qWv3Jp9"\n', "invalid character in a string at line 1"),
    ('ldap_password = "Qz7Kx\x01Wv3Jp9"\n', "a control character in a string"),
    ("ldap_password = Qz7KxWv3Jp9\n", "unexpected character at line 1"),
])
def test_a_secret_that_breaks_the_toml_is_located_not_quoted(tmp_path, text, problem):
    config = tmp_path / "g.toml"
    config.write_text(text)
    result = cli(["check-config"], config)
    assert result.returncode == 1 and problem in result.stderr, result.stderr
    assert "'q'" not in result.stderr and "'Q'" not in result.stderr and "\\u0001" not in result.stderr
    assert not leaks(result.stderr, "Qz7KxWv3Jp9")
    config.write_bytes(b'ldap_password = "Qz7Kx\xe9Wv3Jp9"\n')
    result = cli(["check-config"], config)
    assert "not UTF-8 text (line 1)" in result.stderr and "0xe9" not in result.stderr


# -- the running service: curl over HTTPS, SIGHUP after a hand edit, a start ----------------------


def test_running_service_never_echoes_a_bad_secret(service):
    svc = service({"ip_https_port": f"127.0.0.1:{free_port()}", "admin_password_hash": PASSWORD_HASH,
                   "snmp_community": GOOD_COMMUNITY})
    url = svc.url("/api/settings/ports", "https")
    # exactly as in the issue: PUT {"snmp_community": "TopSecret\u0007Community2"}, and an over-long one
    for body in ('{"snmp_community": "TopSecret\\u0007Community2"}', json.dumps({"snmp_community": "TopSecret" * 20})):
        answer = subprocess.run(["curl", "-sS", "--cacert", str(svc.cert_path), "-u", f"admin:{PASSWORD}", "-X", "PUT",
                                 "-H", "Content-Type: application/json", "--data-binary", body, "-w", "\n%{http_code}", url],
                                capture_output=True, text=True, timeout=30)
        text, code = answer.stdout.rsplit("\n", 1)
        assert code == "400" and "snmp_community" in json.loads(text)["errors"], answer.stdout
        assert "TopSecret" not in text and "Community2" not in text and GOOD_COMMUNITY not in text
    # a hand edit, then SIGHUP: refused, logged without the value
    original = svc.config_path.read_text()
    for label in ("space", "over-long", "control character"):
        svc.config_path.write_text(original.replace(f'"{GOOD_COMMUNITY}"', json.dumps(BAD_VALUES[label])))
        mark = len(svc.lines)
        svc.signal_master(signal.SIGHUP)
        line = svc.wait_for_log("SIGHUP: configuration not reloaded", since=mark)
        assert "snmp_community: " in line, line
        assert not any(leaks(line, BAD_VALUES[label]) for line in svc.lines[mark:]), svc.lines[mark:]
    svc.stop()
    # a start with that file: refused with the reason, not the value
    mark = len(svc.lines)
    svc.start(expect_ready=False)
    assert svc.wait_exit() != 0
    assert "snmp_community: contains control characters" in "\n".join(svc.lines[mark:]), svc.log
    assert not leaks(svc.log, BAD_VALUES["control character"]) and GOOD_COMMUNITY not in svc.log, svc.log
