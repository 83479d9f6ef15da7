"""A search in progress: a resumable cursor whose steps find, sort and encode a slice of work at a time.

`Searches.start` turns a SearchRequest into a `SearchCursor` (or refuses it
with an LdapError at once). The shell runs a cursor a slice at a time
(`run(until)`); its steps yield between units of work of tens of
microseconds, and when the clock passes the search's deadline TimeUp is
thrown into them, so a search ends with the entries found so far and
timeLimitExceeded (RFC 4511 §4.5.1.5). Matching (`find_entries`) takes
candidates from the directory's indexes, or scans it; sorting (`sort_steps`)
sorts slices and merges them; encoding (`encode_entries`) reads a slice's
answers from the directory at once. A search keeps what it found as ids (`Entries`).
Paged results (RFC 2696) are found (and sorted) once and cut into pages.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

from .. import ber
from .codes import (
    ANONYMOUS_REFUSED,
    CONTROLS_TAG,
    INAPPROPRIATE_MATCHING,
    INSUFFICIENT_ACCESS_RIGHTS,
    INVALID_DN_SYNTAX,
    MAX_PAGED_SEARCHES,
    NO_SUCH_ATTRIBUTE,
    NO_SUCH_OBJECT,
    OID_PAGED_RESULTS,
    OID_SORT_REQUEST,
    OID_SORT_RESPONSE,
    SCOPE_BASE,
    SCOPE_ONE,
    SCOPE_SUB,
    SEARCH_RESULT_DONE,
    SEARCH_RESULT_ENTRY,
    SIZE_LIMIT_EXCEEDED,
    SUCCESS,
    SUPPORTED_CONTROLS,
    TIME_LIMIT_EXCEEDED,
    UNAVAILABLE_CRITICAL_EXTENSION,
    UNWILLING_TO_PERFORM,
    LdapError,
)
from .directory import NOT_A_MATCH, Directory, made_from_entries
from .dn import DnError, parse_dn_cached
from .entries import Entry
from .filters import compile_filter, false_without, filter_units
from .messages import (
    _SELECTIONS,
    MAX_BODIES_PER_ENTRY,
    MAX_SELECTIONS,
    Control,
    Searched,
    SearchRequest,
    Selection,
    decode_paged,
    decode_sort,
    encode_control,
    message,
    result,
)
from .schema import ORDERING_RULES, attribute_key


@dataclass
class PagedSearch:
    identity: bytes
    results: array  # ids (Entries)
    entries: Entries
    position: int
    size_exceeded: bool
    sort_control: bytes
    message_id: int


# -- search execution: a resumable cursor, run in slices ---------------------------

MATCH_STEP_UNITS = 64  # filter units checked between two yields (about 10-60 us)
SORT_STEP = 256  # entries partitioned, sorted by one call, or merged between two yields (about 0.3 ms)
EMIT_STEP = 32  # entries encoded between two yields


_DONE: dict[int, bytes] = {}  # SearchResultDone (without a diagnostic) by result code
_NO_ANSWERS: dict[int, bytes] = {}
_ENDED = object()  # what next() gives when a search's steps have ended


class TimeUp(Exception):
    """Thrown into a search's steps (once) when its time limit has passed."""


