"""greenservers.proto.acme without I/O: the renewal plan on a fake clock, the backoff, ARI, http-01 answers;
and the acme_* settings' validation."""

from __future__ import annotations

import datetime

import pytest

from greenservers.config.settings import Settings, SettingsError
from greenservers.proto import acme as core

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
NAMES = ("pbx.example.com", "phones.example.com")
DIRECTORY = "https://ca.example/dir"


def held(days: int = 90, start: datetime.datetime = T0, names=NAMES, directory=DIRECTORY) -> core.Held:
    return core.Held(frozenset(names), directory, start, start + days * DAY)


def both(certificate):
    return {kind: certificate for kind in core.KINDS}


def test_nothing_held_orders_both_at_once():
    plan = core.plan(T0, NAMES, DIRECTORY, {}, {})
    assert plan.renew == ("ECDSA", "RSA") and plan.reason == "no certificate yet"


def test_only_the_missing_key_type_is_ordered():
    plan = core.plan(T0 + DAY, NAMES, DIRECTORY, {"ECDSA": held()}, {})
    assert plan.renew == ("RSA",)


def test_a_fresh_certificate_waits_until_a_third_of_its_lifetime_is_left():
    certs = both(held(90))
    plan = core.plan(T0 + DAY, NAMES, DIRECTORY, certs, {})
    assert plan.renew == () and plan.wake_at == T0 + DAY + core.CHECK_INTERVAL  # twice a day at least
    assert core.plan(T0 + 59 * DAY, NAMES, DIRECTORY, certs, {}).renew == ()
    due = core.plan(T0 + 60 * DAY, NAMES, DIRECTORY, certs, {})
    assert due.renew == ("ECDSA", "RSA") and due.reason == "less than a third of its lifetime left"


def test_the_wake_time_is_the_due_time_when_that_comes_before_the_next_regular_look():
    short = both(held(start=T0, days=1))  # a one-day certificate: due after 16 hours
    plan = core.plan(T0 + datetime.timedelta(hours=10), NAMES, DIRECTORY, short, {})
    assert plan.renew == () and plan.wake_at == T0 + datetime.timedelta(hours=16)


@pytest.mark.parametrize("change, reason", [
    ({"names": ("pbx.example.com",)}, "the names changed"),
    ({"directory": "https://other.example/dir"}, "the ACME directory changed"),
])
def test_other_names_or_another_directory_order_at_once(change, reason):
    certs = both(held(**change))
    plan = core.plan(T0 + DAY, NAMES, DIRECTORY, certs, {})
    assert plan.renew == ("ECDSA", "RSA") and plan.reason == reason


def test_off_orders_nothing():
    assert core.plan(T0, (), DIRECTORY, {}, {}).renew == ()


def test_failures_are_retried_after_a_minute_doubling_up_to_six_hours():
    delays = [core.retry_delay(n).total_seconds() for n in range(1, 13)]
    assert delays[:5] == [60, 120, 240, 480, 960]
    assert delays[-1] == 6 * 3600 and max(delays) == 6 * 3600 and delays == sorted(delays)


def test_after_a_failure_nothing_is_ordered_before_the_retry_time():
    failed_at = T0
    for failures in (1, 2, 5, 12):
        retry_at = failed_at + core.retry_delay(failures)
        waiting = core.plan(retry_at - datetime.timedelta(seconds=1), NAMES, DIRECTORY, {}, {}, failures, failed_at)
        assert waiting.renew == () and waiting.wake_at == retry_at and "retrying after" in waiting.reason
        assert core.plan(retry_at, NAMES, DIRECTORY, {}, {}, failures, failed_at).renew == ("ECDSA", "RSA")


def test_an_ari_window_earlier_than_our_own_rule_brings_renewal_forward():
    certs = both(held(90))
    window = core.Window(T0 + 30 * DAY, T0 + 32 * DAY, fraction=0.5)  # e.g. the authority revokes early
    windows = {"ECDSA": window, "RSA": window}
    assert core.plan(T0 + 30 * DAY, NAMES, DIRECTORY, certs, windows).renew == ()
    plan = core.plan(T0 + 31 * DAY, NAMES, DIRECTORY, certs, windows)
    assert plan.renew == ("ECDSA", "RSA") and "ARI" in plan.reason


