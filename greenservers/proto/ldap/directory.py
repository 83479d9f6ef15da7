"""The directory: the address book's LDAP entries and their indexes, changed one contact at a time (sans-IO).

`Directory` holds, per contact, ONE immutable `bytes` blob (`make_blob`): a
header of uint16 end offsets, the encoded DN, each attribute's encoded
PartialAttribute and each attribute's folded value. displayName (always cn's
value), uid (the id) and objectClass (constant) are made when answering. The
indexes hold no Python object per value:

- `SortedKeys` per attribute: (folded value, id) pairs sorted in packed blocks
  of about BLOCK pairs (one str and two arrays a block). Names are keyed by
  their folded value (equality, prefix); numbers by their national form
  (`national_form`, prefix in either form) and, reversed, by their digits
  from the end ("*4711").
- `tails`: every number attribute's contacts by a number's last TAIL characters
  (`NumberTails`, a dict): a number's equality in one probe; a tail shared by
  more than CROWD contacts (a switchboard's number) is looked up in the
  attribute's reversed keys instead. A phone's OR of numbers is looked up
  whole in one call (`number_matches`), not in a search's steps. Changed with the blobs themselves (an
  import's contacts as the merge reads them, left out of searches until they
  are in `order`), so it always holds the numbers `blobs` holds.
- `Grams` per name attribute: array('i') postings of 3- and 4-grams, append-only between
  compactions (a stale id costs one check against the current value; "*typed*" of 3 or 4
  characters is its gram's posting as it is while that holds no stale id).
- `order`: every id, ascending (what a scan walks).
- a bounded cache of encoded answers per attribute selection (`answers_of`: a slice of a search's
  answers at once, those not cached cut from their blobs).

Every change (`put`, `delete`) touches the keys it changes only: one block
per changed attribute is replaced, a posting appended to. A bulk add
(`merge`, an import) merges each attribute's keys in one pass, in steps; any
contact may change between them, one of the import too (taken out of it: a
change is never kept waiting for the merge's end). The
lists of blocks searches iterate are copy-on-write while an iterator holds
them (it keeps the lists it started with; with none, a change edits them in
place), so a search that runs in slices while contacts change sees a
consistent set of keys; ids it finds are then checked against the current
blob (a deleted contact is skipped, a changed one verified again).

Namesakes: two contacts with the same folded cn get "+uid=ID" in their RDN
(DNs stay unique); only a count going 1 <-> 2 rewrites another entry's DN.

The structures are index.py's. Filter semantics are `compile_filter`'s
(filters.py); the Directory gives it an accessor (BlobAccess) that reads
folded values out of blobs by id.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from itertools import chain, islice

from .. import ber
from .codes import F_AND, F_EQ, F_OR, F_SUB
from .dn import escape_rdn_value, parse_dn
from .entries import Entry, RootDSE, base_entry_values, contact_values, rdn_raw_value
from .filters import compile_filter
from .index import (
    ALIAS,
    AT,
    BLOCK,
    FOLDED_AT,
    GRAM_KEYS,
    HEAD,
    HEADER,
    KEYS,
    MAX_ANSWERS,
    MAX_SOUNDS,
    MERGE_STEP,
    NUMBER_KEYS,
    OBJECTCLASS_ENCODED,
    PAIR,
    SORT_STEP,
    TAIL,
    UID_TYPE,
    Grams,
    NumberTails,
    SortedKeys,
    blob_dn,
    display_from_cn,
    folded_value,
    lookup,
    make_blob,
    merged_pairs,
    merged_steps,
    national_key,
    partial_attribute,
    raw_value,
    reversed_key,
    sorted_runs_steps,
    sorted_steps,
    with_dn,
)
from .schema import (
    ATTRIBUTE_TYPES,
    PERSON_CLASSES,
    PERSON_CLASSES_FOLDED,
    national_form,
    number_prefix_national,
    padded_sounds,
    same_number,
)

LOOKUPS_PER_STEP = 16  # a filter's index lookups made between two yields (about 15 us each, with a size estimate)
NUMBER_CHECKS = 256  # candidates number_matches checks at most (about 1 us each): more are checked in steps
NOT_A_MATCH = 0  # what a lookup gives for a candidate it looked at that does not match (no contact, no base entry
# has id 0), so that each counts in a search's step: a search takes a bounded number of candidates a step

_WHOLE_ENTRY, _DISPLAY, _UID = object(), object(), object()


def made_from_entries(selection) -> bool:
    """Whether a selection's answers are made by Selection.encode from a whole Entry (typesOnly, an alias such
    as commonName), about ten times the cost of those cut from a contact's blob."""
    return selection.types_only or selection.aliased


