"""The SNMP v1 agent core without sockets: golden requests from net-snmp, trust, community, errors, encoding, bad input."""

from __future__ import annotations

import ipaddress
import os
import random

import pytest
from hypothesis import given, settings as hsettings, strategies as st
from pyasn1.codec.ber import decoder, encoder
from support.hypothesis_profiles import examples
from support.snmp import FIXED_SENSORS, SYS, V1, bad_inputs, build_request, decode_reply, reply_of, request_id, vector
from vectors.snmp_requests import REQUESTS

from greenservers.config.settings import Settings
from greenservers.proto import ber, snmp
from greenservers.sensors import DECLARED, PRODUCT_OID, SensorRegistry


def make_settings(**raw) -> Settings:
    raw.setdefault("snmp_trusted", "127.0.0.1 ::1")
    return Settings.from_raw(raw)


@pytest.fixture
def sensors():
    return SensorRegistry(FIXED_SENSORS)


@pytest.fixture
def agent(sensors):
    return snmp.Agent(sensors, started=100.0, hostname="pbx1", sys_descr="greenservers test agent")


# -- golden requests captured from net-snmp ------------------------------------


def test_snmpget_of_sysdescr_is_answered(agent):
    outcome = agent.handle(vector("get_sysdescr"), "127.0.0.1", 112.5, make_settings())
    assert snmp.verdict_of(outcome) == snmp.ANSWERED
    community, rid, status, index, bindings = decode_reply(reply_of(outcome))
    assert (community, rid, status, index) == (b"public", request_id(vector("get_sysdescr")), 0, 0)
    assert bindings == [(SYS + (1, 0), bindings[0][1])]
    assert bytes(bindings[0][1]) == b"greenservers test agent"


def test_whole_system_group(agent):
    settings = make_settings(snmp_contact="ops@example.org", snmp_location="rack 4", snmp_name="")
    _, _, status, _, bindings = decode_reply(reply_of(agent.handle(vector("get_system_group"), "::1", 112.5, settings)))
    assert status == 0
    values = {oid[-2]: value for oid, value in bindings}
    assert [oid for oid, _ in bindings] == [SYS + (i, 0) for i in range(1, 8)]
    assert tuple(values[2]) == PRODUCT_OID
    assert values[3].tagSet == V1.TimeTicks.tagSet and int(values[3]) == 1250  # (112.5 - 100) s in centiseconds
    assert bytes(values[4]) == b"ops@example.org"
    assert bytes(values[5]) == b"pbx1"  # snmp_name empty: the host name
    assert bytes(values[6]) == b"rack 4"
    assert int(values[7]) == 72


def test_sysname_setting_wins_over_the_host_name(agent):
    _, _, _, _, bindings = decode_reply(
        reply_of(agent.handle(vector("get_system_group"), "::1", 101, make_settings(snmp_name="pbx.example")))
    )
    assert bytes(bindings[4][1]) == b"pbx.example"


def test_get_of_a_missing_object_is_nosuchname_with_the_request_echoed(agent):
    _, _, status, index, bindings = decode_reply(reply_of(agent.handle(vector("get_missing"), "127.0.0.1", 101, make_settings())))
    assert (status, index) == (snmp.NO_SUCH_NAME, 2)
    assert [oid for oid, _ in bindings] == [SYS + (1, 0), (1, 3, 6, 1, 2, 1, 2, 1, 0)]
    assert all(value.tagSet == V1.Null.tagSet for _, value in bindings)


def test_getnext_from_the_system_prefix_and_past_the_last_sensor(agent):
    _, _, status, _, bindings = decode_reply(reply_of(agent.handle(vector("getnext_system"), "127.0.0.1", 101, make_settings())))
    assert status == 0 and bindings[0][0] == SYS + (1, 0)
    _, _, status, index, _ = decode_reply(reply_of(agent.handle(vector("getnext_last_sensor"), "127.0.0.1", 101, make_settings())))
    assert (status, index) == (snmp.NO_SUCH_NAME, 1)  # how a v1 walk ends


