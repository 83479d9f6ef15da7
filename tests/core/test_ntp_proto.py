"""NTP core without sockets: golden requests from real clients, every field rule, the
unsynchronised case, the local-stratum case, drops, and the rate limiter on a fake clock."""

from __future__ import annotations

import struct

import pytest
from hypothesis import example, given, settings as hypothesis_settings, strategies as st
from support.hypothesis_profiles import examples
from vectors.ntp_vectors import CHRONYD_REPLY_TO_NTPLIB_V4, REQUESTS

from greenservers.proto import ntp

NOW_NS = 1_795_692_808_884_498_600  # 2026-11-26, a Unix time in ns
REPLY = struct.Struct("!BBbbII4sQ8sQQ")


def fields(reply: bytes) -> dict:
    (first, stratum, poll, precision, root_delay, root_dispersion, reference_id, reference_time,
     origin, receive, transmit) = REPLY.unpack(reply)
    return dict(leap=first >> 6, version=(first >> 3) & 7, mode=first & 7, stratum=stratum, poll=poll,
                precision=precision, root_delay=root_delay, root_dispersion=root_dispersion,
                reference_id=reference_id, reference_time=reference_time, origin=origin, receive=receive,
                transmit=transmit)


def kernel(synchronised=True, leap=ntp.LEAP_NONE, max_error=0.05, at=NOW_NS):
    return ntp.KernelClock(synchronised, leap, max_error, at)


UPSTREAM = ntp.Upstream(stratum=3, reference_id=bytes([192, 0, 2, 7]), reference_time_ns=NOW_NS - 10_000_000_000,
                        root_delay=0.020, root_dispersion=0.001)
SYNCED = ntp.server_state(kernel(), UPSTREAM, 0, -24)
UNSYNCED = ntp.server_state(kernel(synchronised=False), None, 0, -24)


class FakeClock:
    """Monotonic seconds for the limiter and a transmit clock in ns that counts its reads."""

    def __init__(self):
        self.mono = 100.0
        self.reads = 0

    def transmit(self) -> int:
        self.reads += 1
        return NOW_NS + 30_000


def reply_of(outputs: list) -> bytes | None:
    """The datagram among the responder's outputs (proto.results): the reply or the KoD; None when dropped."""
    return next((item for item in outputs if isinstance(item, bytes)), None)


def answer(data: bytes, state=SYNCED, client="192.0.2.10", clock=None, responder=None):
    clock = clock or FakeClock()
    responder = responder or ntp.NtpResponder()
    return responder.respond(data, client, NOW_NS, state, clock.mono, clock.transmit)


# -- golden requests from the real clients ----------------------------------------------


@pytest.mark.parametrize("client", sorted(REQUESTS))
def test_every_real_client_request_is_answered_by_the_field_rules(client):
    request = bytes.fromhex(REQUESTS[client])
    clock = FakeClock()
    result = answer(request, clock=clock)
    assert ntp.verdict_of(result) == ntp.ANSWERED
    reply = fields(reply_of(result))
    assert len(reply_of(result)) == 48 <= len(request)
    assert reply["mode"] == ntp.MODE_SERVER
    assert reply["version"] == (request[0] >> 3) & 7  # echoed: ntplib v3 gets v3
    assert reply["origin"] == request[40:48]  # byte for byte (chronyd's is random)
    assert reply["poll"] == struct.unpack_from("!b", request, 2)[0]
    assert reply["receive"] == ntp.ntp_timestamp(NOW_NS)
    assert reply["transmit"] == ntp.ntp_timestamp(NOW_NS + 30_000)
    assert clock.reads == 1
    # chronyd's own stratum (its upstream's + 1): we serve the clock it disciplines
    assert (reply["leap"], reply["stratum"]) == (ntp.LEAP_NONE, 3)
    assert reply["reference_id"] == bytes([192, 0, 2, 7])
    assert reply["reference_time"] == ntp.ntp_timestamp(NOW_NS - 10_000_000_000)
    assert reply["root_delay"] == ntp.ntp_short(0.020)
    assert reply["root_dispersion"] == ntp.ntp_short(0.001 + 10 * ntp.PHI)
    assert reply["precision"] == -24


