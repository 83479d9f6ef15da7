"""The Flask application factory: blueprints ui (pages), api (JSON), prov (provisioning), and those of the address
book, the sensors, the phones and the uploads; `whole_arg`, the one reading of a page's number, offset or limit."""

from __future__ import annotations

import os
import secrets

from flask import Flask, current_app, request

from ..config.private import make_private_dir, open_private
from ..process import runtime as runtime_module


def _secret_key(runtime) -> bytes:
    """The session-signing key, made once and kept in data_dir (mode 0600)."""
    path = runtime.settings.data_path / "session.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        make_private_dir(path.parent)
        key = secrets.token_bytes(32)
        fd = open_private(path, os.O_WRONLY, exclusive=True)
        with os.fdopen(fd, "wb") as out:
            out.write(key)
        return key


# No scripts, no frames, no foreign origins: the pages are plain forms and one stylesheet.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
NO_STORE_EXEMPT = ("/static/", "/prov/")  # cacheable; everything else may hold admin data


def _add_security_headers(app: Flask) -> None:
    @app.after_request
    def security_headers(response):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if "Cache-Control" not in response.headers and not request.path.startswith(NO_STORE_EXEMPT):
            response.headers["Cache-Control"] = "no-store"
        return response


def create_app(runtime=None) -> Flask:
    app = Flask(__name__)
    app.config["GREENSERVERS_RUNTIME"] = runtime
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Strict"
    app.secret_key = _secret_key(runtime or runtime_module.current())

    from . import api, auth, prov, ui

    app.config["MAX_CONTENT_LENGTH"] = auth.BODY_BYTES  # an admin view may take more (auth.takes)

    auth.init_app(app)
    _add_security_headers(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(ui.bp)
    app.register_blueprint(prov.bp)
    from . import addressbook

    app.register_blueprint(addressbook.bp)
    from . import phones, sensors

    app.register_blueprint(sensors.bp)
    app.register_blueprint(phones.bp)
    from . import uploads

    app.register_blueprint(uploads.bp)
    return app


def get_runtime():
    """The runtime of the running app: the one given to create_app, else the process's."""
    return current_app.config.get("GREENSERVERS_RUNTIME") or runtime_module.current()


def whole_arg(name: str, default: int | None, low: int = 0, high: int | None = None) -> int | None:
    """The query parameter `name` as a whole number from `low` (to `high`); `default` when absent or empty.
    ValueError, naming the parameter and what it must be, for anything else."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    value = int(raw) if raw.isdigit() and len(raw) <= 12 else -1
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"of {low} or more"
        raise ValueError(f"{name} must be a whole number {bounds}, not {raw[:32]!r}")
    return value