def test_walk_visits_every_object_once_in_strictly_increasing_order(agent):
    seen, oid = [], (1, 3)
    for _ in range(200):
        _, _, status, _, bindings = decode_reply(
            reply_of(agent.handle(build_request([oid], V1.GetNextRequestPDU), "127.0.0.1", 101, make_settings()))
        )
        if status == snmp.NO_SUCH_NAME:
            break
        oid = bindings[0][0]
        seen.append(oid)
    assert seen == sorted(set(seen)) and len(seen) == 7 + len(DECLARED)
    assert [s.oid for s in DECLARED if s.oid in seen] == [s.oid for s in DECLARED]


def test_snmpset_is_answered_readonly(agent):
    _, _, status, index, bindings = decode_reply(reply_of(agent.handle(vector("set_syscontact"), "127.0.0.1", 101, make_settings())))
    assert (status, index) == (snmp.READ_ONLY, 1)
    assert bytes(bindings[0][1]) == b"nobody"  # echoed unchanged


def test_set_of_a_missing_object_is_nosuchname(agent):
    request = build_request([(1, 3, 6, 1, 2, 1, 99, 0)], V1.SetRequestPDU, values={(1, 3, 6, 1, 2, 1, 99, 0): V1.Integer(5)})
    _, _, status, index, _ = decode_reply(reply_of(agent.handle(request, "127.0.0.1", 101, make_settings())))
    assert (status, index) == (snmp.NO_SUCH_NAME, 1)


def test_wrong_community_v2c_and_v3_get_no_answer(agent):
    settings = make_settings()
    assert agent.handle(vector("get_wrong_community"), "127.0.0.1", 101, settings) == [snmp.Dropped(snmp.BAD_COMMUNITY, "wrong community")]
    for name in ("get_v2c", "get_v3"):
        outcome = agent.handle(vector(name), "127.0.0.1", 101, settings)
        assert snmp.verdict_of(outcome) == snmp.BAD_VERSION and reply_of(outcome) is None


def test_community_change_applies_to_the_next_request(agent):
    old = make_settings()
    new = old.with_changes({"snmp_community": "s3cret"})
    assert snmp.verdict_of(agent.handle(vector("get_sysdescr"), "127.0.0.1", 101, old)) == snmp.ANSWERED
    assert snmp.verdict_of(agent.handle(vector("get_sysdescr"), "127.0.0.1", 101, new)) == snmp.BAD_COMMUNITY
    assert snmp.verdict_of(agent.handle(build_request([SYS + (1, 0)], community="s3cret"), "127.0.0.1", 101, new)) == snmp.ANSWERED


# -- trusted addresses -----------------------------------------------------------


@pytest.mark.parametrize(
    "trusted, source, allowed",
    [
        ("127.0.0.1 ::1", "127.0.0.1", True),
        ("127.0.0.1 ::1", "::1", True),
        ("127.0.0.1", "::ffff:127.0.0.1", True),  # IPv4 client on a dual-stack socket
        ("::1", "::ffff:127.0.0.1", False),
        ("::1", "127.0.0.1", False),
        ("192.168.1.0/24 2001:db8::/32", "192.168.1.77", True),
        ("192.168.1.0/24 2001:db8::/32", "::ffff:192.168.1.77", True),
        ("192.168.1.0/24 2001:db8::/32", "2001:db8::4", True),
        ("192.168.1.0/24 2001:db8::/32", "192.168.2.1", False),
        ("fe80::/10", "fe80::1%lo", True),
        ("", "127.0.0.1", False),  # empty list: nobody
        ("127.0.0.1", "not-an-address", False),
    ],
)
def test_trusted_addresses(trusted, source, allowed):
    networks = tuple(ipaddress.ip_network(t) for t in trusted.split())
    assert snmp.address_in(source, networks) is allowed


