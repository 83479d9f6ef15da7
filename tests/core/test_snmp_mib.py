"""deploy/mibs/GREENSERVERS-MIB.txt: rendered from the sensor registry, passes smilint, and net-snmp resolves every sensor.

The IETF base modules it imports (SNMPv2-SMI, -TC, -CONF, -MIB) come from npm's
net-snmp package, fetched by ./run-tests (tests/fetch-base-mibs) into the
checkout's .test-cache/: nothing outside the checkout is used.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from support import REPO

from greenservers.proto.snmp import mib_name, render_mib
from greenservers.sensors import DECLARED

MIB_FILE = REPO / "deploy" / "mibs" / "GREENSERVERS-MIB.txt"
BASE_MIBS = REPO / ".test-cache" / "base-mibs"  # SNMPv2-SMI, -TC, -CONF, -MIB (not copied into the project)
REGENERATE = ("python -c \"from greenservers.proto.snmp import render_mib; from greenservers.sensors import DECLARED; "
              "print(render_mib(DECLARED), end='')\" > deploy/mibs/GREENSERVERS-MIB.txt")


@pytest.fixture
def base_mibs():
    """The IETF base modules (Debian ships them only in non-free); a clear failure without them."""
    assert (BASE_MIBS / "SNMPv2-SMI.mib").is_file(), (
        f"the base MIBs are not in {BASE_MIBS}: run ./run-tests, which fetches them (tests/fetch-base-mibs)"
    )
    return BASE_MIBS


def test_mib_file_is_the_rendering_of_the_registry():
    assert MIB_FILE.read_text() == render_mib(DECLARED), f"the registry changed; regenerate the MIB file:\n{REGENERATE}"


def test_smilint_level_3_finds_no_errors(base_mibs):
    result = subprocess.run(["smilint", "-l", "3", str(MIB_FILE)], capture_output=True, text=True,
                            env=dict(os.environ, SMIPATH=str(BASE_MIBS)), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == "", result.stdout + result.stderr


def test_snmptranslate_resolves_every_sensor_name_to_its_oid(base_mibs):
    names = [f"GREENSERVERS-MIB::{mib_name(s.name)}.0" for s in DECLARED]
    result = subprocess.run(["snmptranslate", "-M", f"+{MIB_FILE.parent}:{BASE_MIBS}", "-m", "ALL", "-On", *names],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["." + ".".join(map(str, s.oid)) for s in DECLARED]
    assert "GREENSERVERS" not in result.stderr, result.stderr  # other installed MIBs may complain; ours must not


def test_snmptranslate_names_each_sensor_oid(base_mibs):
    oids = ["." + ".".join(map(str, s.oid)) for s in DECLARED]
    result = subprocess.run(["snmptranslate", "-M", f"+{MIB_FILE.parent}:{BASE_MIBS}", "-m", "GREENSERVERS-MIB", *oids],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.split() == [f"GREENSERVERS-MIB::{mib_name(s.name)}.0" for s in DECLARED]
