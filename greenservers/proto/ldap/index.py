"""The directory's storage and index structures (sans-IO): contact blobs, sorted keys in packed blocks, gram
postings (3- and 4-character pieces), and the steps that build and merge them a slice of work at a time.

A contact is ONE immutable `bytes` blob (`make_blob`): a header of uint16 end
offsets, the encoded DN, each attribute's encoded PartialAttribute and each
attribute's folded value, in KEYS order. `SortedKeys` holds (key, id) pairs
in (key, id) order in blocks of about BLOCK (one str of the keys, an array of
their offsets, an array of the ids); a change puts a new block in the place
of one (never changes a block), in lists copied first only while an iterator
holds them (copy-on-write), so an iterator goes on over the blocks it
started with. `Grams` are array postings, append-only between
compactions. The `*_steps` generators do large work (sorting, merging) in
units of about a millisecond, yielding between them.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from heapq import merge as heap_merge
from itertools import accumulate, chain, islice

from .. import ber
from .dn import escape_rdn_value
from .entries import contact_values, encode_attribute
from .schema import ATTRIBUTE_TYPES, K_NUMBER, PERSON_CLASSES, national_form

KEYS = ("cn", "sn", "givenname", "mail", "o", "telephonenumber", "mobile", "homephone", "ipphone")
NUMBER_KEYS = tuple(k for k in KEYS if ATTRIBUTE_TYPES[k][1] == K_NUMBER)
NAME_KEYS = tuple(k for k in KEYS if k not in NUMBER_KEYS)
GRAM_KEYS = ("cn", "sn")  # the names phones search with "*typed*"; other names' substrings are scanned
ALIAS = {"displayname": "cn"}  # displayName's value is always cn's
AT = {k: i for i, k in enumerate(KEYS)}
HEADER = struct.Struct("<" + "H" * (1 + 2 * len(KEYS)))  # ends of: DN, encoded attributes, folded values
HEAD = HEADER.size
FOLDED_AT = 1 + len(KEYS)  # header index of the first folded value's end
PAIR = struct.Struct("<HH")
TOP = "\U0010ffff"
BLOCK = 128  # pairs per block: a change rewrites one block of about this many
RUN_STEPS = 4  # keys of a run checked one by one before its block's last key and a bisection
PIECE = 32  # keys of a packed block split at once when its pairs are read in order
TAIL = 5  # a number's equality candidates share its last 5 characters: a national number has at least 6
# (same_number), so at least 5 remain after its 0, common to both forms
MAX_ANSWERS = 60_000  # encoded answers cached (about 220 bytes each with their place in the cache: 13 MiB)
MAX_SOUNDS = 50_000  # folded values whose Soundex codes are cached
OBJECTCLASS_ENCODED = encode_attribute("objectClass", PERSON_CLASSES)
_CN_TYPE = ber.octets("cn")
_DISPLAY_TYPE = ber.octets("displayName")
UID_TYPE = ber.octets("uid")
_NO_IDS = array("i")


def partial_attribute(type_element: bytes, value: str) -> bytes:
    """PartialAttribute of one value (the build makes about a million: no general tlv())."""
    v = value.encode()
    inner = b"\x04" + ber.encode_length(len(v)) + v
    body = type_element + b"\x31" + ber.encode_length(len(inner)) + inner
    return b"\x30" + ber.encode_length(len(body)) + body


_TYPE_ELEMENTS = {k: ber.octets(ATTRIBUTE_TYPES[k][0]) for k in KEYS}


def make_blob(contact, namesake: bool, base: str) -> bytes:
    """A contact's blob: header, DN element, encoded attributes, folded values (see the module's docstring)."""
    values, folded = contact_values(contact)
    rdn = "cn=" + escape_rdn_value(values["cn"][0])
    if namesake:
        rdn += "+uid=" + str(contact.id)
    parts = [ber.octets(f"{rdn},{base}")]
    parts += [partial_attribute(_TYPE_ELEMENTS[k], values[k][0]) if k in values else b"" for k in KEYS]
    parts += [folded[k][0].encode() if k in folded else b"" for k in KEYS]
    ends = list(accumulate(map(len, parts), initial=HEAD))[1:]
    return HEADER.pack(*ends) + b"".join(parts)


def folded_value(blob: bytes, key: str) -> str | None:
    """The folded value of `key` (one of KEYS) in a blob, None when the contact has none."""
    start, end = PAIR.unpack_from(blob, 2 * (FOLDED_AT + AT[key] - 1))
    return blob[start:end].decode() if end > start else None


def blob_dn(blob: bytes) -> str:
    end = HEADER.unpack_from(blob)[0]
    _, s, e = ber.read_header(blob, HEAD, end)
    return blob[s:e].decode()


def with_dn(blob: bytes, dn: str) -> bytes:
    ends = HEADER.unpack_from(blob)
    element = ber.octets(dn)
    shift = len(element) - (ends[0] - HEAD)
    return HEADER.pack(*(x + shift for x in ends)) + element + blob[ends[0]:]


def display_from_cn(cn_attribute: bytes) -> bytes:
    """displayName's PartialAttribute: cn's, with the type renamed (their values are always equal)."""
    _, s, e = ber.read_header(cn_attribute, 0, len(cn_attribute))
    body = _DISPLAY_TYPE + cn_attribute[s + len(_CN_TYPE):e]
    return b"\x30" + ber.encode_length(len(body)) + body


def raw_value(attribute: bytes) -> str:
    """The one value of a PartialAttribute made by _partial_attribute."""
    _, s, e = ber.read_header(attribute, 0, len(attribute))
    _, ts, te = ber.read_header(attribute, s, e)
    _, ss, se = ber.read_header(attribute, te, e)
    _, vs, ve = ber.read_header(attribute, ss, se)
    return attribute[vs:ve].decode()


# -- sorted keys in packed blocks ------------------------------------------------------


class SortedKeys:
    """(key, id) pairs in (key, id) order, in blocks of about BLOCK: per block one "\\0"-joined str of its
    keys, an array of their offsets and an array of their ids.

    A block is never changed in place: a change puts a new block in its place.
    The lists of heads and blocks are changed in place unless an iterator
    (`range`, `pairs`, `merged_steps`) goes on over them: then they are copied
    first (copy-on-write), and the iterator keeps the lists it started with.
    """

    __slots__ = ("heads", "blocks", "readers")

    def __init__(self):
        self.heads: list[tuple[str, int]] = []
        self.blocks: list[tuple[str, array, array]] = []
        self.readers = 0  # iterators going on over the lists as they are now

    def __len__(self) -> int:
        return sum(len(ids) for _, _, ids in self.blocks)

    def hold(self) -> tuple[list[tuple[str, int]], list[tuple[str, array, array]]]:
        """The lists of heads and blocks, for an iterator that goes on over them between changes: they are
        left as they are (a change copies them) until `release(blocks)`."""
        self.readers += 1
        return self.heads, self.blocks

    def release(self, blocks: list) -> None:
        if self.blocks is blocks:  # else a change has copied them already
            self.readers -= 1

    def _own(self) -> tuple[list[tuple[str, int]], list[tuple[str, array, array]]]:
        """The lists of heads and blocks, to be changed in place: copied first if an iterator holds them."""
        if self.readers:
            self.heads, self.blocks, self.readers = list(self.heads), list(self.blocks), 0
        return self.heads, self.blocks

    def pairs(self) -> Iterator[tuple[str, int]]:
        heads, blocks = self.hold()
        try:
            for block in blocks:
                yield from block_pairs(block)
        finally:
            self.release(blocks)

    def starting(self, prefix: str, whole: bool = False, held: tuple | None = None) -> Iterator[int]:
        """Ids of the keys that start with `prefix` (`whole`: that are `prefix`), in key order, lazily.

        The first key is found by one str.find in the block where it may be (no key holds "\\0": a key
        starts after one), the end of a run within a block by `run_end` (a few keys, then a bisection: a
        common prefix's run fills the block); a run that ends in its first block (an exact lookup's one
        or few ids) is a slice of its ids, one that goes on iterates over the lists as they are now (a
        change copies them meanwhile), or over those `held` (from `hold()`, let go here or by the run)."""
        heads, blocks = held if held is not None else (self.heads, self.blocks)
        own = blocks if held is not None else None  # held lists, let go once read (by the run, if it goes on)
        if "\0" in prefix or not blocks:
            self._let_go(own)
            return iter(())
        b = max(0, bisect_left(heads, (prefix, -1)) - 1)
        text, offsets, ids = blocks[b]
        needle = prefix + "\0" if whole else prefix
        if text.startswith(needle):
            j = 0
        else:
            at = text.find("\0" + needle)
            if at >= 0:
                j = bisect_left(offsets, at + 1)
            else:  # none in this block: they could only begin the next one
                b += 1
                if b >= len(blocks) or not blocks[b][0].startswith(needle):
                    self._let_go(own)
                    return iter(())
                text, offsets, ids = blocks[b]
                j = 0
        n = len(ids)
        # an exact lookup's one id ends its run without a call
        k = j + 1 if j + 1 < n and not text.startswith(needle, offsets[j + 1]) else run_end(text, offsets, n, j, needle)
        if k < n or b + 1 == len(blocks) or not blocks[b + 1][0].startswith(needle):
            self._let_go(own)
            return iter(ids[j:k])
        run = self._run(blocks if own is not None else self.hold()[1], b + 1, needle)
        first = next(run)  # its try entered: its finally lets the lists go however the run ends
        return chain(ids[j:], first, chain.from_iterable(run))

    def _let_go(self, blocks: list | None) -> None:
        if blocks is not None:
            self.release(blocks)

    def _run(self, blocks: list, b: int, needle: str) -> Iterator[array]:
        """The ids of the keys that start with `needle` from block b's first one on (which does), a block's at a
        time (an array each: no step of this generator per id)."""
        try:
            while b < len(blocks):
                text, offsets, ids = blocks[b]
                if not text.startswith(needle):
                    return
                k = run_end(text, offsets, len(ids), 0, needle)
                yield ids[:k]
                if k < len(ids):
                    return
                b += 1
        finally:
            self.release(blocks)

    def count(self, prefix: str, whole: bool, cap: int) -> int:
        """How many keys start with `prefix` (`whole`: are it), counted up to `cap`."""
        return sum(1 for _ in islice(self.starting(prefix, whole), cap))

    def add(self, key: str, id_: int) -> None:
        pair = (key, id_)
        heads, blocks = self._own()
        if not blocks:
            heads.append(pair)
            blocks.append(pack([key], [id_]))
            return
        b = max(0, bisect_right(heads, pair) - 1)
        block = blocks[b]
        j = position(block, pair)
        if len(block[2]) < 2 * BLOCK:
            blocks[b] = inserted(block, j, key, id_)
            if j == 0:
                heads[b] = pair
            return
        keys, ids = unpack(block)  # split in two (once in about BLOCK adds to a block)
        keys.insert(j, key)
        ids.insert(j, id_)
        half = len(keys) // 2
        heads[b:b + 1] = [(keys[0], ids[0]), (keys[half], ids[half])]
        blocks[b:b + 1] = [pack(keys[:half], ids[:half]), pack(keys[half:], ids[half:])]

    def remove(self, key: str, id_: int) -> None:
        pair = (key, id_)
        b = max(0, bisect_right(self.heads, pair) - 1)
        if b >= len(self.blocks):
            return
        block = self.blocks[b]
        text, offsets, ids = block
        j = position(block, pair)
        if j >= len(ids) or ids[j] != id_ or text[offsets[j]:offsets[j + 1] - 1] != key:
            return
        heads, blocks = self._own()
        if len(ids) == 1:
            del heads[b], blocks[b]
            return
        blocks[b] = removed(block, j)
        if j == 0:
            heads[b] = (text[offsets[1]:offsets[2] - 1], ids[1])


def pack(keys: list[str], ids: list[int]) -> tuple[str, array, array]:
    offsets = array("I", accumulate((len(k) + 1 for k in keys), initial=0))
    return "\0".join(keys) + "\0", offsets, array("i", ids)


def block_pairs(block: tuple[str, array, array]) -> Iterator[tuple[str, int]]:
    """A packed block's (key, id) pairs, lazily: its keys split a piece at a time (no list of them all)."""
    text, offsets, ids = block
    for start in range(0, len(ids), PIECE):
        end = min(start + PIECE, len(ids))
        yield from zip(text[offsets[start]:offsets[end] - 1].split("\0"), ids[start:end], strict=True)


