"""A fresh clone with nothing beside it passes the MIB checks: no test needs a file outside the checkout.

The repository is cloned into an empty temporary folder; the clone's own
tests/fetch-base-mibs (what ./run-tests runs) fetches the base MIBs from the
npm registry into the clone, and the clone's MIB tests run there with this
interpreter. A path leaving the checkout (such as ../shared) would find
nothing beside the clone and fail.
"""

from __future__ import annotations

import subprocess
import sys

from support import REPO


def test_a_clone_alone_in_an_empty_folder_passes_the_mib_tests(tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    clone = alone / "greenservers"
    cloned = subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], capture_output=True, text=True, timeout=120)
    assert cloned.returncode == 0, cloned.stderr
    fetched = subprocess.run([str(clone / "tests" / "fetch-base-mibs")], capture_output=True, text=True, timeout=300)
    assert fetched.returncode == 0, fetched.stderr
    assert sorted(p.name for p in (clone / ".test-cache" / "base-mibs").glob("*.mib")) == [
        "SNMPv2-CONF.mib", "SNMPv2-MIB.mib", "SNMPv2-SMI.mib", "SNMPv2-TC.mib"]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/core/test_snmp_mib.py"],
                            cwd=clone, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "4 passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-1000:]
    assert sorted(p.name for p in alone.iterdir()) == ["greenservers"]  # nothing appeared beside it
