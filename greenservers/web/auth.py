"""Admin authentication and form safety: login session, HTTP Basic, CSRF, login rate limit.

Browsers log in with the form at /login and then carry a signed session
cookie (HttpOnly, SameSite=Strict, Secure when the request came over HTTPS)
that names a session open on the server (greenservers.web.sessions): logout
closes it, so a copy of the cookie is worthless afterwards; it ends after
SESSION_MAX_AGE, and a new admin password (from the page, the API, or
`python -m greenservers passwd` in the file) ends every session.
Scripts send HTTP Basic (user "admin") on the same endpoints.

`admin_required` protects every admin-facing view:
  - no admin password set yet: instructions to run `python -m greenservers
    passwd` (503), never an open form that the first visitor could claim;
  - not authenticated: browsers asking for HTML are sent to the login page,
    everything else gets 401 with a Basic challenge.

Every request that may change state (any method but GET, HEAD, OPTIONS, on
every route) passes `check_state_change` once: in `admin_required` after
authentication, or before any other view runs (login, logout, whatever is
added later; until an admin password is set these answer 503 as admin views
do). A browser may hold Basic credentials for this site and send them with
any request another site makes it send (a form post, `fetch` in `no-cors`
mode, `sendBeacon`), so what the request carries must prove it came from here:
  - a view declares the body it takes with `@takes(...)`; undeclared, it is
    a form (FORM_BODY), which must carry this session's CSRF token (the
    hidden field `csrf_field()` puts in every <form method="post">, or the
    X-CSRF-Token header);
  - an API write (JSON_BODY, CSV_BODY, NO_BODY for DELETE) must carry a body
    of exactly that media type (only a `charset=utf-8` parameter besides;
    a missing Content-Type too is refused, 415 naming the type), which no
    other site can make a browser send without a CORS preflight that is
    never granted, and, unless it carries the CSRF token, it must not be
    authenticated by the session cookie and a browser's `Origin` and
    `Sec-Fetch-Site` headers, when sent, must say this very origin (403).
Views then read only the body they declared (`request.get_json()` without
`force`).

Failed logins (form or Basic) are limited per client (an IPv4 address or an
IPv6 /64, proto.clients.FailureBackoff): after LOGIN_LIMIT failures within
LOGIN_WINDOW seconds the client gets 429 without its password being checked,
and its checks in progress count with its failures (guesses sent at once);
failures are logged rate-limited, never with the password tried. A request to
a view open to all (the login form) may carry OPEN_BODY_BYTES: Werkzeug reads
a form whole, on the event loop, before its CSRF token can be looked at (an
8 MB body of 2,000,000 fields held every service 2.5 s). An admin's view
takes BODY_BYTES unless it says more (`takes`), and a form past
FORM_ON_LOOP_BYTES is parsed in a pool thread.
"""

from __future__ import annotations

import base64
import collections
import functools
import hashlib
import hmac
import io
import logging
import secrets
import time

from flask import Blueprint, abort, current_app, g, jsonify, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from gevent.event import AsyncResult
from gevent.lock import BoundedSemaphore
from markupsafe import Markup
from werkzeug.exceptions import RequestEntityTooLarge

from ..passwords import MAX_PASSWORD, hash_password, verify_password
from ..process.offload import let_the_loop_turn, run_off_loop
from ..proto.clients import FailureBackoff, client_key
from ..ratelog import RateLimitedLog, printable
from . import get_runtime
from .sessions import AdminSessions

ADMIN_USER = "admin"
LOGIN_LIMIT = 5  # failed logins per address ...
LOGIN_WINDOW = 60.0  # ... within this many seconds
CHECKING_WAIT = 1.0  # seconds a client waits when its password checks in progress fill its limit
OPEN_BODY_BYTES = 16 * 1024  # the body of a request to a view open to all (a login form is under 1 KiB)
BODY_BYTES = 64 * 1024  # the body of an admin's request, unless its view says more (`takes`); the Ports form is about 8 KiB
FORM_ON_LOOP_BYTES = 4096  # a form body up to this is parsed on the event loop (well under a millisecond); a larger one in a pool thread
URLENCODED_BYTES = 160 * 1024  # an urlencoded form, whatever its view takes (two pasted PEMs): its split into fields is one C call
BODY_PIECE = 65536  # bytes of a large body read between two turns of the loop (20 MB read at once held it 100-170 ms)
MAX_TRACKED_ADDRESSES = 4096
SESSION_MAX_AGE = 8 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORM_CONTENT_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")  # where the token field is read
FORM_BODY, NO_BODY = "form", "none"  # what a view takes (see `takes`), besides a media type:
JSON_BODY, CSV_BODY = "application/json", "text/csv"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
PASSWD_COMMAND = "python -m greenservers passwd"