def run_end(text: str, offsets: array, n: int, j: int, needle: str) -> int:
    """Where the run of keys that start with `needle` from key j on (which does) ends in a packed block of n
    keys: a few steps, then the last key (the run may fill the block), then a bisection (keys are sorted, so
    those that start with `needle` are side by side)."""
    k, stop = j + 1, min(n, j + RUN_STEPS)
    while k < stop:
        if not text.startswith(needle, offsets[k]):
            return k
        k += 1
    if k >= n or text.startswith(needle, offsets[n - 1]):
        return n
    high = n - 1  # does not start with it
    while k < high:
        middle = (k + high) // 2
        if text.startswith(needle, offsets[middle]):
            k = middle + 1
        else:
            high = middle
    return k


def unpack(block: tuple[str, array, array]) -> tuple[list[str], list[int]]:
    text, _, ids = block
    return text[:-1].split("\0"), ids.tolist()


def position(block: tuple[str, array, array], pair: tuple[str, int]) -> int:
    """Where `pair` is, or would go, in a block (bisect_left, without unpacking it)."""
    text, offsets, ids = block
    key, id_ = pair
    j, high = 0, len(ids)
    while j < high:
        middle = (j + high) // 2
        found = text[offsets[middle]:offsets[middle + 1] - 1]
        if found < key or (found == key and ids[middle] < id_):
            j = middle + 1
        else:
            high = middle
    return j