def test_reply_has_the_same_shape_as_chronyd_local_stratum_reply():
    request = bytes.fromhex(REQUESTS["ntplib_v4"])
    local = ntp.server_state(kernel(synchronised=False), None, 8, -25)
    ours = fields(reply_of(answer(request, state=local)))
    chronyd = fields(bytes.fromhex(CHRONYD_REPLY_TO_NTPLIB_V4))
    same = ("leap", "version", "mode", "stratum", "poll", "precision", "root_delay", "root_dispersion",
            "reference_id", "origin")
    assert {k: ours[k] for k in same} == {k: chronyd[k] for k in same}


def test_transmit_clock_is_read_last(monkeypatch):
    """Everything else of the reply is done before the transmit clock is read; after it, only its conversion."""
    order = []
    convert = ntp.ntp_timestamp

    def spy_timestamp(unix_ns):
        order.append(("convert", unix_ns))
        return convert(unix_ns)

    def transmit():
        order.append("clock")
        return NOW_NS + 1

    monkeypatch.setattr(ntp, "ntp_timestamp", spy_timestamp)
    result = ntp.NtpResponder().respond(bytes.fromhex(REQUESTS["sntp"]), "192.0.2.1", NOW_NS, SYNCED, 0.0, transmit)
    assert order == [("convert", NOW_NS), "clock", ("convert", NOW_NS + 1)]
    assert fields(reply_of(result))["transmit"] == convert(NOW_NS + 1)


def test_timestamp_formats():
    assert ntp.ntp_timestamp(0) == ntp.NTP_UNIX_OFFSET << 32
    assert ntp.ntp_timestamp(500_000_000) & 0xFFFFFFFF == 1 << 31
    assert abs(ntp.unix_ns(ntp.ntp_timestamp(NOW_NS)) - NOW_NS) <= 1
    after_2036 = 2_100_000_000 * 10**9  # NTP era 1
    assert abs(ntp.unix_ns(ntp.ntp_timestamp(after_2036)) - after_2036) <= 1
    assert ntp.ntp_short(1.5) == 0x00018000
    assert ntp.ntp_short(1e9) == 0xFFFFFFFF and ntp.ntp_short(-1) == 0
    assert ntp.ntp_short(float("nan")) == ntp.ntp_short(float("inf")) == 0xFFFFFFFF
    assert ntp.ntp_short(65535.9999999) == 0xFFFFFFFF


# -- honest stratum ---------------------------------------------------------------------


def test_unsynchronised_clock_answers_alarm_and_stratum_16():
    reply = fields(reply_of(answer(bytes.fromhex(REQUESTS["chronyd"]), state=UNSYNCED)))
    assert reply["leap"] == ntp.LEAP_ALARM and reply["stratum"] == ntp.STRATUM_UNSYNCHRONISED
    assert reply["reference_time"] == 0
    assert not UNSYNCED.synchronised


def test_unsynchronised_ignores_a_stale_upstream():
    state = ntp.server_state(kernel(synchronised=False), UPSTREAM, 0, -24)
    assert (state.leap, state.stratum) == (ntp.LEAP_ALARM, 16)


def test_local_stratum_serves_an_unsynchronised_clock_like_chrony_local():
    state = ntp.server_state(kernel(synchronised=False), None, 8, -24)
    assert (state.leap, state.stratum, state.reference_id) == (ntp.LEAP_NONE, 8, bytes([127, 127, 1, 1]))
    assert state.reference_time == ntp.ntp_timestamp(NOW_NS) and state.synchronised


def test_local_stratum_does_not_override_a_synchronised_clock():
    assert ntp.server_state(kernel(), UPSTREAM, 8, -24).stratum == 3


