"""The WeChat API client (endpoints/wechat/api) against the loopback fake and a mock transport."""

from __future__ import annotations

import socket
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from endpoints.wechat import api
from endpoints.wechat.api import (
    AccessTokenCache,
    AccessTokenInvalid,
    ContentTooLong,
    CredentialError,
    IPNotWhitelisted,
    OutOfWindow,
    QuotaExceeded,
    RateLimited,
    TransportError,
    Unauthorized,
    UserUnavailable,
    WeChatAPIError,
    WeChatClient,
    WeChatError,
    error_for,
)
from endpoints.wechat.storage import EndpointStore
from tests.fake_wechat_api import (
    CUSTOM_SEND,
    MEDIA_GET,
    STABLE_TOKEN,
    TOKEN,
    FakeWeChatAPI,
)
from tests.fakes import FakeClock, MemoryStorage

OPENID = "oUser-0001"
TIMEOUT = 2.0  # every client call in this module is bounded by this


@pytest.fixture
def wechat() -> Iterator[FakeWeChatAPI]:
    with FakeWeChatAPI() as fake:
        yield fake


@pytest.fixture
def store() -> EndpointStore:
    return EndpointStore(MemoryStorage(), "ep-1")


def client_for(
    fake: FakeWeChatAPI,
    store: EndpointStore,
    *,
    secret: str | None = None,
    clock: Callable[[], float] = time.time,
    timeout: float = TIMEOUT,
) -> WeChatClient:
    return WeChatClient(
        fake.base_url,
        fake.app_id,
        fake.app_secret if secret is None else secret,
        store,
        clock=clock,
        timeout=timeout,
    )


def assert_clean(error: BaseException, *secret_values: str) -> None:
    """Nothing secret and no query string in the error, its hint or its printed traceback."""
    texts = [str(error), repr(error), getattr(error, "errmsg", ""), getattr(error, "hint", "")]
    for text in texts:
        assert "access_token=" not in text
        assert "secret=" not in text
    # The printed traceback shows source lines too, so only the values are checked there.
    texts.append("".join(traceback.format_exception(error)))
    for text in texts:
        for value in secret_values:
            assert value not in text
    assert "?" not in str(error)
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


# -- mock transport --------------------------------------------------------------------------


@dataclass
class MockResponse:
    status_code: int = 200
    content: bytes = b'{"errcode":0,"errmsg":"ok"}'
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Sent:
    method: str
    url: str
    params: dict[str, str]
    data: bytes | None
    timeout: tuple[float, float] | None
    allow_redirects: bool


class MockTransport:
    """A ``Transport`` answering through ``handler``; a raised exception is re-raised."""

    def __init__(self, handler: Callable[[Sent], MockResponse]) -> None:
        self.handler = handler
        self.sent: list[Sent] = []

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Any = None,
        data: bytes | None = None,
        headers: Any = None,
        files: Any = None,
        timeout: tuple[float, float] | None = None,
        allow_redirects: bool = True,
    ) -> MockResponse:
        sent = Sent(method, url, dict(params or {}), data, timeout, allow_redirects)
        self.sent.append(sent)
        return self.handler(sent)


MOCK_SECRET = "mock-app-secret-0123456789abcdef"
MOCK_TOKEN = "MOCK-ACCESS-TOKEN-" + "x" * 40


def token_or(answer: Callable[[Sent], MockResponse]) -> Callable[[Sent], MockResponse]:
    def handler(sent: Sent) -> MockResponse:
        if sent.url.endswith(STABLE_TOKEN):
            body = b'{"access_token":"' + MOCK_TOKEN.encode() + b'","expires_in":7200}'
            return MockResponse(content=body)
        return answer(sent)

    return handler


def mock_client(transport: MockTransport, *, timeout: float = TIMEOUT) -> WeChatClient:
    return WeChatClient(
        "https://api.weixin.qq.com",
        "wx0123456789abcdef",
        MOCK_SECRET,
        EndpointStore(MemoryStorage(), "ep-m"),
        transport=transport,
        timeout=timeout,
    )


# -- access token ----------------------------------------------------------------------------


