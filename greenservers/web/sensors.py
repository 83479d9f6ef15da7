"""The sensors blueprint: the one sensor registry shown as a page, as JSON and for Prometheus.

`/sensors` (HTML) and `GET /api/sensors` (JSON) list every sensor of
greenservers.sensors with its name, SNMP OID (as answered by the SNMP agent
and named in deploy/mibs/GREENSERVERS-MIB.txt), current value in SNMP's units
and description. `GET /metrics` is written by the official prometheus_client
library (text format 0.0.4, or OpenMetrics when the scraper asks for it):
the sensors in base units under the names `Sensor.metric_name` derives from
their declaration, and the standard process_* and python_* metrics of
prometheus_client's own collectors, so existing dashboards work. All are
admin-only: HTTP Basic works for a scraper or a script.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, render_template, request
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

from ..proto.snmp import mib_name
from ..sensors import SENSORS_OID
from . import get_runtime
from .auth import admin_required

bp = Blueprint("sensors", __name__)


def _rows() -> list[dict]:
    rows = get_runtime().sensors.snapshot()
    by_name = get_runtime().sensors.by_name
    for row in rows:
        row["mib_name"] = mib_name(row["name"])
        row["snmp_type"] = "Counter32" if row["kind"] == "counter" else "Gauge32"
        row["metric"] = by_name[row["name"]].metric_name
    return rows


@bp.get("/sensors")
@admin_required
def sensors_page():
    return render_template("sensors.html", sensors=_rows(), subtree=".".join(map(str, SENSORS_OID)))


@bp.get("/api/sensors")
@admin_required
def sensors_api():
    return jsonify(sensors=_rows(), subtree=".".join(map(str, SENSORS_OID)), mib="GREENSERVERS-MIB")


class SensorCollector:
    """The declared sensors as Prometheus metric families, in base units (see greenservers.sensors).

    Sensors with a `standard` metric are left to prometheus_client's ProcessCollector.
    """

    def collect(self):
        sensors = get_runtime().sensors
        for sensor in sensors.declared:
            if sensor.standard:
                continue
            family = CounterMetricFamily if sensor.kind == "counter" else GaugeMetricFamily
            unit = sensor.unit.base_suffix.lstrip("_") if sensor.unit is not None else ""
            yield family(sensor.metric_name, f"{sensor.metric_help} (SNMP .{'.'.join(map(str, sensor.oid))})",
                         value=sensor.metric_value(sensors.value(sensor.name)), unit=unit)


def _metrics_registry() -> CollectorRegistry:
    """This app's registry: our sensors beside the standard process, platform and GC collectors."""
    registry = current_app.extensions.get("greenservers_metrics")
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=registry)
        registry.register(SensorCollector())
        current_app.extensions["greenservers_metrics"] = registry
    return registry


@bp.get("/metrics")
@admin_required
def metrics():
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encode(_metrics_registry()), content_type=content_type)
