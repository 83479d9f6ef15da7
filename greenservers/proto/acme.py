"""ACME decisions without I/O: when to order a certificate, how long to wait after a failure,
what the authority's renewal window means, and the http-01 answers.

Theory of operation (RFC 8555, RFC 9773):
- One certificate per key type (KINDS: ECDSA and RSA), each from its own order.
  `plan` looks at what is held for each, the names and directory wanted and
  the clock, and says which to order now and when to look again.
- A held certificate is due when less than a third of its lifetime is left,
  or earlier when the authority's suggested renewal window (ARI, RFC 9773
  §4.2) says so: a point chosen uniformly at random in the window, once per
  window (`Window.fraction`), as §4.2 recommends. A certificate for other
  names or from another directory is due at once; so is a missing one.
- The shell looks again at least every CHECK_INTERVAL (twice a day), at the
  next due time, and when it should ask for renewal information again
  (the server's Retry-After, held within ARI_POLL_MIN..ARI_POLL_MAX). A window
  is followed only for a certificate ARI_MIN_AGE old at least (from its
  notBefore): an authority that always says "renew now" gets an order every
  ARI_MIN_AGE, not one after the other.
- After a failed attempt nothing is ordered before the retry time: a minute
  after the first failure, doubling up to six hours (`retry_delay`). The
  shell keeps the working certificate whatever fails.
- http-01 (RFC 8555 §8.3): `challenge_answer` gives the key authorization for
  a token being validated now, and 404 for every other path under the
  challenge prefix; `request_target` reads the request line of a connection
  that the HTTP caps turned away, so a validation still gets through then.
- `certificate_id` is the ARI certificate identifier (RFC 9773 §4.1).
"""

from __future__ import annotations

import base64
import datetime
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

KINDS = ("ECDSA", "RSA")
CHECK_INTERVAL = datetime.timedelta(hours=12)
RETRY_FIRST = datetime.timedelta(minutes=1)
RETRY_MAX = datetime.timedelta(hours=6)
ARI_POLL_MIN = datetime.timedelta(minutes=5)
ARI_POLL_MAX = datetime.timedelta(hours=12)
ARI_POLL_DEFAULT = datetime.timedelta(hours=6)  # RFC 9773 §4.3 suggests six hours without a Retry-After
ARI_MIN_AGE = datetime.timedelta(hours=6)  # a certificate younger than this is not renewed for a window (from its notBefore)

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")  # base64url without padding (RFC 8555 §8.3)
_REQUEST_LINE = re.compile(rb"(?P<method>[A-Z]{1,16}) (?P<target>/[\x21-\x7e]{0,1024}) HTTP/1\.[01]\r?\n")


@dataclass(frozen=True)
class Held:
    """A certificate held for one key type: what `plan` needs of it."""

    names: frozenset[str]
    directory: str
    not_before: datetime.datetime
    not_after: datetime.datetime


@dataclass(frozen=True)
class Window:
    """The authority's suggested renewal window and the point chosen in it (0 <= fraction <= 1)."""

    start: datetime.datetime
    end: datetime.datetime
    fraction: float

    @property
    def chosen(self) -> datetime.datetime:
        return self.start + (self.end - self.start) * self.fraction


@dataclass(frozen=True)
class Plan:
    renew: tuple[str, ...]  # key types to order now
    reason: str
    wake_at: datetime.datetime  # when to look again


def due_time(held: Held, window: Window | None, ari_min_age: datetime.timedelta = ARI_MIN_AGE) -> tuple[datetime.datetime, str]:
    """When `held` should be renewed, and why. A window is followed for a certificate `ari_min_age` old at least:
    an authority whose every window said "renew now" had a certificate issued again and again without pause."""
    own = held.not_before + (held.not_after - held.not_before) * 2 / 3
    if window is not None and window.chosen < own:
        # never later than the lifetime rule: a certificate of a few hours lives less than ari_min_age
        return min(own, max(window.chosen, held.not_before + ari_min_age)), "inside the renewal window the authority suggests (ARI)"
    return own, "less than a third of its lifetime left"


def retry_delay(failures: int) -> datetime.timedelta:
    """How long to wait after the `failures`-th failure in a row (1 minute, doubling, at most 6 hours)."""
    if failures <= 0:
        return datetime.timedelta(0)
    return min(RETRY_MAX, RETRY_FIRST * 2 ** min(failures - 1, 20))