class SearchCursor:
    """A search in progress, to be run a slice at a time until it is `done`.

    `run(until)` does the search's work until the clock reaches `until` and
    returns what to send: SearchResultEntry bytes as they are found (or, for a
    sorted or paged search, as they are encoded), then the SearchResultDone and
    a `Searched` event. The shell calls it again, one slice per turn, so no
    search holds the event loop longer than a slice plus one unit of work, and
    several searches share it in whatever order the shell chooses (FairShare).

    The work is a generator (`steps`) that yields between small units of work:
    True where the search may stop for its time limit, False where it may not.
    When the clock passes `deadline` (the client's time limit or the server's,
    from the request's arrival), TimeUp is thrown into the steps at the next such
    point, and they finish with the entries found so far and timeLimitExceeded
    (RFC 4511 §4.5.1.5, §4.1.9); a sort not finished by then is given up, and
    the entries go unsorted with sortResult timeLimitExceeded (RFC 2891 §1.2),
    or not at all if the sort control was critical.
    """

    def __init__(self, message_id: int, clock: Callable[[], float], deadline: float):
        self.message_id = message_id
        self.clock = clock
        self.deadline = deadline
        self.done = False
        self.time_limited = False
        self.sent = 0  # entries sent
        self.given = 0  # found ids given to the encoder (a contact deleted since it was found is not sent)
        self.out: list = []  # filled by the steps, emptied by run()
        self.steps: Iterator[bool] = iter(())

    def run(self, until: float) -> list:
        """Work until the clock reaches `until` (at least one step); what to send, in order."""
        steps, clock = self.steps, self.clock
        try:
            while True:
                interruptible = next(steps, _ENDED)  # no StopIteration raised and caught per search
                if interruptible is _ENDED:
                    self._ended()
                    break
                now = clock()
                if interruptible and now >= self.deadline and not self.time_limited:
                    self.time_limited = True
                    steps.throw(TimeUp())
                if now >= until:
                    break
        except StopIteration:  # the steps ended when TimeUp was thrown into them
            self._ended()
        out, self.out = self.out, []
        return out

    def _ended(self) -> None:
        self.done = True
        self.steps = iter(())  # its frame refers to this cursor: no cycle left for the collector

    def refuse(self, code: int, diagnostic: str) -> list:
        """End the search before it ran (the server is too busy): its SearchResultDone."""
        self.steps.close()
        self.done = True
        return [message(self.message_id, result(SEARCH_RESULT_DONE, code, diagnostic)), Searched(0)]


def resolve_scope(directory: Directory, ndn, scope: int) -> tuple[list[Entry], bool]:
    """(entries to check besides the contacts, whether to search the contacts) for a search's base and scope."""
    base_ndn = directory.base_ndn
    if ndn == base_ndn:
        return ([directory.base_entry] if scope != SCOPE_ONE else []), scope != SCOPE_BASE
    if ndn == base_ndn[len(base_ndn) - len(ndn):] and len(ndn) < len(base_ndn):
        # an ancestor of the base (e.g. "" or dc=com): subtree covers all, one-level its child
        if scope == SCOPE_BASE:
            raise LdapError(NO_SUCH_OBJECT, "", "")
        include_base = scope == SCOPE_SUB or len(base_ndn) - len(ndn) == 1
        return ([directory.base_entry] if include_base else []), scope == SCOPE_SUB
    found = directory.find(ndn)
    if found is None:
        matched = directory.base if ndn[len(ndn) - len(base_ndn):] == base_ndn else ""
        raise LdapError(NO_SUCH_OBJECT, "", matched)
    return ([directory.entry(found)] if scope != SCOPE_ONE else []), False


class Entries:
    """What a search's ids stand for: a contact's id (1 and up) in the directory, or -1 - k for first[k].

    A search keeps what it found as ids in an array('i'): 4 bytes each, and not a
    list the cyclic collector walks (a young list of 100,000 entries made every
    collection visit each of them, scattered in memory: 50 ms). A contact deleted
    after it was found is no longer answered; one changed is answered as it is now.
    """

    def __init__(self, directory: Directory, first: list[Entry]):
        self.directory, self.first = directory, first

    def entry(self, i: int) -> Entry | None:
        return self.first[-1 - i] if i < 0 else self.directory.entry(i)

    def sort_value(self, i: int, key: str) -> str | None:
        """The value an entry sorts by (its least folded value of `key`), None if it has none."""
        if i < 0:
            values = self.first[-1 - i].folded.get(key)
            return min(values) if values else None
        return self.directory.folded(i, key)

    def cached(self, selection: Selection) -> dict[int, bytes]:
        """The directory's cached answers for `selection` by contact id (those it has now; ids of `first` are not in it)."""
        return self.directory.answers.get(selection.key, _NO_ANSWERS)

    def bodies(self, ids: Sequence[int], selection: Selection) -> list[bytes | None]:
        """The SearchResultEntry bodies of `ids` for `selection` (None: a contact gone): the contacts' from the
        directory's cache by one call (`answers_of`), those of `first` one by one."""
        bodies = self.directory.answers_of(ids, selection)
        if self.first and ids and min(ids) < 0:  # one call, not a step per id: the base entry is rarely found
            for n, i in enumerate(ids):
                if i < 0:
                    bodies[n] = self.body(i, selection)
        return bodies

    def body(self, i: int, selection: Selection) -> bytes | None:
        """The SearchResultEntry of an id for `selection`, None if the contact is gone."""
        if i >= 0:
            return self.directory.answer(i, selection)
        entry = self.first[-1 - i]
        cache = entry._bodies
        body = cache.get(selection.key) if cache is not None else None
        if body is None:
            body = ber.tlv(SEARCH_RESULT_ENTRY, entry.encoded_dn + ber.tlv(0x30, selection.encode(entry)))
            if cache is None:
                cache = entry._bodies = {}
            if len(cache) < MAX_BODIES_PER_ENTRY:
                cache[selection.key] = body
        return body


