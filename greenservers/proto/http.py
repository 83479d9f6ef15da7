"""HTTP decisions without I/O: the process-wide connection caps and the HTTPS redirect.

ConnectionGate: every HTTP and HTTPS binding shares one gate. A connection
is admitted only while fewer than `max_conn` are open and the token bucket
of `max_conn_rate` new connections per second (burst: one second's worth)
has a token. The limits are read at each admission, so a settings change
applies to the next connection. One client (an IPv4 address or IPv6 /64)
flooding either cap must not shut the others out:
- when the bucket is empty, a client admitted fewer than `max_conn_rate / 10`
  times (at least once) in about the last second may still come in, from a
  spare bucket of that rate: the flooding client never can. Each client's
  admissions lately are a token bucket of its own (proto.clients.TokenBuckets,
  of that rate and size, never below empty), in bounded memory;
- when every slot is taken, the address holding the most (at least two more
  than the newcomer's address) gives up its oldest connection that waits for
  a request (idle keep-alive, a request head or TLS handshake still coming)
  to the newcomer, unless the rate would turn the newcomer away anyway: three
  addresses holding a third each no longer shut out the admin (only a client
  holding more than half gave one up before).
A single client alone meets exactly the two caps.
The gate also paces requests on each connection it admitted: a token bucket
of `requests_per_second` (burst: one second's worth), so that one keep-alive
connection pipelining requests cannot take the process's time without end
(`serving` says whether a request is within it; the shell answers 429 and
closes the connection when it is not).

ChallengePeeks: the refused plain-HTTP connections whose first bytes are read
while an ACME http-01 validation is under way (a validator's request must get
through however full the caps are). Bounded in total and per client; when
every place is taken, the oldest connection that has sent nothing yet gives
its place to the newcomer (a validator sends its request at once, a flood of
silent connections does not), so silent connections cannot crowd it out.

redirect_target: where a plain-HTTP request goes when http_redirect_https
is on: 301 for GET/HEAD, 308 otherwise (keeps the method and body), the same
host and path, the HTTPS port unless it is 443. ACME challenges, phone
provisioning and the health check are never redirected.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from .clients import Holdings, TokenBuckets

REDIRECT_EXEMPT_PREFIXES = ("/.well-known/acme-challenge/", "/prov/")
REDIRECT_EXEMPT_PATHS = ("/healthz",)

ADMITTED = None
OVER_MAX_CONN = "max_conn"
OVER_MAX_CONN_RATE = "max_conn_rate"
REQUESTS_PER_SECOND = 200  # on one connection: far above a phone, a browser or a script's, far below a pipelining flood


class ConnectionGate:
    """Admits connections under the two caps, fairly between clients. A client is a `client_key`
    (an IPv4 address or an IPv6 /64); a connection is any hashable handle the shell chooses."""

    def __init__(self, limits: Callable[[], tuple[int, int]], clock: Callable[[], float],
                 requests_per_second: float = REQUESTS_PER_SECOND):
        """`limits()` gives (max_conn, max_conn_rate) now; `clock()` a monotonic time in seconds."""
        self.limits = limits
        self.clock = clock
        # per open connection (forgotten when it is released): the requests it may still make
        self.pace = TokenBuckets(rate=requests_per_second, capacity=requests_per_second, max_keys=1 << 20)
        self.open = 0
        self._tokens: float | None = None
        self._spare = 0.0
        self._last = 0.0
        self._address_of: dict = {}  # open connection -> its address (as `_holdings` holds it)
        self._holdings = Holdings()  # each address's open connections: who gives one up when all slots are taken
        self._waiting: set = set()  # the open connections waiting for a request
        self.lately = TokenBuckets(rate=0.0, capacity=0)  # per client: admissions it may still have lately (sized by the rate)

    def admit(self, source: str, connection, address: str | None = None) -> str | None:
        """ADMITTED (None), or the name of the cap that turns this connection away. An admitted
        connection counts as waiting for a request until `serving`. `address`: the connection's own (an
        IPv6 client's, within its /64 `source`), as connections are held (`make_room`); `source` by default."""
        max_conn, rate = self.limits()
        now = self._refill(rate)
        if self.open >= max_conn:
            return OVER_MAX_CONN
        if self._tokens >= 1.0:
            self._tokens -= 1.0
        elif self._spare_for(source, now):
            self._spare -= 1.0  # a client that has had (next to) nothing lately, while another takes the rate
        else:
            return OVER_MAX_CONN_RATE
        self.lately.take(source, 1.0, now, floor=0.0)
        self.open += 1
        address = address or source
        self._holdings.add(address, connection)
        self._address_of[connection] = address
        self._waiting.add(connection)
        return ADMITTED

    def _spare_for(self, source: str, now: float) -> bool:
        return self._spare >= 1.0 and self.lately.level(source, now) >= 1.0

    def make_room(self, source: str, address: str | None = None):
        """When every slot is taken: a connection to close so that `source` can have its slot.

        The address holding the most connections, of those holding at least two more than `address`, gives up
        its oldest that waits for a request (idle keep-alive, a request head or a TLS handshake still
        coming: proto.clients.Holdings); it is released here. None: nothing to give, `source` is turned away,
        and nothing is given for a newcomer the rate would turn away anyway. Addresses, not clients, are
        compared: the phones of an IPv6 LAN, one connection each, are one /64, and were given up one by one."""
        max_conn, rate = self.limits()
        now = self._refill(rate)
        if self.open < max_conn or not (self._tokens >= 1.0 or self._spare_for(source, now)):
            return None
        victim = self._holdings.crowded_out(address or source, self._waiting.__contains__)
        if victim is not None:
            self.release(victim)
        return victim

    def waiting(self, connection) -> None:
        """`connection` waits for its next request: it may be closed to make room."""
        if connection in self._address_of:
            self._waiting.add(connection)

    def serving(self, connection) -> bool:
        """`connection` has a request: it is not closed to make room until it waits again.
        False when the request is over the connection's pace (it is to be refused, and the connection closed)."""
        if connection not in self._address_of:
            return True
        self._waiting.discard(connection)
        return self.pace.take(connection, 1.0, self.clock(), floor=-1.0) >= 0.0

    def release(self, connection) -> None:
        """`connection` is closed (again: nothing happens)."""
        address = self._address_of.pop(connection, None)
        if address is None:
            return
        self.open -= 1
        self.pace.forget(connection)
        self._holdings.remove(address, connection)
        self._waiting.discard(connection)

    def _refill(self, rate: int) -> float:
        """Refill the buckets of `rate` (it may have changed); the time now."""
        now = self.clock()
        spare = _spare_rate(rate)
        if self._tokens is None:
            self._tokens, self._spare, self._last = float(rate), spare, now
        else:
            elapsed = now - self._last
            self._tokens = min(float(rate), self._tokens + elapsed * rate)
            self._spare = min(spare, self._spare + elapsed * spare)
            self._last = now
        self.lately.rate = self.lately.capacity = spare
        return now


