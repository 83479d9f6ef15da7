"""The LDAP directory's follower: keeps the in-memory Directory of one address book current, on the event loop.

The directory follows the address book (`DirectoryFollower`, one greenlet per
book): it is built once, a slice of work at a time between turns of the event
loop, then changed a contact at a time as the book's change log says
(greenservers/addressbook/store.py). A change this process commits wakes it at
once; one by another process (the CLI) is noticed by polling the book every
POLL seconds, and by a search (at most one look every FRESH seconds). A search
waits until a few changes noticed are applied (a phone finds the contact it
was just given), never for an import. A large backlog (an import) is merged in
slices, and a few changes at a time are applied between them, those of the
import's own contacts too (taken out of the merge; those read from the log
together with the import, before it). Only a new base
DN, a log pruned past what the follower read, or a change of more contacts than the
directory holds (an import replacing the book) builds a new directory, which replaces the old one
when it is complete; the old one is freed in steps once no search holds it
(`retire`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice

import gevent
from gevent.event import Event

from ..addressbook import AddressBook, ChangeReader
from ..process.offload import freeze_the_built, no_full_collections, run_off_loop
from ..proto import ldap as proto
from .loop import run_in_turns, serve_ready_then_continue

DISMANTLE_PAUSE = 0.001  # seconds between the steps that free a replaced directory
DISMANTLE_WAIT = 1.0  # seconds between looks at whether a search still reads a replaced directory
DISMANTLE_PATIENCE = 120.0  # seconds it waits for them (a paged search left unread is given up after 60 s)
POLL = 0.25  # seconds between looks for changes another process committed (a search looks first: FRESH)
FRESH = 0.005  # a search looks first too, if the last look is older than this (a look: about 6 us and 3 system calls)
CATCH_UP = 0.1  # seconds a search waits at a time for a change it noticed to be applied (and at most, for an import's)
APPLIED_WITHIN = 2.0  # seconds it waits at most for a few changes (milliseconds of work, unless the machine is very busy)
APPLY_SLICE = 0.001  # seconds of directory changes between two turns of the event loop
READ_PAGE = 64  # contacts read from the book per query: a read of 250 held the loop 2.5-3 ms, past APPLY_SLICE
# (a read on the loop waits for the GIL at each row while a change's thread runs: gevent's monitor caught reads of
# the log and of contacts holding the loop 4-9 ms now and then; off the loop, see bench/RESULTS.md, they cost more)
LOG_PAGE = 1000  # changes read from the log per query (about a millisecond)
REBUILD_SHARE = 1.0  # more changed contacts than this share of the directory (an import replacing the book: its old
# and new ids): built anew rather than changed. At 0.5, an import of half the book and one edit made meanwhile built a
# second directory beside the first (221 MiB with 150,000 contacts) and hid the edit for the 22 s of the build
MEANWHILE = 64  # changes applied between a merge's slices; more (another import) wait for it to end
TAKEN_MAX = 1024  # of a merge's own contacts changed meanwhile, those taken out of it (applied at once); the rest wait for
# its end: the step that puts the merge's ids in order takes 1-3 us for each one taken (2,000: 7 ms with the loop held)


def _pages(ids: Iterable[int]) -> Iterator[list[int]]:
    """`ids` READ_PAGE at a time."""
    each = iter(ids)
    while page := list(islice(each, READ_PAGE)):
        yield page


def _deleted_steps(directory: proto.Directory, ids: Iterable[int], present: dict[int, None]) -> Iterator[None]:
    """Steps that delete from the directory the contacts of `ids` the book no longer has (not `present`):
    a step per id, so that looking through an import's ids is cut in slices too."""
    for id_ in ids:
        if id_ not in present:
            directory.delete(id_)
        yield


def _logged_again(changed: list[int], ids: dict[int, None], again: dict[int, None]) -> None:
    """Into `again` the ids of a page of the log (`changed`) that come twice in it or are in `ids` (read before)."""
    seen: dict[int, None] = {}
    for id_ in changed:
        if id_ in ids or id_ in seen:
            again[id_] = None
        seen[id_] = None


