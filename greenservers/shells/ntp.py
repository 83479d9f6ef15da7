"""The NTP server's gevent shell: one UdpServer (shells.udp) per ip_ntp_port socket.

Thin on purpose: the packet logic is in greenservers/proto/ntp.py. Here:
reading the kernel clock state (adjtimex through ctypes, cached for a
second) and the local daemon's upstream (`chronyc -c tracking`, every
64 s while the kernel clock is synchronised); receiving each datagram with
its kernel receive timestamp (SO_TIMESTAMPNS) and the local address it came
in on (IP_PKTINFO / IPV6_PKTINFO, so a wildcard socket answers from the
address the phone asked); sending the reply; counting and rate-limited logging.
Which NTP server phones are told to use is provisioning's rule
(greenservers.provisioning.files.provisioned_ntp_server).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import shutil
import socket
import subprocess
import time

import gevent

from ..proto.ntp import (
    ANSWERED,
    LEAP_DELETE,
    LEAP_INSERT,
    LEAP_NONE,
    KernelClock,
    NtpResponder,
    parse_chronyc_tracking,
    server_state,
    verdict_of,
)
from ..ratelog import RateLimitedLog
from ..services import Service
from .udp import PKTINFO_SPACE, SO_TIMESTAMPNS, TIMESTAMP_SPACE, UdpServer, pktinfo_of, received_ns

STATE_CACHE_SECONDS = 1.0
UPSTREAM_INTERVAL = 64.0
CHRONYC_TIMEOUT = 3.0
RECV_SIZE = 2048  # more than proto.ntp.MAX_REQUEST_LEN, so an oversized datagram is seen as such
ANCILLARY_SIZE = TIMESTAMP_SPACE + PKTINFO_SPACE  # the receive timestamp, and the local address
# adjtimex status bits and states (linux/timex.h)
STA_INS, STA_DEL, STA_UNSYNC = 0x10, 0x20, 0x40
TIME_ERROR = 5


# -- the kernel clock ------------------------------------------------------------------


class Timex(ctypes.Structure):
    """struct timex of <sys/timex.h> (64-bit Linux layout; ctypes adds the padding)."""

    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long), ("tick", ctypes.c_long),
                ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long), ("shift", ctypes.c_int),
                ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
                ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
                ("reserved", ctypes.c_int * 11)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_adjtimex = getattr(_libc, "adjtimex", None) or getattr(_libc, "ntp_adjtime", None)


def adjtimex() -> tuple[int, Timex]:
    """Read (modes = 0: change nothing) the kernel clock discipline: (clock state, timex)."""
    timex = Timex()
    if _adjtimex is None:
        return -1, timex
    return _adjtimex(ctypes.byref(timex)), timex


def read_kernel_clock() -> KernelClock:
    """A KernelClock snapshot; a kernel we cannot ask counts as unsynchronised."""
    state, timex = adjtimex()
    synchronised = state not in (-1, TIME_ERROR) and not timex.status & STA_UNSYNC
    leap = LEAP_INSERT if timex.status & STA_INS else LEAP_DELETE if timex.status & STA_DEL else LEAP_NONE
    return KernelClock(synchronised, leap, timex.maxerror / 1e6, time.time_ns())


def measure_precision() -> int:
    """log2 seconds of the smallest step between two readings of the clock (RFC 5905 §7.3)."""
    steps = [b - a for a, b in ((time.time_ns(), time.time_ns()) for _ in range(200)) if b > a]
    return max(-30, math.ceil(math.log2(min(steps, default=1000) / 1e9)))


def query_chronyc():
    """The local chronyd's upstream (proto.ntp.Upstream), or None when it cannot tell."""
    chronyc = shutil.which("chronyc")
    if chronyc is None:
        return None
    try:
        out = subprocess.run([chronyc, "-c", "-n", "tracking"], capture_output=True, text=True, timeout=CHRONYC_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_chronyc_tracking(out.stdout) if out.returncode == 0 else None


class ClockWatch:
    """The current ServerState, rebuilt at most once a second from the kernel and the upstream."""

    def __init__(self, runtime, precision: int, log):
        self.runtime, self.precision, self.log = runtime, precision, log
        self.upstream = None
        self.kernel_synchronised = False
        self._state = None
        self._expires = 0.0

    def current(self, now: float):
        if now >= self._expires:
            kernel = read_kernel_clock()
            self.kernel_synchronised = kernel.synchronised
            upstream = self.upstream if kernel.synchronised else None
            self._state = server_state(kernel, upstream, self.runtime.settings.ntp_local_stratum, self.precision)
            self._expires = now + STATE_CACHE_SECONDS
        return self._state

    def watch_upstream(self) -> None:
        """Greenlet: ask chronyc now and then, only while the kernel says it is synchronised."""
        while True:
            try:
                self.current(time.monotonic())
                self.upstream = query_chronyc() if self.kernel_synchronised else None
            except Exception:  # a bug: keep serving with what we know
                self.log.exception("NTP: reading the upstream failed")
            gevent.sleep(UPSTREAM_INTERVAL)


# -- the server --------------------------------------------------------------------------


class NtpServer(UdpServer):
    """Reads each datagram with its ancillary data and answers it inline (no greenlet per packet)."""

    def __init__(self, bound, service: NtpService):
        super().__init__(bound)
        self.service = service

    def do_read(self):
        if not self.turn_left():
            return None
        try:
            data, ancillary, _flags, address = self._socket.recvmsg(RECV_SIZE, ANCILLARY_SIZE)
        except BlockingIOError:
            return None
        except OSError:
            return None  # e.g. ICMP errors reported on the socket: nothing to answer
        pktinfo = pktinfo_of(ancillary) if self.wildcard else []
        return data, address, received_ns(ancillary) or time.time_ns(), pktinfo

    def handle(self, data, address, received_ns, pktinfo):
        self.service.answer(self, data, address, received_ns, pktinfo)


class NtpService(Service):
    """Serves every ip_ntp_port binding with one responder, so one rate limit covers all of them."""

    name = "ntp"

    def __init__(self, runtime):
        super().__init__(runtime)
        self.responder = NtpResponder()
        self.clock = ClockWatch(runtime, measure_precision(), self.log)
        self.peer_log = RateLimitedLog(self.log)
        self._watcher = gevent.spawn(self.clock.watch_upstream)

    def make_server(self, bound):
        bound.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # (the binder asked for each datagram's local address)
        return NtpServer(bound, self)

    def answer(self, server: NtpServer, data: bytes, address, received_ns: int, pktinfo: list) -> None:
        sensors = self.runtime.sensors
        try:
            now = time.monotonic()
            outputs = self.responder.respond(data, address[0], received_ns, self.clock.current(now), now, time.time_ns)
        except Exception:
            self.log.exception("NTP: failed to answer %s", address[0])
            return
        if verdict_of(outputs) == ANSWERED:
            sensors.add("ntp_requests_answered", 1)
            reply = outputs[0]
        else:  # [Refused] or [Refused, kiss-o'-death]
            sensors.add("ntp_requests_refused", 1)
            refused = outputs[0]
            self.peer_log.warning("ntp " + refused.kind, address[0], "NTP request refused: %s", refused.reason)
            reply = outputs[1] if len(outputs) > 1 else None
        if reply is not None:
            error = server.reply(reply, address, pktinfo)  # a full send buffer: a lost reply, as on the wire
            if error is not None:
                self.peer_log.warning("ntp send", address[0], "NTP reply not sent: %s", error)

    def close(self) -> None:
        self._watcher.kill(block=False)
