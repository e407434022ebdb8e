"""WeCom (企业微信) through the same pipeline: settings per platform, the encrypted URL check,
msg_signature-only intake with the AgentID check, passive encrypted replies, markdown
parts. Requests are built with wechatpy's WeCom crypto (``wechatpy.enterprise``), an
implementation independent of ours."""

from __future__ import annotations

import time
from typing import Any

import pytest
import wechatpy.enterprise.crypto as wx_work
import xmltodict

from endpoints.wechat import timing
from endpoints.wechat.coordinator import part_decision
from endpoints.wechat.intake import HttpReply, HttpRequest, Runtime, handle_get, handle_post
from endpoints.wechat.parts import PartKind, is_text, markdown_part, read_part
from endpoints.wechat.settings import (
    DEFAULT_API_BASE_URL,
    WECOM_API_BASE_URL,
    DeliveryMode,
    Platform,
    Settings,
    load_settings,
)
from endpoints.wechat.status_page import render_status_page
from tests import samples
from tests.fakes import MemoryStorage, ScriptedCaller

TOKEN = "wecomToken42"
CORP_ID = "ww0123456789abcdef"
AGENT_ID = "1000002"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
SECRET = "wecom-app-secret-0000000000000000000000"
USER = "ZhangSan"


@pytest.fixture(autouse=True)
def short_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timing, "DELIVERY_DEADLINE", 0.4)
    monkeypatch.setattr(timing, "STORE_GUARD", 0.6)
    monkeypatch.setattr(timing, "HOLD_UNTIL", 0.7)
    monkeypatch.setattr(timing, "POLL_INTERVAL", 0.05)


def wecom_settings(**overrides: Any) -> Settings:
    raw: dict[str, Any] = {
        "app": {"app_id": "app-1", "inputs": {}},
        "platform": "wecom",
        "wechat_token": TOKEN,
        "app_id": CORP_ID,
        "agent_id": AGENT_ID,
        "encoding_aes_key": AES_KEY,
        "app_secret": SECRET,
        "wechat_api_base_url": DEFAULT_API_BASE_URL,  # what Dify fills in from the form
    }
    raw.update(overrides)
    return load_settings({k: v for k, v in raw.items() if v is not None})


def problem_of(settings: Settings, name: str) -> str:
    return " ".join(p.message_en for p in settings.problems if p.setting == name)


# --- settings ------------------------------------------------------------------------------


def test_wecom_settings_read_the_shared_fields_with_their_wecom_meaning() -> None:
    s = wecom_settings()
    assert s.platform is Platform.WECOM and s.is_wecom
    assert (s.app_id, s.agent_id, s.app_secret) == (CORP_ID, AGENT_ID, SECRET)
    assert s.api_base_url == WECOM_API_BASE_URL  # the form's default means qyapi for WeCom
    assert s.problems == ()
    assert s.can_push and s.sends_markdown and s.push_quota == 10


def test_official_account_stays_the_default() -> None:
    s = load_settings({"wechat_token": TOKEN, "app_id": "wx1234567890abcdef"})
    assert s.platform is Platform.OFFICIAL_ACCOUNT and not s.is_wecom
    assert s.push_quota == 5 and not s.sends_markdown


@pytest.mark.parametrize(
    ("overrides", "setting", "fatal"),
    [
        ({"app_id": "wx-not-a-corp"}, "app_id", False),
        ({"app_id": None}, "app_id", True),
        ({"encoding_aes_key": None}, "encoding_aes_key", True),
        ({"agent_id": None}, "agent_id", False),
        ({"agent_id": "10000x2"}, "agent_id", False),
        ({"platform": "qq"}, "platform", False),
        ({"voice_reply": True}, "voice_reply", False),
    ],
)
def test_wecom_misconfigurations_explain_themselves(
    overrides: dict[str, Any], setting: str, fatal: bool
) -> None:
    s = wecom_settings(**overrides)
    problems = [p for p in s.problems if p.setting == setting]
    assert problems, s.problems
    assert problems[0].fatal is fatal
    assert problems[0].message_zh


