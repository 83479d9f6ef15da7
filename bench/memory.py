#!/usr/bin/env python3
"""Resident memory of the greenservers worker: idle, and with 100,000 contacts in the address book.

    python bench/memory.py [--contacts 100000]

Two fresh starts with every service on loopback (bench/services.py):
1. a small address book: RSS right after the start, and after one request
   to each service (the first requests load templates and build caches);
2. CONTACTS contacts imported through greenservers.addressbook.AddressBook
   into the data dir before the start: RSS after the start, after the first
   search (which waits for the directory if it is still being built), after
   one contact was changed by another process (as the CLI would), after
   1,000 single changes through the web API (one after the other, as an
   administrator's script would), after a few phone-like searches of every
   kind, and after half as many contacts again were imported through the web
   API (until the directory's sensors say it has applied them: the request,
   then the merge into the directory). While the directory is built, while the changes stream in
   and while the import runs, a client of every other service measures its latency.
   The time from a change (through the API, and by another process) to its
   visibility over LDAP is measured with searches repeated until the change
   shows (median and maximum of CHANGES_TIMED changes).
RSS is VmRSS of the worker process (/proc/PID/status). Results: bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import http.client
import io
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import services  # noqa: E402
from common import RESULTS, machine  # noqa: E402

from greenservers.passwords import hash_password  # noqa: E402

ADMIN_PASSWORD = "bench admin password"

SYLLABLES = ["an", "ber", "chri", "da", "el", "fen", "gus", "han", "ing", "jo", "kal", "lin", "mar", "nor", "ol", "pet",
             "ras", "sch", "tor", "ul", "ven", "wal", "xa", "yo", "zim", "mann", "son", "er", "ke", "ti"]
SEARCHES = ["(|(cn=Jo*)(sn=Jo*))", "(|(cn=*mann*)(sn=*mann*))", "(|(cn=*ber*)(sn=*ber*))", "(sn=Schmitt)",
            "(|(telephoneNumber=+4930 1004711)(mobile=+4930 1004711))", "(|(cn=Ma*)(sn=Ma*))", "(displayName=*son*)",
            "(|(telephoneNumber=*4711)(mobile=*4711))"]
OTHERS = ("http", "snmp", "tftp", "ntp")  # probed while the directory of a big address book is built
SINGLE_CHANGES = 1000
IDLE_PROBE = 3.0  # seconds
CHANGES_TIMED = 10
MERGE_CHANGE_EVERY = 0.1  # seconds between two changes timed while an import is merged


def contacts_csv(count: int, seed: int = 1) -> str:
    rng = random.Random(seed)

    def name(parts: int) -> str:
        return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()

    firsts = [name(2) for _ in range(300)]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["first_name", "last_name", "company", "work", "mobile", "home", "email"])
    for i in range(count):
        last = name(rng.randint(2, 3))
        writer.writerow([rng.choice(firsts), last, f"{name(2)} GmbH" if i % 5 == 0 else "", f"+49 30 {1000000 + i}",
                         f"+49 171 {2000000 + i}" if i % 3 == 0 else "", f"+49 89 {3000000 + i}" if i % 7 == 0 else "",
                         f"{last.lower()}{i}@example.org" if i % 4 == 0 else ""])
    return out.getvalue()


def ldap_search(port: int, filters: list[str]) -> int:
    """Bind, run each search (size limit 50, like a phone), return the entries seen."""
    probe = services.LdapProbe(port)
    try:
        probe._connect()
        return sum(count_entries(probe, message_id, text) for message_id, text in enumerate(filters, 2))
    finally:
        probe.close()


def count_entries(probe, message_id: int, text: str) -> int:
    """One search on a bound LdapProbe: how many entries it returned."""
    entries = 0
    probe.sock.settimeout(120)  # the first search of a big book waits for the directory
    probe.sock.sendall(services.ldap_wire.search(message_id, text, attributes=["cn", "telephoneNumber"], size_limit=50))
    while True:
        total = None
        with contextlib.suppress(services.ber.Incomplete):
            total = services.ber.frame_length(probe.buffer)
        if total is not None and len(probe.buffer) >= total:
            message, probe.buffer = probe.buffer[:total], probe.buffer[total:]
            tag = services.ldap_wire.parse_responses(message)[0].tag
            if tag == 0x64:
                entries += 1
            if tag == 0x65:
                return entries
            continue
        chunk = probe.sock.recv(65536)
        if not chunk:
            raise RuntimeError("LDAP connection closed")
        probe.buffer += chunk


def wait_for_ldap(server, filter_text: str, timeout: float = 300.0) -> None:
    """Search until `filter_text` finds an entry (the directory of a replaced book is indexed anew)."""
    probe = services.LdapProbe(server.ports["ldap"])
    try:
        probe._connect()
        deadline = time.monotonic() + timeout
        message_id = 2
        while count_entries(probe, message_id, filter_text) == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"LDAP did not find {filter_text} in {timeout:.0f} s")
            message_id += 1
            time.sleep(0.05)  # a poll: the index is built meanwhile
    finally:
        probe.close()


class Api:
    """The address book's JSON API over one keep-alive HTTP connection."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode(),
                        "Content-Type": "application/json"}
        self.idle_since = time.monotonic()

    # GETs whose keep-alive connection the worker had closed (each retried once on a new one): the seconds it had
    # been idle. The worker closes one idle for its keep-alive timeout (15 s); a drop after less would be its fault.
    dropped: list[float] = []

    def __call__(self, method: str, path: str, body: dict | None = None):
        idle = time.monotonic() - self.idle_since
        try:
            self.connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=self.headers)
            response = self.connection.getresponse()
        except http.client.RemoteDisconnected:
            if method != "GET":
                raise
            # as browsers and urllib3 do for an idempotent request on a reused connection; counted, not hidden
            Api.dropped.append(round(idle, 1))
            self.connection.close()
            self.connection.request(method, path, headers=self.headers)
            response = self.connection.getresponse()
        data = response.read()
        self.idle_since = time.monotonic()
        if response.status == 429:  # a connection's pace (200 requests a second): as a client should, wait and reconnect
            self.connection.close()
            time.sleep(float(response.getheader("Retry-After", "1")))
            return self(method, path, body)
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
        return json.loads(data)

    def close(self) -> None:
        self.connection.close()


