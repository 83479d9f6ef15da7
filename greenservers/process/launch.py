"""Master-side hooks used by gunicorn.conf.py (the master is not monkey-patched).

The master checks the configuration once before forking, so a bad file
stops the start with its reasons. It sets the private umask the worker
inherits and rewords gunicorn's empty "Listening at:" line. SIGHUP is
forwarded to the worker, which re-reads the file itself: gunicorn's own
reload would start a second worker that cannot bind the ports the first one
holds, and exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys

from ..config.private import use_private_umask
from ..config.settings import SettingsError
from ..config.store import ConfigFileError, ConfigStore


def check_config_or_exit() -> None:
    store = ConfigStore()
    try:
        settings = store.load()
    except (SettingsError, ConfigFileError) as exc:
        reasons = exc.errors.items() if isinstance(exc, SettingsError) else [("file", str(exc))]
        for name, message in reasons:
            print(f"greenservers: {store.path}: {name}: {message}", file=sys.stderr)
        sys.exit(1)
    for warning in settings.warnings:
        print(f"greenservers: {store.path}: {warning}", file=sys.stderr)


class WorkerBindsFilter(logging.Filter):
    """gunicorn's "Listening at:  (PID)" lists the master's sockets, and it has none: say where the ports are."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Listening at: %s (%s)" and record.args and not record.args[0]:
            record.msg = "master %s started; it binds nothing: the worker binds every service and names the bindings when it serves"
            record.args = (record.args[1],)
        return True


def on_starting(arbiter) -> None:
    use_private_umask()  # inherited by the worker: SQLite's -wal/-shm and anything else made without a mode
    arbiter.log.error_log.addFilter(WorkerBindsFilter())
    check_config_or_exit()

    def forward_hup():
        arbiter.log.info("SIGHUP: asking the worker to re-read %s", ConfigStore().path)
        for pid in list(arbiter.WORKERS):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    arbiter.handle_hup = forward_hup
