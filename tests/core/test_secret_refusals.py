"""An error about a secret setting never holds any part of its value (issue 15, item 7): the validators,
through Setting.refusal, where every refusal is worded. The web interface's answers are checked in
tests/shell/test_secret_errors.py, check-config's and the running service's in tests/system/test_secret_errors_cli.py."""

from __future__ import annotations

import pytest
from support.secret_values import SECRETS, leaks, refused

from greenservers.config.settings import Invalid, Setting, Settings, SettingsError


def test_the_values_are_refused_where_it_matters():
    assert {"control character", "space", "over-long", "non-ASCII", "a number"} <= set(refused("snmp_community"))
    assert {"control character", "over-long", "a number"} <= set(refused("ldap_password"))
    assert "not a hash" in refused("admin_password_hash")


@pytest.mark.parametrize("name", SECRETS)
def test_no_refusal_of_a_secret_holds_any_part_of_it(name):
    for label, value in refused(name).items():
        with pytest.raises(SettingsError) as info:
            Settings.from_raw({name: value})
        message = info.value.errors[name]
        assert message and not leaks(message, value), (label, message)
        assert not leaks(str(info.value), value)


def test_the_rule_holds_for_a_validator_that_quotes_the_value_in_its_reason():
    def careless(raw):
        raise ValueError(f"{raw!r} is no good")

    secret = Setting("a_secret", "system", "", careless, "A secret.", secret=True)
    plain = Setting("a_setting", "system", "", careless, "Not secret.")
    assert secret.refusal(ValueError("'TopSecret' is no good")) == "is not valid"
    assert plain.refusal(ValueError("'x' is no good")) == "'x' is no good"
    assert secret.refusal(Invalid("is too short", "TopSecret")) == "is too short"
    assert plain.refusal(Invalid("is too short", "x")) == "'x' is too short"


def test_other_settings_still_quote_the_bad_value_cut_short():
    with pytest.raises(SettingsError) as info:
        Settings.from_raw({"snmp_location": "Room 101 " * 40, "http_max_conn": "lots"})
    assert info.value.errors["snmp_location"] == "'Room 101 Room 101 Ro'... is longer than 255 characters"
    assert info.value.errors["http_max_conn"] == "'lots' is not a whole number"
