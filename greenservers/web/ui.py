"""The admin pages blueprint (server-side rendered, works without JavaScript).

/settings/ports (Admin > Settings > Ports): every setting declared with
`on_ports_page`, grouped like settings.GROUPS, with its description, current
value and whether its service is on. One form posts every field; only the
fields whose value differs from the current one become changes, applied all
or nothing through api.apply_settings_changes (so the page and the JSON API
share validation and auditing). Secrets are never put in the page: their
field is empty, says whether a value is set, and an empty submission keeps
it. The certificate upload (PEM chain + key) is checked (tls.certificates.check_upload)
before any file or setting is replaced (an RSA key's whole check in a child
process: it takes 60 ms at 2048 bits, 0.5 s at 4096, holding the GIL; the
loading in a pool thread).

/settings/password changes the admin password (current one, new one twice),
through api.change_admin_password like the API; every session ends and this
browser gets a new one.
"""

from __future__ import annotations

import contextlib
import datetime
import ssl
from pathlib import Path
from typing import Any

from flask import Blueprint, current_app, flash, jsonify, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from ..audit import AuditLog
from ..config.private import make_private_dir
from ..config.settings import DECLARATIONS, GROUPS, Setting
from ..config.store import atomic_write
from ..process.offload import ChildFailed, run_in_child, run_off_loop
from ..provisioning.files import provisioned_ntp_server
from ..services import BY_SETTING as SERVICE_OF_BINDING
from ..tls.certificates import ACME, CertificateError, CertificatePair, check_upload, ensure_certificate, server_context
from . import get_runtime
from .api import VIA, ChangeRefused, apply_settings_changes, canonical, change_admin_password
from .auth import FORM_BODY, PasswordRefused, admin_required, auth_method, begin_session, stored_hash, takes, wants_html

bp = Blueprint("ui", __name__)

MAX_PEM_BYTES = 64 * 1024
AUDIT_SHOWN = 20
UPLOADED_PREFIX = "uploaded-"
NAV = (("/settings/ports", "Ports"), ("/sensors", "Sensors"), ("/addressbook", "Address book"), ("/phones", "Phones"),
       ("/uploads", "Uploads"), ("/settings/password", "Password"))
ON_PAGE = frozenset(s.name for s in DECLARATIONS if s.on_ports_page)


@bp.app_context_processor
def _navigation():
    def nav_items():
        paths = {rule.rule for rule in current_app.url_map.iter_rules()}
        return [(path, label) for path, label in NAV if path in paths]

    return {"nav_items": nav_items}


@bp.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    """Errors as JSON for the API, as a page for browsers; provisioning keeps plain answers."""
    if request.path.startswith("/prov/") or exc.code is None or exc.code < 400:
        return exc
    if request.path.startswith("/api/") or not wants_html():
        response = jsonify(error=exc.description or exc.name)
    else:
        response = current_app.make_response(render_template("error.html", code=exc.code, name=exc.name, description=exc.description))
    response.status_code = exc.code
    for name, value in exc.get_headers():
        if name.lower() not in ("content-type", "content-length"):
            response.headers[name] = value
    return response


@bp.get("/")
def index():
    return redirect(url_for("ui.settings_ports"))


# -- the form ------------------------------------------------------------------


def _kind(setting: Setting) -> str:
    if setting.secret:
        return "secret"
    if isinstance(setting.default, bool):
        return "bool"
    if isinstance(setting.default, int):
        return "int"
    return "text"


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "" if value is None else str(value)


def _changes_from_form(form, current) -> dict[str, Any]:
    """Form fields -> typed changes; unchanged fields and empty secrets are left out."""
    shown_bools = set(form.getlist("_bool"))
    changes: dict[str, Any] = {}
    for setting in DECLARATIONS:
        if not setting.on_ports_page:
            continue
        kind = _kind(setting)
        if kind == "bool":
            if setting.name not in shown_bools:
                continue
            value = setting.name in form
        elif setting.name not in form:
            continue
        else:
            value = form[setting.name]
            if kind == "secret" and value == "":
                continue  # empty: keep the current secret
            value = canonical(setting, value)
        if kind != "secret" and _shown(value) == _shown(current.raw.get(setting.name)):
            continue
        changes[setting.name] = value
    return changes


