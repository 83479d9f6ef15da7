#!/usr/bin/env python3
"""Soak: mixed traffic from the real client programs for a long time; the worker's memory and files must stay flat.

    python bench/soak.py [--minutes 30] [--sample 5]

One greenservers process with every service on loopback (bench/services.py),
and one thread per client kind running the real programs in a loop (each run
bounded by a timeout; the whole soak bounded by --minutes):

  curl       HTTP GET /healthz and /prov/probe.cfg, TFTP tftp://.../probe.cfg
  snmpget    sysUpTime.0 and the system group; snmpwalk of the system group
  ldapsearch bind as the phones' user, a phone's name search
  ntplib     NTP v4 queries; chronyd -Q (one measurement) now and then
  expected rejections, now and then: snmpget with a wrong community, curl for a
  missing TFTP file, ldapsearch with a wrong password

Every SAMPLE seconds the worker's resident memory (VmRSS) and open file
descriptors are read. After a warm-up (a tenth of the run, at least 20 s,
at most 3 min) the first sample is the baseline; reported: RSS growth from
the baseline to the end (target < 10 %), fds at the baseline, the end and the
maximum (target: flat), client runs and failures, and every log line at
WARNING or above that is not one of the expected rejections (target: none).
Results: bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import services  # noqa: E402
from common import RESULTS, machine  # noqa: E402

CLIENT_TIMEOUT = 15
# rate-limited warnings our own bad requests cause (the services' peer-error lines)
EXPECTED_LOG = re.compile(r"community|not found|no such file|invalid credentials|bind .* refused \(resultCode 49\)", re.I)
LEVEL = re.compile(r"\] \[(WARNING|ERROR|CRITICAL)\] ")


def client_kinds(ports: dict[str, int], password: str) -> list[tuple[str, float, list[str], bool]]:
    """(name, period in seconds, command, expected to succeed)."""
    http, snmp, tftp, ldap, ntp = (ports.get(k) for k in ("http", "snmp", "tftp", "ldap", "ntp"))
    kinds = []
    if http:
        kinds += [
            ("curl http /healthz", 0.25, ["curl", "-sf", "-o", "/dev/null", f"http://127.0.0.1:{http}/healthz"], True),
            ("curl http /prov/", 1.0, ["curl", "-sf", "-o", "/dev/null", f"http://127.0.0.1:{http}/prov/{services.PROBE_FILE}"], True),
        ]
    if tftp:
        kinds += [("curl tftp", 0.5, ["curl", "-sf", "-o", "/dev/null", f"tftp://127.0.0.1:{tftp}/{services.PROBE_FILE}"], True),
                  ("curl tftp missing (rejected)", 5.0, ["curl", "-sf", "-o", "/dev/null", f"tftp://127.0.0.1:{tftp}/missing.cfg"], False)]
    if snmp:
        base = ["-v1", "-r", "1", "-t", "2", "-On", f"udp:127.0.0.1:{snmp}"]
        kinds += [("snmpget", 0.25, ["snmpget", "-c", "public", *base, ".1.3.6.1.2.1.1.3.0"], True),
                  ("snmpget system", 1.0, ["snmpget", "-c", "public", *base] + [f".1.3.6.1.2.1.1.{i}.0" for i in range(1, 8)], True),
                  ("snmpwalk system", 5.0, ["snmpwalk", "-c", "public", *base, ".1.3.6.1.2.1.1"], True),
                  ("snmpget bad community (rejected)", 5.0,
                   ["snmpget", "-c", "wrong", "-v1", "-r", "0", "-t", "0.3", f"udp:127.0.0.1:{snmp}", ".1.3.6.1.2.1.1.3.0"], False)]
    if ldap:
        url = f"ldap://127.0.0.1:{ldap}"
        kinds += [("ldapsearch", 0.5, ["ldapsearch", "-x", "-LLL", "-H", url, "-D", "cn=phonebook,dc=pbx", "-w", password, "-b", "dc=pbx",
                                       "-z", "50", "(|(cn=Jo*)(sn=Jo*))", "cn", "telephoneNumber"], True),
                  ("ldapsearch wrong password (rejected)", 10.0, ["ldapsearch", "-x", "-H", url, "-D", "cn=phonebook,dc=pbx", "-w", "wrong",
                                                                  "-b", "dc=pbx", "(cn=*)"], False)]
    if ntp:
        ntplib_code = ("import ntplib,sys; r=ntplib.NTPClient().request('127.0.0.1', port=int(sys.argv[1]), version=4, timeout=2); "
                       "sys.exit(0 if r.stratum > 0 else 1)")
        kinds += [
            ("ntplib", 2.0, [sys.executable, "-c", ntplib_code, str(ntp)], True),
            ("chronyd -Q", 30.0, ["chronyd", "-f", "/dev/null", "-Q", "-t", "5", f"server 127.0.0.1 port {ntp} iburst maxsamples 1"], True),
        ]
    return kinds


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.runs: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.last_error: dict[str, str] = {}

    def add(self, name: str, ok: bool, detail: str = "") -> None:
        with self.lock:
            self.runs[name] = self.runs.get(name, 0) + 1
            if not ok:
                self.failures[name] = self.failures.get(name, 0) + 1
                self.last_error[name] = detail[-200:]


def client_loop(name: str, period: float, command: list[str], should_succeed: bool, stop: threading.Event, tally: Tally) -> None:
    while not stop.is_set():
        started = time.monotonic()
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
            succeeded = proc.returncode == 0
            detail = proc.stderr or proc.stdout
        except subprocess.TimeoutExpired:
            succeeded, detail = False, "timed out"
        tally.add(name, succeeded == should_succeed, detail)
        stop.wait(max(0.0, period - (time.monotonic() - started)))


def unexpected_log_lines(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        if "Traceback" in line or (LEVEL.search(line) and not EXPECTED_LOG.search(line)):
            out.append(line)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    args = parser.parse_args()
    seconds = args.minutes * 60
    warm_up = min(180.0, max(20.0, seconds / 10))
    samples: list[dict] = []
    tally = Tally()
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as tmp:
        server = services.start_greenservers(Path(tmp))
        try:
            pid = server.worker_pid
            kinds = client_kinds(server.ports, services.LDAP_PASSWORD)
            threads = [threading.Thread(target=client_loop, args=(*kind, stop, tally), daemon=True) for kind in kinds]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            print(f"soak: {args.minutes} min, {len(kinds)} client kinds, worker {pid}, warm-up {warm_up:.0f} s", flush=True)
            next_print = started
            while True:
                elapsed = time.monotonic() - started
                samples.append({"t": round(elapsed, 1), "rss_mb": round(services.rss_mb(pid), 2), "fds": services.open_fds(pid)})
                if time.monotonic() >= next_print:
                    runs = sum(tally.runs.values())
                    print(
                        f"  {elapsed:7.0f} s  RSS {samples[-1]['rss_mb']:7.1f} MiB  fds {samples[-1]['fds']:4}  client runs {runs}",
                        flush=True,
                    )
                    next_print += 60
                if elapsed >= seconds:
                    break
                time.sleep(min(args.sample, max(0.0, seconds - elapsed)))
        finally:
            stop.set()
            for thread in threads if "threads" in locals() else []:
                thread.join(CLIENT_TIMEOUT + 5)
            server.stop()
        lines = list(server.proc.lines)
    after = [s for s in samples if s["t"] >= warm_up] or samples
    base, end = after[0], after[-1]
    settled_end = statistics.median(s["rss_mb"] for s in after[-3:])  # the last samples, not one GC-time spike
    unexpected = unexpected_log_lines(lines)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "minutes": args.minutes, "warm_up_s": warm_up,
        "requests": sum(tally.runs.values()), "failures": sum(tally.failures.values()),
        "runs": tally.runs, "failures_by_client": tally.failures, "last_errors": tally.last_error,
        "rss_start_mb": base["rss_mb"], "rss_end_mb": settled_end, "rss_max_mb": max(s["rss_mb"] for s in after),
        "rss_growth_pct": round((settled_end - base["rss_mb"]) / base["rss_mb"] * 100, 2),
        "fds_start": base["fds"], "fds_end": end["fds"], "fds_max": max(s["fds"] for s in after),
        "log_lines": len(lines), "expected_rejection_lines": sum(1 for line in lines if LEVEL.search(line) and EXPECTED_LOG.search(line)),
        "unexpected_log_lines": len(unexpected), "unexpected_examples": unexpected[:20], "samples": samples,
    }
    result["target_met"] = (result["rss_growth_pct"] < 10 and result["fds_end"] <= result["fds_start"] + 2
                            and not unexpected and result["failures"] == 0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=2))
    print(f"\nsoak — {result['date']} — {result['machine']} — {args.minutes} min")
    print(f"client runs {result['requests']:,}, unexpected outcomes {result['failures']} {result['failures_by_client'] or ''}")
    print(
        f"RSS {result['rss_start_mb']:.1f} -> {result['rss_end_mb']:.1f} MiB "
        f"({result['rss_growth_pct']:+.2f} %, max {result['rss_max_mb']:.1f})"
    )
    print(f"open fds {result['fds_start']} -> {result['fds_end']} (max {result['fds_max']})")
    print(f"log: {result['log_lines']} lines, {result['expected_rejection_lines']} expected rejections, {len(unexpected)} unexpected")
    for line in unexpected[:20]:
        print("   ", line)
    for name, error in tally.last_error.items():
        print(f"   last failure of {name}: {error.strip()[:200]}")
    print("target " + ("met" if result["target_met"] else "MISSED"))
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    os.environ.setdefault("MIBS", "")  # net-snmp: numeric OIDs, no MIB loading noise
    sys.exit(main())
