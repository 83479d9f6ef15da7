"""HTTP decisions without I/O: the process-wide connection caps and the HTTPS redirect.

ConnectionGate: every HTTP and HTTPS binding shares one gate. A connection
is admitted only while fewer than `max_conn` are open and the token bucket
of `max_conn_rate` new connections per second (burst: one second's worth)
has a token. The limits are read at each admission, so a settings change
applies to the next connection.

redirect_target: where a plain-HTTP request goes when http_redirect_https
is on: 301 for GET/HEAD, 308 otherwise (keeps the method and body), the same
host and path, the HTTPS port unless it is 443. ACME challenges, phone
provisioning and the health check are never redirected.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Callable
from urllib.parse import quote

REDIRECT_EXEMPT_PREFIXES = ("/.well-known/acme-challenge/", "/prov/")
REDIRECT_EXEMPT_PATHS = ("/healthz",)

ADMITTED = None
OVER_MAX_CONN = "max_conn"
OVER_MAX_CONN_RATE = "max_conn_rate"


class ConnectionGate:
    def __init__(self, limits: Callable[[], tuple[int, int]], clock: Callable[[], float]):
        """`limits()` gives (max_conn, max_conn_rate) now; `clock()` a monotonic time in seconds."""
        self.limits = limits
        self.clock = clock
        self.open = 0
        self._tokens: float | None = None
        self._last = 0.0

    def admit(self) -> str | None:
        """ADMITTED (None), or the name of the cap that turns this connection away."""
        max_conn, rate = self.limits()
        now = self.clock()
        if self._tokens is None:
            self._tokens, self._last = float(rate), now
        else:
            self._tokens = min(float(rate), self._tokens + (now - self._last) * rate)
            self._last = now
        if self.open >= max_conn:
            return OVER_MAX_CONN
        if self._tokens < 1.0:
            return OVER_MAX_CONN_RATE
        self._tokens -= 1.0
        self.open += 1
        return ADMITTED

    def release(self) -> None:
        self.open -= 1


_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_HOST_NAME = re.compile(r"[A-Za-z0-9.-]{1,253}")


def split_host(host_header: str) -> str | None:
    """The host part of a Host header, or None when it is not a plain name or address."""
    value = host_header.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        inner = value[1:end]
        rest = value[end + 1 :]
        if rest and not re.fullmatch(r":\d{1,5}", rest):
            return None
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            return None
        return f"[{inner}]"
    name, _, port = value.partition(":")
    if port and not port.isdigit():
        return None
    return name if _HOST_NAME.fullmatch(name) else None


@dataclass(frozen=True)
class Redirect:
    status: str
    location: str


def redirect_target(method: str, path: str, query: str, host_header: str | None, fallback_host: str, https_port: int) -> Redirect | None:
    """The redirect for a plain-HTTP request, or None when it is served as it is."""
    if path in REDIRECT_EXEMPT_PATHS or path.startswith(REDIRECT_EXEMPT_PREFIXES):
        return None
    host = split_host(host_header) if host_header else None
    if host is None:
        host = f"[{fallback_host}]" if ":" in fallback_host else fallback_host
    port = "" if https_port == 443 else f":{https_port}"
    location = f"https://{host}{port}{quote(path, safe=_PATH_SAFE)}"
    if query:
        location += "?" + query
    status = "301 Moved Permanently" if method in ("GET", "HEAD") else "308 Permanent Redirect"
    return Redirect(status, location)
