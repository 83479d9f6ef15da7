"""Unit tests of greenservers.provisioning.uploads: new files only, the budget, the client's quota, what administrators see (no sockets)."""

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

    def quota(size: int) -> bool:
        if left[0] < max(size, 1):
            return False
        left[0] -= size
        return True

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

    def quota(size: int) -> bool:
        if sum(taken) + max(size, 1) > left:
            return False
        taken.append(size)
        return True

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


def test_one_client_may_keep_only_its_share_of_the_files(settings, monkeypatch):
    monkeypatch.setattr(u, "MAX_FILES_PER_CLIENT", 3)
    for n in range(3):
        upload(settings, f"a-{n}.log", b"x", client="2001:db8::1")
    with pytest.raises(u.UploadsFull, match="already holds 3 files from this address"):
        u.begin(settings, "a-3.log", "2001:db8::2")  # the same /64
    upload(settings, "b-0.log", b"x", client="192.0.2.7")  # another client
    u.delete_upload(settings, "a-0.log")
    upload(settings, "a-3.log", b"x", client="2001:db8::3")
    u._spaces.clear()  # another process: the share is counted from the folder (the files' addresses)
    with pytest.raises(u.UploadsFull):
        u.begin(settings, "a-4.log", "2001:db8::4")


def test_many_uploads_are_deleted_at_once_and_their_space_and_share_freed(settings):
    for n in range(5):
        upload(settings, f"a-{n}.log", b"x" * 10, client="192.0.2.1")
    space = u.space_of(settings)
    assert (space.files, space.files_of["192.0.2.1"]) == (5, 5)
    assert u.delete_uploads(settings, ["a-0.log", "a-1.log", "missing.log", "../x", "a-1.log"]) == (2, 20)
    assert (space.files, space.used, space.files_of["192.0.2.1"]) == (3, 30, 3)
    assert sorted(os.listdir(folder(settings))) == ["a-2.log", "a-3.log", "a-4.log"]
