"""Rich conversations end to end: the new settings, the voice/image/video/menu/welcome
handlers, and media parts rendered as passive image and voice replies (coordinator
``part_decision``, intake ``_render``), driven through ``handle_post`` with fakes: Dify's
services (FakeServices), WeChat's API (FakeWeChatAPI) and Dify's file host (FileHost)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from endpoints.wechat import audio, dify_services, timing
from endpoints.wechat.answer_pages import serve_answer_page
from endpoints.wechat.conversations import ConversationStore
from endpoints.wechat.coordinator import Action, Decision, part_decision
from endpoints.wechat.formatters import TEXT_BUDGET_BYTES, utf8_len
from endpoints.wechat.handlers.base import SILENT, AskApp, HandlerContext, Reply
from endpoints.wechat.handlers.event import ClickHandler, SubscribeHandler
from endpoints.wechat.handlers.image import ImageHandler
from endpoints.wechat.handlers.video import VideoHandler
from endpoints.wechat.handlers.voice import VoiceHandler
from endpoints.wechat.inbound_media import MediaRequest
from endpoints.wechat.intake import HttpReply, Runtime, handle_post
from endpoints.wechat.menus import MenuAction, MenuKind
from endpoints.wechat.models import InboundMessage
from endpoints.wechat.outbox import Outbox
from endpoints.wechat.parsers import parse_message
from endpoints.wechat.parts import Part, PartKind, media_part
from endpoints.wechat.retry_tracker import RetryTracker
from endpoints.wechat.settings import (
    DEFAULT_FILE_INPUT_VARIABLE,
    DEFAULT_FULL_ANSWER_DAYS,
    DEFAULT_TEXTS,
    Settings,
    WelcomeMode,
    load_settings,
)
from endpoints.wechat.storage import EndpointStore
from endpoints.wechat.texts import CONVERSATION_CLEARED, HELP_TEMPLATE, MORE_HINT, WELCOME_QUERY
from tests import media_samples, samples
from tests.fake_wechat_api import DEFAULT_APP_ID, DEFAULT_APP_SECRET, MEDIA_UPLOAD, FakeWeChatAPI
from tests.fakes import (
    FakeServices,
    FileHost,
    MemoryStorage,
    ScriptedCaller,
    app_parameters,
    chat_chunks,
)
from tests.signing import WeChatSigner

STT = {"provider": "langgenius/openai/openai", "model": "whisper-1", "model_type": "speech2text"}
TTS = {"provider": "langgenius/openai/openai", "model": "tts-1", "voice": "alloy"}
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
HINT = MORE_HINT.format(keyword="1")


@pytest.fixture(autouse=True)
def fresh_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dify_services, "_PROFILES", dify_services._ProfileCache())


def base(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "app": {"app_id": "app-1", "inputs": {}},
        "wechat_token": "token123",
        "app_id": DEFAULT_APP_ID,
        "app_secret": DEFAULT_APP_SECRET,
    }
    raw.update(overrides)
    return raw


def problems(settings: Settings) -> set[str]:
    return {p.setting for p in settings.problems}


# --- settings ------------------------------------------------------------------------------


def test_rich_settings_defaults() -> None:
    s = load_settings(base())
    assert s.problems == ()
    assert s.file_input_variable == DEFAULT_FILE_INPUT_VARIABLE == "wechat_file"
    assert s.speech_to_text_model is None and s.text_to_speech_model is None
    assert s.voice_reply is False and not s.can_speak
    assert s.menu_click_map == {}
    assert s.welcome_mode is WelcomeMode.TEXT
    assert s.full_answer_link is True
    assert s.full_answer_days == DEFAULT_FULL_ANSWER_DAYS == 7
    assert s.full_answer_seconds == 7 * 86400
    assert s.voice_unavailable_message == DEFAULT_TEXTS["voice_unavailable_message"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", "wechat_file"), ("  ", "wechat_file"), (None, "wechat_file"), (" photo ", "photo")],
)
def test_file_input_variable(value: Any, expected: str) -> None:
    assert load_settings(base(file_input_variable=value)).file_input_variable == expected


def test_model_selectors() -> None:
    s = load_settings(base(speech_to_text_model=STT, text_to_speech_model=TTS))
    assert s.speech_to_text_model == STT and s.text_to_speech_model == TTS
    assert s.speech_to_text_model is not STT  # a copy
    bad: Any
    for bad in ("whisper-1", {"provider": "p"}, {"model": "m"}, {"provider": "", "model": "m"}, []):
        s = load_settings(base(speech_to_text_model=bad, text_to_speech_model=bad))
        assert s.speech_to_text_model is None and s.text_to_speech_model is None


def test_speech_to_text_without_the_app_secret_is_a_problem() -> None:
    s = load_settings(base(app_secret="", speech_to_text_model=STT))
    assert "speech_to_text_model" in problems(s)
    assert not any(p.fatal for p in s.problems)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        ("true", True),
        (" TRUE ", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        (1, True),
        (False, False),
        ("false", False),
        ("0", False),
        ("no", False),
        ("", False),
        (None, False),
    ],
)
def test_voice_reply_flag(value: Any, expected: bool) -> None:
    s = load_settings(base(voice_reply=value, text_to_speech_model=TTS))
    assert s.voice_reply is expected
    assert s.can_speak is expected
    assert "voice_reply" not in problems(s)


@pytest.mark.parametrize(
    "overrides",
    [{"text_to_speech_model": None}, {"app_secret": ""}],
    ids=["no tts model", "no secret"],
)
def test_voice_reply_that_cannot_speak_is_a_problem(overrides: dict[str, Any]) -> None:
    s = load_settings(base(**{"voice_reply": True, "text_to_speech_model": TTS, **overrides}))
    assert s.voice_reply and not s.can_speak
    assert "voice_reply" in problems(s)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, True), ("", True), (True, True), ("true", True), (False, False), ("False", False)],
)
def test_full_answer_link_flag(value: Any, expected: bool) -> None:
    assert load_settings(base(full_answer_link=value)).full_answer_link is expected


@pytest.mark.parametrize(
    ("value", "days", "problem"),
    [
        ("", 7, False),
        ("0.1", 0.1, False),
        ("30", 30, False),
        (" 2.5 ", 2.5, False),
        (3, 3, False),
        ("0.09", 7, True),
        ("31", 7, True),
        ("0", 7, True),
        ("-1", 7, True),
        ("a week", 7, True),
        ("nan", 7, True),
        ("inf", 7, True),
    ],
)
def test_full_answer_days(value: Any, days: float, problem: bool) -> None:
    s = load_settings(base(full_answer_days=value))
    assert s.full_answer_days == days
    assert s.full_answer_seconds == days * 86400
    assert ("full_answer_days" in problems(s)) is problem


def test_menu_click_map_setting() -> None:
    s = load_settings(base(menu_click_map="PRICE=价格?; HOURS=reply:9-18\nNEW=/clear"))
    assert s.menu_click_map == {
        "PRICE": MenuAction(MenuKind.ASK, "价格?"),
        "HOURS": MenuAction(MenuKind.REPLY, "9-18"),
        "NEW": MenuAction(MenuKind.ASK, "/clear"),
    }
    assert s.problems == ()


def test_bad_menu_entries_are_a_problem_naming_them() -> None:
    s = load_settings(base(menu_click_map="GOOD=x\nbad one\n=nokey"))
    [problem] = [p for p in s.problems if p.setting == "menu_click_map"]
    assert "2, 3" in problem.message_en and "2, 3" in problem.message_zh
    assert not problem.fatal
    assert set(s.menu_click_map) == {"GOOD"}


def test_many_bad_menu_entries_are_named_up_to_ten() -> None:
    s = load_settings(base(menu_click_map="\n".join(f"bad{i}" for i in range(15))))
    [problem] = [p for p in s.problems if p.setting == "menu_click_map"]
    assert "1, 2, 3, 4, 5, 6, 7, 8, 9, 10 " in problem.message_en
    assert "11" not in problem.message_en


@pytest.mark.parametrize(
    ("value", "mode", "problem"),
    [
        (None, WelcomeMode.TEXT, False),
        ("", WelcomeMode.TEXT, False),
        ("text", WelcomeMode.TEXT, False),
        ("app", WelcomeMode.APP, False),
        (" opening_statement ", WelcomeMode.OPENING_STATEMENT, False),
        ("greeting", WelcomeMode.TEXT, True),
    ],
)
def test_welcome_mode(value: Any, mode: WelcomeMode, problem: bool) -> None:
    s = load_settings(base(welcome_mode=value))
    assert s.welcome_mode is mode
    assert ("welcome_mode" in problems(s)) is problem


# --- handlers ------------------------------------------------------------------------------


class Context:
    def __init__(self, services: FakeServices | None = None, **overrides: Any) -> None:
        self.settings = load_settings(base(**overrides))
        self.store = EndpointStore(MemoryStorage(), "ep-1")
        self.conversations = ConversationStore(self.store)
        outbox = Outbox(self.store, RetryTracker(self.store))
        self.services = services
        self.ctx = HandlerContext(self.settings, self.conversations, outbox, services)


def message(xml: str) -> InboundMessage:
    return parse_message(xml)


def voice(media_id: str = "media_id", recognition: str | None = None, msg_id: int = 1) -> str:
    extra = f"<Recognition><![CDATA[{recognition}]]></Recognition>" if recognition else ""
    return (
        f"<xml><ToUserName><![CDATA[{samples.TO}]]></ToUserName>"
        f"<FromUserName><![CDATA[{samples.USER}]]></FromUserName>"
        f"<CreateTime>1348831860</CreateTime><MsgType><![CDATA[voice]]></MsgType>"
        f"<MediaId><![CDATA[{media_id}]]></MediaId><Format><![CDATA[amr]]></Format>{extra}"
        f"<MsgId>{msg_id}</MsgId></xml>"
    )


def image_xml(media_id: str = "media_id", pic_url: str = "http://mmbiz.qpic.cn/pic.jpg") -> str:
    return (
        samples.of(samples.IMAGE)
        .replace("[media_id]", f"[{media_id}]")
        .replace("http://mmbiz.qpic.cn/pic.jpg", pic_url)
    )


def test_voice_with_wechat_recognition_is_asked_as_spoken_text() -> None:
    c = Context(app_secret="")
    outcome = VoiceHandler().handle(message(voice(recognition=" 今天天气 ")), c.ctx)
    assert outcome == AskApp(
        "今天天气", metadata={"wechat_voice_transcript": "今天天气"}, spoken=True
    )


def test_voice_without_recognition_is_transcribed_when_set_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(audio, "available", lambda: True)
    c = Context(speech_to_text_model=STT)
    outcome = VoiceHandler().handle(message(voice("MID")), c.ctx)
    assert outcome == AskApp("[语音]", media=MediaRequest("voice", "MID"), spoken=True)


@pytest.mark.parametrize(
    ("overrides", "library", "media_id"),
    [
        ({"app_secret": ""}, True, "MID"),
        ({}, True, "MID"),  # no speech-to-text model
        ({"speech_to_text_model": STT}, False, "MID"),  # no PyAV
        ({"speech_to_text_model": STT}, True, ""),  # nothing to download
    ],
    ids=["no secret", "no model", "no library", "no media id"],
)
def test_voice_that_cannot_be_transcribed_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any], library: bool, media_id: str
) -> None:
    monkeypatch.setattr(audio, "available", lambda: library)
    c = Context(voice_unavailable_message="开启语音识别", **overrides)
    assert VoiceHandler().handle(message(voice(media_id)), c.ctx) == Reply("开启语音识别")


def test_image_is_asked_with_its_url_and_media() -> None:
    c = Context()
    outcome = ImageHandler().handle(message(image_xml("MID")), c.ctx)
    assert outcome == AskApp(
        "[图片] http://mmbiz.qpic.cn/pic.jpg",
        media=MediaRequest("image", "MID", "http://mmbiz.qpic.cn/pic.jpg"),
    )


def test_image_without_a_pic_url() -> None:
    c = Context()
    outcome = ImageHandler().handle(message(image_xml("MID", pic_url="")), c.ctx)
    assert isinstance(outcome, AskApp) and outcome.query == "[图片]"
    assert outcome.media == MediaRequest("image", "MID", "")


@pytest.mark.parametrize(
    ("template", "label"), [(samples.VIDEO, "[视频]"), (samples.SHORTVIDEO, "[小视频]")]
)
def test_video_is_described_with_its_media(template: str, label: str) -> None:
    c = Context()
    outcome = VideoHandler().handle(message(samples.of(template)), c.ctx)
    assert outcome == AskApp(f"{label} 用户发来一段视频", media=MediaRequest("video", "media_id"))


# ClickHandler


def click(key: str, ts: int = 1) -> InboundMessage:
    return message(samples.event("CLICK", key, ts=ts))


MENU = (
    "PRICE=你们的价格是多少？; HOURS=reply:营业时间 9:00-18:00\n"
    "NEW=/clear\nHELPME=／帮助\nQUIET=reply:"
)


def test_a_mapped_click_asks_the_app_with_its_text() -> None:
    c = Context(menu_click_map=MENU)
    assert ClickHandler().handle(click("PRICE"), c.ctx) == AskApp("你们的价格是多少？")


def test_a_mapped_reply_answers_without_the_app() -> None:
    c = Context(menu_click_map=MENU)
    assert ClickHandler().handle(click("HOURS"), c.ctx) == Reply("营业时间 9:00-18:00")
    assert ClickHandler().handle(click("QUIET"), c.ctx) == SILENT


def test_mapped_commands_run() -> None:
    c = Context(menu_click_map=MENU, fetch_keyword="更多")
    c.conversations.set(samples.USER, "conv-1")
    assert ClickHandler().handle(click("NEW"), c.ctx) == Reply(CONVERSATION_CLEARED)
    assert c.conversations.get(samples.USER) is None
    assert ClickHandler().handle(click("HELPME"), c.ctx) == Reply(
        HELP_TEMPLATE.format(keyword="更多")
    )


@pytest.mark.parametrize("mode", ["query", "ignore"])
def test_reserved_keys_work_without_an_entry_in_both_modes(mode: str) -> None:
    c = Context(click_event_mode=mode)
    c.conversations.set(samples.USER, "conv-1")
    assert ClickHandler().handle(click("new_conversation"), c.ctx) == Reply(CONVERSATION_CLEARED)
    assert c.conversations.get(samples.USER) is None
    assert ClickHandler().handle(click("HELP"), c.ctx) == Reply(HELP_TEMPLATE.format(keyword="1"))


def test_a_mapped_key_works_even_when_clicks_are_ignored() -> None:
    c = Context(menu_click_map=MENU, click_event_mode="ignore")
    assert ClickHandler().handle(click("PRICE"), c.ctx) == AskApp("你们的价格是多少？")
    assert ClickHandler().handle(click("OTHER"), c.ctx) == SILENT


def test_an_unmapped_key_follows_the_click_mode() -> None:
    c = Context(menu_click_map=MENU)
    assert ClickHandler().handle(click("OTHER"), c.ctx) == AskApp("OTHER")
    assert ClickHandler().handle(click(""), c.ctx) == SILENT


def test_a_mapped_entry_overrides_a_reserved_key() -> None:
    c = Context(menu_click_map="help=reply:请致电 400-000-0000")
    assert ClickHandler().handle(click("help"), c.ctx) == Reply("请致电 400-000-0000")


# SubscribeHandler


def subscribe(key: str = "qrscene_shop1", ts: int = 1) -> InboundMessage:
    return message(samples.event("subscribe", key, ts=ts))


def test_welcome_text_mode() -> None:
    services = FakeServices(parameters=app_parameters(opening_statement="开场白"))
    c = Context(services, welcome_message="欢迎来自 {qr_scene} 的你")
    assert SubscribeHandler().handle(subscribe(), c.ctx) == Reply("欢迎来自 shop1 的你")
    assert services.fetches == []


def test_welcome_app_mode_asks_the_app() -> None:
    services = FakeServices(parameters=app_parameters(opening_statement="开场白"))
    c = Context(services, welcome_mode="app")
    assert SubscribeHandler().handle(subscribe(), c.ctx) == AskApp(WELCOME_QUERY)
    assert services.fetches == []


def test_welcome_with_the_opening_statement() -> None:
    services = FakeServices(
        parameters=app_parameters(opening_statement="# 你好\n\n我是**小助手**。")
    )
    c = Context(services, welcome_mode="opening_statement", welcome_message="欢迎")
    assert SubscribeHandler().handle(subscribe(), c.ctx) == Reply("【你好】\n\n我是小助手。")
    assert SubscribeHandler().handle(subscribe(ts=2), c.ctx) == Reply("【你好】\n\n我是小助手。")
    assert services.fetches == ["app-1"]  # cached


@pytest.mark.parametrize("failing", [False, True], ids=["empty statement", "fetch_app fails"])
def test_welcome_falls_back_to_the_text(failing: bool) -> None:
    services = FakeServices(parameters=app_parameters(opening_statement="  \n"))
    if failing:
        services.fail("fetch_app", times=None)
    c = Context(services, welcome_mode="opening_statement", welcome_message="欢迎 {qr_scene}")
    assert SubscribeHandler().handle(subscribe(), c.ctx) == Reply("欢迎 shop1")


def test_welcome_without_services_falls_back_to_the_text() -> None:
    c = Context(None, welcome_mode="opening_statement", welcome_message="欢迎")
    assert SubscribeHandler().handle(subscribe(), c.ctx) == Reply("欢迎")


def test_no_opening_statement_and_no_welcome_is_silent() -> None:
    services = FakeServices(parameters=app_parameters(opening_statement=""))
    c = Context(services, welcome_mode="opening_statement", welcome_message="")
    assert SubscribeHandler().handle(subscribe(), c.ctx) == SILENT


# --- part_decision ---------------------------------------------------------------------------


def test_part_decision() -> None:
    assert part_decision("文字", HINT) == Decision(Action.REPLY, "文字" + HINT)
    image = part_decision(media_part(PartKind.IMAGE, "IMG"), HINT)
    assert image == Decision(Action.REPLY, "", media=Part(PartKind.IMAGE, "IMG"))
    assert part_decision(media_part(PartKind.VOICE, "VOX")).media == Part(PartKind.VOICE, "VOX")


# --- the whole pipeline ---------------------------------------------------------------------


@pytest.fixture(autouse=True)
def roomy_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Media work fits easily; a settled answer is replied at once, so nothing waits."""
    monkeypatch.setattr(timing, "DELIVERY_DEADLINE", 4.0)
    monkeypatch.setattr(timing, "STORE_GUARD", 4.5)
    monkeypatch.setattr(timing, "HOLD_UNTIL", 5.0)
    monkeypatch.setattr(timing, "POLL_INTERVAL", 0.05)