def test_token_fetched_once_and_shared_between_two_clients(
    wechat: FakeWeChatAPI, store: EndpointStore
) -> None:
    first, second = client_for(wechat, store), client_for(wechat, store)
    first.custom_message.send_text(OPENID, "one")
    second.custom_message.send_text(OPENID, "two")
    first.typing.start(OPENID)

    assert wechat.token_fetches == 1
    assert wechat.count(TOKEN) == 0  # never the classic endpoint: it invalidates others' tokens
    assert {c.token for c in wechat.calls() if c.path != STABLE_TOKEN} == {wechat.current_token}
    assert wechat.texts(OPENID) == ["one", "two"]
    fetch = wechat.calls(STABLE_TOKEN)[0]
    assert fetch.method == "POST"
    assert fetch.json == {
        "grant_type": "client_credential",
        "appid": wechat.app_id,
        "secret": wechat.app_secret,
        "force_refresh": False,
    }


def test_token_record_is_keyed_by_a_hash_and_holds_no_secret(wechat: FakeWeChatAPI) -> None:
    storage = MemoryStorage()
    client_for(wechat, EndpointStore(storage, "ep-1")).custom_message.send_text(OPENID, "x")
    [(key, value)] = storage.data.items()
    assert key.startswith("wx/ep-1/token/")
    assert wechat.app_id not in key
    assert wechat.app_secret.encode() not in value
    assert wechat.current_token is not None and wechat.current_token.encode() in value


def test_token_refreshed_ahead_of_expiry(store: EndpointStore) -> None:
    clock = FakeClock()
    with FakeWeChatAPI(clock=clock) as wechat:
        client = client_for(wechat, store, clock=clock)
        client.custom_message.send_text(OPENID, "a")
        first = wechat.current_token
        clock.advance(7200 - 301)  # 301 s left: still cached
        client.custom_message.send_text(OPENID, "b")
        assert wechat.token_fetches == 1
        clock.advance(2)  # 299 s left: refresh ahead (WeChat renews in its last 5 min too)
        client.custom_message.send_text(OPENID, "c")
        assert wechat.token_fetches == 2
        assert wechat.current_token != first
        assert [c.token for c in wechat.calls(CUSTOM_SEND)] == [first, first, wechat.current_token]
        assert wechat.texts(OPENID) == ["a", "b", "c"]


def test_failed_refresh_falls_back_to_the_still_valid_token(store: EndpointStore) -> None:
    clock = FakeClock()
    with FakeWeChatAPI(clock=clock) as wechat:
        client = client_for(wechat, store, clock=clock)
        client.custom_message.send_text(OPENID, "a")
        clock.advance(7200 - 100)
        wechat.fail(-1, path=STABLE_TOKEN)
        client.custom_message.send_text(OPENID, "b")
        assert wechat.token_fetches == 2
        assert wechat.texts(OPENID) == ["a", "b"]


@pytest.mark.parametrize("expire", ["expire_token", "revoke_token"])
def test_rejected_token_is_invalidated_refreshed_and_retried_once(
    wechat: FakeWeChatAPI, store: EndpointStore, expire: str
) -> None:
    client = client_for(wechat, store)
    client.custom_message.send_text(OPENID, "first")
    old = wechat.current_token
    getattr(wechat, expire)()  # next call with it → 42001 / 40001
    client.custom_message.send_text(OPENID, "second")

    assert wechat.token_fetches == 2
    sends = wechat.calls(CUSTOM_SEND)
    assert [c.token for c in sends] == [old, old, wechat.current_token]
    assert wechat.current_token != old
    assert wechat.texts(OPENID) == ["first", "second"]  # the user saw each once


@pytest.mark.parametrize("code", [40001, 40014, 42001])
def test_token_rejected_twice_raises_after_exactly_one_retry(
    wechat: FakeWeChatAPI, store: EndpointStore, code: int
) -> None:
    wechat.fail(code, times=2, path=CUSTOM_SEND)
    client = client_for(wechat, store)
    with pytest.raises(AccessTokenInvalid) as caught:
        client.custom_message.send_text(OPENID, "never")
    assert caught.value.errcode == code
    assert wechat.count(CUSTOM_SEND) == 2
    assert wechat.token_fetches == 2
    assert wechat.texts(OPENID) == []
    assert_clean(caught.value, wechat.app_secret, wechat.current_token or "")


def test_stale_process_does_not_invalidate_the_fresh_token(
    wechat: FakeWeChatAPI, store: EndpointStore
) -> None:
    process_a, process_b = client_for(wechat, store), client_for(wechat, store)
    process_a.custom_message.send_text(OPENID, "a1")
    wechat.revoke_token()
    process_b.custom_message.send_text(OPENID, "b1")  # 40001 → refresh → new token stored
    fresh = wechat.current_token
    process_a.custom_message.send_text(OPENID, "a2")  # A's copy is stale: 40001 → reload
    assert wechat.token_fetches == 2  # A picked up B's token from storage, no third fetch
    assert wechat.calls(CUSTOM_SEND)[-1].token == fresh
    assert wechat.texts(OPENID) == ["a1", "b1", "a2"]


