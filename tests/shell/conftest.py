"""The shell tier: the gevent shells on loopback sockets (port 0) and the web application through
Flask's test client, in this process. `web`: the app on a fresh configuration file (support.web)."""

from __future__ import annotations

import pytest
from support.web import WebFixture


@pytest.fixture
def web(tmp_path):
    return WebFixture(tmp_path)