def test_untrusted_source_is_dropped_before_decoding(agent, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a datagram from an untrusted source")

    monkeypatch.setattr(snmp, "skim_version", no_decoding)
    monkeypatch.setattr(snmp, "decode_bindings", no_decoding)
    outcome = agent.handle(b"\x30\x80 anything at all", "10.9.8.7", 101, make_settings())
    assert outcome == [snmp.Dropped(snmp.UNTRUSTED)]


def test_trust_change_applies_to_the_next_request(agent):
    settings = make_settings(snmp_trusted="127.0.0.1")
    assert snmp.verdict_of(agent.handle(vector("get_sysdescr"), "10.0.0.5", 101, settings)) == snmp.UNTRUSTED
    settings = settings.with_changes({"snmp_trusted": "127.0.0.1 10.0.0.0/8"})
    assert snmp.verdict_of(agent.handle(vector("get_sysdescr"), "10.0.0.5", 101, settings)) == snmp.ANSWERED
    settings = settings.with_changes({"snmp_trusted": ""})
    assert snmp.verdict_of(agent.handle(vector("get_sysdescr"), "127.0.0.1", 101, settings)) == snmp.UNTRUSTED


def test_trust_cache_is_bounded():
    trust = snmp.TrustFilter()
    networks = (ipaddress.ip_network("10.0.0.0/8"),)
    for i in range(snmp.MAX_CACHED_SOURCES + 10):
        trust.allows(f"11.0.{i // 256}.{i % 256}", networks)
    assert len(trust.answers) <= snmp.MAX_CACHED_SOURCES


# -- sensors: Counter32 and Gauge32 ---------------------------------------------------


def test_counters_wrap_and_gauges_latch(agent, sensors):
    sensors.add("tftp_bytes_sent", 2**32 + 5)
    sensors.set("tftp_transfers_active", 2**40)
    oids = [sensors.by_name["tftp_bytes_sent"].oid, sensors.by_name["tftp_transfers_active"].oid]
    _, _, status, _, bindings = decode_reply(reply_of(agent.handle(build_request(oids), "127.0.0.1", 101, make_settings())))
    assert status == 0
    (_, counter), (_, gauge) = bindings
    assert counter.tagSet == V1.Counter.tagSet and int(counter) == 5
    assert gauge.tagSet == V1.Gauge.tagSet and int(gauge) == 2**32 - 1


def test_every_sensor_is_answered_at_its_registry_oid_with_its_kind(sensors, agent):
    for index, sensor in enumerate(DECLARED):
        sensors.add(sensor.name, index + 1) if sensor.kind == "counter" else sensors.set(sensor.name, index + 1)
    request = build_request([s.oid for s in DECLARED])
    _, _, status, _, bindings = decode_reply(reply_of(agent.handle(request, "127.0.0.1", 101, make_settings())))
    assert status == 0
    for index, (sensor, (oid, value)) in enumerate(zip(DECLARED, bindings, strict=True)):
        assert oid == sensor.oid
        assert value.tagSet == (V1.Counter if sensor.kind == "counter" else V1.Gauge).tagSet
        assert int(value) == index + 1


def test_live_sensors_read_their_function():
    agent = snmp.Agent(SensorRegistry(), started=0.0, hostname="h", sys_descr="d")
    oid = SensorRegistry().by_name["process_open_fds"].oid
    _, _, status, _, bindings = decode_reply(reply_of(agent.handle(build_request([oid]), "127.0.0.1", 1, make_settings())))
    assert status == 0 and int(bindings[0][1]) > 0


# -- tooBig and the encoder -----------------------------------------------------------


def test_reply_over_the_limit_is_toobig_with_the_request_echoed(agent):
    request = build_request([SYS + (1, 0)] * 40)  # 40 x sysDescr: a reply well over MAX_RESPONSE, a request under it
    outcome = agent.handle(request, "127.0.0.1", 101, make_settings())
    _, rid, status, index, bindings = decode_reply(reply_of(outcome))
    assert (rid, status, index) == (7, snmp.TOO_BIG, 0)
    assert [oid for oid, _ in bindings] == [SYS + (1, 0)] * 40
    assert len(reply_of(outcome)) <= snmp.MAX_RESPONSE


def test_toobig_with_no_bindings_when_even_the_echo_would_not_fit(agent):
    request = build_request([SYS + (1, 0)] * 120)
    outcome = agent.handle(request, "127.0.0.1", 101, make_settings())
    _, _, status, index, bindings = decode_reply(reply_of(outcome))
    assert (status, index, bindings) == (snmp.TOO_BIG, 0, [])
    assert len(reply_of(outcome)) <= snmp.MAX_RESPONSE


def pysnmp_response(community: bytes, rid: int, status: int, index: int, bindings) -> bytes:
    pdu = V1.GetResponsePDU()
    V1.apiPDU.set_defaults(pdu)
    V1.apiPDU.set_request_id(pdu, rid)
    V1.apiPDU.set_error_status(pdu, status)
    V1.apiPDU.set_error_index(pdu, index)
    V1.apiPDU.set_varbinds(pdu, bindings)
    message = V1.Message()
    V1.apiMessage.set_defaults(message)
    V1.apiMessage.set_community(message, community)
    V1.apiMessage.set_pdu(message, pdu)
    return encoder.encode(message)


def test_reply_bytes_equal_pysnmps_encoding(agent):
    settings = make_settings(snmp_contact="ops", snmp_location="rack 4")
    reply = reply_of(agent.handle(vector("get_system_group"), "127.0.0.1", 112.5, settings))
    expected = pysnmp_response(b"public", request_id(vector("get_system_group")), 0, 0, [
        (SYS + (1, 0), V1.OctetString(b"greenservers test agent")),
        (SYS + (2, 0), V1.ObjectIdentifier(PRODUCT_OID)),
        (SYS + (3, 0), V1.TimeTicks(1250)),
        (SYS + (4, 0), V1.OctetString(b"ops")),
        (SYS + (5, 0), V1.OctetString(b"pbx1")),
        (SYS + (6, 0), V1.OctetString(b"rack 4")),
        (SYS + (7, 0), V1.Integer(72)),
    ])
    assert reply == expected


oids = st.lists(st.integers(0, 2**32 - 1), min_size=0, max_size=20).flatmap(
    lambda tail: st.tuples(st.integers(0, 2), st.integers(0, 39)).map(lambda head: head + tuple(tail)))
values = st.one_of(
    st.binary(max_size=300).map(lambda b: ("octets", b, V1.OctetString(b))),
    st.integers(0, 2**31 - 1).map(lambda i: ("integer", i, V1.Integer(i))),
    st.integers(0, 2**32 - 1).map(lambda i: ("counter", i, V1.Counter(i))),
    st.integers(0, 2**32 - 1).map(lambda i: ("gauge", i, V1.Gauge(i))),
    st.integers(0, 2**32 - 1).map(lambda i: ("timeticks", i, V1.TimeTicks(i))),
    oids.map(lambda o: ("oid", o, V1.ObjectIdentifier(o))),
)


@hsettings(max_examples=examples(300), deadline=None)
@given(oid=oids, value=values, rid=st.integers(0, 2**31 - 1), status=st.integers(0, 5), index=st.integers(0, 300))
def test_encoder_matches_pysnmp_byte_for_byte(oid, value, rid, status, index):
    """Every type the agent sends; negative INTEGERs are left out: the agent sends none (request-ids are copied)."""
    syntax, raw, pysnmp_value = value
    binding = ber.tlv(snmp.TAG_SEQUENCE, snmp.encode_oid(oid) + snmp.VALUE_ENCODERS[syntax](raw))
    ours = snmp.encode_response(b"public", snmp.encode_integer(rid), status, index, ber.tlv(snmp.TAG_SEQUENCE, binding))
    assert ours == pysnmp_response(b"public", rid, status, index, [(oid, pysnmp_value)])


@pytest.mark.parametrize("value", [-(2**31), -129, -128, -1, 0, 127, 128, 255, 256, 2**31 - 1, 2**32 - 1])
def test_integers_are_minimal_twos_complement_and_pysnmp_reads_them_back(value):
    encoded = snmp.encode_integer(value)
    content = encoded[2:]
    # X.690 8.3.2: the first nine bits are never all zeros or all ones
    assert len(content) == 1 or not (content[0] == 0 and content[1] < 0x80) and not (content[0] == 0xFF and content[1] >= 0x80)
    assert int(decoder.decode(encoded, asn1Spec=V1.Integer())[0]) == value


def test_repeated_request_shapes_are_served_from_the_cache_and_stay_bounded(agent, monkeypatch):
    settings = make_settings()
    calls = []
    real = snmp.decode_bindings
    monkeypatch.setattr(snmp, "decode_bindings", lambda datagram: calls.append(1) or real(datagram))
    for rid in range(5):
        agent.handle(build_request([SYS + (3, 0)], request_id=rid), "127.0.0.1", 101, settings)
    assert len(calls) == 1
    for i in range(snmp.MAX_CACHED_REQUESTS + 5):
        agent.handle(build_request([SYS + (3, i)]), "127.0.0.1", 101, settings)
    assert len(agent._bindings_cache) <= snmp.MAX_CACHED_REQUESTS


ARCS = st.integers(0, 2**32 - 1)
OIDS = st.one_of(
    st.tuples(st.integers(0, 1), st.integers(0, 39)).flatmap(lambda head: st.lists(ARCS, max_size=12).map(lambda rest: (*head, *rest))),
    st.tuples(st.just(2), st.integers(0, 2**32 - 81)).flatmap(lambda head: st.lists(ARCS, max_size=12).map(lambda rest: (*head, *rest))),
)


def pysnmp_oids(datagram: bytes) -> tuple[tuple[int, ...], ...]:
    """The OIDs of a request as pysnmp's decoder reads them (the oracle)."""
    message, rest = decoder.decode(datagram, asn1Spec=V1.Message())
    assert not rest
    return tuple(tuple(oid) for oid, _ in V1.apiPDU.get_varbinds(V1.apiMessage.get_pdu(message)))


def our_oids(datagram: bytes) -> tuple[tuple[int, ...], ...]:
    return snmp.decode_bindings(snmp.skim_envelope(datagram, snmp.skim_version(datagram)[1]).bindings)


@hsettings(max_examples=examples(300), deadline=None)
@given(st.lists(OIDS, min_size=1, max_size=20))
def test_bindings_are_decoded_as_pysnmp_decodes_them(oids):
    datagram = build_request(oids)
    assert our_oids(datagram) == pysnmp_oids(datagram) == tuple(oids)


@hsettings(max_examples=examples(400), deadline=None)
@given(st.lists(OIDS, min_size=1, max_size=4), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=3))
def test_bindings_our_decoder_accepts_are_those_pysnmp_reads(oids, changes):
    """Bytes of the bindings changed at random: what the strict walker accepts, pysnmp reads alike (the walker
    refuses more: sub-identifiers not in their shortest form or over 2**32-1, values of no v1 type)."""
    datagram = bytearray(build_request(oids))
    start = len(datagram) - len(snmp.skim_envelope(bytes(datagram), snmp.skim_version(bytes(datagram))[1]).bindings)
    for at, value in changes:
        datagram[start + at % (len(datagram) - start)] = value
    try:
        ours = our_oids(bytes(datagram))
    except snmp.Dropped:
        return
    assert ours == pysnmp_oids(bytes(datagram))


