"""The whole pipeline (verify → decrypt → parse → handle → format → encrypt) with Dify
replaced by fakes: storage in memory, a scripted app."""

from __future__ import annotations

import time
from typing import Any

import pytest

from endpoints.wechat import timing
from endpoints.wechat.formatters import TEXT_BUDGET_BYTES, utf8_len
from endpoints.wechat.intake import HttpReply, HttpRequest, Runtime, handle_get, handle_post
from endpoints.wechat.settings import DEFAULT_TEXTS, load_settings
from tests import samples
from tests.fakes import MemoryStorage, ScriptedCaller, chat_chunks
from tests.signing import WeChatSigner

TOKEN = "token123"
APP_ID = "wx1234567890abcdef"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


@pytest.fixture(autouse=True)
def short_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timing, "DELIVERY_DEADLINE", 0.4)
    monkeypatch.setattr(timing, "STORE_GUARD", 0.6)
    monkeypatch.setattr(timing, "HOLD_UNTIL", 0.7)
    monkeypatch.setattr(timing, "POLL_INTERVAL", 0.05)


class Harness:
    def __init__(self, caller: ScriptedCaller | None = None, **settings: Any) -> None:
        raw: dict[str, Any] = {
            "app": {"app_id": "app-1", "inputs": {}},
            "wechat_token": TOKEN,
            "app_id": APP_ID,
        }
        raw.update(settings)
        self.settings = load_settings(raw)
        self.storage = MemoryStorage()
        self.caller = caller or ScriptedCaller()
        self.signer = WeChatSigner(TOKEN, APP_ID, AES_KEY)
        self.runtime = Runtime(self.storage, "ep-1", self.caller)

    def post(self, request: HttpRequest) -> HttpReply:
        return handle_post(request, self.settings, self.runtime)

    def say(self, xml: str, mode: str = "plain") -> str | None:
        """One delivery; the text the user sees (None for success)."""
        reply = self.post(self.signer.post(xml, mode))
        assert reply.status == 200, reply
        if reply.body == "success":
            return None
        fields = self.signer.read_reply(reply.body, encrypted=mode != "plain")
        assert fields["MsgType"] == "text"
        assert fields["ToUserName"] == samples.USER
        assert fields["FromUserName"] == samples.TO
        return str(fields["Content"])


# --- GET ----------------------------------------------------------------------------------


def test_get_verification_echoes_exactly() -> None:
    h = Harness()
    reply = handle_get(h.signer.get("5678901234"), h.settings, "")
    assert (reply.status, reply.body) == (200, "5678901234")


@pytest.mark.parametrize(
    "query",
    [
        {"signature": "0" * 40, "timestamp": "1", "nonce": "2", "echostr": "ECHO-12345"},
        {"timestamp": "1", "nonce": "2", "echostr": "ECHO-12345"},
        {"echostr": "ECHO-12345"},
    ],
)
def test_get_with_bad_signature_is_403_without_echo(query: dict[str, str]) -> None:
    h = Harness()
    reply = handle_get(HttpRequest("GET", query, b""), h.settings, "")
    assert reply.status == 403
    assert query["echostr"] not in reply.body


def test_get_without_parameters_is_a_status_page_without_secrets() -> None:
    h = Harness(encoding_aes_key=AES_KEY, app_secret="SECRETSECRET", app_id="bad")
    reply = handle_get(
        HttpRequest("GET", {}, b""), h.settings, "https://dify.example.com/e/abc/wechat?x=1"
    )
    assert reply.status == 200 and reply.content_type.startswith("text/html")
    assert "https://dify.example.com/e/abc/wechat" in reply.body
    assert "x=1" not in reply.body
    for secret in (TOKEN, AES_KEY, "SECRETSECRET"):
        assert secret not in reply.body
    assert "app_id" in reply.body and "❌" in reply.body


# --- POST: the three modes ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["plain", "compatible", "safe"])
def test_text_round_trip_in_every_mode(mode: str) -> None:
    h = Harness(encoding_aes_key=AES_KEY) if mode != "plain" else Harness()
    assert h.say(samples.text("你好 ]]]]><![CDATA[> there"), mode) == "echo: 你好 ]]> there"
    assert len(h.caller.calls) == 1
    call = h.caller.calls[0]
    assert call["user"] == samples.USER
    assert call["inputs"]["wechat_msg_type"] == "text"
    assert call["inputs"]["wechat_msg_id"] == "1234567890123456"


