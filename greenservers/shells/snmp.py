"""The SNMP v1 agent's gevent shell: one DatagramServer per ip_snmp_port socket.

Each datagram is handled right in the socket's read callback (spawn=None):
the agent (greenservers.proto.snmp) never blocks, so no greenlet is made
per datagram and the kernel's receive buffer is the only queue. The shell
reads the current settings at each datagram (snmp_trusted and
snmp_community apply without restart), sends the reply from the address
the request came to (a wildcard socket on a multi-homed host must not
answer from another address), and logs every dropped request rate-limited,
one line per source and reason per minute with the count.
"""

from __future__ import annotations

import errno
import platform
import socket
import time

from gevent.server import DatagramServer

from .. import __version__
from ..process.binder import pktinfo_of
from ..proto import snmp as core
from ..proto.clients import plain_address
from ..ratelog import RateLimitedLog
from ..services import Service

READ_SIZE = core.MAX_REQUEST + 1  # one octet more than decodable, so an oversized datagram shows
ANCILLARY_SIZE = socket.CMSG_SPACE(20) * 2  # IPV6_PKTINFO (20) and/or IP_PKTINFO (12)
LOG_INTERVAL = 60.0

DROP_MESSAGES = {
    core.UNTRUSTED: "SNMP request dropped: address not in snmp_trusted",
    core.BAD_COMMUNITY: "SNMP request dropped: wrong community",
    core.BAD_VERSION: "SNMP request dropped: %s (this agent speaks v1 only)",
    core.MALFORMED: "SNMP datagram dropped: %s",
}
UNTRUSTED_MESSAGE = DROP_MESSAGES[core.UNTRUSTED]


class SnmpServer(DatagramServer):
    def __init__(self, bound, service: "SnmpService"):
        super().__init__(bound.sock, spawn=None)
        self.service = service
        # a wildcard socket must learn each datagram's destination to answer from it
        self.reply_from_destination = bound.binding.host in ("0.0.0.0", "::")
        self._receive = self._receive_with_destination if self.reply_from_destination else self._receive_plain
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)

    def _receive_plain(self):
        # into a buffer kept for the server: a dropped datagram then costs no allocation
        size, address = self._socket.recvfrom_into(self._buffer)
        return size, address, ()

    def _receive_with_destination(self):
        size, ancillary, _flags, address = self._socket.recvmsg_into([self._buffer], ANCILLARY_SIZE)
        return size, address, ancillary

    def do_read(self):
        """The next datagram from a trusted source; untrusted ones are dropped here, before any parsing."""
        admits, runtime, ratelog, receive = self.service.agent.admits, self.service.runtime, self.service.ratelog, self._receive
        shown = plain_address if self.socket.family == socket.AF_INET6 else str
        refused, again = None, 0  # the untrusted source just seen, and how often it came again since
        try:
            for _ in range(self.max_accept):  # bounded: a flood cannot keep the loop from other work
                try:
                    size, address, ancillary = receive()
                except (BlockingIOError, InterruptedError):
                    return None
                except OSError as exc:
                    if exc.errno in (errno.EAGAIN, errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                        return None  # ICMP errors of earlier replies surface here: a vanished peer
                    raise
                host = address[0]
                if host == refused:  # a flood from one source: counted, not looked up again
                    again += 1
                    continue
                if admits(host, runtime.settings):
                    return self._view[:size].tobytes(), address, ancillary
                if again:
                    self._count_refused(refused, again, shown)
                refused, again = host, 0
                ratelog.warning(core.UNTRUSTED, shown(host), UNTRUSTED_MESSAGE)
            return None
        finally:
            if again:
                self._count_refused(refused, again, shown)

    def _count_refused(self, host: str, count: int, shown) -> None:
        """What admits() and the log would have counted for `count` more datagrams from `host`."""
        self.service.agent.refused(count)
        self.service.ratelog.suppressed(core.UNTRUSTED, shown(host), count)

    def handle(self, data: bytes, address, ancillary) -> None:
        service = self.service
        try:
            outcome = service.agent.respond(data, time.monotonic(), service.runtime.settings)
        except Exception:  # a bug: keep serving; the traceback at most once a minute per source
            if service.ratelog.warning("bug", plain_address(address[0]), "SNMP: error handling a datagram; serving on"):
                service.log.exception("SNMP: the error was")
            return
        if outcome.reply is not None:
            self._reply(outcome.reply, address, ancillary)
        else:
            message = DROP_MESSAGES[outcome.verdict]
            args = (outcome.detail,) if "%s" in message else ()
            service.ratelog.warning(outcome.verdict, plain_address(address[0]), message, *args)

    def _reply(self, reply: bytes, address, ancillary) -> None:
        pktinfo = pktinfo_of(ancillary)
        try:
            if self.reply_from_destination and pktinfo:
                try:
                    self._socket.sendmsg([reply], pktinfo, 0, address)
                    return
                except OSError as exc:
                    if exc.errno in (errno.EAGAIN, errno.ENOBUFS):
                        raise
                    # a kernel that refuses this pktinfo: let routing pick the source address
            self._socket.sendto(reply, address)
        except OSError:
            pass  # a full send buffer or a vanished peer: UDP replies may be lost


class SnmpService(Service):
    name = "snmp"

    def __init__(self, runtime):
        super().__init__(runtime)
        self.ratelog = RateLimitedLog(self.log, LOG_INTERVAL)
        descr = f"greenservers {__version__} SNMP v1 agent on {platform.system()} {platform.release()} {platform.machine()}"
        self.agent = core.Agent(runtime.sensors, time.monotonic(), socket.gethostname(), descr)

    def make_server(self, bound) -> SnmpServer:
        return SnmpServer(bound, self)
