"""Admin authentication: HTTP Basic for scripts, a session cookie for browsers.

`admin_required` protects every admin-facing view. Until an admin password
is set, protected views answer with instructions (never an open form that
anyone could claim).
"""

from __future__ import annotations

import base64
import functools

from flask import jsonify, request, session

from ..passwords import verify_password
from . import get_runtime

ADMIN_USER = "admin"


def _basic_credentials() -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return user, password


def current_admin() -> str | None:
    """The authenticated admin's name for this request, or None."""
    stored = get_runtime().settings.admin_password_hash
    if not stored:
        return None
    if session.get("admin") == ADMIN_USER:
        return ADMIN_USER
    creds = _basic_credentials()
    if creds and creds[0] == ADMIN_USER and verify_password(creds[1], stored):
        return ADMIN_USER
    return None


def admin_required(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        if not get_runtime().settings.admin_password_hash:
            return jsonify(error="no admin password is set; run: python -m greenservers passwd"), 503
        if current_admin() is None:
            response = jsonify(error="authentication required")
            response.status_code = 401
            response.headers["WWW-Authenticate"] = 'Basic realm="greenservers", charset="UTF-8"'
            return response
        return view(*args, **kwargs)

    return wrapper
