"""Admin authentication with Flask's test client: login form, HTTP Basic, CSRF, rate limit, headers."""

from __future__ import annotations

import json
import logging

import pytest
from support.clock import FakeClock
from support.web import HTML, PASSWORD, WebFixture, basic, csrf_of

from greenservers.audit import AUDIT_FILE
from greenservers.config.store import ConfigStore
from greenservers.passwords import hash_password
from greenservers.web.auth import LOGIN_LIMIT, LOGIN_WINDOW

# -- no password yet -----------------------------------------------------------------


def test_without_a_password_admin_pages_show_instructions_not_a_form(tmp_path):
    web = WebFixture(tmp_path, password=False)
    for path in ("/settings/ports", "/login"):
        page = web.client.get(path, headers=HTML)
        assert page.status_code == 503
        assert "python -m greenservers passwd" in page.text
        assert "<form" not in page.text.replace('class="logout"', "")
        assert 'type="password"' not in page.text
    api = web.client.get("/api/settings/ports", headers=basic())
    assert api.status_code == 503 and "python -m greenservers passwd" in api.json["error"]
    posted = web.client.post("/login", data={"username": "admin", "password": "anything"}, headers=HTML)
    assert posted.status_code == 503
    assert web.runtime.settings.admin_password_hash == ""


# -- who gets in --------------------------------------------------------------------


def test_healthz_needs_no_auth(web):
    answer = web.client.get("/healthz")
    assert answer.status_code == 200 and answer.json["status"] == "ok"


def test_browser_without_session_is_sent_to_login(web):
    answer = web.client.get("/settings/ports", headers=HTML)
    assert answer.status_code == 302
    assert answer.location == "/login?next=/settings/ports"


def test_scripts_without_auth_get_401_with_basic_challenge(web):
    for path in ("/settings/ports", "/api/settings/ports"):
        answer = web.client.get(path)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith("Basic ")
    # a browser asking the API still gets JSON, not a login redirect
    assert web.client.get("/api/settings/ports", headers=HTML).status_code == 401
    assert web.client.put("/api/settings/ports", json={"http_max_conn": 5}).status_code == 401
    assert web.runtime.settings.http_max_conn == 1000


def test_basic_auth_wrong_and_right(web):
    assert web.client.get("/api/settings/ports", headers=basic(password="wrong")).status_code == 401
    assert web.client.get("/api/settings/ports", headers=basic(user="root")).status_code == 401
    assert web.client.get("/api/settings/ports", headers={"Authorization": "Basic !!!"}).status_code == 401
    assert web.client.get("/api/settings/ports", headers=basic()).status_code == 200
    assert web.client.get("/settings/ports", headers=basic()).status_code == 200


