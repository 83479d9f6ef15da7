"""The gunicorn worker class: the composition root of the whole process.

gunicorn's master binds nothing (`bind = []` in gunicorn.conf.py); this one
gevent worker binds every socket of every service through the binder,
before anything serves, then starts a server for each bound socket through
its service's shell (the registry, greenservers.services: HTTP and HTTPS side
by side behind one connection gate, SNMP, TFTP, NTP, LDAP) and the ACME
manager. A bind failure exits with gunicorn's boot-error code, so the master
stops at once with our message.

Port changes apply live (`rebind`, called by Runtime.update for the API and
the Ports page, and when the file was changed by another process: noticed by
`watch_config_file` within a second, or on SIGHUP, forwarded by the master,
see greenservers.process.launch): new bindings are bound
first and start serving, removed ones stop accepting (HTTP requests in
flight finish), unchanged ones are not touched, so their connections and
transfers carry on. If any new binding cannot be bound, nothing changes and
the old ones serve on; a bad hand edit is logged and ignored, the service
never exits because of it. The worker binds every port itself, so ports
below 1024 need root or CAP_NET_BIND_SERVICE (the capability model; the
master binds nothing).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

import gevent
from gunicorn.workers.ggevent import GeventWorker

from ..config.private import tighten_install, user_name
from ..config.settings import SettingsError
from ..config.store import ChangeWatch, ConfigFileError, ConfigStore
from ..services import SERVICES, load_shell
from ..tls.acme import AcmeManager
from ..tls.certificates import CertificateError, TLSContextHolder, ensure_certificate
from . import binder, runtime as runtime_module
from .allocator import return_large_blocks
from .binder import BindError, Bound
from .offload import freeze_the_loaded
from .runtime import BindingState, Runtime

WORKER_BOOT_ERROR = 3  # gunicorn's Arbiter.WORKER_BOOT_ERROR: the master stops instead of respawning


def admin_page_url(settings, hostname: str) -> str | None:
    """Where an administrator opens the Ports page: the first HTTPS binding (else HTTP).

    A binding on every address is named by this host's name (the self-signed certificate
    holds it); one on a single address by that address; the scheme's own port is left out.
    """
    for scheme, bindings, default_port in (("https", settings.ip_https_port, 443), ("http", settings.ip_http_port, 80)):
        if bindings:
            binding = bindings[0]
            host = hostname if binding.is_wildcard else binding.display.rsplit(":", 1)[0]
            port = "" if binding.port == default_port else f":{binding.port}"
            return f"{scheme}://{host}{port}/settings/ports"
    return None


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
        return_large_blocks()  # connections' large buffers go back to the system when freed
        try:
            store = ConfigStore()
            settings = store.ensure_generated()
            for warning in settings.warnings:
                self.log.warning("%s: %s", store.path, warning)
            tightened = tighten_install(store.path, settings.data_path)
            if tightened.changed or tightened.not_ours:
                self.log.warning("%s and %s: %s", store.path, settings.data_path, tightened.summary())
            self.runtime = runtime_module.install(Runtime(store, settings))
            self.runtime.tls = TLSContextHolder(ensure_certificate(settings))
            self.runtime.acme = AcmeManager(self.runtime)
            plan = binder.plan_for(settings)
            self.bound = binder.bind_all(plan)
        except (SettingsError, ConfigFileError, CertificateError, BindError, OSError) as exc:
            self.log.error("%s", exc)
            sys.exit(WORKER_BOOT_ERROR)
        super().load_wsgi()
        self.runtime.web_app, self.runtime.access_log = self.wsgi, self.log
        try:  # a broken service module stops the start once, not a respawn loop
            shells = {path: load_shell(path)(self.runtime) for path in sorted({spec.shell for spec in SERVICES})}
        except Exception:
            self.log.exception("a service could not be loaded")
            sys.exit(WORKER_BOOT_ERROR)
        self.services = {spec.setting: shells[spec.shell] for spec in SERVICES}

    def run(self):
        runtime = self.runtime
        self.servers: list[tuple[Bound, object]] = []
        for bound in self.bound:
            self._start(bound)
        runtime.rebinder = self.rebind
        runtime.acme.start()
        gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(self.reload_config, "SIGHUP"))
        self.watcher = gevent.spawn(self.watch_config_file)
        freeze_the_loaded()  # every module, the web app and the services are loaded: never scanned again
        self.log.info("greenservers serving: %s; %s", ", ".join(f"{b.setting}={b.address}" for b in self.bound) or "nothing",
                      self._where_to_go())
        while self.alive:
            self.notify()
            gevent.sleep(1.0)
        self._stop_all()

    def _start(self, bound: Bound):
        server = self.services[bound.setting].make_server(bound)
        server.start()
        self.servers.append((bound, server))
        self._publish_states()
        return server

    def _stop(self, bound: Bound, server, timeout: float = 1.0) -> None:
        """Stop accepting on one binding; what is in flight finishes as its service says (HTTP requests on their own)."""
        self.servers.remove((bound, server))
        self.services[bound.setting].stop_server(server, timeout=timeout)
        bound.close()
        self._publish_states()

    def _publish_states(self) -> None:
        states: dict[str, list[BindingState]] = {}
        for bound, _ in self.servers:
            states.setdefault(bound.setting, []).append(BindingState(bound.address, "serving"))
        self.runtime.bindings = states

    def rebind(self, new_settings) -> Callable[[], None]:
        """Make the listening sockets match `new_settings`, all or nothing (see module docstring).

        Unchanged bindings are left alone. New ones are bound before old ones
        close, except where a new one needs the very port of an old one: that
        old one closes first and is bound again if the new one fails.
        """
        old_settings = self.runtime.settings
        wanted = binder.plan_for(new_settings)
        current = {(b.setting, b.transport, b.binding): (b, srv) for b, srv in self.servers}
        to_add = [item for item in wanted if item not in current]
        to_remove = [pair for key, pair in current.items() if key not in set(wanted)]

        def blocks(old: Bound, item) -> bool:
            return old.transport == item[1] and old.binding.covers(item[2])

        waiting = [item for item in to_add if any(blocks(old, item) for old, _ in to_remove)]
        blockers = [(old, srv) for old, srv in to_remove if any(blocks(old, item) for item in waiting)]
        fresh = binder.bind_all([item for item in to_add if item not in waiting])  # BindError: nothing changed
        for old, srv in blockers:
            self._stop(old, srv)
        try:
            fresh += binder.bind_all(waiting)
        except BindError:
            for bound in fresh:
                bound.close()
            for old, _ in blockers:  # put back what was closed for the attempt
                self._start(Bound(old.setting, old.transport, old.binding, binder.open_socket(old.binding, old.transport)))
            raise
        for bound in fresh:
            self._start(bound)
        for old, srv in to_remove:
            if (old, srv) not in blockers:
                self._stop(old, srv)
        if to_add or to_remove:
            self.log.info("bindings changed: +%s -%s", ", ".join(f"{b.setting}={b.address}" for b in fresh) or "none",
                          ", ".join(f"{o.setting}={o.address}" for o, _ in to_remove) or "none")
        return lambda: self.rebind(old_settings)

    def reload_config(self, cause: str):
        try:
            result = self.runtime.reload_from_file()
        except (SettingsError, ConfigFileError) as exc:
            self.log.error("%s: configuration not reloaded, the running settings stay: %s", cause, exc)
            return
        except BindError as exc:
            self.log.error("%s: bindings not changed, the old ones keep serving: %s", cause, exc)
            return
        self.log.info("%s: configuration reloaded; changed: %s", cause, ", ".join(result.changed) or "nothing")
        if "admin_password_hash" in result.changed:
            self.log.info("%s", self._where_to_go())

    def _where_to_go(self) -> str:
        """The admin page's URL on this host and whether its password is set (how to set it if not)."""
        settings = self.runtime.settings
        url = admin_page_url(settings, socket.gethostname())
        where = f"admin page: {url}" if url else "admin page: none (no HTTP or HTTPS binding)"
        if settings.admin_password_hash:
            return f"{where} (user admin)"
        command = f"{sys.executable} -m greenservers --config {self.runtime.store.path} passwd"
        who = "" if os.geteuid() == 0 else f" (as {user_name(os.geteuid())} or root)"
        return f"{where}; no admin password is set yet: run `{command}`{who}, the running server takes it within a second"

    def watch_config_file(self):
        """Apply what another process writes into the file (`passwd`, `setup`, a hand edit), as SIGHUP would.

        Why the server looks rather than the command telling it: a command would need the
        server's PID and the right to signal it (root beside a service user, `docker exec`,
        another container sharing the volume), or a control socket to secure; a stat of one
        file twice a second costs microseconds and also catches hand edits and any future
        command. The store's ChangeWatch decides when a change is complete enough to read.
        """
        watch = ChangeWatch(self.runtime.store)
        while self.alive:
            gevent.sleep(watch.POLL_SECONDS)
            change = watch.poll()
            if change == watch.CHANGED:
                self.reload_config("configuration file changed")
            elif change == watch.GONE:
                self.log.warning("%s is gone; the running settings stay until it is back", self.runtime.store.path)

    def _stop_all(self):
        deadline = time.monotonic() + self.cfg.graceful_timeout
        self.runtime.rebinder = None
        self.runtime.acme.stop()
        self.watcher.kill(block=False)
        for bound, server in self.servers:
            self.services[bound.setting].stop_server(server, timeout=1)
        for bound, server in self.servers:
            self.services[bound.setting].drain(server, max(0.0, deadline - time.monotonic()))
            bound.close()
        for service in set(self.services.values()):
            service.close()
