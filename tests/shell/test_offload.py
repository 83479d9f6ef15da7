"""Heavy work off the event loop: the thread, the interpreter settings while it runs and after; the child
process (an import) and what comes back from it; and work kept on the loop in slices: the address book's
index sorted in slices, a replaced index freed in steps."""

from __future__ import annotations

import gc
import operator
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from array import array
from pathlib import Path

import gevent
import pytest
from support.wait import eventually

from greenservers.addressbook import AddressBook, Contact, ImportRejected
from greenservers.process import offload
from greenservers.proto import ldap
from greenservers.proto.ldap import index


def contacts(count: int) -> list[Contact]:
    rng = random.Random(count)
    return [Contact(id=i + 1, first_name=rng.choice(["Ann", "Bo", "Cy"]), last_name=f"Name{rng.randrange(10**6)}",
                    work=f"+49 30 {1000000 + i}") for i in range(count)]


def test_outside_the_gevent_worker_the_work_runs_here():
    import threading
    assert offload.run_off_loop(threading.get_ident) == threading.get_ident()


@pytest.fixture
def as_in_the_worker(monkeypatch):
    monkeypatch.setattr(offload.monkey, "is_module_patched", lambda name: name == "threading")
    interval = sys.getswitchinterval()
    yield
    assert sys.getswitchinterval() == interval and gc.isenabled()


def test_in_the_worker_it_runs_in_a_pool_thread_with_short_gil_slices(as_in_the_worker):
    import threading

    before = gc.get_threshold()

    def observe():
        return threading.get_ident(), gc.isenabled(), gc.get_threshold(), sys.getswitchinterval()

    thread, collecting, thresholds, interval = offload.run_off_loop(observe)
    assert thread != threading.get_ident() and collecting and thresholds == before and interval == offload.SWITCH_INTERVAL
    assert gc.get_threshold() == before and sys.getswitchinterval() != offload.SWITCH_INTERVAL


def test_overlapping_work_restores_the_switch_interval_once_the_last_ends(as_in_the_worker):
    def work(seconds):
        time.sleep(seconds)  # in the pool thread: the hub goes on meanwhile
        return sys.getswitchinterval()

    before = sys.getswitchinterval()
    long = gevent.spawn(offload.run_off_loop, work, 0.3)
    short = gevent.spawn(offload.run_off_loop, work, 0.05)
    short.join()
    during = sys.getswitchinterval()  # the long one is still running
    long.join()
    assert during == long.value == short.value == offload.SWITCH_INTERVAL and sys.getswitchinterval() == before


def test_work_run_to_its_end_is_waited_for_by_a_greenlet_killed_meanwhile(as_in_the_worker):
    """An upload's commit (fsync, link) in a thread: its transfer killed meanwhile (the service stopped) must not
    go on to its clean-up, which would abort the upload under the thread; the kill goes on afterwards."""
    events = []

    def commit():
        time.sleep(0.2)
        events.append("committed")
        return "linked"

    def transfer():
        try:
            events.append(offload.run_off_loop(commit, to_its_end=True))
        finally:
            events.append("cleaned up")

    greenlet = gevent.spawn(transfer)
    gevent.sleep(0.05)  # it waits for the thread now
    greenlet.kill(block=True)
    assert events == ["committed", "cleaned up"] and isinstance(greenlet.value, gevent.GreenletExit)
    quick = gevent.spawn(offload.run_off_loop, commit)  # without it, the kill ends the wait at once
    gevent.sleep(0.05)
    quick.kill(block=True)
    assert events == ["committed", "cleaned up"]  # its thread goes on alone meanwhile
    gevent.sleep(0.3)
    assert events == ["committed", "cleaned up", "committed"]


def test_what_was_loaded_is_frozen_what_comes_later_is_collected_and_a_build_keeps_it_so(as_in_the_worker):
    class Node:
        pass

    loaded = Node()
    try:
        offload.freeze_the_loaded()
        later = Node()
        made = [Node() for _ in range(100)]
        tracked = {id(o) for o in gc.get_objects()}  # what a full collection scans
        assert id(loaded) not in tracked and id(later) in tracked and id(made[0]) in tracked and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()  # the other tests' process as it was


