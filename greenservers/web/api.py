"""The JSON API blueprint: health check (no auth) and, behind auth, settings and sensors."""

from __future__ import annotations

from flask import Blueprint, jsonify

from . import get_runtime

bp = Blueprint("api", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(get_runtime().health())
