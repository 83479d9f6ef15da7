#!/usr/bin/env python3
"""The record of phones under attack: what gets in, and how long admin views and saves hold the event loop.

    python bench/phones_record.py [--spoofed 6000] [--flood 4000] [--seconds 60]

One greenservers process (HTTP, TFTP, NTP on 127.0.0.1, bench/services.py). An NTP
probe asks every 5 ms from rotating 127.0.1.x sources for the whole run: a request
that waits for the event loop shows the hold as its latency, so the longest
latency in a window is the longest hold of the loop in it. In order:

  real      10 real phones: 5 fetch their stock file over /prov/ (HTTP), 5 over TFTP
            (acknowledged to the end, as a phone does)
  spoofed   `--spoofed` TFTP read requests for stock per-phone files of new MACs from
            250 sources (127.0.5.x) that never acknowledge, as forged requests would;
            then the time their transfers take to fail. Reported: phones recorded,
            real phones left
  flood     the review's fill_phones.py (`--flood` GET /prov/<mac>-NN-<100 x>.cfg, a
            300-character User-Agent, one keep-alive connection), then as many
            /prov/<mac>.boot of distinct MACs the same way: phones recorded by each
  fill      the record filled to its bound over HTTP: 2,000 phones from 125 addresses
            (127.0.7.x, 16 each, each phone's 4 longest names, the same User-Agent);
            then the save of all of them (the probe's longest latency in the 7 s after);
            then a third as many forged requests again: phones they got in
  views     with the record full, as the admin, 5 times each: GET /api/phones?limit=1
            (what any admin request costs), /api/phones (the default 50),
            /api/phones?limit=200 (the most), /phones (a page of 50)
  saves     20 fetches a second of recorded phones for 15 s (the review's trickle.py):
            a save of what changed every 5 s; the probe's longest latency in that window

Every flood is bounded in count and time. There is no reference daemon for this record:
the review measured the previous version (one phones.json, no pages) with the same
scripts. Figures are provisional on a shared machine; results in bench/results/phones_record.json.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import socket
import sys
import tempfile
import threading
import time
from base64 import b64encode
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import services  # noqa: E402
from common import RESULTS, machine  # noqa: E402

from greenservers.passwords import hash_password  # noqa: E402

ADMIN_PASSWORD = "the phones bench's admin password"
USER_AGENT = "Yealink SIP-T46S " + "<script>alert(1)</script>" + "A" * 300
PROBE_INTERVAL = 0.005
SPOOF_SOURCES = 250
FILL_SOURCES = 125  # x 16 new phones each: the record's 2,000


class LoopProbe:
    """NTP requests every PROBE_INTERVAL in a thread; (sent at, latency) for each answer, and the losses."""

    def __init__(self, port: int):
        self.probe = services.NtpProbe(port)
        self.samples: list[tuple[float, float]] = []
        self.lost: list[float] = []
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        next_at = time.monotonic()
        while self.running:
            started = time.monotonic()
            try:
                self.probe.once()
                self.samples.append((started, (time.monotonic() - started) * 1000))
            except services.Lost:
                self.lost.append(started)
            next_at = max(next_at + PROBE_INTERVAL, time.monotonic())
            time.sleep(max(0.0, next_at - time.monotonic()))

    def longest(self, start: float, end: float) -> float:
        """The longest latency (ms) of the requests sent between `start` and `end` (a loss counts as 1 s)."""
        values = [ms for at, ms in self.samples if start <= at <= end]
        values += [1000.0 for at in self.lost if start <= at <= end]
        return round(max(values), 1) if values else float("nan")

    def stop(self) -> None:
        self.running = False
        self.thread.join(5)
        self.probe.close()


def admin_get(port: int, path: str) -> tuple[int, int, float]:
    """(status, body bytes, seconds) of one GET as the admin."""
    token = b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    started = time.monotonic()
    conn.request("GET", path, headers={"Authorization": f"Basic {token}", "Accept": "text/html" if path.startswith("/phones") else "*/*"})
    response = conn.getresponse()
    body = response.read()
    elapsed = time.monotonic() - started
    conn.close()
    return response.status, len(body), elapsed


def tftp_fetch(port: int, name: str, source: str) -> bool:
    """A phone's lock-step fetch of a small file, acknowledged to the end."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.sendto(b"\x00\x01" + name.encode() + b"\x00octet\x00", ("127.0.0.1", port))
        while True:
            data, peer = sock.recvfrom(4096)
            if data[:2] != b"\x00\x03":
                return False
            sock.sendto(b"\x00\x04" + data[2:4], peer)
            if len(data) - 4 < 512:
                return True


