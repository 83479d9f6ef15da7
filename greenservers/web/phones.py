"""The Phones page and API: every device that fetched a provisioning file, from greenservers.provisioning.phones.seen.

`/phones` (HTML) and `GET /api/phones` (JSON) list the phones, last seen
first: MAC (or none, for a device known by address and vendor), vendor and
model, address, User-Agent, the files it fetched with the last result
(served, not found, refused, failed) and when, first and last seen, and how
many were seen in the last 24 hours. A phone is forgotten with the form on
the page (`POST /phones/forget`, CSRF-protected like every form) or with
`DELETE /api/phones/<id>`. Admin only.
"""

from __future__ import annotations

import datetime
import logging

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for

from ..provisioning.phones import profiles
from ..provisioning.phones.seen import DAY, registry_for
from . import get_runtime
from .auth import NO_BODY, admin_required, takes

bp = Blueprint("phones", __name__)
log = logging.getLogger("greenservers.web")
VENDOR_LABELS = {v.key: v.label for v in profiles.VENDORS}


def _registry():
    return registry_for(get_runtime())


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.get("/api/phones")
@admin_required
def phones_api():
    registry = _registry()
    return jsonify(phones=registry.listing(), seen_last_24h=registry.seen_since(DAY))


@bp.delete("/api/phones/<phone_id>")
@admin_required
@takes(NO_BODY)
def forget_api(phone_id: str):
    if not _registry().forget(phone_id):
        return jsonify(error=f"no phone {phone_id[:40]}"), 404
    log.info("phones: forgot %s (admin from %s)", phone_id[:40], request.remote_addr or "-")
    return "", 204


@bp.get("/phones")
@admin_required
def page():
    registry = _registry()
    phones = registry.listing()
    for phone in phones:
        phone["vendor_label"] = VENDOR_LABELS.get(phone["vendor"], phone["vendor"] or "unknown")
        phone["first_seen_text"], phone["last_seen_text"] = _when(phone["first_seen"]), _when(phone["last_seen"])
        for entry in phone["files"]:
            entry["at_text"] = _when(entry["at"])
        phone["ok"] = bool(phone["files"]) and phone["files"][0]["result"] == "served"
    return render_template("phones.html", phones=phones, seen_last_day=registry.seen_since(DAY))


@bp.post("/phones/forget")
@admin_required
def page_forget():
    phone_id = request.form.get("phone", "")
    if _registry().forget(phone_id):
        log.info("phones: forgot %s (admin from %s)", phone_id[:40], request.remote_addr or "-")
        flash("Forgotten; it appears again when it next fetches a file.", "ok")
    else:
        flash("That phone was already forgotten.", "info")
    return redirect(url_for("phones.page"), code=303)
