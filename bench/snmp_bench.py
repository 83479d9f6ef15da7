"""SNMP: greenservers' v1 agent and net-snmp's snmpd side by side on loopback, alternated.

Figures (medians of RUNS alternated runs; each server freshly started on a
free loopback port with its own temporary configuration):

1. GET throughput, 16 requests in flight: a GetRequest for sysUpTime.0 (a
   value both agents compute at each request), the request-id changed for
   every request, for DURATION seconds after a warm-up.
2. Server CPU per answered GET (CPU time of the serving process, from schedstat,
   over the throughput run / requests answered).
3. Server CPU per dropped datagram from an untrusted source (127.0.0.2,
   not in snmp_trusted / not allowed by snmpd's rocommunity): bursts of
   BURST datagrams, each burst followed by a trusted GET whose answer
   proves the burst was read (so the socket buffer never overflows): twice,
   SLOW_RATE a second first (below greenservers' flood rate: each datagram
   read and dropped in user space, and logged per source), then DROPS at
   full speed (a flood: past its first thousand a second, greenservers'
   kernel filter drops them, shells.source_filter).

The load generator is this process (Python, one socket, pre-encoded
requests); its own CPU use is printed so a client-bound figure shows.
Target (issue 4): GET rate >= 0.5 x snmpd's; a drop >= 10x cheaper than a
served GET. Results: bench/results/snmp.json.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from common import (
    collect,
    cpu_seconds,
    drain,
    free_udp_port,
    median_spread,
    ratio_row,
    start_greenservers,
    stop,
    wait_udp_answer,
    worker_pid,
    write_results,
)

RUNS = int(os.environ.get("BENCH_RUNS", 5))
DURATION = float(os.environ.get("BENCH_DURATION", 3.0))
IN_FLIGHT = 16
DROPS = int(os.environ.get("BENCH_DROPS", 20000))
BURST = 200
SLOW_RATE = 800  # untrusted datagrams a second, below greenservers' flood rate (shells.source_filter.FLOOD_DATAGRAMS)
SLOW_DROPS = 2400
UNTRUSTED_SOURCE = "127.0.0.2"

# snmpget -v1 -c public AGENT .1.3.6.1.2.1.1.3.0 (request-id at offset 17..20, 4 octets)
GET_UPTIME = bytes.fromhex("302902010004067075626c6963a01c020400000000020100020100300e300c06082b060102010103000500")
REQUEST_ID_AT = GET_UPTIME.index(bytes.fromhex("020400000000")) + 2


def requests_with_ids(count: int) -> list[bytes]:
    head, tail = GET_UPTIME[:REQUEST_ID_AT], GET_UPTIME[REQUEST_ID_AT + 4:]
    return [head + (0x01000000 + i).to_bytes(4, "big") + tail for i in range(count)]


REQUESTS = requests_with_ids(65536)


# -- the two servers -------------------------------------------------------------------------


def start_project(port: int, directory: Path):
    server = start_greenservers(directory, {"ip_snmp_port": f"127.0.0.1:{port}", "snmp_trusted": "127.0.0.1",
                                            "snmp_community": "public", "data_dir": str(directory / "data")})
    return server, worker_pid(server)


def start_reference(port: int, directory: Path) -> tuple[subprocess.Popen, int]:
    config = directory / "snmpd.conf"
    config.write_text("rocommunity public 127.0.0.1\nsysDescr reference\nsysContact bench\nsysLocation loopback\n")
    env = dict(os.environ, MIBS="", MIBDIRS=str(directory), SNMP_PERSISTENT_DIR=str(directory / "persist"))
    proc = subprocess.Popen(["/usr/sbin/snmpd", "-f", "-Lf", "/dev/null", "-C", "-c", str(config), f"udp:127.0.0.1:{port}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_snmp(port, proc)
    return proc, proc.pid


def wait_snmp(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    wait_udp_answer(port, proc, REQUESTS[0], "SNMP", timeout)


# -- the measurements ------------------------------------------------------------------------


def get_throughput(port: int, seconds: float) -> tuple[int, float, float, int]:
    """(answers, wall seconds, client CPU seconds, timeouts) with IN_FLIGHT requests outstanding."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.connect(("127.0.0.1", port))
        sock.settimeout(0.5)
        send, recv, requests = sock.send, sock.recv, REQUESTS
        sent = answered = timeouts = 0
        for _ in range(IN_FLIGHT):
            send(requests[sent & 0xFFFF])
            sent += 1
        cpu0, start = time.process_time(), time.perf_counter()
        deadline = start + seconds
        while True:
            try:
                recv(2048)
            except TimeoutError:  # a datagram was lost: put IN_FLIGHT back in the air
                timeouts += 1
                for _ in range(IN_FLIGHT):
                    send(requests[sent & 0xFFFF])
                    sent += 1
                continue
            answered += 1
            if answered & 0xFF == 0 and time.perf_counter() >= deadline:
                break
            send(requests[sent & 0xFFFF])
            sent += 1
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
        drain(sock)
    return answered, wall, cpu, timeouts