class ChallengePeeks:
    """The refused connections being read for an ACME challenge: at most `total`, at most `per_client`
    of one client, and when every place is taken, the oldest silent one (nothing received yet) gives
    its place up. A connection is any hashable handle the shell chooses."""

    def __init__(self, total: int, per_client: int):
        self.total, self.per_client = total, per_client
        self._source_of: dict = {}  # every connection being read -> its client
        self._silent: dict = {}  # those that have sent nothing yet, oldest first
        self._held: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._source_of)

    def admit(self, source: str, connection) -> tuple[bool, object | None]:
        """(whether `connection` may be read, a silent connection to close to make room for it, or None)."""
        if self._held.get(source, 0) >= self.per_client:
            return False, None
        evicted = None
        if len(self._source_of) >= self.total:
            if not self._silent:
                return False, None
            evicted = next(iter(self._silent))
            self.done(evicted)
        self._source_of[connection] = source
        self._silent[connection] = None
        self._held[source] = self._held.get(source, 0) + 1
        return True, evicted

    def heard(self, connection) -> None:
        """`connection` sent its first bytes: it is no longer given up to make room."""
        self._silent.pop(connection, None)

    def done(self, connection) -> None:
        """`connection` is answered or closed (again: nothing happens)."""
        source = self._source_of.pop(connection, None)
        if source is None:
            return
        self._silent.pop(connection, None)
        left = self._held[source] - 1
        if left:
            self._held[source] = left
        else:
            del self._held[source]


def _spare_rate(rate: int) -> float:
    """New connections a second, beyond max_conn_rate, for clients other than the one taking it."""
    return max(1.0, rate / 10)


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
