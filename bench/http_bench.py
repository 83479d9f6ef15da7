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

from common import REPO, alternated, free_port, ratio_row, start_greenservers, stop, wait_tcp, write_results

RUNS = int(os.environ.get("BENCH_RUNS", 5))
DURATION = os.environ.get("BENCH_DURATION", "5s")
CONNECTIONS = 50


def start_project(port: int, directory: Path):
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
            for name in alternated(run):
                port = free_port()
                proc = start_project(port, Path(tmp) / f"project{run}") if name == "project" else start_reference(port)
                try:
                    wait_tcp(port)
                    wrk(port)  # warm-up
                    results[name].append(wrk(port))
                finally:
                    stop(proc)
        def column(index: int, name: str) -> list[float]:
            return [result[index] for result in results[name]]

        write_results("http", [
            ratio_row(f"HTTP requests/s, {CONNECTIONS} keep-alive conns (higher is better)", column(0, "project"), column(0, "reference")),
            ratio_row("HTTP p99 latency ms (lower is better)", column(1, "project"), column(1, "reference"), 2),
        ])


if __name__ == "__main__":
    main()
