"""LDAP benchmark: greenservers vs OpenLDAP slapd (back_mdb, eq+sub indexes), side by side on loopback.

Both are loaded with the same contacts (greenservers through AddressBook,
slapd with slapadd from a temp slapd.conf) and asked the same phone-like
mix over one bound connection per client: 50 % name prefix
`(|(cn=X*)(sn=X*))`, 20 % substring `(|(cn=*X*)(sn=*X*))`, 30 % number
`(|(telephoneNumber=N)(mobile=N)(homePhone=N))`, size limit 50 (a phone's
"max hits"), attributes cn sn telephoneNumber mobile. Modes: sequential
(one request in flight) and 8 connections in flight, over plain LDAP and
after StartTLS. Runs alternate between the servers; the figures are medians
of the runs (searches per second, median and p99 latency). Each kind alone
(sequential, plain) is measured in KIND_PAIRS pairs of short runs (KIND_RUN
seconds each, the servers alternated, each pair asking queries no pair
before it asked, both of its runs the same); its ratio is the median of the
pairs' ratios (a pair's two runs are a second apart, so this machine's
speed, which drifts 2x over a minute, cancels out of each). Beside each
number-only pair, a bare CPython server that answers every search with a
canned empty SearchResultDone runs the same queries: the most any Python
server could reach on this machine, against slapd. Then p99 with
100,000 contacts, sequential, plain: of every search, and of each query's
fastest answer over the runs (the server's own cost, without the moments
another process held the CPU, which set the first on a shared machine), and
with the server on a core of its own and the client on the other.

    python bench/ldap_bench.py [--contacts 10000] [--runs 3] [--seconds 4] [--big 100000]

Writes bench/results/ldap.json. Stops everything it starts.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent / "tests"),
                str(Path(__file__).resolve().parent.parent)]

from common import PINNED, free_port, on_cores, stop, wait_tcp, worker_pid, write_results  # noqa: E402
from support import ServiceProcess, ldap_wire as w  # noqa: E402

from greenservers.addressbook import AddressBook  # noqa: E402
from greenservers.proto import ber  # noqa: E402

PASSWORD = "bench-secret"
ATTRIBUTES = ["cn", "sn", "telephoneNumber", "mobile"]
SIZE_LIMIT = 50
SYLLABLES = ["an", "ber", "chri", "da", "el", "fen", "gus", "han", "ing", "jo", "kal", "lin", "mar", "nor", "ol", "pet",
             "ras", "sch", "tor", "ul", "ven", "wal", "xa", "yo", "zim", "mann", "son", "er", "ke", "ti"]


# -- the data -------------------------------------------------------------------------


def make_contacts(count: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)

    def name(parts: int) -> str:
        return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()

    firsts = [name(2) for _ in range(300)]
    rows = []
    for i in range(count):
        rows.append({
            "first_name": rng.choice(firsts), "last_name": name(rng.randint(2, 3)), "display_name": "", "company": "",
            "work": f"+49 30 {1000000 + i}", "mobile": f"+49 171 {2000000 + i}" if i % 3 == 0 else "",
            "home": f"+49 89 {3000000 + i}" if i % 7 == 0 else "", "extension": "", "email": "",
        })
    return rows


def ldif(rows: list[dict]) -> str:
    out = ["dn: dc=pbx\nobjectClass: top\nobjectClass: domain\ndc: pbx\n"]
    seen: set[str] = set()
    for i, row in enumerate(rows, 1):
        cn = f"{row['first_name']} {row['last_name']}"
        rdn = f"cn={cn}" if cn.lower() not in seen else f"cn={cn}+uid={i}"
        seen.add(cn.lower())
        lines = [f"dn: {rdn},dc=pbx", "objectClass: inetOrgPerson", f"cn: {cn}", f"sn: {row['last_name']}",
                 f"givenName: {row['first_name']}", f"displayName: {cn}", f"uid: {i}", f"telephoneNumber: {row['work']}"]
        if row["mobile"]:
            lines.append(f"mobile: {row['mobile']}")
        if row["home"]:
            lines.append(f"homePhone: {row['home']}")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


MIX = {"prefix": 0.5, "substring": 0.2, "number": 0.3}
KIND_PAIRS = 25  # pairs of runs of each kind alone (one of each server)
KIND_QUERIES = 60_000  # queries of one kind, drawn at random, in KIND_PAIRS + 1 slots (more than a run asks): the
# warm-up asks the first, each pair the next; a query asked once is not asked again (a server's caches), unless drawn twice
KIND_RUN = 0.5  # seconds: each of a pair's runs


def make_queries(rows: list[dict], count: int, seed: int = 2, only: str | None = None) -> list[bytes]:
    """The phone-like mix (or `only` one kind), encoded once (message id 2: one request in flight per connection)."""
    rng = random.Random(seed)
    queries = []
    for _ in range(count):
        row = rng.choice(rows)
        kind = rng.random() if only is None else {"prefix": 0.0, "substring": 0.6, "number": 0.9}[only]
        if kind < 0.5:
            typed = rng.choice([row["first_name"], row["last_name"]])[: rng.randint(2, 5)]
            text = f"(|(cn={typed}*)(sn={typed}*))"
        elif kind < 0.7:
            last = row["last_name"]
            start = rng.randint(1, max(1, len(last) - 4))
            typed = last[start:start + rng.randint(3, 4)]
            text = f"(|(cn=*{typed}*)(sn=*{typed}*))"
        else:
            number = rng.choice([n for n in (row["work"], row["mobile"], row["home"]) if n]).replace(" ", "")
            text = f"(|(telephoneNumber={number})(mobile={number})(homePhone={number}))"
        queries.append(w.search(2, text, attributes=ATTRIBUTES, size_limit=SIZE_LIMIT))
    return queries


# -- the servers ---------------------------------------------------------------------------


def start_project(directory: Path, rows: list[dict]) -> tuple[ServiceProcess, int]:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    book = AddressBook(directory / "data" / "addressbook.sqlite3")
    book.import_csv(out.getvalue())
    book.close()
    port = free_port()
    proc = ServiceProcess(directory, {"ip_ldap_port": f"127.0.0.1:{port}", "ldap_password": PASSWORD})
    proc.start(timeout=60)
    return proc, port


SLAPD_CONF = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
sizelimit 500
database mdb
suffix "dc=pbx"
rootdn "cn=phonebook,dc=pbx"
rootpw {password}
directory {dir}/db
maxsize 4294967296
index objectClass eq
index cn,sn,givenName,displayName eq,sub
index telephoneNumber,mobile,homePhone eq,sub
access to * by * read
"""


