"""NTP: greenservers' server and chronyd side by side on loopback, alternated.

Each run starts one server freshly on a free loopback port (127.0.0.1) with its
own temporary configuration: greenservers with `ntp_local_stratum = 8`, and
`chronyd -f CONF -d -x -u root` with `port N`, `bindaddress 127.0.0.1`,
`allow 127.0.0.0/8`, `local stratum 8`, no command port or socket, a pid file
in the temporary folder and no drift file (so it never touches a system
chronyd). chronyd has no `ratelimit` line: it answers everything.

Figures (medians of RUNS alternated runs):

1. Queries per second with 16 requests in flight, for DURATION seconds after
   a warm-up. The requests come from SOURCES different loopback addresses in
   turn (127.1.x.y, set per datagram with IP_PKTINFO), as from a building
   of phones: from one address our per-client rate limit (8/s, burst 64)
   would rightly silence the benchmark. Our limiter forgets the least
   recently seen of more than 8192 clients, so this is its slowest path.
2. Server CPU microseconds per answer (schedstat of the serving process).
3. The server's receive-to-transmit delay, T3 - T2 read from the answers:
   under that load (which includes waiting in the socket queue behind the
   other 15, as both servers take T2 from the kernel's receive timestamp), and
   with one request in flight.

Target (issue 6): at least a third of chronyd's rate; median receive-to-transmit
under 100 us. Results: bench/results/ntp.json.
"""

from __future__ import annotations

import os
import socket
import statistics
import struct
import subprocess
import time
from pathlib import Path

from common import (
    collect,
    cpu_seconds,
    drain,
    free_udp_port,
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
SOURCES = 65536
SERIAL_QUERIES = int(os.environ.get("BENCH_NTP_SERIAL", 2000))
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)


def request(i: int) -> bytes:
    return b"\x23" + bytes(39) + struct.pack("!Q", 0xEEB29000_00000000 + i)  # v4 mode 3, a distinct transmit


REQUESTS = [request(i) for i in range(SOURCES)]
# in_pktinfo {ifindex, spec_dst (our source address), addr}
SOURCE_CMSG = [[(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("@i4s4s", 0, bytes([127, 1, i >> 8, i & 0xFF]), bytes(4)))]
               for i in range(SOURCES)]


# -- the two servers ---------------------------------------------------------------------------


def start_project(port: int, directory: Path):
    server = start_greenservers(
        directory, {"ip_ntp_port": f"127.0.0.1:{port}", "ntp_local_stratum": 8, "data_dir": str(directory / "data")}
    )
    return server, worker_pid(server)


