"""Settings declarations and their pure validators."""

import ipaddress

import pytest

from greenservers.config.settings import BY_NAME, DECLARATIONS, GROUPS, Settings, SettingsError

DOCUMENTED_DEFAULTS = {
    "ip_http_port": "80", "ip_https_port": "443", "http_max_conn_rate": 100, "http_max_conn": 1000,
    "http_redirect_https": False, "ip_snmp_port": "161", "snmp_trusted": "", "snmp_community": "public",
    "ip_tftp_port": "69", "tftp_write": False, "ip_ntp_port": "123", "ntp_server": "",
    "ip_ldap_port": "2389", "ip_ldaps_port": "2636", "ldap_base": "dc=pbx", "ldap_user": "phonebook",
    "data_dir": "data", "tls_cert": "", "tls_key": "",
}


def test_every_setting_of_the_design_is_declared_once_with_its_default():
    names = [s.name for s in DECLARATIONS]
    assert len(names) == len(set(names))
    for name, default in DOCUMENTED_DEFAULTS.items():
        assert BY_NAME[name].default == default, name
    assert "ldap_password" in BY_NAME and BY_NAME["ldap_password"].secret


def test_every_declaration_is_complete():
    for s in DECLARATIONS:
        assert s.group in GROUPS and s.description.endswith(".") and callable(s.validate)
        assert s.rebind == (s.is_bindings or s.name == "data_dir"), s.name


def test_defaults_validate():
    settings = Settings.from_raw({})
    assert settings.http_max_conn == 1000 and settings.snmp_trusted == ()
    assert settings.ldap_password is None  # generated at first start


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("http_max_conn", 0, "0 is out of range"),
        ("http_max_conn", "many", "'many' is not a whole number"),
        ("http_max_conn", True, "True is not a whole number"),
        ("http_max_conn_rate", 10**9, "out of range"),
        ("http_redirect_https", "maybe", "'maybe' is not true or false"),
        ("snmp_trusted", "10.0.0.1 nms.example.com", "'nms.example.com' is not an IPv4 or IPv6 address"),
        ("snmp_community", "has space", "without spaces"),
        ("snmp_community", "", "must not be empty"),
        ("ntp_server", "not a host!", "'not a host!' is neither"),
        ("ntp_server", "1.2.3.4.5", "neither"),
        ("ldap_base", "pbx", "'pbx' is not a DN"),
        ("ip_tftp_port", "tftp", "'tftp'"),
        ("ntp_local_stratum", 16, "out of range 0..15"),
        ("ldap_password", "", "1 to 128"),
        ("admin_password_hash", "plain", "not a password hash"),
    ],
)
def test_validators_quote_the_bad_value(name, value, message):
    with pytest.raises(SettingsError) as info:
        Settings.from_raw({name: value})
    assert message in info.value.errors[name]


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("http_max_conn", "20", 20),
        ("http_redirect_https", "on", True),
        ("http_redirect_https", "false", False),
        ("snmp_trusted", "127.0.0.1 ::1 10.1.0.0/16",
         (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"), ipaddress.ip_network("10.1.0.0/16"))),
        ("ntp_server", "pool.ntp.org", "pool.ntp.org"),
        ("ntp_server", "2001:db8::1", "2001:db8::1"),
        ("ldap_base", "ou=phonebook, dc=example,dc=com", "ou=phonebook,dc=example,dc=com"),
        ("ip_http_port", 8080, parse := None),
    ],
)
def test_accepted_values(name, value, expected):
    settings = Settings.from_raw({name: value})
    if expected is not None:
        assert getattr(settings, name) == expected


def test_binding_lists_of_one_transport_may_not_overlap():
    with pytest.raises(SettingsError) as info:
        Settings.from_raw({"ip_http_port": "8080", "ip_ldap_port": "0.0.0.0:8080"})
    assert "ip_ldap_port" in info.value.errors and "ip_http_port" in info.value.errors["ip_ldap_port"]
    # TCP and UDP may share a number
    Settings.from_raw({"ip_http_port": "1161", "ip_snmp_port": "1161"})


def test_with_changes_is_all_or_nothing():
    base = Settings.from_raw({"ip_http_port": "8080"})
    with pytest.raises(SettingsError) as info:
        base.with_changes({"http_max_conn": 5, "ip_https_port": "bad", "nope": 1})
    assert set(info.value.errors) == {"nope"}
    with pytest.raises(SettingsError) as info:
        base.with_changes({"http_max_conn": 5, "ip_https_port": "bad"})
    assert set(info.value.errors) == {"ip_https_port"}
    assert base.http_max_conn == 1000
    changed = base.with_changes({"http_max_conn": 5})
    assert changed.http_max_conn == 5 and base.changed_names(changed) == ["http_max_conn"]
    assert base.changed_bindings(changed) == []
    assert base.changed_bindings(base.with_changes({"ip_http_port": "8081", "http_max_conn": 5})) == ["ip_http_port"]


def test_unknown_keys_warn():
    settings = Settings.from_raw({"ip_htp_port": "80"})
    assert settings.warnings == ("unknown setting 'ip_htp_port' ignored",)


def test_public_view_hides_secrets():
    settings = Settings.from_raw({"snmp_community": "s3cret", "ldap_password": "pw-123"})
    view = settings.public_view()
    assert view["snmp_community"] == {"set": True} and view["ldap_password"] == {"set": True}
    assert "s3cret" not in repr(view) and "pw-123" not in repr(view)