def test_without_agent_id_late_answers_are_fetched_not_pushed() -> None:
    s = wecom_settings(agent_id=None)
    assert not s.can_push and not s.sends_markdown
    assert "AgentId" in problem_of(s, "agent_id")


def test_markdown_can_be_switched_off() -> None:
    s = wecom_settings(wecom_markdown=False)
    assert s.can_push and not s.sends_markdown


def test_fetch_mode_keeps_markdown_off_because_only_text_is_fetched() -> None:
    s = wecom_settings(delivery_mode="fetch")
    assert s.delivery_mode is DeliveryMode.FETCH and not s.can_push and not s.sends_markdown


def test_the_wecom_url_is_wecom_whatever_the_setting_says() -> None:
    s = wecom_settings(platform="official_account")
    assert s.platform is Platform.OFFICIAL_ACCOUNT
    forced = load_settings(
        {"wechat_token": TOKEN, "app_id": CORP_ID, "encoding_aes_key": AES_KEY},
        Platform.WECOM,
    )
    assert forced.is_wecom
    assert "/wecom" in problem_of(forced, "platform")


def test_an_official_account_with_the_wecom_api_host_is_told_so() -> None:
    s = load_settings(
        {
            "wechat_token": TOKEN,
            "app_id": "wx1234567890abcdef",
            "wechat_api_base_url": (WECOM_API_BASE_URL),
        }
    )
    assert s.api_base_url == DEFAULT_API_BASE_URL
    assert "qyapi" in problem_of(s, "wechat_api_base_url")


# --- requests as WeCom sends them ------------------------------------------------------------


class WeCom:
    """Builds signed, encrypted WeCom callbacks with wechatpy's WeCom crypto."""

    def __init__(self, token: str = TOKEN, corp_id: str = CORP_ID) -> None:
        self.crypto = wx_work.WeChatCrypto(token, AES_KEY, corp_id)
        self.corp_id = corp_id

    def _encrypted(self, plaintext: str, timestamp: str, nonce: str) -> tuple[str, str]:
        envelope = xmltodict.parse(self.crypto.encrypt_message(plaintext, nonce, timestamp))
        return envelope["xml"]["Encrypt"], envelope["xml"]["MsgSignature"]

    def verify(self, echo: str = "1616140317555161061") -> tuple[HttpRequest, str]:
        timestamp, nonce = str(int(time.time())), "1372623149"
        encrypted, signature = self._encrypted(echo, timestamp, nonce)
        query = {
            "msg_signature": signature,
            "timestamp": timestamp,
            "nonce": nonce,
            "echostr": encrypted.replace("+", " "),  # as a form decoder would damage it
        }
        return HttpRequest("GET", query, b""), echo

    def post(self, xml: str, agent: str = AGENT_ID) -> HttpRequest:
        timestamp, nonce = str(int(time.time())), "1372623149"
        encrypted, signature = self._encrypted(xml, timestamp, nonce)
        body = (
            f"<xml><ToUserName><![CDATA[{self.corp_id}]]></ToUserName>"
            f"<Encrypt><![CDATA[{encrypted}]]></Encrypt>"
            f"<AgentID><![CDATA[{agent}]]></AgentID></xml>"
        )
        query = {"msg_signature": signature, "timestamp": timestamp, "nonce": nonce}
        return HttpRequest("POST", query, body.encode())

    def read_reply(self, body: str) -> dict[str, Any]:
        envelope = xmltodict.parse(body)["xml"]
        plaintext = self.crypto.decrypt_message(
            body, envelope["MsgSignature"], envelope["TimeStamp"], envelope["Nonce"]
        )
        return dict(xmltodict.parse(plaintext)["xml"])