@pytest.fixture
def wechat() -> Iterator[FakeWeChatAPI]:
    with FakeWeChatAPI() as fake:
        yield fake


@pytest.fixture
def host() -> Iterator[FileHost]:
    with FileHost() as files:
        yield files


def signed_path(name: str) -> str:
    return f"/files/tools/{name}?timestamp=1700000000&nonce=abc&sign=c2lnbmF0dXJl"


def message_file(url: str) -> dict[str, Any]:
    return {
        "event": "message_file",
        "id": "f1",
        "type": "image",
        "belongs_to": "assistant",
        "url": url,
        "conversation_id": "conv-1",
    }


class Harness:
    def __init__(
        self,
        wechat: FakeWeChatAPI,
        respond: Callable[[dict[str, Any]], list[Any]] | None = None,
        services: FakeServices | None = None,
        hook_url: str = "",
        no_services: bool = False,
        **settings: Any,
    ) -> None:
        raw = base(wechat_api_base_url=wechat.base_url, **settings)
        self.settings = load_settings(raw)
        self.storage = MemoryStorage()
        self.caller = ScriptedCaller(respond)
        self.services = services or FakeServices()
        self.signer = WeChatSigner("token123", DEFAULT_APP_ID, AES_KEY)
        self.hook_url = hook_url
        self.runtime = Runtime(
            self.storage,
            "ep-1",
            self.caller,
            use_worker=False,
            services=None if no_services else self.services,
        )

    def post(self, xml: str, mode: str = "plain") -> HttpReply:
        request = self.signer.post(xml, mode)
        if self.hook_url:
            request = replace(request, headers={"Dify-Hook-Url": self.hook_url})
        return handle_post(request, self.settings, self.runtime)

    def say(self, xml: str, mode: str = "plain") -> dict[str, Any] | None:
        """One delivery; the reply's fields as WeChat reads them (None for success)."""
        reply = self.post(xml, mode)
        assert reply.status == 200, reply
        if reply.body == "success":
            return None
        assert reply.content_type.startswith("application/xml")
        fields = self.signer.read_reply(reply.body, encrypted=mode != "plain")
        assert fields["ToUserName"] == samples.USER
        assert fields["FromUserName"] == samples.TO
        return fields

    def text(self, xml: str, mode: str = "plain") -> str:
        fields = self.say(xml, mode)
        assert fields is not None and fields["MsgType"] == "text", fields
        return str(fields["Content"])