def test_login_form_sets_a_safe_session_cookie(web):
    wrong = web.login(password="wrong")
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
    assert web.client.get("/settings/ports", headers=HTML).status_code == 302
    right = web.login()
    assert right.status_code == 303 and right.location == "/settings/ports"
    cookie = right.headers["Set-Cookie"]
    assert cookie.startswith("greenservers_session=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
    page = web.client.get("/settings/ports", headers=HTML)
    assert page.status_code == 200 and "Settings › Ports" in page.text


def test_session_cookie_is_secure_over_https(tmp_path):
    web = WebFixture(tmp_path)
    web.client = web.app.test_client()
    page = web.client.get("/login", headers=HTML, base_url="https://localhost")
    answer = web.client.post(
        "/login", base_url="https://localhost", headers=HTML,
        data={"csrf_token": csrf_of(page.text), "username": "admin", "password": PASSWORD},
    )
    assert answer.status_code == 303
    cookie = answer.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_login_redirect_stays_on_this_site(web):
    page = web.client.get("/login", headers=HTML)
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        web.client.get("/login", headers=HTML)
        form = {"csrf_token": csrf_of(page.text), "username": "admin", "password": PASSWORD, "next": target}
        answer = web.client.post("/login", headers=HTML, data=form)
        assert answer.status_code == 303
        assert answer.location == "/settings/ports", target
        web.client.post("/logout", data={"csrf_token": csrf_of(web.client.get("/settings/ports", headers=HTML).text)})
        page = web.client.get("/login", headers=HTML)


def test_login_without_csrf_token_is_refused(web):
    web.client.get("/login", headers=HTML)
    answer = web.client.post("/login", data={"username": "admin", "password": PASSWORD}, headers=HTML)
    assert answer.status_code == 403
    assert "CSRF" in answer.text
    assert web.client.get("/settings/ports", headers=HTML).status_code == 302


def test_logout_needs_csrf_and_ends_the_session(web):
    web.login()
    assert web.client.post("/logout").status_code == 403
    assert web.client.get("/settings/ports", headers=HTML).status_code == 200
    answer = web.client.post("/logout", data={"csrf_token": web.page_token()})
    assert answer.status_code == 303
    assert web.client.get("/settings/ports", headers=HTML).status_code == 302


def test_a_new_password_ends_existing_sessions(web):
    web.login()
    assert web.client.get("/settings/ports", headers=HTML).status_code == 200
    web.runtime.update({"admin_password_hash": hash_password("another one")})
    assert web.client.get("/settings/ports", headers=HTML).status_code == 302


def _copy_of_session(web):
    """Another client holding a copy of web.client's session cookie (as a thief would)."""
    thief = web.app.test_client()
    thief.set_cookie("greenservers_session", web.client.get_cookie("greenservers_session").value)
    return thief


def test_logout_ends_the_session_on_the_server_not_only_in_this_browser(web):
    web.login()
    thief = _copy_of_session(web)
    assert thief.get("/settings/ports", headers=HTML).status_code == 200
    assert web.client.post("/logout", data={"csrf_token": web.page_token()}).status_code == 303
    assert thief.get("/settings/ports", headers=HTML).status_code == 302
    assert thief.get("/api/settings/ports").status_code == 401
    assert len(web.app.extensions["greenservers_auth"]["sessions"]) == 0


def test_changing_the_password_on_the_page_ends_every_other_session(web):
    other = web.app.test_client()
    web.login(client=other)
    web.login()
    thief = _copy_of_session(web)
    form = {"csrf_token": web.page_token(), "current_password": PASSWORD, "new_password": "a new one", "new_password_again": "a new one"}
    answer = web.client.post("/settings/password", data=form, headers=HTML)
    assert answer.status_code == 303 and answer.location == "/settings/ports"
    assert web.client.get("/settings/ports", headers=HTML).status_code == 200  # the changer stays, with a new session
    for client in (other, thief):
        assert client.get("/settings/ports", headers=HTML).status_code == 302
    script = web.app.test_client()  # HTTP Basic, no session
    assert script.get("/api/settings/ports", headers=basic()).status_code == 401
    assert script.get("/api/settings/ports", headers=basic(password="a new one")).status_code == 200
    audit = json.loads((web.runtime.settings.data_path / AUDIT_FILE).read_text().splitlines()[-1])
    assert audit["changes"] == [{"setting": "admin_password_hash", "old": "(set)", "new": "(changed)"}] and audit["via"] == "web page"
    assert "a new one" not in web.config_text


@pytest.mark.parametrize(("form", "field"), [
    ({"current_password": "wrong", "new_password": "n", "new_password_again": "n"}, "current_password"),
    ({"current_password": PASSWORD, "new_password": "n", "new_password_again": "m"}, "new_password_again"),
    ({"current_password": PASSWORD, "new_password": "", "new_password_again": ""}, "new_password"),
])
def test_a_refused_password_change_changes_nothing(web, form, field):
    web.login()
    before = web.config_text
    answer = web.client.post("/settings/password", data={"csrf_token": web.page_token(), **form}, headers=HTML)
    assert answer.status_code == 400 and f'id="e-{field}"' in answer.text
    assert PASSWORD not in answer.text and "wrong" not in answer.text.replace("is wrong", "")
    assert web.config_text == before
    assert web.client.get("/settings/ports", headers=HTML).status_code == 200


def test_the_password_api_checks_the_current_one_and_counts_failures(web):
    url = "/api/settings/password"
    for _ in range(LOGIN_LIMIT):
        answer = web.client.put(url, json={"current_password": "guess", "new_password": "mine now"}, headers=basic())
        assert answer.status_code == 400 and "current_password" in answer.json["errors"]
    assert web.client.put(url, json={"current_password": PASSWORD, "new_password": "x"}, headers=basic()).status_code == 429
    web.clock.now += LOGIN_WINDOW + 1
    answer = web.client.put(url, json={"current_password": PASSWORD, "new_password": "mine now"}, headers=basic())
    assert answer.status_code == 200 and answer.json == {"changed": True, "sessions_ended": True}
    assert web.client.get("/api/settings/ports", headers=basic(password="mine now")).status_code == 200
    assert "mine now" not in web.config_text


def test_a_password_set_in_the_file_by_passwd_ends_every_session_once_read(web):
    web.login()
    assert web.client.get("/settings/ports", headers=HTML).status_code == 200
    ConfigStore(web.store.path).update({"admin_password_hash": hash_password("from the shell")})  # as the CLI does
    web.runtime.reload_from_file()  # as the worker does when it sees the file changed
    assert web.client.get("/settings/ports", headers=HTML).status_code == 302
    script = web.app.test_client()
    assert script.get("/api/settings/ports", headers=basic(password="from the shell")).status_code == 200
    assert script.get("/api/settings/ports", headers=basic()).status_code == 401


def test_admin_sessions_are_bounded_and_end_with_age_password_or_close():
    from greenservers.web.sessions import AdminSessions

    clock = FakeClock()
    sessions = AdminSessions(max_age=100, limit=3, clock=clock)
    first, second, third = (sessions.open("fp") for _ in range(3))
    assert all(sessions.valid(sid, "fp") for sid in (first, second, third))
    assert sessions.valid(first, "fp")  # now the most recently used: the second goes first
    fourth = sessions.open("fp")
    assert len(sessions) == 3 and not sessions.valid(second, "fp") and sessions.valid(first, "fp")
    assert not sessions.valid(third, "another password") and not sessions.valid(third, "fp")
    sessions.close(fourth)
    assert not sessions.valid(fourth, "fp") and not sessions.valid(None, "fp") and not sessions.valid(["x"], "fp")
    clock.now += 100
    assert not sessions.valid(first, "fp") and len(sessions) == 0


# -- failed-login rate limit ------------------------------------------------------------


def test_failed_logins_are_limited_per_address_and_logged(web, caplog):
    caplog.set_level(logging.INFO, logger="greenservers")
    for _ in range(LOGIN_LIMIT):
        assert web.login(password="guess-1", address="192.0.2.7").status_code == 401
    blocked = web.login(address="192.0.2.7")  # even the right password is not checked now
    assert blocked.status_code == 429
    assert int(blocked.headers["Retry-After"]) >= 1
    assert "too many failed logins" in blocked.text
    # HTTP Basic from that address is refused the same way
    assert web.client.get("/api/settings/ports", headers=basic(), environ_base={"REMOTE_ADDR": "192.0.2.7"}).status_code == 429
    # another address is not affected
    other = web.app.test_client()
    assert web.login(client=other, address="192.0.2.8").status_code == 303
    # the log names the address and never the password tried
    log_text = caplog.text
    assert "192.0.2.7" in log_text and "failed admin login" in log_text
    assert "refusing logins" in log_text
    assert "guess-1" not in log_text and PASSWORD not in log_text
    # the window passes: the address may try again
    web.clock.now += LOGIN_WINDOW + 1
    assert web.login(address="192.0.2.7").status_code == 303


def test_password_checks_in_progress_count_with_the_failures(web):
    """Guesses sent at once on many connections each passed the limit's check before any had failed (200 were
    checked in 13 s): a check in progress counts, so a client's failures and checks together stay within it."""
    checking = web.app.extensions["greenservers_auth"]["checking"]
    checking["192.0.2.9"] = LOGIN_LIMIT - 1  # as if that many of its guesses were being checked now
    assert web.login(password="guess", address="192.0.2.9").status_code == 401  # the last one the limit allows
    checking["192.0.2.9"] = LOGIN_LIMIT - 1
    busy = web.client.get("/api/settings/ports", headers=basic(password="guess"), environ_base={"REMOTE_ADDR": "192.0.2.9"})
    assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
    assert web.login(address="192.0.2.10").status_code == 303  # another client is not affected
    del checking["192.0.2.9"]
    assert not checking  # no check left counted once it is done


def test_requests_with_a_password_being_checked_share_that_check(web):
    """A script's requests sent at once with the right password, before it is remembered: the first is checked,
    the others wait for its answer (each counted as a check of its own, 3 of 8 were refused 429)."""
    import hashlib
    import hmac

    from gevent.event import AsyncResult

    state = web.app.extensions["greenservers_auth"]
    stored = web.runtime.settings.admin_password_hash
    key = hmac.new(state["cache_key"], f"{stored}\0{PASSWORD}".encode(), hashlib.sha256).digest()
    being_checked = state["pending"][key] = AsyncResult()
    being_checked.set(True)  # the first request's check, answered
    state["checking"]["192.0.2.11"] = LOGIN_LIMIT - 1  # that client's other checks in progress: one more fits
    try:
        for _ in range(3):
            answer = web.client.get("/api/settings/ports", headers=basic(), environ_base={"REMOTE_ADDR": "192.0.2.11"})
            assert answer.status_code == 200  # the same password: the check's answer, not a check of its own
        guess = web.client.get("/api/settings/ports", headers=basic(password="guess"), environ_base={"REMOTE_ADDR": "192.0.2.11"})
        assert guess.status_code == 401  # another password: the one check of its own that fits, failed
        again = web.client.get("/api/settings/ports", headers=basic(password="guess2"), environ_base={"REMOTE_ADDR": "192.0.2.11"})
        assert again.status_code == 429
    finally:
        del state["pending"][key], state["checking"]["192.0.2.11"]


def test_a_large_form_to_a_view_open_to_all_is_refused_before_it_is_parsed(web):
    """Werkzeug reads a form whole on the event loop before its CSRF token is looked at: 2,000,000 fields
    in 8 MB held every service 2.5 s. A view open to all (the login form) takes 16 KiB."""
    page = web.client.get("/login", headers=HTML)
    fields = "&".join(f"f{n}=x" for n in range(10_000))
    body = f"csrf_token={csrf_of(page.text)}&username=admin&password=guess&{fields}"
    answer = web.client.post("/login", data=body, headers={**HTML, "Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 413
    assert web.login().status_code == 303  # not counted as a failed login


def test_an_admin_s_body_past_its_view_s_limit_is_refused_before_it_is_parsed(web):
    """8 MB of form (850,000 fields) or JSON sent with the admin's credentials were parsed on the event loop:
    2 s and 0.2 s with every service held. An admin's view takes 64 KiB unless it says more."""
    fields = "&".join(f"f{n}=" for n in range(30_000))
    form = web.client.post("/settings/ports", data=fields, headers={**basic(), "Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 413
    json_body = '{"mobile": "1", "x": "' + "y" * 70_000 + '"}'
    put = web.client.put("/api/addressbook/1", data=json_body, headers={**basic(), "Content-Type": "application/json"})
    assert put.status_code == 413
    import_view = web.app.view_functions["addressbook.import_contacts"]
    assert import_view.greenservers_body_bytes > 20_000_000  # an import takes its 24 MB
    # ... as a file, not as an urlencoded form: 20 MB of fields split in one C call held every service 0.5-1 s
    urlencoded = web.client.post("/addressbook/import", data="a=&" * 60_000,
                                 headers={**basic(), "Content-Type": "application/x-www-form-urlencoded"})
    assert urlencoded.status_code == 413


def test_an_admin_s_larger_form_is_parsed_in_a_pool_thread(web, monkeypatch):
    """Under the limit, 64 KiB of empty fields still took 19 ms to parse: past 4 KiB, a form is parsed off the loop."""
    from greenservers.web import auth

    parsed_in = []
    web.login()
    run = auth.run_off_loop
    monkeypatch.setattr(auth, "run_off_loop", lambda work, *args: parsed_in.append(work) or run(work, *args))
    small = web.client.post("/settings/ports", data={"csrf_token": web.page_token()}, headers=HTML)
    assert small.status_code in (200, 303, 400) and parsed_in == []
    fields = "&".join(f"f{n}=" for n in range(5_000))
    large = web.client.post("/settings/ports", data=f"csrf_token={web.page_token()}&{fields}",
                            headers={**HTML, "Content-Type": "application/x-www-form-urlencoded"})
    assert large.status_code in (200, 303, 400) and len(parsed_in) == 1  # the CSRF token was found: parsed whole


def test_failed_basic_auth_counts_towards_the_limit(web):
    for _ in range(LOGIN_LIMIT):
        answer = web.client.get("/api/settings/ports", headers=basic(password="nope"), environ_base={"REMOTE_ADDR": "2001:db8::1"})
        assert answer.status_code == 401
    # the same IPv6 /64 is one client
    answer = web.client.get("/api/settings/ports", headers=basic(), environ_base={"REMOTE_ADDR": "2001:db8::2"})
    assert answer.status_code == 429
    assert web.client.get("/api/settings/ports", headers=basic(), environ_base={"REMOTE_ADDR": "2001:db8:1::1"}).status_code == 200


# -- CSRF on admin form posts ---------------------------------------------------------------


def test_form_post_without_or_with_wrong_csrf_token_is_refused(web):
    web.login()
    before = web.config_text
    for data in ({"http_max_conn": "5"}, {"http_max_conn": "5", "csrf_token": "forged"}):
        answer = web.client.post("/settings/ports", data=data, headers=HTML)
        assert answer.status_code == 403
    assert web.runtime.settings.http_max_conn == 1000
    assert web.config_text == before


def test_form_post_with_basic_credentials_still_needs_the_token(web):
    """A browser that cached Basic credentials must not let another site post forms."""
    answer = web.client.post("/settings/ports", data={"http_max_conn": "5"}, headers=basic())
    assert answer.status_code == 403
    assert web.runtime.settings.http_max_conn == 1000


def test_api_put_with_session_cookie_needs_the_csrf_header(web):
    web.login()
    assert web.client.put("/api/settings/ports", json={"http_max_conn": 5}).status_code == 403
    assert web.runtime.settings.http_max_conn == 1000
    answer = web.client.put("/api/settings/ports", json={"http_max_conn": 5}, headers={"X-CSRF-Token": web.page_token()})
    assert answer.status_code == 200 and web.runtime.settings.http_max_conn == 5


def test_a_view_added_later_is_guarded_without_saying_so(tmp_path):
    """The check is not per view: a new route that changes state needs the token like every form."""
    web = WebFixture(tmp_path)
    calls = []
    web.app.add_url_rule("/later", "later", lambda: calls.append(1) or "done", methods=["POST", "DELETE"])
    for method in ("POST", "DELETE"):
        for headers in ({}, basic(), {**basic(), "Content-Type": "application/json"}):
            assert web.client.open("/later", method=method, headers=headers, data="{}").status_code == 403
    web.login()
    assert web.client.post("/later", data={"csrf_token": web.page_token()}).status_code == 200
    assert calls == [1]


def test_until_a_password_is_set_nothing_changes_state(tmp_path):
    web = WebFixture(tmp_path, password=False)
    web.app.add_url_rule("/later", "later", lambda: "done", methods=["POST"])
    assert web.client.post("/later").status_code == 503
    assert web.client.post("/logout").status_code == 503


@pytest.mark.parametrize(("origin", "host", "same"), [
    ("https://pbx.example:8443", "pbx.example:8443", True),
    ("https://PBX.example:443", "pbx.example", True),
    ("https://pbx.example", "pbx.example:443", True),
    ("https://[::1]:8443", "[::1]:8443", True),
    ("http://pbx.example:8443", "pbx.example:8443", False),
    ("https://pbx.example:8444", "pbx.example:8443", False),
    ("https://pbx.example.evil.example", "pbx.example", False),
    ("null", "pbx.example", False),
])
def test_origin_is_compared_as_scheme_host_and_port(web, origin, host, same):
    answer = web.client.put("/api/settings/ports", json={"http_max_conn": 7}, base_url=f"https://{host}",
                            headers={**basic(), "Origin": origin})
    assert answer.status_code == (200 if same else 403), answer.text
    assert (web.runtime.settings.http_max_conn == 7) == same


def test_an_api_body_is_checked_whatever_carries_the_token(web):
    web.login()
    token = {"X-CSRF-Token": web.page_token()}
    answer = web.client.put("/api/settings/ports", data='{"http_max_conn": 7}', headers={**token, "Content-Type": "text/plain"})
    assert answer.status_code == 415 and "application/json" in answer.json["error"]
    assert web.runtime.settings.http_max_conn == 1000
    assert web.client.put("/api/settings/ports", json={"http_max_conn": 7}, headers=token).status_code == 200


# -- headers ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/login", "/settings/ports", "/api/settings/ports", "/no-such-page"])
def test_security_headers_on_every_response(web, path):
    answer = web.client.get(path, headers=HTML)
    assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    assert answer.headers["Cache-Control"] == "no-store"


def test_stylesheet_is_served_and_cacheable(web):
    answer = web.client.get("/static/style.css")
    assert answer.status_code == 200 and answer.mimetype == "text/css"
    assert answer.headers.get("Cache-Control") != "no-store"
    answer.close()