def _ntp_for_phones(settings) -> str:
    """What the phones are given as their NTP server (provisioning's rule)."""
    value = provisioned_ntp_server(settings, "this server (the address each phone reaches it on)")
    return value or "none: set ntp_server or turn the NTP server on"


def _when(iso: str | None) -> str:
    if not iso:
        return ""
    return datetime.datetime.fromisoformat(iso).astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _certificate_info(runtime) -> dict[str, Any] | None:
    """The Certificate section: what is served, from where, and ACME's state (runtime.certificate_view)."""
    view = runtime.certificate_view(detail=True)
    if view is None:
        return None
    settings = runtime.settings
    for chain in view["chains"]:
        chain["until"] = _when(chain["not_after"])
    acme = view.get("acme")
    if acme is not None:
        for key in ("last_attempt", "last_success", "next_check"):
            acme[key + "_shown"] = _when(acme[key])
    view["uploaded_set"] = bool(settings.tls_cert)
    view["acme_on"] = bool(settings.acme_domains)
    return view


def _render(status: int = 200, form: dict | None = None, errors: dict | None = None, cert_error: str = ""):
    runtime = get_runtime()
    settings = runtime.settings
    health = runtime.health(detail=True)
    view = settings.public_view()
    form = form or {}
    groups = []
    for group, title in GROUPS.items():
        fields = []
        services = []
        for setting in DECLARATIONS:
            if setting.group != group or not setting.on_ports_page:
                continue
            kind = _kind(setting)
            if kind == "secret":
                value = ""
                state = "set" if view[setting.name]["set"] else "not set"
            elif setting.name in form:
                value, state = form[setting.name], ""
            else:
                value, state = settings.raw.get(setting.name), ""
            fields.append({"setting": setting, "kind": kind, "value": value if kind == "bool" else _shown(value),
                           "secret_state": state, "error": (errors or {}).get(setting.name, "")})
            spec = SERVICE_OF_BINDING.get(setting.name)
            if spec is not None:
                entry = health["services"].get(spec.name, {"on": False, "bindings": []})
                services.append({"label": spec.label, "on": entry["on"], "bindings": entry["bindings"]})
        if fields:
            groups.append({"id": group, "title": title, "fields": fields, "services": services})
    page = render_template(
        "ports.html",
        groups=groups,
        restart_needed=health.get("restart_needed_for", []),
        ntp_for_phones=_ntp_for_phones(settings),
        certificate=_certificate_info(runtime),
        cert_error=cert_error,
        form_errors={k: v for k, v in (errors or {}).items() if k not in ON_PAGE},
        error_count=len(errors or {}),
        live_rebind=runtime.rebinder is not None,
        audit=AuditLog.for_settings(settings).recent(AUDIT_SHOWN),
        max_pem_kib=MAX_PEM_BYTES // 1024,
    )
    return page, status


@bp.get("/settings/ports")
@admin_required
def settings_ports():
    return _render()


@bp.post("/settings/ports")
@admin_required
def save_ports():
    runtime = get_runtime()
    changes = _changes_from_form(request.form, runtime.settings)
    if not changes:
        flash("No changes.", "info")
        return redirect(url_for("ui.settings_ports"), code=303)
    try:
        result = apply_settings_changes(changes, VIA.get(auth_method(), "web page"))
    except ChangeRefused as exc:
        shown = {k: v for k, v in request.form.items() if k in changes and k not in _secret_names()}
        return _render(400 if exc.status == 400 else exc.status, form=shown, errors=exc.errors)
    applied = [n for n in result.changed if n not in result.needs_restart]
    if applied:
        flash("Saved: " + ", ".join(applied) + ". In effect now.", "ok")
    if result.needs_restart:
        flash("Saved; takes effect after restart: " + ", ".join(result.needs_restart) + ".", "warning")
    return redirect(url_for("ui.settings_ports"), code=303)


@bp.get("/settings/password")
@admin_required
def password_page():
    return render_template("password.html", errors={})


@bp.post("/settings/password")
@admin_required
def change_password():
    form = request.form
    try:
        change_admin_password(form.get("current_password", ""), form.get("new_password", ""), form.get("new_password_again", ""))
    except (PasswordRefused, ChangeRefused) as exc:
        return render_template("password.html", errors=exc.errors), exc.status
    begin_session(stored_hash())
    flash("Admin password changed. Every other session has ended.", "ok")
    return redirect(url_for("ui.settings_ports"), code=303)