def test_an_answer_that_is_a_picture_is_a_passive_image_reply(
    wechat: FakeWeChatAPI, host: FileHost
) -> None:
    png = media_samples.png_image()
    url = host.add(signed_path("a.png"), png, "image/png")
    h = Harness(wechat, lambda call: [message_file(url), *chat_chunks("")])
    fields = h.say(samples.text("画一只猫", msg_id=1))
    assert fields is not None and fields["MsgType"] == "image"
    stored = wechat.media(fields["Image"]["MediaId"])
    assert stored is not None and stored.kind == "image" and stored.content == png


@pytest.mark.parametrize("mode", ["compatible", "safe"])
def test_media_replies_are_encrypted_like_text(
    wechat: FakeWeChatAPI, host: FileHost, mode: str
) -> None:
    url = host.add(signed_path("a.png"), media_samples.png_image(), "image/png")
    h = Harness(
        wechat, lambda call: [message_file(url), *chat_chunks("")], encoding_aes_key=AES_KEY
    )
    reply = h.post(samples.text("画", msg_id=2), mode)
    assert "<Encrypt>" in reply.body and "<Image>" not in reply.body
    fields = h.signer.read_reply(reply.body, encrypted=True)
    assert fields["MsgType"] == "image" and wechat.media(fields["Image"]["MediaId"]) is not None


