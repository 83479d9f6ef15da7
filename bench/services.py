"""Shared by flood.py, soak.py and memory.py: greenservers with every service on loopback, and one
legitimate client ("probe") per service that measures each answer's latency and counts lost answers.

The service is started exactly as in production, the one way the benchmarks
start it (common.start_greenservers), with every service of the registry
(greenservers.services) that has a probe on a free loopback port, a small TFTP
file, a few contacts (tests/support/contacts.py) and SNMP trusting 127.0.0.1 only.

The probes speak the wire protocols directly (pre-encoded requests, one
outstanding at a time, 1 s timeout = a lost answer), so what they time is the
server, not a client program's start-up:
  http  GET /healthz on a keep-alive connection (an answer other than 200 is lost)
  snmp  GetRequest sysUpTime.0 from 127.0.0.1 (matched by request-id)
  tftp  RRQ for a one-block file, timed to DATA 1, then ACK 1
  ntp   a mode-3 request, from a rotating 127.0.1.x source (the per-client rate limit is for floods)
  ldap  a bound connection, a phone's name search, timed to SearchResultDone
"""

from __future__ import annotations

import http.client
import resource
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
for path in (BENCH, BENCH.parent / "tests", BENCH.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from common import free_port, start_greenservers as start_service  # noqa: E402
from support import ServiceProcess, ldap_wire  # noqa: E402
from support.contacts import CONTACTS_CSV  # noqa: E402

from greenservers.addressbook import AddressBook  # noqa: E402
from greenservers.proto import ber  # noqa: E402
from greenservers.services import SERVICES  # noqa: E402

LDAP_PASSWORD = "bench-secret"
PROBE_FILE = "probe.cfg"
PROBE_CONTENT = b"# provisioning probe\n" * 10  # 210 octets: one TFTP block
TIMEOUT = 1.0
SNMP_GET_UPTIME = bytes.fromhex("302902010004067075626c6963a01c020400000000020100020100300e300c06082b060102010103000500")
NTP_REQUEST = bytes.fromhex("23" + "00" * 39) + b"probe-tx"  # v4 mode 3; the transmit stamp is echoed as origin
def raise_fd_limit(wanted: int = 8192) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Greenservers:
    proc: ServiceProcess
    ports: dict[str, int]

    @property
    def worker_pid(self) -> int:
        return self.proc.worker_pids[0]

    def has(self, service: str) -> bool:
        return service in self.ports

    def stop(self) -> None:
        self.proc.stop()


def start_greenservers(directory: Path, extra: dict | None = None, contacts_csv: str = CONTACTS_CSV,
                       timeout: float = 60.0) -> Greenservers:
    """Every probed service on 127.0.0.1, on free ports; the data dir prepared before the start."""
    data = directory / "data"
    (data / "tftp").mkdir(parents=True, exist_ok=True)
    (data / "tftp" / PROBE_FILE).write_bytes(PROBE_CONTENT)
    if contacts_csv:
        book = AddressBook(data / "addressbook.sqlite3")
        book.import_csv(contacts_csv)
        book.close()
    ports: dict[str, int] = {}
    settings: dict = {"snmp_trusted": "127.0.0.1", "snmp_community": "public", "ldap_password": LDAP_PASSWORD,
                      "data_dir": str(data), "ntp_local_stratum": 8}  # NTP answers even when this clock is not synchronised
    for spec in SERVICES:
        if spec.name in PROBES:
            ports[spec.name] = free_port(socket.SOCK_STREAM if spec.transport == "tcp" else socket.SOCK_DGRAM)
            settings[spec.setting] = f"127.0.0.1:{ports[spec.name]}"
    settings.update(extra or {})
    return Greenservers(start_service(directory, settings, timeout=timeout), ports)


# -- resident memory and open files of a process --------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


# -- the probes --------------------------------------------------------------------------------


class Lost(Exception):
    """No (good) answer within TIMEOUT."""


class HttpProbe:
    name = "http"

    def __init__(self, port: int):
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def once(self) -> None:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            self.conn.request("GET", "/healthz")
            response = self.conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise Lost(str(exc)) from None
        if response.status != 200:
            raise Lost(f"HTTP {response.status}")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class SnmpProbe:
    name = "snmp"

    def __init__(self, port: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(("127.0.0.1", port))
        self.request_id = 0x10000000
        at = SNMP_GET_UPTIME.index(bytes.fromhex("020400000000")) + 2
        self.head, self.tail = SNMP_GET_UPTIME[:at], SNMP_GET_UPTIME[at + 4:]

    def once(self) -> None:
        self.request_id += 1
        wanted = self.request_id.to_bytes(4, "big")
        self.sock.send(self.head + wanted + self.tail)
        deadline = time.monotonic() + TIMEOUT
        while True:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                reply = self.sock.recv(2048)
            except (TimeoutError, OSError):
                raise Lost("timeout") from None
            if wanted in reply[:24]:
                return  # an older, late answer is skipped

    def close(self) -> None:
        self.sock.close()


class TftpProbe:
    name = "tftp"

    def __init__(self, port: int):
        self.port = port
        self.request = b"\x00\x01" + PROBE_FILE.encode() + b"\x00octet\x00"

    def once(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(TIMEOUT)
            sock.sendto(self.request, ("127.0.0.1", self.port))
            try:
                data, peer = sock.recvfrom(2048)
            except (TimeoutError, OSError):
                raise Lost("timeout") from None
            if data[:4] != b"\x00\x03\x00\x01" or data[4:] != PROBE_CONTENT:
                raise Lost(f"unexpected answer {data[:40]!r}")
            sock.sendto(b"\x00\x04\x00\x01", peer)

    def close(self) -> None:
        pass


class NtpProbe:
    name = "ntp"
    SOURCES = 250  # 127.0.1.1 .. 127.0.1.250: many "phones", each far under the per-client rate

    def __init__(self, port: int):
        self.port = port
        self.socks: list[socket.socket] = []
        self.turn = 0

    def once(self) -> None:
        if len(self.socks) < self.SOURCES:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((f"127.0.1.{len(self.socks) + 1}", 0))
            sock.connect(("127.0.0.1", self.port))
            self.socks.append(sock)
        sock = self.socks[self.turn % len(self.socks)]
        self.turn += 1
        stamp = self.turn.to_bytes(8, "big")
        sock.send(NTP_REQUEST[:40] + stamp)
        deadline = time.monotonic() + TIMEOUT
        while True:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                reply = sock.recv(512)
            except (TimeoutError, OSError):
                raise Lost("timeout") from None
            if reply[24:32] == stamp:
                if reply[1] == 0:
                    raise Lost("kiss-o'-death")
                return

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


class LdapProbe:
    name = "ldap"

    def __init__(self, port: int):
        self.port = port
        self.sock: socket.socket | None = None
        self.message_id = 1
        self.buffer = b""

    def _connect(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.sock.sendall(ldap_wire.bind(1, "cn=phonebook,dc=pbx", LDAP_PASSWORD))
        if self._read_until(0x61) != 0:
            raise Lost("bind refused")

    def _read_until(self, done_tag: int) -> int:
        """Read messages until one with `done_tag`; its resultCode."""
        while True:
            try:
                total = ber.frame_length(self.buffer)
            except ber.Incomplete:
                total = None
            if total is not None and len(self.buffer) >= total:
                message, self.buffer = self.buffer[:total], self.buffer[total:]
                response = ldap_wire.parse_responses(message)[0]
                if response.tag == done_tag:
                    return response.code
                continue
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Lost("connection closed")
            self.buffer += chunk

    def once(self) -> None:
        try:
            if self.sock is None:
                self._connect()
            self.message_id += 1
            self.sock.sendall(ldap_wire.search(self.message_id, "(|(cn=Jo*)(sn=Jo*))", attributes=["cn", "telephoneNumber"],
                                               size_limit=50))
            code = self._read_until(0x65)
        except (OSError, ber.BerError) as exc:
            self.close()
            raise Lost(str(exc)) from None
        if code not in (0, 4):  # 4, sizeLimitExceeded: the first 50 of a large book, as a phone asks
            raise Lost(f"resultCode {code}")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


PROBES = {"http": HttpProbe, "snmp": SnmpProbe, "tftp": TftpProbe, "ntp": NtpProbe, "ldap": LdapProbe}


@dataclass
class ProbeResult:
    latencies_ms: list[float] = field(default_factory=list)
    lost: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict:
        values = sorted(self.latencies_ms)
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))] if values else float("nan")
        return {"answers": len(values), "lost": self.lost, "median_ms": round(statistics.median(values), 2) if values else None,
                "p99_ms": round(p99, 2), "max_ms": round(values[-1], 2) if values else None, "lost_reasons": self.reasons}


def run_probes(server: Greenservers, seconds: float, interval: float = 0.05, services=None,
               until: threading.Event | None = None) -> dict[str, dict]:
    """Every probe in its own thread, one request each `interval` seconds for `seconds` (or until `until` is set);
    per-service summary."""
    chosen = [s for s in (services or PROBES) if server.has(s)]
    results = {name: ProbeResult() for name in chosen}
    stop_at = time.monotonic() + seconds

    def loop(name: str) -> None:
        probe = PROBES[name](server.ports[name])
        result = results[name]
        next_at = time.monotonic()
        try:
            while next_at < stop_at and not (until is not None and until.is_set()):
                started = time.perf_counter()
                try:
                    probe.once()
                    result.latencies_ms.append((time.perf_counter() - started) * 1000)
                except Lost as lost:
                    result.lost += 1
                    reason = str(lost)[:60]
                    result.reasons[reason] = result.reasons.get(reason, 0) + 1
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            probe.close()

    threads = [threading.Thread(target=loop, args=(name,), daemon=True) for name in chosen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    return {name: results[name].summary() for name in chosen}
