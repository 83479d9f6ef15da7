"""The admin address-book search at 100,000 contacts: the search index (addressbook/search.py) beside the scan it
replaced (every contact read from SQLite and matched in Python with `matcher`), in one run, in this process.

    .venv/bin/python bench/admin_search.py [--contacts N] [--runs N]

Prints, per query, the median time of each and their ratio, and how long the first search after the import
took (it folds the imported contacts into the index). Not part of bench/run: a one-off figure.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from greenservers.addressbook import AddressBook, matcher  # noqa: E402

FIRST = ["Anna", "Bernd", "Clara", "Dieter", "Eva", "Frank", "Greta", "Hans", "Ines", "Jonas", "Karl", "Lena", "Jürgen", "Zoë"]
LAST = ["Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz", "Hoffmann", "Koch"]
QUERIES = ["e", "ann", "müller4711", "zzz", "030 123", "4711", "company 42"]


def scan(book: AddressBook, q: str, limit: int) -> tuple[list, int]:
    """The search as it was: every contact read a page at a time and matched in Python."""
    matches, found, total = matcher(q), [], 0
    for contact in book.each():
        if matches(contact):
            if len(found) < limit:
                found.append(contact)
            total += 1
    return found, total


def timed(function, runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(7)
    lines = ["first_name,last_name,company,work,mobile,extension,email"]
    lines += [f"{rng.choice(FIRST)},{rng.choice(LAST)}{i},Company {i % 500},+49 30 {rng.randrange(10 ** 7):07d},"
              f"0171 {rng.randrange(10 ** 7):07d},{i % 10000},u{i}@example.com" for i in range(args.contacts)]
    with tempfile.TemporaryDirectory() as directory:
        book = AddressBook(Path(directory) / "addressbook.sqlite3")
        book.import_csv("\n".join(lines) + "\n")
        started = time.perf_counter()
        book.find("anna", 0, 1000)
        print(f"{args.contacts} contacts; the first search after the import (folds them into the index): "
              f"{(time.perf_counter() - started) * 1000:.0f} ms")
        print(f"{'query':14} {'matches':>8} {'index ms':>9} {'scan ms':>9} {'scan/index':>10}")
        for q in QUERIES:
            indexed, (found, total) = timed(lambda q=q: book.find(q, 0, 1000), args.runs)
            scanned, reference = timed(lambda q=q: scan(book, q, 1000), args.runs)
            assert (found, total) == reference, q
            print(f"{q!r:14} {total:8} {indexed * 1000:9.1f} {scanned * 1000:9.1f} {scanned / indexed:9.0f}x")
        book.close()


if __name__ == "__main__":
    main()