def refusals(h: Harness) -> list[tuple[str, HttpRequest, int]]:
    s = h.signer
    good = s.post(samples.text("x", msg_id=1), "safe")
    stale = str(int(time.time()) - 400)
    cases: list[tuple[str, HttpRequest, int]] = [
        ("no signature", HttpRequest("POST", {}, good.body), 403),
        (
            "wrong signature",
            HttpRequest("POST", {**good.query, "signature": "0" * 40}, good.body),
            403,
        ),
        (
            "wrong msg_signature",
            HttpRequest("POST", {**good.query, "msg_signature": "0" * 40}, good.body),
            403,
        ),
        (
            "missing msg_signature",
            HttpRequest("POST", {**good.query, "msg_signature": ""}, good.body),
            403,
        ),
        ("stale timestamp", s.post(samples.text("x", msg_id=2), "safe", timestamp=stale), 403),
        (
            "future timestamp",
            s.post(samples.text("x", msg_id=3), "safe", timestamp=str(int(time.time()) + 400)),
            403,
        ),
        (
            "tampered ciphertext",
            HttpRequest(
                "POST",
                good.query,
                good.body.replace(b"<Encrypt><![CDATA[", b"<Encrypt><![CDATA[AAAA"),
            ),
            403,
        ),
        ("malformed xml", HttpRequest("POST", good.query, b"<xml><Encrypt>"), 400),
        (
            "no Encrypt element",
            HttpRequest("POST", good.query, b"<xml><ToUserName>a</ToUserName></xml>"),
            400,
        ),
        (
            "dtd",
            HttpRequest(
                "POST",
                good.query,
                b'<!DOCTYPE x [<!ENTITY a "b">]><xml><Encrypt>&a;</Encrypt></xml>',
            ),
            400,
        ),
        ("oversize", HttpRequest("POST", good.query, b"<xml>" + b"x" * 200_000 + b"</xml>"), 413),
        ("plaintext while a key is set", s.post(samples.text("x", msg_id=4), "plain"), 403),
    ]
    other_app = WeChatSigner(TOKEN, "wx0000000000000000", AES_KEY)
    other_app._nonce = 5000
    cases.append(("AppID mismatch", other_app.post(samples.text("x", msg_id=5), "safe"), 403))
    wrong_token = WeChatSigner("othertoken", APP_ID, AES_KEY)
    cases.append(("wrong token", wrong_token.post(samples.text("x", msg_id=6), "safe"), 403))
    return cases


def test_forged_and_malformed_requests_are_refused_without_side_effects() -> None:
    h = Harness(encoding_aes_key=AES_KEY)
    for name, request, status in refusals(h):
        reply = h.post(request)
        assert reply.status == status, name
        assert "echo" not in reply.body, name
        assert h.caller.calls == [], name
        assert h.storage.writes == [], name
    # and the next valid request still works
    assert h.say(samples.text("still works", msg_id=99), "safe") == "echo: still works"


def test_encrypted_request_without_a_configured_key_is_refused() -> None:
    h = Harness()
    reply = h.post(h.signer.post(samples.text("x"), "safe"))
    assert reply.status == 403 and h.caller.calls == [] and h.storage.writes == []


def test_replayed_signature_with_another_body_is_refused() -> None:
    h = Harness()
    first = h.signer.post(samples.text("hello", msg_id=1))
    assert h.post(first).status == 200
    forged = HttpRequest("POST", first.query, samples.text("forged", msg_id=2).encode())
    assert h.post(forged).status == 403
    assert [c["query"] for c in h.caller.calls] == ["hello"]


# --- delivery and dedupe ------------------------------------------------------------------


def test_repeated_deliveries_never_call_the_app_twice() -> None:
    h = Harness()
    xml = samples.text("once", msg_id=7)
    assert h.say(xml) == "echo: once"
    assert h.say(xml) == "echo: once"
    assert h.say(xml) == "echo: once"
    assert len(h.caller.calls) == 1


