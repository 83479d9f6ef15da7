"""Distinguished names (RFC 4514): parsed to a normalized form (attribute keys, folded values, or the values as
written for exact matching), escaped for RDNs."""

from __future__ import annotations

import functools
import re

from .codes import INVALID_DN_SYNTAX, MAX_DN
from .schema import ALIASES, ATTRIBUTE_TYPES, fold_for, fold_name

# -- distinguished names (RFC 4514) ---------------------------------------------

_DN_SPECIAL = set(',+"\\<>;=')
_NEEDS_ESCAPE = re.compile(r'[,+"\\<>;=\0]|^[ #]| $')


class DnError(ValueError):
    result_code = INVALID_DN_SYNTAX


def escape_rdn_value(value: str) -> str:
    if not _NEEDS_ESCAPE.search(value):
        return value
    out = []
    for i, ch in enumerate(value):
        if ch in _DN_SPECIAL or (ch in " #" and i == 0) or (ch == " " and i == len(value) - 1):
            out.append("\\" + ch)
        elif ch == "\0":
            out.append("\\00")
        else:
            out.append(ch)
    return "".join(out)


def parse_dn(dn: str, folded: bool = True) -> tuple[tuple[tuple[str, str], ...], ...]:
    """Normalized DN: a tuple of RDNs, each a sorted tuple of (attribute key, folded value); with `folded`
    false, each value as it is written, unescaped (what an exact matching rule compares)."""
    if not dn.strip():
        return ()
    if len(dn) > MAX_DN:
        raise DnError(f"DN of {len(dn)} characters is over the limit of {MAX_DN}")
    rdns: list[tuple[tuple[str, str], ...]] = []
    avas: list[tuple[str, str]] = []
    i, n = 0, len(dn)
    while True:
        # attribute type
        j = dn.find("=", i)
        if j < 0:
            raise DnError(f"no '=' in {dn!r}")
        name = dn[i:j].strip().lower()
        if not name:
            raise DnError(f"empty attribute type in {dn!r}")
        name = ALIASES.get(name, name)
        i = j + 1
        value: list[str] = []
        written = 0  # pieces of `value` escaped, hex-coded or quoted: spaces among them are the value's own
        raw_bytes = bytearray()
        quoted = False
        while i < n and dn[i] == " ":
            i += 1
        if i < n and dn[i] == '"':
            quoted = True
            i += 1
        while i < n:
            ch = dn[i]
            if quoted and ch == '"':
                quoted = False
                i += 1
                continue
            if not quoted and ch in ",+;":
                break
            escaped = quoted
            if ch == "\\":
                if i + 1 >= n:
                    raise DnError(f"dangling escape in {dn!r}")
                pair = dn[i + 1:i + 3]
                if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
                    raw_bytes.append(int(pair, 16))
                    i += 3
                    continue
                ch = dn[i + 1]
                i += 1
                escaped = True
            if raw_bytes:
                value.append(raw_bytes.decode("utf-8", "replace"))
                raw_bytes.clear()
                written = len(value)
            value.append(ch)
            if escaped:
                written = len(value)
            i += 1
        if raw_bytes:
            value.append(raw_bytes.decode("utf-8", "replace"))
            written = len(value)
        if quoted:
            raise DnError(f"unterminated quote in {dn!r}")
        if folded:
            folder = fold_for(name) if name in ATTRIBUTE_TYPES else fold_name
            avas.append((name, folder("".join(value))))
        else:
            while len(value) > written and value[-1] == " ":  # the spaces before a separator are not the value's
                value.pop()
            avas.append((name, "".join(value)))
        if i >= n or dn[i] in ",;":
            rdns.append(tuple(sorted(avas)))
            avas = []
            if i >= n:
                break
        i += 1
    return tuple(rdns)


# phones search the same base every time; a DN is immutable, so its parse can be shared
parse_dn_cached = functools.lru_cache(maxsize=1024)(parse_dn)
