"""SNMP v1 agent core, sans-IO: a datagram, its source address and `now` in; the reply or a Dropped event out.

Theory of operation (RFC 1157 §4; BER per X.690 as restricted by RFC 1157 §3.2.2)
-------------------------------------------------------------------------------
Every datagram goes through a fixed pipeline; each step either passes it on
or ends it with a verdict (the verdict names the sensor that counts it and
the log line the shell writes, rate-limited):

1. **Source address** against `snmp_trusted`, before a single byte of the
   datagram is looked at (RFC 1157 §3.2.5 leaves the access policy to the
   agent; an address list is what a phone system's monitoring needs). An IPv4 client
   on a dual-stack socket arrives as ``::ffff:a.b.c.d`` and matches its IPv4
   entry. The answer per source is cached until `snmp_trusted` changes, so a
   flood from an untrusted address costs one dict lookup.  -> UNTRUSTED
2. **Size**: more than MAX_REQUEST octets is not decoded (RFC 1157 §4
   only requires 484).  -> MALFORMED
3. **Envelope skim**: the Message SEQUENCE, `version` and `community`
   (RFC 1157 §4.1) are read with a strict definite-length TLV walker. A
   version other than 0 (v2c = 1, RFC 1901; v3 = 3, RFC 3412) is not
   answered.  -> BAD_VERSION. A community other than `snmp_community` is not
   answered (RFC 1157 §4.1 step 2: "discard", optionally a trap; we send none).
   -> BAD_COMMUNITY. Broken BER anywhere -> MALFORMED.
4. **Bindings decode**: the VarBindList is read with the same strict walker
   (`decode_bindings`: each binding a SEQUENCE of an OBJECT IDENTIFIER and a
   value, sub-identifiers minimal and at most 2**32-1), about 2 us a binding;
   tests check it against pysnmp's decoder. pysnmp's decode of the whole
   message cost 70-130 us a binding: a trusted source varying one arc of 128
   bindings per request held the loop 8-16 ms each. The OIDs of a (PDU type,
   variable-bindings) octet string are kept in a bounded cache keyed by those
   exact octets, so a poller asking the same OIDs every interval skips even
   that; only the request-id differs between such requests, and it is copied
   to the reply verbatim. More than MAX_BINDINGS variables cannot fit in any
   reply: tooBig at once, undecoded.
5. **Dispatch** by PDU tag through PDU_HANDLERS (GetRequest §4.1.2,
   GetNextRequest §4.1.3, SetRequest §4.1.5); any other PDU (a GetResponse
   or Trap sent to us, a v2 PDU in a v1 message) goes to the named fallback
   `_unsupported_pdu`.  -> MALFORMED
6. **Reply**: a GetResponse-PDU. Errors are exceptions that carry their
   wire errorStatus (SnmpError) and are answered with the request's
   bindings echoed unchanged ("of identical form", §4.1.2): noSuchName (2)
   with the index of the first failing variable, readOnly (4) for a SET of
   an existing object (this agent is read-only), tooBig (1) with index 0
   when the reply would exceed MAX_RESPONSE (§4.1.2 (3); if even the echo
   would not fit, with no bindings at all).
7. **Reflection budget**: UDP sources are not proved, so a device that knows
   the community can send requests in a trusted station's name and have the
   replies land on it. A reply's octets beyond twice its request's are
   drawn from a bucket per destination address (REFLECTION_RATE a second,
   REFLECTION_BURST at once) and from one for all (four times those: forged
   sources spread over a trusted network, each a bucket, or evicting a
   victim's bucket from the table, are held by it); a reply the buckets
   cannot pay is withheld (the poller's retry, a second later, is answered).
   A poller's GETs and walks stay within twice their requests and never pay;
   a forged stream of GetNexts over sysDescr gets at most REFLECTION_RATE
   more octets to its victim than it sends.  -> WITHHELD

The reply is encoded with proto.ber's encoder (the LDAP server's too), for
exactly the types this agent sends (INTEGER, OCTET STRING, OBJECT IDENTIFIER,
NULL, Counter, Gauge, TimeTicks; RFC 1155 §3.2.3); tests check it byte for
byte against pysnmp's encoder. The envelope is read with a walker of its own,
stricter than the LDAP decoder (lengths of at most three octets) and
answering with this agent's verdicts.

The MIB view: the MIB-2 system group (RFC 1213 §6.1: sysDescr .. sysServices)
and the sensors subtree (`greenservers.sensors`; deploy/mibs/GREENSERVERS-MIB.txt,
rendered by `render_mib`). Counters are Counter32 (RFC 1155: wrap mod 2**32),
levels Gauge32 (latch at 2**32-1).
"""