def test_slow_answer_lets_wechat_retry_then_reports_too_slow() -> None:
    h = Harness(caller=ScriptedCaller(delay=1.0))
    xml = samples.text("slow", msg_id=8)
    first = h.post(h.signer.post(xml))
    assert first.status != 200 and first.body == ""
    assert first.hold_until is not None and first.hold_until > time.time()
    time.sleep(0.3)
    assert h.say(xml) == DEFAULT_TEXTS["timeout_message"]
    assert len(h.caller.calls) == 1


def test_answer_finishing_after_the_deadline_reaches_the_next_delivery() -> None:
    h = Harness(caller=ScriptedCaller(delay=0.5))  # after DELIVERY_DEADLINE, before STORE_GUARD
    xml = samples.text("borderline", msg_id=9)
    assert h.post(h.signer.post(xml)).hold_until is not None
    time.sleep(0.3)
    assert h.say(xml) == "echo: borderline"
    assert len(h.caller.calls) == 1


def test_app_failure_gives_the_friendly_text() -> None:
    caller = ScriptedCaller(lambda c: [{"event": "error", "message": "model quota exceeded"}])
    h = Harness(caller=caller, error_message="出错啦")
    assert h.say(samples.text("q")) == "出错啦"


# --- long answers and the fetch keyword ---------------------------------------------------


def test_long_answer_is_split_and_fetched_with_the_keyword() -> None:
    paragraphs = [f"第{i}段：" + "这是一段很长的回答内容。" * 40 for i in range(6)]
    answer = "\n\n".join(paragraphs)
    caller = ScriptedCaller(lambda c: chat_chunks(answer if c["query"] != "1" else "app saw 1"))
    h = Harness(caller=caller)
    seen = [h.say(samples.text("tell me a lot", msg_id=10))]
    msg_id = 11
    while seen[-1] and "回复「1」" in seen[-1]:
        seen.append(h.say(samples.text("1", msg_id=msg_id)))
        msg_id += 1
    assert len(seen) >= 3
    assert all(s is not None and utf8_len(s) <= TEXT_BUDGET_BYTES for s in seen)
    hint = "（内容较长，回复「1」查看后续）"
    assert all(hint in (s or "") for s in seen[:-1])
    assert hint not in (seen[-1] or "") and (seen[-1] or "").strip()
    joined = "".join(s.replace("\n\n（内容较长，回复「1」查看后续）", "") for s in seen if s)
    assert joined.replace("\n", "") == answer.replace("\n", "")
    assert len(caller.calls) == 1
    # with nothing waiting, "1" is an ordinary message for the app
    assert h.say(samples.text("1", msg_id=msg_id)) == "app saw 1"


def test_retried_fetch_returns_the_same_part_not_the_next() -> None:
    answer = "\n\n".join("段落" * 300 for _ in range(4))
    h = Harness(caller=ScriptedCaller(lambda c: chat_chunks(answer)))
    h.say(samples.text("long", msg_id=20))
    fetch = samples.text("1", msg_id=21)
    assert h.say(fetch) == h.say(fetch)


# --- commands and message types ------------------------------------------------------------


def test_clear_and_help_commands() -> None:
    h = Harness()
    h.say(samples.text("hi", msg_id=30))
    assert any(k.split("/")[2] == "conv" for k in h.storage.data)
    assert "新的对话" in (h.say(samples.text("/clear", msg_id=31)) or "")
    assert not any(k.split("/")[2] == "conv" for k in h.storage.data)
    assert "新的对话" in (h.say(samples.text("／新对话", msg_id=32)) or "")
    assert "/clear" in (h.say(samples.text("/help", msg_id=33)) or "")
    assert len(h.caller.calls) == 1


