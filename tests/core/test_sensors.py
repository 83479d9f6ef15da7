"""The sensor declarations: each unit declared where the name says it, and the /metrics names that follow from them."""

from __future__ import annotations

import re

from greenservers.sensors import DECLARED, UNITS


def test_a_sensor_named_in_a_unit_declares_it_and_says_it_in_its_description():
    for sensor in DECLARED:
        named = [unit for unit in UNITS if sensor.name.endswith(unit.suffix)]
        assert named == ([sensor.unit] if sensor.unit else []), sensor.name
        if sensor.unit:
            assert sensor.description.count(sensor.unit.words) == 1, sensor.name


def test_metric_names_are_unique_prometheus_names_in_base_units():
    names = [sensor.metric_name for sensor in DECLARED]
    assert len(set(names)) == len(names)
    for sensor in DECLARED:
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", sensor.metric_name)
        assert sensor.metric_name.endswith("_total") == (sensor.kind == "counter"), sensor.metric_name
        assert not re.search(r"centi|_kib|kilo|_x100|percent", sensor.metric_name), sensor.metric_name
        assert sensor.standard or sensor.metric_name.startswith("greenservers_")


def test_values_are_scaled_to_base_units():
    by_name = {sensor.name: sensor for sensor in DECLARED}
    assert by_name["process_cpu_centiseconds"].metric_value(250) == 2.5
    assert by_name["machine_mem_available_kib"].metric_value(3) == 3072
    assert by_name["machine_load1_x100"].metric_value(150) == 1.5
    assert by_name["tftp_bytes_sent"].metric_value(7) == 7
    assert by_name["machine_mem_available_kib"].metric_help == "The machine's available memory, in bytes."
