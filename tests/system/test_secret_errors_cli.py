"""An error about a secret setting never holds any part of its value (issue 15, item 7): check-config,
and the log of a start and of a SIGHUP after a hand edit, with the real service and curl over HTTPS."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
from support import free_port, run_cli as cli
from support.secret_values import BAD_VALUES, GOOD_COMMUNITY, leaks
from support.web import PASSWORD, PASSWORD_HASH

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
