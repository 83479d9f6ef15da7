"""Moving a port: greenservers rebinds in place, the classic daemons restart or reload; the silence each leaves.

A client asks all the time, on the old port and on the new one (a thread
each), while the port moves; the figures are what an administrator's monitoring would see:

- SNMP: greenservers' `ip_snmp_port` changed through the web API (PUT
  /api/settings/ports), against net-snmp's snmpd stopped and started on the
  new port (it has no other way to change its listening address). A GET every
  few milliseconds on each port.
- HTTP: greenservers' `ip_http_port` changed through the web API, against
  `gunicorn -k gevent` with the new bind in its config file and SIGHUP (its
  own reload: new listeners, new workers). A new connection's GET every few
  milliseconds on each port.

Per move: the silence (the longest time with no answer on either port, from
the change to the first answer on the new port; where the new port answers
before the old one falls silent, only the asks' own spacing) and the time
from the change until the new port answers. For greenservers that time is the
web API's: the admin password checked (scrypt, about 80 ms here, as for every
authenticated request), the settings validated and written, then the sockets
moved, while the old port and the other services serve. Medians of RUNS
alternated runs.

    python bench/rebind_bench.py [--runs 5]

Writes bench/results/rebind.json. Stops everything it starts, by its PID.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from itertools import pairwise
from pathlib import Path

from common import REPO, alternated, eventually, free_port, free_udp_port, ratio_row, start_greenservers, stop, wait_tcp, write_results
from snmp_bench import REQUESTS, start_reference as start_snmpd

from greenservers.passwords import hash_password

PASSWORD = "bench-rebind"
ASK_EVERY = 0.002  # seconds between two asks of the poller
ANSWER_WITHIN = 0.05  # seconds an ask waits for its answer
WATCH = 10.0  # seconds the poller watches at most after a change


class Poller:
    """Asks `ask(port)` of each port in a thread of its own, and notes when each answered."""

    def __init__(self, ask, old: int, new: int):
        self.ask, self.ports = ask, (old, new)
        self.answers: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(port,), daemon=True) for port in self.ports]

    def __enter__(self) -> Poller:
        for thread in self._threads:
            thread.start()
        eventually(lambda: any(port == self.ports[0] for _, port in self.answers), 10, what="answers on the old port")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self, port: int) -> None:
        deadline = time.monotonic() + 60  # bounded whatever happens
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self.ask(port):
                self.answers.append((time.monotonic(), port))  # list.append: safe from two threads
            time.sleep(ASK_EVERY)

    def moved(self, changed_at: float) -> tuple[float, float]:
        """(silence, time until the new port answered), in seconds, once the new port answered."""
        new = self.ports[1]
        first_new = eventually(lambda: next((t for t, port in self.answers if port == new and t >= changed_at), None),
                               WATCH, what="an answer on the new port")
        answers = sorted(t for t, _ in self.answers)  # two threads appended them
        before = [t for t in answers if t < changed_at]
        times = [before[-1] if before else changed_at] + [t for t in answers if changed_at <= t <= first_new]
        silence = max((b - a for a, b in pairwise(times)), default=0.0)
        return silence, first_new - changed_at


# -- the asks --------------------------------------------------------------------------------


def snmp_ask(port: int) -> bool:
    """A GET on a connected socket: a closed port's ICMP "unreachable" ends the wait at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(ANSWER_WITHIN)
        try:
            sock.connect(("127.0.0.1", port))
            sock.send(REQUESTS[0])
            return bool(sock.recv(2048))
        except OSError:
            return False


def http_ask(path: str):
    def ask(port: int) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=ANSWER_WITHIN)
        try:
            connection.request("GET", path)
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()
    return ask


def put_ports(http_port: int, changes: dict) -> None:
    """The change through the web API, as an administrator's script makes it."""
    connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=15)
    token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    try:
        connection.request("PUT", "/api/settings/ports", body=json.dumps(changes),
                           headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
        answer = connection.getresponse()
        body = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"PUT /api/settings/ports answered {answer.status}: {body[:200]!r}")
    except (ConnectionError, http.client.RemoteDisconnected):
        pass  # the HTTP port itself moved: its answer may be cut; the poller tells whether it moved
    finally:
        connection.close()


