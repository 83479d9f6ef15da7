"""The LDAP address-book server's shell: sockets, TLS, timeouts, caps, logging.

One LdapService serves every `ip_ldap_port` binding (plain, StartTLS offered)
and every `ip_ldaps_port` binding (TLS from the first byte), with gevent
StreamServers. Each connection runs one greenlet that feeds received bytes
to a sans-IO `LdapSession` (greenservers/proto/ldap.py) and acts on what it
returns: bytes are sent, `StartTLS` wraps the socket with the current
certificate (`runtime.tls.context`, read per connection), `BindFailed` is
counted, logged (rate-limited) and answered only after a per-address delay,
`Close` ends the connection. Connections are capped per client address and
in total, and a connection idle for `idle_timeout` seconds is closed. The
address book is indexed off the event loop (greenservers/offload.py) when
it changed, so a large rebuild does not stall other connections.
"""

from __future__ import annotations

import resource
import socket
import ssl
import sys
import time
from functools import partial

import gevent
from gevent.lock import Semaphore
from gevent.server import StreamServer

from .addressbook import addressbook_for
from .offload import build_off_loop
from .proto import ldap as proto
from .proto.clients import plain_address
from .ratelog import RateLimitedLog
from .services import Service

IDLE_TIMEOUT = 120.0  # phones keep a connection between searches; longer is a leak
HANDSHAKE_TIMEOUT = 10.0
MAX_PER_CLIENT = 256  # a NAT can hide many phones behind one address
MAX_TOTAL = 4096
RECV_SIZE = 65536
DISMANTLE_PAUSE = 0.001  # seconds between the steps that free a replaced directory


def _total_cap() -> int:
    """At most half the process's file descriptors go to LDAP connections."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, min(MAX_TOTAL, soft // 2)) if soft > 0 else MAX_TOTAL


class LdapService(Service):
    name = "ldap"

    def __init__(self, runtime):
        super().__init__(runtime)
        self.caps = proto.ConnectionCaps(MAX_PER_CLIENT, _total_cap())
        self.throttle = proto.BindThrottle()
        self.peer_log = RateLimitedLog(self.log)
        self.idle_timeout = IDLE_TIMEOUT
        self._policy_of: tuple[object, proto.Policy] | None = None
        self._cache_of: tuple[object, proto.DirectoryCache] | None = None
        self._caches: dict[object, proto.DirectoryCache] = {}
        self._rebuild = Semaphore(1)
        self._prebuilt = None

    def make_server(self, bound):
        if not self._prebuilt:  # index a large address book now, not at the first phone's search
            self._prebuilt = gevent.spawn(self._prebuild)
        return StreamServer(bound.sock, partial(self.handle, bound.setting == "ip_ldaps_port"))

    def _prebuild(self) -> None:
        try:
            self.directory(self.runtime.settings.ldap_base)
        except Exception:  # the first search will try again and report it
            self.log.exception("could not index the address book")

    # -- what the sessions read --------------------------------------------

    def policy(self) -> proto.Policy:
        settings = self.runtime.settings
        cached = self._policy_of
        if cached is None or cached[0] is not settings:
            policy = proto.Policy(base=settings.ldap_base, user=settings.ldap_user, password=settings.ldap_password,
                                  anonymous=settings.ldap_anonymous, plain_bind=settings.ldap_plain_bind)
            self._policy_of = cached = (settings, policy)
        return cached[1]

    def directory(self, base: str) -> proto.Directory:
        settings = self.runtime.settings
        cached = self._cache_of
        if cached is None or cached[0] is not settings:
            book = addressbook_for(self.runtime)
            cache = self._caches.get(book)
            if cache is None:
                cache = self._caches[book] = proto.DirectoryCache(lambda: book.version, book.contacts)
            self._cache_of = cached = (settings, cache)
        cache = cached[1]
        if not cache.stale(base):
            return cache.directory
        with self._rebuild:  # one rebuild at a time; the others wait for its result
            return cache.current(base, run=build_off_loop, retire=self._retire)

    def _retire(self, old: proto.Directory) -> None:
        holder = [old]
        del old
        gevent.spawn(self._dismantle, holder)

    @staticmethod
    def _dismantle(holder: list) -> None:
        """Free a replaced snapshot in steps between other greenlets' turns, once nothing else uses it."""
        directory = holder.pop()
        if sys.getrefcount(directory) > 2:  # this name and getrefcount's argument: someone still reads it
            return  # it is freed whole when they let go
        for _ in directory.dismantle():
            # a timer, not sleep(0): gevent runs 50 ready callbacks before it looks at the clock,
            # and 50 steps of about a millisecond held every timer back by 50 ms
            gevent.sleep(DISMANTLE_PAUSE)

    # -- connections ---------------------------------------------------------

    def handle(self, tls_first: bool, sock, address) -> None:
        peer = plain_address(address[0])
        sensors = self.runtime.sensors
        if not self.caps.admit(peer):
            self.peer_log.warning("cap", peer, "LDAP connection refused: %d open from this address, %d in total",
                                  self.caps.open_from(peer), self.caps.open)
            sock.close()
            return
        sensors.set("ldap_connections_open", self.caps.open)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # answers go out whole; no Nagle delay
            self._serve(sock, peer, tls_first)
        except ssl.SSLError as exc:  # a client that speaks no (or bad) TLS: its fault, logged rate-limited
            self.peer_log.warning("tls", peer, "LDAP TLS failed: %s", exc.reason or exc)
        except (socket.timeout, ConnectionError, OSError):
            pass  # vanished or silent peer: close quietly
        except Exception:
            self.log.exception("LDAP connection from %s failed", peer)
        finally:
            sock.close()
            self.caps.release(peer)
            sensors.set("ldap_connections_open", self.caps.open)

    def _start_tls(self, sock):
        sock.settimeout(HANDSHAKE_TIMEOUT)
        return self.runtime.tls.context.wrap_socket(sock, server_side=True)

    def _serve(self, sock, peer: str, tls_first: bool) -> None:
        if tls_first:
            sock = self._start_tls(sock)
        session = proto.LdapSession(self.policy, self.directory, time.monotonic, tls=tls_first)
        sensors = self.runtime.sensors
        while True:
            if session.backlog:  # pipelined messages beyond one batch: answer them before reading more
                data = b""
            else:
                sock.settimeout(self.idle_timeout)
                data = sock.recv(RECV_SIZE)
                if not data:
                    return
            for item in session.receive(data):
                if isinstance(item, bytes):
                    sock.sendall(item)
                elif isinstance(item, proto.Searched):
                    sensors.add("ldap_searches")
                elif isinstance(item, proto.BindFailed):
                    sensors.add("ldap_binds_failed")
                    self.peer_log.warning("bind", peer, "LDAP bind as %r refused (resultCode %d)", item.name[:80], item.result_code)
                    gevent.sleep(self.throttle.failed(peer, time.monotonic()))
                elif isinstance(item, proto.StartTLS):
                    sock = self._start_tls(sock)
                    session.tls_started()
                elif isinstance(item, proto.Close):
                    if item.reason:
                        self.peer_log.warning("protocol", peer, "LDAP protocol error, disconnected: %s", item.reason)
                    return
