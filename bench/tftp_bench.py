"""TFTP: greenservers' TFTP service and tftpd-hpa (in.tftpd) side by side on loopback, alternated.

greenservers and in.tftpd serve the same folder (a 10 MiB and a 2 MiB random file), each
started fresh on a free loopback port: greenservers as in production
(gunicorn, one worker), in.tftpd in the foreground (`-L -s ROOT -a
127.0.0.1:PORT`); so does bench/tftp_floor.py, for one storm (below). All are
stopped by PID at the end.

Figures (medians of RUNS alternated runs; every downloaded file is checked
by size and SHA-256):

1. One 10 MiB download with atftp at blksize 1428 (lock-step, RFC 2348).
2. The same with windowsize 16 (RFC 7440). in.tftpd does not offer
   windowsize, so for it this is again a lock-step download; greenservers
   sends each window of 16 DATA packets with one segmented send (UDP GSO).
3. One 10 MiB download with curl --tftp-blksize 1428.
4. Boot storm: STORM clients started at once, each fetching the 2 MiB file
   with tftp-hpa (`tftp -m binary`: no options, 512-byte blocks, as a phone
   without option support) -- total time until the last one has it.
   This storm is also run against bench/tftp_floor.py: a bare Python
   lock-step loop (epoll, no gevent, no checks), the lower bound of any Python
   server on this machine.
5. The same storm with atftp at blksize 1428.
6. The same storm with atftp at blksize 1428 and windowsize 16, as phones
   that implement RFC 7440 would fetch (in.tftpd ignores the option: lock-step).
7. and 8. The two lock-step storms (4, 5) with the server on one core and the
   clients on another (taskset; in.tftpd's forked children inherit its CPU).

In 4, 5 and 6 the 100 client processes share both cores with the server, as
they never do in a real deployment (phones are other machines), and the
figure includes the clients' own CPU: in.tftpd's process per client runs on
both cores beside its clients, greenservers' one process on one. 7 and 8 give
each server one core of its own and the clients the other: that compares
the servers. (BENCH_CLIENT_NICE=N runs the storm clients under `nice -n N`,
for both servers alike.) greenservers is run with tftp_max_per_client
raised to the storm size because every client here comes from 127.0.0.1.
For the storms where clients and server share the cores, the whole machine's
CPU time during the storm (/proc/stat, both cores) is also given, split into
kernel (system, irq, softirq), user and idle: where the time goes, as the
kernel's work per packet is the same for both servers and the interpreter's
is not. Ratios are project / reference of the figure's unit (as bench/summarize.py
shows them). Target (issue 5): windowsize download >= 2x in.tftpd's best
single download rate; the storm no slower than in.tftpd.
Results: bench/results/tftp.json.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    ALL_CPUS,
    CLIENT_CPU,
    PINNED,
    SERVER_CPU,
    alternated,
    free_udp_port,
    median_spread,
    pin,
    start_greenservers,
    stop,
    wait_udp_answer,
    worker_pid,
    write_results,
)

RUNS = int(os.environ.get("BENCH_RUNS", 5))
STORM_RUNS = int(os.environ.get("BENCH_STORM_RUNS", 3))
STORM = int(os.environ.get("BENCH_STORM", 100))
BIG, SMALL = 10 * 1024 * 1024, 2 * 1024 * 1024
NICE = os.environ.get("BENCH_CLIENT_NICE", "").split() and ["nice", "-n", os.environ["BENCH_CLIENT_NICE"]]


# -- the two servers -------------------------------------------------------------------------


def start_project(port: int, directory: Path, root: Path):
    data = directory / "data"
    data.mkdir(parents=True)
    os.symlink(root, data / "tftp")
    return start_greenservers(directory, {"ip_tftp_port": f"127.0.0.1:{port}", "data_dir": str(data),
                                          "tftp_max_per_client": STORM * 2, "tftp_max_transfers": STORM * 2})


def start_reference(port: int, directory: Path, root: Path) -> subprocess.Popen:
    proc = subprocess.Popen(["in.tftpd", "-L", "-s", str(root), "-a", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return ready(proc, port)


def start_floor(port: int, root: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("tftp_floor.py")), str(port), str(root)])
    return ready(proc, port)


def ready(proc: subprocess.Popen, port: int) -> subprocess.Popen:
    """`proc` once it answers TFTP on 127.0.0.1:port; stopped, never left behind, if it does not."""
    try:
        wait_tftp(port, proc)
    except (RuntimeError, AssertionError):
        stop(proc)
        raise
    return proc


def wait_tftp(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Poll with an RRQ for a missing file until an ERROR comes back."""
    wait_udp_answer(port, proc, b"\x00\x01no-such-file\x00octet\x00", "TFTP", timeout)


