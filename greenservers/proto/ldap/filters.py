"""Search filters (RFC 4511 §4.5.1.7): decoded from BER within a budget of units, compiled to a three-valued predicate.

`decode_filter` gives a tuple per item ((F_EQ, key, folded value, raw), ...);
every item costs the units checking an entry against it costs (`item_units`),
and every ASSERTION_UNIT bytes of values one more, within MAX_FILTER_ITEMS.
`compile_filter` is the one compiler: its predicate reads an entry through an
accessor (EntryAccess for Entry objects; the directory's reads blobs by id).
"""

from __future__ import annotations

from collections.abc import Callable

from .. import ber
from ..ber import BerError
from .codes import (
    ASSERTION_UNIT,
    F_AND,
    F_APPROX,
    F_EQ,
    F_EXT,
    F_GE,
    F_LE,
    F_NOT,
    F_OR,
    F_PRESENT,
    F_SUB,
    MAX_ASSERTION,
    MAX_DESCRIPTION,
    MAX_FILTER_DEPTH,
    MAX_FILTER_ITEMS,
)
from .entries import Entry
from .schema import (
    _NUMBER_FORMATTING,
    ATTRIBUTE_TYPES,
    FOLDER_OF,
    FOLDERS,
    K_NAME,
    K_NUMBER,
    MATCHING_RULES,
    RULE_DEFAULT,
    RULE_EXACT,
    RULE_SUBSTRING,
    approx_match,
    attribute_key,
    attribute_key_sent,
    fold_for,
    fold_name,
    number_prefix_match,
    number_prefix_national,
    padded_sounds,
    same_number,
    sound_codes,
)

# -- filters: decode (§4.5.1.7) and compile to a three-valued predicate ----------


def _text(data: bytes, start: int, stop: int) -> str:
    return data[start:stop].decode("utf-8", "replace")


def decode_filter(data: bytes, tag: int, start: int, stop: int, depth: int, budget: list[int]):
    """A filter as a tuple: (F_AND, [..]), (F_EQ, key, folded value, raw), (F_SUB, key, initial, anys, final), ...

    `budget` is [what is left of MAX_FILTER_ITEMS, the units its assertion values took]: every
    item takes what checking an entry against it costs (item_units), and every ASSERTION_UNIT
    bytes of assertion values one more (folding them), so both checking an entry and decoding
    stay bounded. What the items took (`decoded_units`) is the filter's `filter_units`.
    """
    budget[0] -= 1  # _spend(budget, 1), written out: every item passes here
    if budget[0] < 0:
        raise BerError(_TOO_MANY_ITEMS)
    if depth > MAX_FILTER_DEPTH:
        raise BerError(f"filter nested deeper than {MAX_FILTER_DEPTH}")
    if tag == F_EQ and 2 <= stop - start < 0x80 and data[start] == ber.OCTET_STRING:
        # the phones' item, short lengths (one byte each): read in place (the general path reads the same;
        # a value shorter than ASSERTION_UNIT counts no unit, and is far below MAX_ASSERTION)
        value_at = start + 2 + data[start + 1]
        if value_at + 2 <= stop and data[value_at] == ber.OCTET_STRING and value_at + 2 + data[value_at + 1] == stop:
            key = attribute_key_sent(data[start + 2:value_at])
            if stop - value_at - 2 < ASSERTION_UNIT:
                raw = data[value_at + 2:stop].decode("utf-8", "replace")
            else:
                raw = _assertion(data, value_at + 2, stop, budget)
            return (F_EQ, None, raw, raw) if key is None else (F_EQ, key, FOLDER_OF[key](raw), raw)
    if tag == F_SUB and 2 <= stop - start < 0x80 and data[start] == ber.OCTET_STRING:
        item = _short_substring(data, start, stop)
        if item is not None:
            return item
    if tag in (F_AND, F_OR):
        items = []
        pos = start
        while pos < stop:  # each item's budget is spent as it is decoded: a message of empty items ends at the first over it
            t, s, pos = ber.read_header(data, pos, stop)
            items.append(decode_filter(data, t, s, pos, depth + 1, budget))
        if not items:  # RFC 4526 absolute true/false
            return (F_AND, []) if tag == F_AND else (F_OR, [])
        return (tag, items)
    if tag == F_NOT:
        t, s, e = ber.read_header(data, start, stop)
        if e != stop:
            raise BerError("not: more than one filter")
        return (F_NOT, decode_filter(data, t, s, e, depth + 1, budget))
    if tag == F_PRESENT:
        return (F_PRESENT, attribute_key(_description(data, start, stop)))
    if tag in (F_EQ, F_GE, F_LE, F_APPROX):
        s1, e1 = ber.expect(data, start, stop, ber.OCTET_STRING, "attributeDesc")
        s2, e2 = ber.expect(data, e1, stop, ber.OCTET_STRING, "assertionValue")
        if e2 != stop:
            raise BerError("trailing bytes in attribute value assertion")
        key = attribute_key(_description(data, s1, e1))
        raw = _assertion(data, s2, e2, budget)
        if key is None:
            return (tag, None, raw, raw)
        if tag == F_APPROX and ATTRIBUTE_TYPES[key][1] == K_NAME:
            return _spent((tag, key, sound_codes(raw), raw), budget)
        return (tag, key, fold_for(key)(raw), raw)
    if tag == F_SUB:
        s1, e1 = ber.expect(data, start, stop, ber.OCTET_STRING, "attributeDesc")
        s2, e2 = ber.expect(data, e1, stop, 0x30, "substrings")
        key = attribute_key(_description(data, s1, e1))
        folder = fold_for(key) if key else fold_name
        initial, anys, final = "", [], ""
        parts = ber.children(data, s2, e2, budget[0] + 1, _TOO_MANY_ITEMS)
        if not parts:
            raise BerError("substrings filter without substrings")
        for index, (t, s, e) in enumerate(parts):
            piece = _assertion(data, s, e, budget)
            piece = folder(piece) if not (key and ATTRIBUTE_TYPES[key][1] == K_NUMBER) or t == 0x80 else piece.translate(_NUMBER_FORMATTING)
            if t == 0x80 and index == 0:
                initial = piece
            elif t == 0x81:
                if piece:
                    anys.append(piece)
            elif t == 0x82 and index == len(parts) - 1:
                final = piece
            else:
                raise BerError(f"substring choice 0x{t:02x} out of place")
        return _spent((F_SUB, key, initial, tuple(anys), final), budget)
    if tag == F_EXT:
        rule = key = None
        value, dn_attributes = "", False
        for t, s, e in ber.children(data, start, stop, 4, "extensible match: more than four elements"):
            if t == 0x81:
                rule = _description(data, s, e).strip().lower()
            elif t == 0x82:
                key = _description(data, s, e)
            elif t == 0x83:
                value = _assertion(data, s, e, budget)
            elif t == 0x84:
                dn_attributes = ber.read_boolean(data, s, e)
            else:
                raise BerError(f"extensible match: unexpected tag 0x{t:02x}")
        if rule is None and key is None:
            raise BerError("extensible match needs a matching rule or a type")
        resolved = attribute_key(key) if key is not None else None
        return _spent((F_EXT, rule, resolved, value, dn_attributes, key is not None), budget)
    raise BerError(f"unknown filter choice 0x{tag:02x}")


