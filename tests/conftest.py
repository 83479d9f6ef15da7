"""Fixtures for every tier of tests: `service` starts the real service with given settings and stops it after the
test; `open_tmp` is a folder other users can reach.

The tiers: tests/core/ (no sockets, no server: the sans-IO cores and the pure and
file-level modules), tests/shell/ (the gevent shells on loopback sockets and the
web application through Flask's test client, in this process), tests/system/
(the service as in production, gunicorn in a subprocess, driven by real
clients; the command line). Shared helpers are in tests/support/; the golden
vectors in tests/vectors/. The hypothesis profile (ci, dev or thorough) is loaded here, before any test
module is imported: tests/support/hypothesis_profiles.py.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from support import ServiceProcess, hypothesis_profiles

hypothesis_profiles.load()


def pytest_report_header(config):
    return hypothesis_profiles.header()


@pytest.fixture
def service(tmp_path):
    started: list[ServiceProcess] = []

    def start(settings: dict | None = None, expect_ready: bool = True, env: dict | None = None, name: str = "svc") -> ServiceProcess:
        proc = ServiceProcess(tmp_path / f"{name}{len(started)}", settings or {}, env=env)
        started.append(proc)
        return proc.start(expect_ready=expect_ready)

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def open_tmp():
    """A temporary folder other users can reach (pytest's own is root's only): for tests that run as another user."""
    path = Path(tempfile.mkdtemp(prefix="greenservers-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