def test_invalidate_only_clears_the_token_that_failed(store: EndpointStore) -> None:
    issued = iter(["token-1", "token-2", "token-3"])
    fetches: list[str] = []

    def fetch() -> tuple[str, int]:
        fetches.append(next(issued))
        return fetches[-1], 7200

    clock = FakeClock()
    one = AccessTokenCache(store, fetch, clock, app_id="wxapp")
    two = AccessTokenCache(store, fetch, clock, app_id="wxapp")
    assert one.get() == "token-1"
    assert two.get() == "token-1"
    two.invalidate("token-1")
    assert two.get() == "token-2"
    one.invalidate("token-1")  # stale holder: must not remove token-2
    assert one.get() == "token-2"
    one.invalidate("token-0")  # unknown token: nothing happens
    assert two.get() == "token-2"
    assert fetches == ["token-1", "token-2"]
    other_app = AccessTokenCache(store, fetch, clock, app_id="wxother")
    assert other_app.get() == "token-3"  # one record per AppID


# -- typed errors ----------------------------------------------------------------------------

SEND_ERRORS: list[tuple[int, type[WeChatAPIError]]] = [
    (40164, IPNotWhitelisted),
    (48001, Unauthorized),
    (45015, OutOfWindow),
    (45047, QuotaExceeded),
    (45002, ContentTooLong),
    (45009, RateLimited),
    (45011, RateLimited),
    (-1, RateLimited),
    (40003, UserUnavailable),
    (43004, UserUnavailable),
    (48002, UserUnavailable),
    (45080, WeChatAPIError),
]


@pytest.mark.parametrize(("code", "cls"), SEND_ERRORS)
def test_each_errcode_raises_its_typed_error_without_retry(
    wechat: FakeWeChatAPI, store: EndpointStore, code: int, cls: type[WeChatAPIError]
) -> None:
    wechat.fail(code, path=CUSTOM_SEND)
    with pytest.raises(WeChatAPIError) as caught:
        client_for(wechat, store).custom_message.send_text(OPENID, "hi")
    assert type(caught.value) is cls
    assert caught.value.errcode == code
    assert caught.value.hint
    assert wechat.count(CUSTOM_SEND) == 1
    assert_clean(caught.value, wechat.app_secret, wechat.current_token or "")


@pytest.mark.parametrize("code", [40013, 40125, 40243, 40164, -1])
def test_token_fetch_errors_are_typed(
    wechat: FakeWeChatAPI, store: EndpointStore, code: int
) -> None:
    wechat.fail(code, path=STABLE_TOKEN)
    with pytest.raises(WeChatAPIError) as caught:
        client_for(wechat, store).typing.start(OPENID)
    assert caught.value.errcode == code
    assert type(caught.value) is error_for(code, "").__class__
    assert wechat.count(CUSTOM_SEND) + wechat.count("/cgi-bin/message/custom/typing") == 0
    assert_clean(caught.value, wechat.app_secret)


def test_wrong_secret_is_a_credential_error_that_never_shows_the_secret(
    wechat: FakeWeChatAPI, store: EndpointStore
) -> None:
    wrong = "wrong-secret-" + "9" * 19
    with pytest.raises(CredentialError) as caught:
        client_for(wechat, store, secret=wrong).custom_message.send_text(OPENID, "x")
    assert caught.value.errcode == 40125
    assert "AppSecret" in caught.value.hint
    assert_clean(caught.value, wrong, wechat.app_secret)


def test_missing_secret_fails_before_any_request() -> None:
    def never(sent: Sent) -> MockResponse:
        raise AssertionError("no request expected")

    transport = MockTransport(never)
    client = WeChatClient(
        "https://api.weixin.qq.com",
        "wx0123456789abcdef",
        "",
        EndpointStore(MemoryStorage(), "ep"),
        transport=transport,
    )
    with pytest.raises(CredentialError) as caught:
        client.custom_message.send_text(OPENID, "x")
    assert caught.value.errcode == 41004
    assert transport.sent == []


def test_ip_whitelist_error_carries_the_ip(wechat: FakeWeChatAPI, store: EndpointStore) -> None:
    wechat.fail(40164, path=STABLE_TOKEN)
    with pytest.raises(IPNotWhitelisted) as caught:
        client_for(wechat, store).custom_message.send_text(OPENID, "x")
    assert caught.value.ip == "203.0.113.7"
    assert "203.0.113.7" in caught.value.hint
    assert "IP白名单" in caught.value.hint


