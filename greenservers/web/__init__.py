"""The Flask application factory: blueprints ui (pages), api (JSON), prov (provisioning)."""

from __future__ import annotations

from flask import Flask, current_app

from .. import runtime as runtime_module


def create_app(runtime=None) -> Flask:
    app = Flask(__name__)
    app.config["GREENSERVERS_RUNTIME"] = runtime
    app.config["MAX_CONTENT_LENGTH"] = 8 * 1024 * 1024

    from . import api, prov, ui

    app.register_blueprint(api.bp)
    app.register_blueprint(ui.bp)
    app.register_blueprint(prov.bp)
    return app


def get_runtime():
    """The runtime of the running app: the one given to create_app, else the process's."""
    return current_app.config.get("GREENSERVERS_RUNTIME") or runtime_module.current()