def drop_cost(port: int, server_pid: int, count: int, get_cpu: float, per_second: int | None = None) -> float:
    """Server CPU seconds per untrusted datagram dropped (the barrier GETs' share, `get_cpu` each, taken out);
    at most `per_second` a second if given (greenservers drops below its flood rate in user space, above it the
    kernel does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as barrier:
        flood.bind((UNTRUSTED_SOURCE, 0))
        flood.connect(("127.0.0.1", port))
        barrier.connect(("127.0.0.1", port))
        barrier.settimeout(2.0)
        before = cpu_seconds(server_pid)
        for burst in range(count // BURST):
            for i in range(BURST):
                flood.send(REQUESTS[i])
            barrier.send(REQUESTS[burst & 0xFFFF])
            barrier.recv(2048)
            if per_second and (burst + 1) * BURST % per_second == 0:
                time.sleep(1.1)  # a new second for the flood detector (CPU, not wall time, is measured)
        spent = cpu_seconds(server_pid) - before
    bursts = count // BURST
    return max(0.0, spent - bursts * get_cpu) / (bursts * BURST)


def measure(name: str, directory: Path) -> dict:
    port = free_udp_port()
    proc, pid = (start_project if name == "project" else start_reference)(port, directory)
    try:
        get_throughput(port, 1.0)  # warm-up (and the agent's request cache)
        cpu0 = cpu_seconds(pid)
        answered, wall, client_cpu, timeouts = get_throughput(port, DURATION)
        server_cpu = cpu_seconds(pid) - cpu0
        # below the flood rate first: once a flood is seen, greenservers' kernel filter stays on for 10 s
        per_slow_drop = drop_cost(port, pid, SLOW_DROPS, server_cpu / answered, SLOW_RATE)
        per_drop = drop_cost(port, pid, DROPS, server_cpu / answered)
    finally:
        stop(proc)
    return {"rate": answered / wall, "get_cpu_us": server_cpu / answered * 1e6, "drop_cpu_us": per_drop * 1e6,
            "slow_drop_cpu_us": per_slow_drop * 1e6,
            "client_busy": client_cpu / wall, "timeouts": timeouts}


def main() -> None:
    # the machine's other work skews the rates; the CPU-per-request figures hold up better
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    results = collect(RUNS, measure, lambda r: (
        f"{r['rate']:8.0f} GET/s, {r['get_cpu_us']:6.1f} us CPU/GET, "
        f"{r['drop_cpu_us']:5.2f} us CPU/drop ({r['slow_drop_cpu_us']:5.2f} below the flood rate), "
        f"client busy {r['client_busy']:.0%}, timeouts {r['timeouts']}"))

    def values(key: str) -> tuple[list[float], list[float]]:
        return [r[key] for r in results["project"]], [r[key] for r in results["reference"]]

    get_p, get_r = (median_spread(v) for v in values("get_cpu_us"))
    drop_p, drop_r = (median_spread(v) for v in values("drop_cpu_us"))
    slow_p, slow_r = (median_spread(v) for v in values("slow_drop_cpu_us"))
    busy_p, busy_r = (median_spread(v) for v in values("client_busy"))
    write_results("snmp", [
        ratio_row(f"SNMP v1 GET/s, {IN_FLIGHT} in flight (higher is better)", *values("rate")),
        ratio_row("server CPU us per answered GET (lower is better)", *values("get_cpu_us"), 1),
        ratio_row(f"server CPU us per untrusted datagram dropped, a flood of {DROPS:,} at full speed (lower is better)",
                  *values("drop_cpu_us"), 2),
        {"figure": "served GET / dropped datagram CPU (project; target >= 10)", "project": f"{get_p[0] / drop_p[0]:.1f}",
         "reference": f"{get_r[0] / drop_r[0]:.1f}", "ratio": "", "spread": {}},
        ratio_row(f"server CPU us per untrusted datagram dropped, {SLOW_RATE} a second (below the flood rate; lower is better)",
                  *values("slow_drop_cpu_us"), 2),
        {"figure": "served GET / dropped datagram CPU, below the flood rate (project)", "project": f"{get_p[0] / slow_p[0]:.1f}",
         "reference": f"{get_r[0] / slow_r[0]:.1f}", "ratio": "", "spread": {}},
        {"figure": "load generator busy (1.00 = client-bound)", "project": f"{busy_p[0]:.2f}", "reference": f"{busy_r[0]:.2f}",
         "ratio": "", "spread": {}},
    ])
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
