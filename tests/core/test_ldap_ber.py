"""The BER codec: strict decoding (definite lengths, bounded sizes), encoding round trips."""

import pytest
from hypothesis import given, settings, strategies as st
from support.hypothesis_profiles import examples

from greenservers.proto import ber
from greenservers.proto.ber import BerError, Incomplete


@given(st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1))
def test_integer_round_trip(value):
    data = ber.integer(value)
    tag, s, e = ber.read_header(data, 0, len(data))
    assert tag == ber.INTEGER and e == len(data)
    assert ber.read_integer(data, s, e) == value


@given(st.binary(max_size=70000))
def test_octets_round_trip_short_and_long_lengths(value):
    data = ber.octets(value)
    tag, s, e = ber.read_header(data, 0, len(data))
    assert (tag, data[s:e]) == (ber.OCTET_STRING, value)
    assert ber.frame_length(data) == len(data)


def test_known_encodings():
    assert ber.integer(0) == b"\x02\x01\x00"
    assert ber.integer(128) == b"\x02\x02\x00\x80"
    assert ber.integer(-1) == b"\x02\x01\xff"
    assert ber.enumerated(4) == b"\x0a\x01\x04"
    assert ber.boolean(True) == b"\x01\x01\xff"
    assert ber.octets(b"x" * 200)[:3] == b"\x04\x81\xc8"
    assert ber.sequence(ber.integer(1)) == b"\x30\x03\x02\x01\x01"


@pytest.mark.parametrize("data, why", [
    (b"\x30\x80\x02\x01\x01\x00\x00", "indefinite"),
    (b"\x30\x85\x00\x00\x00\x00\x01\x00", "length field of 5"),
    (b"\x1f\x01\x00", "multi-byte tags"),
    (b"\x30\x05\x02\x01", "runs past"),
    (b"\x30", "truncated"),
    (b"\x30\x82\x01", "truncated length"),
])
def test_malformed_headers_carry_protocol_error(data, why):
    with pytest.raises(BerError, match=why) as info:
        ber.read_header(data, 0, len(data))
    assert info.value.result_code == 2


def test_frame_length_waits_for_more_bytes_and_refuses_bad_lengths():
    with pytest.raises(Incomplete):
        ber.frame_length(b"\x30")
    with pytest.raises(Incomplete):
        ber.frame_length(b"\x30\x84\x00\x00")
    assert ber.frame_length(b"\x30\x84\x00\xa0\x00\x00") == 6 + 10 * 1024 * 1024
    with pytest.raises(BerError):
        ber.frame_length(b"\x30\x80")


def test_integer_and_boolean_sizes_are_bounded():
    with pytest.raises(BerError):
        ber.read_integer(b"", 0, 0)
    with pytest.raises(BerError):
        ber.read_integer(b"\x01" * 9, 0, 9)
    with pytest.raises(BerError):
        ber.read_boolean(b"\x01\x01", 0, 2)


@settings(max_examples=examples(300))
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_ber_error_only(data):
    try:
        tag, s, e = ber.read_header(data, 0, len(data))
        if tag & 0x20:
            ber.children(data, s, e)
    except BerError:
        pass
