"""The one sensor registry: every counter and gauge, declared once.

Each sensor has a name (used by /api/sensors), a fixed index under the
sensors subtree (its SNMP OID, listed in the MIB file under deploy/mibs/), a
kind (counter: only grows, Counter32 on SNMP; gauge: a level, Gauge32) and a
description. Values are integers in SNMP's units (hundredths of a second,
KiB, microseconds, whole days, hundredths: UNITS); a sensor in such a unit
declares it (`unit`), and /metrics shows it in Prometheus' base units (seconds,
bytes) under a name derived from it (`metric_name`), or leaves it to the
standard process metric that stands for it (`standard`). Services count through
their runtime's registry (`runtime.sensors.add("tftp_bytes_sent", n)`) and set
the levels of their gauges (`set`); the process's and the machine's gauges read
a function when asked. Adding a sensor is one line in DECLARED below, and the
MIB file rendered again from it (tests/core/test_snmp_mib.py says how).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

# 32473 is the IANA enterprise number reserved for documentation (RFC 5612);
# a deployment with its own number changes this one line and the MIB file.
ENTERPRISE_OID = (1, 3, 6, 1, 4, 1, 32473)
PRODUCT_OID = ENTERPRISE_OID + (1,)
SENSORS_OID = PRODUCT_OID + (1,)

_STARTED = time.monotonic()


METRIC_PREFIX = "greenservers_"


@dataclass(frozen=True)
class Unit:
    """A unit SNMP values are counted in, and how it becomes Prometheus' base unit.

    A sensor in this unit ends its name with `suffix` and says `words` in its description;
    on /metrics the name ends with `base_suffix`, the help says `base_words` instead, and
    the value is multiplied by `scale`.
    """

    suffix: str
    words: str
    base_suffix: str
    base_words: str
    scale: float


CENTISECONDS = Unit("_centiseconds", "in hundredths of a second", "_seconds", "in seconds", 0.01)
KIB = Unit("_kib", "in KiB", "_bytes", "in bytes", 1024)
HUNDREDTHS = Unit("_x100", ", times 100", "", "", 0.01)
DAYS = Unit("_days_left", "in whole days", "_seconds_left", "in seconds (counted in whole days)", 86400)
MICROSECONDS = Unit("_microseconds", "in microseconds", "_seconds", "in seconds", 1e-6)
UNITS = (CENTISECONDS, KIB, HUNDREDTHS, DAYS, MICROSECONDS)


@dataclass(frozen=True)
class Sensor:
    name: str
    index: int
    kind: str  # "counter" | "gauge"
    description: str
    read: Callable[[], int] | None = None  # gauges computed on demand
    unit: Unit | None = None  # None: a count, or already a base unit (bytes)
    standard: str = ""  # the standard Prometheus metric that shows it on /metrics instead (process_*)

    @property
    def oid(self) -> tuple[int, ...]:
        return SENSORS_OID + (self.index, 0)

    @property
    def metric_name(self) -> str:
        """Its name on /metrics: base unit, greenservers_ prefix, _total for counters; or the standard one."""
        if self.standard:
            return self.standard
        base = self.name
        if self.unit is not None:
            base = base.removesuffix(self.unit.suffix) + self.unit.base_suffix
        return METRIC_PREFIX + base + ("_total" if self.kind == "counter" else "")

    @property
    def metric_help(self) -> str:
        if self.unit is None:
            return self.description
        return self.description.replace(self.unit.words, self.unit.base_words)

    def metric_value(self, value: int) -> float:
        return value * self.unit.scale if self.unit is not None else value


def _process_uptime_cs() -> int:
    return int((time.monotonic() - _STARTED) * 100)


def _process_cpu_cs() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return int((usage.ru_utime + usage.ru_stime) * 100)


def _process_rss_kib() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _load_avg_x100() -> int:
    return int(os.getloadavg()[0] * 100)


def _mem_available_kib() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


_certificate_expiry: list[float] = []  # the served certificate's notAfter (POSIX time), set by greenservers.tls.certificates


def watch_certificate_expiry(not_after) -> None:
    """The certificate served from now on expires at `not_after` (an aware datetime)."""
    _certificate_expiry[:] = [not_after.timestamp()]


def _certificate_days_left() -> int:
    """Whole days left (0 in its last day and once expired: a Gauge32 has no negative values)."""
    if not _certificate_expiry:
        return 0
    return max(0, int((_certificate_expiry[0] - time.time()) // 86400))


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def _phones_seen_last_day() -> int:
    from .provisioning.phones.seen import seen_last_day  # lazily: the record lives with the phones package

    return seen_last_day()


C, G = "counter", "gauge"
DECLARED: tuple[Sensor, ...] = (
    # process and machine (on /metrics the process's are the standard metrics every exporter has;
    # an uptime is time() - process_start_time_seconds there)
    Sensor("process_uptime_centiseconds", 1, G, "Time since this process started, in hundredths of a second.", _process_uptime_cs,
           CENTISECONDS, standard="process_start_time_seconds"),
    Sensor("process_cpu_centiseconds", 2, C, "CPU time (user + system) used by this process, in hundredths of a second.", _process_cpu_cs,
           CENTISECONDS, standard="process_cpu_seconds_total"),
    Sensor("process_resident_kib", 3, G,
           "Resident memory of this process, in KiB.", _process_rss_kib, KIB, standard="process_resident_memory_bytes"),
    Sensor("machine_load1_x100", 4, G, "The machine's 1-minute load average, times 100.", _load_avg_x100, HUNDREDTHS),
    Sensor("machine_mem_available_kib", 5, G, "The machine's available memory, in KiB.", _mem_available_kib, KIB),
    Sensor("process_open_fds", 6, G, "File descriptors open in this process.", _open_fds, standard="process_open_fds"),
    # HTTP / HTTPS
    Sensor("http_connections_open", 10, G, "HTTP(S) connections open now, all bindings together."),
    Sensor("http_connections_accepted", 11, C, "HTTP(S) connections accepted and served."),
    Sensor("http_rejected_max_conn", 12, C, "HTTP(S) connections turned away by http_max_conn."),
    Sensor("http_rejected_max_conn_rate", 13, C, "HTTP(S) connections turned away by http_max_conn_rate."),
    Sensor("http_timeouts", 14, C,
           "HTTP(S) connections closed for a slow or idle client (header, keep-alive, TLS handshake or read/write timeout)."),
    Sensor("http_redirects", 15, C, "Plain-HTTP requests redirected to HTTPS."),
    Sensor("http_crowded_out", 16, C,
           "Idle HTTP(S) connections closed to let another client in, their address holding the most of http_max_conn."),
    Sensor("http_requests_too_fast", 17, C,
           "HTTP(S) requests answered 429 Too Many Requests, their connection then closed: one connection sent requests faster "
           "than its pace allows (pipelining)."),
    # TFTP
    Sensor("tftp_transfers_active", 20, G, "TFTP transfers in progress."),
    Sensor("tftp_transfers_done", 21, C, "TFTP transfers completed."),
    Sensor("tftp_transfers_failed", 22, C, "TFTP transfers failed or refused."),
    Sensor("tftp_bytes_sent", 23, C, "Bytes of file data sent over TFTP (Counter32 wraps at 4 GiB)."),
    Sensor("tftp_uploads_refused_full", 24, C,
           "TFTP uploads refused as disk full: the upload budget (tftp_upload_budget_mib) or the 10,000 files of uploads/ used up, "
           "or the 1,000 of them one address may keep (2,500 an IPv6 /64 as a whole); nothing is deleted to make room."),
    Sensor("tftp_uploads_refused_rate", 25, C,
           "TFTP uploads refused because their address had uploaded its tftp_upload_mib_per_hour, or its IPv6 /64 as a whole 8 "
           "times that."),
    Sensor("tftp_requests_shed", 26, C,
           "TFTP requests read and dropped during a storm of requests (over 1,000 a second): those of addresses that "
           "acknowledged a transfer in the last day are handled first."),
    Sensor("tftp_first_packets_unacknowledged", 27, C,
           "TFTP transfers whose first packet (OACK, DATA 1 or ACK 0) was never acknowledged: given up 8 s after the request, or sooner "
           "to let another request have the slot."),
    Sensor("tftp_sends_withheld", 28, C,
           "TFTP requests dropped and answers not sent because their source had not acknowledged what it was sent already (a spoofed "
           "source cannot draw more)."),
    Sensor("tftp_transfers_slow_ended", 29, C,
           "TFTP transfers ended to give their slot to a new request whose peer answered: verified transfers held every slot "
           "(tftp_max_transfers, or an IPv6 /64's quarter), and their client's moved less than 8 KiB a second each."),
    # NTP
    Sensor("ntp_requests_answered", 30, C, "NTP requests answered."),
    Sensor("ntp_requests_refused", 31, C, "NTP requests dropped or answered with a kiss-o'-death (malformed, not mode 3, "
           "over the rate of their address or of their IPv6 /64)."),
    # LDAP
    Sensor("ldap_connections_open", 40, G, "LDAP connections open now."),
    Sensor("ldap_binds_failed", 41, C, "LDAP binds refused (wrong credentials, anonymous, plain bind refused)."),
    Sensor("ldap_searches", 42, C, "LDAP search requests served."),
    Sensor("ldap_searches_time_limited", 43, C,
           "LDAP searches ended by their time limit (the client's or the server's), answered with the entries found so far."),
    Sensor("ldap_searches_delayed", 44, C,
           "LDAP searches that waited behind another client's, their own client having used more recent search time."),
    Sensor("ldap_searches_busy", 45, C,
           "LDAP searches refused as busy: too many in progress from their address or their IPv6 /64, or running in total."),
    Sensor("ldap_searches_running", 46, G, "LDAP searches running now (not those waiting for their client to read what they sent)."),
    Sensor("ldap_oversize_closed", 47, C, "LDAP connections closed for a message over the size limit (small before a bind) "
           "or for unfinished input over the server's cap."),
    Sensor("ldap_buffered_bytes", 48, G, "Bytes of unfinished LDAP messages held now, all connections together."),
    Sensor("ldap_longest_hold_microseconds", 49, G, "The most CPU time one piece of LDAP work (a slice of a search, or "
           "answering received messages) held the event loop for since the start, in microseconds.", unit=MICROSECONDS),
    Sensor("ldap_searches_waiting_on_clients", 54, G,
           "LDAP searches in progress whose answer waits for their client to read it (they hold no search slot meanwhile)."),
    Sensor("ldap_write_stalled_closed", 55, C,
           "LDAP connections closed because their client read nothing of what it was sent for 10 s."),
    Sensor("ldap_paged_searches_open", 56, G,
           "Unfinished LDAP paged searches whose results are kept for their next page, all connections together."),
    Sensor("ldap_directory_entries", 57, G, "Contacts in the LDAP directory the phones search (the address book as it has applied it)."),
    Sensor("ldap_crowded_out", 59, C,
           "Idle LDAP connections closed to let another client in while every connection slot was taken, their address "
           "holding the most."),
    Sensor("ldap_directory_pending", 58, G,
           "Contacts of the address book the LDAP directory is applying now (an import being merged; every contact while it "
           "is built); 0 when it is current."),
    # SNMP
    Sensor("snmp_requests_answered", 50, C, "SNMP requests answered."),
    Sensor("snmp_rejected_address", 51, C, "SNMP requests dropped: source not in snmp_trusted."),
    Sensor("snmp_rejected_community", 52, C, "SNMP requests dropped: wrong community."),
    Sensor("snmp_rejected_version", 53, C, "SNMP requests dropped: not SNMP v1 (v2c, v3) or not decodable."),
    Sensor("snmp_dropped_in_kernel", 38, C,
           "SNMP datagrams the kernel dropped: a flood from addresses not in snmp_trusted, shed there for 10 s after a "
           "thousand such datagrams in a second (a socket filter admitting only snmp_trusted), and what a full receive "
           "buffer lost (read from the socket's drop counter once a second while a flood is shed: the first reading counts every "
           "loss since the socket was bound or the last shed ended)."),
    Sensor("snmp_replies_withheld", 39, C,  # 54-59 are LDAP's
           "SNMP replies withheld: their destination's replies ran over 64 KiB a second beyond twice their requests' size, "
           "or all replies over 256 KiB (requests forged in trusted addresses' names, reflected at them)."),
    # certificates (HTTPS and LDAPS)
    Sensor("tls_certificate_days_left", 60, G,
           "Time until the served HTTPS/LDAPS certificate expires (the earliest of its ECDSA and RSA chains), in whole days; 0 in its "
           "last day or once expired.", _certificate_days_left, DAYS),
    Sensor("acme_certificates_issued", 61, C, "Certificates obtained from the ACME authority (each key type counts; renewals included)."),
    Sensor("acme_attempts_failed", 62, C, "ACME issuance or renewal attempts that failed (retried later; the working certificate stays)."),
    # phones (indexes 70-74)
    Sensor("phones_seen_24h", 70, G,
           "Phones that fetched a provisioning file (TFTP or /prov/) in the last 24 hours.", _phones_seen_last_day),
    Sensor("provisioning_refused_misses", 71, C,
           "Requests for provisioning files (TFTP or /prov/) refused because their address, or its IPv6 /64, had asked for "
           "prov_misses_per_hour absent files in the hour (guessing phones' MACs)."),
)


class SensorRegistry:
    """Current values of the declared sensors; counting is a dict update, cheap on hot paths."""

    def __init__(self, declared: tuple[Sensor, ...] = DECLARED):
        self.declared = declared
        self.by_name = {s.name: s for s in declared}
        assert len({s.index for s in declared}) == len(declared), "sensor indexes must be unique"
        self._values = {s.name: 0 for s in declared if s.read is None}

    def add(self, name: str, amount: int = 1) -> None:
        self._values[name] += amount

    def set(self, name: str, value: int) -> None:
        self._values[name] = value

    def value(self, name: str) -> int:
        sensor = self.by_name[name]
        return sensor.read() if sensor.read else self._values[name]

    def snapshot(self) -> list[dict]:
        return [
            {"name": s.name, "oid": ".".join(map(str, s.oid)), "kind": s.kind, "value": self.value(s.name), "description": s.description}
            for s in self.declared
        ]


SENSORS = SensorRegistry()
