"""A real browser (Debian's headless Chromium via chromedriver) drives the running service over HTTPS.

It logs in, enters a bad port list and sees the inline error, saves good
changes, sees them on reload and in the configuration file, and saves
screenshots of the Ports page to test-artifacts/ (desktop and phone width).
A server started without an admin password opens its pages to the browser
once `python -m greenservers passwd` has run beside it, without a restart.
No downloads: the Debian chromium and chromedriver binaries are used.
"""

from __future__ import annotations

import pytest
import requests
import tomlkit
from selenium.webdriver.common.by import By
from support import eventually, free_port, free_udp_port, run_cli
from support.browser import ARTIFACTS, screenshot, set_field, start_chromium, submit_login, submit_section, wait_for
from support.web import PASSWORD, PASSWORD_HASH


@pytest.fixture
def browser(tmp_path):
    driver = start_chromium(tmp_path / "chromium-profile")
    try:
        yield driver
    finally:
        driver.quit()  # ends chromium and chromedriver, which selenium started



def test_ports_page_in_a_real_browser(service, browser):
    tftp_port = free_udp_port()
    svc = service({
        "ip_https_port": f"127.0.0.1:{free_port()}",
        "ip_http_port": f"127.0.0.1:{free_port()}",
        "ip_tftp_port": f"127.0.0.1:{tftp_port}",
        "admin_password_hash": PASSWORD_HASH,
        "snmp_community": "browser-s3cret",
    })
    base = svc.url("", scheme="https")

    # not logged in: the page sends the browser to the login form
    browser.get(base + "/settings/ports")
    wait_for(browser, (By.ID, "password"))
    assert "/login" in browser.current_url
    set_field(browser, "password", "wrong password")
    submit_login(browser)
    assert "Wrong user name or password" in wait_for(browser, (By.CSS_SELECTOR, ".flash.error")).text
    set_field(browser, "password", PASSWORD)
    submit_login(browser)
    wait_for(browser, (By.ID, "ip_tftp_port"))
    assert browser.current_url.endswith("/settings/ports")
    cookie = browser.get_cookie("greenservers_session")
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert "browser-s3cret" not in browser.page_source
    assert "TFTP: on" in browser.find_element(By.ID, "tftp").text

    # a bad port list: shown inline next to its field, nothing saved
    set_field(browser, "ip_tftp_port", f"127.0.0.1:{tftp_port} 70000")
    submit_section(browser, "tftp")
    error = wait_for(browser, (By.ID, "e-ip_tftp_port"))
    assert "70000" in error.text
    assert error.find_element(By.XPATH, "..").find_element(By.NAME, "ip_tftp_port").get_attribute("aria-invalid") == "true"
    assert "Nothing was saved" in browser.find_element(By.CSS_SELECTOR, ".flash.error").text
    assert tomlkit.parse(svc.config_path.read_text())["ip_tftp_port"] == f"127.0.0.1:{tftp_port}"
    ARTIFACTS.mkdir(exist_ok=True)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", error)
    browser.save_screenshot(str(ARTIFACTS / "ports-page-inline-error.png"))

    # good changes: a cap (in effect at once) and a port list (after restart)
    set_field(browser, "ip_tftp_port", f"127.0.0.1:{tftp_port} [::1]:{tftp_port}")
    set_field(browser, "http_max_conn", "321")
    submit_section(browser, "tftp")
    flashes = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".flash")]
    health = requests.get(base + "/healthz", verify=str(svc.cert_path), timeout=5).json()
    if "ip_tftp_port" in health["restart_needed_for"]:  # before live rebinding: say so plainly
        assert flashes == ["Saved: http_max_conn. In effect now.", "Saved; takes effect after restart: ip_tftp_port."]
    else:  # rebound at once: the page must not ask for a restart
        assert flashes == ["Saved: http_max_conn, ip_tftp_port. In effect now."]
        assert f"[::1]:{tftp_port}" in browser.find_element(By.ID, "tftp").text

    browser.refresh()
    wait_for(browser, (By.ID, "http_max_conn"))
    assert browser.find_element(By.NAME, "http_max_conn").get_attribute("value") == "321"
    assert browser.find_element(By.NAME, "ip_tftp_port").get_attribute("value") == f"127.0.0.1:{tftp_port} [::1]:{tftp_port}"
    pending_shown = "Saved; takes effect after restart" in browser.find_element(By.ID, "tftp").text
    assert pending_shown == ("ip_tftp_port" in health["restart_needed_for"])
    document = tomlkit.parse(svc.config_path.read_text())
    assert document["http_max_conn"] == 321
    assert document["ip_tftp_port"] == f"127.0.0.1:{tftp_port} [::1]:{tftp_port}"
    assert "http_max_conn" in browser.find_element(By.ID, "audit").text

    screenshot(browser, ARTIFACTS / "ports-page.png", 1100)
    screenshot(browser, ARTIFACTS / "ports-page-phone.png", 390, 844)
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1"), "page wider than a phone screen"
    # the Certificate section: the generated pair, one row per key type, and the order of precedence
    assert browser.find_element(By.ID, "cert-source").text == "self-signed"
    rows = browser.find_element(By.ID, "cert-chains").text
    assert "ECDSA" in rows and "RSA" in rows and "Served in this order" in browser.find_element(By.ID, "certificate").text
    browser.execute_script("arguments[0].scrollIntoView()", browser.find_element(By.ID, "certificate"))
    browser.save_screenshot(str(ARTIFACTS / "ports-page-certificate.png"))

    # the address book page (rendered off the event loop in this request's context): a contact added
    # through the form, its flash message shown once
    browser.get(base + "/addressbook")
    wait_for(browser, (By.ID, "f-display_name"))
    set_field(browser, "display_name", "Browser Added")
    set_field(browser, "extension", "4711")
    submit_section(browser, "add")
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".flash")] == ["Added Browser Added."]
    assert "4711" in browser.find_element(By.ID, "contacts").text
    browser.refresh()
    wait_for(browser, (By.ID, "f-display_name"))
    assert browser.find_elements(By.CSS_SELECTOR, ".flash") == []
    assert "Browser Added" in browser.find_element(By.ID, "contacts").text


def test_passwd_opens_the_admin_pages_in_a_browser_without_a_restart(service, browser):
    """The page says no password is set; `passwd` runs beside the server; reloading the page offers the login."""
    svc = service({"ip_https_port": f"127.0.0.1:{free_port()}"})
    page = svc.url("/settings/ports", scheme="https")
    browser.get(page)
    assert "No admin password is set yet" in wait_for(browser, (By.TAG_NAME, "h1")).text

    result = run_cli(["passwd"], svc.config_path, stdin="browser password 7\n")
    assert result.returncode == 0, result.stderr
    # what the page tells a person to do: reload it, until it asks for the password
    eventually(lambda: browser.find_elements(By.ID, "password") or browser.get(page), 30)
    assert "/login" in browser.current_url, browser.page_source[:500]
    set_field(browser, "password", "browser password 7")
    submit_login(browser)
    wait_for(browser, (By.ID, "ip_https_port"))
    assert browser.current_url == page