def test_synchronised_without_known_upstream_uses_kernel_max_error():
    state = ntp.server_state(kernel(max_error=0.123), None, 0, -24)
    assert (state.leap, state.stratum) == (ntp.LEAP_NONE, ntp.STRATUM_WHEN_UPSTREAM_UNKNOWN)
    assert state.root_dispersion == 0.123 and state.root_delay == 0.0


@pytest.mark.parametrize("leap", [ntp.LEAP_INSERT, ntp.LEAP_DELETE])
def test_pending_leap_second_is_announced(leap):
    assert ntp.server_state(kernel(leap=leap), UPSTREAM, 0, -24).leap == leap


def test_chronyc_tracking_is_parsed():
    text = "C0000207,192.0.2.7,3,1795692798.884498600,0.000001,0.0,0.0,1.0,0.0,0.0,0.020000,0.001000,64.0,Normal\n"
    assert ntp.parse_chronyc_tracking(text) == UPSTREAM
    # captured from chronyd 4.3 with `local stratum 8`
    local = ntp.parse_chronyc_tracking("7F7F0101,,8,1795692716.827185064,0.000000000,0.000000000,0.000000000,"
                                       "0.000,0.000,0.000,0.000000000,0.000000000,0.0,Normal")
    assert local.stratum == 8 and local.reference_id == bytes([127, 127, 1, 1])
    assert ntp.parse_chronyc_tracking("00000000,,0,0.0,0,0,0,0,0,0,0,0,0,Not synchronised") is None
    assert ntp.parse_chronyc_tracking("506 Cannot talk to daemon") is None


# -- drops ------------------------------------------------------------------------------

MODE6_READVAR = bytes.fromhex("16020001000000000000000000000000")  # what `ntpq -c rv` sends (12-byte header)
MODE7_MONLIST = bytes.fromhex("1700032a") + bytes(44)  # the monlist amplification request


@pytest.mark.parametrize("data, reason", [
    (MODE6_READVAR + bytes(32), "control (mode 6)"),
    (MODE7_MONLIST, "private (mode 7)"),
    (bytes([0x21]) + bytes(47), "symmetric active (mode 1)"),
    (bytes([0x25]) + bytes(47), "broadcast (mode 5)"),
    (bytes([0x24]) + bytes(47), "server (mode 4)"),
    (bytes.fromhex(REQUESTS["sntp"])[:47], "short packet"),
    (b"", "short packet"),
    (bytes.fromhex(REQUESTS["sntp"]) + b"\0", "malformed packet"),
    (bytes.fromhex(REQUESTS["sntp"]) + bytes(2000), "malformed packet"),
    (bytes([0x13]) + bytes(47), "unsupported version 2"),
    (bytes([0x0b]) + bytes(47), "unsupported version 1"),
    (bytes([0x2b]) + bytes(47), "unsupported version 5"),
])
def test_anything_but_a_v3_v4_client_request_is_dropped(data, reason):
    result = answer(data)
    assert ntp.verdict_of(result) == ntp.DROPPED and reply_of(result) is None
    assert reason in result[0].reason


def test_mode6_short_header_is_dropped_too():
    assert ntp.verdict_of(answer(MODE6_READVAR)) == ntp.DROPPED


def test_extension_fields_are_not_echoed():
    request = bytes.fromhex(REQUESTS["ntplib_v4"]) + bytes(20)  # a v4 request with a MAC
    result = answer(request)
    assert ntp.verdict_of(result) == ntp.ANSWERED and len(reply_of(result)) == 48


# -- rate limiting on a fake clock ---------------------------------------------------


def flood(responder, client, count, clock):
    return [ntp.verdict_of(responder.respond(bytes.fromhex(REQUESTS["sntp"]), client, NOW_NS, SYNCED, clock.mono, clock.transmit))
            for _ in range(count)]


def test_flood_gets_burst_then_one_kod_then_silence_while_others_are_answered():
    clock, responder = FakeClock(), ntp.NtpResponder()
    outcomes = flood(responder, "192.0.2.66", 100, clock)
    assert outcomes[:ntp.BURST] == [ntp.ANSWERED] * ntp.BURST
    assert outcomes[ntp.BURST] == ntp.KISSED
    assert set(outcomes[ntp.BURST + 1:]) == {ntp.DROPPED}
    assert flood(responder, "192.0.2.67", 1, clock) == [ntp.ANSWERED]