def time_to_visible(server, change) -> float:
    """Seconds from the start of `change(last_name)` until an LDAP search finds that last name."""
    probe = services.LdapProbe(server.ports["ldap"])
    try:
        probe._connect()
        name = f"Visible{random.randrange(10**9)}"
        started = time.monotonic()
        change(name)
        message_id = 2
        while count_entries(probe, message_id, f"(sn={name})") == 0:
            message_id += 1
            if time.monotonic() - started > 30:
                raise RuntimeError("a change did not reach LDAP in 30 s")
        return time.monotonic() - started
    finally:
        probe.close()


def visibility_row(server, state: str, change) -> dict:
    times = sorted(time_to_visible(server, change) for _ in range(CHANGES_TIMED))
    return {"state": state, "rss_mb": settle_rss(server.worker_pid, 0.2), "visible_median_ms": round(statistics.median(times) * 1000, 1),
            "visible_max_ms": round(times[-1] * 1000, 1)}


def api_changes(server, count: int) -> None:
    """`count` single changes through the web API, one after the other: each a contact's mobile number."""
    api = Api(server.ports["http"])
    try:
        ids = [c["id"] for c in api("GET", f"/api/addressbook?limit={count}")]
        for n in range(count):
            api("PUT", f"/api/addressbook/{ids[n % len(ids)]}", {"mobile": f"+49 171 {9000000 + n}"})
    finally:
        api.close()


