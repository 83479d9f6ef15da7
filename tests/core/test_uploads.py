"""Unit tests of greenservers.provisioning.uploads: new files only, the budget, the files per address and per /64, the quota
(per address and per /64), what administrators see (no sockets)."""

from __future__ import annotations

import os
import stat

import pytest

from greenservers.config.settings import Settings
from greenservers.provisioning import uploads as u

MIB = 1024 * 1024


@pytest.fixture
def settings(tmp_path):
    u._spaces.clear()  # one space per folder and process: each test has its own folder anyway
    return Settings.from_raw({"data_dir": "data", "tftp_upload_budget_mib": 1}, tmp_path)


def folder(settings):
    return u.uploads_folder(settings).resolve()


def upload(settings, name: str, data: bytes, client: str = "192.0.2.7", **kwargs) -> u.Upload:
    started = u.begin(settings, name, client, **kwargs)
    started.write(data)
    started.commit()
    return started


def test_uploads_create_new_files_only_private_to_the_service(settings):
    target = u.upload_target(settings, "0004f2abcdef-app.log")
    assert target == folder(settings) / "0004f2abcdef-app.log"
    started = u.begin(settings, "0004f2abcdef-app.log")
    started.write(b"log line\n")
    assert not target.exists()  # nothing visible before the end
    started.commit()
    assert target.read_bytes() == b"log line\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and stat.S_IMODE(folder(settings).stat().st_mode) == 0o700
    with pytest.raises(u.AlreadyExists):
        u.begin(settings, "uploads/0004f2abcdef-app.log")
    assert os.listdir(target.parent) == ["0004f2abcdef-app.log"]


def test_upload_racing_for_the_same_name_never_overwrites(settings):
    first, second = u.begin(settings, "race.log"), u.begin(settings, "race.log")
    first.write(b"first")
    second.write(b"second")
    first.commit()
    with pytest.raises(u.AlreadyExists):
        second.commit()
    second.abort()
    assert first.target.read_bytes() == b"first"
    assert sorted(os.listdir(first.target.parent)) == ["race.log"]
    assert u.space_of(settings).used == 5


def test_aborted_upload_leaves_nothing_and_takes_no_space(settings):
    started = u.begin(settings, "gone.log")
    started.write(b"half")
    assert u.space_of(settings).in_progress == 4
    started.abort()
    started.close()  # the shell closes every resource after its transfer: nothing happens twice
    assert os.listdir(started.target.parent) == [] and u.space_of(settings).used == 0


@pytest.mark.parametrize("name", ["../x.log", "sub/x.log", "uploads/sub/x.log", "x.cfg.j2", "/tmp/x", ".hidden"])
def test_upload_names_are_checked(settings, name):
    with pytest.raises(u.Refused):
        u.upload_target(settings, name)


def test_the_budget_refuses_at_the_start_and_mid_upload_and_deletes_nothing(settings):
    upload(settings, "first.log", b"a" * 700_000)
    with pytest.raises(u.UploadsFull, match="budget of 1 MiB"):
        u.begin(settings, "announced.log", announced=400_000)  # tsize says it cannot fit
    started = u.begin(settings, "second.log")  # 348,576 bytes are left
    started.write(b"b" * 300_000)
    with pytest.raises(u.UploadsFull) as refused:
        started.write(b"b" * 100_000)
    assert refused.value.tftp_code == 3 and "disk full" in refused.value.message
    started.abort()
    assert sorted(os.listdir(folder(settings))) == ["first.log"] and (folder(settings) / "first.log").stat().st_size == 700_000
    upload(settings, "fits.log", b"c" * 348_576)
    with pytest.raises(u.UploadsFull):
        u.begin(settings, "one-byte-more.log")


def test_space_is_counted_again_when_the_folder_changes_behind_our_back(settings):
    upload(settings, "big.log", b"a" * MIB)
    with pytest.raises(u.UploadsFull):
        u.begin(settings, "more.log")
    os.unlink(folder(settings) / "big.log")  # an administrator, by hand
    u.begin(settings, "more.log").abort()
    assert u.space_of(settings).stored == 0


def test_a_client_over_its_quota_is_refused_at_the_start_and_mid_upload(settings):
    left = [u.FILE_CHARGE + 1000]

    def quota(size: int) -> str | None:
        if left[0] < max(size, 1):
            return "192.0.2.7"
        left[0] -= size
        return None

    with pytest.raises(u.QuotaSpent):
        u.begin(settings, "announced.log", announced=2000, quota=quota)
    started = u.begin(settings, "log.log", quota=quota)
    started.write(b"x" * 600)
    with pytest.raises(u.QuotaSpent, match="tftp_upload_mib_per_hour"):
        started.write(b"x" * 600)
    started.abort()
    assert os.listdir(folder(settings)) == []