def spoof(port: int, count: int, seconds: float, first: int, counter) -> None:
    """`count` RRQs for stock per-phone files of new MACs (from `first` on), from SPOOF_SOURCES sources in turn,
    never acknowledged."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(SPOOF_SOURCES)]
    for number, sock in enumerate(socks, 1):
        sock.bind((f"127.0.5.{number}", 0))
        sock.setblocking(False)
    deadline = time.monotonic() + seconds
    sent = 0
    while sent < count and time.monotonic() < deadline:
        request = b"\x00\x01" + f"{0x7c2f80000000 + first + sent:012x}.boot".encode() + b"\x00octet\x00"
        with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
            socks[sent % SPOOF_SOURCES].sendto(request, ("127.0.0.1", port))
        sent += 1
        if sent % 50 == 0:
            time.sleep(0.01)  # ~5,000 a second at most
    for sock in socks:
        sock.close()
    counter.value = sent


def get_all(port: int, paths, seconds: float, counter, source: str = "127.0.0.1") -> None:
    """GET each path on one keep-alive connection from `source` with USER_AGENT, bounded by `seconds`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    deadline = time.monotonic() + seconds
    done = 0
    for path in paths:
        if time.monotonic() > deadline:
            break
        try:
            conn.request("GET", path, headers={"User-Agent": USER_AGENT})
            conn.getresponse().read()
            done += 1
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    conn.close()
    counter.value = done


def review_fill(port: int, count: int, seconds: float, counter) -> None:
    """The review's fill_phones.py: 16 names of each MAC that name no file a phone asks for."""
    get_all(port, (f"/prov/{0x0015650000000 + i // 16:012x}-{i % 16:02d}-{'x' * 100}.cfg" for i in range(count)), seconds, counter)


def distinct_macs(port: int, count: int, seconds: float, counter) -> None:
    get_all(port, (f"/prov/{0x001565100000 + i:012x}.boot" for i in range(count)), seconds, counter)


def fill_from(port: int, source: int, seconds: float, counter) -> None:
    """16 phones from 127.0.7.<source>, each with the 4 longest names of its MAC."""
    macs = [f"0004{source:02x}{i:06x}" for i in range(16)]
    names = ("snomD785-{}.htm", "Config{}.cfg", "cfg{}.xml", "{}-phone.cfg")
    get_all(port, (f"/prov/{name.format(mac.upper() if 'Config' in name else mac)}" for mac in macs for name in names),
            seconds, counter, f"127.0.7.{source}")


