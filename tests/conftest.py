"""Shared fixtures: `service` starts the real service with given settings and stops it after the test."""

from __future__ import annotations

import pytest

from support import ServiceProcess


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
