"""Unit tests of greenservers.provisioning.files: name resolution, path safety, templates, uploads (no sockets)."""

from __future__ import annotations

import os

import pytest
from support.clock import FakeClock

from greenservers.config.settings import Settings
from greenservers.provisioning import files as p, misses
from greenservers.provisioning.phones import profiles


@pytest.fixture
def settings(tmp_path):
    raw = {
        "data_dir": "data", "ip_http_port": "127.0.0.1:8080 [::1]:8080", "ip_https_port": "443", "ip_ntp_port": "",
        "ntp_server": "ntp.example.org", "ip_ldap_port": "127.0.0.1:2389 [::]:3389", "ip_ldaps_port": "2636",
        "ldap_base": "dc=example,dc=com", "ldap_user": "phonebook", "ldap_password": "pw-123",
    }
    settings = Settings.from_raw(raw, tmp_path)
    root = p.tftp_root(settings)
    root.mkdir(parents=True)
    (root / "plain.cfg").write_text("plain\n")
    (root / "model.cfg.j2").write_text("server={{ server }}\n")
    (root / "{mac}.cfg.j2").write_text(
        "mac={{ mac }} server={{ server }} ntp={{ ntp_server }} ldap={{ ldap_port }}/{{ ldaps_port }} "
        "base={{ ldap_base }} user={{ ldap_user }} pw={{ ldap_password }} http={{ http_url }} https={{ https_url }}\n"
    )
    (root / "sub").mkdir()
    (root / "sub" / "{mac}-phone.cfg.j2").write_text("sub {{ mac }}\n")
    (tmp_path / "secret.txt").write_text("secret\n")
    os.symlink(tmp_path / "secret.txt", root / "leak.cfg")
    os.symlink(root / "plain.cfg", root / "alias.cfg")  # a symlink that stays inside is fine
    (root / "broken.cfg.j2").write_text("fine line\n{{ no_such_variable }}\n")
    (root / "syntax.cfg.j2").write_text("ok\nok\n{% if %}\n")
    (root / "sandbox.cfg.j2").write_text("{{ ''.__class__.__mro__ }}\n")
    return settings


def text(settings, name, server="192.0.2.10"):
    content = p.provide(settings, name, server)
    return content.data.decode() if content.data is not None else content.path.read_text()


def test_plain_file_is_served_as_is(settings):
    content = p.provide(settings, "plain.cfg", "192.0.2.10")
    assert content.data is None and content.path.read_text() == "plain\n"
    assert text(settings, "alias.cfg") == "plain\n"


def test_name_j2_template_is_rendered(settings):
    assert text(settings, "model.cfg") == "server=192.0.2.10\n"


@pytest.mark.parametrize("name", ["0004F2ABCDEF.cfg", "0004f2abcdef.cfg", "0004f2AbCdEf.cfg"])
def test_mac_template_in_any_case_with_every_variable(settings, name):
    assert text(settings, name, "127.0.0.1") == (
        "mac=0004f2abcdef server=127.0.0.1 ntp=ntp.example.org ldap=2389/2636 base=dc=example,dc=com "
        "user=phonebook pw=pw-123 http=http://127.0.0.1:8080 https=https://127.0.0.1\n"
    )


def test_mac_template_for_ipv6_server_brackets_urls_and_picks_the_wildcard_binding(settings):
    out = text(settings, "0004f2abcdef.cfg", "2001:db8::4")
    assert "server=2001:db8::4 " in out and "ldap=3389/2636" in out
    assert "https=https://[2001:db8::4]" in out and "http=http://[2001:db8::4]:8080" in out


def test_ntp_server_is_our_address_when_the_ntp_server_is_on(settings):
    on = settings.with_changes({"ip_ntp_port": "127.0.0.1:1123"})
    assert "ntp=198.51.100.7 " in text(on, "0004f2abcdef.cfg", "198.51.100.7")


def test_mac_template_in_a_subfolder(settings):
    assert text(settings, "sub/0004F2ABCDEF-phone.cfg") == "sub 0004f2abcdef\n"