def inserted(block: tuple[str, array, array], j: int, key: str, id_: int) -> tuple[str, array, array]:
    """A new block: `block` with (key, id_) at position j."""
    text, offsets, ids = block
    at, length = offsets[j], len(key) + 1
    new_offsets = offsets[:j + 1]
    new_offsets.extend(map(length.__add__, offsets[j:]))
    new_ids = ids[:]
    new_ids.insert(j, id_)
    return text[:at] + key + "\0" + text[at:], new_offsets, new_ids


def removed(block: tuple[str, array, array], j: int) -> tuple[str, array, array]:
    """A new block: `block` without its pair at position j."""
    text, offsets, ids = block
    start, end = offsets[j], offsets[j + 1]
    new_offsets = offsets[:j]
    new_offsets.extend(map((start - end).__add__, offsets[j + 1:]))
    new_ids = ids[:]
    del new_ids[j]
    return text[:start] + text[end:], new_offsets, new_ids


# -- gram postings -------------------------------------------------------------------------


class Grams:
    """Postings of one attribute's grams, its 3- and 4-character pieces (array('i') each), append-only between compactions.

    A piece of 3 characters is looked up by its own posting, a longer one by the
    rarest posting of its 4-grams: a trigram's posting alone would be a large
    superset (at 100,000 contacts, "*mano*" had 1,015 candidates by its rarest
    trigram for 1 match, and checking them took most of a millisecond).
    Postings are supersets: the search verifies each id against the contact's
    current value, so an id left by a change or a delete costs one check (a
    gram's own posting with no stale id counted is taken as it is: `exact`). A
    posting a quarter stale is listed in `untidy`, and `tidy_steps` rebuilds it a
    slice at a time. A 2-character piece chains the postings of the trigrams that
    hold it; values shorter than 3 characters are listed in `short` (under "").
    """

    __slots__ = ("postings", "stale", "by_pair", "untidy")

    def __init__(self):
        self.postings: dict[str, array] = {"": array("i")}
        self.stale: dict[str, int] = {}
        self.by_pair: dict[str, list[str]] = {}
        self.untidy: set[str] = set()

    @property
    def short(self) -> array:
        return self.postings[""]

    @staticmethod
    def grams(value: str) -> set[str]:
        if len(value) < 3:
            return {""}
        return {value[j:j + n] for n in (3, 4) for j in range(len(value) - n + 1)}

    def add(self, value: str, id_: int) -> None:
        postings = self.postings
        for gram in self.grams(value):
            posting = postings.get(gram)
            if posting is None:
                posting = postings[gram] = array("i")
                if len(gram) == 3:  # a 2-character piece is in a trigram of every value that holds it
                    for pair in {gram[:2], gram[1:]}:
                        self.by_pair.setdefault(pair, []).append(gram)
            posting.append(id_)  # in place: an iterator over it goes on safely

    def removed(self, value: str) -> None:
        """`value` is no longer an id's: its postings hold one more stale id."""
        for gram in self.grams(value):
            stale = self.stale[gram] = self.stale.get(gram, 0) + 1
            if stale * 4 > len(self.postings.get(gram, _NO_IDS)):
                self.untidy.add(gram)

    def tidy_steps(self, holds: Callable[[int, str], bool]) -> Iterator[None]:
        """Rebuild the postings listed as untidy without their stale ids (`holds(id, gram)`), a slice per step.
        Contacts may be changed between the steps: an id appended to a posting meanwhile is checked too (no
        step ends between the last check and the posting's replacement)."""
        while self.untidy:
            gram = self.untidy.pop()
            posting = self.postings.get(gram)
            if posting is None:
                continue
            kept: set[int] = set()
            made_stale = self.stale.get(gram, 0)  # ids these are of are checked away below
            start = 0
            while True:
                end = min(start + TIDY_STEP, len(posting))
                kept.update(i for i in posting[start:end] if holds(i, gram))
                start = end
                if start >= len(posting):
                    break
                yield
            self.postings[gram] = array("i", sorted(kept))  # a new array: a search goes on over the old one
            # an id made stale meanwhile may have been checked before it was: still counted (exact() relies on it)
            left = self.stale.pop(gram, 0) - made_stale
            if left > 0:
                self.stale[gram] = left
            yield

    def exact(self, piece: str) -> bool:
        """Whether candidates(piece) are exactly the ids that hold `piece` now: a piece of 3 or 4 characters is a
        gram, and its own posting holds no stale id (`stale` counts, per gram, the values that lost it since its
        posting was built, less those a tidy checked away; not those made stale while the tidy ran)."""
        return 3 <= len(piece) <= 4 and not self.stale.get(piece)

    def candidates(self, piece: str) -> tuple[Iterable[int], int]:
        """Ids that may hold `piece` (2 or more characters), and about how many."""
        if len(piece) >= 3:
            n = min(len(piece), 4)
            rarest = min((self.postings.get(piece[j:j + n], _NO_IDS) for j in range(len(piece) - n + 1)), key=len)
            return rarest, len(rarest)
        lists = [self.short] + [self.postings[g] for g in self.by_pair.get(piece, ())]
        return chain.from_iterable(lists), sum(map(len, lists))