def test_an_ari_window_later_than_our_own_rule_does_not_delay_it():
    certs = both(held(90))
    late = core.Window(T0 + 80 * DAY, T0 + 85 * DAY, fraction=0.0)
    assert core.plan(T0 + 60 * DAY, NAMES, DIRECTORY, certs, {"ECDSA": late, "RSA": late}).renew == ("ECDSA", "RSA")


def test_a_window_in_the_past_means_now():
    certs = both(held(90))
    past = core.Window(T0 - 2 * DAY, T0 - DAY, fraction=1.0)
    assert core.plan(T0 + DAY, NAMES, DIRECTORY, certs, {"RSA": past}).renew == ("RSA",)


def test_a_window_that_always_says_now_renews_a_certificate_once_it_is_six_hours_old_not_again_and_again():
    """A review's authority answered every certificate, the new ones too, with a window already past: 21
    renewals in 75 s. A certificate younger than ARI_MIN_AGE (from its notBefore) waits until it is that old."""
    fresh = held(90, start=T0)
    now_window = core.Window(T0 - datetime.timedelta(minutes=2), T0 - datetime.timedelta(minutes=1), fraction=0.5)
    plan = core.plan(T0 + datetime.timedelta(minutes=1), NAMES, DIRECTORY, both(fresh), {"ECDSA": now_window, "RSA": now_window})
    assert plan.renew == () and plan.wake_at == T0 + core.ARI_MIN_AGE
    assert core.plan(T0 + core.ARI_MIN_AGE, NAMES, DIRECTORY, both(fresh), {"RSA": now_window}).renew == ("RSA",)
    short = core.Held(frozenset(NAMES), DIRECTORY, T0, T0 + datetime.timedelta(hours=6))  # a private CA's 6 hours
    assert core.due_time(short, now_window)[0] == T0 + datetime.timedelta(hours=4)  # the lifetime rule, not after expiry


def test_the_next_ari_poll_wakes_the_shell():
    certs = both(held(90))
    poll = T0 + DAY + datetime.timedelta(hours=1)
    assert core.plan(T0 + DAY, NAMES, DIRECTORY, certs, {}, ari_next=poll).wake_at == poll


def test_parse_window_and_its_bounds():
    window = core.parse_window({"suggestedWindow": {"start": "2026-02-01T00:00:00Z", "end": "2026-02-03T00:00:00Z"}}, 0.25)
    assert window.chosen == datetime.datetime(2026, 2, 1, 12, tzinfo=datetime.UTC)
    for bad in ({}, {"suggestedWindow": {"start": "2026-02-03T00:00:00Z", "end": "2026-02-01T00:00:00Z"}},
                {"suggestedWindow": {"start": "2026-02-01T00:00:00", "end": "2026-02-03T00:00:00"}}, [1]):
        with pytest.raises(ValueError):
            core.parse_window(bad, 0.5)


def test_ari_poll_follows_retry_after_within_bounds():
    assert core.ari_next_poll(T0, None) == T0 + core.ARI_POLL_DEFAULT
    assert core.ari_next_poll(T0, 1) == T0 + core.ARI_POLL_MIN
    assert core.ari_next_poll(T0, 7200) == T0 + datetime.timedelta(hours=2)
    assert core.ari_next_poll(T0, 10**9) == T0 + core.ARI_POLL_MAX
    for huge in (10**14, 1e20, float("inf")):  # 10**14 seconds overflowed timedelta: renewals stopped for good
        assert core.ari_next_poll(T0, huge) == T0 + core.ARI_POLL_MAX
    assert core.ari_next_poll(T0, float("nan")) == T0 + core.ARI_POLL_DEFAULT


def test_retry_after_is_read_as_seconds_within_a_day_or_not_at_all():
    assert core.retry_after_seconds(" 120 ") == 120
    assert core.retry_after_seconds("100000000000000") is None  # past 12 digits: not a wait anyone means
    assert core.retry_after_seconds("99999999") == 86400
    for other in ("", "-5", "1.5", "Wed, 21 Oct 2026 07:28:00 GMT", "\u0663\u0660", "12e3"):
        assert core.retry_after_seconds(other) is None


