"""The registry of services (greenservers.services) is the one place a service is declared: the settings, the
binder's plan and /healthz's names follow from it."""

from __future__ import annotations

from greenservers.config.settings import BINDING_SETTINGS, Settings
from greenservers.process import binder
from greenservers.process.runtime import Runtime
from greenservers.services import BINDING_KEYS, BY_SETTING, SERVICES, UNPRIVILEGED_PORTS


def test_every_binding_setting_is_a_registered_service_with_its_transport():
    assert [s.name for s in BINDING_SETTINGS] == list(BINDING_KEYS)  # the same lists, in the settings' order
    for setting in BINDING_SETTINGS:
        assert setting.transport == BY_SETTING[setting.name].transport, setting.name
    assert len({spec.name for spec in SERVICES}) == len(SERVICES)


def test_the_binders_plan_and_the_health_names_come_from_the_registry(tmp_path):
    settings = Settings.from_raw({"ip_http_port": "8080", "ip_snmp_port": "127.0.0.1:1161", "ip_ldaps_port": ""})
    plan = binder.plan_for(settings)
    assert [(setting, transport) for setting, transport, _ in plan] == [
        (spec.setting, spec.transport) for spec in SERVICES for _ in getattr(settings, spec.setting)]

    class Store:  # what Runtime asks of a store when it is given the settings
        path = tmp_path / "greenservers.toml"

    health = Runtime(Store(), settings).health()
    assert list(health["services"]) == [spec.name for spec in SERVICES]
    assert {name: entry["setting"] for name, entry in health["services"].items()} == {s.name: s.setting for s in SERVICES}


def test_setup_moves_only_the_ports_below_1024():
    defaults = Settings.from_raw({})
    for key, port in UNPRIVILEGED_PORTS.items():
        assert int(port) >= 1024 and all(binding.port < 1024 for binding in getattr(defaults, key)), key
    assert all(binding.port >= 1024 for key in BINDING_KEYS if key not in UNPRIVILEGED_PORTS for binding in getattr(defaults, key))
