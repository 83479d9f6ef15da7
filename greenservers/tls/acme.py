"""ACME certificates (Let's Encrypt or a private authority): the shell around greenservers.proto.acme.

One greenlet per process (`AcmeManager.start`, from the worker) looks at the
certificates at start, then whenever proto.acme.plan says (at least twice a
day) or when an acme_* setting changes (`reconfigure`). The ACME protocol
is certbot's `acme` client; everything that waits on the network or makes a
key (RSA-2048) runs in a thread of the hub's pool (offload.run_off_loop), so
the event loop keeps serving meanwhile.

An order per key type (ECDSA P-256, RSA-2048) for all of acme_domains, with
the http-01 challenge: while the authority validates, `pending` maps the
token to its key authorization, and every HTTP binding answers it
(shells.http.plain_http_app, and shells.http's refusal path when the caps are
full). What the authority issues is checked (parses, key matches, names,
loads into OpenSSL) before it is stored and served.

Files, under data_dir/tls/acme/ (folder 0700, files 0600, each written
atomically): account.key (the account's ECDSA key), account.json (its URL
per directory), and per key type `<kind>-<time>.crt/.key`. current.json
names the files in use; it is replaced last, in one rename, so a crash or a
failure leaves the previous certificates in use. Each issuance is recorded
in the audit log; a failure is logged once, shown on the Ports page and in
/healthz, and retried after proto.acme.retry_delay. What went wrong is
described twice (`Problem`): in full for the log and the Ports page (it may
name a local file or the authority's words), and as a fixed category for the
public /healthz, which holds nothing the error itself carried.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import logging
import os
import random
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import gevent
from gevent.event import Event

from ..audit import AuditLog
from ..config.private import PRIVATE_DIR, make_private_dir
from ..config.store import atomic_write
from ..process.offload import run_off_loop
from ..proto import acme as core
from ..proto.clients import TokenBuckets
from ..ratelog import printable
from .certificates import (
    ACME_CURRENT,
    CertificateError,
    acme_certificate,
    acme_current,
    acme_files,
    acme_folder,
    check_pem,
    dns_names,
    new_private_key,
    private_key_pem,
    server_context,
)

log = logging.getLogger("greenservers.acme")

ORDER_TIMEOUT = datetime.timedelta(seconds=120)  # polling an order's validation and finalization
READ_TIMEOUT = 10  # seconds one read of an answer of the authority may wait (and its connection)
ANSWER_SECONDS = 30  # seconds a whole answer may take to arrive
ANSWER_BYTES = 64 * 1024  # an answer's body at most (a directory, an order of 100 names, a chain: a few KiB each)
REQUESTS_PER_SECOND = 1.0  # requests to the authority after a burst (an order polled as fast as it says)
REQUESTS_BURST = 10


def _seconds_from_environment(name: str, default: datetime.timedelta) -> datetime.timedelta:
    """A duration from the environment, within 0..`default`; `default` when unset or malformed."""
    try:
        seconds = float(os.environ.get(name, ""))
    except ValueError:  # unset or malformed
        return default
    return datetime.timedelta(seconds=seconds) if 0 <= seconds <= default.total_seconds() else default


# how old a certificate must be for a renewal window to renew it (proto.acme.ARI_MIN_AGE; shorter in tests, where
# pebble's certificates are minutes old)
ARI_MIN_AGE = _seconds_from_environment("GREENSERVERS_ACME_ARI_MIN_AGE", core.ARI_MIN_AGE)
MAX_ERROR_CHARS = 400
USER_AGENT = "greenservers"


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Problem:
    """What went wrong: `category`, a fixed phrase that is public (/healthz), and `detail`, one line in
    full for the log and the Ports page (never a key, but it may name a local path)."""

    category: str
    detail: str


NO_PROBLEM = Problem("", "")


@dataclass
class Status:
    """What the Ports page and /healthz show of ACME."""

    state: str = "off"  # off, waiting, ordering
    last_attempt: datetime.datetime | None = None
    last_result: str = ""  # "issued", "failed"
    last_error: Problem = NO_PROBLEM
    last_success: datetime.datetime | None = None
    failures: int = 0
    next_check: datetime.datetime | None = None
    next_reason: str = ""
    renewal_info: str = "not asked yet"  # what the authority said of ARI (a fixed phrase)...
    renewal_info_detail: str = ""  # ...and, when it went wrong, why in full
    windows: dict = field(default_factory=dict)


@dataclass(frozen=True)
class OrderRequest:
    """Everything a pool thread needs to order certificates; taken from the settings in the hub."""

    names: tuple[str, ...]
    email: str
    directory: str
    ca_bundle: Path | None
    folder: Path


class AcmeManager:
    def __init__(self, runtime, clock=utc_now):
        self.runtime = runtime
        self.clock = clock
        self.pending: dict[str, str] = {}  # token -> key authorization, while the authority validates
        self.status = Status()
        self._windows: dict[str, core.Window] = {}
        self._ari_next: datetime.datetime | None = None
        self._wake = Event()
        self._greenlet = None

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def reconfigure(self) -> None:
        """An acme_* setting changed: look again now, with no backoff left from the old settings."""
        self.status.failures = 0
        self._windows.clear()
        self._ari_next = None
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                wait = self._turn()
            except Exception:  # a bug: logged, and tried again later rather than in a loop
                log.exception("ACME: unexpected error")
                wait = core.RETRY_FIRST.total_seconds()
            self._wake.wait(timeout=max(0.0, wait))

    # -- one look -----------------------------------------------------------------

    def request(self) -> OrderRequest:
        settings = self.runtime.settings
        bundle = settings.resolve(settings.acme_ca_bundle) if settings.acme_ca_bundle else None
        return OrderRequest(settings.acme_domains, settings.acme_email, settings.acme_directory, bundle, acme_folder(settings.data_path))

    def held(self, request: OrderRequest) -> dict[str, core.Held]:
        """The ACME certificates on disk, per key type, as proto.acme.plan needs them (the leaves
        only: their keys were checked when they were stored, and are again when they are served)."""
        from cryptography import x509

        held = {}
        for kind, files in acme_current(request.folder).get("chains", {}).items():
            try:
                leaf = x509.load_pem_x509_certificates(acme_files(request.folder, files)[0].read_bytes())[0]
            except (OSError, ValueError):
                continue  # unreadable: ordered again
            held[kind] = core.Held(
                frozenset(dns_names(leaf)), str(files.get("directory", "")), leaf.not_valid_before_utc, leaf.not_valid_after_utc
            )
        return held

    def _turn(self) -> float:
        """Order what is due, or schedule the next look; returns the seconds to wait."""
        request = self.request()
        status = self.status
        if not request.names:
            status.state, status.next_check, status.next_reason = "off", None, ""
            return core.CHECK_INTERVAL.total_seconds()
        held = self.held(request)
        now = self.clock()
        if held and (self._ari_next is None or now >= self._ari_next):
            self._ask_renewal_info(request)
            now = self.clock()
        plan = core.plan(now, request.names, request.directory, held, self._windows, status.failures,
                         status.last_attempt if status.failures else None, self._ari_next, ARI_MIN_AGE)
        if plan.renew:
            self._attempt(request, plan)
            return 0.0  # plan again: the next due time, or the retry time after a failure
        status.state, status.next_check, status.next_reason = "waiting", plan.wake_at, plan.reason
        return (plan.wake_at - now).total_seconds()

    def _attempt(self, request: OrderRequest, plan: core.Plan) -> None:
        status = self.status
        status.state, status.last_attempt = "ordering", self.clock()
        log.info(
            "ACME: ordering %s certificate(s) for %s from %s (%s)",
            " and ".join(plan.renew),
            " ".join(request.names),
            request.directory,
            plan.reason,
        )
        issued, error = run_off_loop(order_certificates, request, plan.renew, self.pending)
        if issued:
            self._install(request, issued, plan)
            for kind in issued:
                self._windows.pop(kind, None)  # that window was the old certificate's
            self._ari_next = None  # ask about the new ones at the next look
        if error:
            status.failures += 1
            status.last_result, status.last_error = "failed", error
            self.runtime.sensors.add("acme_attempts_failed")
            retry = core.retry_delay(status.failures)
            log.warning(
                "ACME: ordering a certificate for %s failed (attempt %d in a row; next try in %s; the certificate in use stays): %s",
                " ".join(request.names),
                status.failures,
                _human(retry),
                error.detail,
            )
        else:
            status.failures, status.last_result, status.last_error = 0, "issued", NO_PROBLEM
            status.last_success = self.clock()

    def _install(self, request: OrderRequest, issued: dict, plan: core.Plan) -> None:
        """Serve what `order_certificates` stored (already checked and loaded once in its thread)."""
        pair, context = issued.pop("_served")
        holder = self.runtime.tls
        if holder is not None and self.runtime.settings.acme_domains:
            holder.install(pair, context)
        self.runtime.sensors.add("acme_certificates_issued", len(issued))
        kinds = " and ".join(sorted(issued))
        chain = pair.chains[0]
        verb = "renewed" if "lifetime left" in plan.reason or "ARI" in plan.reason else "issued"
        note = (f"ACME {kinds} certificate{'s' if len(issued) > 1 else ''} {verb} for {' '.join(request.names)} by {chain.issuer}, "
                f"valid until {min(c.not_after for c in pair.chains if c.kind in issued):%Y-%m-%d %H:%M} UTC ({plan.reason})")
        log.info("%s; new HTTPS and LDAPS connections use it now", note)
        AuditLog.for_settings(self.runtime.settings).record("acme", "-", "ACME", [], note=note)

    def _ask_renewal_info(self, request: OrderRequest) -> None:
        """Fetch ARI for each held certificate where the authority offers it (RFC 9773). Whatever goes wrong
        with it, the lifetime rule still plans: asked again in an hour."""
        now = self.clock()
        try:
            answers = run_off_loop(fetch_renewal_info, request)
        except Exception as exc:
            self.status.renewal_info, self.status.renewal_info_detail = "could not be fetched", describe_error(exc, request).detail
            self._ari_next = now + core.RETRY_MAX / 6  # an hour; the lifetime rule still applies meanwhile
            return
        try:
            self._follow_renewal_info(answers, now)
        except Exception as exc:  # an answer nothing above foresaw: the same as one that could not be read
            self.status.renewal_info = "malformed answer"
            self.status.renewal_info_detail = printable(f"{type(exc).__name__}: {exc}", MAX_ERROR_CHARS)
            self._windows.clear()
            self._ari_next = now + core.RETRY_MAX / 6

    def _follow_renewal_info(self, answers: dict | None, now: datetime.datetime) -> None:
        """What the answers say: each key type's window, and when to ask again."""
        self.status.renewal_info_detail = ""
        if answers is None:
            self.status.renewal_info = "not offered by this authority"
            self._windows.clear()
            self._ari_next = now + core.CHECK_INTERVAL
            return
        waits = []
        for kind, (renewal_info, retry_after) in answers.items():
            try:
                previous = self._windows.get(kind)
                window = core.parse_window(renewal_info, random.random())
                if previous is not None and (previous.start, previous.end) == (window.start, window.end):
                    window = previous  # the same window: keep the point chosen in it
                self._windows[kind] = window
            except ValueError as exc:
                self.status.renewal_info, self.status.renewal_info_detail = "malformed answer", printable(str(exc), MAX_ERROR_CHARS)
            waits.append(retry_after)
        self.status.windows = {k: (w.start, w.end, w.chosen) for k, w in self._windows.items()}
        if self._windows:
            self.status.renewal_info = "offered"
        self._ari_next = min((core.ari_next_poll(now, w) for w in waits), default=now + core.CHECK_INTERVAL)

    # -- what the page and /healthz show --------------------------------------------

    def view(self, detail: bool = False) -> dict:
        """ACME's state; with `detail` (the Ports page, behind the login) errors in full, else (the
        public /healthz) only their fixed categories."""
        status = self.status
        settings = self.runtime.settings
        renewal_info = status.renewal_info
        if detail and status.renewal_info_detail:
            renewal_info = f"{renewal_info}: {status.renewal_info_detail}"
        return {
            "on": bool(settings.acme_domains),
            "names": list(settings.acme_domains),
            "directory": settings.acme_directory,
            "state": status.state,
            "last_attempt": _iso(status.last_attempt),
            "last_result": status.last_result,
            "last_error": status.last_error.detail if detail else status.last_error.category,
            "last_success": _iso(status.last_success),
            "failures_in_a_row": status.failures,
            "next_check": _iso(status.next_check),
            "next_check_reason": status.next_reason,
            "renewal_info": renewal_info,
            "renewal_windows": {k: {"start": _iso(s), "end": _iso(e), "chosen": _iso(c)} for k, (s, e, c) in status.windows.items()},
            "validating_now": len(self.pending),
        }