def test_text_then_pictures_are_fetched_with_the_keyword(
    wechat: FakeWeChatAPI, host: FileHost
) -> None:
    a = host.add(signed_path("a.png"), media_samples.png_image(), "image/png")
    b = host.add(signed_path("b.gif"), b"GIF89a" + b"\0" * 32, "image/gif")

    def respond(call: dict[str, Any]) -> list[Any]:
        if call["query"] != "图":
            return chat_chunks(f"echo: {call['query']}")
        return [message_file(a), *chat_chunks(f"两张图 ![b]({b})")]

    h = Harness(wechat, respond)
    assert h.text(samples.text("图", msg_id=10)) == "两张图" + HINT
    first = h.say(samples.text("1", msg_id=11))
    second = h.say(samples.text("1", msg_id=12))
    assert first is not None and first["MsgType"] == "image"
    assert second is not None and second["MsgType"] == "image"
    contents = [wechat.media(f["Image"]["MediaId"]) for f in (first, second)]
    assert [m.content[:4] for m in contents if m is not None] == [b"\x89PNG", b"GIF8"]
    # WeChat's retry of a fetch gets the same picture, not the next part
    assert h.say(samples.text("1", msg_id=12)) == second
    # nothing left: "1" goes to the app
    assert h.text(samples.text("1", msg_id=13)) == "echo: 1"
    assert len(h.caller.calls) == 2