def _plan(selection) -> object:
    """How a selection's attributes are cut from a blob: (first, last) header indexes of encoded
    attributes in a row, _DISPLAY, _UID, or bytes; _WHOLE_ENTRY when Selection.encode must read an Entry."""
    if made_from_entries(selection):
        return _WHOLE_ENTRY
    if selection.all_user:  # in Entry order: objectClass, cn, sn, displayName, uid, the others
        return (OBJECTCLASS_ENCODED, (0, 2), _DISPLAY, _UID, (2, len(KEYS)))
    plan: list = []
    for key, _ in selection.keys:
        if key in AT:
            n = AT[key]
            if plan and plan[-1].__class__ is tuple and plan[-1][1] == n:
                plan[-1] = (plan[-1][0], n + 1)  # next to the one before it in the blob: one slice
            else:
                plan.append((n, n + 1))
        elif key == "displayname":
            plan.append(_DISPLAY)
        elif key == "uid":
            plan.append(_UID)
        elif key == "objectclass":
            plan.append(OBJECTCLASS_ENCODED)
    if all(part.__class__ is tuple for part in plan):
        return _Cuts(plan)
    return tuple(plan)


class _Cuts:
    """The plan of a selection of stored attributes only (a phone's): the header's ends it needs (the DN's, then
    the slices' bounds) read by one Struct, not all of them, and which of them bound each slice. A header of
    19 ends made 19 ints (most above the small ones Python keeps) per answer made."""

    __slots__ = ("ends", "spans")

    def __init__(self, slices: list[tuple[int, int]]):
        needed = sorted({0, *(n for pair in slices for n in pair)})  # 0: where the DN element ends
        layout, position = "<", 0
        for n in needed:
            layout += f"{2 * (n - position)}xH" if n > position else "H"
            position = n + 1
        self.ends = struct.Struct(layout)
        self.spans = tuple((needed.index(a), needed.index(b)) for a, b in slices)


