"""The admin pages blueprint (server-side rendered, works without JavaScript)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("ui", __name__)


@bp.get("/")
def index():
    return "greenservers\n", 200, {"Content-Type": "text/plain; charset=utf-8"}
