"""The SNMP v1 agent's gevent shell: one UdpServer (shells.udp) per ip_snmp_port socket.

Each datagram is handled right in the socket's read callback: the agent
(greenservers.proto.snmp) never blocks, so no greenlet is made per datagram
and the kernel's receive buffer is the only queue. The shell reads the
current settings at each datagram (snmp_trusted and snmp_community apply
without restart), sends the reply from the address the request came to (a
wildcard socket on a multi-homed host must not answer from another
address), counts every datagram in the sensor of its verdict
(proto.snmp.SENSOR_OF_VERDICT), and logs every dropped request rate-limited,
one line per source and reason per minute with the count. A flood from
addresses not in snmp_trusted (over a thousand datagrams a second) is then
dropped by the kernel for a while, by a socket filter admitting only
snmp_trusted (shells.source_filter), and counted from the socket's drop
counter in snmp_dropped_in_kernel.
"""

from __future__ import annotations

import platform
import socket
import time

from .. import __version__
from ..proto import snmp as core
from ..proto.clients import plain_address
from ..ratelog import RateLimitedLog
from ..services import Service
from .source_filter import SHED_SECONDS, KernelShed
from .udp import ICMP_ERRORS, PKTINFO_SPACE, UdpServer

READ_SIZE = core.MAX_REQUEST + 1  # one octet more than decodable, so an oversized datagram shows
LOG_INTERVAL = 60.0

DROP_MESSAGES = {
    core.UNTRUSTED: "SNMP request dropped: address not in snmp_trusted",
    core.BAD_COMMUNITY: "SNMP request dropped: wrong community",
    core.BAD_VERSION: "SNMP request dropped: %s (this agent speaks v1 only)",
    core.MALFORMED: "SNMP datagram dropped: %s",
    core.WITHHELD: "SNMP reply withheld: %s (requests forged in its name?)",
}
UNTRUSTED_MESSAGE = DROP_MESSAGES[core.UNTRUSTED]
UNTRUSTED_SENSOR = core.SENSOR_OF_VERDICT[core.UNTRUSTED]
KERNEL_SENSOR = "snmp_dropped_in_kernel"
SHED_MESSAGE = ("SNMP: %d datagrams from addresses not in snmp_trusted within a second, the last from %s: the kernel drops "
                "them for the next %d s (counted in snmp_dropped_in_kernel)")
SHED_FAILED_MESSAGE = "SNMP: a flood from addresses not in snmp_trusted is dropped in user space: %s"