def test_the_listing_names_size_time_and_uploading_address_newest_first(settings):
    upload(settings, "old.log", b"1", client="192.0.2.1")
    os.utime(folder(settings) / "old.log", (1_700_000_000, 1_700_000_000))
    upload(settings, "new.log", b"22", client="2001:db8::7")
    partial = u.begin(settings, "partial.log")  # in progress: hidden, not listed
    listed = u._listing(folder(settings))
    assert [(x.name, x.size, x.client) for x in listed] == [("new.log", 2, "2001:db8::7"), ("old.log", 1, "192.0.2.1")]
    assert listed[1].modified == 1_700_000_000
    partial.abort()


@pytest.mark.parametrize("name", ["../secret", ".partial-1-ab", "sub/x", "missing.log", "link.log", "", "a\nb"])
def test_only_a_regular_file_right_in_uploads_is_found(settings, tmp_path, name):
    upload(settings, "real.log", b"x")
    (tmp_path / "secret").write_text("not an upload")
    os.symlink(tmp_path / "secret", folder(settings) / "link.log")
    (folder(settings) / "sub").mkdir()
    (folder(settings) / "sub" / "x").write_text("nested")
    with pytest.raises((u.NotFound, u.Refused)):
        u.upload_path(settings, name)
    assert u.upload_path(settings, "real.log") == folder(settings) / "real.log"


def test_deleting_an_upload_frees_its_space(settings):
    upload(settings, "full.log", b"a" * 1_000_000)
    assert u.delete_upload(settings, "full.log") == 1_000_000
    assert u.space_of(settings).used == 0 and os.listdir(folder(settings)) == []
    with pytest.raises(u.NotFound):
        u.delete_upload(settings, "full.log")
    upload(settings, "again.log", b"b" * 1_000_000)


def counting_quota(left: int):
    """A quota of `left` bytes, and the list of what it was asked to take."""
    taken = []

    def quota(size: int) -> str | None:
        if sum(taken) + max(size, 1) > left:
            return "192.0.2.7"
        taken.append(size)
        return None

    return quota, taken


def test_each_file_costs_a_charge_of_the_quota_and_an_announced_size_is_charged_once(settings):
    quota, taken = counting_quota(10 * u.FILE_CHARGE)
    upload(settings, "announced.log", b"x" * 1500, announced=1500, quota=quota)
    assert taken == [u.FILE_CHARGE + 1500]  # the blocks were paid for at the start
    taken.clear()
    started = u.begin(settings, "longer.log", announced=100, quota=quota)
    started.write(b"x" * 512)
    started.commit()
    assert taken == [u.FILE_CHARGE + 100, 412]  # what passes the announced size is charged as it arrives
    quota, taken = counting_quota(3 * (u.FILE_CHARGE + 1))
    for n in range(3):
        upload(settings, f"tiny-{n}.log", b"x", quota=quota)
    with pytest.raises(u.QuotaSpent):  # one-byte files: three of them spent three charges (and three bytes)
        upload(settings, "tiny-3.log", b"x", quota=quota)


def test_one_address_and_one_64_as_a_whole_may_keep_only_their_share_of_the_files(settings, monkeypatch):
    monkeypatch.setattr(u, "MAX_FILES_PER_ADDRESS", 3)
    monkeypatch.setattr(u, "MAX_FILES_PER_PREFIX", 5)
    for n in range(3):
        upload(settings, f"a-{n}.log", b"x", client="2001:db8::1")
    with pytest.raises(u.UploadsFull, match="already holds 3 files from this address, the most one may keep there"):
        u.begin(settings, "a-3.log", "2001:db8::1")
    upload(settings, "b-0.log", b"x", client="2001:db8::2")  # a phone beside it in its /64
    upload(settings, "c-0.log", b"x", client="2001:db8::3")
    with pytest.raises(u.UploadsFull, match="already holds 5 files from this address's IPv6 /64, the most one /64 may keep"):
        u.begin(settings, "d-0.log", "2001:db8::4")  # the /64 at its share: a device cycling its addresses meets it
    upload(settings, "e-0.log", b"x", client="2001:db8:0:1::1")  # another /64
    upload(settings, "f-0.log", b"x", client="192.0.2.7")  # an IPv4 client: its own share only
    u.delete_upload(settings, "a-0.log")
    upload(settings, "d-0.log", b"x", client="2001:db8::4")
    space = u.space_of(settings)
    assert (space.files, space.files_of.of("2001:db8::/64"), space.files_of.of("2001:db8::1")) == (7, 5, 2)
    u._spaces.clear()  # another process: the shares are counted from the folder (the files' addresses)
    with pytest.raises(u.UploadsFull, match="IPv6 /64"):
        u.begin(settings, "a-4.log", "2001:db8::5")
    space = u.space_of(settings)
    assert (space.files, space.files_of.of("2001:db8::/64"), space.files_of.of("2001:db8::4")) == (7, 5, 1)