# -- clients -------------------------------------------------------------------------------------


def atftp(port: int, name: str, out: str, *options: str) -> list[str]:
    cmd = ["atftp", "-g", "-r", name, "-l", out]
    for option in options:
        cmd += ["--option", option]
    return cmd + ["127.0.0.1", str(port)]


SINGLE = {
    "10 MiB, atftp blksize 1428": lambda port, out: atftp(port, "big.bin", out, "blksize 1428"),
    "10 MiB, atftp blksize 1428 windowsize 16": lambda port, out: atftp(port, "big.bin", out, "blksize 1428", "windowsize 16"),
    "10 MiB, curl --tftp-blksize 1428": lambda port, out: ["curl", "-sS", "--tftp-blksize", "1428", "-o", out, f"tftp://127.0.0.1:{port}/big.bin"],
}
LOCK_STEP_STORMS = {
    "tftp-hpa, 512-byte blocks": lambda port, out: ["tftp", "-m", "binary", "127.0.0.1", str(port), "-c", "get", "small.bin", out],
    "atftp blksize 1428": lambda port, out: atftp(port, "small.bin", out, "blksize 1428"),
}
STORM_CLIENTS = LOCK_STEP_STORMS | {  # in.tftpd ignores windowsize: lock-step for it
    "atftp blksize 1428 windowsize 16": lambda port, out: atftp(port, "small.bin", out, "blksize 1428", "windowsize 16"),
}
STORMS = [(name, False) for name in STORM_CLIENTS] + [(name, True) for name in LOCK_STEP_STORMS if PINNED]
FLOOR_STORM = "tftp-hpa, 512-byte blocks"  # the storm bench/tftp_floor.py also runs (it has no options)


def storm_servers(run: int, name: str, pinned: bool) -> list[str]:
    """Who runs this storm in this run; the floor takes each place in turn, so none always goes first."""
    order = list(alternated(run))
    if name == FLOOR_STORM and not pinned:
        order.insert(run % 3, "floor")
    return order


def storm_figure(name: str, pinned: bool) -> str:
    return f"storm: {STORM} x 2 MiB, {name}" + (", server and clients on a core each" if pinned else "")


def cpu_figure(name: str, kind: str) -> str:
    return f"storm, {name}: whole machine's {kind} CPU"


CPU_KINDS = {"kernel": (2, 5, 6), "user": (0, 1), "idle": (3, 4)}  # /proc/stat columns: user nice system idle iowait irq softirq


def machine_cpu() -> list[float]:
    """Seconds of CPU time since boot, all cores, per /proc/stat column."""
    with open("/proc/stat") as stat:
        return [int(ticks) / os.sysconf("SC_CLK_TCK") for ticks in stat.readline().split()[1:]]


def cpu_split(before: list[float], after: list[float]) -> dict[str, float]:
    spent = [b - a for a, b in zip(before, after, strict=True)]
    return {kind: sum(spent[column] for column in columns) for kind, columns in CPU_KINDS.items()}


def timed_download(command: list[str], out: Path, expected: str) -> float:
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, check=True)
    elapsed = time.perf_counter() - start
    if hashlib.sha256(out.read_bytes()).hexdigest() != expected:
        raise RuntimeError(f"corrupt download: {' '.join(command)}")
    return elapsed