class SnmpServer(UdpServer):
    def __init__(self, bound, service: SnmpService):
        super().__init__(bound)
        self.service = service
        # a wildcard socket must learn each datagram's destination to answer from it
        self._receive = self._receive_with_destination if self.wildcard else self._receive_plain
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        self.shed = KernelShed(bound.sock, bound.sock.family)  # the socket's: an IPv4 one where a host has no IPv6
        self._shed_timer = None

    def _receive_plain(self):
        # into a buffer kept for the server: a dropped datagram then costs no allocation
        size, address = self._socket.recvfrom_into(self._buffer)
        return size, address, ()

    def _receive_with_destination(self):
        size, ancillary, _flags, address = self._socket.recvmsg_into([self._buffer], PKTINFO_SPACE)
        return size, address, ancillary

    def do_read(self):
        """The next datagram from a trusted source; untrusted ones are dropped here, before any parsing."""
        if not self.turn_left():
            return None
        admits, runtime, ratelog, receive = self.service.agent.admits, self.service.runtime, self.service.ratelog, self._receive
        sensors = runtime.sensors
        shown = plain_address if self.socket.family == socket.AF_INET6 else str
        refused, again = None, 0  # the untrusted source just seen, and how often it came again since
        dropped = 0
        try:
            for _ in range(self.max_accept):  # bounded: a flood cannot keep the loop from other work
                try:
                    size, address, ancillary = receive()
                except (BlockingIOError, InterruptedError):
                    return None
                except OSError as exc:
                    if exc.errno in ICMP_ERRORS:
                        return None  # an earlier reply's peer vanished
                    raise
                host = address[0]
                if host == refused:  # a flood from one source: counted, not looked up again
                    again += 1
                    dropped += 1
                    continue
                if admits(host, runtime.settings):
                    return self._view[:size].tobytes(), address, ancillary
                sensors.add(UNTRUSTED_SENSOR)
                dropped += 1
                if again:
                    self._count_refused(refused, again, shown)
                refused, again = host, 0
                ratelog.warning(core.UNTRUSTED, shown(host), UNTRUSTED_MESSAGE)
            return None
        finally:
            if again:
                self._count_refused(refused, again, shown)
            if dropped:
                self._note_dropped(dropped, refused, shown)

    def _note_dropped(self, count: int, last: str, shown) -> None:
        """`count` untrusted datagrams dropped in user space: past a flood's rate the kernel drops them instead."""
        shed = self.shed
        if not shed.dropped(count, time.monotonic(), self.service.runtime.settings.snmp_trusted):
            self._log_shed_failure()
            return
        self.service.ratelog.warning("kernel", self.bound.address, SHED_MESSAGE, shed.window_dropped, shown(last), SHED_SECONDS)
        if self._shed_timer is None:
            self._shed_timer = self.loop.timer(1.0, 1.0)
        self._shed_timer.start(self._shed_tick)

    def _shed_tick(self) -> None:
        """Once a second while the kernel drops: count what it dropped; the filter follows snmp_trusted, then comes off."""
        shed = self.shed
        self.service.runtime.sensors.add(KERNEL_SENSOR, shed.tick(time.monotonic(), self.service.runtime.settings.snmp_trusted))
        if not shed.attached:
            self._shed_timer.stop()
            self._log_shed_failure()

    def _log_shed_failure(self) -> None:
        failure, self.shed.failure = self.shed.failure, None
        if failure:
            self.service.ratelog.warning("kernel-refused", self.bound.address, SHED_FAILED_MESSAGE, failure)

    def close(self):
        if self._shed_timer is not None:
            self._shed_timer.close()
        if self.shed.attached:  # off, and its last drops counted
            self.service.runtime.sensors.add(KERNEL_SENSOR, self.shed.tick(float("inf"), ()))
        super().close()

    def _count_refused(self, host: str, count: int, shown) -> None:
        """What the sensor and the log would have counted for `count` more datagrams from `host`."""
        self.service.runtime.sensors.add(UNTRUSTED_SENSOR, count)
        self.service.ratelog.suppressed(core.UNTRUSTED, shown(host), count)

    def handle(self, data: bytes, address, ancillary) -> None:
        service = self.service
        try:
            outputs = service.agent.respond(data, address[0], time.monotonic(), service.runtime.settings)
        except Exception:  # a bug: keep serving; the traceback at most once a minute per source
            if service.ratelog.warning("bug", plain_address(address[0]), "SNMP: error handling a datagram; serving on"):
                service.log.exception("SNMP: the error was")
            return
        verdict = core.verdict_of(outputs)
        service.runtime.sensors.add(core.SENSOR_OF_VERDICT[verdict])
        if verdict == core.ANSWERED:
            self.reply(outputs[0], address, ancillary)  # UDP replies may be lost: a failed send is not logged
        else:
            dropped = outputs[0]
            message = DROP_MESSAGES[verdict]
            args = (dropped.detail,) if "%s" in message else ()
            service.ratelog.warning(verdict, plain_address(address[0]), message, *args)


class SnmpService(Service):
    name = "snmp"

    def __init__(self, runtime):
        super().__init__(runtime)
        self.ratelog = RateLimitedLog(self.log, LOG_INTERVAL)
        descr = f"greenservers {__version__} SNMP v1 agent on {platform.system()} {platform.release()} {platform.machine()}"
        self.agent = core.Agent(runtime.sensors, time.monotonic(), socket.gethostname(), descr)

    def make_server(self, bound) -> SnmpServer:
        return SnmpServer(bound, self)