@pytest.mark.parametrize("mode", ["plain", "safe"])
def test_a_spoken_question_gets_text_then_voice(wechat: FakeWeChatAPI, mode: str) -> None:
    if not audio.available():
        pytest.skip("PyAV is needed to make an MP3")
    mp3 = media_samples.mp3_clip(0.5)
    services = FakeServices(speech=mp3)
    h = Harness(
        wechat,
        lambda call: chat_chunks("明天有雨，记得带伞。"),
        services,
        voice_reply=True,
        text_to_speech_model=TTS,
        encoding_aes_key=AES_KEY if mode != "plain" else "",
    )
    first = h.text(voice(recognition="明天天气", msg_id=20), mode)
    assert first == "明天有雨，记得带伞。" + HINT
    fields = h.say(samples.text("1", msg_id=21), mode)
    assert fields is not None and fields["MsgType"] == "voice"
    stored = wechat.media(fields["Voice"]["MediaId"])
    assert stored is not None and stored.kind == "voice" and stored.content == mp3
    assert services.speeches == [(TTS, "明天有雨，记得带伞。")]
    # a typed question gets no voice
    assert h.text(samples.text("后天呢", msg_id=22), mode) == "明天有雨，记得带伞。"
    assert len(services.speeches) == 1


def test_a_voice_without_recognition_is_transcribed_and_asked(wechat: FakeWeChatAPI) -> None:
    if not audio.available():
        pytest.skip("PyAV is needed to convert AMR")
    media_id = wechat.add_media(media_samples.amr_clip(1.0), "audio/amr", kind="voice")
    services = FakeServices(transcript="附近有什么好吃的")
    h = Harness(wechat, None, services, speech_to_text_model=STT)
    assert h.text(voice(media_id, msg_id=30)) == "echo: 附近有什么好吃的"
    [call] = h.caller.calls
    assert call["inputs"]["wechat_voice_transcript"] == "附近有什么好吃的"
    assert call["inputs"]["wechat_msg_type"] == "voice"
    [(model, wav)] = services.transcriptions
    assert model == STT and wav[:4] == b"RIFF"