def plan(now: datetime.datetime, names: tuple[str, ...], directory: str, held: Mapping[str, Held | None],
         windows: Mapping[str, Window | None], failures: int = 0, last_failure: datetime.datetime | None = None,
         ari_next: datetime.datetime | None = None, ari_min_age: datetime.timedelta = ARI_MIN_AGE) -> Plan:
    """What to do now: order the due key types, or wait until `wake_at`."""
    if not names:
        return Plan((), "off", now + CHECK_INTERVAL)
    wanted = frozenset(names)
    due: dict[str, tuple[datetime.datetime, str]] = {}
    for kind in KINDS:
        certificate = held.get(kind)
        if certificate is None:
            due[kind] = (now, "no certificate yet")
        elif certificate.names != wanted:
            due[kind] = (now, "the names changed")
        elif certificate.directory != directory:
            due[kind] = (now, "the ACME directory changed")
        else:
            due[kind] = due_time(certificate, windows.get(kind), ari_min_age)
    renew = tuple(kind for kind in KINDS if due[kind][0] <= now)
    wake_at = min(
        [now + CHECK_INTERVAL] + [when for when, _ in due.values() if when > now] + ([ari_next] if ari_next and ari_next > now else [])
    )
    if renew and failures:
        retry_at = (last_failure or now) + retry_delay(failures)
        if now < retry_at:
            return Plan((), f"retrying after {failures} failed attempt{'s' if failures > 1 else ''}", min(wake_at, retry_at))
    reason = "; ".join(dict.fromkeys(due[kind][1] for kind in renew))
    return Plan(renew, reason, wake_at)


# -- ARI (RFC 9773) ---------------------------------------------------------------


def certificate_id(key_identifier: bytes, serial: int) -> str:
    """base64url(authorityKeyIdentifier) "." base64url(serial as a DER INTEGER's content octets), unpadded (§4.1)."""
    serial_bytes = serial.to_bytes((serial.bit_length() + 8) // 8, "big", signed=True)
    return f"{_b64url(key_identifier)}.{_b64url(serial_bytes)}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def parse_window(renewal_info: object, fraction: float) -> Window:
    """The suggestedWindow of a renewalInfo answer; ValueError when it is malformed (end not after start)."""
    try:
        window = renewal_info["suggestedWindow"]  # type: ignore[index]
        start = _rfc3339(window["start"])
        end = _rfc3339(window["end"])
    except (TypeError, KeyError) as exc:
        raise ValueError(f"renewalInfo without a suggestedWindow start and end ({exc})") from None
    if end <= start:
        raise ValueError("renewalInfo window ends before it starts")
    return Window(start, end, min(1.0, max(0.0, fraction)))


def _rfc3339(value: object) -> datetime.datetime:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an RFC 3339 time")
    when = datetime.datetime.fromisoformat(value.replace("z", "Z"))
    if when.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone")
    return when


def retry_after_seconds(value: str) -> int | None:
    """The seconds of a Retry-After header given in seconds (RFC 9110 §10.2.3), at most a day; None for anything
    else (an HTTP date, nothing, garbage): a value of 10^14 seconds overflowed the date arithmetic."""
    value = value.strip()
    if not value or len(value) > 12 or not (value.isascii() and value.isdigit()):
        return None
    return min(int(value), 86400)


def ari_next_poll(now: datetime.datetime, retry_after: float | None) -> datetime.datetime:
    """When to ask for renewal information again: the server's Retry-After (seconds), within bounds."""
    if retry_after is None or math.isnan(retry_after):
        return now + ARI_POLL_DEFAULT
    seconds = min(ARI_POLL_MAX.total_seconds(), max(ARI_POLL_MIN.total_seconds(), retry_after))  # bounded before timedelta
    return now + datetime.timedelta(seconds=seconds)


# -- http-01 ----------------------------------------------------------------------


def challenge_token(path: str) -> str | None:
    """The token of a challenge path, or None when `path` is not one."""
    if not path.startswith(CHALLENGE_PREFIX):
        return None
    token = path[len(CHALLENGE_PREFIX):]
    return token if _TOKEN.fullmatch(token) else None


def challenge_answer(method: str, path: str, pending: Mapping[str, str]) -> tuple[str, bytes] | None:
    """(status, body) for a request under the challenge prefix; None for any other path.

    Only a token being validated now is answered (with its key authorization); anything else is 404."""
    if not path.startswith(CHALLENGE_PREFIX):
        return None
    token = challenge_token(path)
    answer = pending.get(token) if token is not None and method in ("GET", "HEAD") else None
    if answer is None:
        return "404 Not Found", b"No such challenge.\n"
    return "200 OK", answer.encode("ascii")


def request_target(head: bytes) -> tuple[str, str] | None:
    """(method, path) of the request line that starts `head`, or None until it is complete or when malformed."""
    match = _REQUEST_LINE.match(head)
    if match is None:
        return None
    target = match["target"].decode("ascii")
    return match["method"].decode("ascii"), target.split("?", 1)[0]


def http_response(status: str, body: bytes, head_only: bool = False) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection (for the shell that answers without the WSGI app)."""
    head = (f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n").encode("ascii")
    return head if head_only else head + body