def test_certificate_id_is_rfc_9773s_example():
    # RFC 9773 §4.1: keyIdentifier 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4, serial 00:87:65:43:21
    aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    assert core.certificate_id(aki, 0x0087654321) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


def test_challenge_answers_only_pending_tokens():
    pending = {"tok_en-1": "tok_en-1.thumbprint"}
    assert core.challenge_answer("GET", "/.well-known/acme-challenge/tok_en-1", pending) == ("200 OK", b"tok_en-1.thumbprint")
    for path in ("/.well-known/acme-challenge/other", "/.well-known/acme-challenge/", "/.well-known/acme-challenge/../x",
                 "/.well-known/acme-challenge/tok_en-1/x"):
        assert core.challenge_answer("GET", path, pending)[0] == "404 Not Found", path
    assert core.challenge_answer("POST", "/.well-known/acme-challenge/tok_en-1", pending)[0] == "404 Not Found"
    assert core.challenge_answer("GET", "/healthz", pending) is None


def test_request_target_reads_only_a_whole_request_line():
    assert core.request_target(b"GET /.well-known/acme-challenge/abc?x=1 HTTP/1.1\r\nHost: a\r\n") == (
        "GET",
        "/.well-known/acme-challenge/abc",
    )
    for head in (b"GET /.well-known/acme-challenge/abc HTTP/1.1", b"", b"\x16\x03\x01", b"GET http://x/ HTTP/1.1\r\n",
                 b"GET / HTTP/2\r\n", b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n"):
        assert core.request_target(head) is None


# -- the settings ------------------------------------------------------------------


def test_acme_settings_defaults():
    settings = Settings.from_raw({})
    assert settings.acme_domains == () and settings.acme_email == "" and settings.acme_ca_bundle == ""
    assert settings.acme_directory == "https://acme-v02.api.letsencrypt.org/directory"


def test_acme_domains_are_normalised():
    assert Settings.from_raw({"acme_domains": " PBX.Example.com  phones.example.com pbx.example.com "}).acme_domains == NAMES


@pytest.mark.parametrize("raw, field, reason", [
    ({"acme_domains": "192.0.2.1"}, "acme_domains", "is an IP address"),
    ({"acme_domains": "pbx.example.com [2001:db8::1]"}, "acme_domains", "is an IP address"),
    ({"acme_domains": "*.example.com"}, "acme_domains", "wildcard"),
    ({"acme_domains": "pbx"}, "acme_domains", "not a fully qualified"),
    ({"acme_domains": "pbx_1.example.com"}, "acme_domains", "not a DNS name"),
    ({"acme_domains": "a" * 64 + ".example.com"}, "acme_domains", "not a DNS name"),
    ({"acme_domains": "pbx.example.123"}, "acme_domains", "last label is a number"),
    ({"acme_domains": " ".join(f"n{i}.example.com" for i in range(101))}, "acme_domains", "at most 100"),
    ({"acme_domains": "pbx.example.com", "ip_http_port": ""}, "acme_domains", "needs an HTTP binding"),
    ({"acme_email": "admin"}, "acme_email", "not an e-mail address"),
    ({"acme_email": "admin@localhost"}, "acme_email", "not an e-mail address"),
    ({"acme_email": "a b@example.com"}, "acme_email", "not an e-mail address"),
    ({"acme_directory": "http://ca.example/dir"}, "acme_directory", "https://"),
    ({"acme_directory": "https:///dir"}, "acme_directory", "https://"),
    ({"acme_directory": 5}, "acme_directory", "not a URL"),
    ({"acme_directory": "https://user:pw@ca.example/dir"}, "acme_directory", "user name or password"),
    ({"acme_ca_bundle": "a\0b"}, "acme_ca_bundle", "NUL"),
])
def test_bad_acme_settings_are_refused_with_their_reason(raw, field, reason):
    with pytest.raises(SettingsError) as refused:
        Settings.from_raw(raw)
    assert list(refused.value.errors) == [field] and reason in refused.value.errors[field]