def test_kod_packet_fields():
    clock, responder = FakeClock(), ntp.NtpResponder()
    request = bytes.fromhex(REQUESTS["chronyd"])
    for _ in range(ntp.BURST):
        responder.respond(request, "192.0.2.66", NOW_NS, SYNCED, clock.mono, clock.transmit)
    result = responder.respond(request, "192.0.2.66", NOW_NS, SYNCED, clock.mono, clock.transmit)
    kod = fields(reply_of(result))
    assert ntp.verdict_of(result) == ntp.KISSED and len(reply_of(result)) == 48
    assert (kod["leap"], kod["stratum"], kod["reference_id"], kod["mode"]) == (3, 0, b"RATE", 4)
    assert kod["origin"] == request[40:48]
    assert kod["receive"] == kod["transmit"] == int.from_bytes(request[40:48], "big")  # carries no time
    assert kod["poll"] >= ntp.KOD_MIN_POLL


def test_limited_client_gets_another_kod_only_after_the_interval():
    clock = FakeClock()
    responder = ntp.NtpResponder(ntp.RateLimiter(rate=1.0, burst=16, kod_interval=8.0))
    assert flood(responder, "192.0.2.66", 100, clock).count(ntp.KISSED) == 1  # in debt: -16 tokens
    clock.mono += 4.0  # -12
    assert set(flood(responder, "192.0.2.66", 10, clock)) == {ntp.DROPPED}  # floor: -16
    clock.mono += 4.0  # -12, and 8 s since the KoD
    assert flood(responder, "192.0.2.66", 2, clock) == [ntp.KISSED, ntp.DROPPED]


def test_limited_client_is_answered_again_after_slowing_down():
    clock, responder = FakeClock(), ntp.NtpResponder()
    flood(responder, "192.0.2.66", 200, clock)
    clock.mono += 2 * ntp.BURST / ntp.RATE_PER_SECOND
    assert flood(responder, "192.0.2.66", 1, clock) == [ntp.ANSWERED]


def test_polite_client_is_never_limited():
    clock, responder = FakeClock(), ntp.NtpResponder()
    for _ in range(500):
        assert flood(responder, "192.0.2.5", 1, clock) == [ntp.ANSWERED]
        clock.mono += 1.0 / ntp.RATE_PER_SECOND


def test_each_address_has_its_own_rate_and_mapped_ipv4_is_ipv4():
    clock, responder = FakeClock(), ntp.NtpResponder()
    flood(responder, "2001:db8:1:2::1", ntp.BURST, clock)
    assert flood(responder, "2001:db8:1:2::1", 1, clock) == [ntp.KISSED]
    assert flood(responder, "2001:db8:1:2::2", 1, clock) == [ntp.ANSWERED]  # a phone beside it in its /64
    flood(responder, "::ffff:192.0.2.1", ntp.BURST, clock)
    assert flood(responder, "192.0.2.1", 1, clock) == [ntp.KISSED]  # one client, whichever socket it came in on


def test_a_lan_of_phones_in_one_64_booting_together_is_answered():
    clock, responder = FakeClock(), ntp.NtpResponder()
    phones = [f"2001:db8:1:2::{n:x}" for n in range(1, 1001)]
    assert {v for phone in phones for v in flood(responder, phone, 1, clock)} == {ntp.ANSWERED}
    for _ in range(10):  # and polling, all of them every 8 s (each its own rate, the /64 within 16 times it)
        clock.mono += 8.0
        assert {v for phone in phones for v in flood(responder, phone, 1, clock)} == {ntp.ANSWERED}