def _short_substring(data: bytes, start: int, stop: int) -> tuple | None:
    """The phones' substring item, one piece ("X*" or "*X*") of a known attribute, every length one byte, read in
    place; None for any other (the general path reads it, and reads this one the same: its one piece, shorter than
    ASSERTION_UNIT, counts no unit, and the item costs the one unit its caller spent)."""
    at = start + 2 + data[start + 1]  # the substrings' SEQUENCE
    if at + 4 > stop or data[at] != 0x30 or at + 2 + data[at + 1] != stop:
        return None
    choice, length = data[at + 2], data[at + 3]
    if choice not in (0x80, 0x81) or not 0 < length < ASSERTION_UNIT or at + 4 + length != stop:
        return None
    key = attribute_key_sent(data[start + 2:at])
    if key is None or (choice == 0x81 and ATTRIBUTE_TYPES[key][1] == K_NUMBER):  # a number's inner piece is not folded
        return None
    piece = FOLDER_OF[key](data[at + 4:stop].decode("utf-8", "replace"))
    if not piece:  # folded away (spaces): the general path drops an empty inner piece
        return None
    return (F_SUB, key, piece, (), "") if choice == 0x80 else (F_SUB, key, "", (piece,), "")


_TOO_MANY_ITEMS = (f"filter has more than {MAX_FILTER_ITEMS} items (substring pieces, approximate words, untyped extensible "
                   f"matches and every {ASSERTION_UNIT} bytes of values count too)")


def _spend(budget: list[int], units: int) -> None:
    budget[0] -= units
    if budget[0] < 0:
        raise BerError(_TOO_MANY_ITEMS)


def _spent(item: tuple, budget: list[int]) -> tuple:
    _spend(budget, item_units(item) - 1)  # its first unit was spent when it was begun
    return item