class DirectoryFollower:
    """Keeps the Directory of one address book current (see the module's docstring): `current(base)`."""

    def __init__(self, book: AddressBook, base: str, log, report: Callable[[DirectoryFollower, int, int], None] | None = None):
        self.book, self.base, self.log = book, base, log
        self._report = report or (lambda follower, entries, pending: None)  # (entries, pending): the shell's sensors
        self.directory: proto.Directory | None = None
        self.applied = 0  # contacts added, changed or deleted since the directory was built
        self.catch_ups = 0  # times a search waited for a change it noticed to be applied
        self._built = Event()
        self._wake = Event()
        self._caught_up = Event()
        self._reader: ChangeReader | None = None
        self._looked = 0.0
        self._noticed = False
        self._large = False  # the change being read or applied is large (an import): searches do not wait for it
        self._seq = 0  # the last change of the book's log applied
        self._hub = gevent.get_hub()
        book.subscribe(self._notified)
        self._greenlet = gevent.spawn(self._run)

    def current(self, base: str) -> proto.Directory | None:
        """The directory of `base` if it is built, else None (then `wait()` for it).

        A change committed since the last look (by this process or another) is
        applied first (`_wait_applied`)."""
        directory = self.directory
        if directory is not None and directory.base == base:
            now = time.monotonic()
            if now - self._looked >= FRESH and self._reader is not None:
                self._looked = now
                if self._reader.changed():
                    self._noticed = True
                    self._caught_up.clear()
                    self._wake.set()
            if not self._caught_up.is_set():  # noticed here, or by the follower, which is applying it
                self._wait_applied()
            return directory
        if base != self.base:
            self.base = base
            self._built.clear()
            self._wake.set()
        return None

    def _wait_applied(self) -> None:
        """Until a change noticed is applied, so a phone finds the contact it was just given: a few changes
        APPLIED_WITHIN at most (milliseconds of work, but a busy machine once stretched them past CATCH_UP);
        a large change (an import: seconds of merging) not at all once the follower knows it is large, and
        CATCH_UP at most before (it reads the first page of the log)."""
        if self._large:
            return
        self.catch_ups += 1
        deadline = time.monotonic() + APPLIED_WITHIN
        while not self._caught_up.wait(CATCH_UP):
            if self._large or time.monotonic() >= deadline:
                return

    def wait(self, base: str) -> proto.Directory:
        while True:
            directory = self.current(base)
            if directory is not None:
                return directory
            self._built.wait()

    def _notified(self) -> None:
        """The book committed a change (called in the thread that made it)."""
        self._hub.loop.run_callback_threadsafe(self._wake.set)

    def _run(self) -> None:
        reader = self._reader = self.book.reader()
        try:
            while True:
                try:
                    self._follow(reader)
                except Exception:
                    self._large = True  # no search waits for what a failed follower will not apply soon
                    self.log.exception("could not index the address book; trying again")
                    gevent.sleep(1.0)
        finally:
            reader.close()

    def _follow(self, reader: ChangeReader) -> None:
        """Build a directory, then apply changes until it must be built again."""
        base = self.base
        self._large = True  # a build: searches answer from the directory they have meanwhile
        reader.changed()
        self._seq = reader.last_change()  # changes from here on are applied after the build
        directory = proto.Directory(base)
        self._report(self, len(self.directory or ()), run_off_loop(len, self.book))  # count(*): milliseconds at 100,000
        with no_full_collections():  # a full collection would land in a slice
            run_in_turns(directory.merge_steps(self._each(reader)), APPLY_SLICE)
            old, self.directory, self.applied = self.directory, directory, 0
            if old is not None:
                retire(old)
                del old
            freeze_the_built()
        self._report(self, len(directory), 0)
        self._large = False
        self._caught_up.set()  # what the build read is applied
        self._built.set()
        # a repeating timer wakes it to poll: a wait with a timeout would raise gevent.Timeout into this
        # greenlet each time it ran out (an exception thrown through greenlet's C++ code, 66 times a second)
        poll = self._hub.loop.timer(POLL, POLL)
        poll.start(self._wake.set)
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self.base != directory.base:
                    return
                if not (reader.changed() or self._noticed):
                    self._caught_up.set()
                    continue
                self._caught_up.clear()  # a search meanwhile waits for it too
                self._noticed = False
                held: dict[int, None] = {}
                ids = self._changed_ids(reader, directory, held)
                if ids is None or not self._apply(reader, directory, ids, held):
                    return  # build anew
                self._large = False
                self._caught_up.set()
        finally:
            poll.close()

    def _changed_ids(self, reader: ChangeReader, directory: proto.Directory,
                     held: dict[int, None] | None = None) -> dict[int, None] | None:
        """The ids of the contacts changed since the last change read (which moves on), in the order of
        their changes (keys of a dict of ints: the cyclic collector does not track it, where it scanned a
        list or set of an import's 50,000 ids for milliseconds with the loop held); None when the directory
        must be built anew: the log was pruned past it, or most of the book changed (an import replacing it:
        built anew, then swapped in).

        Into `held`, if given, the ids edited meanwhile if this is an import (an import adds each of its
        contacts once): those the directory holds already, or that the log names twice. The log is read up to
        its end as the read begins: changes committed while a large one is read (an administrator's first
        edit after an import) are applied between its pages (`_applied_early`), not after its last one (50
        pages, 75-115 ms on a busy machine), and are held too."""
        ids: dict[int, None] = {}
        seq, end = self._seq, reader.last_change()
        last = end  # the last change read: the log's end as the read began, or past it once changes are applied early
        early = held is not None  # changes committed meanwhile are applied between pages, until a large batch comes
        while seq < end:
            got = reader.changes_after(seq, LOG_PAGE, through=end)
            if got is None or not got[0]:  # pruned past `seq` (the log has no holes up to `end`)
                self._large = True
                return None
            changed, seq = got
            page = dict.fromkeys(changed)
            if held is not None:
                # ids.keys(), not ids: isdisjoint walks a plain dict whole (2.5 ms a page at 50,000 ids)
                if len(page) < len(changed) or not page.keys().isdisjoint(ids.keys()):
                    _logged_again(changed, ids, held)
                held.update(dict.fromkeys(id_ for id_ in page if id_ in directory.blobs))
            ids.update(page)
            if len(ids) > MEANWHILE:
                self._large = True
            if len(ids) > REBUILD_SHARE * max(len(directory), 1000):
                return None
            serve_ready_then_continue()  # a page of the log read: the loop serves the others before the next
            # a search's look at the book may have seen the commit first (`_noticed`)
            if early and self._large and (self._noticed or reader.changed()):
                self._noticed = False
                applied = self._applied_early(reader, directory, last, held)
                if applied is None:  # many (another import), or a pruned log: the next look reads them
                    early, self._noticed = False, True
                else:
                    last = applied
                    serve_ready_then_continue()
        self._seq = last
        return ids

    def _applied_early(self, reader: ChangeReader, directory: proto.Directory, after: int,
                       held: dict[int, None]) -> int | None:
        """The changes committed after change `after`, while a large one is read, applied now and `held`; None
        (nothing applied) if they are many (another import) or the log was pruned past `after`. The last
        change read."""
        got = reader.changes_after(after, MEANWHILE + 1)
        if got is None or len(got[0]) > MEANWHILE:
            return None
        changed, last = got
        if changed:
            early = dict.fromkeys(changed)
            self._put_or_delete(reader, directory, early)
            held.update(early)
            self.applied += len(early)
        return last

    def _apply(self, reader: ChangeReader, directory: proto.Directory, ids: dict[int, None],
               held: dict[int, None] | None = None) -> bool:
        """The contacts of `ids` as they are in the book now (absent: deleted) into the directory. Many
        (an import) are merged; a few are put one by one: either way the work is in proportion to them.
        Those of a merge's ids `held` (edited while the import's log was read: see `_changed_ids`) are put
        first, so that they do not wait for the merge's end. While a merge
        runs, and while the gram postings are tidied after it (117 ms after an import of 50,000 once the book
        had seen many changes), a few changes are applied between the slices, those of the merge's own
        contacts too (an administrator fixing one just imported sees the fix at once: kept until the merge's
        end, it showed 3.4 s late in an import of 50,000 into 100,000). Such a contact is `taken` from the
        merge: the directory takes it out of what it holds (Directory.merge_steps), and the merge's reading of
        the book skips it (a page read before holds it as it was) and does not delete it.
        False: the directory must be built anew."""
        present: dict[int, None] = {}  # as `ids`: not tracked by the collector
        taken: dict[int, None] = {}
        self._report(self, len(directory), len(ids))
        rebuild, merging = False, len(ids) > max(256, len(directory) // 16)
        held = held if merging and held else {}
        if held:
            # an edit committed while the follower read the import's log: put first, it is found milliseconds
            # later, not at the merge's end (seconds; more on a busy machine)
            self._put_or_delete(reader, directory, held)
            present.update(held)  # gone from the book: deleted just now

        def contacts():
            for page in _pages(i for i in ids if i not in held):
                for contact in reader.contacts(page):
                    if contact.id not in taken:
                        present[contact.id] = None
                        yield contact

        later: dict[int, None] = {}

        def meanwhile() -> None:
            nonlocal rebuild
            if rebuild or not (reader.changed() or self._noticed):
                return
            self._noticed = False
            more = self._changed_ids(reader, directory)
            if more is None:
                rebuild = True
                return
            if len(more) > MEANWHILE:  # another import: after this one
                later.update(more)
                return
            if merging:
                own = dict.fromkeys(i for i in more if i in ids and i not in taken)
                if len(taken) + len(own) > TAKEN_MAX:  # after the merge: a step of it costs more for each one taken
                    later.update(own)
                    more = {i: None for i in more if i not in own}
                else:
                    taken.update(own)
            self._put_or_delete(reader, directory, more)
            self._caught_up.set()

        if merging:
            with no_full_collections():  # a full collection would land in a slice
                run_in_turns(directory.merge_steps(contacts()), APPLY_SLICE, meanwhile)
                run_in_turns(_deleted_steps(directory, (i for i in ids if i not in taken), present), APPLY_SLICE, meanwhile)
                freeze_the_built()
            merging = False
        else:
            self._put_or_delete(reader, directory, ids)
        run_in_turns(directory.tidy_steps(), APPLY_SLICE, meanwhile)
        if later and not rebuild:
            rebuild = not self._apply(reader, directory, later)
        self.applied += len(ids)
        self._report(self, len(directory), 0)
        return not rebuild

    def _put_or_delete(self, reader: ChangeReader, directory: proto.Directory, ids: dict[int, None]) -> None:
        present: dict[int, None] = {}
        for page in _pages(ids):
            contacts = reader.contacts(page)
            present.update(dict.fromkeys(c.id for c in contacts))
            run_in_turns((directory.put(c) for c in contacts), APPLY_SLICE)
        run_in_turns(_deleted_steps(directory, ids, present), APPLY_SLICE)

    @staticmethod
    def _each(reader: ChangeReader):
        after = 0
        while page := reader.after(after, READ_PAGE):
            yield from page
            after = page[-1].id


def retire(old: proto.Directory) -> None:
    """Free a directory a new one replaced, in steps, once no search holds it (`dismantle`). Its paged
    searches are given up at their next page (`Directory.retired`): one asked for now and then kept it, with the
    contacts the new one no longer has, for as long as its client went on."""
    old.retired = True
    holder = [old]
    del old
    gevent.spawn(dismantle, holder)


def dismantle(holder: list) -> None:
    """Free a replaced directory in steps between other greenlets' turns, once nothing else uses it, or after
    DISMANTLE_PATIENCE anyway (what still reads it then finds its contacts gone: freed whole when the last
    reader let go, 100,000 contacts held the loop 17-23 ms)."""
    directory = holder.pop()
    # searches in progress, and paged results a client still reads (given up at its next page), hold it
    for _ in range(int(DISMANTLE_PATIENCE / DISMANTLE_WAIT)):
        if sys.getrefcount(directory) <= 2:  # this name and getrefcount's argument
            break
        gevent.sleep(DISMANTLE_WAIT)
    for _ in directory.dismantle():
        # a timer, not sleep(0): gevent runs 50 ready callbacks before it looks at the clock,
        # and 50 steps of about a millisecond held every timer back by 50 ms
        gevent.sleep(DISMANTLE_PAUSE)
