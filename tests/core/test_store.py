"""The configuration file: comments survive rewrites; writes are atomic; a change by another process is noticed."""

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
import tomlkit

from greenservers.config.settings import SettingsError
from greenservers.config.store import ChangeWatch, ConfigFileError, ConfigStore
from greenservers.passwords import hash_password

HAND_WRITTEN = textwrap.dedent(
    """\
    # Our PBX in room 4 -- ask Maria before changing ports!
    ip_http_port = "8080"   # the old switch blocks 80

    # caps agreed with the network team
    http_max_conn = 200
    """
)


def test_missing_file_means_defaults(tmp_path):
    settings = ConfigStore(tmp_path / "none.toml").load()
    assert settings.http_max_conn == 1000 and settings.ip_http_port[0].port == 80


def test_relative_paths_are_relative_to_the_file(tmp_path):
    path = tmp_path / "etc" / "g.toml"
    path.parent.mkdir()
    path.write_text('data_dir = "var"\n')
    assert ConfigStore(path).load().data_path == (tmp_path / "etc" / "var").resolve()


def test_comments_survive_a_rewrite(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(HAND_WRITTEN)
    store = ConfigStore(path)
    store.update({"http_max_conn": 300, "snmp_community": "private"})
    text = path.read_text()
    assert "# Our PBX in room 4 -- ask Maria before changing ports!" in text
    assert '"8080"   # the old switch blocks 80' in text
    assert "# caps agreed with the network team\nhttp_max_conn = 300" in text
    assert 'snmp_community = "private"' in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_invalid_change_writes_nothing(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(HAND_WRITTEN)
    with pytest.raises(SettingsError) as info:
        ConfigStore(path).update({"http_max_conn": 5, "ip_http_port": "nope"})
    assert "ip_http_port" in info.value.errors
    assert path.read_text() == HAND_WRITTEN


def test_broken_toml_is_reported_with_its_place(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('ip_http_port = "80\n')
    with pytest.raises(ConfigFileError) as info:
        ConfigStore(path).load()
    assert "not valid TOML" in str(info.value) and "line 1" in str(info.value)


def test_created_file_lists_every_setting_with_a_comment(tmp_path):
    store = ConfigStore(tmp_path / "g.toml")
    store.create({"ip_http_port": "8080"})
    document = tomlkit.parse((tmp_path / "g.toml").read_text())
    from greenservers.config.settings import DECLARATIONS

    assert [s.name for s in DECLARATIONS if s.name not in document] == []
    assert document["ip_http_port"] == "8080" and len(document["ldap_password"]) >= 16
    assert "# The read community." in (tmp_path / "g.toml").read_text()


def test_generated_password_is_kept(tmp_path):
    store = ConfigStore(tmp_path / "g.toml")
    first = store.ensure_generated().ldap_password
    assert first and store.ensure_generated().ldap_password == first


@pytest.mark.parametrize("failing", ["fsync", "replace", "write"])
def test_failure_at_any_step_leaves_the_old_file(tmp_path, monkeypatch, failing):
    path = tmp_path / "g.toml"
    path.write_text(HAND_WRITTEN)

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if failing == "write":
        real_fdopen = os.fdopen

        def fdopen(fd, *args, **kwargs):
            handle = real_fdopen(fd, *args, **kwargs)
            handle.write = boom
            return handle

        monkeypatch.setattr(os, "fdopen", fdopen)
    else:
        monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError):
        ConfigStore(path).update({"http_max_conn": 300})
    monkeypatch.undo()
    assert path.read_text() == HAND_WRITTEN
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.toml"]


WRITER = textwrap.dedent(
    """\
    import sys
    from greenservers.config.store import ConfigStore
    store = ConfigStore(sys.argv[1])
    n = 1
    print("ready", flush=True)
    while True:
        n = n % 99999 + 1
        store.update({"http_max_conn": n, "snmp_location": "x" * (n % 5000)})
    """
)


def test_killed_writer_leaves_old_or_new_never_partial(tmp_path):
    """SIGKILL a process rewriting the file in a loop, many times: the file always parses whole."""
    path = tmp_path / "g.toml"
    path.write_text(HAND_WRITTEN)
    for round_ in range(15):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "ready"
        for _ in range(200 + 37 * round_):  # let it get into the middle of some write
            if path.stat().st_size < 0:
                break
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        text = path.read_text()
        settings = ConfigStore(path).load()
        assert text.startswith("# Our PBX in room 4")
        assert len(settings.snmp_location) == settings.http_max_conn % 5000 or text == HAND_WRITTEN


PAUSED_WRITER = textwrap.dedent(
    """\
    import sys
    from greenservers.config import store as module
    real_write = module.atomic_write

    def paused_write(path, data):
        print("read, about to write", flush=True)
        sys.stdin.readline()
        return real_write(path, data)

    module.atomic_write = paused_write
    module.ConfigStore(sys.argv[1]).update({"snmp_location": "set by the command"})
    """
)


def test_a_write_made_while_another_process_rewrites_the_file_is_not_lost(tmp_path):
    """A command (passwd) and the web page saving at the same moment: the lock on the file's folder is held from
    the command's read to its rename, so the other writer waits and then reads the command's change."""
    path = tmp_path / "g.toml"
    path.write_text(HAND_WRITTEN)
    command = subprocess.Popen([sys.executable, "-c", PAUSED_WRITER, str(path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert command.stdout.readline().strip() == "read, about to write"
        probe = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(probe)
        page = threading.Thread(target=ConfigStore(path).update, args=({"snmp_contact": "set by the page"},))
        page.start()
        command.stdin.write("go\n")
        command.stdin.flush()
        assert command.wait(timeout=30) == 0
        page.join(timeout=30)
    finally:
        command.kill()
        command.wait()
    settings = ConfigStore(path).load()
    assert (settings.snmp_location, settings.snmp_contact) == ("set by the command", "set by the page")


def test_temporary_files_of_ended_writers_are_removed_and_live_ones_kept(tmp_path):
    path = tmp_path / "g.toml"
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".g.toml.{int(ended.stdout)}.140.tmp"
    live = tmp_path / f".g.toml.{os.getpid()}.140.tmp"  # a writer at work right now
    other = tmp_path / f".other.toml.{int(ended.stdout)}.140.tmp"  # not this file's
    for temp in (orphan, live, other):
        temp.write_text("half")
    ConfigStore(path)
    assert not orphan.exists() and live.exists() and other.exists()


# -- a running server noticing that another process changed the file (ChangeWatch) ---------------


def test_watch_reads_a_change_by_another_process_after_one_quiet_poll(tmp_path):
    path = tmp_path / "g.toml"
    ours = ConfigStore(path)
    ours.create()
    watch = ChangeWatch(ours)
    assert watch.poll() is None
    ours.update({"http_max_conn": 5})  # the server's own write: nothing to read again
    assert watch.poll() is None
    ConfigStore(path).update({"admin_password_hash": hash_password("pw")})  # `passwd`, an atomic rename
    assert watch.poll() is None  # first seen: it might still be being written
    assert watch.poll() == ChangeWatch.CHANGED
    ours.load()
    assert watch.poll() is None


def test_watch_never_reads_a_hand_edit_while_it_is_being_written_in_place(tmp_path):
    path = tmp_path / "g.toml"
    ours = ConfigStore(path)
    ours.create()
    watch = ChangeWatch(ours)
    whole = path.read_bytes().replace(b"http_max_conn = 1000", b"http_max_conn = 12")
    with open(path, "r+b") as editor:  # an editor writing in place, slowly: valid TOML after every line
        editor.truncate(0)
        for line in whole.splitlines(keepends=True)[:40]:
            editor.write(line)
            editor.flush()
            assert watch.poll() is None  # the file changed since the last look
        editor.write(whole[editor.tell():])
    assert watch.poll() is None
    assert watch.poll() == ChangeWatch.CHANGED
    assert ours.load().http_max_conn == 12


def test_watch_tries_a_refused_file_again_only_when_it_changes_again(tmp_path):
    path = tmp_path / "g.toml"
    ours = ConfigStore(path)
    ours.create()
    watch = ChangeWatch(ours)
    good = path.read_text()
    path.write_text(good + "http_max_conn = \n")
    assert (watch.poll(), watch.poll()) == (None, ChangeWatch.CHANGED)
    with pytest.raises(ConfigFileError):
        ours.load()
    assert [watch.poll() for _ in range(5)] == [None] * 5  # logged once by the server, not again
    path.write_text(good.replace("http_max_conn = 1000", "http_max_conn = 3"))
    assert (watch.poll(), watch.poll()) == (None, ChangeWatch.CHANGED)
    assert ours.load().http_max_conn == 3


def test_watch_keeps_the_settings_when_the_file_is_gone_and_reads_it_when_back(tmp_path):
    path = tmp_path / "g.toml"
    ours = ConfigStore(path)
    ours.create({"http_max_conn": 4})
    watch = ChangeWatch(ours)
    kept = path.read_bytes()
    path.unlink()  # never taken for "all defaults": that would clear the password and move every port
    assert [watch.poll() for _ in range(4)] == [ChangeWatch.GONE, None, None, None]
    path.write_bytes(kept)
    assert (watch.poll(), watch.poll()) == (None, ChangeWatch.CHANGED)