log = logging.getLogger("greenservers.web.auth")
bp = Blueprint("auth", __name__)


def _state() -> dict:
    """Per-app auth state (failed-login limiter and its clock, rate-limited log, verified-credentials cache)."""
    return current_app.extensions["greenservers_auth"]


def _login_wait(key: str) -> float:
    """Seconds until the client `key` may try a password again (0: now). Its checks still in progress count
    with its failures: guesses sent at once on many connections were each checked (200 in 13 s, the limit 5)."""
    state = _state()
    now = state["clock"]()
    wait = state["limiter"].retry_after(key, now)
    if not wait and state["limiter"].failures(key, now) + state["checking"][key] >= LOGIN_LIMIT:
        wait = CHECKING_WAIT
    return wait


class TooManyLogins(Exception):
    """The client has tried too many passwords (failed, or being checked): `wait` seconds before the next."""

    def __init__(self, wait: float):
        super().__init__(wait)
        self.wait = wait


def _client() -> str:
    return request.remote_addr or "-"


def _note_failure(how: str) -> None:
    key = client_key(_client())
    count = _state()["limiter"].failed(key, _state()["clock"]())
    _state()["ratelog"].warning("login-failed", _client(), "failed admin login (%s); %d within %ds", how, count, int(LOGIN_WINDOW))
    if count >= LOGIN_LIMIT:
        _state()["ratelog"].warning(
            "login-blocked", key, "%d failed admin logins within %ds: refusing logins from here for a while", count, int(LOGIN_WINDOW)
        )


def _too_many(wait: float):
    seconds = max(1, int(wait + 0.999))
    message = f"too many failed logins from your address; try again in {seconds} s"
    if wants_html():
        response = current_app.make_response((render_template("login.html", error=message, next_url=_safe_next(), user=ADMIN_USER), 429))
    else:
        response = jsonify(error=message)
        response.status_code = 429
    response.headers["Retry-After"] = str(seconds)
    return response


# -- credentials ---------------------------------------------------------------


def _basic_credentials() -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return user, password


def _password_ok(password: str, stored: str) -> bool:
    """verify_password, remembering recent successes: scrypt is slow on purpose and
    a script sending Basic on every request must not stall the whole process.

    The check itself (about 50 ms of CPU and 16 MiB) runs off the event loop, one at a time:
    in the loop, every wrong guess held every service of the process for 50 ms. It is counted against
    the client while it runs; TooManyLogins when the client's failures and checks fill its limit."""
    cache: collections.OrderedDict = _state()["verified"]
    key = hmac.new(_state()["cache_key"], f"{stored}\0{password}".encode(), hashlib.sha256).digest()
    if key in cache:
        return True
    pending = _state()["pending"]
    while key in pending:  # the same password is being checked (a script's requests sent at once): its answer
        right = pending[key].get()
        if right is not None:  # None: that check did not end (its request was killed): this one checks
            return right
    client = client_key(_client())
    wait = _login_wait(client)  # and, with nothing that lets others run between, this check counted
    if wait:
        raise TooManyLogins(wait)
    checking = _state()["checking"]
    checking[client] += 1
    answer = pending[key] = AsyncResult()
    try:
        with _state()["verifying"]:
            right = run_off_loop(verify_password, password, stored)
        answer.set(right)
        if not right:
            return False  # the caller notes the failure before anything lets others run
    except BaseException:
        answer.set(None)
        raise
    finally:
        del pending[key]
        checking[client] -= 1
        if not checking[client]:
            del checking[client]
    cache[key] = True
    while len(cache) > 8:
        cache.popitem(last=False)
    return True


def stored_hash() -> str:
    """The admin password hash in force (the worker applies one set in the file by passwd within a second)."""
    return get_runtime().settings.admin_password_hash


def _fingerprint(stored: str) -> str:
    """Ties a session to the password hash: a new password ends old sessions."""
    return hmac.new(current_app.secret_key, stored.encode(), hashlib.sha256).hexdigest()[:32]