@pytest.mark.parametrize(
    ("errmsg", "ip"),
    [
        ("invalid ip 198.51.100.20, not in whitelist rid: 6523-1", "198.51.100.20"),
        ("invalid ip 2001:db8::1, not in whitelist", "2001:db8::1"),
        ("invalid ip, not in whitelist", None),
    ],
)
def test_ip_is_parsed_from_errmsg(errmsg: str, ip: str | None) -> None:
    error = error_for(40164, errmsg)
    assert isinstance(error, IPNotWhitelisted)
    assert error.ip == ip
    assert "基本配置" in error.hint


@pytest.mark.parametrize(
    ("codes", "cls"),
    [
        ((40001, 40014, 42001), AccessTokenInvalid),
        ((40164,), IPNotWhitelisted),
        ((48001,), Unauthorized),
        ((45015,), OutOfWindow),
        ((45047,), QuotaExceeded),
        ((45002,), ContentTooLong),
        ((45009, 45011, -1), RateLimited),
        ((40003, 43004, 48002), UserUnavailable),
        ((40013, 40125, 40243, 41002, 41004), CredentialError),
        ((40007, 45080, 99999), WeChatAPIError),
    ],
)
def test_error_for_table(codes: tuple[int, ...], cls: type[WeChatAPIError]) -> None:
    for code in codes:
        error = error_for(code, "msg")
        assert type(error) is cls
        assert isinstance(error, WeChatError)
        assert (error.errcode, error.errmsg) == (code, "msg")
        assert str(error) == f"WeChat API error {code}: msg"
        assert error.hint


def test_errmsg_echoing_secrets_and_urls_is_sanitized(
    wechat: FakeWeChatAPI, store: EndpointStore
) -> None:
    client = client_for(wechat, store)
    client.typing.start(OPENID)
    token = wechat.current_token or ""
    wechat.fail(
        48001,
        path=CUSTOM_SEND,
        errmsg=(
            f"api unauthorized hint: [{token}] see https://mmbizurl.cn/s/x?access_token={token}"
            f"&secret={wechat.app_secret} secret: {wechat.app_secret} rid: 6523-abc"
        ),
    )
    with pytest.raises(Unauthorized) as caught:
        client.custom_message.send_text(OPENID, "x")
    assert "https://mmbizurl.cn/s/x" in caught.value.errmsg  # the URL stays, its query goes
    assert "rid: 6523-abc" in caught.value.errmsg
    assert_clean(caught.value, token, wechat.app_secret)


# -- transport failures ----------------------------------------------------------------------


def test_network_error_becomes_a_sanitized_transport_error() -> None:
    def broken(sent: Sent) -> MockResponse:
        raise requests.ConnectionError(
            "HTTPSConnectionPool(host='api.weixin.qq.com', port=443): Max retries exceeded "
            f"with url: /cgi-bin/message/custom/send?access_token={MOCK_TOKEN}"
        )

    client = mock_client(MockTransport(token_or(broken)))
    with pytest.raises(TransportError) as caught:
        client.custom_message.send_text(OPENID, "x")
    assert not caught.value.timed_out
    assert "/cgi-bin/message/custom/send" in str(caught.value)
    assert_clean(caught.value, MOCK_TOKEN, MOCK_SECRET)
    assert caught.value.__context__ is None


def test_network_error_during_token_fetch_never_shows_the_secret() -> None:
    def broken(sent: Sent) -> MockResponse:
        raise requests.ConnectionError(f"failed sending {sent.data!r} to {sent.url}")

    with pytest.raises(TransportError) as caught:
        mock_client(MockTransport(broken)).typing.start(OPENID)
    assert_clean(caught.value, MOCK_SECRET)


def test_mock_timeout_is_a_timed_out_transport_error() -> None:
    def slow(sent: Sent) -> MockResponse:
        raise requests.ReadTimeout(f"read timed out, url={sent.url}?access_token={MOCK_TOKEN}")

    with pytest.raises(TransportError) as caught:
        mock_client(MockTransport(token_or(slow))).custom_message.send_text(OPENID, "x")
    assert caught.value.timed_out
    assert_clean(caught.value, MOCK_TOKEN, MOCK_SECRET)


