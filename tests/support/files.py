"""The modes of what greenservers writes: every file 0600, every folder 0700 (greenservers.config.private)."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def modes_under(*roots: Path) -> dict[str, str]:
    """Every file and folder under `roots` (the roots included) -> its mode, e.g. "0o600"."""
    found = {}
    for root in roots:
        found[str(root)] = oct(stat.S_IMODE(os.lstat(root).st_mode))
        if root.is_dir():
            for folder, dirs, files in os.walk(root):
                for name in dirs + files:
                    path = os.path.join(folder, name)
                    found[path] = oct(stat.S_IMODE(os.lstat(path).st_mode))
    return found


def assert_private(*roots: Path) -> dict[str, str]:
    found = modes_under(*roots)
    loose = {path: mode for path, mode in found.items()
             if mode != ("0o700" if os.path.isdir(path) else "0o600")}
    assert not loose, f"not private: {loose}"
    return found