def fill(port: int, seconds: float, counter) -> None:
    """The record filled to its bound: FILL_SOURCES sources at once, in threads."""
    counters = [multiprocessing.Value("q", 0) for _ in range(FILL_SOURCES)]
    threads = [threading.Thread(target=fill_from, args=(port, i + 1, seconds, counters[i])) for i in range(FILL_SOURCES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counter.value = sum(c.value for c in counters)


def trickle(port: int, seconds: float) -> int:
    """The review's trickle.py: 20 fetches a second of recorded phones' files."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        source = n % FILL_SOURCES + 1
        conn.request("GET", f"/prov/0004{source:02x}{n % 16:06x}-phone.cfg")
        conn.getresponse().read()
        n += 1
        time.sleep(0.05)
    conn.close()
    return n


def in_child(target, *args) -> int:
    counter = multiprocessing.Value("q", 0)
    child = multiprocessing.Process(target=target, args=(*args, counter))
    child.start()
    child.join()
    return counter.value


def record_files(data: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(data.iterdir()) if p.name.startswith("phones")}


def listing(port: int) -> list[dict]:
    """Every phone of the record, page by page."""
    token = b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    phones: list[dict] = []
    while True:
        conn.request("GET", f"/api/phones?offset={len(phones)}&limit=200", headers={"Authorization": f"Basic {token}"})
        body = json.loads(conn.getresponse().read())
        phones += body["phones"]
        if not body["phones"] or len(phones) >= body["total"]:
            break
    conn.close()
    return phones


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spoofed", type=int, default=6000)
    parser.add_argument("--flood", type=int, default=4000)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    results: dict = {"machine": machine(), "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        server = services.start_greenservers(Path(tmp), {"admin_password_hash": hash_password(ADMIN_PASSWORD)}, contacts_csv="")
        data = Path(tmp) / "data"
        http_port, tftp_port = server.ports["http"], server.ports["tftp"]
        probe = LoopProbe(server.ports["ntp"])
        try:
            real = []
            for i in range(5):
                mac = f"000b82aaaa{i:02x}"
                conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
                conn.request("GET", f"/prov/cfg{mac}.xml", headers={"User-Agent": "Grandstream Model HW GXP2170 SW 1.0.11.3"})
                assert conn.getresponse().read() and conn.close() is None
                real.append(mac)
            for i in range(5):
                mac = f"001565bbbb{i:02x}"
                assert tftp_fetch(tftp_port, f"{mac}.boot", f"127.0.6.{i + 1}")
                real.append(mac)
            started = time.monotonic()
            time.sleep(3)
            results["idle_longest_ms"] = probe.longest(started, time.monotonic())

            started = time.monotonic()
            results["spoofed_sent"] = in_child(spoof, tftp_port, args.spoofed, args.seconds, 0)
            time.sleep(20)  # the forged transfers fail (retransmissions, then the first packet's hold)
            results["spoofed_longest_hold_ms"] = probe.longest(started, time.monotonic())
            phones = listing(http_port)
            results["spoofed_phones_recorded"] = sum(1 for p in phones if p["verified_by"] == "")
            results["real_phones_kept"] = f"{len({p['mac'] for p in phones} & set(real))}/{len(real)}"

            before = len(phones)
            started = time.monotonic()
            results["review_fill_requests"] = in_child(review_fill, http_port, args.flood, args.seconds)
            results["review_fill_phones_recorded"] = len(listing(http_port)) - before
            results["distinct_macs_requests"] = in_child(distinct_macs, http_port, args.flood, args.seconds)
            results["distinct_macs_phones_recorded"] = len(listing(http_port)) - before
            results["flood_longest_hold_ms"] = probe.longest(started, time.monotonic())

            started = time.monotonic()
            results["fill_requests"] = in_child(fill, http_port, args.seconds)
            filled = time.monotonic()
            results["fill_seconds"] = round(filled - started, 1)
            results["fill_longest_hold_ms"] = probe.longest(started, filled)
            time.sleep(7)  # the save of every phone just changed
            results["fill_save_longest_hold_ms"] = probe.longest(filled, time.monotonic())
            phones = listing(http_port)
            results["phones_when_full"] = len(phones)
            results["real_phones_kept_when_full"] = f"{len({p['mac'] for p in phones} & set(real))}/{len(real)}"
            results["record_files_bytes"] = record_files(data)
            in_child(spoof, tftp_port, args.spoofed // 3, args.seconds, args.spoofed)
            time.sleep(20)
            results["spoofed_phones_recorded_when_full"] = sum(1 for p in listing(http_port) if p["verified_by"] == "")

            for path in ("/api/phones?limit=1", "/api/phones", "/api/phones?limit=200", "/phones"):
                rows = []
                for _ in range(5):
                    started = time.monotonic()
                    status, size, elapsed = admin_get(http_port, path)
                    time.sleep(0.05)
                    rows.append({"status": status, "bytes": size, "ms": round(elapsed * 1000, 1),
                                 "longest_hold_ms": probe.longest(started, time.monotonic())})
                results[path] = rows

            started = time.monotonic()
            results["trickle_requests"] = trickle(http_port, 15.0)
            results["saves_longest_hold_ms"] = probe.longest(started, time.monotonic())
            results["probe_answers"], results["probe_lost"] = len(probe.samples), len(probe.lost)
        finally:
            probe.stop()
            server.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "phones_record.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