# -- bad input: no answer or an error answer, never an exception, and the agent keeps answering ------


@pytest.mark.parametrize("name", sorted(bad_inputs()))
def test_bad_input_gets_no_answer_or_an_error_answer(agent, name):
    datagram = bad_inputs()[name]
    settings = make_settings()
    outcome = agent.handle(datagram, "127.0.0.1", 101, settings)
    if reply_of(outcome) is not None:
        _, _, status, _, _ = decode_reply(reply_of(outcome))
        assert status != 0
        assert len(reply_of(outcome)) <= snmp.MAX_RESPONSE
    else:
        assert snmp.verdict_of(outcome) in (snmp.MALFORMED, snmp.BAD_VERSION)
    assert snmp.verdict_of(agent.handle(vector("get_sysdescr"), "127.0.0.1", 101, settings)) == snmp.ANSWERED


def test_1000_varbinds_are_answered_toobig(agent):
    _, _, status, _, bindings = decode_reply(reply_of(agent.handle(bad_inputs()["1000 varbinds"], "127.0.0.1", 101, make_settings())))
    assert (status, bindings) == (snmp.TOO_BIG, [])


@hsettings(max_examples=examples(400), deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(datagram):
    agent = snmp.Agent(SensorRegistry(FIXED_SENSORS), 0.0, "h", "d")
    outcome = agent.handle(datagram, "127.0.0.1", 1, make_settings())
    assert snmp.verdict_of(outcome) in (snmp.MALFORMED, snmp.BAD_VERSION, snmp.BAD_COMMUNITY, snmp.ANSWERED)


@hsettings(max_examples=examples(300), deadline=None)
@given(st.integers(0, 40), st.integers(0, 255), st.sampled_from(sorted(REQUESTS)))
def test_mutated_captured_requests_never_raise(position, octet, name):
    datagram = bytearray(vector(name))
    datagram[position % len(datagram)] = octet
    agent = snmp.Agent(SensorRegistry(FIXED_SENSORS), 0.0, "h", "d")
    agent.handle(bytes(datagram), "127.0.0.1", 1, make_settings())


def test_random_datagrams_at_volume_never_raise(agent):
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    settings = make_settings()
    for _ in range(2000):
        base = bytearray(vector(rng.choice(sorted(REQUESTS))))
        for _ in range(rng.randint(1, 4)):
            base[rng.randrange(len(base))] = rng.getrandbits(8)
        agent.handle(bytes(base[: rng.randint(0, len(base))]), "127.0.0.1", 1, settings)
    assert snmp.verdict_of(agent.handle(vector("get_sysdescr"), "127.0.0.1", 1, settings)) == snmp.ANSWERED


# -- reflection ----------------------------------------------------------------------

# 19 GetNexts of .1.3 each answer sysDescr: the largest reply a short request buys (about 9 times its size)
REFLECTED = build_request([(1, 3)] * 19, V1.GetNextRequestPDU)


def test_replies_beyond_twice_their_requests_are_paid_from_their_destination_s_budget():
    agent = snmp.Agent(SensorRegistry(FIXED_SENSORS), 100.0, "pbx1", "greenservers 1.0 SNMP v1 agent on Linux 6.1.0-28-amd64 x86_64")
    settings = make_settings(snmp_trusted="127.0.0.0/8 ::ffff:127.0.0.0/104")
    reply = reply_of(agent.handle(REFLECTED, "127.0.0.1", 101.0, settings))
    beyond = len(reply) - 2 * len(REFLECTED)
    assert len(reply) > 8 * len(REFLECTED) and beyond > 0
    answered = 1 + sum(snmp.verdict_of(agent.handle(REFLECTED, "127.0.0.1", 101.0, settings)) == snmp.ANSWERED for _ in range(1000))
    assert answered == snmp.REFLECTION_BURST // beyond
    assert agent.handle(REFLECTED, "::ffff:127.0.0.1", 101.0, settings)[0].verdict == snmp.WITHHELD  # the same host
    assert snmp.verdict_of(agent.handle(build_request([SYS + (3, 0)]), "127.0.0.1", 101.0, settings)) == snmp.ANSWERED  # within 2x
    assert snmp.verdict_of(agent.handle(REFLECTED, "127.0.0.2", 101.0, settings)) == snmp.ANSWERED  # another destination
    refilled = sum(snmp.verdict_of(agent.handle(REFLECTED, "127.0.0.1", 102.0, settings)) == snmp.ANSWERED for _ in range(1000))
    assert refilled in (snmp.REFLECTION_RATE // beyond, snmp.REFLECTION_RATE // beyond + 1)  # a second's refill and the rest


def test_replies_to_many_destinations_are_paid_from_a_budget_for_all_too():
    """Forged sources spread over a trusted network each meet a full bucket of their own: the budget for all holds
    them (four destinations' worth)."""
    agent = snmp.Agent(SensorRegistry(FIXED_SENSORS), 100.0, "pbx1", "greenservers 1.0 SNMP v1 agent on Linux 6.1.0-28-amd64 x86_64")
    settings = make_settings(snmp_trusted="10.0.0.0/8")
    verdicts = [snmp.verdict_of(agent.handle(REFLECTED, f"10.0.{n // 250}.{n % 250}", 101.0, settings)) for n in range(5000)]
    beyond = len(reply_of(agent.handle(build_request([(1, 3)] * 19, V1.GetNextRequestPDU), "10.1.0.1", 102.0, settings)))
    beyond -= 2 * len(REFLECTED)
    assert verdicts.count(snmp.ANSWERED) == 4 * snmp.REFLECTION_BURST // beyond
    assert verdicts[-1] == snmp.WITHHELD