def test_what_was_built_is_frozen_then_the_rest_collected_whole(as_in_the_worker):
    class Node:
        pass

    built = [Node() for _ in range(100)]
    full = gc.get_stats()[2]["collections"]
    try:
        offload.freeze_the_built()
        tracked = {id(o) for o in gc.get_objects()}
        assert id(built[0]) not in tracked and gc.get_freeze_count() > 0
        assert gc.get_stats()[2]["collections"] == full + 1  # what was frozen no longer makes a full collection due
    finally:
        gc.unfreeze()


def test_no_full_collections_while_merging_young_ones_go_on_and_all_as_before_however_it_ends(as_in_the_worker):
    before = gc.get_threshold()
    with offload.no_full_collections():
        assert gc.get_threshold() == (before[0], offload.MERGE_MIDDLE, offload.NEVER) and gc.isenabled()
        with pytest.raises(RuntimeError), offload.no_full_collections():  # nested: a merge and a build
            raise RuntimeError("a bug in the merge")
        assert gc.get_threshold()[2] == offload.NEVER  # the outer one still runs
    assert gc.get_threshold() == before
    with pytest.raises(RuntimeError), offload.no_full_collections():
        raise RuntimeError("a bug in the merge")
    assert gc.get_threshold() == before


def test_outside_the_worker_the_collector_is_left_alone():
    before = gc.get_threshold()
    with offload.no_full_collections():
        assert gc.get_threshold() == before


def test_an_error_in_the_work_is_raised_and_the_settings_restored(as_in_the_worker):
    with pytest.raises(ZeroDivisionError):
        offload.run_off_loop(lambda: 1 / 0)


@pytest.mark.parametrize("size", [0, 1, index.SORT_STEP, index.SORT_STEP + 1, 5 * index.SORT_STEP + 17])
def test_sorting_in_slices_sorts(size):
    rng = random.Random(size)
    keys = {i: rng.choice("abc") * rng.randrange(1, 4) for i in range(size)}
    steps = index.sorted_runs_steps(array("i", keys), keys.get)
    slices = 0
    try:
        while True:
            next(steps)
            slices += 1
    except StopIteration as done:
        assert list(index.merged_pairs(done.value)) == sorted((k, i) for i, k in keys.items())
        assert all(0 < len(ids) <= index.SORT_STEP for _, _, ids in done.value)  # packed runs: no one list of all the pairs
    assert slices >= size // index.SORT_STEP  # a slice at a time


def test_a_replaced_directory_is_handed_over_and_dismantled_to_nothing():
    first = ldap.Directory("dc=pbx", contacts(300))
    second = ldap.Directory("ou=book,dc=pbx", contacts(300))
    steps = sum(1 for _ in first.dismantle(per_step=64))
    assert steps >= 300 // 64  # a slice at a time
    assert not first.blobs and not len(first.order) and not any(len(k) for k in first.keys.values())
    assert not any(g.postings for g in first.grams.values())
    assert len(second) == 300 and len(second.keys["cn"]) == 300  # the other one is untouched


def test_the_ldap_shell_frees_a_replaced_directory_once_nothing_else_holds_it(monkeypatch):
    from greenservers.shells import ldap_follower as follower
    monkeypatch.setattr(follower, "DISMANTLE_WAIT", 0.001)
    monkeypatch.setattr(follower, "DISMANTLE_PATIENCE", 0.01)
    directory = ldap.Directory("dc=pbx", contacts(50))
    reader = directory  # a search (or a client's paged results) still using it, longer than the shell waits
    version = directory.version
    gevent.spawn(follower.dismantle, [directory]).join()
    # dismantled anyway, in steps: a reader still holding it finds its contacts gone (and it moved on); freed whole
    # when the last reader let go, 100,000 contacts held the loop 17-23 ms
    assert len(reader) == 0 and reader.version != version
    directory = reader = ldap.Directory("dc=pbx", contacts(50))
    monkeypatch.setattr(follower, "DISMANTLE_PATIENCE", 60.0)
    holder = [directory]
    del directory
    kept = reader.blobs
    waiting = gevent.spawn(follower.dismantle, holder)
    gevent.sleep(0)  # it looks, finds the reader, and waits
    assert len(kept) == 50 and not waiting.dead
    del reader  # the search ends
    waiting.join()
    assert kept == {}  # then it is emptied in place


