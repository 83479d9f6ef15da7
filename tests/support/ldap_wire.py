"""Test and benchmark helpers: build LDAP requests (RFC 4515 filter strings included) and parse responses.

Independent of the server's decoder on purpose: requests are encoded here
with the BER encoder only, and responses are parsed generically.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from greenservers.proto import ber


def message(message_id: int, op: bytes, controls: bytes = b"") -> bytes:
    return ber.tlv(0x30, ber.integer(message_id) + op + controls)


def bind(message_id: int, name: str, password: str, version: int = 3) -> bytes:
    return message(message_id, ber.tlv(0x60, ber.integer(version) + ber.octets(name) + ber.octets(password, 0x80)))


def unbind(message_id: int) -> bytes:
    return message(message_id, b"\x42\x00")


def control(oid: str, value: bytes | None = None, critical: bool = False) -> bytes:
    body = ber.octets(oid) + (ber.boolean(True) if critical else b"") + (ber.octets(value) if value is not None else b"")
    return ber.tlv(0x30, body)


def paged(size: int, cookie: bytes = b"", critical: bool = False) -> bytes:
    return control("1.2.840.113556.1.4.319", ber.sequence(ber.integer(size), ber.octets(cookie)), critical)


def sort(*keys: str, critical: bool = False) -> bytes:
    """Sort keys like "sn" or "-sn" (reverse)."""
    items = [ber.sequence(ber.octets(k.lstrip("-")), *([ber.boolean(True, 0x81)] if k.startswith("-") else [])) for k in keys]
    return control("1.2.840.113556.1.4.473", ber.sequence(*items), critical)


def search(message_id: int, filter_text: str = "(objectClass=*)", base: str = "dc=pbx", scope: int = 2,
           attributes=(), size_limit: int = 0, time_limit: int = 0, types_only: bool = False,
           controls: list[bytes] | None = None) -> bytes:
    op = ber.tlv(0x63, ber.octets(base) + ber.enumerated(scope) + ber.enumerated(0) + ber.integer(size_limit)
                 + ber.integer(time_limit) + ber.boolean(types_only) + encode_filter(filter_text)
                 + ber.sequence(*[ber.octets(a) for a in attributes]))
    return message(message_id, op, ber.tlv(0xA0, b"".join(controls)) if controls else b"")


def extended(message_id: int, oid: str) -> bytes:
    return message(message_id, ber.tlv(0x77, ber.octets(oid, 0x80)))


# -- RFC 4515 filter strings ----------------------------------------------------


def _unescape(text: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "\\":
            out.append(int(text[i + 1:i + 3], 16))
            i += 3
        else:
            out += text[i].encode()
            i += 1
    return bytes(out)


def encode_filter(text: str) -> bytes:
    encoded, rest = _filter(text.strip())
    if rest:
        raise ValueError(f"trailing text {rest!r}")
    return encoded


def _filter(text: str) -> tuple[bytes, str]:
    if not text.startswith("("):
        raise ValueError(f"filter must start with '(': {text!r}")
    kind = text[1]
    if kind in "&|":
        items, rest = [], text[2:]
        while rest.startswith("("):
            item, rest = _filter(rest)
            items.append(item)
        return ber.tlv(0xA0 if kind == "&" else 0xA1, b"".join(items)), rest[1:]
    if kind == "!":
        item, rest = _filter(text[2:])
        return ber.tlv(0xA2, item), rest[1:]
    depth, end = 0, 0
    for end, ch in enumerate(text):  # noqa: B007 (where it stopped is used after the loop)
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            break
    item, rest = text[1:end], text[end + 1:]
    for op, tag in ((">=", 0xA5), ("<=", 0xA6), ("~=", 0xA8), (":=", 0xA9), ("=", None)):  # noqa: B007 (used after)
        if op in item:
            attr, value = item.split(op, 1)
            break
    if tag == 0xA9:
        parts = attr.split(":")
        body = b""
        typ, rule, dn = parts[0], None, False
        for p in parts[1:]:
            if p.lower() == "dn":
                dn = True
            elif p:
                rule = p
        if rule:
            body += ber.octets(rule, 0x81)
        if typ:
            body += ber.octets(typ, 0x82)
        body += ber.octets(_unescape(value), 0x83)
        if dn:
            body += ber.boolean(True, 0x84)
        return ber.tlv(0xA9, body), rest
    if tag is not None:
        return ber.tlv(tag, ber.octets(attr) + ber.octets(_unescape(value))), rest
    if value == "*":
        return ber.octets(attr, 0x87), rest
    if "*" in value:
        pieces = value.split("*")
        subs = []
        if pieces[0]:
            subs.append(ber.octets(_unescape(pieces[0]), 0x80))
        subs += [ber.octets(_unescape(p), 0x81) for p in pieces[1:-1] if p]
        if pieces[-1]:
            subs.append(ber.octets(_unescape(pieces[-1]), 0x82))
        return ber.tlv(0xA4, ber.octets(attr) + ber.sequence(*subs)), rest
    return ber.tlv(0xA3, ber.octets(attr) + ber.octets(_unescape(value))), rest


# -- responses ------------------------------------------------------------------------


@dataclass
class Response:
    message_id: int
    tag: int
    dn: str = ""
    attributes: dict[str, list[str]] = field(default_factory=dict)
    code: int | None = None
    diagnostic: str = ""
    matched_dn: str = ""
    name: str = ""  # extended response name
    value: bytes = b""  # extended response value
    controls: dict[str, bytes] = field(default_factory=dict)


def parse_responses(data: bytes) -> list[Response]:
    out = []
    pos = 0
    while pos < len(data):
        _, s, e = ber.read_header(data, pos, len(data))
        pos = e
        a, b = ber.expect(data, s, e, 0x02, "id")
        tag, c, d = ber.read_header(data, b, e)
        response = Response(ber.read_integer(data, a, b), tag)
        if tag == 0x64:
            x, y = ber.expect(data, c, d, 0x04, "dn")
            response.dn = data[x:y].decode()
            p, q = ber.expect(data, y, d, 0x30, "attrs")
            for _, i, j in ber.children(data, p, q):
                kids = ber.children(data, i, j)
                name = data[kids[0][1]:kids[0][2]].decode()
                response.attributes[name] = [data[m:n].decode() for _, m, n in ber.children(data, kids[1][1], kids[1][2])]
        else:
            kids = ber.children(data, c, d)
            response.code = ber.read_integer(data, kids[0][1], kids[0][2])
            response.matched_dn = data[kids[1][1]:kids[1][2]].decode()
            response.diagnostic = data[kids[2][1]:kids[2][2]].decode()
            for t, m, n in kids[3:]:
                if t == 0x8A:
                    response.name = data[m:n].decode()
                elif t == 0x8B:
                    response.value = data[m:n]
        if d < e:
            t, m, n = ber.read_header(data, d, e)
            for _, i, j in ber.children(data, m, n):
                kids = ber.children(data, i, j)
                oid = data[kids[0][1]:kids[0][2]].decode()
                response.controls[oid] = data[kids[-1][1]:kids[-1][2]] if len(kids) > 1 else b""
        out.append(response)
    return out


def paged_cookie(value: bytes) -> tuple[int, bytes]:
    _, s, e = ber.read_header(value, 0, len(value))
    a, b = ber.expect(value, s, e, 0x02, "size")
    c, d = ber.expect(value, b, e, 0x04, "cookie")
    return ber.read_integer(value, a, b), value[c:d]
