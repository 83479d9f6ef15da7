"""The short fuzzing pass: every protocol core and the port/settings parsers under hypothesis (~1 minute in all).

The targets (tests/support/fuzz_targets.py) are the ones bench/fuzz_long.py runs for
millions of inputs under atheris. Inputs are random octets and real-client
traffic (the golden vectors) with random edits: flipped, inserted and
deleted octets and BER-significant values (long lengths, 0x80, 0xff), so the
pass reaches past the first length check. Any exception other than a core's
own protocol errors fails the test; every crash ever found is replayed from
tests/vectors/fuzz_regressions.py.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from support import fuzz_targets
from support.hypothesis_profiles import examples
from vectors.fuzz_regressions import HOSTILE, REGRESSIONS

SEEDS = fuzz_targets.seeds()
EXAMPLES = {"snmp": 6000, "tftp": 6000, "ber": 6000, "ldap": 6000, "ntp": 6000, "settings": 1500}  # ~45 s in all on 2 cores
INTERESTING = (b"\x00", b"\x7f", b"\x80", b"\x81", b"\x84\xff\xff\xff\xff", b"\xff", b"\x30\x80", fuzz_targets.SEPARATOR)


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(data)))
        edit = draw(st.integers(0, 3))
        if edit == 0 and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif edit == 1:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif edit == 2:
            del data[pos:pos + draw(st.integers(1, 16))]
        else:
            data[pos:pos] = draw(st.sampled_from(INTERESTING))
    return bytes(data)


def inputs(name: str):
    return st.one_of(st.binary(max_size=1024), mutated(SEEDS[name]))


def fuzz_test(name: str):
    target = fuzz_targets.TARGETS[name]

    @settings(max_examples=examples(EXAMPLES[name]), deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=inputs(name))
    def test(data: bytes) -> None:
        target(data)

    test.__name__ = f"test_fuzz_{name}"
    return test


for _name in fuzz_targets.TARGETS:
    globals()[f"test_fuzz_{_name}"] = fuzz_test(_name)


@pytest.mark.parametrize("name", sorted(fuzz_targets.TARGETS))
def test_seeds_pass_every_target(name):
    """The real-client traffic itself goes through cleanly (and the targets accept it)."""
    assert SEEDS[name]
    for seed in SEEDS[name]:
        fuzz_targets.TARGETS[name](seed)


@pytest.mark.parametrize("name", sorted(fuzz_targets.TARGETS))
def test_regressions_and_hostile_inputs(name):
    """Inputs that once crashed a core, and hand-made worst cases: each gives an error reply, a drop or a protocol exception."""
    cases = REGRESSIONS.get(name, []) + HOSTILE.get(name, [])
    for _what, hex_input in cases:
        fuzz_targets.TARGETS[name](bytes.fromhex(hex_input))


def test_every_vector_names_a_target():
    assert set(REGRESSIONS) | set(HOSTILE) <= set(fuzz_targets.TARGETS)
