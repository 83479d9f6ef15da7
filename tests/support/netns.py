"""The one way tests use a private network namespace: a function run in a child process inside one.

A test that needs what loopback alone does not give (a wildcard binding, a
standard port below 1024, a second local address) calls
`in_network_namespace(function, *args)`. The child (`python -m support.netns`)
runs under `unshare -n` (as root) or `unshare -rn` (a user namespace of its
own, otherwise): a network of its own holding only `lo`, which it brings up
with the `addresses` asked for, then it calls `function(*args)` (a module-level
function of a test module, found by its file) and prints what it returns as
JSON, which comes back here. The function starts and stops whatever it needs
inside (the service, clients); nothing it starts outlives the namespace.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent


def in_network_namespace(function: Callable, *args, addresses: tuple[str, ...] = (), timeout: float = 120.0) -> Any:
    """`function(*args)` run in a private network namespace with `lo` up and `addresses` on it; its JSON answer."""
    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    command = [*unshare, sys.executable, "-m", "support.netns", str(Path(sys.modules[function.__module__].__file__).resolve()),
               function.__name__, json.dumps(list(addresses)), *map(str, args)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _add_address(address: str) -> None:
    """An extra address on lo (IPv6 without duplicate address detection: usable at once)."""
    if ":" in address:
        subprocess.run(["ip", "-6", "addr", "add", address, "dev", "lo", "nodad"], check=True)
    else:
        subprocess.run(["ip", "addr", "add", address, "dev", "lo"], check=True)


def _main(path: str, name: str, addresses: str, *args: str) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for address in json.loads(addresses):
        _add_address(address)
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print(json.dumps(getattr(module, name)(*args)))


if __name__ == "__main__":
    _main(*sys.argv[1:])
