"""Shared pieces of the benchmarks: greenservers started as in production, process control, medians, the results table.

Built on the tests' support code (tests/support): greenservers is configured and
started one way, support.ServiceProcess (`gunicorn -c gunicorn.conf.py`, every
binding off but those given, ready once the worker says it serves), and every
port comes from support.ports.free_port (never in the kernel's ephemeral range,
never twice). The reference daemons are plain processes, waited for with
support.eventually.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = REPO / "bench" / "results"
for _path in (BENCH, REPO / "tests", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from support import ServiceProcess, eventually, free_port, free_udp_port  # noqa: E402, F401 -- the benchmarks take their ports here
from support.service import stop_process  # noqa: E402

from greenservers.config.private import tighten_install  # noqa: E402


def start_greenservers(directory: Path, settings: dict, app: str = "app:app", timeout: float = 60.0) -> ServiceProcess:
    """greenservers as in production, every binding off but those in `settings`, once it serves (stop() ends it).
    `app` may name a WSGI application of bench/ (hello_app:app, for the HTTP comparison)."""
    env = {"PYTHONPATH": os.pathsep.join([str(BENCH), str(REPO)])}
    server = ServiceProcess(directory, settings, env=env, app=app)
    data_dir = settings.get("data_dir")
    tighten_install(server.config_path, Path(data_dir) if data_dir else directory / "data")  # as an install leaves them:
    return server.start(timeout=timeout)  # the service starts with nothing to make private (a warning the soak would count)


def worker_pid(server: ServiceProcess) -> int:
    """The PID of greenservers' one worker (where its CPU time is spent)."""
    return server.worker_pids[0]


def stop(process) -> None:
    """End a server: greenservers (a ServiceProcess) or a reference daemon (a Popen), by its PID."""
    if isinstance(process, ServiceProcess):
        process.stop()
    else:
        stop_process(process)


def wait_tcp(port: int, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
    """Until something accepts connections on host:port."""
    def accepts() -> bool:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return True
        except OSError:
            return False

    eventually(accepts, timeout, what=f"a listener on {host}:{port}")


def drain(sock: socket.socket, quiet: float = 0.2) -> None:
    """Read and drop the answers still in flight after a load run, until none comes for `quiet` seconds."""
    sock.settimeout(quiet)
    try:
        while True:
            sock.recv(2048)
    except TimeoutError:
        pass


def wait_udp_answer(port: int, process: subprocess.Popen, request: bytes, what: str, timeout: float = 30.0) -> None:
    """Until a reference daemon on 127.0.0.1:port answers `request` (raises if it exits or stays silent).
    Not a connected socket: a TFTP server answers from a port of the transfer's own (RFC 1350's TID)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)

        def answered() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                sock.sendto(request, ("127.0.0.1", port))
                data, (host, _) = sock.recvfrom(2048)
                return bool(data) and host == "127.0.0.1"
            except OSError:
                return False

        eventually(answered, timeout, what=f"a {what} answer on 127.0.0.1:{port}")


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of `pid`, in ns resolution (schedstat; /proc/PID/stat counts 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


CPUS = sorted(os.sched_getaffinity(0))
PINNED = len(CPUS) >= 2  # a server and its clients can each have a core of their own
SERVER_CPU, CLIENT_CPU, ALL_CPUS = str(CPUS[0]), str(CPUS[-1]), ",".join(map(str, CPUS))


def pin(pids: list[int], cpus: str) -> None:
    """Every thread of these processes onto `cpus` (children forked later inherit it)."""
    for pid in pids:
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], stdout=subprocess.DEVNULL, check=True)


@contextlib.contextmanager
def on_cores(pids: list[int]):
    """The servers `pids` on SERVER_CPU and the calling thread (and the threads it starts) on CLIENT_CPU, for the
    block; then every core for both again."""
    pin(pids, SERVER_CPU)
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, set(CPUS))
        pin(pids, ALL_CPUS)


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
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
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
