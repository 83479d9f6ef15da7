"""SNMP v1 messages for the tests: pysnmp encodes what the agent must answer and decodes its replies;
hand-built messages and a catalogue of bad datagrams (`bad_inputs`) probe the agent's limits."""

from __future__ import annotations

import random

from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import api
from vectors.snmp_requests import REQUESTS

from greenservers.proto import ber, snmp
from greenservers.sensors import DECLARED, Sensor

V1 = api.PROTOCOL_MODULES[api.SNMP_VERSION_1]  # pysnmp's v1 codec: the oracle
SYS = (1, 3, 6, 1, 2, 1, 1)
FIXED_SENSORS = tuple(Sensor(s.name, s.index, s.kind, s.description) for s in DECLARED)  # no live readers: deterministic


def vector(name: str) -> bytes:
    return bytes.fromhex(REQUESTS[name])


def decode_reply(reply: bytes):
    """(community, request-id, error-status, error-index, [(oid tuple, pysnmp value)]) via pysnmp's decoder."""
    message, rest = decoder.decode(reply, asn1Spec=V1.Message())
    assert rest == b""
    assert int(V1.apiMessage.get_version(message)) == 0
    pdu = V1.apiMessage.get_pdu(message)
    assert pdu.tagSet == V1.GetResponsePDU.tagSet
    bindings = [(tuple(oid), value) for oid, value in V1.apiPDU.get_varbinds(pdu)]
    return (bytes(V1.apiMessage.get_community(message)), int(V1.apiPDU.get_request_id(pdu)),
            int(V1.apiPDU.get_error_status(pdu)), int(V1.apiPDU.get_error_index(pdu)), bindings)


def reply_of(outputs: list) -> bytes | None:
    """The agent's reply among its outputs (proto.results), None when it dropped the datagram."""
    assert len(outputs) == 1
    return outputs[0] if isinstance(outputs[0], bytes) else None


def request_id(datagram: bytes) -> int:
    message, _ = decoder.decode(datagram, asn1Spec=V1.Message())
    return int(V1.apiPDU.get_request_id(V1.apiMessage.get_pdu(message)))


def build_request(oids, pdu_class=None, community="public", request_id=7, values=None) -> bytes:
    """A v1 request encoded by pysnmp (for shapes no captured client sends)."""
    pdu = (pdu_class or V1.GetRequestPDU)()
    V1.apiPDU.set_defaults(pdu)
    V1.apiPDU.set_request_id(pdu, request_id)
    V1.apiPDU.set_varbinds(pdu, [(oid, (values or {}).get(oid, V1.Null(""))) for oid in oids])
    message = V1.Message()
    V1.apiMessage.set_defaults(message)
    V1.apiMessage.set_community(message, community)
    V1.apiMessage.set_pdu(message, pdu)
    return encoder.encode(message)


def message(pdu: bytes, community: bytes = b"public", version: bytes = b"\x02\x01\x00") -> bytes:
    return ber.tlv(0x30, version + ber.tlv(0x04, community) + pdu)


def get_pdu(bindings: bytes, request_id: bytes = b"\x02\x01\x07", tag: int = 0xA0) -> bytes:
    return ber.tlv(tag, request_id + b"\x02\x01\x00\x02\x01\x00" + ber.tlv(0x30, bindings))


def binding(oid_tlv: bytes, value_tlv: bytes = b"\x05\x00") -> bytes:
    return ber.tlv(0x30, oid_tlv + value_tlv)


SYSDESCR_OID = snmp.encode_oid(SYS + (1, 0))


def bad_inputs() -> dict[str, bytes]:
    good = vector("get_sysdescr")
    rng = random.Random(4)
    deep = b"\x05\x00"
    for _ in range(1500):  # stays under MAX_REQUEST, so pysnmp's decoder meets it
        deep = ber.tlv(0x30, deep)
    return {
        "empty": b"",
        "one octet": b"\x30",
        "random 1": bytes(rng.getrandbits(8) for _ in range(40)),
        "random 2": bytes(rng.getrandbits(8) for _ in range(400)),
        "random sequence": b"\x30\x20" + bytes(rng.getrandbits(8) for _ in range(32)),
        "truncated": good[:-5],
        "truncated header": good[:3],
        "over-long outer length": b"\x30\x84\xff\xff\xff\xff" + good[2:],
        "outer length beyond datagram": b"\x30\x7f" + good[2:],
        "outer length short of datagram": b"\x30\x10" + good[2:],
        "indefinite length": b"\x30\x80" + good[2:] + b"\x00\x00",
        "huge community length": good[:5] + b"\x04\x84\x7f\xff\xff\xff" + good[13:],
        "varbind length beyond its list": message(get_pdu(b"\x30\x7f" + SYSDESCR_OID + b"\x05\x00")),
        "oid length beyond its varbind": message(get_pdu(ber.tlv(0x30, b"\x06\x20" + SYSDESCR_OID[2:] + b"\x05\x00"))),
        "trailing octets": good + b"\x00",
        "deeply nested value": message(get_pdu(binding(SYSDESCR_OID, deep))),
        "deeply nested, over the size limit": ber.tlv(0x30, deep * 6),
        "indefinite lengths inside a binding": message(get_pdu(binding(SYSDESCR_OID, b"\x30\x80\x30\x80\x00\x00\x00\x00"))),
        "value of an unknown type": message(get_pdu(binding(SYSDESCR_OID, b"\x47\x01\x00"))),
        "1000 varbinds": build_request([(1, 3)] * 1000),
        "64 KiB": ber.tlv(0x30, b"\x02\x01\x00\x04\x06public" + b"\x00" * (65536 - 20)),
        "get-response sent to us": message(get_pdu(binding(SYSDESCR_OID), tag=0xA2)),
        "trap sent to us": message(ber.tlv(0xA4, b"\x06\x01\x2b")),
        "getbulk in a v1 message": message(get_pdu(binding(SYSDESCR_OID), tag=0xA5)),
        "oid arc over 64 bits": message(get_pdu(binding(b"\x06\x0b\x2b" + b"\xff" * 9 + b"\x7f"))),
        "oid not an oid": message(get_pdu(binding(b"\x04\x03abc"))),
        "request-id of 40 octets": message(get_pdu(binding(SYSDESCR_OID), request_id=b"\x02\x28" + b"\x01" * 40)),
        "request-id not an integer": message(get_pdu(binding(SYSDESCR_OID), request_id=b"\x04\x01\x07")),
        "community not a string": message(get_pdu(binding(SYSDESCR_OID))).replace(b"\x04\x06public", b"\x02\x06public", 1),
        "version 99": message(get_pdu(binding(SYSDESCR_OID)), version=b"\x02\x01\x63"),
        "version of 9 octets": message(get_pdu(binding(SYSDESCR_OID)), version=b"\x02\x09" + b"\x00" * 9),
    }
