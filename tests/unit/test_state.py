"""Job records, the per-user outbox and the replay guard, on in-memory storage."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import pytest

from endpoints.wechat import outbox as outbox_module
from endpoints.wechat.outbox import Outbox, Route
from endpoints.wechat.replay_guard import ReplayGuard
from endpoints.wechat.retry_tracker import JobState, LocalSignals, RetryTracker
from endpoints.wechat.storage import EndpointStore, hashed
from tests.fakes import FakeClock, MemoryStorage


def store(storage: MemoryStorage | None = None, endpoint: str = "ep-1") -> EndpointStore:
    return EndpointStore(storage or MemoryStorage(), endpoint)


def test_keys_are_namespaced_and_hash_user_ids() -> None:
    storage = MemoryStorage()
    s = store(storage)
    Outbox(s, RetryTracker(s)).open("oOPENID-secret", "job1", Route.FETCH, sent=1)
    assert all(k.startswith("wx/ep-1/") for k in storage.data)
    assert not any("oOPENID" in k for k in storage.data)


def test_endpoints_do_not_share_state() -> None:
    storage = MemoryStorage()
    a, b = RetryTracker(store(storage, "ep-a")), RetryTracker(store(storage, "ep-b"))
    a.claim("k", "u", lease_until=time.time() + 5)
    assert a.get("k") is not None and b.get("k") is None


def test_claim_read_back_decides_the_winner() -> None:
    storage = MemoryStorage()
    first = RetryTracker(store(storage))
    second = RetryTracker(store(storage))
    _job1, mine1 = first.claim("k", "u", time.time() + 5)
    job2, mine2 = second.claim("k", "u", time.time() + 5)
    assert mine1 and mine2  # sequential claims: the later write wins the read-back
    assert first.get("k") == job2
    # a claimer whose write was overwritten before its read-back loses
    original_get = storage.get

    def racing_get(key: str) -> bytes:
        storage.get = original_get  # type: ignore[method-assign]
        RetryTracker(store(storage)).claim("k2", "u", time.time() + 5)
        return original_get(key)

    storage.get = racing_get  # type: ignore[method-assign]
    _, mine = first.claim("k2", "u", time.time() + 5)
    assert not mine


def test_wait_settled_gets_the_outcome_handed_over_in_process() -> None:
    signals = LocalSignals()
    storage = MemoryStorage()
    tracker = RetryTracker(store(storage), signals=signals)
    job, _ = tracker.claim("k", "u", time.time() + 5)
    tracker.watch("k")  # registered before the work starts: no wake-up can be missed
    tracker.settle(job, JobState.DONE, ["answer"])  # settles before anyone waits
    reads_before = len(storage.calls)
    started = time.monotonic()
    settled = tracker.wait_settled(job, until=time.time() + 3, poll_interval=10)
    assert settled.state is JobState.DONE and settled.parts == ["answer"]
    assert time.monotonic() - started < 1.0  # handed over, not polled (interval is 10 s)
    assert len(storage.calls) == reads_before  # no storage round trip
    tracker.release("k")
    assert signals.pending() == 0


def test_wait_settled_is_woken_by_work_finishing_later() -> None:
    signals = LocalSignals()
    tracker = RetryTracker(store(), signals=signals)
    job, _ = tracker.claim("k", "u", time.time() + 5)
    timer = threading.Timer(0.1, lambda: tracker.settle(job, JobState.DONE, ["late"]))
    timer.start()
    started = time.monotonic()
    assert tracker.wait_settled(job, until=time.time() + 3, poll_interval=10).parts == ["late"]
    assert time.monotonic() - started < 1.0
    assert signals.pending() == 0  # nothing left behind in process memory


def test_wait_settled_polls_storage_for_other_processes() -> None:
    storage = MemoryStorage()
    waiter = RetryTracker(store(storage), signals=LocalSignals())
    worker = RetryTracker(store(storage), signals=LocalSignals())
    job, _ = worker.claim("k", "u", time.time() + 5)
    threading.Timer(0.1, lambda: worker.settle(job, JobState.FAILED, ["sorry"])).start()
    settled = waiter.wait_settled(job, until=time.time() + 3, poll_interval=0.05)
    assert settled.state is JobState.FAILED


def test_wait_returns_at_deadline_or_when_lost() -> None:
    tracker = RetryTracker(store())
    job, _ = tracker.claim("k", "u", lease_until=time.time() + 10)
    started = time.monotonic()
    assert tracker.wait_settled(job, until=time.time() + 0.2, poll_interval=0.05).state is (
        JobState.RUNNING
    )
    assert 0.15 < time.monotonic() - started < 1.0
    lost, _ = tracker.claim("k2", "u", lease_until=time.time() - 1)
    assert lost.is_lost(time.time())
    assert tracker.wait_settled(lost, until=time.time() + 5, poll_interval=0.05) == lost


def test_deliveries_are_opened_once_and_listed_oldest_first() -> None:
    clock = FakeClock()
    s = store()
    outbox = Outbox(s, RetryTracker(s, clock), clock, retention=100)
    first = outbox.open("user", "a", Route.FETCH, sent=1)
    again = outbox.open("user", "a", Route.PUSH, sent=0)  # a retried delivery changes nothing
    assert again == first
    clock.advance(1)
    outbox.open("user", "b", Route.PUSH, sent=0)
    assert [d.job for d in outbox.pending("user")] == ["a", "b"]
    assert not outbox.has_pending("someone else")

    moved = outbox.advance(first, 2, total=3)
    assert not moved.closed and outbox.get("a") == moved
    done = outbox.advance(moved, 3, total=3)
    assert done.closed
    fresh = Outbox(s, RetryTracker(s, clock), clock, retention=100)  # next request
    assert [d.job for d in fresh.pending("user")] == ["b"]

    clock.advance(100)
    assert not Outbox(s, RetryTracker(s, clock), clock, retention=100).has_pending("user")


def test_a_failed_push_leaves_the_rest_fetchable() -> None:
    s = store()
    outbox = Outbox(s, RetryTracker(s))
    pushed = outbox.open("user", "a", Route.PUSH, sent=0)
    fallen = outbox.switch_to_fetch(pushed, announced=False)
    assert fallen.route is Route.FETCH and fallen.unannounced
    assert outbox.get("a") == fallen
    assert outbox.advance(fallen, 1, total=2).unannounced is False


def test_concurrent_opens_for_one_user_keep_both() -> None:
    storage = MemoryStorage()
    s = store(storage)
    outbox = Outbox(s, RetryTracker(s))
    original_set = storage.set
    raced: list[str] = []

    def racing_set(key: str, val: bytes) -> None:
        original_set(key, val)
        if "/user/" in key and not raced:  # another request overwrites the index at once
            raced.append(key)
            original_set(key, b'{"v":2,"jobs":["other"]}')

    storage.set = racing_set  # type: ignore[method-assign]
    outbox.open("user", "mine", Route.FETCH, sent=1)
    storage.set = original_set  # type: ignore[method-assign]
    index = Outbox(s, RetryTracker(s))._load_index(next(iter(raced)).rsplit("/", 1)[1])
    assert "mine" in index


def sweep_everything(outbox: Outbox, tag: str) -> None:
    """A later request in every shard of the sweep ring."""
    for shard in "0123456789abcdef":
        outbox.track_job(f"{shard}{tag}")


def test_sweep_deletes_expired_records_of_everyone() -> None:
    clock = FakeClock()
    storage = MemoryStorage()
    s = store(storage)
    tracker = RetryTracker(s, clock)
    outbox = Outbox(s, tracker, clock, retention=1000, job_retention=200)
    tracker.record_instant("a0ld", "u", ["x"])
    outbox.track_job("a0ld")
    tracker.record_instant("b0ld", "u", ["y", "z"])
    outbox.track_job("b0ld")
    outbox.open("gone-user", "b0ld", Route.FETCH, sent=1)
    clock.advance(201)
    sweep_everything(outbox, "new")
    assert tracker.get("a0ld") is None
    # A job whose answer is still being delivered lives as long as its delivery.
    assert tracker.get("b0ld") is not None
    assert Outbox(s, tracker, clock, retention=1000).has_pending("gone-user")
    clock.advance(1000)
    sweep_everything(outbox, "newer")
    sweep_everything(outbox, "newest")
    assert not any("/user/" in k or "/delivery/" in k for k in storage.data)
    assert tracker.get("b0ld") is None


def test_waiting_deliveries_stay_tracked_while_live() -> None:
    clock = FakeClock()
    storage = MemoryStorage()
    s = store(storage)

    def outbox() -> Outbox:  # one per request, as in the plugin
        return Outbox(s, RetryTracker(s, clock), clock, retention=1000)

    # Job keys are hex digests in the plugin: they land in the ring shards swept below.
    outbox().open("user", "a1", Route.FETCH, sent=0)
    clock.advance(600)
    outbox().open("user", "b2", Route.FETCH, sent=0)  # a second answer later
    clock.advance(500)  # the first expired, the second is live
    sweep_everything(outbox(), "t1")
    assert [d.job for d in outbox().pending("user")] == ["b2"]
    clock.advance(2000)
    sweep_everything(outbox(), "t2")
    sweep_everything(outbox(), "t3")
    assert not any("/user/" in k or "/delivery/" in k for k in storage.data)  # never leaked


def test_a_sweep_deletes_a_bounded_number_of_records() -> None:
    clock = FakeClock()
    storage = MemoryStorage()
    s = store(storage)
    tracker = RetryTracker(s, clock)
    outbox = Outbox(s, tracker, clock, job_retention=120)
    for i in range(30):
        outbox.track_job(f"0{i:04d}")
    clock.advance(121)
    deletes_before = sum(1 for op, _ in storage.calls if op == "del")
    outbox.track_job("0new")
    deletes = sum(1 for op, _ in storage.calls if op == "del") - deletes_before
    assert deletes == outbox_module.MAX_SWEEP_PER_CALL


def test_sweep_ring_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox_module, "MAX_RING_ENTRIES", 3)
    storage = MemoryStorage()
    s = store(storage)
    tracker = RetryTracker(s)
    outbox = Outbox(s, tracker)
    for key in ("a1", "a2", "a3", "a4"):
        tracker.record_instant(key, "u", ["x"])
        outbox.track_job(key)
    assert tracker.get("a1") is None  # evicted early, deleted
    assert all(tracker.get(k) is not None for k in ("a2", "a3", "a4"))


def test_an_over_full_ring_gives_up_what_expires_soonest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A waiting answer (kept for the retention, 24 h) noted before a burst of job records
    # (kept for minutes) in the same shard ("b…") outlives them when the ring overflows.
    monkeypatch.setattr(outbox_module, "MAX_RING_ENTRIES", 4)  # the answer notes 2
    storage = MemoryStorage()
    s = store(storage)
    tracker = RetryTracker(s)
    outbox = Outbox(s, tracker)
    waiting = outbox.open("user", "bz-answer", Route.FETCH, sent=1)
    for key in ("b1", "b2", "b3", "b4"):
        tracker.record_instant(key, "u", ["x"])
        outbox.track_job(key)
    assert outbox.get(waiting.job) is not None
    assert outbox.pending("user")
    assert tracker.get("b1") is None and tracker.get("b2") is None
    assert tracker.get("b3") is not None and tracker.get("b4") is not None


def test_forget_user() -> None:
    storage = MemoryStorage()
    s = store(storage)
    outbox = Outbox(s, RetryTracker(s))
    outbox.open("user", "a", Route.FETCH, sent=1)
    outbox.forget_user("user")
    assert not outbox.has_pending("user")
    assert not any("/delivery/" in k for k in storage.data)


def test_replay_guard() -> None:
    clock = FakeClock()
    guard = ReplayGuard(store(), window_seconds=300, clock=clock)
    assert guard.admit("sig1", "m:1")
    assert guard.admit("sig1", "m:1")  # WeChat's retry of the same message
    assert not guard.admit("sig1", "m:2")  # same signature, other message: replay
    assert guard.admit("sig2", "m:2")
    clock.advance(601)
    assert guard.admit("sig1", "m:3")  # forgotten after the window (timestamps refuse it)


def test_a_hand_over_is_seen_even_when_the_waiter_comes_late() -> None:
    signals = LocalSignals()
    tracker = RetryTracker(store(), signals=signals)
    job, _ = tracker.claim("k", "u", time.time() + 5)
    tracker.watch("k")
    tracker.settle(job, JobState.DONE, ["answer"])
    # the delivery only gets to wait after its deadline (slow bookkeeping)
    assert tracker.wait_settled(job, until=time.time() - 1, poll_interval=1).parts == ["answer"]
    tracker.release("k")


class _AppearsDuringRead(MemoryStorage):
    """A key written by another request between our failed ``get`` and the ``exist``."""

    def __init__(self, key: str, value: bytes, fail_every_read: bool = False) -> None:
        super().__init__()
        self._late: tuple[str, bytes] | None = (key, value)
        self._fail_every_read = fail_every_read

    def get(self, key: str) -> bytes:
        if self._late is not None and key == self._late[0]:
            late, self._late = self._late, None
            super().set(*late)
            raise KeyError(key)  # the read happened before the write
        if self._fail_every_read:
            raise OSError("storage unavailable")
        return super().get(key)


def test_strict_load_reads_again_when_the_record_appeared_meanwhile() -> None:
    probe = EndpointStore(MemoryStorage(), "ep")
    key = probe.key("delivery", "job-1")
    store = EndpointStore(_AppearsDuringRead(key, b'{"route":"push"}'), "ep")
    assert store.load("delivery", "job-1", strict=True) == {"route": "push"}


def test_strict_load_still_raises_when_reading_fails() -> None:
    probe = EndpointStore(MemoryStorage(), "ep")
    key = probe.key("delivery", "job-1")
    backend = _AppearsDuringRead(key, b"{}", fail_every_read=True)
    backend.set(key, b"{}")
    backend._late = None
    with pytest.raises(OSError):
        EndpointStore(backend, "ep").load("delivery", "job-1", strict=True)


# --- waiting without polling, lost for sure, given up ----------------------------------------


def test_a_carried_outcome_is_waited_for_without_polling_storage() -> None:
    storage = MemoryStorage()
    signals = LocalSignals()
    tracker = RetryTracker(store(storage), signals=signals)
    job, _ = tracker.claim("k", "u", time.time() + 5)
    signals.carry("k")  # a connection of this process follows the worker
    reads = len(storage.calls)
    timer = threading.Timer(0.3, lambda: signals.fire(replace(job, state=JobState.DONE)))
    timer.start()
    settled = tracker.wait_settled(job, time.time() + 3, poll_interval=0.01, carried_recheck=0.05)
    assert settled.state is JobState.DONE
    # 30 polls' worth of time; a storage read only every CARRIED_POLLS rechecks (0.15 s).
    assert len(storage.calls) - reads <= 3


def test_a_stalled_connection_does_not_hide_a_stored_outcome() -> None:
    # The worker stored its answer, but the connection carrying it stalled (a buffering
    # proxy): the delivery still finds it in storage, well before its deadline.
    storage = MemoryStorage()
    signals = LocalSignals()
    tracker = RetryTracker(store(storage), signals=signals)
    job, _ = tracker.claim("k", "u", time.time() + 5)
    signals.carry("k")
    tracker.store(replace(job, state=JobState.DONE, parts=["answer"]))
    started = time.monotonic()
    settled = tracker.wait_settled(job, time.time() + 3, poll_interval=0.01, carried_recheck=0.05)
    assert settled.state is JobState.DONE and settled.parts == ["answer"]
    assert time.monotonic() - started < 1.0


def test_the_last_look_before_the_deadline_reads_storage() -> None:
    storage = MemoryStorage()
    signals = LocalSignals()
    tracker = RetryTracker(store(storage), signals=signals)
    job, _ = tracker.claim("k", "u", time.time() + 5)
    signals.carry("k")
    # Storage is read at 0.3 s (nothing yet); the answer is stored at 0.35 s; the next
    # regular read would be at 1.2 s, after the deadline (0.45 s): only the last look sees it.
    done = replace(job, state=JobState.DONE, parts=["answer"])
    timer = threading.Timer(0.35, lambda: tracker.store(done))
    timer.start()
    settled = tracker.wait_settled(job, time.time() + 0.45, poll_interval=0.01, carried_recheck=0.3)
    timer.join()
    assert settled.state is JobState.DONE


def test_an_outcome_carried_in_before_the_wait_began_is_handed_over() -> None:
    # The worker's "done" arrived while a delivery was reading the job (still running):
    # the delivery must not wait until its deadline for a signal that has come and gone.
    signals = LocalSignals()
    tracker = RetryTracker(store(), signals=signals)
    job, _ = tracker.claim("k", "u", time.time() + 5)
    signals.carry("k")
    signals.fire(replace(job, state=JobState.DONE, parts=["early"]))
    started = time.monotonic()
    settled = tracker.wait_settled(job, time.time() + 3, poll_interval=10, carried_recheck=10)
    assert settled.parts == ["early"] and time.monotonic() - started < 0.5
    signals.drop("k")  # the connection ended: nothing is kept any more
    assert signals.watch("k").job is None


def test_once_the_connection_is_gone_storage_is_polled() -> None:
    storage = MemoryStorage()
    signals = LocalSignals()
    tracker = RetryTracker(store(storage), signals=signals)
    elsewhere = RetryTracker(store(storage), signals=LocalSignals())
    job, _ = tracker.claim("k", "u", time.time() + 5)
    signals.carry("k")
    threading.Timer(0.1, lambda: signals.drop("k")).start()  # broke without a "done"
    threading.Timer(0.2, lambda: elsewhere.settle(job, JobState.DONE, ["stored"])).start()
    settled = tracker.wait_settled(job, time.time() + 3, poll_interval=0.05, carried_recheck=0.05)
    assert settled.parts == ["stored"]


def test_a_lease_that_ran_out_on_a_stale_copy_is_checked_in_storage() -> None:
    # Under load a waiter's copy goes stale: the worker renewed the lease (or took the
    # claim over) since. Lost is only what storage says is lost.
    storage = MemoryStorage()
    tracker = RetryTracker(store(storage), signals=LocalSignals())
    stale, _ = tracker.claim("k", "u", lease_until=time.time() - 1)
    tracker.store(replace(stale, worker=True, lease_until=time.time() + 30))
    threading.Timer(0.2, lambda: tracker.store(replace(stale, state=JobState.DONE))).start()
    settled = tracker.wait_settled(stale, time.time() + 3, poll_interval=0.05)
    assert settled.state is JobState.DONE
    # …and a job storage still shows lost is lost, after one look.
    lost, _ = tracker.claim("k2", "u", lease_until=time.time() - 1)
    reads = len(storage.calls)
    assert tracker.wait_settled(lost, time.time() + 3, poll_interval=0.05).is_lost(time.time())
    assert len(storage.calls) == reads + 1


def test_lost_is_not_concluded_from_a_failed_read() -> None:
    # Storage hiccups while the lease looks expired: the waiter cannot confirm it is lost,
    # so it waits on (and sees the outcome once storage answers) instead of giving up.
    storage = MemoryStorage()
    tracker = RetryTracker(store(storage), signals=LocalSignals())
    stale, _ = tracker.claim("k", "u", lease_until=time.time() - 1)
    tracker.store(replace(stale, state=JobState.DONE, parts=["late but here"]))
    healthy_get = storage.get
    failures = iter(range(3))

    def flaky_get(key: str) -> bytes:
        if next(failures, None) is not None:
            raise OSError("storage unavailable")
        return healthy_get(key)

    storage.get = flaky_get  # type: ignore[method-assign]
    settled = tracker.wait_settled(stale, time.time() + 3, poll_interval=0.05)
    assert settled.state is JobState.DONE and settled.parts == ["late but here"]


def test_a_strict_read_of_an_unknown_job_asks_whether_it_exists_first() -> None:
    storage = CountingStorage()
    signals = LocalSignals()
    tracker = RetryTracker(store(storage), signals=signals)
    assert tracker.get("new", strict=True) is None
    assert storage.ops == ["exist"]  # a first delivery: one call, not get + exist
    tracker.claim("new", "u", time.time() + 5)
    storage.ops.clear()
    signals.carry("new")  # this process follows its worker: it is there, read it
    assert tracker.get("new", strict=True) is not None
    assert storage.ops == ["get"]
    broken = RetryTracker(store(FailingExist()), signals=LocalSignals())
    with pytest.raises(RuntimeError):  # a failure is never "no job"
        broken.get("other", strict=True)


class CountingStorage(MemoryStorage):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def get(self, key: str) -> bytes:
        self.ops.append("get")
        return super().get(key)

    def set(self, key: str, val: bytes) -> None:
        self.ops.append("set")
        super().set(key, val)

    def exist(self, key: str) -> bool:
        self.ops.append("exist")
        return super().exist(key)


class FailingExist(MemoryStorage):
    def exist(self, key: str) -> bool:
        raise RuntimeError("storage unavailable")


def test_giving_up_leaves_a_closed_record_nobody_lists() -> None:
    clock = FakeClock()
    s = store()
    tracker = RetryTracker(s, clock)
    outbox = Outbox(s, tracker, clock)
    job, _ = tracker.claim(KEY_A, hashed("user"), lease_until=clock() - 1)
    given = outbox.give_up(job, Route.PUSH)
    assert given.closed and given.sent == 0 and outbox.get(KEY_A) == given
    assert Outbox.given_up(given, parts=1)
    assert not Outbox(s, tracker, clock).has_pending("user")  # the keyword means nothing
    handed = outbox.open("user", KEY_B, Route.FETCH, sent=0)
    assert outbox.give_up(replace(job, key=KEY_B), Route.PUSH) == handed  # left as it was
    assert not Outbox.given_up(outbox.advance(handed, 2, total=2), parts=2)  # all went out


@pytest.mark.parametrize("route", [Route.PUSH, Route.FETCH])
def test_a_reopened_answer_continues_by_its_route(route: Route) -> None:
    clock = FakeClock()
    s = store()
    tracker = RetryTracker(s, clock)
    outbox = Outbox(s, tracker, clock)
    job, _ = tracker.claim(KEY_A, hashed("user"), lease_until=clock() - 1)
    clock.advance(30)
    reopened = outbox.reopen(outbox.give_up(job, Route.PUSH), route)
    assert not reopened.closed and reopened.route is route and reopened.sent == 0
    assert reopened.unannounced is (route is Route.FETCH)  # told "lost": say it waits
    assert reopened.opened_at == clock()
    assert [d.job for d in Outbox(s, tracker, clock).pending("user")] == [KEY_A]


KEY_A = hashed("message a")
KEY_B = hashed("message b")


def test_sweep_notes_of_a_busy_shard_go_out_with_its_current_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(outbox_module, "_PENDING_NOTES", outbox_module._PendingNotes())
    storage = SlowSaves()
    s = store(storage)
    tracker = RetryTracker(s)
    outbox = Outbox(s, tracker)
    ring = s.key("sweep", "ring-a")
    writer = threading.Thread(target=outbox.track_job, args=("a-first",))
    writer.start()
    assert storage.saving.wait(2)  # the first request is writing shard "a"
    outbox.track_job("a-second")  # returns at once: its note waits for the next write
    outbox.track_job("a-third")
    assert storage.sets == 1
    storage.release.set()
    writer.join(2)
    entries = json.loads(storage.data[ring])["entries"]
    assert [e[1] for e in entries] == ["a-first"]  # a write never waits for a second one
    assert outbox_module._PENDING_NOTES.waiting(ring) == 2
    outbox.track_job("a-fourth")  # the shard's next write takes everything waiting
    entries = json.loads(storage.data[ring])["entries"]
    assert [e[1] for e in entries] == ["a-first", "a-second", "a-third", "a-fourth"]
    assert storage.sets == 2 and outbox_module._PENDING_NOTES.waiting(ring) == 0


def test_sweep_notes_of_a_failed_write_wait_for_the_next_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(outbox_module, "_PENDING_NOTES", outbox_module._PendingNotes())
    storage = MemoryStorage()
    s = store(storage)
    outbox = Outbox(s, RetryTracker(s))
    original = storage.set
    storage.set = lambda key, val: (_ for _ in ()).throw(RuntimeError("session ended"))  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        outbox.track_job("b-lost-write")
    storage.set = original  # type: ignore[method-assign]
    outbox.track_job("b-next")
    entries = json.loads(storage.data[s.key("sweep", "ring-b")])["entries"]
    assert {e[1] for e in entries} == {"b-lost-write", "b-next"}


class SlowSaves(MemoryStorage):
    """The first ``set`` waits until released (a write under way in another request)."""

    def __init__(self) -> None:
        super().__init__()
        self.saving = threading.Event()
        self.release = threading.Event()
        self.sets = 0

    def set(self, key: str, val: bytes) -> None:
        self.sets += 1
        if self.sets == 1:
            self.saving.set()
            self.release.wait(2)
        super().set(key, val)
