"""HTTP: the same small Flask response through greenservers' worker (caps on) and through
plain `gunicorn -k gevent`, side by side, alternated, with wrk on loopback.

Prints requests per second and p99 latency of each (medians of RUNS runs) and the ratio.
Target (issue 2): the caps cost at most 5% (ratio >= 0.95).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, free_port, median_spread, start_greenservers, stop, wait_tcp, write_results

RUNS = int(os.environ.get("BENCH_RUNS", 5))
DURATION = os.environ.get("BENCH_DURATION", "5s")
CONNECTIONS = 50


def start_project(port: int, directory: Path) -> subprocess.Popen:
    return start_greenservers(directory, {"ip_http_port": f"127.0.0.1:{port}", "http_max_conn": 1000, "http_max_conn_rate": 100},
                              app="hello_app:app")


def start_reference(port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "bench"))
    return subprocess.Popen([sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "1", "-b", f"127.0.0.1:{port}",
                             "--no-control-socket", "hello_app:app"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wrk(port: int) -> tuple[float, float]:
    out = subprocess.run(["wrk", "-t", "1", "-c", str(CONNECTIONS), "-d", DURATION, "--latency", f"http://127.0.0.1:{port}/hello"],
                         capture_output=True, text=True, timeout=120).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()
    p99_ms = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rps, p99_ms


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        results = {"project": [], "reference": []}
        for run in range(RUNS):
            for name in ("project", "reference") if run % 2 == 0 else ("reference", "project"):
                port = free_port()
                proc = start_project(port, Path(tmp)) if name == "project" else start_reference(port)
                try:
                    wait_tcp(port)
                    wrk(port)  # warm-up
                    results[name].append(wrk(port))
                finally:
                    stop(proc)
        p_rps = median_spread([r for r, _ in results["project"]])
        r_rps = median_spread([r for r, _ in results["reference"]])
        p_p99 = median_spread([p for _, p in results["project"]])
        r_p99 = median_spread([p for _, p in results["reference"]])
        write_results("http", [
            {"figure": f"HTTP requests/s, {CONNECTIONS} keep-alive conns (higher is better)", "project": f"{p_rps[0]:.0f}", "reference": f"{r_rps[0]:.0f}",
             "ratio": f"{p_rps[0] / r_rps[0]:.2f}", "spread": {"project": p_rps[1:], "reference": r_rps[1:]}},
            {"figure": "HTTP p99 latency ms (lower is better)", "project": f"{p_p99[0]:.2f}", "reference": f"{r_p99[0]:.2f}",
             "ratio": f"{p_p99[0] / r_p99[0]:.2f}", "spread": {"project": p_p99[1:], "reference": r_p99[1:]}},
        ])


if __name__ == "__main__":
    main()
