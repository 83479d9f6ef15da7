"""The address book over HTTP: the /api/addressbook JSON API and the /addressbook admin page.

Both are thin: every rule (validation, all-or-nothing import, search) lives
in greenservers.addressbook; this module maps it to HTTP status codes
(400 with per-field or per-row messages, 404, 413, 503 while another writer
holds the book, 500 when an import's process ended without an answer) and to a page.
"""

from __future__ import annotations

import json
import logging
from functools import partial

from flask import (
    Blueprint,
    Response,
    copy_current_request_context,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import InternalServerError, ServiceUnavailable

from ..addressbook import FIELDS, MAX_IMPORT_BYTES, NUMBER_FIELDS, BookBusy, ContactError, ContactNotFound, ImportRejected, addressbook_for
from ..process.offload import ChildFailed, run_off_loop
from . import get_runtime, whole_arg
from .auth import CSV_BODY, FORM_BODY, JSON_BODY, NO_BODY, admin_required, read_body_in_turns, takes

bp = Blueprint("addressbook", __name__)
log = logging.getLogger("greenservers.addressbook")

BUSY_RETRY_AFTER = 5  # seconds a client is asked to wait when another writer holds the book (503)
MAX_LIST = 1000  # the page shows at most this many rows; the API pages with ?limit=&offset=
FIELD_LABELS = {
    "first_name": "First name",
    "last_name": "Last name",
    "display_name": "Display name",
    "company": "Company",
    "work": "Work",
    "mobile": "Mobile",
    "home": "Home",
    "extension": "Extension",
    "email": "E-mail",
}


def _book():
    return addressbook_for(get_runtime())


def _note(action: str, what: str) -> None:
    """One log line per change: ids and counts only, never the personal data itself."""
    log.info("address book: %s %s (admin from %s)", action, what, request.remote_addr or "-")


def _int_arg(name: str, default: int | None) -> int | None:
    try:
        return whole_arg(name, default)
    except ValueError as exc:
        raise ContactError({name: str(exc)}) from None


@bp.errorhandler(BookBusy)
def _busy(exc: BookBusy):
    """503 with Retry-After, as JSON for the API and as a page for browsers (the app's handler of HTTP errors)."""
    log.warning("%s (admin from %s)", exc, request.remote_addr or "-")
    return current_app.handle_http_exception(ServiceUnavailable(str(exc), retry_after=BUSY_RETRY_AFTER))


@bp.errorhandler(ChildFailed)
def _import_unanswered(exc: ChildFailed):
    """The import's child process ended without an answer: 500 (no Retry-After: whether it was stored is not
    known, and one retried at once would import its rows twice), and what the administrator can rely on."""
    message = (f"the import's process {exc.reason}, so whether the import was stored is not known: an import is "
               "stored whole or not at all; look at the address book before you try again")
    return current_app.handle_http_exception(InternalServerError(message))


def _invalid(exc: ContactError):
    return jsonify(error="invalid contact", errors=exc.errors), 400


def _rejected(exc: ImportRejected):
    return jsonify(error="nothing imported", errors=exc.errors, total_errors=exc.total), 400


IMPORT_BODY_BYTES = MAX_IMPORT_BYTES + 64 * 1024  # room for the multipart framing


# -- JSON API ------------------------------------------------------------------


@bp.get("/api/addressbook")
@admin_required
def list_contacts():
    """All contacts (or those matching ?q=), ordered by id; ?offset= and ?limit= page through them."""
    try:
        offset = _int_arg("offset", 0)
        limit = _int_arg("limit", None)
    except ContactError as exc:
        return jsonify(error="invalid query", errors=exc.errors), 400
    # read, encoded and let go of in a pool thread (100,000 contacts: about 0.3 s of work; the list freed on the
    # loop held it 25 ms, the answer encoded there 10 ms)
    pieces, total = run_off_loop(_json_list, _book(), request.args.get("q", ""), offset, limit)
    return Response(pieces, mimetype="application/json",
                    headers={"X-Total-Count": str(total), "Content-Length": str(sum(map(len, pieces)))})


JSON_SLICE = 1000  # contacts encoded per json.dumps call: one C call holds the GIL, 100,000 held it 0.2 s


def _json_list(book, q: str, offset: int, limit: int | None) -> tuple[list[bytes], int]:
    """(the contacts `find` gives, as a JSON array in pieces of bytes; how many match), in this thread: encoded a
    slice at a time, each slice's contacts let go of once encoded, so the thread yields the GIL between slices."""
    contacts, total = book.find_here(q, offset, limit)
    pieces = [b"["]
    while contacts:
        part = json.dumps([c.as_dict() for c in contacts[:JSON_SLICE]], sort_keys=True, separators=(",", ":"))[1:-1]
        del contacts[:JSON_SLICE]
        pieces.append((part if len(pieces) == 1 else "," + part).encode())  # as Flask's jsonify writes it
    pieces.append(b"]\n")
    return pieces, total


@bp.post("/api/addressbook")
@admin_required
@takes(JSON_BODY)
def add_contact():
    fields = request.get_json(silent=True)
    if not isinstance(fields, dict):
        return jsonify(error="send one contact as a JSON object", errors={"contact": "the body is not a JSON object"}), 400
    try:
        contact = _book().add(fields)
    except ContactError as exc:
        return _invalid(exc)
    _note("added", f"contact {contact.id}")
    response = jsonify(contact.as_dict())
    response.status_code = 201
    response.headers["Location"] = url_for(".get_contact", contact_id=contact.id)
    return response


@bp.get("/api/addressbook/<int:contact_id>")
@admin_required
def get_contact(contact_id: int):
    contact = _book().get(contact_id)
    if contact is None:
        return jsonify(error=f"no contact {contact_id}"), 404
    return jsonify(contact.as_dict())


@bp.put("/api/addressbook/<int:contact_id>")
@admin_required
@takes(JSON_BODY)
def change_contact(contact_id: int):
    """Change the fields given (others keep their values; "" clears one)."""
    fields = request.get_json(silent=True)
    if not isinstance(fields, dict):
        return jsonify(error="send the fields as a JSON object", errors={"contact": "the body is not a JSON object"}), 400
    try:
        contact = _book().change(contact_id, fields)
    except ContactNotFound:
        return jsonify(error=f"no contact {contact_id}"), 404
    except ContactError as exc:
        return _invalid(exc)
    _note("changed", f"contact {contact.id}")
    return jsonify(contact.as_dict())


@bp.delete("/api/addressbook/<int:contact_id>")
@admin_required
@takes(NO_BODY)
def delete_contact(contact_id: int):
    if not _book().delete(contact_id):
        return jsonify(error=f"no contact {contact_id}"), 404
    _note("deleted", f"contact {contact_id}")
    return jsonify(deleted=contact_id)


@bp.post("/api/addressbook/import")
@admin_required
@takes(CSV_BODY, max_bytes=IMPORT_BODY_BYTES)
def import_contacts():
    """CSV with a header row; all rows are added, or none (400 lists each problem by row and field).

    ?replace=1 makes the file replace the whole address book (still all or nothing).
    """
    data = read_body_in_turns()  # its bytes, decoded in the import's child process
    replace = request.args.get("replace", "").lower() in ("1", "true", "yes", "on")
    try:
        count = _book().import_csv(data, replace=replace)
    except ImportRejected as exc:
        return _rejected(exc)
    _note("replaced with" if replace else "imported", f"{count} contacts")
    return jsonify(imported=count, total=run_off_loop(len, _book()))  # count(*) reads every row: 150,000 take ms


@bp.get("/api/addressbook/export")
@admin_required
def export_contacts():
    return Response(
        _book().export_chunks(),
        mimetype="text/csv",
        headers={"Content-Disposition": 'attachment; filename="addressbook.csv"', "Cache-Control": "no-store"},
    )


# -- the admin page ----------------------------------------------------------------
# Forms post to the views below; admin_required checks their CSRF token. Success
# redirects back to the page (303, so a reload does not post again); a refusal
# renders the page again with the messages and the values typed (400).


def _render(
    status: int = 200,
    form: dict | None = None,
    errors: dict | None = None,
    editing: int | None = None,
    import_rejected: ImportRejected | None = None,
):
    book = _book()
    q = request.args.get("q", "").strip()
    contacts, total = book.find(q, 0, MAX_LIST)
    if editing is None and form is None and request.args.get("edit", "").isdigit():
        contact = book.get(int(request.args["edit"]))
        if contact is not None:
            editing, form = contact.id, contact.fields()
    # a thousand rows take Jinja about 70 ms: rendered off the event loop, in this request's context
    page = run_off_loop(copy_current_request_context(partial(render_template,
        "addressbook.html",
        contacts=contacts,
        total=run_off_loop(len, book) if q else total,
        q=q,
        fields=FIELDS,
        numbers=NUMBER_FIELDS,
        labels=FIELD_LABELS,
        max_list=MAX_LIST,
        form=form or {},
        errors=errors or {},
        editing=editing,
        import_errors=import_rejected.errors if import_rejected else [],
        import_total=import_rejected.total if import_rejected else 0,
    )))
    return page, status


def _form_fields() -> dict[str, str]:
    return {field: request.form.get(field, "") for field in FIELDS}


def _back(message: str):
    flash(message, "ok")
    return redirect(url_for(".page"), code=303)


@bp.get("/addressbook")
@admin_required
def page():
    return _render()


@bp.post("/addressbook/add")
@admin_required
def page_add():
    try:
        contact = _book().add(_form_fields())
    except ContactError as exc:
        return _render(400, form=_form_fields(), errors=exc.errors)
    _note("added", f"contact {contact.id}")
    return _back(f"Added {contact.name}.")


@bp.post("/addressbook/<int:contact_id>")
@admin_required
def page_change(contact_id: int):
    try:
        contact = _book().change(contact_id, _form_fields())
    except ContactNotFound:
        return _back(f"Contact {contact_id} no longer exists.")
    except ContactError as exc:
        return _render(400, form=_form_fields(), errors=exc.errors, editing=contact_id)
    _note("changed", f"contact {contact.id}")
    return _back(f"Saved {contact.name}.")


@bp.post("/addressbook/<int:contact_id>/delete")
@admin_required
def page_delete(contact_id: int):
    contact = _book().get(contact_id)
    if contact is None or not _book().delete(contact_id):
        return _back(f"Contact {contact_id} was already deleted.")
    _note("deleted", f"contact {contact_id}")
    return _back(f"Deleted {contact.name}.")


@bp.post("/addressbook/import")
@admin_required
@takes(FORM_BODY, max_bytes=IMPORT_BODY_BYTES)
def page_import():
    upload = request.files.get("file")
    data = run_off_loop(upload.read, MAX_IMPORT_BYTES + 1) if upload is not None else b""  # a file on disk past 500 KB
    replace = request.form.get("replace") == "1"
    try:
        count = _book().import_csv(data, replace=replace)
    except ImportRejected as exc:
        return _render(400, import_rejected=exc)
    _note("replaced with" if replace else "imported", f"{count} contacts")
    return _back(f"Imported {count} contact{'' if count == 1 else 's'}.")