def _iso(when: datetime.datetime | None) -> str | None:
    return when.isoformat(timespec="seconds") if when else None


def _human(delta: datetime.timedelta) -> str:
    seconds = int(delta.total_seconds())
    return f"{seconds // 3600} h" if seconds >= 3600 else f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"


# -- in a pool thread: the network and the keys --------------------------------------


class AuthorityMisbehaved(Exception):
    """The authority answered what no authority should: too much, too slowly, too often, or elsewhere."""


@functools.cache
def _bounded_network():
    """certbot's ClientNetwork with every answer bounded (made here, once: the acme package loads only when used).

    Each request, from its connection to the last byte of its answer, has ANSWER_SECONDS (each read waits
    READ_TIMEOUT at most; at the deadline a watchdog shuts the connection's socket), and an answer's body
    ANSWER_BYTES, read as it streams in: a review's authority sent a 200 MB directory (775 MB of memory, the
    loop held 955 ms while it was parsed), or dripped an answer, its head too, a byte at a time for as long as
    it liked. Only https is followed, and no redirect (one led the client to a plain-HTTP address of the
    LAN). Requests come at most REQUESTS_PER_SECOND after a burst of REQUESTS_BURST: the library polls an
    order as often as its Retry-After says, and one of 0 made 200 requests in 10 s."""
    import requests
    import urllib3
    from acme import client

    class BoundedNetwork(client.ClientNetwork):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._requests = TokenBuckets(REQUESTS_PER_SECOND, REQUESTS_BURST, max_keys=1)
            self._connection = None  # the connection the request under way uses
            self._cut_short = False
            network = self

            class WatchedConnection(urllib3.connection.HTTPSConnection):
                def request(self, *args, **kwargs):
                    network._connection = self
                    return super().request(*args, **kwargs)

            class WatchedPool(urllib3.HTTPSConnectionPool):
                ConnectionCls = WatchedConnection

            pools = self.session.get_adapter("https://").poolmanager
            pools.pool_classes_by_scheme = {**pools.pool_classes_by_scheme, "https": WatchedPool}

        def _pace(self) -> None:
            """Wait until this request is within the pace: a request's debt at most, slept off (one at a time)."""
            level = self._requests.take("authority", 1.0, time.monotonic(), floor=-1.0)
            if level < 0:
                time.sleep(-level / REQUESTS_PER_SECOND)

        def _cut(self) -> None:
            """The watchdog: the request under way is over its deadline."""
            self._cut_short = True
            sock = getattr(self._connection, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # its read ends (end of file, or an error)

        def _send_request(self, method: str, url: str, *args, **kwargs) -> requests.Response:
            if not url.startswith("https://"):
                raise AuthorityMisbehaved(f"the authority gave an address that is not https: {url[:100]}")
            self._pace()
            # the library's own reads the whole body at once (to log it): in its place, the same request streamed
            kwargs.setdefault("headers", {}).setdefault("User-Agent", self.user_agent)
            kwargs.update(verify=self.verify_ssl, stream=True, allow_redirects=False, timeout=(READ_TIMEOUT, READ_TIMEOUT))
            self._connection, self._cut_short = None, False
            watchdog = threading.Timer(ANSWER_SECONDS, self._cut)
            watchdog.start()
            try:
                response = self.session.request(method, url, *args, **kwargs)
                with response:
                    if response.is_redirect:
                        raise AuthorityMisbehaved(f"the authority redirected {url[:100]} elsewhere; give acme_directory its final address")
                    body = bytearray()
                    try:
                        while piece := response.raw.read1(16384, decode_content=True):  # what has come, not 16 KiB
                            body += piece
                            if len(body) > ANSWER_BYTES:
                                raise AuthorityMisbehaved(f"an answer of the authority is longer than {ANSWER_BYTES // 1024} KiB")
                    except urllib3.exceptions.HTTPError as exc:  # as requests' own reading reports it
                        raise requests.exceptions.ConnectionError(exc, request=response.request) from None
                    if self._cut_short or response.raw.length_remaining:  # cut, or ended before its Content-Length
                        raise requests.exceptions.ConnectionError("the answer ended early", request=response.request)
                    response._content = bytes(body)  # what requests keeps of a body read whole: .content and .json() read it
                    if "Accept" not in kwargs["headers"]:
                        response.encoding = "utf-8"  # as the library's: JSON is UTF-8 (RFC 8555 §5)
            except requests.exceptions.RequestException:
                if self._cut_short:
                    raise AuthorityMisbehaved(f"an answer of the authority took longer than {ANSWER_SECONDS} s to arrive") from None
                raise
            finally:
                watchdog.cancel()
            return response

    return BoundedNetwork


def _client(request: OrderRequest, account_key=None):
    import josepy as jose
    from acme import client

    verify: bool | str = str(request.ca_bundle) if request.ca_bundle else True
    jwk = jose.JWKEC(key=account_key) if account_key is not None else None
    net = _bounded_network()(jwk, alg=jose.ES256, verify_ssl=verify, user_agent=USER_AGENT, timeout=READ_TIMEOUT)
    directory = client.ClientV2.get_directory(request.directory, net)
    return client.ClientV2(directory, net), net


def _private_folder(folder: Path) -> None:
    make_private_dir(folder)
    os.chmod(folder, PRIVATE_DIR)  # made before the service kept its folders private: tightened


def _write_private(path: Path, data: bytes) -> None:
    atomic_write(path, data)  # 0600, atomic


def _account(acme_client, net, request: OrderRequest) -> None:
    """Make `net` sign as this key's account at the directory: registered when the authority does
    not know the key (a first order, or an authority that forgot it), found again when it does
    (RFC 8555 §7.3.1: the same key's newAccount answers 200 and its URL); its contact kept current."""
    from acme import errors, messages

    path = request.folder / "account.json"
    try:
        accounts = json.loads(path.read_text())
    except (OSError, ValueError):
        accounts = {}
    contact = [f"mailto:{request.email}"] if request.email else []
    try:
        uri = acme_client.new_account(messages.NewRegistration.from_data(email=request.email or None, terms_of_service_agreed=True)).uri
    except errors.ConflictError as exists:
        uri = exists.location
        net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
        if accounts.get(request.directory, {}).get("contact") != contact:
            acme_client.update_registration(net.account, messages.Registration(contact=tuple(contact)))
    if accounts.get(request.directory) != {"uri": uri, "contact": contact}:
        accounts[request.directory] = {"uri": uri, "contact": contact}
        _write_private(path, json.dumps(accounts, indent=1).encode())


def _account_key(folder: Path):
    from cryptography.hazmat.primitives import serialization

    path = folder / "account.key"
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        key = new_private_key("ECDSA")
        _write_private(path, private_key_pem(key))
        return key


def order_certificates(request: OrderRequest, kinds: tuple[str, ...], pending: dict) -> tuple[dict, Problem | None]:
    """Order a certificate per key type in `kinds`; store the good ones and make them current.

    Returns ({kind: leaf subject, ..., "_served": (pair, context)} for what was stored, None or why
    the rest failed). Runs in a pool thread; `pending` is shared with the HTTP servers."""
    issued: dict = {}
    try:
        _private_folder(request.folder)
        account_key = _account_key(request.folder)
        acme_client, net = _client(request, account_key)
        _account(acme_client, net, request)
        for kind in kinds:
            cert_pem, key_pem = _order_one(acme_client, net, request, kind, pending)
            _store(request, kind, cert_pem, key_pem)
            issued[kind] = True
        error = None
    except Exception as exc:  # every failure is reported the same way: once, on the page, retried later
        error = describe_error(exc, request)
    if issued:
        pair = acme_certificate(request.folder.parent.parent)
        issued["_served"] = (pair, server_context(pair))
    return issued, error


def _order_one(acme_client, net, request: OrderRequest, kind: str, pending: dict) -> tuple[bytes, bytes]:
    from acme import challenges, messages

    key = new_private_key(kind)
    key_pem = private_key_pem(key)
    order = acme_client.new_order(_signing_request(key, request.names))
    tokens = []
    try:
        for authorization in order.authorizations:
            if authorization.body.status == messages.STATUS_VALID:
                continue  # validated lately for this account: nothing to answer
            offered = [c for c in authorization.body.challenges if isinstance(c.chall, challenges.HTTP01)]
            if not offered:
                raise CertificateError(f"the authority offers no http-01 challenge for {authorization.body.identifier.value}")
            response, validation = offered[0].response_and_validation(net.key)
            token = offered[0].chall.encode("token")
            pending[token] = validation
            tokens.append(token)
            acme_client.answer_challenge(offered[0], response)
        deadline = datetime.datetime.now() + ORDER_TIMEOUT  # the library compares with naive local time
        order = acme_client.poll_and_finalize(order, deadline)
    finally:
        for token in tokens:
            pending.pop(token, None)
    cert_pem = order.fullchain_pem.encode("ascii")
    leaf, _ = check_pem(cert_pem, key_pem, label=f"the {kind} certificate the authority issued", new_chain=True)
    missing = set(request.names) - set(dns_names(leaf))
    if missing:
        raise CertificateError(f"the {kind} certificate the authority issued lacks {' '.join(sorted(missing))}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _write_private(request.folder / f".check-{kind}.crt", cert_pem)
    _write_private(request.folder / f".check-{kind}.key", key_pem)
    try:
        context.load_cert_chain(str(request.folder / f".check-{kind}.crt"), str(request.folder / f".check-{kind}.key"))
    except ssl.SSLError as exc:
        raise CertificateError(f"the {kind} certificate the authority issued does not load: {exc}") from None
    finally:
        for suffix in ("crt", "key"):
            (request.folder / f".check-{kind}.{suffix}").unlink(missing_ok=True)
    return cert_pem, key_pem


def _signing_request(key, names: tuple[str, ...]) -> bytes:
    """A PEM certificate signing request for `names` (subjectAltName), signed by `key`: made from the key in
    hand (the acme package's make_csr loads it again from its PEM, which checks an RSA key whole: 50 ms of
    the GIL, the loop held as long)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).add_extension(
        x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _store(request: OrderRequest, kind: str, cert_pem: bytes, key_pem: bytes) -> None:
    """New files for `kind`, then current.json points at them (one rename), then the old ones go."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%f")
    stem = f"{kind.lower()}-{stamp}"
    _write_private(request.folder / f"{stem}.key", key_pem)
    _write_private(request.folder / f"{stem}.crt", cert_pem)
    current = acme_current(request.folder)
    chains = current.setdefault("chains", {})
    old = chains.get(kind, {})
    chains[kind] = {"cert": f"{stem}.crt", "key": f"{stem}.key", "directory": request.directory, "names": list(request.names)}
    _write_private(request.folder / ACME_CURRENT, json.dumps(current, indent=1).encode())
    if old:
        for path in acme_files(request.folder, old):
            path.unlink(missing_ok=True)


def fetch_renewal_info(request: OrderRequest) -> dict | None:
    """{kind: (renewalInfo JSON, Retry-After seconds or None)} for the held certificates, or None
    when the directory offers no renewalInfo."""
    from cryptography import x509

    acme_client, net = _client(request)
    try:
        base = acme_client.directory["renewalInfo"]
    except KeyError:
        return None
    answers = {}
    for kind, files in acme_current(request.folder).get("chains", {}).items():
        leaf = x509.load_pem_x509_certificates(acme_files(request.folder, files)[0].read_bytes())[0]
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        response = net.get(f"{base.rstrip('/')}/{core.certificate_id(aki, leaf.serial_number)}", content_type="application/json")
        answers[kind] = (response.json(), core.retry_after_seconds(response.headers.get("Retry-After", "")))
    return answers


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


def describe_error(exc: BaseException, request: OrderRequest) -> Problem:
    """What went wrong: a fixed category, and one line in full for the log and the page (never a key)."""
    import requests
    from acme import errors, messages

    if isinstance(exc, errors.ValidationError):
        problems = []
        for authorization in exc.failed_authzrs:
            for challenge in authorization.body.challenges:
                if challenge.error is not None:
                    problems.append(f"{authorization.body.identifier.value}: {challenge.error.detail or challenge.error.code}")
        category, text = "the authority could not validate a name (http-01)", "validation failed: " + "; ".join(problems)
    elif isinstance(exc, messages.Error):
        category, text = "the authority refused the order", f"the authority refused: {exc.detail or exc.code or exc}"
    elif isinstance(exc, errors.TimeoutError):
        category = "the authority did not finish the order in time"
        text = f"the authority did not finish the order within {int(ORDER_TIMEOUT.total_seconds())} s"
    elif isinstance(exc, requests.exceptions.SSLError):
        category = "the authority's HTTPS certificate is not trusted"
        text = (f"the HTTPS certificate of {request.directory} is not trusted"
                f"{' by acme_ca_bundle' if request.ca_bundle else ' (a private authority needs acme_ca_bundle)'}")
    elif isinstance(exc, requests.exceptions.RequestException):
        reason = _ERRNO.search(str(exc))
        category = "the authority could not be reached"
        text = f"cannot reach {request.directory}: {reason.group(1).strip() if reason else type(exc).__name__}"
    elif isinstance(exc, CertificateError):
        category, text = "what the authority issued could not be used", str(exc)
    elif isinstance(exc, AuthorityMisbehaved):
        category, text = "the authority's answers were refused", str(exc)
    elif isinstance(exc, OSError):
        category, text = "the certificates could not be stored (a local file error)", str(exc)
    else:
        category, text = "an unexpected error (the log has it)", f"{type(exc).__name__}: {exc}"
    # escaped as every peer's words in the log are: a line break in the authority's made a line of their own
    return Problem(f"ACME: {category}", printable(text, MAX_ERROR_CHARS))