from __future__ import annotations

import bisect
import hmac
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..sensors import ENTERPRISE_OID, PRODUCT_OID, SENSORS_OID, Sensor
from .ber import integer as encode_integer, tlv
from .clients import TokenBuckets, plain_address
from .results import Event, Output

MAX_REQUEST = 8192  # octets decoded at most (gevent's own UDP read size)
MAX_RESPONSE = 1472  # octets sent at most: one Ethernet frame, like net-snmp's default
MAX_ARC_OCTETS = 5  # octets of one OID sub-identifier at most: 35 bits hold 2**32-1
MAX_BINDINGS = 128  # more objects than MAX_RESPONSE can hold (each binding we send is >= 15 octets): tooBig, undecoded
MAX_CACHED_REQUESTS = 1024
MAX_CACHED_SOURCES = 4096
REFLECTION_RATE = 65536  # reply octets beyond twice the requests' a destination gets a second (step 7)
REFLECTION_BURST = 4 * REFLECTION_RATE
ALL_DESTINATIONS = "*"  # the key of the bucket every destination draws on too (no address is written so)

MIB2_SYSTEM = (1, 3, 6, 1, 2, 1, 1)
SYS_SERVICES = 72  # RFC 1213: layers 4 (end-to-end) and 7 (applications): 2**3 + 2**6

# verdicts: what became of a datagram (the shell counts by them, SENSOR_OF_VERDICT, and logs them)
ANSWERED = "answered"
UNTRUSTED = "untrusted"
BAD_COMMUNITY = "bad_community"
BAD_VERSION = "bad_version"
MALFORMED = "malformed"
WITHHELD = "withheld"

SENSOR_OF_VERDICT = {
    ANSWERED: "snmp_requests_answered",
    UNTRUSTED: "snmp_rejected_address",
    BAD_COMMUNITY: "snmp_rejected_community",
    BAD_VERSION: "snmp_rejected_version",
    MALFORMED: "snmp_rejected_version",  # its description: "not v1 ... or not decodable"
    WITHHELD: "snmp_replies_withheld",
}

# RFC 1157 §4.1.1 error-status values
NO_ERROR, TOO_BIG, NO_SUCH_NAME, BAD_VALUE, READ_ONLY, GEN_ERR = range(6)

# BER tags (X.690; RFC 1155 application types; RFC 1157 context PDU tags)
TAG_INTEGER, TAG_OCTETS, TAG_NULL, TAG_OID, TAG_SEQUENCE = 0x02, 0x04, 0x05, 0x06, 0x30
TAG_IPADDRESS, TAG_COUNTER, TAG_GAUGE, TAG_TIMETICKS, TAG_OPAQUE = 0x40, 0x41, 0x42, 0x43, 0x44  # RFC 1155 §3.2.3
UNSIGNED_TAGS = frozenset((TAG_COUNTER, TAG_GAUGE, TAG_TIMETICKS))
PDU_GET, PDU_GETNEXT, PDU_RESPONSE, PDU_SET = 0xA0, 0xA1, 0xA2, 0xA3


class SnmpError(Exception):
    """An error answered on the wire: `status` is the RFC 1157 errorStatus, `index` the 1-based variable."""

    status = GEN_ERR

    def __init__(self, index: int = 0, detail: str = ""):
        super().__init__(detail or type(self).__name__)
        self.index = index


class TooBig(SnmpError):
    status = TOO_BIG


class NoSuchName(SnmpError):
    status = NO_SUCH_NAME


class ReadOnly(SnmpError):
    status = READ_ONLY


