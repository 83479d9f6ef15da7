"""The sensors blueprint: the one sensor registry shown as a page, as JSON and in the Prometheus text format.

`/sensors` (HTML), `GET /api/sensors` (JSON) and `GET /metrics` (Prometheus
exposition format 0.0.4) list every sensor of greenservers.sensors with its
name, SNMP OID (as answered by the SNMP agent and named in
deploy/mibs/GREENSERVERS-MIB.txt), current value and description. All are
admin-only: HTTP Basic works for a scraper or a script.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, render_template

from ..proto.snmp import mib_name
from ..sensors import SENSORS_OID
from . import get_runtime
from .auth import admin_required

bp = Blueprint("sensors", __name__)

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRIC_PREFIX = "greenservers_"


def _rows() -> list[dict]:
    rows = get_runtime().sensors.snapshot()
    for row in rows:
        row["mib_name"] = mib_name(row["name"])
        row["snmp_type"] = "Counter32" if row["kind"] == "counter" else "Gauge32"
    return rows


@bp.get("/sensors")
@admin_required
def sensors_page():
    return render_template("sensors.html", sensors=_rows(), subtree=".".join(map(str, SENSORS_OID)))


@bp.get("/api/sensors")
@admin_required
def sensors_api():
    return jsonify(sensors=_rows(), subtree=".".join(map(str, SENSORS_OID)), mib="GREENSERVERS-MIB")


def prometheus_text(rows: list[dict]) -> str:
    """The exposition format: HELP, TYPE and one sample per sensor; counters get the _total suffix."""
    lines = []
    for row in rows:
        metric = METRIC_PREFIX + row["name"] + ("_total" if row["kind"] == "counter" else "")
        help_text = row["description"].replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"# HELP {metric} {help_text} (SNMP .{row['oid']})")
        lines.append(f"# TYPE {metric} {row['kind']}")
        lines.append(f"{metric} {int(row['value'])}")
    return "\n".join(lines) + "\n"


@bp.get("/metrics")
@admin_required
def metrics():
    return Response(prometheus_text(get_runtime().sensors.snapshot()), content_type=PROMETHEUS_CONTENT_TYPE)
