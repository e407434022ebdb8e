"""Push or fetch: the Router's choice and the Pusher's customer-service messages, with a
fake sender in place of the WeChat API."""

from __future__ import annotations

from typing import Any

import pytest

from endpoints.wechat import delivery, timing
from endpoints.wechat.api import (
    CredentialError,
    IPNotTrusted,
    IPNotWhitelisted,
    OutOfWindow,
    QuotaExceeded,
    TransportError,
    Unauthorized,
    UserUnavailable,
)
from endpoints.wechat.delivery import (
    PUSH_BLOCKED_SECONDS,
    PUSH_SETUP_BLOCKED_SECONDS,
    Pusher,
    Router,
)
from endpoints.wechat.outbox import Delivery, Outbox, Route
from endpoints.wechat.parts import PartKind, media_part
from endpoints.wechat.retry_tracker import RetryTracker
from endpoints.wechat.senders import TextSender
from endpoints.wechat.settings import Settings, load_settings
from endpoints.wechat.storage import EndpointStore
from endpoints.wechat.texts import MORE_HINT
from tests.fakes import FakeClock, MemoryStorage

PUSH_QUOTA = 5  # an Official Account's Settings.push_quota

APP_ID = "wx1234567890abcdef"
OPENID = "oUSER123"
JOB = "0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def fresh_block_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 48001 cache is process-wide: every test starts with an empty one."""
    monkeypatch.setattr(delivery, "_BLOCKED", delivery._BlockedCache())


def settings(**overrides: Any) -> Settings:
    raw: dict[str, Any] = {
        "app": {"app_id": "app-1", "inputs": {}},
        "wechat_token": "token123",
        "app_id": APP_ID,
        "app_secret": "appsecret",
    }
    raw.update(overrides)
    return load_settings(raw)


# --- the router -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "secret", "expected"),
    [
        ("auto", "appsecret", Route.PUSH),
        ("auto", "", Route.FETCH),
        ("push", "appsecret", Route.PUSH),
        ("push", "", Route.FETCH),
        ("fetch", "appsecret", Route.FETCH),
        ("fetch", "", Route.FETCH),
        ("", "appsecret", Route.PUSH),  # empty means auto
        ("bogus", "appsecret", Route.PUSH),  # a bad value falls back to auto
    ],
)
def test_route_by_mode_and_secret(mode: str, secret: str, expected: Route) -> None:
    s = settings(delivery_mode=mode, app_secret=secret)
    router = Router(s, EndpointStore(MemoryStorage(), "ep-1"), "ep-1", FakeClock())
    assert router.route() is expected


def test_push_needs_the_app_id_too() -> None:
    s = settings(delivery_mode="push", app_id="")
    assert Router(s, EndpointStore(MemoryStorage(), "ep-1"), "ep-1").route() is Route.FETCH


def test_fetch_mode_reads_nothing() -> None:
    storage = MemoryStorage()
    router = Router(settings(delivery_mode="fetch"), EndpointStore(storage, "ep-1"), "ep-1")
    router.route()
    assert storage.calls == []


def test_a_48001_keeps_auto_on_fetch_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    storage = MemoryStorage()
    clock = FakeClock()
    store = EndpointStore(storage, "ep-1")
    router = Router(settings(), store, "ep-1", clock)
    assert router.route() is Route.PUSH
    router.block_push()
    assert router.route() is Route.FETCH
    assert router.push_blocked()

    # another process (its own cache) reads the block from storage
    monkeypatch.setattr(delivery, "_BLOCKED", delivery._BlockedCache())
    assert Router(settings(), store, "ep-1", clock).route() is Route.FETCH

    clock.advance(PUSH_BLOCKED_SECONDS - 60)
    assert router.route() is Route.FETCH
    clock.advance(61)
    assert router.route() is Route.PUSH
    monkeypatch.setattr(delivery, "_BLOCKED", delivery._BlockedCache())
    assert Router(settings(), store, "ep-1", clock).route() is Route.PUSH


def test_explicit_push_mode_ignores_the_block() -> None:
    store = EndpointStore(MemoryStorage(), "ep-1")
    clock = FakeClock()
    Router(settings(), store, "ep-1", clock).block_push()
    assert Router(settings(delivery_mode="push"), store, "ep-1", clock).route() is Route.PUSH


def test_the_block_is_per_endpoint() -> None:
    storage = MemoryStorage()
    clock = FakeClock()
    Router(settings(), EndpointStore(storage, "ep-a"), "ep-a", clock).block_push()
    other = Router(settings(), EndpointStore(storage, "ep-b"), "ep-b", clock)
    assert other.route() is Route.PUSH


