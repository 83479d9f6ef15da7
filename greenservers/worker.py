"""The gunicorn worker class: the composition root of the whole process.

gunicorn's master binds nothing (`bind = []` in gunicorn.conf.py); this one
gevent worker binds every socket of every service through the binder,
before anything serves, then serves HTTP and HTTPS side by side behind one
connection gate and starts the UDP/TCP services. A bind failure exits with
gunicorn's boot-error code, so the master stops at once with our message.

SIGHUP (forwarded by the master, see greenservers.launch) re-reads the
configuration file: a bad file is logged and ignored; the service never
exits because of it.
"""

from __future__ import annotations

import logging
import signal
import sys
import time

import gevent
from gunicorn.workers.ggevent import GeventWorker

from . import binder, runtime as runtime_module
from .binder import BindError, Bound
from .httpserver import CappedWSGIServer, https_redirect
from .proto.http import ConnectionGate
from .runtime import BindingState, Runtime
from .service import SERVICES, load_service_class
from .settings import SettingsError
from .store import ConfigFileError, ConfigStore
from .tls import CertificateError, TLSContextHolder, ensure_certificate

HTTP_SETTINGS = ("ip_http_port", "ip_https_port")


def _attach_to_gunicorn_log(gunicorn_log) -> None:
    """Send the greenservers.* loggers to gunicorn's error log, in its format."""
    ours = logging.getLogger("greenservers")
    error_log = gunicorn_log.error_log
    ours.handlers = list(error_log.handlers)
    ours.setLevel(error_log.level if error_log.level != logging.NOTSET else logging.INFO)
    ours.propagate = False


class GreenWorker(GeventWorker):
    """One worker serves everything; see the module docstring."""

    def load_wsgi(self):
        _attach_to_gunicorn_log(self.log)
        try:
            store = ConfigStore()
            settings = store.ensure_generated()
            for warning in settings.warnings:
                self.log.warning("%s: %s", store.path, warning)
            self.runtime = runtime_module.install(Runtime(store, settings))
            self.runtime.tls = TLSContextHolder(ensure_certificate(settings))
            plan = binder.plan_for(settings, set(HTTP_SETTINGS) | set(SERVICES))
            self.bound = binder.bind_all(plan)
        except (SettingsError, ConfigFileError, CertificateError, BindError, OSError) as exc:
            self.log.error("%s", exc)
            sys.exit(self.WORKER_BOOT_ERROR if hasattr(self, "WORKER_BOOT_ERROR") else 3)
        super().load_wsgi()

    def run(self):
        runtime = self.runtime
        self.gate = ConnectionGate(lambda: (runtime.settings.http_max_conn, runtime.settings.http_max_conn_rate), time.monotonic)
        self.services = {}
        self.servers: list[tuple[Bound, object]] = []
        for bound in self.bound:
            self._start(bound)
        gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(self.reload_config))
        self.log.info("greenservers serving: %s", ", ".join(f"{b.setting}={b.address}" for b in self.bound) or "nothing")
        while self.alive:
            self.notify()
            gevent.sleep(1.0)
        self._stop_all()

    def _start(self, bound: Bound):
        states = self.runtime.bindings.setdefault(bound.setting, [])
        if bound.setting in HTTP_SETTINGS:
            server = self._http_server(bound)
        else:
            service = self._service_for(bound.setting)
            server = service.make_server(bound)
        server.start()
        self.servers.append((bound, server))
        states.append(BindingState(bound.address, "serving"))
        return server

    def _http_server(self, bound: Bound):
        tls = self.runtime.tls if bound.setting == "ip_https_port" else None
        app = self.wsgi if tls else https_redirect(self.wsgi, self.runtime)
        return CappedWSGIServer(bound.sock, app, self.gate, self.runtime.sensors, tls_holder=tls, log=self.log, error_log=self.log)

    def _service_for(self, setting: str):
        path = SERVICES[setting]
        if path not in self.services:
            self.services[path] = load_service_class(path)(self.runtime)
        return self.services[path]

    def reload_config(self):
        try:
            result = self.runtime.reload_from_file()
        except (SettingsError, ConfigFileError) as exc:
            self.log.error("SIGHUP: configuration not reloaded, the running settings stay: %s", exc)
            return
        except BindError as exc:
            self.log.error("SIGHUP: bindings not changed, the old ones keep serving: %s", exc)
            return
        self.log.info("SIGHUP: configuration reloaded; changed: %s", ", ".join(result.changed) or "nothing")
        if result.needs_restart:
            self.log.warning("SIGHUP: %s changed; takes effect after restart", ", ".join(result.needs_restart))

    def _stop_all(self):
        deadline = time.monotonic() + self.cfg.graceful_timeout
        for bound, server in self.servers:
            if isinstance(server, CappedWSGIServer):
                server.close()
            else:
                server.stop(timeout=1)
        for bound, server in self.servers:
            if isinstance(server, CappedWSGIServer):
                server.stop_gracefully(max(0.0, deadline - time.monotonic()))
            bound.close()
        for service in self.services.values():
            service.close()