def start_reference(directory: Path, rows: list[dict], cert: Path, key: Path) -> tuple[subprocess.Popen, int]:
    (directory / "db").mkdir(parents=True)
    conf = directory / "slapd.conf"
    conf.write_text(SLAPD_CONF.format(dir=directory, cert=cert, key=key, password=PASSWORD))
    (directory / "data.ldif").write_text(ldif(rows))
    subprocess.run(["slapadd", "-q", "-f", str(conf), "-l", str(directory / "data.ldif")], check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen(["slapd", "-d", "0", "-f", str(conf), "-h", f"ldap://127.0.0.1:{port}/"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_tcp(port)
    return proc, port


# what any Python server costs at least: the number-only row's floor. It answers a bind with success and every
# other message with an empty SearchResultDone, which the client reads as the end of an answer (DONE_HEAD)
PYTHON_FLOOR = """
import socket, sys
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
bound = bytes.fromhex("300c02010161070a010004000400")
done = bytes.fromhex("300c02010265070a010004000400")
while True:
    sock, _ = listener.accept()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := sock.recv(65536):
        sock.send(bound if data[5] == 0x60 else done)
    sock.close()
"""


def start_python_floor() -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", PYTHON_FLOOR, str(port)])
    wait_tcp(port)
    return proc, port


# -- the client -----------------------------------------------------------------------------


def read_message(sock, buffer: bytearray) -> bytes:
    while True:
        try:
            size = ber.frame_length(buffer)
            if len(buffer) >= size:
                message = bytes(buffer[:size])
                del buffer[:size]
                return message
        except ber.Incomplete:
            pass
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buffer += chunk


def op_tag(message: bytes) -> int:
    _, s, e = ber.read_header(message, 0, len(message))
    _, _, b = ber.read_header(message, s, e)
    return message[b]


def open_connection(port: int, tls: bool, cafile: Path):
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = bytearray()
    if tls:
        sock.sendall(w.extended(1, "1.3.6.1.4.1.1466.20037"))
        read_message(sock, buffer)
        context = ssl.create_default_context(cafile=str(cafile))
        context.check_hostname = False
        sock = context.wrap_socket(sock)
    sock.sendall(w.bind(1, "cn=phonebook,dc=pbx", PASSWORD))
    assert op_tag(read_message(sock, buffer)) == 0x61
    return sock, buffer


# SearchResultDone of message 2 without controls or text: what both servers end these answers with
DONE_HEAD = b"\x30\x0c\x02\x01\x02\x65\x07"


def read_answer(sock, buffer: bytearray) -> None:
    """Read one search's answer. Cheap on purpose (the client shares the CPUs with the server):
    the tail is compared with the usual SearchResultDone, else the messages are walked, each once
    over all the reads of the answer (slapd writes an entry at a time)."""
    walked = 0  # the messages before it are whole, and none of them ends the answer
    while True:
        if len(buffer) >= 14 and buffer[-14:-7] == DONE_HEAD:
            buffer.clear()
            return
        view = memoryview(buffer)
        try:
            while walked < len(buffer):
                size = ber.frame_length(view[walked:])
                if walked + size > len(buffer):
                    break
                if op_tag(bytes(view[walked:walked + size])) == 0x65:
                    view.release()
                    del buffer[:walked + size]
                    return
                walked += size
        except ber.Incomplete:
            pass
        finally:
            view.release()  # the buffer grows below: no view of it may be held
        chunk = sock.recv(262144)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buffer += chunk


def client(port: int, tls: bool, cafile: Path, queries: list[bytes], offset: int, deadline: float,
           latencies: list[float], fastest: dict[int, float] | None = None) -> None:
    """Search until `deadline`, one request in flight; each latency into `latencies`, and each query's
    fastest answer so far into `fastest` (by its index in `queries`) if given."""
    sock, buffer = open_connection(port, tls, cafile)
    index = offset
    try:
        while time.perf_counter() < deadline:
            which = index % len(queries)
            index += 1
            started = time.perf_counter()
            sock.sendall(queries[which])
            read_answer(sock, buffer)
            latency = time.perf_counter() - started
            latencies.append(latency)
            if fastest is not None and latency < fastest.get(which, latency + 1):
                fastest[which] = latency
    finally:
        sock.close()


def connect_per_search(port: int, queries: list[bytes], seconds: float) -> float:
    """What many phones do: connect, bind, search, unbind, close; searches per second, sequential, plain."""
    done, index = 0, 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        sock, buffer = open_connection(port, False, Path("/dev/null"))
        sock.sendall(queries[index % len(queries)])
        index += 1
        read_answer(sock, buffer)
        sock.sendall(w.unbind(3))
        sock.close()
        done += 1
    return done / (time.perf_counter() - started)


def run_load(port: int, tls: bool, cafile: Path, queries: list[bytes], in_flight: int, seconds: float,
             fastest: dict[int, float] | None = None, start: int = 0) -> dict:
    """`in_flight` clients searching for `seconds`, the first from query `start` on, the others 997 queries apart."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    threads = [threading.Thread(target=client, args=(port, tls, cafile, queries, start + i * 997, deadline, latencies, fastest))
               for i in range(in_flight)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rate": len(latencies) / elapsed,
        "median_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def check_same_answers(project_port: int, reference_port: int, cafile: Path, queries: list[bytes]) -> float:
    """Fraction of the queries both servers answer with the same number of entries (a sanity check)."""
    same, total_entries = 0, 0
    for query in queries:
        counts = []
        for port in (project_port, reference_port):
            sock, buffer = open_connection(port, False, cafile)
            sock.sendall(query)
            n = 0
            while op_tag(read_message(sock, buffer)) != 0x65:
                n += 1
            sock.close()
            counts.append(n)
        same += counts[0] == counts[1]
        total_entries += counts[0]
    print(f"{total_entries / len(queries):.1f} entries per search on average")
    return same / len(queries)


# -- main -------------------------------------------------------------------------------------


def fmt(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}" if unit == "/s" else f"{value:.2f} {unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--big", type=int, default=100_000)
    args = parser.parse_args()

    rows = make_contacts(args.contacts)
    queries = make_queries(rows, 5000)
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ldap-bench-") as tmp:
        tmp = Path(tmp)
        project, project_port = start_project(tmp / "project", rows)
        reference = floor = None
        try:
            cert = project.cert_path
            key = cert.with_suffix(".key")
            reference, reference_port = start_reference(tmp / "slapd", rows, cert, key)
            for port in (project_port, reference_port):  # warm up: index builds, caches
                run_load(port, False, cert, queries, 1, 1.0)
            agreement = check_same_answers(project_port, reference_port, cert, queries[:200])
            print(f"same number of entries as slapd for {agreement:.0%} of 200 queries")
            modes = [(False, 1), (False, 8), (True, 1), (True, 8)]
            measured: dict[tuple, dict[str, list[dict]]] = {m: {"project": [], "reference": []} for m in modes}
            for run in range(args.runs):
                for tls, in_flight in modes:
                    order = [("project", project_port), ("reference", reference_port)]
                    for name, port in (order if run % 2 == 0 else order[::-1]):
                        measured[(tls, in_flight)][name].append(run_load(port, tls, cert, queries, in_flight, args.seconds))
            ours = statistics.median(connect_per_search(project_port, queries, args.seconds / 2) for _ in range(args.runs))
            theirs = statistics.median(connect_per_search(reference_port, queries, args.seconds / 2) for _ in range(args.runs))
            results.append({"figure": "searches per second, a connection and bind per search", "project": fmt(ours, "/s"),
                            "reference": fmt(theirs, "/s"), "ratio": f"{ours / theirs:.2f}", "unit": "/s", "spread": []})
            floor, floor_port = start_python_floor()
            for kind in MIX:  # where the time goes: each kind alone, sequential, plain
                # a row of one kind is what a change to its lookup is judged by: many short pairs of runs, each
                # pair's ratio taken (see the module's docstring), and more queries than a run asks
                only = make_queries(rows, KIND_QUERIES, seed=5, only=kind)
                slot = KIND_QUERIES // (KIND_PAIRS + 1)
                for port in (project_port, reference_port):  # a warm-up, from the first slot
                    run_load(port, False, cert, only, 1, KIND_RUN)
                rates: dict[int, list[float]] = {project_port: [], reference_port: [], floor_port: []}
                for pair in range(KIND_PAIRS):  # which goes first alternates too
                    start = (pair + 1) * slot
                    for port in ((project_port, reference_port) if pair % 2 == 0 else (reference_port, project_port)):
                        rates[port].append(run_load(port, False, cert, only, 1, KIND_RUN, start=start)["rate"])
                    if kind == "number":  # the floor beside each pair: its ratio to slapd's run is as steady as theirs
                        rates[floor_port].append(run_load(floor_port, False, cert, only, 1, KIND_RUN, start=start)["rate"])
                ours, theirs = statistics.median(rates[project_port]), statistics.median(rates[reference_port])
                ratio = statistics.median(a / b for a, b in zip(rates[project_port], rates[reference_port], strict=True))
                results.append({"figure": f"searches per second, {kind} only, plain, sequential (ratio: the median "
                                          f"of {KIND_PAIRS} pairs' ratios)", "project": fmt(ours, "/s"),
                                "reference": fmt(theirs, "/s"), "ratio": f"{ratio:.2f}", "unit": "/s",
                                "spread": [round(min(rates[project_port])), round(max(rates[project_port]))]})
                if kind == "number":
                    ratio = statistics.median(a / b for a, b in zip(rates[floor_port], rates[reference_port], strict=True))
                    results.append({"figure": "searches per second, number only: a bare CPython server answering every search "
                                              "with a canned empty SearchResultDone (the most any Python server could reach)",
                                    "project": fmt(statistics.median(rates[floor_port]), "/s"), "reference": fmt(theirs, "/s"),
                                    "ratio": f"{ratio:.2f}", "unit": "/s",
                                    "spread": [round(min(rates[floor_port])), round(max(rates[floor_port]))]})
            for (tls, in_flight), by_server in measured.items():
                label = f"{'StartTLS' if tls else 'plain'}, {'sequential' if in_flight == 1 else f'{in_flight} in flight'}"
                for key_name, unit, figure in (("rate", "/s", "searches per second"), ("median_ms", "ms", "median latency"),
                                               ("p99_ms", "ms", "p99 latency")):
                    ours = statistics.median(r[key_name] for r in by_server["project"])
                    theirs = statistics.median(r[key_name] for r in by_server["reference"])
                    values = [r[key_name] for r in by_server["project"]]
                    spread = [round(min(values), 2), round(max(values), 2)]
                    results.append({"figure": f"{figure}, {label} ({args.contacts:,} contacts)", "project": fmt(ours, unit),
                                    "reference": fmt(theirs, unit), "ratio": f"{ours / theirs:.2f}", "unit": unit, "spread": spread})
        finally:
            stop(project.proc)
            for process in (reference, floor):
                if process is not None:
                    stop(process)
        if args.big:
            big_rows = make_contacts(args.big, seed=3)
            big_queries = make_queries(big_rows, 5000, seed=4)
            project, project_port = start_project(tmp / "project-big", big_rows)
            reference = None
            try:
                cert = project.cert_path
                reference, reference_port = start_reference(tmp / "slapd-big", big_rows, cert, cert.with_suffix(".key"))
                for port in (project_port, reference_port):
                    run_load(port, False, project.cert_path, big_queries, 1, 2.0)
                # each query's fastest answer over the runs: the server's own cost, without the moments another process
                # held the CPU (on a shared 2-core machine those set the wall-clock p99 above)
                fastest: dict[str, dict[int, float]] = {"project": {}, "reference": {}}
                ours = [run_load(project_port, False, project.cert_path, big_queries, 1, args.seconds, fastest["project"])
                        for _ in range(args.runs)]
                theirs = [run_load(reference_port, False, project.cert_path, big_queries, 1, args.seconds,
                                   fastest["reference"]) for _ in range(args.runs)]
                for key_name, unit, figure in (("rate", "/s", "searches per second"), ("p99_ms", "ms", "p99 latency")):
                    a = statistics.median(r[key_name] for r in ours)
                    b = statistics.median(r[key_name] for r in theirs)
                    results.append({"figure": f"{figure}, plain, sequential ({args.big:,} contacts)", "project": fmt(a, unit),
                                    "reference": fmt(b, unit), "ratio": f"{a / b:.2f}", "unit": unit,
                                    "spread": [round(min(r[key_name] for r in ours), 2), round(max(r[key_name] for r in ours), 2)]})
                a, b = (sorted(fastest[name].values()) for name in ("project", "reference"))
                a, b = a[int(len(a) * 0.99)] * 1000, b[int(len(b) * 0.99)] * 1000
                results.append({"figure": f"p99 over the queries of each one's fastest answer in the runs, plain, sequential "
                                          f"({args.big:,} contacts)", "project": fmt(a, "ms"), "reference": fmt(b, "ms"),
                                "ratio": f"{a / b:.2f}", "unit": "ms", "spread": []})
                if PINNED:  # the server on a core of its own, its client on the other: no preemption by each other
                    pinned = {}
                    for name, port, pids in (("project", project_port, [project.proc.pid, worker_pid(project)]),
                                             ("reference", reference_port, [reference.pid])):
                        with on_cores(pids):
                            pinned[name] = [run_load(port, False, project.cert_path, big_queries, 1, args.seconds)
                                            for _ in range(args.runs)]
                    for key_name, unit, figure in (("rate", "/s", "searches per second"), ("p99_ms", "ms", "p99 latency")):
                        a, b = (statistics.median(r[key_name] for r in pinned[name]) for name in ("project", "reference"))
                        results.append({"figure": f"{figure}, plain, sequential ({args.big:,} contacts), server and client "
                                                  f"on a core each", "project": fmt(a, unit), "reference": fmt(b, unit),
                                        "ratio": f"{a / b:.2f}", "unit": unit,
                                        "spread": [round(min(r[key_name] for r in pinned["project"]), 2),
                                                   round(max(r[key_name] for r in pinned["project"]), 2)]})
            finally:
                stop(project.proc)
                if reference is not None:
                    stop(reference)
    write_results("ldap", results)


if __name__ == "__main__":
    main()
