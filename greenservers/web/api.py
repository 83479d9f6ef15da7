"""The JSON API blueprint: health check (no auth) and, behind auth, the Ports settings and the admin password.

PUT /api/settings/password takes {"current_password", "new_password"} and
sets the admin password (ending every session); 400 names each bad field.

GET /api/settings/ports answers the Ports page's settings as
`Settings.public_view()` (secrets as {"set": true|false}). PUT takes a JSON
object with any subset of them: all of it is applied, or (400, one message
per field) none of it. The 200 answer is the effective settings; the names
that take effect only after a restart are in the `X-Restart-Needed` header.
A secret sent back as {"set": ...} (as GET shows it) means "unchanged", so a
script may GET, edit and PUT the whole object.

`apply_settings_changes` is the one way the web interface changes settings
(the page uses it too): runtime.update, then one audit entry.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from ..audit import AuditLog, masked_changes
from ..config.settings import BY_NAME, DECLARATIONS, SettingsError
from ..config.store import ConfigFileError
from ..process.runtime import ChangeResult
from . import get_runtime
from .auth import (
    ADMIN_USER,
    JSON_BODY,
    PasswordRefused,
    admin_required,
    auth_method,
    end_every_session,
    json_object,
    new_password_hash,
    takes,
)

bp = Blueprint("api", __name__)

PORTS_SETTINGS = tuple(s.name for s in DECLARATIONS if s.on_ports_page)
VIA = {"session": "web page", "basic": "API (HTTP Basic)"}


class ChangeRefused(Exception):
    """A change that was not applied: `errors` maps a setting (or "_file") to why; `status` the HTTP code."""

    def __init__(self, errors: dict[str, str], status: int = 400):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors, self.status = errors, status


def change_admin_password(current, new, again=None) -> None:
    """Check and set a new admin password (the one way, for the page and the API), then end every
    session; PasswordRefused (nothing changed) or ChangeRefused (the file could not be written)."""
    hashed = new_password_hash(current, new, again)
    apply_settings_changes({"admin_password_hash": hashed}, VIA.get(auth_method(), "API"), note="admin password changed")
    end_every_session()


def apply_settings_changes(changes: dict[str, Any], via: str, note: str = "") -> ChangeResult:
    """Apply `changes` all or nothing, audit them; ChangeRefused when nothing was written."""
    from ..process.binder import BindError  # only live rebinding raises it

    runtime = get_runtime()
    old = runtime.settings
    try:
        result = runtime.update(changes)
    except SettingsError as exc:
        raise ChangeRefused(exc.errors) from None
    except BindError as exc:
        raise ChangeRefused({exc.setting: str(exc)}, status=409) from None
    except ConfigFileError as exc:
        raise ChangeRefused({"_file": str(exc)}, status=409) from None
    except OSError as exc:  # the file could not be written: another user's (ForeignFileError), a full disk
        raise ChangeRefused({"_file": f"the configuration file was not written: {exc}"}, status=409) from None
    if result.changed:
        AuditLog.for_settings(old).record(
            ADMIN_USER, request.remote_addr or "-", via, masked_changes(old.raw, result.settings.raw, result.changed), note
        )
    return result


def ports_view(settings) -> dict[str, Any]:
    view = settings.public_view()
    return {name: view[name] for name in PORTS_SETTINGS}


def canonical(setting, value: Any) -> Any:
    """The value as it is written to the file: numbers and switches as TOML integers and
    booleans (a form or a script may send "500" or "true"); anything else as given."""
    if isinstance(setting.default, (bool, int)) and not setting.is_bindings:
        try:
            return setting.validate(value)
        except ValueError:
            return value  # runtime.update reports it with the field's message
    if setting.is_bindings and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # binding lists stay strings in the file
    return value


def _changes_from_json(body: Any, current) -> dict[str, Any]:
    """The JSON object as setting changes: unknown and non-Ports fields refused, no-ops dropped."""
    if not isinstance(body, dict):
        raise ChangeRefused({"_body": "expected a JSON object of settings, e.g. {\"http_max_conn\": 500}"})
    errors: dict[str, str] = {}
    changes: dict[str, Any] = {}
    for name, value in body.items():
        setting = BY_NAME.get(name)
        if setting is None:
            errors[name] = "no such setting"
        elif not setting.on_ports_page:
            errors[name] = "cannot be changed here"
        elif setting.secret and isinstance(value, dict):
            continue  # {"set": ...} as GET shows it: unchanged
        else:
            value = canonical(setting, value)
            if value != current.raw.get(name) or type(value) is not type(current.raw.get(name)):
                changes[name] = value
    if errors:
        raise ChangeRefused(errors)
    return changes


@bp.get("/healthz")
def healthz():
    return jsonify(get_runtime().health())


@bp.get("/api/settings/ports")
@admin_required
def get_ports():
    return jsonify(ports_view(get_runtime().settings))


@bp.put("/api/settings/password")
@admin_required
@takes(JSON_BODY)
def put_password():
    body = json_object()
    if body is None:
        return jsonify(error="send {\"current_password\": ..., \"new_password\": ...}", errors={"_body": "not a JSON object"}), 400
    try:
        change_admin_password(body.get("current_password"), body.get("new_password"))
    except (PasswordRefused, ChangeRefused) as exc:
        return jsonify(error="the password was not changed", errors=exc.errors), exc.status
    return jsonify(changed=True, sessions_ended=True)


@bp.put("/api/settings/ports")
@admin_required
@takes(JSON_BODY)
def put_ports():
    try:
        changes = _changes_from_json(request.get_json(silent=True), get_runtime().settings)
        result = apply_settings_changes(changes, VIA.get(auth_method(), "API")) if changes else None
    except ChangeRefused as exc:
        return jsonify(error="invalid settings; nothing was changed", errors=exc.errors), exc.status
    response = jsonify(ports_view(get_runtime().settings))
    if result is not None and result.needs_restart:
        response.headers["X-Restart-Needed"] = " ".join(result.needs_restart)
    return response
