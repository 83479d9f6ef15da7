"""Shared pieces of the benchmarks: free ports, process control, medians, the results table."""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))
from greenservers.services import BINDING_KEYS  # noqa: E402


BINDINGS_OFF = {key: "" for key in BINDING_KEYS}


def start_greenservers(directory: Path, settings: dict, app: str = "app:app") -> subprocess.Popen:
    """greenservers as in production (gunicorn -c gunicorn.conf.py), every binding off but those in `settings`."""
    import tomlkit

    config = directory / "greenservers.toml"
    config.write_text(tomlkit.dumps({**BINDINGS_OFF, **settings}))
    env = dict(os.environ, GREENSERVERS_CONFIG=str(config), PYTHONPATH=f"{REPO / 'bench'}:{REPO}")
    return subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(REPO / "gunicorn.conf.py"), app],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def worker_pid(master: subprocess.Popen) -> int:
    return int(subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True, text=True).stdout.split()[0])


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_tcp(port: int, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


def drain(sock: socket.socket, quiet: float = 0.2) -> None:
    """Read and drop the answers still in flight after a load run, until none comes for `quiet` seconds."""
    sock.settimeout(quiet)
    try:
        while True:
            sock.recv(2048)
    except TimeoutError:
        pass


def wait_udp_answer(port: int, proc: subprocess.Popen, request: bytes, what: str, timeout: float = 30.0) -> None:
    """Until a UDP server on 127.0.0.1:port answers `request` (raises if it exits or stays silent)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        sock.settimeout(0.2)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                sock.send(request)
                if sock.recv(2048):
                    return
            except OSError:
                time.sleep(0.05)
    raise RuntimeError(f"no {what} answer on 127.0.0.1:{port}")


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of `pid`, in ns resolution (schedstat; /proc/PID/stat counts 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            pass  # a thread that ended meanwhile
    return total / 1e9


def alternated(run: int) -> tuple[str, str]:
    """The order of the two servers in run `run`: project first in even runs, so neither always goes first."""
    return ("project", "reference") if run % 2 == 0 else ("reference", "project")


def collect(runs: int, measure, describe) -> dict[str, list]:
    """`measure(name, directory)` of both servers, alternated, `runs` times; each result printed with `describe`."""
    import tempfile

    results: dict[str, list] = {"project": [], "reference": []}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs):
            for name in alternated(run):
                directory = Path(tmp) / f"{name}{run}"
                directory.mkdir()
                results[name].append(measure(name, directory))
                print(f"run {run + 1}/{runs} {name:9}: {describe(results[name][-1])}", flush=True)
    return results


def ratio_row(figure: str, project: list[float], reference: list[float], digits: int = 0) -> dict:
    """One table row: the medians, their ratio (project / reference) and the spread of the runs."""
    p, r = median_spread(project), median_spread(reference)
    return {"figure": figure, "project": f"{p[0]:.{digits}f}", "reference": f"{r[0]:.{digits}f}",
            "ratio": f"{p[0] / r[0]:.2f}", "spread": {"project": p[1:], "reference": r[1:]}}


def median_spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def machine() -> str:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model or platform.processor()}"


def write_results(name: str, rows: list[dict]) -> None:
    """rows: {figure, project, reference, ratio, unit, spread}; printed and written as JSON."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d"), "machine": machine(), "rows": rows}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    print(f"\n{name} — {payload['date']} — {payload['machine']}")
    print(f"{'figure':58} {'project':>14} {'reference':>14} {'ratio':>7}")
    for row in rows:
        print(f"{row['figure']:58} {row['project']:>14} {row['reference']:>14} {row['ratio']:>7}")
