"""The Phones page and API: every device that fetched a provisioning file, from greenservers.provisioning.phones.seen.

`/phones` (HTML) and `GET /api/phones` (JSON) list the phones, last seen
first: MAC (or none, for a device known by address and vendor), vendor and
model, address, User-Agent, what its address proved (`verified_by`: seen
over HTTP(S), a TFTP transfer acknowledged, or only unanswered UDP), the
files it fetched with the last result (served, not found, refused, failed)
and when, first and last seen, and how many were seen in the last 24 hours.
Both in pages, so no view costs more than a page's worth whatever the record
holds: the page `?page=N` (PAGE_SIZE phones each), the API `?offset=&limit=`
(limit up to MAX_LIMIT, DEFAULT_LIMIT if absent) with `total`; a page is rendered, the JSON
encoded, off the event loop. A phone is forgotten with the form on
the page (`POST /phones/forget`, CSRF-protected like every form) or with
`DELETE /api/phones/<id>`. Admin only.
"""

from __future__ import annotations

import datetime
import json
import logging
from functools import partial

from flask import Blueprint, Response, copy_current_request_context, flash, jsonify, redirect, render_template, request, url_for

from ..process.offload import run_off_loop
from ..provisioning.phones import profiles
from ..provisioning.phones.seen import DAY, registry_for
from . import get_runtime, whole_arg
from .auth import NO_BODY, admin_required, takes

bp = Blueprint("phones", __name__)
log = logging.getLogger("greenservers.web")
VENDOR_LABELS = {v.key: v.label for v in profiles.VENDORS}
TRUST_LABELS = {"http": "seen over HTTP(S)", "tftp": "acknowledged a TFTP transfer", "": "unanswered UDP only: could be forged"}
PAGE_SIZE = 50
DEFAULT_LIMIT, MAX_LIMIT = 50, 200


def _registry():
    return registry_for(get_runtime())


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.get("/api/phones")
@admin_required
def phones_api():
    registry = _registry()
    try:
        offset, limit = whole_arg("offset", 0), whole_arg("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    except ValueError as exc:
        return jsonify(error=str(exc)), 400
    answer = {"phones": registry.listing(offset, limit), "total": len(registry), "offset": offset, "limit": limit,
              "seen_last_24h": registry.seen_since(DAY)}
    body = run_off_loop(partial(json.dumps, answer, separators=(",", ":")))  # 200 phones: a few ms of encoding
    return Response(body + "\n", mimetype="application/json")


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
    pages = max(1, -(-len(registry) // PAGE_SIZE))
    try:
        number = whole_arg("page", 1, 1)
    except ValueError as exc:
        return f"{exc}\n", 400, {"Content-Type": "text/plain; charset=utf-8"}
    if number > pages:  # the record shrank (a phone forgotten on the last page): its last page
        return redirect(url_for("phones.page", page=pages), code=303)
    phones = registry.listing((number - 1) * PAGE_SIZE, PAGE_SIZE)
    for phone in phones:
        phone["trust_label"] = TRUST_LABELS.get(phone["verified_by"], "")
        phone["vendor_label"] = VENDOR_LABELS.get(phone["vendor"], phone["vendor"] or "unknown")
        phone["first_seen_text"], phone["last_seen_text"] = _when(phone["first_seen"]), _when(phone["last_seen"])
        for entry in phone["files"]:
            entry["at_text"] = _when(entry["at"])
        phone["ok"] = bool(phone["files"]) and phone["files"][0]["result"] == "served"
    # 50 phones take Jinja about 10 ms: rendered off the event loop, in this request's context
    return run_off_loop(copy_current_request_context(partial(render_template, "phones.html", phones=phones, total=len(registry),
                                                             page=number, pages=pages, seen_last_day=registry.seen_since(DAY))))


@bp.post("/phones/forget")
@admin_required
def page_forget():
    phone_id = request.form.get("phone", "")
    if _registry().forget(phone_id):
        log.info("phones: forgot %s (admin from %s)", phone_id[:40], request.remote_addr or "-")
        flash("Forgotten; it appears again when it next fetches a file.", "ok")
    else:
        flash("That phone was already forgotten.", "info")
    page = request.form.get("page", "")  # back to the page the form was on (past the end: the last page)
    back = {"page": int(page)} if page.isdigit() and len(page) < 9 and int(page) > 1 else {}
    return redirect(url_for("phones.page", **back), code=303)
