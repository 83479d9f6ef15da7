"""Phone provisioning over HTTP(S): GET /prov/<path> serves exactly what TFTP would.

No authentication, like TFTP: phones fetch these before they know any
credentials. Names resolve through greenservers.provisioning.files (the same
checks, files and templates); templates are rendered with the HTTP
request's host as `server` (validated: an IP address or a DNS name, else the
server's own name, SERVER_NAME). Refusals answer 404/403/500, or 429 once the
client has asked for its allowance of absent files (provisioning.misses, shared
with TFTP), and are logged rate-limited with the client's address. Every request is noted in the
record of phones (greenservers.provisioning.phones.seen) with its User-Agent.

These answers are on the admin interface's origin, so none may be taken for
a page there: the type is explicit and inert (MEDIA_TYPES by extension, else
application/octet-stream; never text/html, a Snom `.htm` profile included),
with `X-Content-Type-Options: nosniff` so that no browser guesses otherwise.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from pathlib import PurePosixPath

from flask import Blueprint, Response, request, send_file

from ..proto.clients import plain_address
from ..provisioning import files as provisioning
from ..provisioning.misses import TooManyMisses
from ..provisioning.phones import seen
from ..ratelog import RateLimitedLog, printable
from . import get_runtime

bp = Blueprint("prov", __name__)
log = logging.getLogger("greenservers.prov")
ratelog = RateLimitedLog(log)

_DNS_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


def request_server() -> str:
    """The host the phone used to reach us (without port or brackets), if it is a sane one; else the address its
    connection came to (as TFTP answers), which a request without a Host (HTTP/1.0) made "localhost" before.
    An IPv6 address with a zone ("fe80::1%eth0") is none: the zone is ours, not the phone's, and any text may
    follow the "%" (one put `" NTP_ADDR="6.6.6.6` into a profile wherever Werkzeug lets such a Host through)."""
    host = request.host if request.environ.get("HTTP_HOST") else "%"  # without a Host, Werkzeug gives SERVER_NAME
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if "%" not in host:
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            pass
        if _DNS_NAME.fullmatch(host):
            return host
    local = plain_address(request.environ.get("greenservers.local_addr", ""))
    try:
        if "%" not in local and not ipaddress.ip_address(local).is_unspecified:
            return local
    except ValueError:  # none (outside the worker)
        pass
    return request.environ.get("SERVER_NAME", "")


TEXT = "text/plain"  # Flask adds "; charset=utf-8"
MEDIA_TYPES = {
    ".xml": "application/xml", ".json": "application/json",
    ".cfg": TEXT, ".conf": TEXT, ".cnf": TEXT, ".ini": TEXT, ".txt": TEXT, ".csv": TEXT, ".boot": TEXT,
    ".htm": TEXT, ".html": TEXT,  # phone profiles (Snom's snom<model>.htm), not pages
}
NO_SNIFFING = {"X-Content-Type-Options": "nosniff"}


def _media_type(name: str) -> str:
    return MEDIA_TYPES.get(PurePosixPath(name).suffix.lower(), "application/octet-stream")


@bp.get("/prov/<path:name>")
def provision(name: str):
    runtime = get_runtime()
    client = request.remote_addr or "?"
    user_agent = request.headers.get("User-Agent", "")
    try:
        address = plain_address(client)
        content = runtime.misses.provide(runtime.settings, name, request_server(), address,
                                         lambda mac: seen.proven_at(runtime, mac, address))
    except provisioning.ProvisioningError as exc:
        if isinstance(exc, TooManyMisses):
            runtime.sensors.add("provisioning_refused_misses")
        ratelog.warning("prov-refused", client, "GET /prov/%s refused: %s", printable(name), printable(exc.message))
        result = {404: "not found", 403: "refused"}.get(exc.http_status, "failed")
        seen.note_fetch(runtime, name, client, result, request.scheme, user_agent)
        return Response(f"{exc.message}\n", status=exc.http_status, mimetype="text/plain", headers=NO_SNIFFING)
    seen.note_fetch(runtime, name, client, "served", request.scheme, user_agent)
    if content.path is not None:
        response = send_file(content.path, mimetype=_media_type(name), conditional=True, etag=True)
        response.headers.update(NO_SNIFFING)
        return response
    return Response(content.data, mimetype=content.media_type or _media_type(name), headers={"Cache-Control": "no-store", **NO_SNIFFING})