def test_a_device_cycling_the_addresses_of_its_64_meets_the_64s_share_and_no_one_else_does():
    clock, responder = FakeClock(), ntp.NtpResponder()
    share = ntp.BURST * ntp.PREFIX_SHARE
    outcomes = [v for n in range(share + 500) for v in flood(responder, f"2001:db8:6:4::{n:x}", 1, clock)]
    assert outcomes[:share] == [ntp.ANSWERED] * share
    assert outcomes[share] == ntp.KISSED and set(outcomes[share + 1:]) == {ntp.DROPPED}  # one KoD for the /64
    assert flood(responder, "2001:db8:6:5::1", 1, clock) == [ntp.ANSWERED]  # the next /64
    assert flood(responder, "192.0.2.7", 1, clock) == [ntp.ANSWERED]
    assert len(responder.limiter.addresses) == share + 2  # refused before its address was looked at
    clock.mono += 2 * ntp.BURST / ntp.RATE_PER_SECOND  # slowed down: answered again
    assert flood(responder, "2001:db8:6:4::1:1", 1, clock) == [ntp.ANSWERED]


def test_one_address_flooding_does_not_spend_its_64s_share():
    clock, responder = FakeClock(), ntp.NtpResponder()
    flood(responder, "2001:db8:1:2::66", 100 * ntp.BURST, clock)
    assert responder.limiter.prefixes.level("2001:db8:1:2::/64", clock.mono) == ntp.BURST * ntp.PREFIX_SHARE - ntp.BURST
    assert flood(responder, "2001:db8:1:2::1", 1, clock) == [ntp.ANSWERED]


def test_limiter_memory_is_bounded():
    limiter = ntp.RateLimiter(max_clients=100)
    for i in range(1000):
        limiter.check(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(limiter) == 100


def test_dropped_modes_do_not_use_the_limiter():
    clock, responder = FakeClock(), ntp.NtpResponder()
    for _ in range(100):
        responder.respond(MODE7_MONLIST, "192.0.2.66", NOW_NS, SYNCED, clock.mono, clock.transmit)
    assert flood(responder, "192.0.2.66", 1, clock) == [ntp.ANSWERED]


# -- any bytes at all -----------------------------------------------------------------


# datagrams shaped like requests, so that every run answers some (random octets of a right length are one in 32):
# every version and mode, lengths in whole words from the header alone to past MAX_REQUEST_LEN, and the real clients'
SHAPED = st.builds(lambda li, version, mode, rest: bytes([li << 6 | version << 3 | mode]) + rest,
                   st.integers(0, 3), st.one_of(st.sampled_from([3, 4]), st.integers(0, 7)), st.one_of(st.just(3), st.integers(0, 7)),
                   st.integers(11, ntp.MAX_REQUEST_LEN // 4 + 1).flatmap(lambda words: st.binary(min_size=4 * words + 3,
                                                                                                  max_size=4 * words + 3)))
REAL_REQUESTS = st.sampled_from([bytes.fromhex(h) for h in sorted(REQUESTS.values())])


@hypothesis_settings(max_examples=examples(400), deadline=None)
@given(data=st.one_of(st.binary(max_size=200), st.binary(min_size=48, max_size=48), SHAPED, REAL_REQUESTS), client=st.sampled_from(
    ["192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1", "fe80::1%lo", "not an address"]))
@example(data=bytes([0x23]) + bytes(ntp.MAX_REQUEST_LEN - 1), client="192.0.2.1")  # the longest answered
@example(data=bytes([0x23]) + bytes(ntp.MAX_REQUEST_LEN + 3), client="192.0.2.1")  # one word more: dropped
def test_any_datagram_is_answered_by_the_rules_or_dropped(data, client):
    result = ntp.NtpResponder().respond(data, client, NOW_NS, SYNCED, 0.0, lambda: NOW_NS)
    answerable = 48 <= len(data) <= ntp.MAX_REQUEST_LEN and len(data) % 4 == 0 and data[0] & 7 == 3 \
        and (data[0] >> 3) & 7 in (3, 4)
    assert (ntp.verdict_of(result) == ntp.ANSWERED) == answerable
    if reply_of(result) is not None:
        assert len(reply_of(result)) == 48 <= len(data) and reply_of(result)[24:32] == data[40:48]