CROWD = 64  # contacts a tail holds at most: beyond, a tail shared by many (a switchboard's number) is a crowd


class NumberTails:
    """Contacts by the last TAIL characters of each of their numbers, in any number attribute: the candidates of
    a number's equality in one probe (each is then checked against the whole number: same_number).

    The reversed keys answered it before: a block of keys and several objects read per attribute, for a phone's
    OR of three numbers 42 us of search warm (30 us with this), more with the caches cold between a phone's
    requests. A tail of digits is an int below 10**TAIL, so the tails are a table indexed by it: `heads` gives
    each tail's first entry, and an entry is an id and the next entry of its tail, in two arrays (`ids`,
    `links`; entry n at n - 1, 0 ending a chain). 100,000 contacts' 147,620 numbers take 1.6 MiB this way, where a
    dict of ints and arrays took 11 MiB. Entries a removal frees are chained in `free` and used again. The tails
    that are no digits (a number with letters: rare) are a dict of lists.

    The key conflates tails that read as the same int ("04711", "4711", "*4711" all 4711; "00000" and "0" both
    0): that only adds candidates to check. A tail more than CROWD contacts share (a switchboard's number on every
    contact) is a crowd: only how many numbers have it is kept (`crowds`), its equality is looked up in the
    attribute's reversed keys instead (its contacts there only, where the tail gives every contact that has it in
    any attribute), and a change costs a count. It stays a crowd until its last number goes (its ids are not kept
    to go back). A contact with two numbers of one tail is held twice (its search gives it once)."""

    __slots__ = ("heads", "ids", "links", "free", "lettered", "crowds")

    def __init__(self):
        self.heads = array("i")  # 10**TAIL zeros, made with the first number
        self.ids, self.links, self.free = array("i"), array("i"), 0
        self.lettered: dict[str, list[int]] = {}
        self.crowds: dict[int | str, int] = {}

    @staticmethod
    def key(number: str) -> int | str:
        tail = number[-TAIL:]
        return int(tail) if tail.isdecimal() else tail  # isdecimal: what int() reads, in any script

    def candidates(self, number: str) -> list[int] | None:
        """The ids that may hold `number`, as they are now, ascending (a search answers in the order of its lookups:
        the same order however the chain was made); None if its tail is a crowd (look it up in the reversed keys)."""
        key = self.key(number)
        if key in self.crowds:
            return None
        if key.__class__ is str:
            return sorted(self.lettered.get(key, ()))
        if not self.heads:
            return []
        ids, links, found, entry = self.ids, self.links, [], self.heads[key]
        while entry:
            found.append(ids[entry - 1])
            entry = links[entry - 1]
        found.sort()  # a chain is newest first
        return found

    def held(self) -> dict[int | str, list[int]]:
        """Every tail but the crowds with its ids, ascending (what a check compares)."""
        held = {key: self.candidates(key) for key in self.lettered}
        for key, head in enumerate(self.heads):
            if head:
                held[key] = self.candidates(str(key))
        return held

    def change(self, id_: int, old: list[str], new: list[str]) -> None:
        """A contact's numbers go from `old` to `new`: it leaves the tails it no longer has and joins those it now
        has, each counted (two numbers, one tail: held twice); a tail it keeps is not touched (a switchboard's number
        on every contact costs nothing when a mobile changes)."""
        gone = [self.key(number) for number in old]
        come = []
        for number in new:
            key = self.key(number)
            if key in gone:
                gone.remove(key)
            else:
                come.append(key)
        for key in gone:
            self._remove(key, id_)
        for key in come:
            self._add(key, id_)

    def _add(self, key: int | str, id_: int) -> None:
        crowds = self.crowds
        if key in crowds:
            crowds[key] += 1
        elif key.__class__ is str:
            ids = self.lettered.setdefault(key, [])
            if len(ids) < CROWD:
                ids.append(id_)
            else:
                crowds[key] = len(self.lettered.pop(key)) + 1
        else:
            heads, links = self.heads, self.links
            if not heads:
                heads.frombytes(bytes(4 * 10**TAIL))
            count, entry = 0, heads[key]
            while entry:
                count, entry = count + 1, links[entry - 1]
            if count >= CROWD:
                self._release(key)
                crowds[key] = count + 1
                return
            entry = self.free
            if entry:
                self.free = links[entry - 1]
                self.ids[entry - 1], links[entry - 1] = id_, heads[key]
            else:
                self.ids.append(id_)
                links.append(heads[key])
                entry = len(links)
            heads[key] = entry

    def _remove(self, key: int | str, id_: int) -> None:
        crowds = self.crowds
        if key in crowds:
            crowds[key] -= 1
            if not crowds[key]:
                del crowds[key]
        elif key.__class__ is str:
            ids = self.lettered.get(key)
            if ids is not None and id_ in ids:
                ids.remove(id_)
                if not ids:
                    del self.lettered[key]
        elif self.heads:
            heads, ids, links = self.heads, self.ids, self.links
            previous, entry = 0, heads[key]
            while entry and ids[entry - 1] != id_:
                previous, entry = entry, links[entry - 1]
            if not entry:
                return
            if previous:
                links[previous - 1] = links[entry - 1]
            else:
                heads[key] = links[entry - 1]
            links[entry - 1], self.free = self.free, entry

    def _release(self, key: int) -> None:
        """A tail's entries back to the free chain (it became a crowd)."""
        links, entry = self.links, self.heads[key]
        self.heads[key] = 0
        while entry:
            following = links[entry - 1]
            links[entry - 1], self.free = self.free, entry
            entry = following

    def clear(self) -> None:
        self.heads, self.ids, self.links, self.free = array("i"), array("i"), array("i"), 0
        self.lettered.clear()
        self.crowds.clear()


