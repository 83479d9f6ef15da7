"""The cores are sans-IO: every module under greenservers/proto/ imports with socket, select and gevent
made unimportable and time.sleep failing (in a fresh interpreter, so nothing was imported before)."""

from __future__ import annotations

import subprocess
import sys

from support import REPO

IMPORT_EVERY_CORE = """
import importlib, pkgutil, sys, time
for name in ("socket", "_socket", "select", "_select", "selectors", "ssl", "_ssl", "gevent"):
    sys.modules[name] = None  # import raises ImportError

def no_sleeping(*args):
    raise AssertionError("a core slept")

time.sleep = no_sleeping
import greenservers.proto
names = [m.name for m in pkgutil.walk_packages(greenservers.proto.__path__, "greenservers.proto.")]
for name in names:
    importlib.import_module(name)
print(" ".join(names))
"""


def test_every_core_imports_without_sockets_gevent_or_sleeping():
    result = subprocess.run([sys.executable, "-c", IMPORT_EVERY_CORE], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    imported = set(result.stdout.split())
    assert {"greenservers.proto.snmp", "greenservers.proto.ntp", "greenservers.proto.tftp.transfers", "greenservers.proto.http",
            "greenservers.proto.ldap", "greenservers.proto.clients", "greenservers.proto.results"} <= imported, imported
