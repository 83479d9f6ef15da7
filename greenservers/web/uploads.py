"""The phones' uploads, for administrators only: the /uploads page lists them, downloads and deletes them.

Uploads (TFTP writes, greenservers.provisioning.uploads) are served to nobody else. Here,
behind admin_required: the page lists each upload's name, size, time and the
address it came from (newest first, PAGE_SIZE a page: `?page=N`) and how much
of tftp_upload_budget_mib they use; `GET /uploads/<name>` sends one as an
attachment, typed application/octet-stream with nosniff, so that whatever a
phone wrote is never shown as a page on this origin; `POST
/uploads/<name>/delete` deletes one, `POST /uploads/delete` many: those ticked
(`name`, repeated), every one from an address (`client`), or all (`all`)
(the page's forms: like every form post, they need the CSRF token); `POST
/api/uploads/delete` does the same for scripts (JSON, under auth's rules for
API writes). The folder is read, and many files deleted, off the event loop.
"""

from __future__ import annotations

import datetime
import logging
from urllib.parse import quote

from flask import Blueprint, abort, flash, jsonify, redirect, render_template, request, send_file, url_for

from ..provisioning import uploads
from ..provisioning.files import ProvisioningError
from ..ratelog import printable
from . import get_runtime
from .auth import JSON_BODY, admin_required, json_object, takes

bp = Blueprint("uploads", __name__)
log = logging.getLogger("greenservers.web.uploads")
PAGE_SIZE = 100  # uploads a page shows: 1,000 took about 100 ms of the event loop to render


def _size(size: int) -> str:
    for unit, scale in (("MiB", uploads.MIB), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.get("/uploads")
@admin_required
def page():
    settings = get_runtime().settings
    listed = uploads.list_uploads(settings)
    space = uploads.space_of(settings)
    space.refresh()
    pages = max(1, -(-len(listed) // PAGE_SIZE))
    number = min(max(request.args.get("page", 1, type=int), 1), pages)
    first = (number - 1) * PAGE_SIZE
    base = url_for(".page")  # the rows' links made here, not by url_for and a form each: half the page's render time
    rows = [{"name": u.name, "size": _size(u.size), "bytes": u.size, "when": _when(u.modified), "client": u.client,
             "href": f"{base}/{quote(u.name, safe='')}"} for u in listed[first:first + PAGE_SIZE]]
    return render_template("uploads.html", rows=rows, total=len(listed), page=number, pages=pages, first=first,
                           used=_size(space.used), budget=_size(uploads.budget_bytes(settings)),
                           per_hour=settings.tftp_upload_mib_per_hour, prefix_share=uploads.QUOTA_PREFIX_SHARE, writing=settings.tftp_write)


@bp.get("/uploads/<name>")
@admin_required
def download(name: str):
    try:
        path = uploads.upload_path(get_runtime().settings, name)
    except ProvisioningError:
        abort(404, description=f"There is no upload called {name!r}.")
    response = send_file(path, mimetype="application/octet-stream", as_attachment=True, download_name=name,
                         conditional=True, etag=True)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.post("/uploads/<name>/delete")
@admin_required
def delete(name: str):
    try:
        size = uploads.delete_upload(get_runtime().settings, name)
    except ProvisioningError:
        flash(f"{name} was already deleted.", "warning")
    else:
        log.info("upload %r deleted (%d bytes) by the admin from %s", name, size, request.remote_addr or "-")
        flash(f"Deleted {name} ({_size(size)}).", "ok")
    return redirect(url_for(".page"), code=303)


def _chosen(settings, names: list[str], client: str, everything: bool) -> tuple[list[str], str]:
    """The uploads a bulk delete names: all, every one from `client`, or `names`; and how to say which."""
    if everything:
        return [u.name for u in uploads.list_uploads(settings)], "uploads"
    if client:
        return [u.name for u in uploads.list_uploads(settings) if u.client == client], f"uploads from {printable(client, 64)}"
    return names, "uploads named"


def _delete_chosen(chosen: tuple[list[str], str]) -> tuple[int, int]:
    names, what = chosen
    count, size = uploads.delete_uploads(get_runtime().settings, names) if names else (0, 0)
    if count:
        log.info("%d upload(s) deleted (%d bytes; %s) by the admin from %s", count, size, what, request.remote_addr or "-")
    return count, size


@bp.post("/uploads/delete")
@admin_required
def delete_many():
    """The page's bulk delete: the uploads ticked (`name`, repeated), every upload from an address (`client`), or all (`all`)."""
    form = request.form
    chosen = _chosen(get_runtime().settings, form.getlist("name"), form.get("client", "").strip(), bool(form.get("all")))
    count, size = _delete_chosen(chosen)
    if count:
        flash(f"Deleted {count} upload{'' if count == 1 else 's'} ({_size(size)}).", "ok")
    else:
        flash(f"Nothing deleted: no {chosen[1]} to delete.", "warning")
    return redirect(url_for(".page"), code=303)


@bp.post("/api/uploads/delete")
@admin_required
@takes(JSON_BODY)  # 64 KiB: about a thousand names (a JSON body is parsed on the loop)
def api_delete_many():
    """The same for scripts: {"names": [...]}, {"client": "192.0.2.7"} or {"all": true}; answers {"deleted", "bytes"}."""
    body = json_object()
    names = body.get("names", []) if body is not None else None
    if body is None or not isinstance(names, list) or not all(isinstance(n, str) for n in names) \
            or not isinstance(body.get("client", ""), str) or not isinstance(body.get("all", False), bool):
        return jsonify(error='expected {"names": [strings]}, {"client": "address"} or {"all": true}'), 400
    count, size = _delete_chosen(_chosen(get_runtime().settings, names, body.get("client", "").strip(), body.get("all", False)))
    return jsonify(deleted=count, bytes=size)