def find_entries(directory: Directory, first: list[Entry], contacts: bool, flt, found: array,
                 limit: int | None = None, units: int | None = None) -> Iterator[None]:
    """Append to `found` the ids (Entries) of the entries of `first`, then of the contacts (if
    `contacts`), that match filter `flt`; stop at `limit`. Yields between small units of work
    (MATCH_STEP_UNITS filter units; `units`, what one entry costs, is filter_units(flt) when not given).

    Contacts come from the directory's indexes when the filter allows (in index order,
    alphabetical for name lookups; exact lookups skip the filter, and the check that a
    contact is still there, while the directory has not changed since the search
    began, and take MATCH_STEP_UNITS candidates a slice), else from a scan in id order.
    A phone's number lookup, a bounded few candidates, is made at once (`number_matches`).
    """
    check_first = None  # compiled here, in the search's first slice, unless no entry of `first` may match
    for k, entry in enumerate(first):
        if false_without(flt, entry.folded):  # a phone's filter names none of the base entry's attributes
            continue
        if check_first is None:
            check_first = compile_filter(flt, directory.sounds)
        if check_first(entry):
            found.append(-1 - k)
    if not contacts or (limit is not None and len(found) >= limit):
        return
    matches = directory.number_matches(flt, None if limit is None else limit - len(found))
    if matches is not None:
        found.extend(matches)
        return
    predicate = None  # compiled when a candidate needs it (an exact lookup needs none)
    stride = max(1, MATCH_STEP_UNITS // (filter_units(flt) if units is None else units))
    version = directory.version  # as the lookups began
    ids, exact, _ = yield from directory.candidate_steps(flt)
    seen: set[int] | None = set()  # an id may come more than once from a lookup
    if ids is None or directory.version != version:
        # lookups made on both sides of a change (it came between their steps) may each have missed a contact it
        # moved from a later one to an earlier one: a scan, every contact checked, misses none
        ids, exact, seen = directory.scan(), False, None
    blobs = directory.blobs
    ids = iter(ids)
    while True:
        verify = not (exact and directory.version == version)  # nothing changes the directory within a slice
        # a slice of candidates at a time (no more than the limit still wants: a lazy lookup checks each it gives);
        # a candidate that needs no check costs one unit, so a phone's exact lookup is found in one slice
        wanted = stride if verify else MATCH_STEP_UNITS
        if limit is not None:
            wanted = min(wanted, limit - len(found))
        chunk = list(islice(ids, wanted))
        taken = len(chunk)  # a candidate that did not match (NOT_A_MATCH) counts too
        if NOT_A_MATCH in chunk:
            chunk = [i for i in chunk if i != NOT_A_MATCH]
        if not verify:
            # unchanged since the lookup began: each candidate is a live contact that matches (indexes hold no
            # other), so only the ids an OR's lookups both gave are left out, with no read of the directory. A scan
            # is never exact, so `seen` is a set; no id taken twice (the common case) costs no step per id
            unique = set(chunk)
            if len(unique) == len(chunk) and unique.isdisjoint(seen):
                seen |= unique
                found.extend(chunk)
            else:
                found.extend([i for i in chunk if not (i in seen or seen.add(i))])
        else:
            for i in chunk:
                if seen is not None:
                    if i in seen:
                        continue
                    seen.add(i)
                if i not in blobs:  # deleted since the lookup began
                    continue
                if predicate is None:
                    predicate = directory.predicate(flt)
                if predicate(i):
                    found.append(i)
        if taken < wanted or (limit is not None and len(found) >= limit):
            return
        yield


def sort_steps(ids: array, keys: list[tuple[str, bool]], entries: Entries, result: array) -> Iterator[bool]:
    """Sort the entries of `ids` into `result` by `keys` [(attribute key, reverse)], SORT_STEP entries per step
    (`result` stays empty if the steps are stopped before the end).

    One stable pass per key, least significant first; an entry without the key
    sorts after all others (before them when reversed: RFC 2891 §2.2). Each pass
    sorts slices by one call each and merges them (`merged_steps`). A reversed
    pass sorts the entries in reverse order ascending and reverses the result:
    the same order as a stable sort descending (of equal values, the first comes first).
    """
    ordered = ids
    sort_value = entries.sort_value
    for key, reverse in reversed(keys):
        def value(i: int, key=key) -> str:
            return sort_value(i, key) or ""  # "": a contact deleted while it was sorted
        present, absent = array("i"), array("i")
        for start in range(0, len(ordered), SORT_STEP):
            for i in ordered[start:start + SORT_STEP]:
                (present if sort_value(i, key) is not None else absent).append(i)
            yield True
        if reverse:
            present.reverse()
        runs = []
        for start in range(0, len(present), SORT_STEP):
            runs.append(array("i", sorted(present[start:start + SORT_STEP], key=value)))
            yield True
        merged = array("i")
        yield from merged_steps(runs, value, merged)
        if reverse:
            merged.reverse()
        ordered = absent + merged if reverse else merged + absent
    result[:] = ordered


def merged_steps(runs: list[array], value: Callable[[int], str], merged: array) -> Iterator[bool]:
    """Merge `runs` (each sorted by `value`) into `merged`, stably (of equal values, an earlier run's first),
    SORT_STEP entries per step. heapq.merge read the first value of every run, then merged, in one step: with
    100,000 entries (390 runs) that step took 1.5 ms, three times the others; here the first values too are read
    SORT_STEP at a time."""
    heap: list[tuple[str, int, int]] = []  # (the value of a run's next entry, the run, where the entry is in it)
    for r, run in enumerate(runs, 1):
        heap.append((value(run[0]), r - 1, 0))
        if r % SORT_STEP == 0 or r == len(runs):
            yield True
    heapq.heapify(heap)
    for count in range(1, sum(map(len, runs)) + 1):
        _, r, at = heap[0]
        run = runs[r]
        merged.append(run[at])
        at += 1
        if at < len(run):
            heapq.heapreplace(heap, (value(run[at]), r, at))
        else:
            heapq.heappop(heap)
        if count % SORT_STEP == 0:
            yield True


_SEQUENCE_HEADS = [b"\x30" + length for length in ber.SHORT_LENGTHS]  # a SEQUENCE's header, below 256


def _sequence_head(size: int) -> bytes:
    return _SEQUENCE_HEADS[size] if size < 0x100 else b"\x30" + ber.encode_length(size)


def encode_entries(message_id: int, selection: Selection, ids: Sequence[int], entries: Entries) -> tuple[bytes, int]:
    """SearchResultEntry messages of `ids` (those still there), and how many: joined once, the answers the
    directory has cached taken without a call per entry, the others made all at once after them (`Entries.bodies`),
    a message's header from a table when it is short."""
    head = ber.integer(message_id)
    extra = len(head)
    heads = _SEQUENCE_HEADS
    cached = entries.cached(selection).get
    parts: list = []
    missing: list[int] = []  # where in `parts` an entry not cached goes (its id, for now)
    for i in ids:
        body = cached(i)
        if body is None:
            missing.append(len(parts))
            parts += i, head, None
            continue
        size = extra + len(body)
        parts += (heads[size] if size < 0x100 else _sequence_head(size)), head, body
    if missing:
        gone = False
        for at, body in zip(missing, entries.bodies([parts[at] for at in missing], selection), strict=True):
            if body is None:
                gone = True
                continue
            size = extra + len(body)
            parts[at], parts[at + 2] = _sequence_head(size), body
        if gone:  # a contact deleted since it was found is not sent
            parts = [part for n in range(0, len(parts), 3) if parts[n + 2] is not None for part in parts[n:n + 3]]
    return b"".join(parts), len(parts) // 3


class Searches:
    """A session's searches: each started as a SearchCursor, and the paged results a client still reads.

    Those paged results count in `budget` (a PagedBudget shared by every
    session, if given) under the connection's `address`; it may give one up (`drop`)."""

    def __init__(self, clock: Callable[[], float], address: str = "-", budget=None):
        self.clock = clock
        self.address, self.budget = address, budget
        self.paged: dict[bytes, PagedSearch] = {}
        self.cookies = 0

    def abandon(self, message_id: int) -> None:
        """Drop the paged results of a search (by the message id of its last page)."""
        for cookie, paged in list(self.paged.items()):
            if paged.message_id == message_id:
                self._forget(cookie)

    def drop(self, cookie: bytes) -> None:
        """The budget gave these paged results up."""
        self.paged.pop(cookie, None)

    def drop_all(self) -> None:
        """Forget every paged result (a new bind, the connection closed)."""
        for cookie in list(self.paged):
            self._forget(cookie)

    def _forget(self, cookie: bytes) -> None:
        if self.paged.pop(cookie, None) is not None and self.budget is not None:
            self.budget.release(self, cookie)

    def start(self, message_id: int, request: SearchRequest, controls: list[Control], policy, directory: Directory,
              may_read: bool) -> SearchCursor:
        """The search as a cursor whose steps do the work, or LdapError for what is refused at once.
        `policy` is the session's Policy; `may_read`, whether the client may read the contacts."""
        paged = sort = None
        for control in controls:
            if control.oid == OID_PAGED_RESULTS:
                paged = decode_paged(control.value)
            elif control.oid == OID_SORT_REQUEST:
                sort = (decode_sort(control.value), control.critical, control.value)
            elif control.critical and control.oid not in SUPPORTED_CONTROLS:
                raise LdapError(UNAVAILABLE_CRITICAL_EXTENSION, f"control {control.oid} is not supported")
        try:
            ndn = parse_dn_cached(request.base)
        except DnError as exc:
            raise LdapError(INVALID_DN_SYNTAX, str(exc)) from None
        time_limit = min(request.time_limit or policy.time_limit, policy.time_limit)
        cursor = SearchCursor(message_id, self.clock, self.clock() + time_limit)
        selection = self._selection(request)
        if not ndn and request.scope == SCOPE_BASE:
            # the Root DSE: readable before a bind, so clients can find StartTLS (RFC 4513 §3.1.1)
            cursor.steps = self._search_steps(cursor, directory, [directory.root_dse], False, request, selection,
                                              None, None, b"", False)
            return cursor
        if not may_read:
            raise LdapError(INSUFFICIENT_ACCESS_RIGHTS, ANONYMOUS_REFUSED)
        sort_keys, sort_control = self._sort_keys(sort) if sort is not None else (None, b"")
        critical_sort = sort is not None and sort[1]
        if paged is None:
            first, contacts = resolve_scope(directory, ndn, request.scope)
            size_limit = min(request.size_limit or policy.size_limit, policy.size_limit)
            cursor.steps = self._search_steps(cursor, directory, first, contacts, request, selection, size_limit,
                                              sort_keys, sort_control, critical_sort)
            return cursor
        # paged results (RFC 2696): the whole result is found (and sorted) once; pages are cut from it
        page_size, cookie = paged
        # a cookie continues only the very search it came from, sort order included
        identity = request.base.lower().encode() + bytes([request.scope]) + request.filter_bytes + (sort[2] if sort else b"")
        if self.budget is not None:
            self.budget.expire(self.clock())
        if cookie:
            state = self.paged.get(cookie)
            if state is not None and state.entries.directory.retired:  # the book was read anew: so must the results be
                self._forget(cookie)
                state = None
            if state is None or state.identity != identity:
                raise LdapError(UNWILLING_TO_PERFORM, "paged results cookie is invalid (or given up: idle, or too many, "
                                                      "or the address book was read anew)")
            if page_size == 0:  # the client gives up on the rest (RFC 2696 §3)
                self._forget(cookie)
            elif self.budget is not None:
                self.budget.touch(self, cookie, self.clock())
            state.message_id = message_id
        elif page_size != 0:
            first, contacts = resolve_scope(directory, ndn, request.scope)
            cursor.steps = self._paged_steps(cursor, directory, first, contacts, request, selection, sort_keys,
                                             sort_control, critical_sort, page_size, identity, sort is not None, policy)
            return cursor
        if page_size == 0:
            cursor.steps = self._done_steps(cursor, SUCCESS, encode_control(
                OID_PAGED_RESULTS, ber.sequence(ber.integer(0), ber.octets(b""))))
            return cursor
        cursor.steps = self._page_steps(cursor, state, cookie, page_size, selection, sort is not None, policy, False)
        return cursor

    def _search_steps(self, cursor: SearchCursor, directory: Directory, first: list[Entry], contacts: bool, request: SearchRequest,
                      selection: Selection, size_limit: int | None, sort_keys, sort_control: bytes,
                      critical_sort: bool) -> Iterator[bool]:
        """Find, then (sorted) send; unsorted entries are sent as they are found. Stops at the size limit."""
        found = array("i")
        entries = Entries(directory, first)
        timed_out = False
        stream = sort_keys is None
        # one more than the limit tells "exceeded" apart; a sorted result needs every match
        finder = find_entries(directory, first, contacts, request.filter, found,
                              None if not stream or size_limit is None else size_limit + 1, request.filter_units)
        # a step finds up to MATCH_STEP_UNITS entries; answers made from whole entries (about 50 us each) are made
        # EMIT_STEP a step, the others (about 5 us) all at once
        most = EMIT_STEP if made_from_entries(selection) else None
        try:
            for _ in finder:
                while stream and self._send_found(cursor, selection, found, entries, size_limit, most):
                    yield True
                yield True
        except TimeUp:
            timed_out = True
            finder.close()
        exceeded = size_limit is not None and len(found) > size_limit
        if stream:
            while self._send_found(cursor, selection, found, entries, size_limit, most):
                yield False  # what was found is sent, whatever the time
        else:
            ordered, sort_control, timed_out = yield from self._sorted(found, sort_keys, entries, sort_control,
                                                                       critical_sort, timed_out)
            del found
            try:
                yield from self._send_steps(cursor, selection, ordered[:size_limit], entries)
            except TimeUp:
                timed_out = True
        code = TIME_LIMIT_EXCEEDED if timed_out else SIZE_LIMIT_EXCEEDED if exceeded else SUCCESS
        self._finish(cursor, code, sort_control)

    @staticmethod
    def _sorted(found: array, sort_keys, entries: Entries, sort_control: bytes, critical: bool, timed_out: bool):
        """Steps that sort `found` unless the time is up: (the ids to send, the sort control, timed out)."""
        ordered = array("i")
        if not timed_out:
            try:
                yield from sort_steps(found, sort_keys, entries, ordered)
                return ordered, sort_control, False
            except TimeUp:
                pass
        unsorted = encode_control(OID_SORT_RESPONSE, ber.sequence(ber.enumerated(TIME_LIMIT_EXCEEDED)))
        return (array("i") if critical else found), unsorted, True

    @staticmethod
    def _send_found(cursor: SearchCursor, selection: Selection, found: array, entries: Entries, size_limit: int | None,
                    most: int | None) -> bool:
        """The entries found and not yet sent (within the size limit; `most` of them, if given) encoded; whether
        some are left."""
        end = len(found) if size_limit is None else min(len(found), size_limit)
        stop = end if most is None else min(end, cursor.given + most)
        if stop > cursor.given:
            encoded, count = encode_entries(cursor.message_id, selection, found[cursor.given:stop], entries)
            cursor.out.append(encoded)
            cursor.given = stop
            cursor.sent += count
        return stop < end

    @staticmethod
    def _send_steps(cursor: SearchCursor, selection: Selection, ids: array, entries: Entries) -> Iterator[bool]:
        for start in range(0, len(ids), EMIT_STEP):
            encoded, count = encode_entries(cursor.message_id, selection, ids[start:start + EMIT_STEP], entries)
            cursor.out.append(encoded)
            cursor.given += min(EMIT_STEP, len(ids) - start)
            cursor.sent += count
            yield True

    @staticmethod
    def _finish(cursor: SearchCursor, code: int, controls: bytes) -> None:
        done = _DONE.get(code)
        if done is None:
            done = _DONE[code] = result(SEARCH_RESULT_DONE, code, "")  # a few codes: made once each
        cursor.out.append(message(cursor.message_id, done, ber.tlv(CONTROLS_TAG, controls) if controls else b""))
        cursor.out.append(Searched(cursor.sent, code == TIME_LIMIT_EXCEEDED))

    def _done_steps(self, cursor: SearchCursor, code: int, controls: bytes) -> Iterator[bool]:
        self._finish(cursor, code, controls)
        yield False

    def _paged_steps(self, cursor: SearchCursor, directory: Directory, first: list[Entry], contacts: bool,
                     request: SearchRequest, selection: Selection, sort_keys, sort_control: bytes, critical_sort: bool,
                     page_size: int, identity: bytes, sorted_request: bool, policy) -> Iterator[bool]:
        """The first page: every match found (and sorted) and kept for the pages after it."""
        found = array("i")
        entries = Entries(directory, first)
        timed_out = False
        limit = request.size_limit + 1 if request.size_limit and sort_keys is None else None
        finder = find_entries(directory, first, contacts, request.filter, found, limit, request.filter_units)
        try:
            for _ in finder:
                yield True
        except TimeUp:
            timed_out = True
            finder.close()
        if sort_keys is not None:
            found, sort_control, timed_out = yield from self._sorted(found, sort_keys, entries, sort_control,
                                                                     critical_sort, timed_out)
        exceeded = bool(request.size_limit) and len(found) > request.size_limit
        if exceeded:
            del found[request.size_limit:]
        self.cookies += 1
        cookie = str(self.cookies).encode()
        if len(self.paged) >= MAX_PAGED_SEARCHES:
            self._forget(next(iter(self.paged)))
        state = PagedSearch(identity, found, entries, 0, exceeded, sort_control, cursor.message_id)
        if len(found) > min(page_size, policy.size_limit):  # pages to come: kept for them
            self.paged[cookie] = state
            if self.budget is not None:
                self.budget.keep(self, cookie, self.address, len(found), self.clock())
        yield from self._page_steps(cursor, state, cookie, page_size, selection, sorted_request, policy, timed_out)

    def _page_steps(self, cursor: SearchCursor, state: PagedSearch, cookie: bytes, page_size: int, selection: Selection,
                    sorted_request: bool, policy, timed_out: bool) -> Iterator[bool]:
        size = min(page_size, policy.size_limit)
        try:
            yield from self._send_steps(cursor, selection, state.results[state.position:state.position + size], state.entries)
        except TimeUp:
            timed_out = True
        state.position += cursor.given
        done = state.position >= len(state.results) or timed_out
        if done:
            self._forget(cookie)
        code = TIME_LIMIT_EXCEEDED if timed_out else (SIZE_LIMIT_EXCEEDED if done and state.size_exceeded else SUCCESS)
        control = encode_control(OID_PAGED_RESULTS, ber.sequence(ber.integer(len(state.results)), ber.octets(b"" if done else cookie)))
        self._finish(cursor, code, control + (state.sort_control if sorted_request else b""))

    def _sort_keys(self, sort) -> tuple[list[tuple[str, bool]] | None, bytes]:
        """(attribute keys with their direction, the sort response control); None: sent unsorted (RFC 2891 §2.2)."""
        keys, critical, _ = sort
        resolved = []
        for attr, rule, reverse in keys:
            key = attribute_key(attr)
            if key is None or (rule is not None and rule not in ORDERING_RULES):
                code = NO_SUCH_ATTRIBUTE if key is None else INAPPROPRIATE_MATCHING
                if critical:
                    raise LdapError(UNAVAILABLE_CRITICAL_EXTENSION, f"cannot sort by {attr}")
                return None, encode_control(OID_SORT_RESPONSE, ber.sequence(ber.enumerated(code)))
            resolved.append((key, reverse))
        return resolved, encode_control(OID_SORT_RESPONSE, ber.sequence(ber.enumerated(SUCCESS)))

    def _selection(self, request: SearchRequest) -> Selection:
        key = (tuple(request.attributes), request.types_only)
        selection = _SELECTIONS.get(key)
        if selection is None:
            selection = Selection.of(request.attributes, request.types_only)
            selection.key = key
            if len(_SELECTIONS) >= MAX_SELECTIONS:
                _SELECTIONS.pop(next(iter(_SELECTIONS)))
            _SELECTIONS[key] = selection
        return selection