def while_probing(server, state: str, action) -> dict:
    """`action()`, timed, while a client of every other service measures its latency; the row of `state`."""
    during: dict = {}
    done = threading.Event()
    probing = threading.Thread(target=lambda: during.update(services.run_probes(server, 600.0, services=OTHERS, until=done)))
    probing.start()
    started = time.monotonic()
    try:
        action()
    finally:
        seconds = time.monotonic() - started
        done.set()
        probing.join(60)
    return {"state": state, "rss_mb": settle_rss(server.worker_pid), "seconds": round(seconds, 2), "other_services_meanwhile": during}


def import_until_applied(server, csv_path: Path, count: int, total: int, change=None) -> list[float]:
    """An import through the web API, then until the LDAP directory holds `total` contacts and applies none (its
    sensors, read over the API): the row covers the request (stored in the worker's child process) and the merge
    into the directory that follows it. Meanwhile, every MERGE_CHANGE_EVERY seconds, `change(last_name)` as an
    administrator editing a contact would: the seconds until LDAP found each."""
    web_import(server, csv_path, count)
    api = Api(server.ports["http"])
    visible: list[float] = []
    try:
        deadline = time.monotonic() + 300
        while True:
            sensors = {s["name"]: s["value"] for s in api("GET", "/api/sensors")["sensors"]}
            if sensors["ldap_directory_entries"] == total and sensors["ldap_directory_pending"] == 0:
                return visible
            if time.monotonic() > deadline:
                raise RuntimeError(f"the LDAP directory did not apply the import in 300 s: {sensors}")
            if change is not None:
                visible.append(time_to_visible(server, change))
            time.sleep(MERGE_CHANGE_EVERY)  # a poll: the merge goes on meanwhile
    finally:
        api.close()


def web_import(server, csv_path: Path, count: int) -> None:
    """`count` more contacts through the JSON API with curl, as an administrator's script would."""
    done = subprocess.run(["curl", "-sS", "--fail", "--max-time", "120", "--user", f"admin:{ADMIN_PASSWORD}",
                           "-H", "Content-Type: text/csv",
                           "--data-binary", f"@{csv_path}", f"http://127.0.0.1:{server.ports['http']}/api/addressbook/import"],
                          capture_output=True, text=True)
    if done.returncode != 0 or f'"imported":{count}' not in done.stdout.replace(" ", ""):
        raise RuntimeError(f"web import failed: {done.stdout} {done.stderr}")


def first_search(server) -> None:
    """One LDAP search (which may have to build the directory first)."""
    ldap_search(server.ports["ldap"], SEARCHES[:1])


def change_in_another_process(book_path: Path, last_name: str) -> None:
    """From this process, as the CLI would: the service notices it by polling the book."""
    book = services.AddressBook(book_path)
    try:
        book.change(book.after(0, 1)[0].id, {"last_name": last_name})
    finally:
        book.close()


def first_contact_id(server) -> int:
    api = Api(server.ports["http"])
    try:
        return api("GET", "/api/addressbook?limit=1")[0]["id"]
    finally:
        api.close()


def change_through_the_api(server, contact_id: int, last_name: str) -> None:
    """One PUT on a new connection (the contact looked up before: the time is the change's, not a listing's)."""
    api = Api(server.ports["http"])
    try:
        api("PUT", f"/api/addressbook/{contact_id}", {"last_name": last_name})
    finally:
        api.close()