def item_units(f) -> int:
    """What checking one entry against the filter item `f` costs (AND, OR and NOT: 1 each, besides
    their items): a substring filter a unit per piece, an approximate match one per word, an
    extensible match without a type one per attribute type it tries, and two for the DN's values."""
    op = f[0]
    if op == F_SUB:
        return max(1, bool(f[2]) + len(f[3]) + bool(f[4]))
    if op == F_APPROX and isinstance(f[2], tuple):
        return max(1, len(f[2]))
    if op == F_EXT:
        _, _, key, _, dn_attributes, has_type = f
        return (1 if key or has_type else len(ATTRIBUTE_TYPES)) + (2 if dn_attributes else 0)
    return 1


def filter_units(f) -> int:
    """What checking one entry against filter `f` costs, in the units MAX_FILTER_ITEMS counts."""
    if f[0] in (F_AND, F_OR):
        return 1 + sum(filter_units(c) for c in f[1])
    if f[0] == F_NOT:
        return 1 + filter_units(f[1])
    return item_units(f)


def false_without(f, present) -> bool:
    """True when filter `f` is False (not Undefined) for every entry that has values of none of its attribute
    types but those in `present`: each of its value items over another type is False, and ANDs and ORs
    of them are too. Conservative (False: it may match, compile and check it); it reads no entry."""
    op = f[0]
    if op == F_OR:
        for child in f[1]:  # a value item checked here: a phone's OR of them costs no call per item
            if child[0] in _VALUE_ITEMS:
                if child[1] is None or child[1] in present:
                    return False
            elif not false_without(child, present):
                return False
        return True  # an empty OR is False too (RFC 4526)
    if op == F_AND:
        for child in f[1]:  # noqa: SIM110 (loops, not any(generator): see compile_filter)
            if false_without(child, present):
                return True
        return False
    return op in _VALUE_ITEMS and f[1] is not None and f[1] not in present


_VALUE_ITEMS = frozenset((F_EQ, F_SUB, F_GE, F_LE, F_APPROX))  # False for an entry without values of their type


def decode_budget() -> list[int]:
    """A new budget for decode_filter: [MAX_FILTER_ITEMS left, no assertion units taken]."""
    return [MAX_FILTER_ITEMS, 0]


def decoded_units(budget: list[int]) -> int:
    """What checking an entry against the filter decoded with `budget` costs (its filter_units)."""
    return MAX_FILTER_ITEMS - budget[0] - budget[1]


def _assertion(data: bytes, start: int, stop: int, budget: list[int]) -> str:
    if stop - start > MAX_ASSERTION:
        raise BerError(f"assertion value of {stop - start} bytes is over the limit of {MAX_ASSERTION}")
    units = (stop - start) // ASSERTION_UNIT
    if units:
        _spend(budget, units)
        budget[1] += units
    return _text(data, start, stop)


def _description(data: bytes, start: int, stop: int) -> str:
    if stop - start > MAX_DESCRIPTION:
        raise BerError(f"attribute description or rule of {stop - start} bytes is over the limit of {MAX_DESCRIPTION}")
    return _text(data, start, stop)


def _substring_match(value: str, initial: str, anys: tuple, final: str) -> bool:
    pos, end = 0, len(value)
    if initial:
        if not value.startswith(initial):
            return False
        pos = len(initial)
    if final:
        if not value.endswith(final) or end - len(final) < pos:
            return False
        end -= len(final)
    for piece in anys:
        found = value.find(piece, pos, end)
        if found < 0:
            return False
        pos = found + len(piece)
    return True


def _always(result):
    return lambda entry: result


class EntryAccess:
    """How compile_filter's predicates read an Entry (the Root DSE, the base entry, a reference's entries).

    A Directory gives its own (directory.BlobAccess) for its contacts, read by id.
    """

    @staticmethod
    def values(key: str) -> Callable[[Entry], tuple[str, ...]]:
        empty: tuple = ()
        return lambda entry: entry.folded.get(key, empty)

    @staticmethod
    def present(key: str) -> Callable[[Entry], bool]:
        return lambda entry: key in entry.values

    @staticmethod
    def contains(key: str, piece: str) -> Callable[[Entry], bool] | None:
        return None  # the general substring match serves

    @staticmethod
    def entry(entry: Entry) -> Entry:
        return entry


ENTRIES = EntryAccess()