def test_message_types() -> None:
    h = Harness(welcome_message="欢迎！来源 {qr_scene}")
    assert h.say(samples.event("subscribe", "qrscene_abc", ts=1)) == "欢迎！来源 abc"
    assert h.say(samples.event("unsubscribe", ts=2)) is None
    assert h.say(samples.event("VIEW", "https://x", ts=3)) is None
    assert h.say(samples.event("LOCATION", ts=4)) is None
    assert h.say(samples.event("TEMPLATESENDJOBFINISH", ts=5)) is None
    assert h.say(samples.event("SCAN", "1", ts=6)) is None
    assert h.say(samples.event("brand_new_event", ts=7)) is None
    assert h.say(samples.event("CLICK", "MENU_PRICE", ts=8)) == "echo: MENU_PRICE"
    # No recognition, no AppSecret/speech model: the user is told what is missing.
    voice_unavailable = DEFAULT_TEXTS["voice_unavailable_message"]
    assert h.say(samples.of(samples.VOICE, msg_id=40)) == voice_unavailable
    assert h.say(samples.of(samples.VOICE_RECOGNIZED, msg_id=41)) == "echo: 腾讯微信团队"
    assert h.say(samples.of(samples.VIDEO, msg_id=42)) == "echo: [视频] 用户发来一段视频"
    assert h.say(samples.of(samples.SHORTVIDEO, msg_id=43)) == "echo: [小视频] 用户发来一段视频"
    assert "mmbiz.qpic.cn/pic.jpg" in (h.say(samples.of(samples.IMAGE, msg_id=44)) or "")
    assert "位置信息" in (h.say(samples.of(samples.LOCATION, msg_id=45)) or "")
    assert "https://mp.weixin.qq.com" in (h.say(samples.of(samples.LINK, msg_id=46)) or "")
    unknown = samples.text("x", msg_id=47).replace("[text]", "[file]")
    assert h.say(unknown) == DEFAULT_TEXTS["unsupported_message"]
    queries = [c["query"] for c in h.caller.calls]
    assert queries[0] == "MENU_PRICE"
    image_inputs = next(c["inputs"] for c in h.caller.calls if c["query"].startswith("[图片]"))
    assert image_inputs["wechat_pic_url"] == "http://mmbiz.qpic.cn/pic.jpg"


def test_click_can_be_ignored_and_welcome_can_be_silent() -> None:
    h = Harness(click_event_mode="ignore", welcome_message="")
    assert h.say(samples.event("CLICK", "K", ts=1)) is None
    assert h.say(samples.event("subscribe", ts=2)) is None
    assert h.caller.calls == []


def test_markdown_answer_is_rendered_for_wechat() -> None:
    md = "# Title\n\n**bold** and [link](https://example.com)\n\n- a\n- b"
    h = Harness(caller=ScriptedCaller(lambda c: chat_chunks(md)))
    text = h.say(samples.text("md")) or ""
    assert "**" not in text and "# " not in text
    assert "https://example.com" in text and "bold" in text


def test_instant_outcomes_reply_at_once_not_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(timing, "DELIVERY_DEADLINE", 3.0)
    monkeypatch.setattr(timing, "STORE_GUARD", 3.2)
    failing = ScriptedCaller(lambda c: [{"event": "error", "message": "boom"}])
    for harness in (Harness(caller=failing), Harness(app=None), Harness()):
        started = time.monotonic()
        harness.say(samples.text("q", msg_id=50))
        assert time.monotonic() - started < 1.5


def test_storage_failure_gives_the_friendly_error_not_a_500() -> None:
    h = Harness()

    def broken(key: str, val: bytes) -> None:
        raise RuntimeError("storage quota exceeded")

    h.storage.set = broken  # type: ignore[method-assign]
    assert h.say(samples.text("q", msg_id=60)) == DEFAULT_TEXTS["error_message"]


def test_a_failing_dedupe_read_never_starts_a_second_app_call() -> None:
    h = Harness()
    xml = samples.text("once", msg_id=70)
    assert h.say(xml) == "echo: once"
    original_get = h.storage.get

    def flaky_get(key: str) -> bytes:
        if "/job/" in key:
            raise RuntimeError("storage timeout")
        return original_get(key)

    h.storage.get = flaky_get  # type: ignore[method-assign]
    assert h.say(xml) == DEFAULT_TEXTS["error_message"]
    assert len(h.caller.calls) == 1


def test_failing_housekeeping_never_replaces_the_answer() -> None:
    answer = "\n\n".join("段落" * 300 for _ in range(3))
    h = Harness(caller=ScriptedCaller(lambda c: chat_chunks(answer)))
    original_set = h.storage.set

    def picky_set(key: str, val: bytes) -> None:
        if "/sweep/" in key or "/user/" in key:
            raise RuntimeError("storage full")
        original_set(key, val)

    h.storage.set = picky_set  # type: ignore[method-assign]
    first = h.say(samples.text("long", msg_id=80)) or ""
    # The first part still arrives; the rest cannot be kept, so no hint promises it.
    assert first.startswith("段落") and "回复「1」" not in first
