"""`passwd` and hand edits reach the running server without a restart or a signal (real gunicorn, curl).

The server is started with no admin password; `python -m greenservers passwd`
runs as a separate process; curl then logs in over HTTPS with the new
password, polled until it works within a generous deadline, and the old
password is refused. A bad hand edit is logged and ignored, the next good one
applies. (The same in headless Chromium: tests/system/test_browser.py.)
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from support import eventually, free_port, run_cli

pytestmark = pytest.mark.real_client
DEADLINE = 30.0  # generous: the server looks twice a second


def curl(svc, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(svc.cert_path), *args],
                          capture_output=True, text=True, timeout=30)


def basic_status(svc, password: str) -> str:
    """The status of an API request over HTTPS with HTTP Basic as admin."""
    return curl(
        svc, "-u", f"admin:{password}", "-o", "/dev/null", "-w", "%{http_code}", svc.url("/api/settings/ports", scheme="https")
    ).stdout


def form_login(svc, password: str, jar) -> tuple[str, str]:
    """Log in with the login form as a browser does (cookie, CSRF token): (status, where it leads)."""
    page = curl(svc, "-c", str(jar), svc.url("/login", scheme="https")).stdout
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    answer = curl(svc, "-b", str(jar), "-c", str(jar), "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                  "--data-urlencode", f"csrf_token={token}", "--data-urlencode", "username=admin",
                  "--data-urlencode", f"password={password}", svc.url("/login", scheme="https")).stdout
    return tuple(answer.split(" ", 1))


def passwd(svc, password: str) -> None:
    result = run_cli(["passwd"], svc.config_path, stdin=password + "\n")
    assert result.returncode == 0, result.stderr


def test_passwd_reaches_the_running_server_and_the_old_password_stops_working(service, tmp_path):
    svc = service({"ip_https_port": f"127.0.0.1:{free_port()}"})
    assert basic_status(svc, "first password 1") == "503"  # no admin password yet

    passwd(svc, "first password 1")
    ready_after = time.monotonic()

    def taken() -> bool:
        status = basic_status(svc, "first password 1")
        assert status in ("200", "503"), status  # still no password, never another answer
        return status == "200"

    eventually(taken, DEADLINE, what=lambda: svc.log, retry_on=())
    print(f"new password accepted {time.monotonic() - ready_after:.2f} s after passwd returned")

    since = len(svc.lines)
    passwd(svc, "second password 2")
    svc.wait_for_log("configuration file changed: configuration reloaded; changed: admin_password_hash", timeout=DEADLINE, since=since)
    assert basic_status(svc, "second password 2") == "200"
    assert basic_status(svc, "first password 1") == "401"
    assert form_login(svc, "first password 1", tmp_path / "old.jar")[0] == "401"
    status, target = form_login(svc, "second password 2", tmp_path / "new.jar")
    assert (status, target) == ("303", svc.url("/settings/ports", scheme="https"))
    page = curl(svc, "-b", str(tmp_path / "new.jar"), "-w", "\n%{http_code}", svc.url("/settings/ports", scheme="https")).stdout
    assert page.endswith("\n200") and "Settings › Ports" in page
    assert "SIGHUP" not in svc.log


def test_a_bad_hand_edit_is_logged_and_ignored_and_the_next_good_one_applies(service):
    svc = service({"ip_http_port": f"127.0.0.1:{free_port()}", "http_max_conn": 1000})
    good = svc.config_path.read_text()
    svc.config_path.write_text(good + "http_max_conn = \n")  # in place, as an editor might
    line = svc.wait_for_log("configuration file changed: configuration not reloaded, the running settings stay", timeout=DEADLINE)
    assert "not valid TOML" in line
    assert curl(svc, "-o", "/dev/null", "-w", "%{http_code}", svc.url("/healthz")).stdout == "200"
    since = len(svc.lines)
    svc.config_path.write_text(good.replace("http_max_conn = 1000", "http_max_conn = 9"))
    svc.wait_for_log("configuration file changed: configuration reloaded; changed: http_max_conn", timeout=DEADLINE, since=since)
    assert sum("configuration not reloaded" in line for line in svc.lines) == 1
