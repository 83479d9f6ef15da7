"""Start-up says where to go: one line names every binding, the admin page's URL and whether a password is set.

gunicorn's own "Listening at:  (PID)", empty because the worker binds, is reworded.
The command the line gives for setting the password is run as printed.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from support import READY_LINE, free_port
from support.web import PASSWORD_HASH

from greenservers.config.settings import Settings
from greenservers.process.worker import admin_page_url


@pytest.mark.parametrize("https, http, url", [
    ("443", "80", "https://pbx/settings/ports"),
    ("8443", "80", "https://pbx:8443/settings/ports"),
    ("0.0.0.0:8443 [::1]:9443", "", "https://pbx:8443/settings/ports"),
    ("192.0.2.7:443", "80", "https://192.0.2.7/settings/ports"),
    ("[2001:db8::4]:8443", "", "https://[2001:db8::4]:8443/settings/ports"),
    ("", "[::]:8080", "http://pbx:8080/settings/ports"),
    ("", "80", "http://pbx/settings/ports"),
    ("", "", None),
])
def test_admin_page_url_follows_the_first_https_binding_else_http(https, http, url):
    settings = Settings.from_raw({"ip_https_port": https, "ip_http_port": http})
    assert admin_page_url(settings, "pbx") == url


@pytest.mark.real_client
def test_the_start_up_line_says_where_to_go_and_how_to_set_the_password(service):
    svc = service({"ip_https_port": f"127.0.0.1:{free_port()}", "ip_http_port": f"127.0.0.1:{free_port()}"})
    [line] = [line for line in svc.lines if READY_LINE in line]
    https = svc.url("/settings/ports", scheme="https")
    assert f"ip_https_port=127.0.0.1:{svc.port('ip_https_port')}" in line and f"ip_http_port=127.0.0.1:{svc.port('ip_http_port')}" in line
    assert f"admin page: {https}; no admin password is set yet: run `" in line
    assert not any("Listening at:  (" in line for line in svc.lines)
    assert any(re.search(r"master \d+ started; it binds nothing", line) for line in svc.lines), svc.log

    command = re.search(r"run `([^`]+)`", line).group(1)
    assert f"--config {svc.config_path} passwd" in command
    since = len(svc.lines)
    result = subprocess.run(command, shell=True, input="from the log 1\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert svc.wait_for_log(f"admin page: {https} (user admin)", timeout=30, since=since)


@pytest.mark.real_client
def test_with_a_password_the_line_only_names_the_page(service):
    svc = service({"ip_https_port": f"127.0.0.1:{free_port()}", "admin_password_hash": PASSWORD_HASH})
    [line] = [line for line in svc.lines if READY_LINE in line]
    assert line.endswith(f"; admin page: {svc.url('/settings/ports', scheme='https')} (user admin)")