def text(content: str, agent: str = AGENT_ID, msg_id: int = 7001) -> str:
    return (
        f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName>"
        f"<FromUserName><![CDATA[{USER}]]></FromUserName><CreateTime>1700000000</CreateTime>"
        f"<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content>"
        f"<MsgId>{msg_id}</MsgId><AgentID>{agent}</AgentID></xml>"
    )


def event(name: str, agent: str = AGENT_ID) -> str:
    return (
        f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName>"
        f"<FromUserName><![CDATA[{USER}]]></FromUserName><CreateTime>1700000001</CreateTime>"
        f"<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{name}]]></Event>"
        f"<EventKey><![CDATA[]]></EventKey><AgentID>{agent}</AgentID></xml>"
    )


class Harness:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or wecom_settings()
        self.caller = ScriptedCaller()
        self.runtime = Runtime(MemoryStorage(), "ep-1", self.caller, use_worker=False)
        self.wecom = WeCom()

    def post(self, xml: str, agent: str = AGENT_ID) -> HttpReply:
        return handle_post(self.wecom.post(xml, agent), self.settings, self.runtime)


# --- GET -----------------------------------------------------------------------------------


def test_url_check_answers_the_decrypted_echostr() -> None:
    # Ciphertexts are random: try echoes until one carries a "+" that a form decoder
    # turned into a space, so the repair is always exercised.
    for n in range(200):
        request, echo = WeCom().verify(f"16161403175551610{n:02d}")
        if " " in request.query["echostr"]:
            break
    assert " " in request.query["echostr"]
    reply = handle_get(request, wecom_settings(), "")
    assert (reply.status, reply.body) == (200, echo)


@pytest.mark.parametrize(
    "sender",
    [WeCom(token="anotherToken"), WeCom(corp_id="ww9999999999999999")],
    ids=["wrong token", "other corp"],
)
def test_url_check_refuses_other_senders_without_echo(sender: WeCom) -> None:
    request, echo = sender.verify()
    reply = handle_get(request, wecom_settings(), "")
    assert reply.status == 403 and echo not in reply.body


def test_url_check_without_the_aes_key_is_refused() -> None:
    request, echo = WeCom().verify()
    reply = handle_get(request, wecom_settings(encoding_aes_key=None), "")
    assert reply.status == 403 and echo not in reply.body


def test_official_account_verification_on_a_wecom_endpoint_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    query = {"signature": "0" * 40, "timestamp": "1", "nonce": "2", "echostr": "abc"}
    reply = handle_get(HttpRequest("GET", query, b""), wecom_settings(), "scope-oa-on-wecom")
    assert reply.status == 403
    assert "platform to official_account" in caplog.text


def test_wecom_verification_on_an_official_account_endpoint_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    request, _ = WeCom().verify()
    settings = load_settings({"wechat_token": TOKEN, "app_id": "wx1234567890abcdef"})
    reply = handle_get(request, settings, "scope-wecom-on-oa")
    assert reply.status == 403
    assert "platform to wecom" in caplog.text


# --- POST ----------------------------------------------------------------------------------


def test_a_quick_answer_is_a_passive_encrypted_reply_for_the_member() -> None:
    h = Harness()
    reply = h.post(text("你好"))
    assert reply.status == 200
    fields = h.wecom.read_reply(reply.body)
    assert fields["MsgType"] == "text" and fields["Content"] == "echo: 你好"
    assert (fields["ToUserName"], fields["FromUserName"]) == (USER, CORP_ID)
    call = h.caller.calls[0]
    assert call["user"] == USER
    assert call["inputs"]["wechat_agent_id"] == AGENT_ID
    assert call["inputs"]["wechat_account"] == CORP_ID


def test_a_message_for_another_app_is_refused_without_an_app_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    reply = h.post(text("hi", agent="1000003"), agent="1000003")
    assert reply.status == 403 and h.caller.calls == []
    assert "AgentID" in caplog.text