class Directory:
    """The Root DSE, the base entry and the contacts' entries with their indexes, changed in place.

    Only one caller changes it (the event loop's greenlet); searches read it between changes.
    """

    def __init__(self, base: str, contacts: Iterable = ()):
        self.base = base
        self.base_ndn = parse_dn(base)
        self.base_written = parse_dn(base, folded=False)  # its values as written: contacts' Entries end with it
        base_values = base_entry_values(self.base_ndn)
        if self.base_ndn:
            for key, _ in self.base_ndn[0]:
                if key in ATTRIBUTE_TYPES:
                    base_values[key] = (rdn_raw_value(base, key),)
        self.base_entry = Entry(base, base_values)
        self.root_dse = RootDSE(base)
        self.version = 0  # counts changes: a search that saw it move verifies what exact lookups give it
        self.retired = False  # another replaced it (it follows the book no more): its paged searches are given up
        self.blobs: dict[int, bytes] = {}
        self.order = array("i")  # every id, ascending
        self.keys = {k: SortedKeys() for k in KEYS}  # numbers: by national_form
        self.reversed = {k: SortedKeys() for k in NUMBER_KEYS}
        self.tails = NumberTails()
        self.grams = {k: Grams() for k in GRAM_KEYS}
        self.answers: dict[tuple, dict[int, bytes]] = {}
        self.answered = 0
        self._sounds: dict[str, str] = {}
        self._plans: dict[tuple, object] = {}
        self._journal: list | None = None  # while a merge runs: (id, blob, added or not) of each change made meanwhile
        self._taken: dict[int, None] | None = None  # while a merge runs (reads, then indexes): contacts it made, changed
        # or deleted meanwhile
        self._made: array | None = None  # what it made, ascending, once they are in `order` (before: not in it)
        self.merge(contacts)

    def __len__(self) -> int:
        return len(self.blobs)

    # -- changes --------------------------------------------------------------------------------

    def put(self, contact) -> None:
        """Add or change one contact: the keys it changes out and in (the others stay), namesakes' DNs kept right."""
        id_ = contact.id
        old, taken = self._indexed(id_)
        old_cn = None
        if old is not None:
            old_cn = folded_value(old, "cn")
        else:
            self._add_order(id_)
        cn = contact_values(contact)[1]["cn"][0]
        namesakes = [i for i in self._with_cn(cn, 4) if i != id_]  # its own cn key may still be there
        blob = make_blob(contact, bool(namesakes), self.base)
        self._number_tails(id_, self.blobs.get(id_), blob)
        self.blobs[id_] = blob
        self._reindex(id_, old, blob, taken)
        if len(namesakes) == 1:
            self._set_namesake(namesakes[0], True)
        if old_cn is not None and old_cn != cn:
            self._lone_namesake(old_cn)
        self._changed(id_)

    def delete(self, id_: int) -> None:
        old, taken = self._indexed(id_)
        gone = self.blobs.pop(id_, None)
        if gone is None:
            return
        self._number_tails(id_, gone, None)
        if old is not None:
            self._reindex(id_, old, None, taken)
            at = bisect_left(self.order, id_)
            self.order = self.order[:at] + self.order[at + 1:]  # a new array: a scan goes on over the old one
            self._lone_namesake(folded_value(old, "cn"))
        self._changed(id_)

    def merge(self, contacts: Iterable) -> None:
        """merge_steps(contacts), run to its end."""
        for _ in self.merge_steps(contacts):
            pass

    def merge_steps(self, contacts: Iterable) -> Iterator[None]:
        """Add many contacts (an import, or the first build), yielding between units of about a
        millisecond: blobs made, then each attribute's new keys sorted in slices and merged with
        the old ones in one pass (no block rewritten per contact). A contact already here is put.

        Any contact may be changed between the steps (`put`, `delete`): what that does to the keys
        being merged is recorded and done again to the merged keys. One this merge made (read, not
        yet indexed) is taken out of it (`_indexed`): from then on it is changed as any other,
        and the merge leaves it. `contacts` is read lazily: one it yields must be as it is then
        (the caller skips one it changed itself meanwhile, rather than yield an older copy)."""
        self._journal, self._taken = [], {}
        try:
            yield from self._merge_steps(contacts)
        finally:
            self._journal = self._taken = self._made = None

    def _merge_steps(self, contacts: Iterable) -> Iterator[None]:
        made = array("i")
        ascending = True  # ids read from the book in order need no sort
        for n, contact in enumerate(contacts, 1):
            if contact.id in self.blobs:
                self.put(contact)
            else:
                blob = self.blobs[contact.id] = make_blob(contact, False, self.base)
                self._number_tails(contact.id, None, blob)  # at once: the tails are the blobs' (no merge step)
                ascending = ascending and (not made or contact.id > made[-1])
                made.append(contact.id)
            if n % MERGE_STEP == 0:
                yield
        if not made:
            return
        if not ascending:
            made = yield from sorted_steps(made)
        # in one step from here to `order` (a change between steps would be lost): those taken out meanwhile are in it already
        taken = self._taken
        if taken:
            made = _without(made, taken)
        at = bisect_left(self.order, made[0]) if made else len(self.order)
        # ids above the first made: added or taken out meanwhile, as many as edits came while the merge read (a few;
        # 1-3 us each, in this one step: 2,000 cost 7 ms)
        if at < len(self.order):
            self.order = self.order[:at] + _merged_ids(self.order[at:], made)
        else:
            self.order.extend(made)
        self._made = made
        yield
        blobs = self.blobs
        for key in KEYS:
            ways = ((self.keys, national_key), (self.reversed, reversed_key)) if key in NUMBER_KEYS else ((self.keys, folded_value),)
            for structures, key_of in ways:  # a contact taken out of the merge has no new pair (None)
                runs = yield from self._merged_into(structures, key, lambda i, key=key, f=key_of: None if i in taken else f(blobs[i], key))
            grams = self.grams.get(key)
            for n, (value, i) in enumerate(merged_pairs(runs) if grams is not None else (), 1):
                grams.add(value, i)  # one taken out meanwhile too: its value's grams were counted stale then (`_reindex`)
                if n % MERGE_STEP == 0:
                    yield
        self._taken = self._made = None  # all indexed: nothing to take out of the merge any more
        # namesakes: among the new ones, and between the new and the old ones (equal cn keys are neighbours). The
        # keys' lists are those of the first step: a group is looked up again as it is now (a change meanwhile moved
        # its contacts in or out, and gave or took their "+uid=" as the keys were then)
        previous, group = None, 0
        for n, (cn, _) in enumerate(self.keys["cn"].pairs(), 1):
            if cn != previous:
                if group > 1:
                    self._namesakes_found(previous)
                previous, group = cn, 0
            group += 1
            if n % SORT_STEP == 0:
                yield
        if group > 1:
            self._namesakes_found(previous)
        self.version += 1

    def _merged_into(self, structures: dict[str, SortedKeys], key: str, key_of: Callable[[int], str | None]):
        """Steps that make the new pairs (`key_of` each contact made; None: it has none here, or was taken out of the
        merge) and merge them into structures[key], then do again to the merged keys what changes made meanwhile
        (recorded in the journal) did to the old ones; returns the new pairs (packed sorted runs)."""
        old, mark = structures[key], len(self._journal)
        merged, runs = yield from merged_steps(old, sorted_runs_steps(self._made, key_of))
        if merged is not old:
            for id_, blob, adding in self._journal[mark:]:
                for keys, indexed in self._places(key, folded_value(blob, key)):
                    if keys is old:
                        (merged.add if adding else merged.remove)(indexed, id_)
            structures[key] = merged
        return runs

    def _indexed(self, id_: int) -> tuple[bytes | None, bool]:
        """(a contact's blob as the indexes and `order` hold it, None if they do not; whether the running merge's new
        pairs may hold it too), for a change: a contact the merge made and has yet to index is taken out of it, and
        the merge leaves it from then on (changed at once as any other).

        The alternative, a change kept until the merge ends, left an import's contact edited meanwhile as it was
        for seconds (3.4 s in an import of 50,000 into 100,000). Taking one out costs a bisection, and keeps no
        copy of what the merge holds: made while the merge read, it is in no index yet; made before, its pairs
        the merge made are removed as a change's are (the journal records its blob for the keys being merged)."""
        old, taken = self.blobs.get(id_), self._taken
        if old is None or taken is None or id_ in taken:
            return old, False
        made = self._made
        if made is None:  # still reading: what it made is in `blobs`, in no index nor in `order` yet
            if _holds(self.order, id_):
                return old, False
            taken[id_] = None
            return None, False
        if not _holds(made, id_):
            return old, False
        taken[id_] = None
        return old, True

    def _changed(self, id_: int) -> None:
        self.version += 1
        for answers in self.answers.values():
            if answers.pop(id_, None) is not None:
                self.answered -= 1

    def _add_order(self, id_: int) -> None:
        order = self.order
        if not order or id_ > order[-1]:
            order.append(id_)  # in place: a scan iterating it by index may see it, and no other changes
        else:
            at = bisect_left(order, id_)
            self.order = order[:at] + array("i", [id_]) + order[at:]

    def _reindex(self, id_: int, old: bytes | None, new: bytes | None, taken: bool = False) -> None:
        """A contact's keys from its `old` blob out of the indexes and those of its `new` one in (None: no blob),
        the values they share left as they are; noted in the journal while a merge runs. `taken`: the merge made
        `old` and has indexed some of its keys only, so each is taken out where it is (and counted stale in the
        gram postings: perhaps once too often, which only makes a lookup check ids until a tidy)."""
        for key in KEYS:
            old_value = None if old is None else folded_value(old, key)
            new_value = None if new is None else folded_value(new, key)
            if old_value == new_value and not taken:
                continue
            grams = self.grams.get(key)
            if old_value is not None:
                for keys, indexed in self._places(key, old_value):
                    keys.remove(indexed, id_)
                if grams is not None:
                    grams.removed(old_value)
            if new_value is not None:
                for keys, indexed in self._places(key, new_value):
                    keys.add(indexed, id_)
                if grams is not None:
                    grams.add(new_value, id_)
        if self._journal is not None:  # done again, both, to keys merged meanwhile (a shared value: out, then in)
            if old is not None:
                self._journal.append((id_, old, False))
            if new is not None:
                self._journal.append((id_, new, True))

    def _number_tails(self, id_: int, old: bytes | None, new: bytes | None) -> None:
        """A contact's blob goes from `old` to `new` (None: none): its numbers' tails follow (NumberTails.change: the
        attributes share them, so a number moved from homePhone to mobile keeps its tail untouched)."""
        self.tails.change(id_, _numbers(old), _numbers(new))

    def _places(self, key: str, value: str | None) -> tuple[tuple[SortedKeys, str], ...]:
        """Where a contact's folded value of `key` is in sorted keys: (sorted keys, the key it has there) for each."""
        if value is None:
            return ()
        if key in NUMBER_KEYS:
            return (self.keys[key], national_form(value)), (self.reversed[key], value[::-1])
        return ((self.keys[key], value),)

    def _with_cn(self, cn: str, cap: int | None = 3) -> list[int]:
        found = self.keys["cn"].starting(cn, True)
        return list(found if cap is None else islice(found, cap))

    def _lone_namesake(self, cn: str) -> None:
        left = self._with_cn(cn)
        if len(left) == 1:
            self._set_namesake(left[0], False)

    def _namesakes_found(self, cn: str) -> None:
        """The contacts whose folded cn is `cn` get "+uid=ID" if there are two or more."""
        ids = self._with_cn(cn, None)
        if len(ids) > 1:
            for i in ids:
                self._set_namesake(i, True)

    def _set_namesake(self, id_: int, namesake: bool) -> None:
        """Give or take "+uid=ID" in a contact's RDN."""
        blob = self.blobs[id_]
        ends = HEADER.unpack_from(blob)
        rdn = "cn=" + escape_rdn_value(raw_value(blob[ends[0]:ends[1]])) + (f"+uid={id_}" if namesake else "")
        dn = f"{rdn},{self.base}"
        if dn != blob_dn(blob):
            self.blobs[id_] = with_dn(blob, dn)
            self._changed(id_)

    @property
    def merging(self) -> bool:
        """A merge is running (its contacts may be changed meanwhile too: `merge_steps`)."""
        return self._journal is not None

    def tidy_steps(self) -> Iterator[None]:
        """Rebuild the gram postings that became a quarter stale, a slice per step."""
        blobs = self.blobs
        unpack = PAIR.unpack_from
        for key, grams in self.grams.items():
            if not grams.untidy:
                continue
            at = 2 * (FOLDED_AT + AT[key] - 1)

            def holds(id_: int, gram: str, at: int = at) -> bool:
                blob = blobs.get(id_)
                if blob is None:
                    return False
                start, end = unpack(blob, at)
                if not gram:
                    return end > start and len(blob[start:end].decode()) < 3
                return blob.find(gram.encode(), start, end) >= 0
            yield from grams.tidy_steps(holds)

    def dismantle(self, per_step: int = 2048) -> Iterator[None]:
        """Empty this directory a slice at a time, yielding between slices, for a caller that holds the
        only reference once it was replaced: dropping 100,000 blobs at once is one deallocation of many ms."""
        self.version += 1  # a search still going on over it checks each id it finds (and skips those gone)
        blobs = self.blobs
        while blobs:
            for _ in range(min(per_step, len(blobs))):
                blobs.popitem()
            yield
        blocks = max(1, per_step // BLOCK)
        for keys in (*self.keys.values(), *self.reversed.values()):
            while keys.blocks:
                del keys.blocks[-blocks:], keys.heads[-blocks:]
                yield
        self.tails.clear()  # a few arrays
        for grams in self.grams.values():
            postings = grams.postings
            while postings:
                for _ in range(min(per_step, len(postings))):
                    postings.popitem()
                yield
            grams.by_pair.clear()
            grams.stale.clear()
        self.order = array("i")
        self.answers.clear()
        self._sounds.clear()

    # -- reading ----------------------------------------------------------------------------------

    def folded(self, id_: int, key: str) -> str | None:
        """A contact's folded value of `key` (any key a contact has; None if it has none, or is gone)."""
        blob = self.blobs.get(id_)
        if blob is None:
            return None
        key = ALIAS.get(key, key)
        if key in AT:
            return folded_value(blob, key)
        if key == "uid":
            return str(id_)
        if key == "objectclass":
            return min(PERSON_CLASSES_FOLDED)
        return None

    def dn(self, id_: int) -> str:
        return blob_dn(self.blobs[id_])

    def entry(self, id_: int) -> Entry | None:
        """A contact's entry as an Entry (for what reads whole entries: extensible matches, Compare, rare selections)."""
        blob = self.blobs.get(id_)
        if blob is None:
            return None
        ends = HEADER.unpack_from(blob)
        values: dict[str, tuple[str, ...]] = {"objectclass": PERSON_CLASSES}
        folded: dict[str, tuple[str, ...]] = {"objectclass": PERSON_CLASSES_FOLDED}
        for n, key in enumerate(KEYS):
            start, end = ends[n], ends[n + 1]
            if end > start:
                values[key] = (raw_value(blob[start:end]),)
                folded[key] = (blob[ends[FOLDED_AT + n - 1]:ends[FOLDED_AT + n]].decode(),)
            if key == "sn":
                values["displayname"], folded["displayname"] = values["cn"], folded["cn"]
                values["uid"] = folded["uid"] = (str(id_),)
        ndn = self.ndn(id_, blob)
        rdn = (("cn", values["cn"][0]),) + ndn[0][1:]  # the cn as written; a namesake's uid is written as it is
        return Entry(blob_dn(blob), values, ndn, folded, (rdn,) + self.base_written)

    def ndn(self, id_: int, blob: bytes) -> tuple:
        cn = folded_value(blob, "cn")
        rdn = (("cn", cn), ("uid", str(id_))) if len(self._with_cn(cn)) > 1 else (("cn", cn),)
        return (rdn,) + self.base_ndn

    def find(self, ndn) -> int | None:
        """The id of the contact whose DN is `ndn` (normalized), None if there is none."""
        if len(ndn) != len(self.base_ndn) + 1 or ndn[1:] != self.base_ndn:
            return None
        avas = dict(ndn[0])
        cn = avas.get("cn")
        if cn is None or len(avas) > 2 or (len(avas) == 2 and "uid" not in avas):
            return None
        if "uid" not in avas:
            ids = self._with_cn(cn, cap=2)
            return ids[0] if len(ids) == 1 else None
        uid = avas["uid"]
        id_ = int(uid) if uid.isdigit() else -1
        blob = self.blobs.get(id_)
        if blob is None or str(id_) != uid or folded_value(blob, "cn") != cn:
            return None
        return id_ if len(self._with_cn(cn, cap=2)) > 1 else None

    def scan(self) -> Iterator[int]:
        """Every id, ascending (over the ids there were when it began, and those added since)."""
        return iter(self.order)

    def sounds(self, value: str) -> str:
        """`padded_sounds(value)` for approximate matching, cached per distinct value (bounded)."""
        code = self._sounds.get(value)
        if code is None:
            if len(self._sounds) >= MAX_SOUNDS:
                self._sounds.clear()
            code = self._sounds[value] = padded_sounds(value)
        return code

    # -- searching --------------------------------------------------------------------------------

    def predicate(self, f) -> Callable[[int], bool | None]:
        """compile_filter's predicate for ids of this directory's contacts."""
        return compile_filter(f, self.sounds, BlobAccess(self))

    def candidate_steps(self, f) -> Generator[None, None, tuple[Iterable[int] | None, bool, int]]:
        """Steps that return (ids that may match, whether exactly those match, about how many); None: scan every
        contact. A step after every LOOKUPS_PER_STEP lookups: an AND or OR of 255 took 2-5 ms at once.

        Exact lookups (a name's equality or prefix, a number's prefix, "*4711" or
        equality, checked by its tail here, and "*typed*") need no verification; the
        rest (other grams, AND) are supersets the predicate checks. An id may come
        more than once, and NOT_A_MATCH for a candidate an exact lookup looked at.
        Sorted keys are looked up, in their lists as they were when the search began,
        when their ids are first asked for (`Lookup`): an OR's later lookups cost
        nothing when the size limit is reached before them. A number's tail gives its
        ids as they are when it is looked up.
        Sizes are estimated only for an AND's children (the rarest is used).
        """
        looked = 0

        def steps(f, sized: bool):
            nonlocal looked
            op = f[0]
            if op != F_AND and op != F_OR:
                looked += 1
                return self._lookup(f, sized)
            best: tuple = (None, False, 0)
            parts, exact, total = [], True, 0
            for child in f[1]:
                if child[0] == F_AND or child[0] == F_OR:
                    ids, child_exact, size = yield from steps(child, sized or op == F_AND)
                else:  # a lookup: no generator of its own (a phone's OR of three numbers makes one in all)
                    looked += 1
                    if looked % LOOKUPS_PER_STEP == 0:
                        yield
                    ids, child_exact, size = self._lookup(child, sized or op == F_AND)
                if op == F_AND:
                    if ids is not None and (best[0] is None or size < best[2]):
                        best = (ids, False, size)
                    continue
                if ids is None:
                    return None, False, 0
                parts.append(ids)
                exact = exact and child_exact
                total += size
            return best if op == F_AND else (chain.from_iterable(parts), exact, total)

        return (yield from steps(f, False))

    def number_matches(self, f, limit: int | None) -> list[int] | None:
        """A phone's number lookup whole, in one call: the ids that match `f`, an equality of a number attribute
        or an OR of them, in candidate_steps' order, each once, at most `limit` (None: all). None for any other
        filter, an OR of more than LOOKUPS_PER_STEP, a crowded tail, more than NUMBER_CHECKS candidates to check
        (told before any is), or a merge under way: the search then takes candidate_steps' way, in steps. A
        phone's search is cold between its requests, and the generators and checks of a search that runs in
        slices cost it a third of its time."""
        items = f[1] if f[0] == F_OR else (f,)
        if not items or len(items) > LOOKUPS_PER_STEP or self._taken is not None:
            return None
        lookups = []  # (where the item's attribute is in a blob's header, its number, the number's candidates)
        checks, number, ids = 0, None, None
        for item in items:
            if item[0] != F_EQ:
                return None
            key = ALIAS.get(item[1], item[1])
            if key not in NUMBER_KEYS:
                return None
            if item[2] != number:  # a phone asks for one number in each attribute: its tail is read once
                number = item[2]
                ids = self.tails.candidates(number)
                if ids is None:
                    return None
            checks += len(ids)
            lookups.append((2 * (FOLDED_AT + AT[key] - 1), number, ids))
        if checks > NUMBER_CHECKS:
            return None
        blobs = self.blobs
        found: list[int] = []
        for at, number, ids in lookups:
            for i in ids:
                blob = blobs.get(i)
                if blob is not None and i not in found and _has_number(blob, at, number):  # found: NUMBER_CHECKS ids at most
                    found.append(i)
                    if len(found) == limit:
                        return found
        return found

    def _lookup(self, f, sized: bool) -> tuple[Iterable[int] | None, bool, int]:
        """candidate_steps' answer for a filter item that is no AND nor OR."""
        op = f[0]
        if op not in (F_EQ, F_SUB) or f[1] is None:
            return None, False, 0
        key = ALIAS.get(f[1], f[1])
        if key not in AT:
            return None, False, 0
        if op == F_EQ:
            value = f[2]
            if key in NUMBER_KEYS:  # by its last characters, then checked here (which makes the lookup exact)
                ids = self.tails.candidates(value)
                if ids is None:  # a Crowd: this attribute's contacts with the tail only
                    ids, _, size = lookup(self.reversed[key], value[::-1][:TAIL], False, False, sized)
                else:
                    size = len(ids)
                return _same_number(self, self.version, ids, 2 * (FOLDED_AT + AT[key] - 1), value), True, size
            return lookup(self.keys[key], value, True, True, sized)
        initial, anys, final = f[2], f[3], f[4]
        if initial:
            if key in NUMBER_KEYS:
                national = number_prefix_national(initial)
                if national is None:
                    return None, False, 0
                return lookup(self.keys[key], national, False, not anys and not final and not initial.startswith("00"), sized)
            return lookup(self.keys[key], initial, False, not anys and not final, sized)
        if key in NUMBER_KEYS:
            if final:
                tail = final[::-1]
                return lookup(self.reversed[key], tail, False, not anys, sized)
            return None, False, 0
        pieces = list(anys) + ([final] if final else [])
        piece = max(pieces, key=len) if pieces else ""
        if len(piece) < 2 or key not in self.grams:
            return None, False, 0
        grams = self.grams[key]
        ids, size = grams.candidates(piece)
        if len(pieces) == 1 and not final:  # "*typed*": exact as it is (a gram's posting), or checked here in the blob's bytes
            if grams.exact(piece):
                return iter(ids), True, size
            contains, version = BlobAccess(self).contains(key, piece), self.version
            # once the directory changed, the search checks every candidate against the whole filter: one that no
            # longer has the piece here may have it in another attribute an OR's lookup has passed
            return (i if contains(i) or self.version != version else NOT_A_MATCH for i in ids), True, size
        return iter(ids), False, size

    def answer(self, id_: int, selection) -> bytes | None:
        """The SearchResultEntry body of a contact for an attribute selection (cached), None if it is gone."""
        return self.answers_of((id_,), selection)[0]

    def answers_of(self, ids: Sequence[int], selection) -> list[bytes | None]:
        """The SearchResultEntry bodies of contacts (`ids`, each once: the cache's count is kept by them) for an
        attribute selection (None: a contact gone, or an id of none), cached: those cached taken by one call, the
        others made and cached with the selection's lookups done once for all (a phone's 50 answers not cached
        cost about 5 us each when made one by one)."""
        answers = self.answers.get(selection.key)
        bodies = list(map(answers.get, ids)) if answers is not None else [None] * len(ids)
        if all(bodies):  # a body is never empty: all cached
            return bodies
        if answers is None:
            if len(self.answers) >= 8:  # selections cached at once (phones use one or two)
                self._forget_answers(next(iter(self.answers)))
            answers = self.answers[selection.key] = {}
        blobs, plan, answered = self.blobs, self._plan_of(selection), self.answered
        for n, id_ in enumerate(ids):
            if bodies[n] is not None or (blob := blobs.get(id_)) is None:
                continue
            if plan.__class__ is _Cuts:  # a phone's selection: cut here, with no call per answer but the framing
                ends = plan.ends.unpack_from(blob)
                parts = []
                for start, end in plan.spans:  # a loop, not a comprehension: no function made per answer
                    parts.append(blob[ends[start]:ends[end]])
                body = _framed(blob[HEAD:ends[0]], b"".join(parts))
            else:
                body = self._body(id_, blob, plan, selection)
            if answered >= MAX_ANSWERS:
                self.answered = answered
                self._evict()
                answered = self.answered
            bodies[n] = answers[id_] = body
            answered += 1
        self.answered = answered
        return bodies

    def _plan_of(self, selection) -> object:
        plan = self._plans.get(selection.key)
        if plan is None:
            if len(self._plans) >= 64:
                self._plans.clear()
            plan = self._plans[selection.key] = _plan(selection)
        return plan

    def _body(self, id_: int, blob: bytes, plan, selection) -> bytes:
        """A contact's SearchResultEntry body for a plan that is not _Cuts (those `answers_of` cuts itself): its DN
        element and the attributes `plan` cuts from its blob or makes."""
        ends = HEADER.unpack_from(blob)
        if plan is _WHOLE_ENTRY:
            attributes = selection.encode(self.entry(id_))
        else:
            parts = []
            for part in plan:
                if part.__class__ is tuple:
                    parts.append(blob[ends[part[0]]:ends[part[1]]])
                elif part is _DISPLAY:
                    parts.append(display_from_cn(blob[ends[0]:ends[1]]))
                elif part is _UID:
                    parts.append(partial_attribute(UID_TYPE, str(id_)))
                else:
                    parts.append(part)
            attributes = b"".join(parts)
        return _framed(blob[HEAD:ends[0]], attributes)

    def _forget_answers(self, key: tuple) -> None:
        self.answered -= len(self.answers.pop(key))

    def _evict(self) -> None:
        """Drop the oldest eighth of the cached answers (dicts keep insertion order)."""
        drop = MAX_ANSWERS // 8
        for answers in list(self.answers.values()):
            oldest = list(islice(answers, drop))
            for id_ in oldest:
                del answers[id_]
            self.answered -= len(oldest)
            drop -= len(oldest)
            if drop <= 0:
                return


def _numbers(blob: bytes | None) -> list[str]:
    """A contact's folded numbers (none for no blob)."""
    if blob is None:
        return []
    return [number for key in NUMBER_KEYS if (number := folded_value(blob, key)) is not None]


def _framed(dn: bytes, attributes: bytes) -> bytes:
    """A SearchResultEntry body: the DN element, then the attributes' SEQUENCE (short lengths from a table)."""
    n = len(attributes)
    length = ber.SHORT_LENGTHS[n] if n < 0x100 else ber.encode_length(n)
    n += len(dn) + 1 + len(length)
    return b"".join((b"\x64", ber.SHORT_LENGTHS[n] if n < 0x100 else ber.encode_length(n), dn, b"\x30", length, attributes))


def _holds(ids: array, id_: int) -> bool:
    """Whether an ascending array of ids holds `id_` (a bisection)."""
    at = bisect_left(ids, id_)
    return at < len(ids) and ids[at] == id_


def _without(ids: array, left_out: Iterable[int]) -> array:
    """An ascending array of ids without those of `left_out` (a few): copied in slices, not id by id."""
    cuts = sorted(at for i in left_out if (at := bisect_left(ids, i)) < len(ids) and ids[at] == i)
    kept, start = array("i"), 0
    for at in cuts:
        kept += ids[start:at]
        start = at + 1
    kept += ids[start:]
    return kept


def _merged_ids(a: array, b: array) -> array:
    """Two ascending arrays of ids merged, in slices of the longer between the ids of the shorter: a few ids
    into many cost a bisection each, where a merge id by id (heapq) held the loop 45 ms for 150,000."""
    if len(a) < len(b):
        a, b = b, a
    merged, start = array("i"), 0
    for id_ in b:
        at = bisect_left(a, id_, start)
        merged += a[start:at]
        merged.append(id_)
        start = at
    merged += a[start:]
    return merged


def _has_number(blob: bytes, at: int, number: str) -> bool:
    """Whether a contact's folded number (its end offsets at `at` in the blob's header) is `number` (same_number):
    compile_filter's equality of numbers, without compiling it per lookup."""
    start, end = PAIR.unpack_from(blob, at)
    return end > start and same_number(blob[start:end].decode(), number)


def _same_number(directory: Directory, version: int, ids: Iterable[int], at: int, number: str) -> Iterator[int]:
    """The ids (the candidates of the number's tail: NumberTails) whose folded number is `number` (_has_number),
    NOT_A_MATCH for each other candidate. Once the directory changed (from `version`, as the search began), every
    candidate is given: the search checks each against the whole filter (a number moved to another attribute, which
    an OR's lookup has passed, still matches). While a merge reads, the tails hold contacts it made that are in no
    other index nor in `order` yet (their DN without the namesakes' "+uid=" still to be found): those are left out,
    as a scan leaves them."""
    blobs = directory.blobs
    for i in ids:
        blob = blobs.get(i)
        if blob is not None:
            if directory._made is None and directory._taken is not None and not _holds(directory.order, i):
                yield NOT_A_MATCH  # made by a merge still reading
                continue
            if _has_number(blob, at, number):
                yield i
                continue
        yield i if directory.version != version else NOT_A_MATCH


class BlobAccess:
    """How compile_filter's predicates read a contact of a Directory, by id."""

    def __init__(self, directory: Directory):
        self.directory = directory
        self._id, self._blob, self._entry = 0, None, None  # the contact `entry` made last: its id, blob and Entry
        self._values: dict[str, Callable[[int], tuple[str, ...]]] = {}  # `values` of each type, one for all the items

    def values(self, key: str) -> Callable[[int], tuple[str, ...]]:
        blobs = self.directory.blobs
        key = ALIAS.get(key, key)
        if key in AT:
            values = self._values.get(key)
            if values is not None:
                return values
            at = 2 * (FOLDED_AT + AT[key] - 1)
            unpack = PAIR.unpack_from
            last = [0, None, ()]  # the id, blob and values read last: a filter's items over one type read them in turn

            def values(id_: int) -> tuple[str, ...]:
                blob = blobs.get(id_)
                if blob is None:
                    return ()
                if id_ == last[0] and blob is last[1]:  # a change gives the contact a new blob
                    return last[2]
                start, end = unpack(blob, at)
                found = (blob[start:end].decode(),) if end > start else ()
                last[:] = id_, blob, found
                return found
            self._values[key] = values
            return values
        if key == "uid":
            return lambda id_: (str(id_),) if id_ in blobs else ()
        if key == "objectclass":
            return lambda id_: PERSON_CLASSES_FOLDED if id_ in blobs else ()
        return lambda id_: ()

    def present(self, key: str) -> Callable[[int], bool]:
        values = self.values(key)
        return lambda id_: bool(values(id_))

    def contains(self, key: str, piece: str) -> Callable[[int], bool] | None:
        """"*piece*": the value's UTF-8 bytes searched in place, nothing decoded."""
        key = ALIAS.get(key, key)
        if key not in AT or not piece:
            return None
        blobs, needle = self.directory.blobs, piece.encode()
        at = 2 * (FOLDED_AT + AT[key] - 1)
        unpack = PAIR.unpack_from

        def contains(id_: int) -> bool:
            blob = blobs.get(id_)
            if blob is None:
                return False
            start, end = unpack(blob, at)
            return end > start and blob.find(needle, start, end) >= 0
        return contains

    def entry(self, id_: int) -> Entry | None:
        """The contact as an Entry, made once for the filter's items that read it one after another (an OR of 15
        extensible matches made every contact's 15 times). Kept while the contact's blob is the same object (a
        change gives it a new one; a merge adds contacts without changing the directory's version)."""
        blob = self.directory.blobs.get(id_)
        if blob is None:
            return None
        if id_ != self._id or blob is not self._blob:
            self._id, self._blob, self._entry = id_, blob, self.directory.entry(id_)
        return self._entry