def _session_admin(stored: str) -> bool:
    return session.get("admin") == ADMIN_USER and _state()["sessions"].valid(session.get("sid"), _fingerprint(stored))


def begin_session(stored: str) -> None:
    """Log this browser in: a new session on the server, a new cookie naming it and a new CSRF token."""
    _state()["sessions"].close(session.get("sid"))
    session.clear()
    session.permanent = True
    session.update(admin=ADMIN_USER, sid=_state()["sessions"].open(_fingerprint(stored)), csrf=secrets.token_urlsafe(32))


def end_every_session() -> None:
    """After the password changed: no session stays (each would fail its fingerprint anyway)."""
    _state()["sessions"].close_all()


class PasswordRefused(Exception):
    """A password change that was not made: `errors` maps a field to why; `status` is 400 or 429."""

    def __init__(self, errors: dict[str, str], status: int = 400):
        super().__init__("; ".join(errors.values()))
        self.errors, self.status = errors, status


def new_password_hash(current, new, again=None) -> str:
    """The hash of the new admin password, once the current one is right (checked as a login is,
    failures counted against the address) and the new one is usable (twice the same when `again`
    is given). Raises PasswordRefused; no message holds a password."""
    wait = _login_wait(client_key(_client()))
    if wait:
        raise PasswordRefused(
            {"current_password": f"too many failed logins from your address; try again in {max(1, int(wait + 0.999))} s"}, 429
        )
    errors = {}
    if not isinstance(new, str) or not new:
        errors["new_password"] = "the new password must not be empty"
    elif len(new) > MAX_PASSWORD:
        errors["new_password"] = f"the new password is longer than {MAX_PASSWORD} characters"
    elif again is not None and again != new:
        errors["new_password_again"] = "the two new passwords differ"
    try:
        right = isinstance(current, str) and _password_ok(current, stored_hash())
    except TooManyLogins as too_many:
        message = f"too many failed logins from your address; try again in {max(1, int(too_many.wait + 0.999))} s"
        raise PasswordRefused({"current_password": message}, 429) from None
    if not right:
        _note_failure("password change")
        errors["current_password"] = "the current password is wrong"
    if errors:
        raise PasswordRefused(errors)
    with _state()["verifying"]:  # scrypt, like a check: one at a time, off the event loop
        return run_off_loop(hash_password, new)


def auth_method() -> str:
    """How this request was authenticated: "session", "basic" or "" (for the audit log)."""
    return g.get("greenservers_auth_via", "")


def wants_html() -> bool:
    """A browser asking for a page (not a script, not the JSON API)."""
    if request.path.startswith("/api/"):
        return False
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


# -- CSRF ----------------------------------------------------------------------


def csrf_token() -> str:
    """This session's CSRF token (made on first use)."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_field() -> Markup:
    """The hidden form field carrying the CSRF token: put it in every POST form."""
    return Markup('<input type="hidden" name="%s" value="%s">') % (CSRF_FIELD, csrf_token())


def csrf_valid(form_field: bool = True) -> bool:
    """The request carries this session's token: in the X-CSRF-Token header, or (a form) in its field."""
    expected = session.get("csrf")
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and form_field and request.mimetype in FORM_CONTENT_TYPES:
        sent = request.form.get(CSRF_FIELD)
    return bool(expected and sent and hmac.compare_digest(str(sent), str(expected)))


def _refuse(status: int, kind: str, why: str, message: str):
    _state()["ratelog"].warning(kind, _client(), "%s %s refused: %s", request.method, printable(request.path), printable(why))
    abort(status, description=message)


def check_csrf() -> None:
    """Abort with 403 unless the request carries this session's CSRF token."""
    if not csrf_valid():
        _refuse(403, "csrf", "missing or wrong CSRF token",
                "The form was out of date or did not come from this site (CSRF token missing or wrong). "
                "Reload the page and try again.")


def takes(body: str, max_bytes: int = BODY_BYTES):
    """Declare the body a view's state-changing requests take: FORM_BODY (the default), NO_BODY,
    or a media type (JSON_BODY, CSV_BODY), and its size at most (413 past it, before a byte is parsed).
    Put it under the route decorator."""

    def declare(view):
        view.greenservers_takes = body
        view.greenservers_body_bytes = max_bytes
        return view

    return declare


def json_object() -> dict | None:
    """The body of a view that takes JSON_BODY, if it is a JSON object (None: it is not)."""
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else None