def test_the_decrypted_agent_id_is_the_one_checked() -> None:
    h = Harness()
    # The envelope names our app, the signed and encrypted message another one.
    reply = h.post(text("hi", agent="1000003"), agent=AGENT_ID)
    assert reply.status == 403 and h.caller.calls == []
    # Messages without an AgentID (not sent by an app) are not refused for it.
    no_agent = text("hi").replace(f"<AgentID>{AGENT_ID}</AgentID>", "")
    assert Harness().post(no_agent, agent="").status == 200


@pytest.mark.parametrize(
    "tamper",
    [
        lambda r: HttpRequest("POST", {**r.query, "msg_signature": "0" * 40}, r.body),
        lambda r: HttpRequest("POST", {**r.query, "timestamp": "1000"}, r.body),
        lambda r: HttpRequest("POST", {k: v for k, v in r.query.items() if k != "nonce"}, r.body),
        lambda r: HttpRequest("POST", r.query, r.body.replace(b"<Encrypt>", b"<Encrypted>")),
    ],
    ids=["signature", "stale", "no nonce", "no Encrypt"],
)
def test_forged_or_broken_callbacks_are_refused(tamper: Any) -> None:
    h = Harness()
    reply = handle_post(tamper(h.wecom.post(text("hi"))), h.settings, h.runtime)
    assert reply.status in (400, 403) and h.caller.calls == []


def test_acknowledgements_are_an_empty_200() -> None:
    h = Harness()
    reply = h.post(event("view"))
    assert (reply.status, reply.body) == (200, "")


def test_enter_agent_is_silent_unless_the_welcome_is_switched_on() -> None:
    assert Harness().post(event("enter_agent")).body == ""
    h = Harness(wecom_settings(welcome_on_enter=True, welcome_message="欢迎使用"))
    fields = h.wecom.read_reply(h.post(event("enter_agent")).body)
    assert fields["Content"] == "欢迎使用"
    assert h.caller.calls == []


def test_subscribe_gets_the_welcome() -> None:
    h = Harness(wecom_settings(welcome_message="欢迎加入"))
    assert h.wecom.read_reply(h.post(event("subscribe")).body)["Content"] == "欢迎加入"


def test_a_retry_gets_the_same_answer_without_a_second_app_call() -> None:
    h = Harness()
    first = h.wecom.read_reply(h.post(text("同一条", msg_id=42)).body)
    second = h.wecom.read_reply(h.post(text("同一条", msg_id=42)).body)
    assert first["Content"] == second["Content"] == "echo: 同一条"
    assert len(h.caller.calls) == 1


def test_plaintext_official_account_posts_are_refused_on_wecom() -> None:
    h = Harness()
    plain = HttpRequest(
        "POST",
        {"signature": "0" * 40, "timestamp": str(int(time.time())), "nonce": "1"},
        samples.text("hi").encode(),
    )
    assert handle_post(plain, h.settings, h.runtime).status == 403
    assert h.caller.calls == []


# --- markdown parts ------------------------------------------------------------------------


def test_a_markdown_part_is_text_wherever_only_text_can_go() -> None:
    stored = markdown_part("## 结论\n\n**注意：** 见 [文档](https://example.com/doc)")
    part = read_part(stored)
    assert part.kind is PartKind.MARKDOWN and part.is_text and is_text(stored)
    assert part.value.startswith("## 结论")
    assert "**" not in part.text and "https://example.com/doc" in part.text
    decision = part_decision(stored, "\n(more)")
    assert decision.media is None and decision.text == part.text + "\n(more)"


def test_the_status_page_speaks_wecom() -> None:
    page = render_status_page(wecom_settings(agent_id=None), "https://dify.example.com/e/x/wecom")
    assert "企业可信IP" in page and "设置API接收" in page and "agent_id" in page
    for secret in (TOKEN, AES_KEY, SECRET):
        assert secret not in page