def test_slow_server_times_out_within_the_budget(
    wechat: FakeWeChatAPI, store: EndpointStore
) -> None:
    client = client_for(wechat, store, timeout=0.3)
    client.typing.start(OPENID)  # token fetched
    wechat.delay(3.0, path=CUSTOM_SEND)
    started = time.monotonic()
    with pytest.raises(TransportError) as caught:
        client.custom_message.send_text(OPENID, "late")
    assert time.monotonic() - started < 1.5
    assert caught.value.timed_out
    assert_clean(caught.value, wechat.app_secret, wechat.current_token or "")


def test_unreachable_server_is_a_transport_error(store: EndpointStore) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = WeChatClient(
        f"http://127.0.0.1:{port}", "wx0123456789abcdef", MOCK_SECRET, store, timeout=TIMEOUT
    )
    with client, pytest.raises(TransportError) as caught:
        client.custom_message.send_text(OPENID, "x")
    assert_clean(caught.value, MOCK_SECRET)


@pytest.mark.parametrize(
    ("status", "body"),
    [(502, b"<html>502 Bad Gateway</html>"), (200, b"not json"), (200, b"[1, 2]")],
)
def test_non_json_answer_is_a_transport_error(
    wechat: FakeWeChatAPI, store: EndpointStore, status: int, body: bytes
) -> None:
    wechat.respond_raw(body, status=status, path=CUSTOM_SEND)
    with pytest.raises(TransportError) as caught:
        client_for(wechat, store).custom_message.send_text(OPENID, "x")
    assert f"HTTP {status}" in str(caught.value)
    assert_clean(caught.value, wechat.app_secret, wechat.current_token or "")


def test_per_call_timeout_is_the_budget_of_the_whole_call() -> None:
    transport = MockTransport(token_or(lambda sent: MockResponse()))
    client = mock_client(transport, timeout=4.0)
    client.custom_message.send_text(OPENID, "default")
    client.typing.stop(OPENID, timeout=0.8)
    default_fetch, default_send, budget_send = transport.sent
    assert default_fetch.timeout is not None and default_send.timeout is not None
    assert 3.5 < default_fetch.timeout[1] <= 4.0
    assert 3.5 < default_send.timeout[1] <= 4.0
    assert budget_send.timeout is not None and 0 < budget_send.timeout[1] <= 0.8
    assert not any(s.allow_redirects for s in transport.sent)  # the secret goes nowhere else
    with pytest.raises(TransportError) as caught:
        client.typing.start(OPENID, timeout=0)
    assert caught.value.timed_out


def test_json_bodies_are_utf8_not_escaped(wechat: FakeWeChatAPI, store: EndpointStore) -> None:
    client_for(wechat, store).custom_message.send_text(OPENID, "你好，世界")
    [call] = wechat.calls(CUSTOM_SEND)
    assert "你好，世界".encode() in call.body
    assert call.json == {"touser": OPENID, "msgtype": "text", "text": {"content": "你好，世界"}}


# -- messages, typing, media -----------------------------------------------------------------


def test_user_sees_typing_text_and_image_in_order(
    wechat: FakeWeChatAPI, store: EndpointStore
) -> None:
    client = client_for(wechat, store)
    uploaded = client.media.upload("image", "chart.png", b"\x89PNG\r\n\x1a\nDATA", "image/png")
    client.typing.start(OPENID)
    client.custom_message.send_text(OPENID, "part 1")
    client.custom_message.send_image(OPENID, uploaded.media_id)
    client.typing.stop(OPENID)
    assert wechat.timeline(OPENID) == [
        ("typing", "Typing"),
        ("text", "part 1"),
        ("image", uploaded.media_id),
        ("typing", "CancelTyping"),
    ]
    assert wechat.timeline("someone-else") == []
    assert uploaded.kind == "image" and uploaded.created_at > 0
    [stored] = wechat.uploads
    assert (stored.filename, stored.content_type) == ("chart.png", "image/png")
    assert stored.content == b"\x89PNG\r\n\x1a\nDATA"


def test_media_download_returns_bytes_and_content_type(
    wechat: FakeWeChatAPI, store: EndpointStore
) -> None:
    voice = b"#!AMR\n" + bytes(range(256))
    media_id = wechat.add_media(voice, "audio/amr", kind="voice")
    media = client_for(wechat, store).media.download(media_id)
    assert media.content == voice
    assert media.content_type == "audio/amr"
    assert media.filename == f"{media_id}.amr"
    assert "bytes" in repr(media) and "AMR" not in repr(media)