def test_the_stored_block_is_read_at_most_every_30_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = MemoryStorage()
    clock = FakeClock()
    store = EndpointStore(storage, "ep-1")
    here = Router(settings(), store, "ep-1", clock)
    assert here.route() is Route.PUSH
    reads = len(storage.calls)
    for _ in range(5):
        assert here.route() is Route.PUSH
    assert len(storage.calls) == reads  # cached
    # another process blocks; this one notices once its cache entry is old
    cache_here = delivery._BLOCKED
    monkeypatch.setattr(delivery, "_BLOCKED", delivery._BlockedCache())
    Router(settings(), store, "ep-1", clock).block_push()
    monkeypatch.setattr(delivery, "_BLOCKED", cache_here)
    clock.advance(29)
    assert here.route() is Route.PUSH
    clock.advance(2)
    assert here.route() is Route.FETCH


# --- the pusher -----------------------------------------------------------------------------


class FakeSender:
    """A TextSender that records what it sends and fails where told to."""

    def __init__(self, failures: dict[int, Exception] | None = None) -> None:
        self.sent: list[tuple[str, str]] = []
        self.attempts = 0
        self.typing: list[str] = []
        self.events: list[str] = []
        self.closed = False
        self._failures = failures or {}

    def send_text(self, openid: str, content: str) -> None:
        attempt = self.attempts
        self.attempts += 1
        self.events.append("send")
        if attempt in self._failures:
            raise self._failures[attempt]
        self.sent.append((openid, content))

    def send_media(self, openid: str, kind: PartKind, media_id: str) -> None:
        self.send_text(openid, f"<{kind.value}:{media_id}>")

    def start_typing(self, openid: str) -> None:
        self.typing.append(openid)

    def close(self) -> None:
        self.closed = True

    @property
    def texts(self) -> list[str]:
        return [content for _, content in self.sent]


class Setup:
    def __init__(self, sender: FakeSender | None = None, **overrides: Any) -> None:
        self.settings = settings(**overrides)
        self.storage = MemoryStorage()
        self.clock = FakeClock()
        self.store = EndpointStore(self.storage, "ep-1")
        self.outbox = Outbox(self.store, RetryTracker(self.store, self.clock), self.clock)
        self.router = Router(self.settings, self.store, "ep-1", self.clock)
        self.sender = sender or FakeSender()
        self.sleeps: list[float] = []
        sender_protocol: TextSender = self.sender
        self.pusher = Pusher(self.settings, self.outbox, self.router, sender_protocol, self.sleep)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.sender.events.append("sleep")

    def open(self, sent: int = 0) -> Delivery:
        return self.outbox.open(OPENID, JOB, Route.PUSH, sent=sent)

    def push(self, parts: list[str], sent: int = 0) -> Delivery:
        result = self.pusher.push(self.open(sent), parts, OPENID, "ref")
        assert self.outbox.get(JOB) == result  # what is returned is what is stored
        return result


def numbered(n: int) -> list[str]:
    return [f"part {i + 1}" for i in range(n)]


def test_all_parts_are_pushed_in_order_and_the_delivery_closes() -> None:
    s = Setup()
    parts = numbered(3)
    result = s.push(parts)
    assert s.sender.sent == [(OPENID, p) for p in parts]
    assert result.closed and result.sent == 3 and result.route is Route.PUSH
    assert not result.unannounced
    assert s.sleeps == []  # nothing went out passively before: no reason to wait


def test_after_a_passive_first_part_the_rest_waits_a_moment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(timing, "PUSH_ORDER_DELAY", 0.123)
    s = Setup()
    parts = numbered(3)
    result = s.push(parts, sent=1)
    assert s.sleeps == [0.123]
    assert s.sender.events[0] == "sleep"  # before the first push
    assert s.sender.texts == parts[1:]
    assert result.closed and result.sent == 3


def test_media_parts_go_out_as_media_messages_in_order() -> None:
    s = Setup()
    parts = ["text 1", media_part(PartKind.IMAGE, "img-1"), media_part(PartKind.VOICE, "v-1")]
    result = s.push(parts)
    assert s.sender.texts == ["text 1", "<image:img-1>", "<voice:v-1>"]
    assert result.closed and result.sent == 3


def test_the_more_hint_is_never_glued_to_a_media_part() -> None:
    s = Setup()
    parts = [*numbered(4), media_part(PartKind.IMAGE, "img-1"), "part 6"]
    result = s.push(parts)
    assert s.sender.texts[4] == "<image:img-1>"  # the fifth push: the quota ends here
    assert not result.closed and result.route is Route.FETCH


def test_nothing_left_to_push_just_closes() -> None:
    s = Setup()
    result = s.push(numbered(2), sent=2)
    assert result.closed and s.sender.attempts == 0 and s.sleeps == []