def _secret_names() -> set[str]:
    return {s.name for s in DECLARATIONS if s.secret}


# -- certificate upload ------------------------------------------------------------


def _pem_from_request(file_field: str, text_field: str) -> bytes:
    upload = request.files.get(file_field)
    data = upload.stream.read(MAX_PEM_BYTES + 1) if upload is not None and upload.filename else b""
    if not data:
        data = request.form.get(text_field, "").encode("utf-8")
    if len(data) > MAX_PEM_BYTES:
        raise CertificateError(f"{file_field}: larger than {MAX_PEM_BYTES // 1024} KiB")
    return data


def _config_relative(settings, path: Path) -> str:
    """A path for the settings file: relative to its folder when inside it."""
    base = settings.base_dir.resolve()
    return str(path.relative_to(base)) if path.resolve().is_relative_to(base) else str(path)


def _served_as(settings) -> tuple[CertificatePair, ssl.SSLContext]:
    """The certificate `settings` would serve, and its context."""
    pair = ensure_certificate(settings)
    return pair, server_context(pair)


def _remove_old_uploads(tls_dir: Path, keep: set[Path]) -> None:
    for path in tls_dir.glob(UPLOADED_PREFIX + "*"):
        if path.resolve() not in keep:
            with contextlib.suppress(OSError):
                path.unlink()


@bp.post("/settings/ports/certificate")
@admin_required
@takes(FORM_BODY, max_bytes=2 * MAX_PEM_BYTES + 64 * 1024)  # the chain and the key, and the multipart framing
def upload_certificate():
    runtime = get_runtime()
    settings = runtime.settings
    try:
        cert_pem = _pem_from_request("cert_file", "cert_pem")
        key_pem = _pem_from_request("key_file", "key_pem")
        if not cert_pem or not key_pem:
            raise CertificateError("give both the certificate (chain) and its private key")
        # checked whole in a child process: an RSA key's check holds the GIL (60 ms at 2048 bits, 0.5 s at 4096)
        checked = run_in_child(check_upload, cert_pem, key_pem)
        if checked.problem is not None:
            raise CertificateError(checked.problem)
    except CertificateError as exc:
        return _render(400, cert_error=str(exc))
    except ChildFailed as exc:
        return _render(500, cert_error=f"the key could not be checked (its check's process {exc.reason}); try again")
    tls_dir = settings.data_path / "tls"
    make_private_dir(tls_dir)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%f")
    cert_path, key_path = tls_dir / f"{UPLOADED_PREFIX}{stamp}.crt", tls_dir / f"{UPLOADED_PREFIX}{stamp}.key"
    atomic_write(key_path, key_pem)
    atomic_write(cert_path, cert_pem)
    changes = {"tls_cert": _config_relative(settings, cert_path), "tls_key": _config_relative(settings, key_path)}
    try:
        # checked again as it will be served, and loaded in OpenSSL, before anything switches over
        pair, context = run_off_loop(_served_as, settings.with_changes(changes))
        note = f"certificate {checked.subject}, valid until {checked.not_after:%Y-%m-%d}"
        apply_settings_changes(changes, VIA.get(auth_method(), "web page"), note=note)
    except (CertificateError, ChangeRefused) as exc:
        for path in (cert_path, key_path):
            path.unlink(missing_ok=True)
        return _render(400, cert_error=str(exc))
    if runtime.tls is not None and runtime.tls.pair.cert_path != pair.cert_path:
        runtime.tls.install(pair, context)  # new connections use it (the runtime may have done so already)
    keep = {cert_path.resolve(), key_path.resolve()}
    for name in ("tls_cert", "tls_key"):
        if getattr(settings, name):
            keep.add(settings.resolve(getattr(settings, name)).resolve())  # the previous pair, for going back by hand
    _remove_old_uploads(tls_dir, keep)
    if pair.source == ACME:
        flash(f"Certificate stored: {checked.subject}, valid until {checked.not_after:%Y-%m-%d}. "
              "The ACME certificate comes first while acme_domains is set; this one serves when ACME is turned off.", "warning")
    else:
        flash(f"Certificate installed: {checked.subject}, valid until {checked.not_after:%Y-%m-%d}. "
              "New HTTPS and LDAPS connections use it now.", "ok")
    return redirect(url_for("ui.settings_ports"), code=303)