def start_reference(port: int, directory: Path) -> tuple[subprocess.Popen, int]:
    config = directory / "chrony.conf"
    config.write_text(f"port {port}\nbindaddress 127.0.0.1\nallow 127.0.0.0/8\nlocal stratum 8\ncmdport 0\n"
                      f"bindcmdaddress /\npidfile {directory}/chronyd.pid\n")
    proc = subprocess.Popen(["chronyd", "-f", str(config), "-d", "-x", "-u", "root"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ntp(port, proc)
    return proc, proc.pid


def wait_ntp(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    wait_udp_answer(port, proc, REQUESTS[0], "NTP", timeout)


# -- the measurements -----------------------------------------------------------------------


def delay_us(reply: bytes) -> float:
    receive, transmit = struct.unpack_from("!QQ", reply, 32)
    return ((transmit - receive) & 0xFFFFFFFFFFFFFFFF) * 1e6 / 2**32


def client_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("0.0.0.0", 0))  # answers come back to 127.1.x.y: any local address
    return sock


def throughput(port: int, seconds: float, in_flight: int) -> tuple[int, float, float, int, list[float]]:
    """(answers, wall seconds, client CPU seconds, timeouts, sampled delays) with `in_flight` outstanding."""
    address = ("127.0.0.1", port)
    delays: list[float] = []
    with client_socket() as sock:
        sock.settimeout(0.5)
        sendmsg, recv = sock.sendmsg, sock.recv
        sent = answered = timeouts = 0
        for _ in range(in_flight):
            i = sent & 0xFFFF
            sendmsg([REQUESTS[i]], SOURCE_CMSG[i], 0, address)
            sent += 1
        cpu0, start = time.process_time(), time.perf_counter()
        deadline = start + seconds
        while True:
            try:
                reply = recv(2048)
            except TimeoutError:  # a datagram was lost: put in_flight back in the air
                timeouts += 1
                for _ in range(in_flight):
                    i = sent & 0xFFFF
                    sendmsg([REQUESTS[i]], SOURCE_CMSG[i], 0, address)
                    sent += 1
                continue
            answered += 1
            if answered & 0xF == 0:
                delays.append(delay_us(reply))
                if time.perf_counter() >= deadline:
                    break
            i = sent & 0xFFFF
            sendmsg([REQUESTS[i]], SOURCE_CMSG[i], 0, address)
            sent += 1
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
        drain(sock)
    return answered, wall, cpu, timeouts, delays


def serial_delays(port: int, count: int) -> tuple[list[float], list[float]]:
    """(server receive-to-transmit, client round trip) in us, one request in flight."""
    address = ("127.0.0.1", port)
    server, round_trip = [], []
    with client_socket() as sock:
        sock.settimeout(2.0)
        for n in range(count):
            i = (n * 7919) & 0xFFFF
            t0 = time.perf_counter_ns()
            sock.sendmsg([REQUESTS[i]], SOURCE_CMSG[i], 0, address)
            reply = sock.recv(2048)
            round_trip.append((time.perf_counter_ns() - t0) / 1e3)
            server.append(delay_us(reply))
    return server, round_trip


def measure(name: str, directory: Path) -> dict:
    port = free_udp_port()
    proc, pid = (start_project if name == "project" else start_reference)(port, directory)
    try:
        throughput(port, 1.0, IN_FLIGHT)  # warm-up
        cpu0 = cpu_seconds(pid)
        answered, wall, client_cpu, timeouts, delays = throughput(port, DURATION, IN_FLIGHT)
        server_cpu = cpu_seconds(pid) - cpu0
        serial, round_trip = serial_delays(port, SERIAL_QUERIES)
    finally:
        stop(proc)
    return {"rate": answered / wall, "cpu_us": server_cpu / answered * 1e6, "client_busy": client_cpu / wall,
            "timeouts": timeouts, "delay_loaded_us": statistics.median(delays), "delay_serial_us": statistics.median(serial),
            "round_trip_us": statistics.median(round_trip)}


def main() -> None:
    results = collect(RUNS, measure, lambda r: (
        f"{r['rate']:8.0f} q/s, {r['cpu_us']:5.1f} us CPU/answer, "
        f"T3-T2 {r['delay_loaded_us']:6.1f} us loaded / {r['delay_serial_us']:5.1f} us serial, "
        f"RTT {r['round_trip_us']:5.1f} us, client busy {r['client_busy']:.0%}, timeouts {r['timeouts']}"))

    def row(key: str, figure: str, digits: int = 0) -> dict:
        return ratio_row(figure, [r[key] for r in results["project"]], [r[key] for r in results["reference"]], digits)

    write_results("ntp", [
        row("rate", f"NTP queries/s, {IN_FLIGHT} in flight (higher is better)"),
        row("cpu_us", "server CPU us per answer (lower is better)", 1),
        row("delay_loaded_us", f"median receive-to-transmit us, {IN_FLIGHT} in flight", 1),
        row("delay_serial_us", "median receive-to-transmit us, 1 in flight", 1),
        row("round_trip_us", "median client round trip us, 1 in flight", 1),
        row("client_busy", "load generator busy (1.00 = client-bound)", 2),
    ])


if __name__ == "__main__":
    main()
