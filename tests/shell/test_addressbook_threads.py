"""The address book used at once by greenlets whose reads and writes run in the pool's threads, as in the worker
(gevent's monkey-patching on: a subprocess). One connection behind a lock that was gevent's left requests
without an answer for good (2 of 3 concurrent lists of the book, in a review); each thread has its own now."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROUNDS = 300

SCRIPT = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import sys, time, gevent
    sys.path.insert(0, sys.argv[2])
    from greenservers.addressbook import AddressBook
    book = AddressBook(sys.argv[1])
    for n in range(200):
        book.add({"first_name": "Ann", "last_name": f"Name{n}", "work": f"+49 30 {1000000 + n}"})
    first = book.find("", 0, 1)[0][0].id

    def lists(): return len(book.find("", 0, 50)[0])
    def searches(): return len(book.find("Name1", 0, 20)[0])
    def changes(): return book.change(first, {"mobile": f"+49 171 {time.monotonic_ns() % 10**7}"}).id
    def gets(): return book.get(first).id

    for round in range(int(sys.argv[3])):
        greenlets = [gevent.spawn(work) for work in (lists, lists, searches, changes, gets, lists)]
        gevent.joinall(greenlets, timeout=10)
        if not all(g.ready() for g in greenlets):
            print(f"round {round}: {sum(not g.ready() for g in greenlets)} of {len(greenlets)} without an answer in 10 s")
            sys.exit(1)
        for g in greenlets:
            g.get()
    print("all answered")
""")


def test_concurrent_requests_in_the_pool_s_threads_are_all_answered(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "book.sqlite3"), str(repo), str(ROUNDS)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "all answered" in done.stdout, done.stdout + done.stderr[-2000:]