TIDY_STEP = 1024  # posting ids checked between two yields of tidy_steps


def lookup(keys: SortedKeys, prefix: str, whole: bool, exact: bool, sized: bool) -> tuple[Iterable[int], bool, int]:
    """The keys that start with `prefix` (`whole`: that are it) as candidates (looked up when iterated: `Lookup`),
    with a size estimate if `sized` (counted up to 64: enough to pick an AND's rarest child)."""
    return Lookup(keys, prefix, whole), exact, keys.count(prefix, whole, 64) if sized else 0


class Lookup:
    """The ids of the keys that start with `prefix` (`whole`: that are it), as the keys were when the search began
    (their lists are held: a change copies them meanwhile), found when iterated (`starting`): an OR's lookups are
    chained, and a phone's size limit is often reached before its second is read (a name's prefix in cn, then
    in sn), which then costs nothing. Found later, a contact a change moved from a later lookup to an earlier
    one already read is still found (in the keys as they were), and one taken twice once. A lookup never
    iterated keeps its hold until the next change of the keys copies their lists (once)."""

    __slots__ = ("keys", "prefix", "whole", "held")

    def __init__(self, keys: SortedKeys, prefix: str, whole: bool):
        self.keys, self.prefix, self.whole, self.held = keys, prefix, whole, keys.hold()

    def __iter__(self) -> Iterator[int]:
        held, self.held = self.held, None
        if held is None:  # iterated again: the keys as they are now
            return self.keys.starting(self.prefix, self.whole)
        return self.keys.starting(self.prefix, self.whole, held)


