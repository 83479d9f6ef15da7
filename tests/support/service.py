"""The real service, started as in production (gunicorn -c gunicorn.conf.py app:app) in a subprocess,
and the command line (`python -m greenservers`) run as a separate process.

Readiness is the worker's "greenservers serving:" log line (or the process's
exit), never a sleep. Every process started is stopped by its PID. Every
binding the test does not set is off (the registry's binding keys).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import tomlkit

from greenservers.services import BINDING_KEYS

from .wait import eventually

REPO = Path(__file__).resolve().parents[2]
READY_LINE = "greenservers serving:"


def run_cli(args: list[str], config: Path, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m greenservers ARGS` as a separate process on the configuration file `config`."""
    return subprocess.run([sys.executable, "-m", "greenservers", *args], cwd=REPO, input=stdin, capture_output=True, text=True,
                          env=dict(os.environ, GREENSERVERS_CONFIG=str(config), **(env or {})), timeout=60)


def stop_process(proc: subprocess.Popen | None, timeout: float = 15.0, group: bool = False) -> None:
    """End a process we started, by its PID: SIGTERM, then SIGKILL (to its whole process group with `group`)
    if it has not ended within `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        (os.killpg if group else os.kill)(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


class ServiceProcess:
    """greenservers run exactly as in production: gunicorn -c gunicorn.conf.py app:app (a benchmark may
    name another WSGI application, `app`, found on the PYTHONPATH its `env` gives)."""

    def __init__(self, directory: Path, settings: dict, env: dict | None = None, umask: int = -1, app: str = "app:app"):
        self.directory = Path(directory)
        self.app = app
        self.umask = umask  # -1: the test's own
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path = self.directory / "greenservers.toml"
        full = {key: "" for key in BINDING_KEYS}
        full.update(settings)
        self.settings = full
        self.config_path.write_text(tomlkit.dumps(full))
        self.env = dict(os.environ, GREENSERVERS_CONFIG=str(self.config_path), **(env or {}))
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    # -- life cycle -------------------------------------------------------

    def start(self, timeout: float = 30.0, expect_ready: bool = True) -> ServiceProcess:
        """Start (or start again after stop()) and, unless told otherwise, wait for the ready line."""
        if self._reader is not None:
            self._reader.join(timeout)  # the last run's reader is done: it cannot set the event again
        self._ready.clear()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(REPO / "gunicorn.conf.py"), self.app],
            cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True, umask=self.umask,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if expect_ready:
            self.wait_ready(timeout)
        return self

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if READY_LINE in line:
                self._ready.set()
        self._ready.set()  # the process ended: stop waiting

    def wait_ready(self, timeout: float = 30.0) -> None:
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            raise AssertionError("service did not start:\n" + self.log)

    def wait_exit(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def wait_for_log(self, text: str, timeout: float = 10.0, since: int = 0) -> str:
        """The first line holding `text`, among the lines from number `since` on (`len(self.lines)` before an action)."""
        return eventually(lambda: next((line for line in self.lines[since:] if text in line), None), timeout,
                          what=lambda: f"{text!r} logged:\n{self.log}")

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    @property
    def pid(self) -> int:
        """The master's PID (the worker's: worker_pids)."""
        return self.proc.pid

    @property
    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    @property
    def worker_rss_mib(self) -> float:
        """The worker's resident memory, in MiB."""
        for line in Path(f"/proc/{self.worker_pids[0]}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def signal_master(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        stop_process(self.proc, group=True)

    # -- addresses -------------------------------------------------------

    def port(self, key: str) -> int:
        """The first port of a binding setting (tests bind plain ports or [addr]:port)."""
        token = str(self.settings[key]).split()[0]
        return int(token.rsplit(":", 1)[-1])

    def url(self, path: str = "/", scheme: str = "http", host: str = "127.0.0.1") -> str:
        key = "ip_https_port" if scheme == "https" else "ip_http_port"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port(key)}{path}"

    @property
    def cert_path(self) -> Path:
        return self.directory / "data" / "tls" / "selfsigned.crt"

    def sensors(self, admin_password: str, scheme: str = "http") -> dict[str, int]:
        """Every sensor's value, from /api/sensors on the plain HTTP binding (or the HTTPS one, trusting its
        self-signed certificate)."""
        import requests

        verify = str(self.cert_path) if scheme == "https" else True
        body = requests.get(self.url("/api/sensors", scheme), auth=("admin", admin_password), timeout=10, verify=verify).json()
        return {row["name"]: row["value"] for row in body["sensors"]}
