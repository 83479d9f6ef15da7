"""Changes through the API apply to the running service without a restart (real gunicorn process)."""

from __future__ import annotations

import requests
from support import eventually, free_port
from support.http import held_connection
from support.web import PASSWORD, PASSWORD_HASH

AUTH = ("admin", PASSWORD)


def _status_of_new_connection(port: int) -> int:
    with requests.Session() as session:
        return session.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code


def _wait_for_status(port: int, status: int, timeout: float = 10.0) -> None:
    eventually(lambda: _status_of_new_connection(port) == status, timeout, what=f"status {status}")


def _put(url: str, changes: dict, timeout: float = 10.0) -> requests.Response:
    """PUT, retried while the cap of one turns it away (a just-closed connection may still hold the slot)."""
    def answered() -> requests.Response | None:
        with requests.Session() as session:
            answer = session.put(url, json=changes, auth=AUTH, timeout=5)
        return answer if answer.status_code != 503 else None

    return eventually(answered, timeout, what=f"PUT {changes} admitted")


def test_changed_connection_cap_applies_without_restart(service):
    svc = service({"ip_http_port": f"127.0.0.1:{free_port()}", "admin_password_hash": PASSWORD_HASH})
    port = svc.port("ip_http_port")
    workers = svc.worker_pids
    api = svc.url("/api/settings/ports")

    assert _put(api, {"http_max_conn": 1}).status_code == 200
    with held_connection(port):  # the one slot is taken ...
        assert _status_of_new_connection(port) == 503  # ... so a second connection is turned away

    assert _put(api, {"http_max_conn": 2}).json()["http_max_conn"] == 2
    with held_connection(port):
        _wait_for_status(port, 200)  # the raised cap admits a second one (under 1 this never succeeds)

    assert svc.worker_pids == workers  # same worker: nothing was restarted
    assert "http_max_conn = 2" in svc.config_path.read_text()
    svc.wait_for_log("settings changed by admin from 127.0.0.1 via API (HTTP Basic): http_max_conn: 1 -> 2")