def test_a_voice_that_cannot_be_transcribed_gets_the_fallback(wechat: FakeWeChatAPI) -> None:
    if not audio.available():
        pytest.skip("PyAV is needed to convert AMR")
    media_id = wechat.add_media(media_samples.amr_clip(0.3), "audio/amr", kind="voice")
    services = FakeServices()
    services.fail("speech_to_text", times=None)
    h = Harness(wechat, None, services, speech_to_text_model=STT, voice_fallback_message="没听清")
    xml = voice(media_id, msg_id=31)
    assert h.text(xml) == "没听清"
    assert h.text(xml) == "没听清"  # WeChat's retry gets the same, without a second attempt
    assert h.caller.calls == [] and len(services.transcriptions) == 1


def test_a_picture_reaches_the_app_as_a_file_input(wechat: FakeWeChatAPI) -> None:
    png = media_samples.png_image()
    media_id = wechat.add_media(png, "image/png")
    services = FakeServices(parameters=app_parameters({"wechat_file": "file"}))
    h = Harness(wechat, None, services)
    reply = h.text(image_xml(media_id))
    assert reply == "echo: [图片] http://mmbiz.qpic.cn/pic.jpg"
    inputs = h.caller.calls[0]["inputs"]
    assert inputs["wechat_file"] == {
        "tool_file_id": "file-1",
        "transfer_method": "tool_file",
        "type": "image",
    }
    assert inputs["wechat_pic_url"] == "http://mmbiz.qpic.cn/pic.jpg"
    assert services.uploads == [("wechat-image.png", png, "image/png")]


