"""The lint rules pinned in pyproject.toml ([tool.ruff]) hold for the whole project: ruff check finds nothing."""

from __future__ import annotations

import subprocess
import sys

from support import REPO


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(REPO)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