def _body_type_problem(expected: str) -> str | None:
    """Why the request's Content-Type is not exactly `expected` (None when it is)."""
    params = {k.lower(): v.lower() for k, v in request.mimetype_params.items()}
    if request.mimetype == expected and set(params) <= {"charset"} and params.get("charset", "utf-8") == "utf-8":
        return None
    sent = request.headers.get("Content-Type", "")
    what = f"not {sent[:80]!r}" if sent else "the request had none"
    return f"{request.method} {request.path} takes a {expected} body (UTF-8): send 'Content-Type: {expected}' ({what})"


def _origin_of(url: str) -> str:
    """scheme://host[:port] in one spelling: lower case, without the scheme's default port."""
    scheme, _, host = url.lower().partition("://")
    default_port = {"https": ":443", "http": ":80"}.get(scheme, "")
    return f"{scheme}://{host.removesuffix(default_port) if default_port else host}"


def _cross_site() -> str | None:
    """What says the request came from another site (None: nothing does; a script sends neither header)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site.lower() != "same-origin":
        return f"Sec-Fetch-Site: {site[:40]}"
    origin = request.headers.get("Origin")
    if origin is not None and _origin_of(origin) != _origin_of(request.host_url.rstrip("/")):
        return f"Origin: {origin[:100]}"
    return None


def check_state_change(via: str) -> None:
    """The one check of a request that may change state (see the module docstring); aborts when refused.
    `via` is how it was authenticated ("session", "basic", or "" for views open to all)."""
    if request.method in SAFE_METHODS:
        return
    view = current_app.view_functions.get(request.endpoint)
    body = getattr(view, "greenservers_takes", FORM_BODY)
    if body == FORM_BODY:
        check_csrf()
        return
    if body != NO_BODY:
        problem = _body_type_problem(body)
        if problem:
            abort(415, description=problem)
    if csrf_valid(form_field=False):
        return
    if via == "session":
        _refuse(403, "csrf", "session without CSRF token", f"a logged-in browser must send the {CSRF_HEADER} header")
    reason = _cross_site()
    if reason:
        _refuse(403, "cross-site", reason, f"refused: the request came from another site ({reason})")


# -- the decorator -------------------------------------------------------------


def no_password_response():
    message = f"no admin password is set; run: {PASSWD_COMMAND}"
    if wants_html():
        return render_template("setup_needed.html", command=PASSWD_COMMAND), 503
    return jsonify(error=message), 503


def admin_required(view):
    """Let the view run only for the authenticated admin (see the module docstring)."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        stored = stored_hash()
        if not stored:
            return no_password_response()
        via = ""
        if _session_admin(stored):
            via = "session"
        else:
            creds = _basic_credentials()
            if creds is not None:
                wait = _login_wait(client_key(_client()))
                if wait:
                    return _too_many(wait)
                try:
                    right = creds[0] == ADMIN_USER and _password_ok(creds[1], stored)
                except TooManyLogins as too_many:
                    return _too_many(too_many.wait)
                if right:
                    via = "basic"
                else:
                    _note_failure("HTTP Basic")
        if not via:
            if wants_html():
                return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
            response = jsonify(error="authentication required")
            response.status_code = 401
            response.headers["WWW-Authenticate"] = 'Basic realm="greenservers", charset="UTF-8"'
            return response
        g.greenservers_auth_via = via
        _form_parsed_off_loop()
        check_state_change(via)
        return view(*args, **kwargs)

    wrapper.greenservers_admin = True  # check_state_change runs here, once authenticated
    return wrapper


def _form_parsed_off_loop() -> None:
    """A form body past FORM_ON_LOOP_BYTES is read on the loop (at most its view's limit) and parsed in a pool
    thread before anything looks at it: Werkzeug parses a form whole, and 64 KiB of empty fields took 19 ms."""
    if request.mimetype in FORM_CONTENT_TYPES and (request.content_length or 0) > FORM_ON_LOOP_BYTES:
        read_body_in_turns()
        # the request itself, not a copy of its context: popped in the thread, a context closes the request, and
        # with it the form's uploaded files
        parsed = request._get_current_object()
        run_off_loop(lambda: parsed.form)