def settle_rss(pid: int, seconds: float = 1.0) -> float:
    time.sleep(seconds)  # let the worker finish what it was doing (not a readiness wait: the service is up)
    return round(services.rss_mb(pid), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = services.start_greenservers(Path(tmp) / "idle")
        try:
            pid = server.worker_pid
            rows.append({"state": "idle, every service on, just started", "rss_mb": settle_rss(pid)})
            services.run_probes(server, 1.0, interval=0.2)
            rows.append({"state": "idle, after a few requests to each service", "rss_mb": settle_rss(pid)})
        finally:
            server.stop()

        print(f"importing {args.contacts:,} contacts ...", flush=True)
        started = time.monotonic()
        server = services.start_greenservers(Path(tmp) / "big", contacts_csv=contacts_csv(args.contacts), timeout=300,
                                             extra={"admin_password_hash": hash_password(ADMIN_PASSWORD)})
        imported_in = time.monotonic() - started
        try:
            pid = server.worker_pid
            rows.append({"state": f"{args.contacts:,} contacts, just started", "rss_mb": settle_rss(pid)})
            # while the directory is built off the event loop, the other services keep answering: measured
            rows.append(while_probing(server, f"{args.contacts:,} contacts, after the first LDAP search (directory built)",
                                      lambda: first_search(server)))
            rows.append(while_probing(server, f"{args.contacts:,} contacts, idle for {IDLE_PROBE:.0f} s (the other services' "
                                              "latency on this machine without LDAP work)", lambda: time.sleep(IDLE_PROBE)))
            book_path = Path(tmp) / "big" / "data" / "addressbook.sqlite3"
            rows.append(visibility_row(server, "a change by another process (as the CLI), until LDAP finds it",
                                       partial(change_in_another_process, book_path)))
            first = first_contact_id(server)
            rows.append(visibility_row(server, "a change through the web API, until LDAP finds it",
                                       partial(change_through_the_api, server, first)))
            rows.append(while_probing(server, f"{args.contacts:,} contacts, after {SINGLE_CHANGES:,} single changes through the web API",
                                      lambda: api_changes(server, SINGLE_CHANGES)))
            found = ldap_search(server.ports["ldap"], SEARCHES * 2)
            rows.append({"state": f"{args.contacts:,} contacts, after {len(SEARCHES) * 2} searches of every kind (indexes built)",
                         "rss_mb": settle_rss(pid), "entries_returned": found})
            more = Path(tmp) / "more.csv"
            more.write_text(contacts_csv(args.contacts // 2, seed=2), encoding="utf-8")
            during_merge: list[float] = []
            rows.append(while_probing(server, f"{args.contacts // 2:,} more contacts imported through the web API, until "
                                              "the LDAP directory has applied them (a change timed every 0.1 s meanwhile)",
                                      lambda: during_merge.extend(import_until_applied(
                                          server, more, args.contacts // 2, args.contacts + args.contacts // 2,
                                          partial(change_through_the_api, server, first)))))
            rows[-1]["keepalive_dropped"] = len(Api.dropped)
            rows[-1]["keepalive_dropped_idle_s"] = Api.dropped
            during_merge.sort()
            rows.append({"state": f"a change through the web API while those {args.contacts // 2:,} are merged, until LDAP "
                                  f"finds it ({len(during_merge)} changes)", "rss_mb": rows[-1]["rss_mb"],
                         "visible_median_ms": round(statistics.median(during_merge) * 1000, 1),
                         "visible_max_ms": round(during_merge[-1] * 1000, 1)})
            rows.append(visibility_row(server, f"{args.contacts + args.contacts // 2:,} contacts: a change through the web API, "
                                               "until LDAP finds it", partial(change_through_the_api, server, first)))
        finally:
            server.stop()
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "contacts": args.contacts,
              "import_and_start_s": round(imported_in, 1), "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(result, indent=2))
    print(f"\nworker resident memory — {result['date']} — {result['machine']}")
    for row in rows:
        extra = f"  (took {row['seconds']} s)" if "seconds" in row else ""
        if "visible_median_ms" in row:
            extra = f"  visible after {row['visible_median_ms']} ms (median), {row['visible_max_ms']} ms at most"
        print(f"{row['state']:80} {row['rss_mb']:8.1f} MiB{extra}")
        if row.get("keepalive_dropped"):
            idle = row["keepalive_dropped_idle_s"]
            print(f"    the API's keep-alive connection closed without an answer {row['keepalive_dropped']} time(s) (GET retried), "
                  f"after {min(idle):g}-{max(idle):g} s idle (the worker closes a connection idle for 15 s)")
        for name, probe in row.get("other_services_meanwhile", {}).items():
            print(f"    meanwhile {name:5} p99 {probe['p99_ms']:7.1f} ms, max {probe['max_ms']} ms, lost {probe['lost']}")
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(None)
    sys.exit(main())
