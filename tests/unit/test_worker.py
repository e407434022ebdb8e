"""The worker request: the ticket check (before any side effect) and Worker.run with a
scripted app, a fake clock and sleep, and a fake customer-service sender."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from endpoints.wechat import delivery, timing
from endpoints.wechat.conversations import ConversationStore
from endpoints.wechat.delivery import Router
from endpoints.wechat.dify_app import DifyApp
from endpoints.wechat.intake import Runtime, handle_post
from endpoints.wechat.outbox import Outbox, Route
from endpoints.wechat.parts import PartKind
from endpoints.wechat.retry_tracker import Job, JobState, LocalSignals, RetryTracker
from endpoints.wechat.senders import TextSender
from endpoints.wechat.settings import load_settings
from endpoints.wechat.storage import EndpointStore, hashed
from endpoints.wechat.worker import Worker, WorkerContext, WorkerRefusal, check_ticket
from endpoints.wechat.worker_link import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WorkerCall,
    WorkTicket,
    _take_line,
    sign,
    worker_key,
)
from tests import samples
from tests.fakes import FakeClock, MemoryStorage, ScriptedCaller, chat_chunks
from tests.signing import WeChatSigner

TOKEN = "token123"
APP_ID = "wx1234567890abcdef"
OPENID = "oUSER123"
ENDPOINT = "ep-1"
KEY = hashed("msg-1")
LONG_ANSWER = "\n\n".join(f"第{i}段" + "段落" * 300 for i in range(3))


@pytest.fixture(autouse=True)
def short_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timing, "HEARTBEAT", 0.002)  # also the run loop's wait (real s)
    monkeypatch.setattr(timing, "RETRY_GAP", 5.0)
    monkeypatch.setattr(timing, "LEASE", 30.0)
    monkeypatch.setattr(timing, "WINDOW_CLOSED_AFTER", 16.0)
    monkeypatch.setattr(timing, "DELIVERY_POLL", 0.5)
    monkeypatch.setattr(timing, "PUSH_ORDER_DELAY", 0.25)
    monkeypatch.setattr(timing, "LAST_DELIVERY_AFTER", 7.5)
    monkeypatch.setattr(timing, "DELIVERY_DEADLINE", 4.4)
    monkeypatch.setattr(timing, "WORKER_SIGNATURE_TTL", 60.0)
    monkeypatch.setattr(delivery, "_BLOCKED", delivery._BlockedCache())


class TickingClock(FakeClock):
    """A fake clock that can move by ``tick`` on every reading, and run a callback once it
    passes a given offset from the start (a delivery acting meanwhile)."""

    def __init__(self) -> None:
        super().__init__()
        self.start = self.now
        self.tick = 0.0
        self._events: list[tuple[float, Callable[[], object]]] = []
        self._acting = False

    def at(self, offset: float, action: Callable[[], object]) -> None:
        self._events.append((self.start + offset, action))

    def __call__(self) -> float:
        if self._acting:  # readings by the callback itself do not move the clock
            return self.now
        self.now += self.tick
        due = [e for e in self._events if e[0] <= self.now]
        self._events = [e for e in self._events if e[0] > self.now]
        self._acting = True
        try:
            for _, action in due:
                action()
        finally:
            self._acting = False
        return self.now


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.typing: list[str] = []
        self.closed = False

    def send_text(self, openid: str, content: str) -> None:
        self.sent.append((openid, content))

    def send_media(self, openid: str, kind: PartKind, media_id: str) -> None:
        self.sent.append((openid, f"<{kind.value}:{media_id}>"))

    def start_typing(self, openid: str) -> None:
        self.typing.append(openid)

    def close(self) -> None:
        self.closed = True


class Harness:
    def __init__(self, caller: ScriptedCaller | None = None, **overrides: Any) -> None:
        raw: dict[str, Any] = {
            "app": {"app_id": "app-1", "inputs": {}},
            "wechat_token": TOKEN,
            "app_id": APP_ID,
            "app_secret": "appsecret",
        }
        raw.update(overrides)
        self.settings = load_settings(raw)
        self.storage = MemoryStorage()
        self.clock = TickingClock()
        self.store = EndpointStore(self.storage, ENDPOINT)
        self.signals = LocalSignals()
        self.tracker = RetryTracker(self.store, self.clock, signals=self.signals)
        self.outbox = Outbox(self.store, self.tracker, self.clock)
        self.caller = caller or ScriptedCaller()
        self.conversations = ConversationStore(self.store, self.clock)
        self.app = DifyApp(self.caller, "app-1", {}, self.conversations)
        self.senders: list[FakeSender] = []
        self.sleeps: list[float] = []
        self.on_sleep: list[Callable[[], object]] = []  # run at the n-th sleep
        self.ctx = WorkerContext(
            settings=self.settings,
            endpoint_id=ENDPOINT,
            store=self.store,
            tracker=self.tracker,
            outbox=self.outbox,
            app=self.app,
            router=Router(self.settings, self.store, ENDPOINT, self.clock),
            clock=self.clock,
            sleep=self.sleep,
            sender_factory=self.new_sender,
        )

    def new_sender(self) -> TextSender:
        sender = FakeSender()
        self.senders.append(sender)
        return sender

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.clock.advance(seconds)
        if self.on_sleep:
            self.on_sleep.pop(0)()

    @property
    def pushed(self) -> list[str]:
        return [text for s in self.senders for _, text in s.sent]

    def claim(self) -> tuple[WorkTicket, Job]:
        job, mine = self.tracker.claim(KEY, hashed(OPENID), lease_until=self.clock() + 8)
        assert mine
        ticket = WorkTicket(
            job=KEY,
            owner=job.owner,
            openid=OPENID,
            query="q",
            inputs={"wechat_msg_type": "text"},
            arrived_at=self.clock(),
            ref="ref-1",
        )
        return ticket, job

    def headers(
        self, body: bytes, at: float | None = None, endpoint: str = ENDPOINT
    ) -> dict[str, str]:
        timestamp = str(int(self.clock() if at is None else at))
        key = worker_key(self.settings, endpoint)
        return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(key, timestamp, body)}

    def check(
        self, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[WorkTicket, Job] | WorkerRefusal:
        return check_ticket(self.headers(body) if headers is None else headers, body, self.ctx)

    def run(self, ticket: WorkTicket, job: Job) -> list[str]:
        return list(Worker(self.ctx, ticket, job).run())


def done_job(lines: list[str]) -> Job:
    [line] = [x for x in lines if x.startswith("done ")]
    assert line.endswith("\n") and line.count("\n") == 1
    job = Job.from_record(json.loads(line[5:]))
    assert job is not None
    return job


# --- check_ticket ----------------------------------------------------------------------------


def test_a_good_ticket_passes() -> None:
    h = Harness()
    ticket, job = h.claim()
    body = ticket.to_bytes()
    lower = {k.lower(): v for k, v in h.headers(body).items()}
    checked = h.check(body, lower)
    assert checked == (ticket, job)


def refusal_cases(h: Harness) -> list[tuple[str, bytes, dict[str, str], int]]:
    ticket, _ = h.claim()
    body = ticket.to_bytes()
    now = h.clock()
    missing = replace(ticket, job=hashed("msg-2"))
    not_mine = replace(ticket, owner="someone-else")
    return [
        ("no headers", body, {}, 403),
        ("no signature", body, {TIMESTAMP_HEADER: str(int(now))}, 403),
        ("bad signature", body, {**h.headers(body), SIGNATURE_HEADER: "0" * 64}, 403),
        ("other endpoint's key", body, h.headers(body, endpoint="ep-2"), 403),
        ("tampered body", body.replace(b'"q"', b'"p"'), h.headers(body), 403),
        ("stale", body, h.headers(body, at=now - 61), 403),
        ("future", body, h.headers(body, at=now + 61), 403),
        ("non-numeric timestamp", body, {**h.headers(body), TIMESTAMP_HEADER: "now"}, 403),
        ("malformed", b"{}", h.headers(b"{}"), 400),
        ("not json", b"x", h.headers(b"x"), 400),
        ("no such job", missing.to_bytes(), h.headers(missing.to_bytes()), 409),
        ("another claim", not_mine.to_bytes(), h.headers(not_mine.to_bytes()), 409),
    ]


def test_refusals_have_no_side_effects() -> None:
    h = Harness()
    cases = refusal_cases(h)
    writes = list(h.storage.writes)
    for name, body, headers, status in cases:
        result = h.check(body, headers)
        assert isinstance(result, WorkerRefusal), name
        assert result.status == status, name
        assert h.storage.writes == writes, name
        assert h.caller.calls == [], name


def test_without_a_token_nothing_is_accepted() -> None:
    h = Harness(wechat_token="")
    ticket, _ = h.claim()
    writes = list(h.storage.writes)
    result = h.check(ticket.to_bytes())
    assert isinstance(result, WorkerRefusal) and result.status == 403
    assert h.storage.writes == writes


@pytest.mark.parametrize("state", [JobState.DONE, JobState.FAILED])
def test_a_settled_job_is_refused(state: JobState) -> None:
    h = Harness()
    ticket, job = h.claim()
    h.tracker.settle(job, state, ["answer"])
    writes = list(h.storage.writes)
    result = h.check(ticket.to_bytes())
    assert isinstance(result, WorkerRefusal) and result.status == 409
    assert h.storage.writes == writes


def test_a_job_already_taken_by_a_worker_is_refused() -> None:
    h = Harness()
    ticket, job = h.claim()
    h.tracker.store(replace(job, worker=True))
    writes = list(h.storage.writes)
    result = h.check(ticket.to_bytes())
    assert isinstance(result, WorkerRefusal) and result.status == 409
    assert h.storage.writes == writes


def test_the_same_ticket_is_refused_once_the_worker_ran() -> None:
    h = Harness()
    ticket, _ = h.claim()
    checked = h.check(ticket.to_bytes())
    assert not isinstance(checked, WorkerRefusal)
    h.run(*checked)
    writes = list(h.storage.writes)
    replayed = h.check(ticket.to_bytes())
    assert isinstance(replayed, WorkerRefusal) and replayed.status == 409
    assert h.storage.writes == writes and len(h.caller.calls) == 1


# --- Worker.run ------------------------------------------------------------------------------


def test_started_comes_first_and_before_the_app_is_asked() -> None:
    h = Harness()
    ticket, job = h.claim()
    lines = Worker(h.ctx, ticket, job).run()
    assert next(lines) == "started\n"
    taken = h.tracker.get(KEY)
    assert taken is not None and taken.worker and taken.state is JobState.RUNNING
    assert taken.lease_until == h.clock() + timing.LEASE
    assert h.caller.calls == []
    rest = list(lines)
    assert rest[-1] == "end\n"
    assert len(h.caller.calls) == 1


def test_a_quick_answer_is_settled_and_stored() -> None:
    h = Harness()
    ticket, job = h.claim()
    slot = h.signals.watch(KEY)
    lines = h.run(ticket, job)
    assert lines[0] == "started\n" and lines[-1] == "end\n"
    assert [x for x in lines if x.strip() == ""] == []  # no heartbeat: the clock stood still
    settled = done_job(lines)
    assert settled.state is JobState.DONE and settled.parts == ["echo: q"]
    assert settled.worker and settled.owner == job.owner
    assert h.tracker.get(KEY) == settled
    assert slot.job == settled  # handed over in this process too
    assert h.conversations.get(OPENID) == "conv-1"
    call = h.caller.calls[0]
    assert call["query"] == "q" and call["user"] == OPENID
    assert call["inputs"]["wechat_msg_type"] == "text"


def test_the_done_line_reads_back_through_the_link() -> None:
    h = Harness(caller=ScriptedCaller(lambda c: chat_chunks(LONG_ANSWER)))
    ticket, job = h.claim()
    lines = h.run(ticket, job)
    settled = done_job(lines)
    assert len(settled.parts) > 1
    signals = LocalSignals()
    slot = signals.watch(KEY)
    call = WorkerCall()
    for line in "".join(lines).encode().split(b"\n"):
        if _take_line(line.strip(), call, signals):
            break
    assert call.started and slot.job == settled


def test_a_failing_app_settles_failed_with_the_friendly_text() -> None:
    caller = ScriptedCaller(lambda c: [{"event": "error", "message": "quota exceeded"}])
    h = Harness(caller=caller, error_message="出错啦")
    ticket, job = h.claim()
    settled = done_job(h.run(ticket, job))
    assert settled.state is JobState.FAILED and settled.parts == ["出错啦"]
    assert h.tracker.get(KEY) == settled
    assert h.conversations.get(OPENID) is None


def slow_app(clock: FakeClock, seconds: float) -> ScriptedCaller:
    """An echo app that answers ``seconds`` after it was asked (on the fake clock)."""

    def respond(call: dict[str, Any]) -> list[dict[str, Any]]:
        clock.advance(seconds)
        return chat_chunks(f"echo: {call['query']}")

    return ScriptedCaller(respond)


def test_a_handed_off_answer_is_pushed() -> None:
    h = Harness()
    h.app._caller = slow_app(h.clock, 14.6)  # answers after the last delivery's deadline
    ticket, job = h.claim()
    h.outbox.open(OPENID, KEY, Route.PUSH, sent=0)  # the last delivery handed off
    h.run(ticket, job)
    assert h.pushed == ["echo: q"]
    assert all(s.closed for s in h.senders)
    final = h.outbox.get(KEY)
    assert final is not None and final.closed and final.sent == 1
    assert h.sleeps == []  # found at once: no waiting for the window


def test_a_long_handed_off_answer_is_pushed_whole() -> None:
    h = Harness(caller=ScriptedCaller(lambda c: chat_chunks(LONG_ANSWER)))
    ticket, job = h.claim()
    h.outbox.open(OPENID, KEY, Route.PUSH, sent=0)
    settled = done_job(h.run(ticket, job))
    assert 1 < len(settled.parts) <= 5
    assert h.pushed == settled.parts
    final = h.outbox.get(KEY)
    assert final is not None and final.closed


def test_the_rest_follows_a_passive_first_part() -> None:
    h = Harness(caller=ScriptedCaller(lambda c: chat_chunks(LONG_ANSWER)))
    ticket, job = h.claim()
    # a delivery replies with the first part while the worker polls
    h.on_sleep = [lambda: None, lambda: h.outbox.open(OPENID, KEY, Route.PUSH, sent=1)]
    settled = done_job(h.run(ticket, job))
    assert h.pushed == settled.parts[1:]
    assert h.sleeps[:2] == [timing.DELIVERY_POLL, timing.DELIVERY_POLL]
    assert h.sleeps[2:] == [timing.PUSH_ORDER_DELAY]  # then the pushes, in order
    final = h.outbox.get(KEY)
    assert final is not None and final.closed and final.sent == len(settled.parts)


def test_a_fetch_delivery_is_left_to_the_keyword() -> None:
    h = Harness(caller=ScriptedCaller(lambda c: chat_chunks(LONG_ANSWER)))
    ticket, job = h.claim()
    h.outbox.open(OPENID, KEY, Route.FETCH, sent=1)
    h.run(ticket, job)
    assert h.senders == []
    final = h.outbox.get(KEY)
    assert final is not None and final.sent == 1 and not final.closed


def test_a_passive_single_part_answer_pushes_nothing() -> None:
    h = Harness()
    ticket, job = h.claim()
    lines = h.run(ticket, job)
    assert lines[-1] == "end\n"
    assert h.senders == []
    # it waited for the window to close (read at call time), in one sleep
    assert h.sleeps == [16.0]
    assert h.outbox.get(KEY) is None


def test_a_long_answer_without_a_delivery_record_polls_until_the_window_closes() -> None:
    h = Harness(caller=ScriptedCaller(lambda c: chat_chunks(LONG_ANSWER)))
    ticket, job = h.claim()
    h.run(ticket, job)
    assert h.senders == []
    assert all(s <= timing.DELIVERY_POLL for s in h.sleeps)
    assert sum(h.sleeps) == pytest.approx(16.0)
    assert len(h.sleeps) == 32


def test_a_late_answer_after_the_window_is_not_waited_for() -> None:
    def slow(call: dict[str, Any]) -> list[dict[str, Any]]:
        h.clock.advance(100)  # the app took longer than WeChat's deliveries
        return chat_chunks("late")

    h = Harness(caller=ScriptedCaller(slow))
    ticket, job = h.claim()
    h.run(ticket, job)
    assert h.sleeps == [] and h.senders == []


class SlowApp:
    """An app that keeps the worker busy until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def __call__(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        assert self.release.wait(5)
        return chat_chunks("finally")


def slow_run(h: Harness, until: float) -> tuple[Iterator[str], SlowApp, list[str]]:
    """Start a worker whose app waits, and read its keep-alive lines while the clock moves
    half a second per look until ``until`` seconds after the claim."""
    app = SlowApp()
    h.caller = ScriptedCaller(app)
    h.app = DifyApp(h.caller, "app-1", {}, h.conversations)
    h.ctx.app = h.app
    ticket, job = h.claim()
    lines = Worker(h.ctx, ticket, job).run()
    assert next(lines) == "started\n"
    h.clock.tick = 0.5
    seen: list[str] = []
    while h.clock.now < job.created_at + until and len(seen) < 1000:
        seen.append(next(lines))
    return lines, app, seen


def finish(h: Harness, lines: Iterator[str], app: SlowApp) -> list[str]:
    h.clock.tick = 0.0
    app.release.set()
    return list(lines)


def test_heartbeat_renews_the_lease() -> None:
    h = Harness()
    lines, app, seen = slow_run(h, until=3.0)
    try:
        assert seen and all(line == "\n" for line in seen)  # keep-alives only
        renewed = h.tracker.get(KEY)
        assert renewed is not None and renewed.state is JobState.RUNNING and renewed.worker
        # renewed at the last beat (the clock moves half a second on every reading)
        assert h.clock.now - 0.5 <= renewed.lease_until - timing.LEASE <= h.clock.now
    finally:
        rest = finish(h, lines, app)
    assert rest[-1] == "end\n" and done_job(rest).parts == ["finally"]


def test_typing_shows_once_after_a_push_hand_off() -> None:
    h = Harness()

    def hand_off() -> None:
        h.outbox.open(OPENID, KEY, Route.PUSH, sent=0)

    h.clock.at(14.5, hand_off)  # the last delivery hands off at its deadline
    lines, app, _ = slow_run(h, until=20.0)
    try:
        assert [s.typing for s in h.senders] == [[OPENID]]
        assert h.senders[0].closed and h.senders[0].sent == []
    finally:
        rest = finish(h, lines, app)
    assert rest[-1] == "end\n"
    assert h.pushed == ["finally"]
    assert sum(len(s.typing) for s in h.senders) == 1


@pytest.mark.parametrize("route", [None, Route.FETCH])
def test_no_typing_without_a_push_hand_off(route: Route | None) -> None:
    h = Harness()
    if route is not None:
        h.clock.at(14.5, lambda: h.outbox.open(OPENID, KEY, route, sent=0))
    lines, app, _ = slow_run(h, until=20.0)
    finish(h, lines, app)
    assert all(s.typing == [] for s in h.senders)


def test_a_storage_failure_while_delivering_still_ends_the_stream() -> None:
    h = Harness()
    ticket, job = h.claim()
    original_get = h.storage.get

    def failing_get(key: str) -> bytes:
        if "/delivery/" in key:
            raise RuntimeError("storage down")
        return original_get(key)

    h.storage.get = failing_get  # type: ignore[method-assign]
    h.storage.exist = lambda key: True  # type: ignore[method-assign]
    lines = h.run(ticket, job)
    assert lines[-1] == "end\n"
    assert done_job(lines).state is JobState.DONE


# --- an answer given up for lost (DESIGN §4.4: every answer arrives, once) --------------------


def test_an_answer_given_up_while_the_worker_was_late_is_pushed_after_all() -> None:
    # Under load the worker took the claim over only after its lease had run out, and a
    # delivery meanwhile told the user the answer was lost (a closed, empty record).
    h = Harness()
    ticket, job = h.claim()
    h.clock.advance(8.5)  # the takeover comes after the claim's 8 s
    h.outbox.give_up(job, Route.PUSH)
    h.run(ticket, job)
    assert h.pushed == ["echo: q"]  # once
    final = h.outbox.get(KEY)
    assert final is not None and final.closed and final.sent == 1
    assert h.sleeps == []  # the worker knew its lease had lapsed: it looked at once


def test_an_answer_given_up_for_lost_is_found_when_the_window_closes() -> None:
    # The worker could not know (clocks differ): it finds the record at its one look.
    h = Harness()
    ticket, job = h.claim()
    h.on_sleep = [lambda: h.outbox.give_up(job, Route.PUSH)]
    h.run(ticket, job)
    assert h.sleeps == [16.0]
    assert h.pushed == ["echo: q"]


def test_an_answer_given_up_for_lost_waits_for_the_keyword_where_it_cannot_be_pushed() -> None:
    h = Harness(delivery_mode="fetch")
    ticket, job = h.claim()
    h.clock.advance(8.5)
    h.outbox.give_up(job, Route.FETCH)
    settled = done_job(h.run(ticket, job))
    assert h.senders == []
    [waiting] = h.outbox.pending(OPENID)
    assert waiting.job == KEY and waiting.route is Route.FETCH and waiting.sent == 0
    assert waiting.unannounced  # the user was told it was lost: the next answer says it waits
    assert h.tracker.get(KEY) == settled  # the parts wait in the job record


def test_a_finished_delivery_is_not_taken_for_a_given_up_one() -> None:
    h = Harness()
    ticket, job = h.claim()
    delivered = h.outbox.open(OPENID, KEY, Route.PUSH, sent=0)
    h.outbox.advance(delivered, 1, total=1)  # closed with everything sent
    h.run(ticket, job)
    assert h.senders == []


def test_the_worker_looks_for_a_delivery_record_once_for_a_passive_answer() -> None:
    h = Harness()
    ops: list[str] = []
    exist, get = h.storage.exist, h.storage.get

    def counted_exist(key: str) -> bool:
        ops.append("exist " + key.split("/")[2])
        return exist(key)

    def counted_get(key: str) -> bytes:
        ops.append("get " + key.split("/")[2])
        return get(key)

    h.storage.exist = counted_exist  # type: ignore[method-assign]
    h.storage.get = counted_get  # type: ignore[method-assign]
    ticket, job = h.claim()
    ops.clear()
    h.run(ticket, job)
    assert [op for op in ops if op.endswith("delivery")] == ["exist delivery"]


def test_a_delivery_that_gives_an_inline_answer_up_records_it() -> None:
    """The coordinator's side: the delivery that finds the job lost (and tells the user)
    leaves the closed record a late worker would deliver the answer by."""
    settings = load_settings(
        {"app": {"app_id": "app-1", "inputs": {}}, "wechat_token": TOKEN, "app_id": APP_ID}
    )
    storage = MemoryStorage()
    signer = WeChatSigner(TOKEN, APP_ID, "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG")
    runtime = Runtime(storage, ENDPOINT, ScriptedCaller(delay=0.5), use_worker=False)
    xml = samples.text("slow", msg_id=4242)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(timing, "DELIVERY_DEADLINE", 0.2)
        mp.setattr(timing, "STORE_GUARD", 0.3)
        mp.setattr(timing, "POLL_INTERVAL", 0.05)
        first = handle_post(signer.post(xml), settings, runtime)
        assert first.hold_until is not None  # not ready: WeChat delivers again
        time.sleep(0.35)  # the inline work's lease (STORE_GUARD) has run out
        second = handle_post(signer.post(xml), settings, runtime)
    reply = signer.read_reply(second.body, encrypted=False)["Content"]
    assert reply == settings.timeout_message
    store = EndpointStore(storage, ENDPOINT)
    outbox = Outbox(store, RetryTracker(store))
    key = RetryTracker.job_key("m:4242")
    given = outbox.get(key)
    assert given is not None and Outbox.given_up(given, parts=1)