# -- the directory --------------------------------------------------------------------------


MERGE_STEP = 16  # contacts made (about 35 us each, a page read from the book included), or values added to grams, between two yields
# of merge_steps: 32 made steps of 1.2 ms, and slices of APPLY_SLICE (1 ms) ran to 2-3 ms
SORT_STEP = 512  # pairs sorted by one call, or merged, between two yields (about half a millisecond)
PACK_STEP = 2  # blocks packed between two yields (about 0.35 ms each)
MERGED_WORK = 16  # blocks kept (a block packed again counts 8) between two yields of merged_steps (about 0.5 ms)


def national_key(blob: bytes, key: str) -> str | None:
    value = folded_value(blob, key)
    return None if value is None else national_form(value)


def reversed_key(blob: bytes, key: str) -> str | None:
    value = folded_value(blob, key)
    return None if value is None else value[::-1]


def sorted_steps(ids: array):
    """Steps that sort an array of ids, a slice per call, then merged; returns the sorted array."""
    runs = []
    for start in range(0, len(ids), SORT_STEP):
        runs.append(array("i", sorted(ids[start:start + SORT_STEP])))  # an array: no list for the collector to scan
        yield
    merged = array("i")
    for n, item in enumerate(heap_merge(*runs), 1):
        merged.append(item)
        if n % SORT_STEP == 0:
            yield
    return merged