def test_without_dify_services_a_picture_is_passed_by_url(wechat: FakeWeChatAPI) -> None:
    media_id = wechat.add_media(media_samples.png_image(), "image/png")
    h = Harness(wechat, no_services=True)
    assert h.text(image_xml(media_id)) == "echo: [图片] http://mmbiz.qpic.cn/pic.jpg"
    assert "wechat_file" not in h.caller.calls[0]["inputs"]
    assert h.services.fetches == [] and h.services.uploads == []


def test_welcome_with_the_opening_statement_end_to_end(wechat: FakeWeChatAPI) -> None:
    services = FakeServices(parameters=app_parameters(opening_statement="你好，我是**助手**。"))
    h = Harness(wechat, None, services, welcome_mode="opening_statement")
    assert h.text(samples.event("subscribe", ts=int(1e9))) == "你好，我是助手。"
    assert h.caller.calls == []


def test_welcome_by_the_app_end_to_end(wechat: FakeWeChatAPI) -> None:
    h = Harness(wechat, welcome_mode="app")
    assert h.text(samples.event("subscribe", "qrscene_x", ts=int(1e9))) == f"echo: {WELCOME_QUERY}"
    inputs = h.caller.calls[0]["inputs"]
    assert inputs["wechat_event"] == "subscribe" and inputs["wechat_qr_scene"] == "x"