def test_a_merge_makes_no_container_of_all_its_pairs():
    """What a young collection scans in one go stays small: no list of every (key, id) pair of a merge."""
    directory = ldap.Directory("dc=pbx", contacts(100))
    more = contacts(3 * index.SORT_STEP + 100)[100:]
    largest = 0
    gc.disable()  # what the merge makes stays in the youngest generation, where it can be seen
    try:
        before = {id(o) for o in gc.get_objects()}
        for _ in directory.merge_steps(more):
            made = (o for o in gc.get_objects(0) if id(o) not in before and isinstance(o, list | tuple | dict))
            largest = max([largest, *(len(o) for o in made)])
    finally:
        gc.enable()
    assert len(directory) == len(more) + 100
    assert largest <= index.SORT_STEP + 2 * index.BLOCK + 1


def test_a_single_change_through_the_api_writes_the_store_in_a_pool_thread(as_in_the_worker, web, monkeypatch):
    """Validation, the transaction and its log run off the event loop; the book's subscribers (the LDAP
    follower) are told on it; a refusal still comes back as the API's answer."""
    import threading

    from support.web import basic

    from greenservers.addressbook import addressbook_for, store

    writers, told = set(), []
    writes = ("INSERT", "UPDATE", "DELETE")
    connect = store._connect

    def traced(*args, **kwargs):  # each thread's connection, as it is opened
        db = connect(*args, **kwargs)
        db.set_trace_callback(lambda sql: writers.add(threading.get_ident()) if sql.split()[0] in writes else None)
        return db

    monkeypatch.setattr(store, "_connect", traced)
    book = addressbook_for(web.runtime)
    book.close()  # its connections are opened again, traced
    book.subscribe(lambda: told.append(threading.get_ident()))
    loop = threading.get_ident()
    try:
        added = web.client.post("/api/addressbook", json={"last_name": "Nagel", "work": "+49 30 1234"}, headers=basic())
        assert added.status_code == 201
        id_ = added.json["id"]
        assert web.client.put(f"/api/addressbook/{id_}", json={"mobile": "+49 171 5"}, headers=basic()).json["mobile"] == "+49 171 5"
        refused = web.client.put(f"/api/addressbook/{id_}", json={"work": "no number"}, headers=basic())
        assert refused.status_code == 400 and "work" in refused.json["errors"]
        assert web.client.put(f"/api/addressbook/{id_ + 1}", json={"mobile": "1"}, headers=basic()).status_code == 404
        assert web.client.delete(f"/api/addressbook/{id_}", headers=basic()).status_code == 200
        assert writers and loop not in writers
        assert told == [loop] * 3
        assert len(book) == 0
    finally:
        book.close()  # the traced connections


# -- the child process (an import) ---------------------------------------------------


def _children(pid: int | str = "self") -> set[int]:
    """The child processes of `pid` (this process) now, those of each of its threads."""
    return {int(child) for task in Path(f"/proc/{pid}/task").iterdir() for child in (task / "children").read_text().split()}


def test_in_the_worker_the_child_runs_apart_at_lower_priority_while_the_loop_goes_on(as_in_the_worker):
    ticks = []
    ticking = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(1000)])
    try:
        assert offload.run_in_child(os.getpid) != os.getpid()
        assert offload.run_in_child(os.nice, 0) == os.nice(0) + offload.CHILD_NICENESS
        started = len(ticks)
        assert offload.run_in_child(time.sleep, 0.3) is None
        assert len(ticks) - started >= 5  # the hub went on while the child slept
    finally:
        ticking.kill()
    assert not _children()


def _recording(policies: list, count: int = 3, then: Exception | None = None):
    """Steps that note the scheduling policy of the thread that runs each; then raise `then` if given."""
    for _ in range(count):
        policies.append(os.sched_getscheduler(0))
        yield
    if then is not None:
        raise then


def test_in_a_child_steps_wait_for_idle_cores_for_their_patience_then_go_on_at_the_child_s_niceness(monkeypatch):
    monkeypatch.setattr(offload, "in_a_child", True)
    patient: list[int] = []
    offload.run_when_idle(_recording(patient))
    assert patient == [os.SCHED_IDLE] * 3
    impatient: list[int] = []
    offload.run_when_idle(_recording(impatient), patience=0)
    assert impatient == [os.SCHED_IDLE, os.SCHED_OTHER, os.SCHED_OTHER]  # a step, then the rest in the caller's thread
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's thread never left its policy
    with pytest.raises(ValueError, match="row 7"):
        offload.run_when_idle(_recording([], then=ValueError("row 7")))  # raised in the idle thread, raised here
    with pytest.raises(ValueError, match="row 8"):
        offload.run_when_idle(_recording([], then=ValueError("row 8")), patience=0)  # raised in the caller's thread