def timed_storm(make_command, port: int, folder: Path, expected: str, prefix: tuple[str, ...] = ()) -> float:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    outs = [folder / f"{i}.bin" for i in range(STORM)]
    start = time.perf_counter()
    procs = [subprocess.Popen([*prefix, *NICE, *make_command(port, str(out))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for out in outs]
    try:
        for proc in procs:
            proc.wait(timeout=180)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    elapsed = time.perf_counter() - start
    bad = [out.name for out in outs if not out.exists() or hashlib.sha256(out.read_bytes()).hexdigest() != expected]
    if bad:
        raise RuntimeError(f"{len(bad)} of {STORM} storm downloads incomplete or corrupt")
    return elapsed


# -- the run ---------------------------------------------------------------------------------


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)  # in.tftpd started as root serves as "nobody"
        root = tmp / "root"
        root.mkdir()
        big, small = os.urandom(BIG), os.urandom(SMALL)
        (root / "big.bin").write_bytes(big)
        (root / "small.bin").write_bytes(small)
        expected = {"big": hashlib.sha256(big).hexdigest(), "small": hashlib.sha256(small).hexdigest()}
        (tmp / "project").mkdir()
        servers = {}
        try:
            servers["project"] = (start_project(project_port := free_udp_port(), tmp / "project", root), project_port)
            servers["reference"] = (start_reference(reference_port := free_udp_port(), tmp, root), reference_port)
            servers["floor"] = (start_floor(floor_port := free_udp_port(), root), floor_port)
            times: dict[tuple[str, str], list[float]] = {}
            for run in range(RUNS):
                for figure, make in SINGLE.items():
                    for who in alternated(run):
                        port = servers[who][1]
                        out = tmp / f"single-{who}.bin"
                        times.setdefault((figure, who), []).append(timed_download(make(port, str(out)), out, expected["big"]))
            for run in range(STORM_RUNS):
                for name, pinned in STORMS:
                    for who in storm_servers(run, name, pinned):
                        proc, port = servers[who]
                        pids = [proc.pid] + ([worker_pid(proc)] if who == "project" else [])
                        if pinned:
                            pin(pids, SERVER_CPU)
                        before = machine_cpu()
                        try:
                            elapsed = timed_storm(STORM_CLIENTS[name], port, tmp / f"storm-{who}", expected["small"],
                                                  ("taskset", "-c", CLIENT_CPU) if pinned else ())
                        finally:
                            if pinned:
                                pin(pids, ALL_CPUS)
                        times.setdefault((storm_figure(name, pinned), who), []).append(elapsed)
                        if not pinned and name in LOCK_STEP_STORMS and who != "floor":
                            for kind, seconds in cpu_split(before, machine_cpu()).items():
                                times.setdefault((cpu_figure(name, kind), who), []).append(seconds)
                        print(f"{storm_figure(name, pinned)} {who}: {elapsed:.2f} s", file=sys.stderr)
        finally:
            for proc, _ in servers.values():
                stop(proc)
    rows = []
    for figure in list(SINGLE) + [storm_figure(name, pinned) for name, pinned in STORMS]:
        project, reference = times[(figure, "project")], times[(figure, "reference")]
        if figure.startswith("storm"):  # seconds: lower is better
            rows.append(seconds_row(figure + " (s, lower is better)", project, reference))
        else:  # rates: higher is better
            rows.append({"figure": figure + " (MB/s, higher is better)", "project": f"{rate(median(project)):.1f}",
                         "reference": f"{rate(median(reference)):.1f}", "ratio": f"{median(reference) / median(project):.2f}",
                         "unit": "MB/s", "spread": {"project": [rate(max(project)), rate(min(project))],
                                                    "reference": [rate(max(reference)), rate(min(reference))]}})
    floor = storm_figure(FLOOR_STORM, False)
    rows.append(seconds_row(f"{floor}: bench/tftp_floor.py, the least a Python server can do, vs in.tftpd (s, lower is better)",
                            times[(floor, "floor")], times[(floor, "reference")]))
    for name in LOCK_STEP_STORMS:
        for kind in CPU_KINDS:
            figure = cpu_figure(name, kind)
            rows.append(seconds_row(figure + " (s, both cores)", times[(figure, "project")], times[(figure, "reference")]))
    best_reference = min(median(times[(f, "reference")]) for f in SINGLE)  # in.tftpd's best client/option set
    window = median(times[("10 MiB, atftp blksize 1428 windowsize 16", "project")])
    rows.append({"figure": "windowsize 16 vs in.tftpd's best single download (MB/s; target ratio >= 2)", "project": f"{rate(window):.1f}",
                 "reference": f"{rate(best_reference):.1f}", "ratio": f"{best_reference / window:.2f}", "unit": "MB/s", "spread": {}})
    write_results("tftp", rows)


def seconds_row(figure: str, project: list[float], reference: list[float]) -> dict:
    """A row in seconds: medians, their ratio (idle CPU may be near zero for in.tftpd) and the spread."""
    return {"figure": figure, "project": f"{median(project):.2f}", "reference": f"{median(reference):.2f}",
            "ratio": f"{median(project) / max(median(reference), 0.01):.2f}", "unit": "s",
            "spread": {"project": [min(project), max(project)], "reference": [min(reference), max(reference)]}}


def median(values: list[float]) -> float:
    return median_spread(values)[0]


def rate(seconds: float) -> float:
    return BIG / seconds / 1e6


if __name__ == "__main__":
    main()