def test_menu_clicks_end_to_end(wechat: FakeWeChatAPI) -> None:
    h = Harness(wechat, menu_click_map=MENU)
    assert h.text(samples.event("CLICK", "HOURS", ts=1)) == "营业时间 9:00-18:00"
    assert h.text(samples.event("CLICK", "PRICE", ts=2)) == "echo: 你们的价格是多少？"
    assert h.say(samples.event("CLICK", "QUIET", ts=3)) is None
    assert [c["query"] for c in h.caller.calls] == ["你们的价格是多少？"]


def test_a_long_answer_links_to_its_page(wechat: FakeWeChatAPI) -> None:
    long = "\n\n".join(f"第{i}段：" + "这是很长的回答。" * 80 for i in range(8))
    hook = "https://dify.example.com/e/abc123/wechat"
    h = Harness(wechat, lambda call: chat_chunks(long), hook_url=hook + "?signature=x")
    text = h.text(samples.text("长", msg_id=40))
    assert utf8_len(text) <= TEXT_BUDGET_BYTES
    match = re.search(r'<a href="([^"]+)">阅读全文</a>$', text)
    assert match and match.group(1).startswith(hook + "/answer/")
    assert HINT not in text  # the page holds the rest: nothing waits for the keyword
    token = match.group(1).rpartition("/")[2]
    store = EndpointStore(h.storage, "ep-1")
    page = serve_answer_page(token, h.settings, store, "ep-1", h.runtime.clock())
    assert page.status == 200 and "第7段" in page.body
    assert h.text(samples.text("1", msg_id=41)).startswith("第0段")  # "1" was a question
    assert [c["query"] for c in h.caller.calls] == ["长", "1"]


def test_no_media_goes_out_when_wechat_refuses_uploads(
    wechat: FakeWeChatAPI, host: FileHost
) -> None:
    url = host.add(signed_path("a.png"), media_samples.png_image(), "image/png")
    wechat.fail(45009, times=10, path=MEDIA_UPLOAD)
    h = Harness(wechat, lambda call: [message_file(url), *chat_chunks("看图")])
    text = h.text(samples.text("图", msg_id=50))
    assert text.startswith("看图\n\n[图片]") and url in text