def test_a_failed_child_pickles_as_it_was_made():
    again = pickle.loads(pickle.dumps(offload.ChildFailed("import_rows", "ended without an answer (code -9)")))
    assert (str(again), again.reason) == ("import_rows ended without an answer (code -9)", "ended without an answer (code -9)")


def test_outside_a_child_steps_run_here():
    policies: list[int] = []
    offload.run_when_idle(_recording(policies))
    assert policies == [os.SCHED_OTHER] * 3


def test_the_child_knows_it_is_one_and_its_own_thread_keeps_the_normal_policy(as_in_the_worker):
    assert offload.run_in_child(eval, "__import__('greenservers.process.offload', fromlist=['_']).in_a_child") is True
    assert offload.run_in_child(os.sched_getscheduler, 0) == os.SCHED_OTHER
    assert offload.in_a_child is False


def test_children_run_one_at_a_time_the_others_wait_their_turn(as_in_the_worker):
    at_once = []
    imports = [gevent.spawn(offload.run_in_child, time.sleep, 0.3) for _ in range(3)]
    while not all(i.ready() for i in imports):
        at_once.append(len(_children()))
        gevent.sleep(0.01)
    assert all(i.successful() for i in imports)
    assert max(at_once) == offload.CHILDREN == 1


def test_outside_the_worker_the_child_work_runs_here():
    assert offload.run_in_child(os.getpid) == os.getpid()


def test_what_the_child_raises_is_raised_here_as_it_was(as_in_the_worker, tmp_path):
    with pytest.raises(ZeroDivisionError):
        offload.run_in_child(operator.truediv, 1, 0)
    book = AddressBook(tmp_path / "book.sqlite3")
    try:
        csv = "first_name,last_name,work\nAnn,Lee,+49 30 1\nBo,,not a number\n"
        with pytest.raises(ImportRejected) as rejected:
            book.import_csv(csv)  # through the child: the worker's way
        assert rejected.value.errors and rejected.value.errors[0]["row"] == 3 and rejected.value.total == 1
        assert len(book) == 0  # nothing half-written
        assert book.import_csv("first_name,last_name,work\nAnn,Lee,+49 30 1\n") == 1
        assert [c.last_name for c in book.contacts()] == ["Lee"]
    finally:
        book.close()


def test_a_child_that_dies_or_overstays_is_a_clear_error_and_leaves_no_process(as_in_the_worker, monkeypatch):
    with pytest.raises(offload.ChildFailed, match=r"_exit ended without an answer \(code 3\)"):
        offload.run_in_child(os._exit, 3)
    monkeypatch.setattr(offload, "CHILD_TIMEOUT", 0.5)
    with pytest.raises(offload.ChildFailed, match="did not end within"):
        offload.run_in_child(time.sleep, 60)
    assert not _children()


def test_a_child_has_no_descriptor_of_the_worker_and_its_output_is_bounded(as_in_the_worker):
    inheritable = os.dup2(sys.stdout.fileno(), 200, inheritable=True)  # as a socket a library left inheritable
    try:
        assert "200" not in offload.run_in_child(os.listdir, "/proc/self/fd")
    finally:
        os.close(inheritable)
    assert offload.run_in_child(os.write, 2, b"x" * 200_000) == 200_000  # a long stderr: its end kept, nothing stuck
    with pytest.raises(offload.ChildFailed, match="more than"):
        offload.run_in_child(bytes, offload.CHILD_ANSWER_LIMIT + 1)
    assert not _children()


def test_a_child_dies_with_the_worker(tmp_path):
    """Killed outright, the worker leaves no import running behind it (its transaction rolls back)."""
    stand_in = subprocess.Popen([sys.executable, "-c", WORKER_STAND_IN], cwd=Path(offload.__file__).parents[2])
    try:
        child = eventually(lambda: next(iter(_children(stand_in.pid)), None), timeout=60)
        os.kill(stand_in.pid, signal.SIGKILL)
        stand_in.wait(10)
        eventually(lambda: not Path(f"/proc/{child}").exists() or _state(child) == "Z", timeout=30)
    finally:
        if stand_in.poll() is None:
            stand_in.kill()
            stand_in.wait()


WORKER_STAND_IN = """
import time
from greenservers.process import offload
offload.monkey.is_module_patched = lambda name: name == "threading"
offload.run_in_child(time.sleep, 120)
"""


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