@pytest.mark.parametrize("name", ["0004f2abcde.cfg", "0004f2abcdef0.cfg", "nothing.cfg", "sub", "model.cfg.j2", "{mac}.cfg.j2",
                                  "sub/nothing"])
def test_not_found(settings, name):
    with pytest.raises((p.NotFound, p.Refused)) as info:
        p.provide(settings, name, "192.0.2.10")
    assert info.value.tftp_code in (1, 2)


@pytest.mark.parametrize("name", [
    "../secret.txt", "/etc/passwd", "sub/../../secret.txt", "sub/../plain.cfg", "..\\secret.txt", "a\\b", "plain.cfg\0.txt",
    "leak.cfg", "x" * 256, "", ".hidden", "sub//x", "./plain.cfg", "bad\nname",
])
def test_unsafe_names_are_refused(settings, name):
    with pytest.raises(p.Refused) as info:
        p.provide(settings, name, "192.0.2.10")
    assert (info.value.tftp_code, info.value.http_status) == (2, 403)


def test_symlinked_root_subfolder_leading_out_is_refused(settings, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.cfg").write_text("x")
    os.symlink(outside, p.tftp_root(settings) / "escape")
    with pytest.raises(p.Refused):
        p.provide(settings, "escape/x.cfg", "192.0.2.10")


@pytest.mark.parametrize("name, line", [("broken.cfg", 2), ("syntax.cfg", 3), ("sandbox.cfg", 1)])
def test_template_error_names_template_and_line_and_yields_nothing(settings, name, line, caplog):
    p.ratelog._last.clear()
    with pytest.raises(p.TemplateFailed) as info:
        p.provide(settings, name, "192.0.2.10")
    assert info.value.tftp_code == 0 and info.value.http_status == 500
    assert f"{name}.j2" in caplog.text and f"line {line}" in caplog.text


@pytest.mark.parametrize("name", ["uploads/phone.log", "uploads/0004f2abcdef.cfg", "uploads/sub/x", "uploads"])
def test_nothing_under_uploads_is_served(settings, name):
    folder = p.tftp_root(settings) / "uploads"
    (folder / "sub").mkdir(parents=True)
    for upload in ("phone.log", "{mac}.cfg.j2", "sub/x"):
        (folder / upload).write_text("<html>uploaded by a phone</html>\n")
    with pytest.raises((p.Refused, p.NotFound)):
        p.provide(settings, name, "192.0.2.10")


def test_a_link_into_uploads_is_not_served_and_templates_cannot_include_uploads(settings, caplog):
    root = p.tftp_root(settings)
    (root / "uploads").mkdir()
    (root / "uploads" / "phone.log").write_text("uploaded\n")
    os.symlink(root / "uploads" / "phone.log", root / "innocent.cfg")
    os.symlink(root / "uploads", root / "logs")
    for name in ("innocent.cfg", "logs/phone.log"):
        with pytest.raises(p.Refused):
            p.provide(settings, name, "192.0.2.10")
    (root / "include.cfg.j2").write_text('{% include "uploads/phone.log" %}\n')
    (root / "mac-include-{mac}.cfg.j2").write_text('{% include "logs/" ~ mac ~ ".log" %}\n')
    (root / "uploads" / "0004f2abcdef.log").write_text("{{ ldap_password }}\n")
    for name in ("include.cfg", "mac-include-0004f2abcdef.cfg"):
        with pytest.raises(p.TemplateFailed):
            p.provide(settings, name, "192.0.2.10")


def test_provisioned_ntp_server_follows_ip_ntp_port():
    ours = Settings.from_raw({"ip_ntp_port": "123", "ntp_server": "pool.ntp.org"})
    external = Settings.from_raw({"ip_ntp_port": "", "ntp_server": "pool.ntp.org"})
    none = Settings.from_raw({"ip_ntp_port": ""})
    assert p.provisioned_ntp_server(ours, "192.0.2.1") == "192.0.2.1"
    assert p.provisioned_ntp_server(external, "192.0.2.1") == "pool.ntp.org"
    assert p.provisioned_ntp_server(none, "192.0.2.1") == ""


def test_a_stock_profile_is_rendered_once_per_settings_server_and_mac(settings, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(p, "rendered_stock", p.RenderedStock(clock))
    renders = []
    real = p.render
    monkeypatch.setattr(p, "render", lambda *args: renders.append(args[1].mac) or real(*args))
    first = text(settings, "y000000000000.cfg")  # a Yealink stock profile
    assert text(settings, "y000000000000.cfg") == first and len(renders) == 1
    assert text(settings, "y000000000000.cfg", server="192.0.2.11") != first  # the server's address is in it
    text(settings, "001565abcdef.boot")  # another phone's
    assert renders == ["", "", "001565abcdef"]  # the common file names no phone
    changed = settings.with_changes({"ldap_base": "dc=example,dc=net"})  # a new settings object: rendered anew
    assert "dc=example,dc=net" in text(changed, "y000000000000.cfg") and len(renders) == 4
    clock.now += p.RenderedStock.CACHE_SECONDS + 1
    text(changed, "y000000000000.cfg")
    assert len(renders) == 5
    text(settings, "model.cfg")  # the administrator's templates are rendered each time
    text(settings, "model.cfg")
    assert len(renders) == 7


def test_grandstream_stock_files_step_aside_for_an_administrator_s_later_fallback(settings):
    """A Grandstream phone asks for cfg<mac>.xml, then cfg<model>.xml, then cfg.xml and applies the first it gets:
    the stock answers all three, but not those the phone asks for before a file of the administrator's."""
    root = p.tftp_root(settings)
    mac, gxp, grp = "cfg000b82abcdef.xml", "cfggxp2170.xml", "cfggrp2614.xml"
    assert all(p.lookup(settings, name).stock is not None for name in (mac, gxp, grp, "cfg.xml"))
    (root / "cfggxp2170.xml.j2").write_text("<gs/>\n")  # the administrator's, for one model
    with pytest.raises(p.NotFound):
        p.lookup(settings, mac)  # the phone goes on to cfg<model>.xml
    assert p.lookup(settings, gxp).template == "cfggxp2170.xml.j2"
    assert p.lookup(settings, grp).stock is not None  # another model: the stock answers it
    (root / "cfg.xml").write_text("<gs/>\n")  # the administrator's, for every phone
    for name in (mac, grp):
        with pytest.raises(p.NotFound):
            p.lookup(settings, name)
    assert p.lookup(settings, "cfg.xml").stock is None
    (root / "cfg.xml").unlink()
    (root / "cfggxp2170.xml.j2").unlink()
    assert all(p.lookup(settings, name).stock is not None for name in (mac, gxp, grp, "cfg.xml"))
    (root / "cfg000b82abcdef.xml").write_text("<gs/>\n")  # one phone's own file: the others keep the stock
    assert p.lookup(settings, "cfg000b82000001.xml").stock is not None


GRANDSTREAM_MAC_FILE = "cfg000b82abcdef.xml"


def test_only_files_a_phone_would_be_served_make_the_grandstream_stock_step_aside(settings, tmp_path):
    root = p.tftp_root(settings)
    (root / "cfg.xml").mkdir()  # a folder
    os.symlink(root / "missing.xml", root / "cfggxp2170.xml")  # a dangling link
    os.symlink(tmp_path / "secret.txt", root / "cfggrp2614.xml")  # a link out of the root
    assert p.lookup(settings, GRANDSTREAM_MAC_FILE).stock is not None


def test_the_provisioning_folder_is_looked_through_once_per_change_not_per_request(settings, monkeypatch):
    root = p.tftp_root(settings)
    for n in range(3000):
        (root / f"{n:012x}.cfg").write_text("phone\n")  # per-phone files: a folder of thousands
    looked = []
    first_wins_file = profiles.first_wins_file
    monkeypatch.setattr(profiles, "first_wins_file", lambda name: looked.append(name) or first_wins_file(name))
    for n in range(100):
        assert p.lookup(settings, f"cfg000b82{n:06x}.xml").stock is not None
    assert 3000 <= len(looked) <= 3020  # once per name, not once per name and request


def test_a_name_changed_within_one_tick_of_the_folder_s_timestamp_is_seen_once_that_tick_is_past(settings, monkeypatch):
    """A file written and renamed within one tick of a coarse timestamp (FAT: 2 s) leaves the folder's stamp as it was."""
    root = p.tftp_root(settings)
    (root / "cfg.xml.tmp").write_text("<gs/>\n")
    tick = root.stat().st_mtime_ns
    monkeypatch.setattr(p, "_wall_ns", lambda: tick)  # listed within the tick of that change
    assert p.lookup(settings, GRANDSTREAM_MAC_FILE).stock is not None
    (root / "cfg.xml.tmp").rename(root / "cfg.xml")
    os.utime(root, ns=(tick, tick))  # the same tick
    monkeypatch.setattr(p, "_wall_ns", lambda: tick + p.RACY_NS)
    with pytest.raises(p.NotFound):
        p.lookup(settings, GRANDSTREAM_MAC_FILE)


# -- absent files asked for per address (provisioning.misses) ----------------------------------


def limited(settings, per_hour: int):
    raw = {k: v for k, v in settings.raw.items() if k != "prov_misses_per_hour"}
    return Settings.from_raw({**raw, "prov_misses_per_hour": per_hour}, settings.base_dir)


def test_an_address_that_asked_for_its_allowance_of_absent_files_is_refused_what_it_was_not_served(settings):
    clock, budget = FakeClock(), misses.MissBudget()
    budget.clock = clock
    settings = limited(settings, 3)
    assert budget.provide(settings, "plain.cfg", "192.0.2.10", "192.0.2.50").path.read_text() == "plain\n"
    for mac in ("0004f2000001", "0004f2000002", "0004f2000003"):
        with pytest.raises(p.NotFound):
            budget.provide(settings, f"SEP{mac}.cnf.xml", "192.0.2.10", "192.0.2.50")
    # spent: a name holding a MAC it was not served is refused whether it is there or not (the refusal tells nothing)
    for name in ("0004f2abcdef.cfg", "SEP0004f2000004.cnf.xml"):
        with pytest.raises(misses.TooManyMisses, match="prov_misses_per_hour") as refused:
            budget.provide(settings, name, "192.0.2.10", "192.0.2.50")
        assert refused.value.http_status == 429
    assert budget.provide(settings, "model.cfg", "192.0.2.10", "192.0.2.50").data  # no MAC: never refused...
    with pytest.raises(p.NotFound):
        budget.provide(settings, "absent.cfg", "192.0.2.10", "192.0.2.50")  # ...nor counted
    assert budget.provide(settings, "0004f2abcdef.cfg", "192.0.2.10", "192.0.2.51").data  # another address has its own
    clock.now += 3600 / 3  # a third of an hour: one miss more
    assert budget.provide(settings, "0004f2abcdef.cfg", "192.0.2.10", "192.0.2.50").data
    assert budget.provide(settings, "0004f2abcdef.cfg", "192.0.2.10", "192.0.2.50").data  # served lately: served again
    with pytest.raises(p.NotFound):
        budget.provide(settings, "SEP0004f2000005.cnf.xml", "192.0.2.10", "192.0.2.50")
    with pytest.raises(misses.TooManyMisses):
        budget.provide(settings, "0004f2abcdee.cfg", "192.0.2.10", "192.0.2.50")


def test_an_address_spent_stays_spent_however_many_other_addresses_ask_after_it(settings):
    """A device that spent its allowance and then forges requests for absent names from 5,000 other addresses
    (pushing its own out of the table of 4,096) is still refused: without the debts kept, it was given a full
    allowance again for every 4,096 forged requests."""
    clock, budget = FakeClock(), misses.MissBudget()
    budget.clock = clock
    settings = limited(settings, 3)
    for n in range(3):
        with pytest.raises(p.NotFound):
            budget.provide(settings, f"SEP0004f200000{n}.cnf.xml", "192.0.2.10", "192.0.2.50")
    for n in range(5000):
        with pytest.raises(p.NotFound):
            budget.provide(settings, "SEP0004f2000009.cnf.xml", "192.0.2.10", f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}")
    assert len(budget.buckets.addresses) == 4096
    with pytest.raises(misses.TooManyMisses):
        budget.provide(settings, "0004f2abcdef.cfg", "192.0.2.10", "192.0.2.50")
    clock.now += 3600 / 3  # its refill goes on as it would have in the table
    assert budget.provide(settings, "0004f2abcdef.cfg", "192.0.2.10", "192.0.2.50").data


def test_a_refused_name_counts_as_a_miss_and_an_ipv6_64_shares_eight_allowances(settings):
    budget = misses.MissBudget(FakeClock())
    settings = limited(settings, 2)
    for _ in range(2):
        with pytest.raises(p.Refused):
            budget.provide(settings, "../0004f2000001.cfg", "192.0.2.10", "192.0.2.60")
    with pytest.raises(misses.TooManyMisses):
        budget.provide(settings, "0004f2abcdef.cfg", "192.0.2.10", "192.0.2.60")
    # a device cycling through the addresses of its /64: 16 misses in all, two from each address at most
    for n in range(1, 9):
        for _ in range(2):
            with pytest.raises(p.NotFound):
                budget.provide(settings, "SEP0004f2000001.cnf.xml", "192.0.2.10", f"2001:db8::{n}")
    with pytest.raises(misses.TooManyMisses):
        budget.provide(settings, "0004f2abcdef.cfg", "192.0.2.10", "2001:db8::99")
    assert budget.provide(settings, "0004f2abcdef.cfg", "192.0.2.10", "2001:db8:1::1").data  # another /64


def test_no_limit_when_prov_misses_per_hour_is_0(settings):
    budget = misses.MissBudget(FakeClock())
    settings = limited(settings, 0)
    for n in range(100):
        with pytest.raises(p.NotFound):
            budget.provide(settings, f"SEP0004f2{n:06x}.cnf.xml", "192.0.2.10", "192.0.2.70")
    assert budget.provide(settings, "model.cfg", "192.0.2.10", "192.0.2.70").data


def test_an_address_spent_is_served_its_last_16_names_only(settings):
    budget = misses.MissBudget(FakeClock())
    settings = limited(settings, 1)
    names = [f"0004f2{n:06x}.cfg" for n in range(misses.SERVED_KEPT + 1)]  # the {mac}.cfg template: each is there
    for name in names:
        assert budget.provide(settings, name, "192.0.2.10", "192.0.2.80").data
    with pytest.raises(p.NotFound):
        budget.provide(settings, "SEP0004f2000001.cnf.xml", "192.0.2.10", "192.0.2.80")
    with pytest.raises(misses.TooManyMisses):
        budget.provide(settings, names[0], "192.0.2.10", "192.0.2.80")  # the oldest, forgotten
    for name in names[1:]:
        assert budget.provide(settings, name, "192.0.2.10", "192.0.2.80").data


def test_an_address_spent_is_served_the_files_of_the_macs_proven_at_it(settings):
    """The record of phones holds a MAC at the address from a fetch the address answered: a phone there gets its
    files whatever a forged flood of misses in its address spent (after a restart too: the record is kept)."""
    budget = misses.MissBudget(FakeClock())
    settings = limited(settings, 1)
    with pytest.raises(p.NotFound):
        budget.provide(settings, "SEP0004f2000001.cnf.xml", "192.0.2.10", "192.0.2.90")
    proven = {("0004f2abcdef", "192.0.2.90")}.__contains__
    assert budget.provide(settings, "0004F2ABCDEF.cfg", "192.0.2.10", "192.0.2.90", lambda mac: proven((mac, "192.0.2.90"))).data
    with pytest.raises(misses.TooManyMisses):
        budget.provide(settings, "0004f2abcdee.cfg", "192.0.2.10", "192.0.2.90", lambda mac: proven((mac, "192.0.2.90")))