class Dropped(Event, Exception):
    """The datagram gets no reply; `verdict` says why (the wire code of a silent drop). Raised
    inside the agent, it is also the event the agent returns for the shell to count and log."""

    def __init__(self, verdict: str, detail: str = ""):
        super().__init__(detail)
        self.verdict = verdict
        self.detail = detail

    def __eq__(self, other) -> bool:
        return isinstance(other, Dropped) and (self.verdict, self.detail) == (other.verdict, other.detail)

    __hash__ = None


def verdict_of(outputs: list) -> str:
    """The verdict of a datagram from what the agent returned: ANSWERED, or why it was dropped."""
    first = outputs[0]
    return ANSWERED if isinstance(first, bytes) else first.verdict


# -- BER reading: a strict definite-length TLV walker for the envelope ------


def _tlv(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the TLV at `pos`; Dropped(MALFORMED) if it is not sound."""
    if pos + 2 > end:
        raise Dropped(MALFORMED, "truncated BER header")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise Dropped(MALFORMED, "multi-octet BER tag")
    length = buf[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0:
            raise Dropped(MALFORMED, "indefinite BER length")
        if count > 3 or pos + count > end:
            raise Dropped(MALFORMED, "over-long BER length")
        length = int.from_bytes(buf[pos:pos + count], "big")
        pos += count
    if pos + length > end:
        raise Dropped(MALFORMED, "BER length beyond the datagram")
    return tag, pos, pos + length


def _integer(buf: bytes, pos: int, end: int, what: str, max_octets: int = 5) -> tuple[int, int, int]:
    """(value, TLV start, TLV end) of an INTEGER."""
    tag, start, stop = _tlv(buf, pos, end)
    if tag != TAG_INTEGER or not 1 <= stop - start <= max_octets:
        raise Dropped(MALFORMED, f"bad {what}")
    return int.from_bytes(buf[start:stop], "big", signed=True), pos, stop


@dataclass(frozen=True)
class Envelope:
    """The parts of a v1 message the agent needs before (or instead of) a full decode."""

    community: bytes
    pdu_tag: int
    request_id: bytes  # the whole INTEGER TLV, copied verbatim into the reply
    bindings: bytes  # the whole VarBindList TLV


def skim_version(datagram: bytes) -> tuple[int, int]:
    """The `version` field of a Message (RFC 1157 §4.1, RFC 1901, RFC 3412 §6) and where the rest starts."""
    tag, start, stop = _tlv(datagram, 0, len(datagram))
    if tag != TAG_SEQUENCE or stop != len(datagram):
        raise Dropped(MALFORMED, "not an SNMP message")
    version, _, after = _integer(datagram, start, stop, "version", 2)
    return version, after


def skim_envelope(datagram: bytes, pos: int) -> Envelope:
    """The rest of a v1 message after its version field (which starts at `pos`)."""
    end = len(datagram)
    tag, start, pos = _tlv(datagram, pos, end)
    if tag != TAG_OCTETS:
        raise Dropped(MALFORMED, "bad community")
    community = datagram[start:pos]
    pdu_tag, pdu_start, pdu_end = _tlv(datagram, pos, end)
    if pdu_end != end:
        raise Dropped(MALFORMED, "octets after the PDU")
    if pdu_tag & 0xE0 != 0xA0:  # PDUs are context-specific, constructed
        raise Dropped(MALFORMED, "not a PDU")
    if pdu_tag not in PDU_HANDLERS:
        return Envelope(community, pdu_tag, b"", b"")
    _, rid_start, rid_end = _integer(datagram, pdu_start, pdu_end, "request-id")
    _, _, pos = _integer(datagram, rid_end, pdu_end, "error-status")
    _, _, pos = _integer(datagram, pos, pdu_end, "error-index")
    tag, _, stop = _tlv(datagram, pos, pdu_end)
    if tag != TAG_SEQUENCE or stop != pdu_end:
        raise Dropped(MALFORMED, "bad variable-bindings")
    return Envelope(community, pdu_tag, datagram[rid_start:rid_end], datagram[pos:stop])


def count_bindings(bindings: bytes, most: int = MAX_BINDINGS) -> int:
    """How many TLVs the VarBindList TLV holds, up to `most` + 1 (walks headers only, and no further: 4,000
    empty ones took 1.7 ms)."""
    _, pos, end = _tlv(bindings, 0, len(bindings))
    count = 0
    while pos < end and count <= most:
        _, _, pos = _tlv(bindings, pos, end)
        count += 1
    return count


def decode_bindings(bindings: bytes) -> tuple[tuple[int, ...], ...]:
    """The OIDs a VarBindList TLV (`Envelope.bindings`) asks for, read with the strict walker: each binding a
    SEQUENCE of an OBJECT IDENTIFIER and a value of an SNMP v1 type (a GET's is NULL; this agent uses none).
    Dropped(MALFORMED) on any fault. About 2 us a binding: pysnmp's decode of the message took 70-130 us a
    binding, and a trusted source varying one arc of 128 bindings per request held the loop 8-16 ms each."""
    _, pos, end = _tlv(bindings, 0, len(bindings))
    oids = []
    while pos < end:
        tag, start, pos = _tlv(bindings, pos, end)
        if tag != TAG_SEQUENCE:
            raise Dropped(MALFORMED, "a variable binding is not a SEQUENCE")
        tag, name_start, name_end = _tlv(bindings, start, pos)
        if tag != TAG_OID:
            raise Dropped(MALFORMED, "a variable binding's name is not an OBJECT IDENTIFIER")
        tag, value_start, value_end = _tlv(bindings, name_end, pos)
        if value_end != pos:
            raise Dropped(MALFORMED, "a variable binding holds more than a name and a value")
        check_value(tag, bindings[value_start:value_end])
        oids.append(decode_oid(bindings[name_start:name_end]))
    return tuple(oids)


def check_value(tag: int, content: bytes) -> None:
    """Dropped(MALFORMED) unless `content` is a value of an SNMP v1 type (RFC 1155 §3.2: ObjectSyntax) as `tag` says
    (an OBJECT IDENTIFIER only by its last octet)."""
    if tag == TAG_NULL:
        if content:
            raise Dropped(MALFORMED, "a NULL with content")
    elif tag in (TAG_OCTETS, TAG_OPAQUE):
        pass
    elif tag == TAG_INTEGER:
        if not 1 <= len(content) <= 4:  # INTEGER (-2**31..2**31-1)
            raise Dropped(MALFORMED, "an INTEGER value of no 32-bit size")
    elif tag in UNSIGNED_TAGS:  # Counter, Gauge, TimeTicks: 0..2**32-1
        if not 1 <= len(content) <= 5 or content[0] & 0x80 or (len(content) == 5 and content[0]):
            raise Dropped(MALFORMED, "an unsigned 32-bit value out of range")
    elif tag == TAG_IPADDRESS:
        if len(content) != 4:
            raise Dropped(MALFORMED, "an IpAddress of other than 4 octets")
    elif tag == TAG_OID:  # its last octet ends a sub-identifier; not decoded: no request of ours reads a value
        if not content or content[-1] & 0x80:
            raise Dropped(MALFORMED, "an OBJECT IDENTIFIER value cut short")
    else:
        raise Dropped(MALFORMED, "a variable binding's value is of no SNMP v1 type")


def decode_oid(content: bytes) -> tuple[int, ...]:
    """An OBJECT IDENTIFIER's arcs from its content octets (X.690 §8.19: sub-identifiers in base 128, the
    first one X * 40 + Y), each sub-identifier minimal and at most 2**32-1 (RFC 2578 §3.5)."""
    if not content:
        raise Dropped(MALFORMED, "empty OBJECT IDENTIFIER")
    arcs = []
    value = octets = 0
    for byte in content:
        if octets == 0 and byte == 0x80:
            raise Dropped(MALFORMED, "OBJECT IDENTIFIER sub-identifier not in its shortest form")
        value = value << 7 | byte & 0x7F
        octets += 1
        if byte & 0x80:
            if octets == MAX_ARC_OCTETS:
                raise Dropped(MALFORMED, "OBJECT IDENTIFIER sub-identifier over 2**32-1")
            continue
        if value > 0xFFFFFFFF:
            raise Dropped(MALFORMED, "OBJECT IDENTIFIER sub-identifier over 2**32-1")
        arcs.append(value)
        value = octets = 0
    if octets:
        raise Dropped(MALFORMED, "truncated OBJECT IDENTIFIER")
    first = arcs[0]
    return (first // 40, first % 40, *arcs[1:]) if first < 80 else (2, first - 80, *arcs[1:])


# -- BER writing: exactly the types this agent sends (proto.ber's encoder) -------


def encode_oid(oid: tuple[int, ...]) -> bytes:
    if len(oid) < 2:
        raise ValueError(f"OID {oid!r} has fewer than two arcs")
    content = bytearray([oid[0] * 40 + oid[1]])
    for arc in oid[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        content.extend(reversed(chunk))
    return tlv(TAG_OID, bytes(content))


NULL = bytes((TAG_NULL, 0))
EMPTY_BINDINGS = bytes((TAG_SEQUENCE, 0))

# the SNMP type of a MIB value -> its BER encoder (RFC 1155 §3.2.3)
VALUE_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "octets": lambda v: tlv(TAG_OCTETS, v),
    "integer": encode_integer,
    "oid": encode_oid,
    "timeticks": lambda v: encode_integer(v % 2**32, TAG_TIMETICKS),
    "counter": lambda v: encode_integer(v % 2**32, TAG_COUNTER),  # Counter32 wraps
    "gauge": lambda v: encode_integer(min(max(v, 0), 2**32 - 1), TAG_GAUGE),  # Gauge32 latches
}


SMALL_INTEGERS = [encode_integer(i) for i in range(256)]  # error-status and error-index, ready-made


def encode_response(community: bytes, request_id: bytes, status: int, index: int, bindings: bytes) -> bytes:
    """A whole v1 Message carrying a GetResponse-PDU; `request_id` and `bindings` are encoded TLVs."""
    small = SMALL_INTEGERS
    pdu = tlv(PDU_RESPONSE, request_id + (small[status] if status < 256 else encode_integer(status))
                   + (small[index] if index < 256 else encode_integer(index)) + bindings)
    return tlv(TAG_SEQUENCE, b"\x02\x01\x00" + tlv(TAG_OCTETS, community) + pdu)


# -- the MIB view -------------------------------------------------------------


@dataclass(frozen=True)
class MibObject:
    oid: tuple[int, ...]
    name: str
    syntax: str  # a key of VALUE_ENCODERS
    read: Callable[[Agent, float], Any]
    oid_tlv: bytes = field(init=False, repr=False)  # encoded once: the name part of every binding

    def __post_init__(self):
        object.__setattr__(self, "oid_tlv", encode_oid(self.oid))


def system_group() -> list[MibObject]:
    """RFC 1213 §6.1 system group (sysORTable of RFC 3418 is not kept)."""
    s = MIB2_SYSTEM
    return [
        MibObject(s + (1, 0), "sysDescr", "octets", lambda agent, now: agent.sys_descr),
        MibObject(s + (2, 0), "sysObjectID", "oid", lambda agent, now: PRODUCT_OID),
        MibObject(s + (3, 0), "sysUpTime", "timeticks", lambda agent, now: int((now - agent.started) * 100)),
        MibObject(s + (4, 0), "sysContact", "octets", lambda agent, now: agent.settings.snmp_contact.encode()),
        MibObject(s + (5, 0), "sysName", "octets", lambda agent, now: (agent.settings.snmp_name or agent.hostname).encode()),
        MibObject(s + (6, 0), "sysLocation", "octets", lambda agent, now: agent.settings.snmp_location.encode()),
        MibObject(s + (7, 0), "sysServices", "integer", lambda agent, now: SYS_SERVICES),
    ]


def sensor_objects(declared: Iterable[Sensor]) -> list[MibObject]:
    def reader(name: str):
        return lambda agent, now: agent.sensors.value(name)

    return [MibObject(s.oid, mib_name(s.name), "counter" if s.kind == "counter" else "gauge", reader(s.name)) for s in declared]


def mib_name(sensor_name: str) -> str:
    """The MIB descriptor of a sensor: tftp_bytes_sent -> gsTftpBytesSent."""
    return "gs" + "".join(part[:1].upper() + part[1:] for part in sensor_name.split("_"))


class MibView:
    """The agent's objects in OID order (GETNEXT is a bisect)."""

    def __init__(self, objects: Iterable[MibObject]):
        self.objects = sorted(objects, key=lambda o: o.oid)
        self.oids = [o.oid for o in self.objects]
        self.by_oid = {o.oid: o for o in self.objects}
        assert len(self.by_oid) == len(self.objects), "duplicate OIDs in the MIB view"

    def get(self, oid: tuple[int, ...]) -> MibObject | None:
        return self.by_oid.get(oid)

    def next_after(self, oid: tuple[int, ...]) -> MibObject | None:
        position = bisect.bisect_right(self.oids, oid)
        return self.objects[position] if position < len(self.objects) else None


# -- trust ---------------------------------------------------------------------


class TrustFilter:
    """Is a source address in `snmp_trusted`? Answers cached per address until the list changes."""

    def __init__(self):
        self._networks: tuple = ()
        self.answers: dict[str, bool] = {}  # for `networks` only

    def allows(self, host: str, networks: tuple) -> bool:
        if networks is not self._networks:
            self._networks, self.answers = networks, {}
        answer = self.answers.get(host)
        if answer is None:
            answer = address_in(host, networks)
            if len(self.answers) >= MAX_CACHED_SOURCES:
                self.answers.clear()
            self.answers[host] = answer
        return answer


def address_in(host: str, networks: Iterable) -> bool:
    """True when `host` (as recvfrom gives it) is in one of `networks`; ::ffff:a.b.c.d matches a.b.c.d."""
    try:
        candidates = {ipaddress.ip_address(text.split("%", 1)[0]) for text in (host, plain_address(host))}
    except ValueError:
        return False
    return any(candidate.version == net.version and candidate in net for candidate in candidates for net in networks)


# -- the agent -------------------------------------------------------------------


class Agent:
    """Decides the reply to each datagram; see the module docstring for the pipeline."""

    def __init__(self, sensors, started: float, hostname: str, sys_descr: str):
        self.sensors = sensors
        self.started = started
        self.hostname = hostname
        self.sys_descr = sys_descr.encode()
        self.view = MibView(system_group() + sensor_objects(sensors.declared))
        self.trust = TrustFilter()
        self._trust_settings, self._trusted = None, ()
        self.settings = None
        self._community = b""
        self._bindings_cache: dict[tuple[int, bytes], tuple[tuple[int, ...], ...]] = {}
        self.reflection = TokenBuckets(REFLECTION_RATE, REFLECTION_BURST)  # step 7: octets per destination
        self.reflection_total = TokenBuckets(4 * REFLECTION_RATE, 4 * REFLECTION_BURST, max_keys=1)

    def handle(self, datagram: bytes, host: str, now: float, settings) -> list[Output]:
        """One datagram from `host`: [reply] or [Dropped]. Bugs propagate to the shell."""
        if not self.admits(host, settings):
            return [Dropped(UNTRUSTED)]
        return self.respond(datagram, host, now, settings)

    def admits(self, host: str, settings) -> bool:
        """Step 1 alone (a shell runs it before anything else, and counts a refusal): is `host` trusted?"""
        # the hot path of a flood is this one dict lookup
        answer = self.trust.answers.get(host) if settings is self._trust_settings else None
        if answer is None:
            if settings is not self._trust_settings:
                self._trust_settings, self._trusted = settings, settings.snmp_trusted
            answer = self.trust.allows(host, self._trusted)
        return answer

    def respond(self, datagram: bytes, host: str, now: float, settings) -> list[Output]:
        """Steps 2-7 for a datagram from an admitted source: [reply] or [Dropped]."""
        try:
            reply = self._answer(datagram, now, settings)
        except Dropped as dropped:
            return [dropped.with_traceback(None)]
        beyond = len(reply) - 2 * len(datagram)
        if beyond > 0:
            total = self.reflection_total.entry(ALL_DESTINATIONS, now)
            if total[0] < beyond:
                return [Dropped(WITHHELD, f"replies to all ran over {4 * REFLECTION_RATE} octets a second beyond twice their requests")]
            bucket = self.reflection.entry(plain_address(host), now)  # an IPv4 host is one destination on either socket
            if bucket[0] < beyond:
                return [Dropped(WITHHELD, f"replies to it ran over {REFLECTION_RATE} octets a second beyond twice their requests")]
            bucket[0] -= beyond
            total[0] -= beyond
        return [reply]

    def _answer(self, datagram: bytes, now: float, settings) -> bytes:
        if len(datagram) > MAX_REQUEST:
            raise Dropped(MALFORMED, f"datagram of {len(datagram)} octets is over {MAX_REQUEST}")
        version, after_version = skim_version(datagram)
        if version != 0:
            raise Dropped(BAD_VERSION, {1: "SNMP v2c", 3: "SNMP v3"}.get(version, f"SNMP version field {version}") + " is not answered")
        if settings is not self.settings:
            self.settings, self._community = settings, settings.snmp_community.encode()
        envelope = skim_envelope(datagram, after_version)
        if not hmac.compare_digest(envelope.community, self._community):
            raise Dropped(BAD_COMMUNITY, "wrong community")
        handler = PDU_HANDLERS.get(envelope.pdu_tag, Agent._unsupported_pdu)
        try:
            bindings = handler(self, self._requested_oids(envelope), now)
            status, index = NO_ERROR, 0
        except SnmpError as error:
            bindings, status, index = envelope.bindings, error.status, error.index
        reply = encode_response(envelope.community, envelope.request_id, status, index, bindings)
        if len(reply) > MAX_RESPONSE:
            reply = encode_response(envelope.community, envelope.request_id, TooBig.status, 0, envelope.bindings)
        if len(reply) > MAX_RESPONSE:
            reply = encode_response(envelope.community, envelope.request_id, TooBig.status, 0, EMPTY_BINDINGS)
        return reply

    def _requested_oids(self, envelope: Envelope) -> tuple[tuple[int, ...], ...]:
        if envelope.pdu_tag not in PDU_HANDLERS:
            return ()
        key = (envelope.pdu_tag, envelope.bindings)
        oids = self._bindings_cache.get(key)
        if oids is None:
            if count_bindings(envelope.bindings) > MAX_BINDINGS:
                raise TooBig(0, "more variable bindings than a reply can hold")
            oids = decode_bindings(envelope.bindings)
            if len(self._bindings_cache) >= MAX_CACHED_REQUESTS:
                self._bindings_cache.pop(next(iter(self._bindings_cache)))
            self._bindings_cache[key] = oids
        return oids

    # -- PDU handlers: requested OIDs -> encoded VarBindList, or SnmpError ------

    def _binding(self, obj: MibObject, now: float) -> bytes:
        return tlv(TAG_SEQUENCE, obj.oid_tlv + VALUE_ENCODERS[obj.syntax](obj.read(self, now)))

    def _get(self, oids, now: float) -> bytes:
        parts = []
        for index, oid in enumerate(oids, 1):
            obj = self.view.get(oid)
            if obj is None:
                raise NoSuchName(index)
            parts.append(self._binding(obj, now))
        return tlv(TAG_SEQUENCE, b"".join(parts))

    def _get_next(self, oids, now: float) -> bytes:
        parts = []
        for index, oid in enumerate(oids, 1):
            obj = self.view.next_after(oid)
            if obj is None:  # past the end of the view: how a v1 walk ends
                raise NoSuchName(index)
            parts.append(self._binding(obj, now))
        return tlv(TAG_SEQUENCE, b"".join(parts))

    def _set(self, oids, now: float) -> bytes:
        """Nothing is writable, so the first variable fails (RFC 1157 §4.1.5): readOnly if it exists, else noSuchName."""
        if not oids:
            return EMPTY_BINDINGS
        raise (ReadOnly if self.view.get(oids[0]) is not None else NoSuchName)(1)

    def _unsupported_pdu(self, oids, now: float) -> bytes:
        raise Dropped(MALFORMED, "not a GetRequest, GetNextRequest or SetRequest PDU")


# PDU tag -> handler (RFC 1157 §4.1.2, §4.1.3, §4.1.5); anything else: Agent._unsupported_pdu
PDU_HANDLERS: dict[int, Callable[[Agent, tuple, float], bytes]] = {
    PDU_GET: Agent._get,
    PDU_GETNEXT: Agent._get_next,
    PDU_SET: Agent._set,
}


# -- the MIB file ------------------------------------------------------------------

_MIB_HEADER = """\
GREENSERVERS-MIB DEFINITIONS ::= BEGIN

-- The sensors of a greenservers system: one object per sensor of
-- greenservers/sensors.py (rendered from it by greenservers.proto.snmp.render_mib;
-- tests check that this file and the registry agree).

IMPORTS
    MODULE-IDENTITY, OBJECT-TYPE, Counter32, Gauge32, enterprises
        FROM SNMPv2-SMI
    MODULE-COMPLIANCE, OBJECT-GROUP
        FROM SNMPv2-CONF;

greenservers MODULE-IDENTITY
    LAST-UPDATED "202612040000Z"
    ORGANIZATION "greenservers"
    CONTACT-INFO "The administrator of this phone system."
    DESCRIPTION
        "Sensors of a greenservers system (HTTP, SNMP, TFTP, NTP and
        LDAP services of an IP phone system in one process). The
        enterprise number 32473 is reserved for documentation
        (RFC 5612); a deployment with its own number changes it here
        and in greenservers/sensors.py."
    REVISION "202612040000Z"
    DESCRIPTION "SNMP datagrams dropped in the kernel during a flood (38)."
    REVISION "202612010000Z"
    DESCRIPTION "The LDAP directory's entries and pending contacts (57, 58)."
    REVISION "202611260000Z"
    DESCRIPTION "First version."
    ::= { {parent} {arc} }

greenserversSensors OBJECT IDENTIFIER ::= { greenservers {sensors_arc} }
greenserversConformance OBJECT IDENTIFIER ::= { greenservers 2 }
"""

_MIB_OBJECT = """
{name} OBJECT-TYPE
    SYNTAX      {syntax}
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION
        "{description}"
    ::= {{ greenserversSensors {index} }}
"""

_MIB_FOOTER = """
greenserversSensorsGroup OBJECT-GROUP
    OBJECTS {{
{objects}
    }}
    STATUS      current
    DESCRIPTION
        "Every sensor of the system."
    ::= {{ greenserversConformance 1 }}

greenserversCompliance MODULE-COMPLIANCE
    STATUS      current
    DESCRIPTION
        "An agent of greenservers answers every sensor."
    MODULE -- this module
        MANDATORY-GROUPS {{ greenserversSensorsGroup }}
    ::= {{ greenserversConformance 2 }}

END
"""


def render_mib(declared: Iterable[Sensor]) -> str:
    """The text of deploy/mibs/GREENSERVERS-MIB.txt for the declared sensors (SMIv2, RFC 2578)."""
    declared = list(declared)
    assert PRODUCT_OID[:-1] == ENTERPRISE_OID and SENSORS_OID[:-1] == PRODUCT_OID
    # a scalar's instance is .0 under its OBJECT-TYPE, which sits at SENSORS_OID.index
    header = _MIB_HEADER.replace("{parent}", f"enterprises {ENTERPRISE_OID[-1]}").replace("{arc}", str(PRODUCT_OID[-1]))
    header = header.replace("{sensors_arc}", str(SENSORS_OID[-1]))
    objects = []
    for sensor in declared:
        description = re.sub(r"\s+", " ", sensor.description.replace('"', "'"))
        description = "\n        ".join(_wrap(description, 60))
        syntax = "Counter32" if sensor.kind == "counter" else "Gauge32"
        objects.append(_MIB_OBJECT.format(name=mib_name(sensor.name), syntax=syntax, description=description, index=sensor.index))
    names = ",\n".join(f"        {mib_name(s.name)}" for s in declared)
    return header + "".join(objects) + _MIB_FOOTER.format(objects=names)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + [line]