def sorted_runs_steps(ids: array, key_of: Callable[[int], str | None]):
    """Steps that make the (key, id) pairs of `ids` (those with a key) in sorted runs of up to SORT_STEP, a
    run per call; returns the runs, packed like blocks (`pack`), for `merged_pairs`. Packed, not lists of
    pairs: the cyclic collector's young collections scanned each pair of the runs made so far (two
    objects each, no longer in the CPU's caches: 1,000-3,000 of them took 1.6-7 ms with the loop held)."""
    runs = []
    for start in range(0, len(ids), SORT_STEP):
        run = sorted([(k, i) for i in ids[start:start + SORT_STEP] if (k := key_of(i)) is not None])
        if run:
            runs.append(pack([k for k, _ in run], [i for _, i in run]))
        del run  # its pairs are freed now, while they are in the caches
        yield
    return runs


def merged_pairs(runs: list[tuple[str, array, array]]) -> Iterator[tuple[str, int]]:
    """The pairs of sorted packed runs, merged in order, lazily."""
    return heap_merge(*map(block_pairs, runs))


class _Ahead:
    """A sorted iterator read ahead by one: what lies below a bound is taken, the rest waits."""

    __slots__ = ("items", "next")
    _DONE = object()

    def __init__(self, items: Iterable):
        self.items = iter(items)
        self.next = next(self.items, self._DONE)

    def take(self, bound, most: int) -> list:
        """Up to `most` items below `bound` (None: no bound)."""
        taken = []
        while len(taken) < most and self.next is not self._DONE and (bound is None or self.next < bound):
            taken.append(self.next)
            self.next = next(self.items, self._DONE)
        return taken

    def below(self, bound) -> Iterator:
        """The items below `bound` (None: all), lazily."""
        while self.next is not self._DONE and (bound is None or self.next < bound):
            item, self.next = self.next, next(self.items, self._DONE)
            yield item


