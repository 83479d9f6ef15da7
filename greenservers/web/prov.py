"""Phone provisioning over HTTP(S): /prov/<path>, the same files as TFTP."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("prov", __name__)