def test_the_folder_as_a_whole_holds_at_most_its_files(settings, monkeypatch):
    monkeypatch.setattr(u, "MAX_UPLOAD_FILES", 4)
    for n in range(4):
        upload(settings, f"p-{n}.log", b"x", client=f"2001:db8:0:{n}::1")
    with pytest.raises(u.UploadsFull, match="already holds 4 files"):
        u.begin(settings, "q.log", "192.0.2.9")


def test_many_uploads_are_deleted_at_once_and_their_space_and_share_freed(settings):
    for n in range(5):
        upload(settings, f"a-{n}.log", b"x" * 10, client="192.0.2.1")
    space = u.space_of(settings)
    assert (space.files, space.files_of.of("192.0.2.1")) == (5, 5)
    assert u.delete_uploads(settings, ["a-0.log", "a-1.log", "missing.log", "../x", "a-1.log"]) == (2, 20)
    assert (space.files, space.used, space.files_of.of("192.0.2.1")) == (3, 30, 3)
    assert sorted(os.listdir(folder(settings))) == ["a-2.log", "a-3.log", "a-4.log"]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_hourly_quota_is_per_address_and_an_ipv6_64_as_a_whole_has_its_larger_share(settings):
    clock = FakeClock()
    hourly, per_hour = u.HourlyQuota(clock), settings.tftp_upload_mib_per_hour * MIB
    files_an_hour = per_hour // u.FILE_CHARGE
    spent = [hourly.of(settings, "192.0.2.7")(u.FILE_CHARGE) for _ in range(files_an_hour + 1)]
    assert spent == [None] * files_an_hour + ["192.0.2.7"]  # an IPv4 address (a site behind a NAT): its own quota
    assert hourly.of(settings, "::ffff:192.0.2.7")(u.FILE_CHARGE) == "192.0.2.7"  # however it came in
    assert hourly.of(settings, "192.0.2.8")(u.FILE_CHARGE) is None
    # a LAN of phones in one /64: each its own quota, the /64 as a whole QUOTA_PREFIX_SHARE times one
    lan = [f"2001:db8:1:2::{n:x}" for n in range(1, 4 * u.QUOTA_PREFIX_SHARE * files_an_hour)]
    granted = [hourly.of(settings, phone)(u.FILE_CHARGE) for phone in lan]
    assert granted[:u.QUOTA_PREFIX_SHARE * files_an_hour] == [None] * (u.QUOTA_PREFIX_SHARE * files_an_hour)
    assert set(granted[u.QUOTA_PREFIX_SHARE * files_an_hour:]) == {"2001:db8:1:2::/64"}
    assert hourly.of(settings, "2001:db8:1:3::1")(u.FILE_CHARGE) is None  # the next /64 is not held back
    clock.now += 3600 / (u.QUOTA_PREFIX_SHARE * files_an_hour)  # a file's worth of the /64's hour refilled
    assert hourly.of(settings, "2001:db8:1:2::ffff")(u.FILE_CHARGE) is None


def test_one_address_of_a_64_spends_only_its_own_quota_and_a_device_cycling_its_64_fills_no_table(settings):
    clock = FakeClock()
    hourly, per_hour = u.HourlyQuota(clock), settings.tftp_upload_mib_per_hour * MIB
    assert hourly.of(settings, "2001:db8::66")(per_hour) is None
    for _ in range(100):
        assert hourly.of(settings, "2001:db8::66")(u.FILE_CHARGE) == "2001:db8::66"
    assert hourly.of(settings, "2001:db8::1")(per_hour) is None  # its neighbour: its own quota, the /64 not spent by the refusals
    for n in range(20_000):  # a device cycling its /64: its addresses are looked up only while the /64 has a quota left
        hourly.of(settings, f"2001:db8::1:{n:x}")(u.FILE_CHARGE)
    assert len(hourly.buckets.addresses) == 2 + (u.QUOTA_PREFIX_SHARE - 2) * per_hour // u.FILE_CHARGE


def test_a_spent_quota_names_the_address_or_the_64_and_the_setting(settings):
    hourly, per_hour = u.HourlyQuota(FakeClock()), 16 * MIB
    assert hourly.of(settings, "2001:db8::7")(per_hour) is None
    with pytest.raises(u.QuotaSpent, match=r"this address has uploaded its 16 MiB for the hour \(tftp_upload_mib_per_hour\)"):
        u.begin(settings, "one.log", "2001:db8::7", quota=hourly.of(settings, "2001:db8::7"))
    for n in range(1, u.QUOTA_PREFIX_SHARE):
        assert hourly.of(settings, f"2001:db8::1:{n:x}")(per_hour) is None  # its neighbours
    with pytest.raises(u.QuotaSpent, match=rf"this address's IPv6 /64 has uploaded its {16 * u.QUOTA_PREFIX_SHARE} MiB "
                                           rf"for the hour \({u.QUOTA_PREFIX_SHARE} times tftp_upload_mib_per_hour\)"):
        u.begin(settings, "more.log", "2001:db8::99", quota=hourly.of(settings, "2001:db8::99"))
    assert os.listdir(folder(settings)) == []