def merged_steps(keys: SortedKeys, runs_steps):
    """Steps that make the new pairs (`runs_steps`: sorted_runs_steps), then merge them (sorted packed runs, merged
    lazily) into new SortedKeys, block by block: a block no new pair falls into is kept as it is, one that some do
    is packed again with them; returns (the new SortedKeys, or `keys` itself when there are none; the runs).

    `keys` is held from the first step on: a change made meanwhile copies its lists, and is not in the new keys
    (the caller does it again to them)."""
    heads, blocks = keys.hold()
    try:
        runs = yield from runs_steps
        if not runs:
            return keys, runs
        return (yield from _merged_steps(heads, blocks, runs)), runs
    finally:
        keys.release(blocks)


def _merged_steps(heads: list[tuple[str, int]], blocks: list[tuple[str, array, array]], runs: list[tuple[str, array, array]]):
    new = _Ahead(merged_pairs(runs))
    merged = SortedKeys()
    work = 0
    for b, block in enumerate(blocks):
        bound = heads[b + 1] if b + 1 < len(blocks) else None
        falling = new.take(bound, BLOCK + 1)
        work += 8 if falling else 1  # a block packed again costs about eight kept ones
        if work >= MERGED_WORK:
            work = 0
            yield
        if not falling:
            merged.heads.append(heads[b])
            merged.blocks.append(block)
            continue
        old = zip(*unpack(block), strict=True)
        if len(falling) <= BLOCK:
            yield from packed_steps(sorted([*old, *falling]), merged)  # timsort: two runs
        else:  # many (an import's numbers, all above the old ones): merged lazily, a block at a time
            yield from packed_steps(heap_merge(old, chain(falling, new.below(bound))), merged)
    if not blocks:
        yield from packed_steps(new.below(None), merged)
    return merged


def packed_steps(pairs: Iterable[tuple[str, int]], into: SortedKeys):
    """Append sorted `pairs` to `into` in blocks of BLOCK, yielding every PACK_STEP blocks."""
    pairs = iter(pairs)
    n = 0
    while chunk := list(islice(pairs, BLOCK)):
        into.heads.append(chunk[0])
        into.blocks.append(pack([k for k, _ in chunk], [i for _, i in chunk]))
        n += 1
        if n % PACK_STEP == 0:
            yield