# -- the moves ----------------------------------------------------------------------------------


def move_snmp(name: str, directory: Path) -> tuple[float, float]:
    old, new = free_udp_port(), free_udp_port()
    if name == "project":
        admin = free_port()
        server = start_greenservers(directory, {"ip_http_port": f"127.0.0.1:{admin}", "ip_snmp_port": f"127.0.0.1:{old}",
                                                "snmp_trusted": "127.0.0.1", "snmp_community": "public",
                                                "admin_password_hash": hash_password(PASSWORD),
                                                "data_dir": str(directory / "data")})
        try:
            with Poller(snmp_ask, old, new) as poller:
                changed_at = time.monotonic()
                put_ports(admin, {"ip_snmp_port": f"127.0.0.1:{new}"})
                return poller.moved(changed_at)
        finally:
            stop(server)
    first, _ = start_snmpd(old, directory)
    second = None
    try:
        with Poller(snmp_ask, old, new) as poller:
            changed_at = time.monotonic()
            stop(first)  # snmpd listens where its command line says: a new address is a restart
            second, _ = start_snmpd(new, directory)
            return poller.moved(changed_at)
    finally:
        stop(first)
        if second is not None:
            stop(second)


GUNICORN_CONF = 'bind = ["127.0.0.1:{port}"]\nworker_class = "gevent"\nworkers = 1\ncontrol_socket_disable = True\n'


def move_http(name: str, directory: Path) -> tuple[float, float]:
    old, new = free_port(), free_port()
    if name == "project":
        server = start_greenservers(directory, {"ip_http_port": f"127.0.0.1:{old}", "admin_password_hash": hash_password(PASSWORD),
                                                "data_dir": str(directory / "data")})
        try:
            with Poller(http_ask("/healthz"), old, new) as poller:
                changed_at = time.monotonic()
                put_ports(old, {"ip_http_port": f"127.0.0.1:{new}"})
                return poller.moved(changed_at)
        finally:
            stop(server)
    conf = directory / "gunicorn.conf.py"
    conf.write_text(GUNICORN_CONF.format(port=old))
    env = dict(os.environ, PYTHONPATH=str(REPO / "bench"))
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(conf), "hello_app:app"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_tcp(old)
        with Poller(http_ask("/hello"), old, new) as poller:
            changed_at = time.monotonic()
            conf.write_text(GUNICORN_CONF.format(port=new))
            proc.send_signal(signal.SIGHUP)  # gunicorn's reload: the config read again, new listeners, new workers
            return poller.moved(changed_at)
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", 5)))
    args = parser.parse_args()
    import tempfile

    rows = []
    for service, move, reference in (("SNMP", move_snmp, "snmpd restarted"), ("HTTP", move_http, "gunicorn SIGHUP")):
        results: dict[str, list[tuple[float, float]]] = {"project": [], "reference": []}
        with tempfile.TemporaryDirectory() as tmp:
            for run in range(args.runs):
                for name in alternated(run):
                    directory = Path(tmp) / f"{name}{run}"
                    directory.mkdir()
                    silence, until_new = move(name, directory)
                    results[name].append((silence * 1e3, until_new * 1e3))
                    print(f"{service} run {run + 1}/{args.runs} {name:9}: silent {silence * 1e3:7.1f} ms, "
                          f"new port answers after {until_new * 1e3:7.1f} ms", flush=True)
        for index, figure in ((0, "longest silence while the port moves, ms"), (1, "change until the new port answers, ms")):
            rows.append(ratio_row(f"{service} {figure} (vs {reference}; lower is better)",
                                  [r[index] for r in results["project"]], [r[index] for r in results["reference"]], 1))
    write_results("rebind", rows)


if __name__ == "__main__":
    main()
