"""The phones' uploads, for administrators only: the /uploads page lists them, downloads and deletes them.

Uploads (TFTP writes, greenservers.provisioning.uploads) are served to nobody else. Here,
behind admin_required: the page lists each upload's name, size, time and the
address it came from (newest first, the first MAX_LISTED) and how much of
tftp_upload_budget_mib they use; `GET /uploads/<name>` sends one as an
attachment, typed application/octet-stream with nosniff, so that whatever a
phone wrote is never shown as a page on this origin; `POST
/uploads/<name>/delete` deletes one (the page's form: like every form post,
it needs the CSRF token). The folder is read off the event loop.
"""

from __future__ import annotations

import datetime
import logging

from flask import Blueprint, abort, flash, redirect, render_template, request, send_file, url_for

from ..provisioning import uploads
from ..provisioning.files import ProvisioningError
from . import get_runtime
from .auth import admin_required

bp = Blueprint("uploads", __name__)
log = logging.getLogger("greenservers.web.uploads")


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
    rows = [{"name": u.name, "size": _size(u.size), "bytes": u.size, "when": _when(u.modified), "client": u.client}
            for u in listed[:uploads.MAX_LISTED]]
    return render_template("uploads.html", rows=rows, total=len(listed), shown_max=uploads.MAX_LISTED,
                           used=_size(space.used), budget=_size(uploads.budget_bytes(settings)),
                           per_hour=settings.tftp_upload_mib_per_hour, writing=settings.tftp_write)


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
