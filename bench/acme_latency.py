#!/usr/bin/env python3
"""The other services' latency while the service obtains its ACME certificates, and how long that takes.

    python bench/acme_latency.py [--runs 3]

Every service on loopback (bench/services.py) and Debian's pebble as the ACME
authority (tests/support/pebble.py: its own DNS, http-01 checked on the service's
HTTP port). Each run turns ACME on for new names through the settings API
(so an ECDSA and an RSA-2048 certificate are ordered: keys, two orders,
validation, finalization) while a client of every other service sends a
request each 50 ms; the same probes run as long again with nothing going on,
for comparison. Issuance time: from the API call to the log line saying new
connections use the certificate. Results: bench/results/acme_latency.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent / "tests"))

import requests  # noqa: E402
import services  # noqa: E402
from common import RESULTS, machine  # noqa: E402
from support.pebble import PebbleCA  # noqa: E402

from greenservers.passwords import hash_password  # noqa: E402

ADMIN_PASSWORD = "bench admin password"
PROBED = ("http", "snmp", "tftp", "ntp", "ldap")
PROBE_SECONDS = 8.0
ISSUED_LINE = "new HTTPS and LDAPS connections use it now"


def issue(server, ca: PebbleCA, names: str) -> float:
    """Turn ACME on for `names`; seconds until the certificates are served."""
    seen = len(server.proc.lines)
    started = time.monotonic()
    answer = requests.put(f"http://127.0.0.1:{server.ports['http']}/api/settings/ports", auth=("admin", ADMIN_PASSWORD), timeout=30,
                          json={"acme_domains": names, "acme_directory": ca.directory, "acme_ca_bundle": str(ca.bundle)})
    answer.raise_for_status()
    deadline = started + 120
    while time.monotonic() < deadline:
        if any(ISSUED_LINE in line for line in server.proc.lines[seen:]):
            return time.monotonic() - started
        if any("ordering a certificate for" in line and "failed" in line for line in server.proc.lines[seen:]):
            raise RuntimeError("issuance failed:\n" + "\n".join(server.proc.lines[seen:]))
        time.sleep(0.01)
    raise RuntimeError("no certificate within 120 s")


def probed(server, action) -> tuple[dict, float | None]:
    during: dict = {}
    probing = threading.Thread(target=lambda: during.update(services.run_probes(server, PROBE_SECONDS, services=PROBED)))
    probing.start()
    result = action()
    probing.join(PROBE_SECONDS + 60)
    return during, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    services.raise_fd_limit()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gs-acme-bench-") as tmp:
        server = services.start_greenservers(Path(tmp) / "svc", {"admin_password_hash": hash_password(ADMIN_PASSWORD)})
        ca = PebbleCA(Path(tmp) / "pebble", server.ports["http"]).start()
        try:
            for run in range(args.runs):
                idle, _ = probed(server, lambda: time.sleep(PROBE_SECONDS))  # the same probes with nothing going on
                during, seconds = probed(server, lambda run=run: issue(server, ca, f"pbx{run}.bench.test phones{run}.bench.test"))
                rows.append({"run": run + 1, "issuance_seconds": round(seconds, 2), "idle": idle, "during_issuance": during})
                print(f"run {run + 1}: issuance {seconds:.2f} s; p99 / max ms idle -> during: " + ", ".join(
                    f"{name} {idle[name]['p99_ms']}/{idle[name]['max_ms']} -> {during[name]['p99_ms']}/{during[name]['max_ms']}"
                    f" (lost {during[name]['lost']})" for name in during), flush=True)
        finally:
            ca.stop()
            server.stop()
    worst = {name: max(row["during_issuance"][name]["p99_ms"] for row in rows) for name in rows[0]["during_issuance"]}
    summary = {"machine": machine(), "runs": rows, "issuance_seconds_median": statistics.median(r["issuance_seconds"] for r in rows),
               "worst_p99_ms_during_issuance": worst,
               "lost_during_issuance": sum(r["during_issuance"][n]["lost"] for r in rows for n in r["during_issuance"])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "acme_latency.json").write_text(json.dumps(summary, indent=1))
    print(f"median issuance {summary['issuance_seconds_median']:.2f} s (ECDSA + RSA-2048, two orders); "
          f"worst p99 during it: {worst}; lost: {summary['lost_during_issuance']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