def compile_filter(f, sounds: Callable[[str], str] = padded_sounds, access=ENTRIES) -> Callable[[object], bool | None]:
    """A predicate entry -> True / False / None (Undefined, RFC 4511 §4.5.1.7).

    Everything that depends only on the filter is computed here, once; what depends
    on a value is folded with the entry (or, for approximate matching, by `sounds`,
    which a Directory answers from a cache: once per value, not per evaluation).
    `access` reads an entry's folded values (EntryAccess; a Directory's reads its
    blobs by id), and gives the whole Entry where a match needs it (extensible).
    """
    op = f[0]
    if op in (F_AND, F_OR):
        parts = [compile_filter(c, sounds, access) for c in f[1]]
        decisive = op == F_OR  # the result that ends the loop: True for OR, False for AND

        def match_all(entry):
            result = not decisive
            for part in parts:
                r = part(entry)
                if r is decisive:
                    return decisive
                if r is None:
                    result = None
            return result
        return match_all
    if op == F_NOT:
        inner = compile_filter(f[1], sounds, access)

        def match_not(entry):
            r = inner(entry)
            return None if r is None else not r
        return match_not
    if op == F_PRESENT:
        key = f[1]
        if key is None:
            return _always(False)
        if key == "objectclass":
            return _always(True)
        return access.present(key)
    if op == F_EXT:
        match = _compile_extensible(*f[1:])
        whole = access.entry
        return lambda entry: (lambda e: e is not None and match(e))(whole(entry))
    key = f[1]
    if key is None:
        return _always(None)
    kind = ATTRIBUTE_TYPES[key][1]
    get = access.values(key)
    # loops, not any(generator): a generator made per value checked would cost more than the check
    if op == F_SUB:
        initial, anys, final = f[2], f[3], f[4]
        if kind == K_NUMBER and initial and not anys and not final:
            national = number_prefix_national(initial)

            def match_number_prefix(entry):
                for v in get(entry):  # noqa: SIM110 (see above: no generator per value)
                    if number_prefix_match(v, initial, national):
                        return True
                return False
            return match_number_prefix
        if not initial and not final and len(anys) == 1:
            contains = access.contains(key, anys[0])
            if contains is not None:
                return contains

        def match_substrings(entry):
            for v in get(entry):  # noqa: SIM110 (see above: no generator per value)
                if _substring_match(v, initial, anys, final):
                    return True
            return False
        return match_substrings
    value = f[2]
    if op == F_EQ or (op == F_APPROX and kind != K_NAME):
        if kind == K_NUMBER:
            def match_number(entry):
                for v in get(entry):  # noqa: SIM110 (see above: no generator per value)
                    if same_number(v, value):
                        return True
                return False
            return match_number
        return lambda entry: value in get(entry)
    if op == F_APPROX:  # value: the assertion's codes (sound_codes)
        def match_approx(entry):
            for v in get(entry):  # noqa: SIM110 (see above: no generator per value)
                if approx_match(sounds(v), value):
                    return True
            return False
        return match_approx
    if op == F_GE:
        def match_ge(entry):
            for v in get(entry):  # noqa: SIM110 (see above: no generator per value)
                if v >= value:
                    return True
            return False
        return match_ge

    def match_le(entry):
        for v in get(entry):  # noqa: SIM110 (see above: no generator per value)
            if v <= value:
                return True
        return False
    return match_le


def _compile_extensible(rule, key, value, dn_attributes, has_type):
    """Extensible match (§4.5.1.7.7): a known rule compares like equality (or exactly, or as substrings)."""
    how = MATCHING_RULES.get(rule, None) if rule is not None else RULE_DEFAULT
    if how is None or (has_type and key is None):
        return _always(None)  # unknown rule or attribute type: Undefined
    needles = {kind: folder(value) for kind, folder in FOLDERS.items()}  # the assertion folded for each kind, once

    def test(k: str, raw_values: tuple, folded_values: tuple) -> bool:
        if how == RULE_EXACT:
            return value in raw_values
        kind = ATTRIBUTE_TYPES[k][1]
        needle = needles[kind]
        # loops, not any(generator): an untyped match tests every attribute of every contact
        if how == RULE_SUBSTRING:
            for v in folded_values:  # noqa: SIM110
                if needle in v:
                    return True
            return False
        if kind == K_NUMBER:
            for v in folded_values:  # noqa: SIM110
                if same_number(v, needle):
                    return True
            return False
        return needle in folded_values

    def match(entry):
        if key:
            if key in entry.values and test(key, entry.values[key], entry.folded[key]):
                return True
        else:
            folded = entry.folded
            for k, raw_values in entry.values.items():
                if test(k, raw_values, folded[k]):
                    return True
        if dn_attributes:
            # an exact rule compares the DN's values as they are written; the others, folded
            for rdn in entry.written_dn if how == RULE_EXACT else entry.ndn:
                for k, dn_value in rdn:
                    if (key is None or k == key) and k in ATTRIBUTE_TYPES and test(k, (dn_value,), (dn_value,)):
                        return True
        return False
    return match