def read_body_in_turns() -> bytes:
    """The request's body (its Content-Length: a chunked one was refused by the shell), read BODY_PIECE at a time
    with a turn of the loop between pieces, then put back as the request's input for Werkzeug to read; 413 for
    one over the request's limit, before a byte is read."""
    length = request.content_length or 0
    if request.max_content_length is not None and length > request.max_content_length:
        raise RequestEntityTooLarge()
    environ = request.environ
    pieces, left = [], length
    while left > 0 and (piece := environ["wsgi.input"].read(min(BODY_PIECE, left))):
        pieces.append(piece)
        left -= len(piece)
        let_the_loop_turn()
    body = b"".join(pieces)
    environ["wsgi.input"] = io.BytesIO(body)
    return body


# -- login and logout ----------------------------------------------------------


def _safe_next() -> str:
    """Where to go after login: a path on this site only (never //host or a URL)."""
    target = request.values.get("next", "") or ""
    if not target.startswith("/") or target.startswith("//") or "\\" in target or any(ord(c) < 32 for c in target):
        return url_for("ui.settings_ports")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    stored = stored_hash()
    if not stored:
        return no_password_response()
    if request.method == "GET":
        if _session_admin(stored):
            return redirect(_safe_next())
        return render_template("login.html", next_url=_safe_next(), user=ADMIN_USER)
    key = client_key(_client())
    wait = _login_wait(key)
    if wait:
        return _too_many(wait)
    user = request.form.get("username", ADMIN_USER)
    password = request.form.get("password", "")
    try:
        right = user == ADMIN_USER and _password_ok(password, stored)
    except TooManyLogins as too_many:
        return _too_many(too_many.wait)
    if not right:
        _note_failure("login form")
        return render_template("login.html", error="Wrong user name or password.", next_url=_safe_next(), user=user[:64]), 401
    _state()["limiter"].succeeded(key)
    begin_session(stored)
    log.info("admin logged in from %s", _client())
    return redirect(_safe_next(), code=303)


@bp.post("/logout")
def logout():
    _state()["sessions"].close(session.get("sid"))
    session.clear()
    return redirect(url_for("auth.login"), code=303)


# -- wiring ----------------------------------------------------------------------


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session with the Secure flag set when the request came over HTTPS."""

    def get_cookie_secure(self, app) -> bool:
        return bool(app.config.get("SESSION_COOKIE_SECURE")) or request.is_secure


def init_app(app) -> None:
    """Register the login views, the session interface and the template helpers."""
    app.config["SESSION_COOKIE_NAME"] = "greenservers_session"
    app.config["PERMANENT_SESSION_LIFETIME"] = SESSION_MAX_AGE
    app.session_interface = SessionInterface()
    app.extensions["greenservers_auth"] = {
        "limiter": FailureBackoff(LOGIN_LIMIT, LOGIN_WINDOW, MAX_TRACKED_ADDRESSES),
        "clock": time.monotonic,
        "ratelog": RateLimitedLog(log, interval=LOGIN_WINDOW),
        "verified": collections.OrderedDict(),
        "cache_key": secrets.token_bytes(32),
        "checking": collections.Counter(),  # password checks in progress, by client
        "pending": {},  # the checks in progress by password (keyed as "verified"): requests sent at once share one
        "verifying": BoundedSemaphore(1),  # one password check at a time: the other core stays with the event loop
        "sessions": AdminSessions(SESSION_MAX_AGE),
    }
    app.jinja_env.globals.update(csrf_field=csrf_field, csrf_token=csrf_token)

    @app.before_request
    def _admin_body_limit():
        view = current_app.view_functions.get(request.endpoint)
        if view is not None and getattr(view, "greenservers_admin", False):
            limit = getattr(view, "greenservers_body_bytes", BODY_BYTES)
            if request.mimetype == "application/x-www-form-urlencoded":  # its large limit is for multipart files
                limit = min(limit, URLENCODED_BYTES)
            request.max_content_length = limit  # 413 before parsing

    @app.before_request
    def _state_changes_outside_admin_views():
        view = current_app.view_functions.get(request.endpoint)
        if view is None or getattr(view, "greenservers_admin", False) or request.method in SAFE_METHODS:
            return None
        if not stored_hash():
            return no_password_response()  # nothing changes state before there is an admin
        request.max_content_length = OPEN_BODY_BYTES  # 413 before a byte of the form is parsed
        check_state_change("")
        return None

    @app.context_processor
    def _auth_context():
        stored = stored_hash()
        return {"logged_in": bool(stored) and _session_admin(stored)}

    app.register_blueprint(bp)