def test_media_download_of_a_video_gives_its_url(
    wechat: FakeWeChatAPI, store: EndpointStore
) -> None:
    media_id = wechat.add_media(b"", "video/mp4", kind="video", video_url="http://v.example/1")
    media = client_for(wechat, store).media.download(media_id)
    assert (media.content, media.video_url) == (b"", "http://v.example/1")


def test_media_download_json_error_with_http_200_is_typed(
    wechat: FakeWeChatAPI, store: EndpointStore
) -> None:
    client = client_for(wechat, store)
    with pytest.raises(WeChatAPIError) as caught:
        client.media.download("no-such-media")
    assert caught.value.errcode == 40007
    assert "media_id" in caught.value.hint
    wechat.fail(45009, path=MEDIA_GET)
    with pytest.raises(RateLimited):
        client.media.download(wechat.add_media(b"\xff\xd8jpeg"))
    assert_clean(caught.value, wechat.app_secret, wechat.current_token or "")


def test_media_download_retries_once_after_an_expired_token(
    wechat: FakeWeChatAPI, store: EndpointStore
) -> None:
    client = client_for(wechat, store)
    media_id = wechat.add_media(b"\xff\xd8jpeg", "image/jpeg")
    client.media.download(media_id)
    wechat.expire_token()
    assert client.media.download(media_id).content == b"\xff\xd8jpeg"
    assert wechat.count(MEDIA_GET) == 3
    assert wechat.token_fetches == 2


def test_media_upload_of_a_thumb_and_bad_input(wechat: FakeWeChatAPI, store: EndpointStore) -> None:
    client = client_for(wechat, store)
    thumb = client.media.upload("thumb", "t.jpg", b"\xff\xd8thumb", "image/jpeg")
    assert thumb.kind == "thumb" and thumb.media_id
    with pytest.raises(ValueError):
        client.media.upload("sticker", "x.gif", b"GIF", "image/gif")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        client.media.upload("image", "x.png", b"", "image/png")
    with pytest.raises(WeChatAPIError) as caught:
        client.media.upload("thumb", "big.jpg", b"x" * (64 * 1024 + 1), "image/jpeg")
    assert caught.value.errcode == 40006


def test_fake_models_the_customer_service_quota(store: EndpointStore) -> None:
    with FakeWeChatAPI(quota=2) as wechat:
        client = client_for(wechat, store)
        with pytest.raises(OutOfWindow):
            client.custom_message.send_text(OPENID, "before any message")
        wechat.user_interacted(OPENID)
        client.custom_message.send_text(OPENID, "1")
        client.custom_message.send_text(OPENID, "2")
        with pytest.raises(QuotaExceeded):
            client.custom_message.send_text(OPENID, "3")
        wechat.unfollow("gone")
        with pytest.raises(UserUnavailable):
            client.custom_message.send_text("gone", "x")
        with pytest.raises(ContentTooLong):
            wechat.user_interacted(OPENID)
            client.custom_message.send_text(OPENID, "字" * 683)  # 2049 UTF-8 bytes
        assert wechat.texts(OPENID) == ["1", "2"]
        assert wechat.wait_until(lambda fake: len(fake.texts(OPENID)) == 2, timeout=1.0)
        assert not wechat.wait_until(lambda fake: len(fake.texts(OPENID)) == 3, timeout=0.1)


def test_client_repr_shows_no_secret(wechat: FakeWeChatAPI, store: EndpointStore) -> None:
    client = client_for(wechat, store)
    assert wechat.app_secret not in repr(client)
    assert wechat.app_secret not in repr(vars(client).get("tokens"))


def test_public_names() -> None:
    assert set(api.__all__) == {
        "DEFAULT_TIMEOUT",
        "AccessTokenCache",
        "AccessTokenInvalid",
        "ContentRejected",
        "ContentTooLong",
        "CredentialError",
        "IPNotTrusted",
        "IPNotWhitelisted",
        "MediaFile",
        "MediaKind",
        "OutOfWindow",
        "QuotaExceeded",
        "RateLimited",
        "Response",
        "ServerAPIClient",
        "Transport",
        "TransportError",
        "Unauthorized",
        "UploadedMedia",
        "UserUnavailable",
        "WeChatAPIError",
        "WeChatClient",
        "WeChatError",
        "WeComClient",
        "error_for",
        "wecom_error_for",
    }
    for name in api.__all__:
        assert getattr(api, name) is not None
    assert issubclass(TransportError, WeChatError)
    assert not issubclass(TransportError, WeChatAPIError)
