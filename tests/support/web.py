"""The web application in-process through Flask's test client: `WebFixture`, the admin's credentials, forms' CSRF tokens."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from greenservers.config.store import ConfigStore
from greenservers.passwords import hash_password
from greenservers.process.runtime import Runtime
from greenservers.web import create_app

from .clock import FakeClock

PASSWORD = "correct horse battery"
PASSWORD_HASH = hash_password(PASSWORD)  # once: scrypt is slow on purpose
HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}  # as a browser asks


def basic(user: str = "admin", password: str = PASSWORD) -> dict[str, str]:
    """The HTTP Basic header of a script."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def csrf_of(html: str) -> str:
    """The CSRF token of the first form of a page."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field in the page"
    return match.group(1)


class WebFixture:
    """A Runtime on a fresh configuration file in `directory`, the app around it, and a test client; the
    failed-login limiter runs on `clock`."""

    def __init__(self, directory: Path, settings: dict | None = None, password: bool = True):
        self.directory = directory
        self.store = ConfigStore(directory / "greenservers.toml")
        values = {"admin_password_hash": PASSWORD_HASH} if password else {}
        values.update(settings or {})
        self.store.create(values)
        self.runtime = Runtime(self.store, self.store.ensure_generated())
        self.app = create_app(self.runtime)
        self.app.config["TESTING"] = True
        self.client = self.app.test_client()
        self.clock = FakeClock()
        self.app.extensions["greenservers_auth"]["clock"] = self.clock

    @property
    def config_text(self) -> str:
        return self.store.path.read_text()

    def login(self, client=None, password: str = PASSWORD, address: str = "127.0.0.1"):
        client = client or self.client
        page = client.get("/login", headers=HTML, environ_base={"REMOTE_ADDR": address})
        return client.post(
            "/login",
            data={"csrf_token": csrf_of(page.text), "username": "admin", "password": password, "next": "/settings/ports"},
            headers=HTML, environ_base={"REMOTE_ADDR": address},
        )

    def page_token(self) -> str:
        return csrf_of(self.client.get("/settings/ports", headers=HTML).text)