def test_no_more_than_the_quota_with_a_hint_on_the_last() -> None:
    s = Setup(fetch_keyword="更多")
    parts = numbered(PUSH_QUOTA + 3)
    result = s.push(parts)
    assert s.sender.attempts == PUSH_QUOTA
    hint = MORE_HINT.format(keyword="更多")
    assert "更多" in hint
    assert s.sender.texts[:-1] == parts[: PUSH_QUOTA - 1]
    assert s.sender.texts[-1] == parts[PUSH_QUOTA - 1] + hint
    assert result.route is Route.FETCH and result.sent == PUSH_QUOTA
    assert not result.closed and not result.unannounced  # the hint told the user


def test_the_quota_counts_pushes_not_the_passive_reply() -> None:
    s = Setup()
    parts = numbered(PUSH_QUOTA + 2)
    result = s.push(parts, sent=1)
    assert s.sender.texts[:-1] == parts[1:PUSH_QUOTA]
    assert s.sender.texts[-1] == parts[PUSH_QUOTA] + MORE_HINT.format(keyword="1")
    assert result.sent == PUSH_QUOTA + 1 and result.route is Route.FETCH


def test_exactly_the_quota_needs_no_hint() -> None:
    s = Setup()
    parts = numbered(PUSH_QUOTA)
    result = s.push(parts)
    assert s.sender.texts == parts
    assert result.closed and result.route is Route.PUSH


def test_48001_blocks_push_and_leaves_everything_to_fetch() -> None:
    s = Setup(FakeSender({0: Unauthorized(48001, "api unauthorized")}))
    assert s.router.route() is Route.PUSH
    result = s.push(numbered(3))
    assert s.sender.attempts == 1 and s.sender.sent == []
    assert result.route is Route.FETCH and result.sent == 0
    assert result.unannounced and not result.closed
    assert s.router.route() is Route.FETCH
    assert s.store.load("state", "push-blocked") is not None


@pytest.mark.parametrize(
    "error",
    [
        QuotaExceeded(45047, "out of response count limit"),
        OutOfWindow(45015, "response out of time limit"),
        UserUnavailable(43004, "require subscribe"),
        TransportError("POST api.weixin.qq.com/cgi-bin/message/custom/send: timed out"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_failure_mid_answer_counts_what_went_out(error: Exception) -> None:
    s = Setup(FakeSender({2: error}))
    parts = numbered(5)
    result = s.push(parts)
    assert s.sender.texts == parts[:2]
    assert s.sender.attempts == 3  # no retry of the failed part, no later part
    assert result.route is Route.FETCH and result.sent == 2
    assert result.unannounced and not result.closed
    assert s.router.route() is Route.PUSH  # only 48001 blocks the account


@pytest.mark.parametrize(
    "error",
    [
        IPNotWhitelisted(40164, "invalid ip 203.0.113.7, not in whitelist"),
        IPNotTrusted(60020, "not allow to access from your ip, from ip: 203.0.113.7"),
        CredentialError(40056, "invalid agentid"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_setup_error_keeps_auto_on_fetch_until_the_admin_had_time_to_fix_it(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    monkeypatch.setattr(delivery, "_BLOCKED", delivery._BlockedCache())
    s = Setup(FakeSender({0: error}))
    result = s.push(numbered(2))
    assert result.route is Route.FETCH and result.sent == 0
    assert s.router.route() is Route.FETCH  # the next late answer is not promised a push
    s.clock.advance(PUSH_SETUP_BLOCKED_SECONDS + 1)
    monkeypatch.setattr(delivery, "_BLOCKED", delivery._BlockedCache())
    assert s.router.route() is Route.PUSH  # and pushing resumes after the fix


def test_a_failure_after_a_passive_part_counts_it_too() -> None:
    s = Setup(FakeSender({1: TransportError("reset")}))
    parts = numbered(4)
    result = s.push(parts, sent=1)
    assert s.sender.texts == parts[1:2]
    assert result.sent == 2 and result.route is Route.FETCH and result.unannounced


def test_no_part_is_ever_sent_twice() -> None:
    sender = FakeSender({2: TransportError("timed out"), 6: QuotaExceeded(45047, "limit")})
    s = Setup(sender)
    parts = numbered(12)
    s.push(parts)
    # whoever carries on starts from the stored count, never from the start
    for _ in range(4):
        current = s.outbox.get(JOB)
        assert current is not None
        if current.closed:
            break
        s.pusher.push(current, parts, OPENID, "ref")
    pushed = [t.removesuffix(MORE_HINT.format(keyword="1")) for t in sender.texts]
    assert len(pushed) == len(set(pushed))
    assert pushed == parts
    final = s.outbox.get(JOB)
    assert final is not None and final.closed and final.sent == len(parts)


def test_typing_is_a_nicety() -> None:
    class NoTyping(FakeSender):
        def start_typing(self, openid: str) -> None:
            raise Unauthorized(48001, "api unauthorized")

    s = Setup(NoTyping())
    s.pusher.start_typing(OPENID)  # does not raise
    ok = Setup()
    ok.pusher.start_typing(OPENID)
    assert ok.sender.typing == [OPENID]
