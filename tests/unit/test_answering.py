"""From a question to the parts WeChat gets (endpoints/wechat/answering.py): media
prepared, the app asked, its answer shaped into text, image and voice parts, and the
「阅读全文」 page for answers WeChat cannot show whole."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from endpoints.wechat import audio, dify_services
from endpoints.wechat.answer_pages import AnswerPages, page_key, read_token
from endpoints.wechat.answering import (
    AnswerKit,
    Question,
    finish_answer,
    paginate,
    paginate_markdown,
)
from endpoints.wechat.conversations import ConversationStore
from endpoints.wechat.dify_app import AnswerFile, AppAnswer, AppCancelled, DifyApp
from endpoints.wechat.formatters import (
    TEXT_BUDGET_BYTES,
    markdown_to_wechat_text,
    split_text,
    utf8_len,
)
from endpoints.wechat.inbound_media import Download, MediaRequest, Prepared, TooLarge
from endpoints.wechat.outbound_media import MediaPublisher
from endpoints.wechat.parts import PartKind, is_text, read_part
from endpoints.wechat.retry_tracker import Job, JobState
from endpoints.wechat.settings import load_settings
from endpoints.wechat.storage import EndpointStore
from endpoints.wechat.texts import EMPTY_ANSWER, MORE_HINT, PUSH_MORE_HINT
from tests import media_samples
from tests.fake_wechat_api import DEFAULT_APP_ID, DEFAULT_APP_SECRET, MEDIA_UPLOAD, FakeWeChatAPI
from tests.fakes import (
    FakeClock,
    FakeServices,
    MemoryStorage,
    ScriptedCaller,
    app_parameters,
    chat_chunks,
)

ENDPOINT = "3f1c9a2e-0000-4000-8000-1234567890ab"
HOOK = "https://dify.example.com/e/abc123/wechat?signature=s&timestamp=1&nonce=2"
PAGE_PREFIX = "https://dify.example.com/e/abc123/wechat/answer/"
DIFY = "https://dify.example.com"
TTS_MODEL = {"provider": "p", "model": "tts-1", "voice": "alloy"}
STT_MODEL = {"provider": "p", "model": "whisper-1"}
HINT_RESERVE = max(utf8_len(MORE_HINT.format(keyword="1")), utf8_len(PUSH_MORE_HINT))
LINK_RE = re.compile(r'\n\n<a href="([^"]+)">阅读全文</a>$')

PUSH_QUOTA = 5  # an Official Account's Settings.push_quota

#: An answer of more than PUSH_QUOTA WeChat messages.
LONG = "\n\n".join(f"第{i}段：" + "这是一段很长的回答内容，讲得很细。" * 40 for i in range(8))
#: An answer of two or three messages.
MEDIUM = "\n\n".join(f"第{i}段：" + "这是一段较长的回答。" * 45 for i in range(2))
TABLE = "| 城市 | 气温 |\n|---|---|\n| 北京 | 25 |\n| 上海 | 28 |"


def signed(name: str) -> str:
    return f"{DIFY}/files/tools/{name}?timestamp=1700000000&nonce=abc&sign=c2lnbmF0dXJl"


@pytest.fixture(autouse=True)
def fresh_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dify_services, "_PROFILES", dify_services._ProfileCache())


@pytest.fixture
def wechat() -> Iterator[FakeWeChatAPI]:
    with FakeWeChatAPI() as fake:
        yield fake


class Fetcher:
    def __init__(self, answers: dict[str, Download | BaseException] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[str] = []

    def __call__(self, url: str, limit: int) -> Download:
        self.calls.append(url)
        answer = self.answers.get(url, OSError("HTTP 404"))
        if isinstance(answer, BaseException):
            raise answer
        if len(answer.content) > limit:
            raise TooLarge
        return answer


class Kit:
    """An AnswerKit with its fakes at hand."""

    def __init__(
        self,
        wechat: FakeWeChatAPI | None = None,
        *,
        services: FakeServices | None = None,
        no_services: bool = False,
        images: dict[str, Download | BaseException] | None = None,
        **overrides: Any,
    ) -> None:
        raw: dict[str, Any] = {
            "app": {"app_id": "app-1", "inputs": {}},
            "wechat_token": "token123",
            "app_id": DEFAULT_APP_ID,
            "app_secret": DEFAULT_APP_SECRET,
            "encoding_aes_key": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
            "speech_to_text_model": STT_MODEL,
            "text_to_speech_model": TTS_MODEL,
        }
        if wechat is not None:
            raw["wechat_api_base_url"] = wechat.base_url
        raw.update(overrides)
        self.settings = load_settings(raw)
        self.storage = MemoryStorage()
        self.store = EndpointStore(self.storage, ENDPOINT)
        self.clock = FakeClock()
        self.services = None if no_services else (services or FakeServices())
        self.fetch = Fetcher(images)
        self.kit = AnswerKit(
            self.settings,
            self.store,
            ENDPOINT,
            self.services,
            self.clock,
            publisher=MediaPublisher(self.settings, self.store, self.fetch),
        )

    def compose(self, answer: AppAnswer | str, **question: Any) -> list[str]:
        if isinstance(answer, str):
            answer = AppAnswer(answer, "conv-1")
        fields: dict[str, Any] = {"openid": "oUSER", "query": "问题", "ref": "r"}
        fields.update(question)
        return self.kit.compose(Question(**fields), fields["query"], answer, lambda: False)

    def page_of(self, part: str) -> tuple[str, Any]:
        """The full-answer URL at the end of ``part`` and the page it opens."""
        match = LINK_RE.search(part)
        assert match, part[-200:]
        url = match.group(1)
        assert url.startswith(PAGE_PREFIX)
        token = url[len(PAGE_PREFIX) :]
        page_id = read_token(page_key(self.settings, ENDPOINT), token, self.clock())
        assert page_id is not None
        return url, AnswerPages(self.store, self.clock).load(page_id, self.clock())

    def pages_saved(self) -> int:
        return sum(1 for key in self.storage.data if "/page/" in key)


def texts(parts: list[str]) -> list[str]:
    return [p for p in parts if is_text(p)]


# --- paginate ------------------------------------------------------------------------------


def test_paginate_short_and_empty() -> None:
    assert paginate("你好", "1") == ["你好"]
    assert paginate("", "1") == [EMPTY_ANSWER]


def test_paginate_leaves_room_for_a_hint_and_more() -> None:
    parts = paginate(LONG, "1")
    assert len(parts) > PUSH_QUOTA
    assert all(utf8_len(p) <= TEXT_BUDGET_BYTES - HINT_RESERVE for p in parts)
    tighter = paginate(LONG, "1", extra_reserve=300)
    assert all(utf8_len(p) <= TEXT_BUDGET_BYTES - HINT_RESERVE - 300 for p in tighter)
    assert len(tighter) >= len(parts)
    long_keyword = paginate(LONG, "获取后续内容的关键词")
    reserve = utf8_len(MORE_HINT.format(keyword="获取后续内容的关键词"))
    assert all(utf8_len(p) <= TEXT_BUDGET_BYTES - reserve for p in long_keyword)


# --- prepare -----------------------------------------------------------------------------


def test_prepare_without_media_or_without_services_keeps_the_query() -> None:
    k = Kit()
    assert k.kit.prepare(Question("o", "q")) == Prepared("q")
    bare = Kit(no_services=True)
    media = MediaRequest("image", "MID", "http://mmbiz.qpic.cn/x")
    assert bare.kit.prepare(Question("o", "q", media=media)) == Prepared("q")


def test_prepare_hands_media_to_the_preparer(wechat: FakeWeChatAPI) -> None:
    services = FakeServices(parameters=app_parameters({"wechat_file": "file"}))
    k = Kit(wechat, services=services)
    media_id = wechat.add_media(media_samples.png_image(), "image/png")
    prepared = k.kit.prepare(Question("o", "[图片]", media=MediaRequest("image", media_id)))
    assert prepared.query == "[图片]" and set(prepared.files) == {"wechat_file"}
    assert len(services.uploads) == 1


# --- compose: text -------------------------------------------------------------------------


def test_a_short_answer_is_one_rendered_part_without_a_link() -> None:
    k = Kit()
    assert k.compose("**你好**，[官网](https://example.com)", page_base=HOOK) == [
        "你好，官网 (https://example.com)"
    ]
    assert k.pages_saved() == 0


def test_an_empty_answer() -> None:
    assert Kit().compose("  \n") == [EMPTY_ANSWER]


def test_a_long_answer_is_its_first_part_and_a_full_answer_link(wechat: FakeWeChatAPI) -> None:
    k = Kit(wechat)
    query = "  请详细  介绍一下\n" + "这座城市的历史和文化，" * 5
    parts = k.compose(LONG, query=query, page_base=HOOK)
    assert len(parts) == 1
    assert utf8_len(parts[0]) <= TEXT_BUDGET_BYTES - HINT_RESERVE
    assert parts[0].startswith("第0段：")
    url, page = k.page_of(parts[0])
    assert "signature" not in url and "?" not in url
    assert page is not None
    assert page.markdown == LONG
    assert page.title == ("请详细 介绍一下 " + "这座城市的历史和文化，" * 5)[:40] + "…"
    assert page.expires_at == k.clock() + 7 * 86400
    assert k.pages_saved() == 1


def test_the_page_lives_as_long_as_the_setting_says() -> None:
    k = Kit(full_answer_days="0.5")
    parts = k.compose(LONG, page_base=HOOK)
    _, page = k.page_of(parts[0])
    assert page.expires_at == k.clock() + 43200
    k.clock.advance(43201)
    token = LINK_RE.search(parts[0]).group(1)[len(PAGE_PREFIX) :]  # type: ignore[union-attr]
    assert read_token(page_key(k.settings, ENDPOINT), token, k.clock()) is None


def test_a_table_gets_the_link_on_its_only_part() -> None:
    k = Kit()
    [part] = k.compose(f"天气如下：\n\n{TABLE}", page_base=HOOK)
    assert part.startswith("天气如下：\n\n城市：北京")
    _, page = k.page_of(part)
    assert TABLE in page.markdown


def test_a_few_parts_with_a_table_get_the_link_on_the_last_part() -> None:
    k = Kit()
    parts = k.compose(f"{MEDIUM}\n\n{TABLE}", page_base=HOOK)
    assert 2 <= len(parts) <= PUSH_QUOTA
    assert all(LINK_RE.search(p) is None for p in parts[:-1])
    k.page_of(parts[-1])
    assert all(utf8_len(p) <= TEXT_BUDGET_BYTES - HINT_RESERVE for p in parts)


def test_exactly_push_quota_parts_keep_every_part_and_link_the_last() -> None:
    five = "\n\n".join(f"第{i}段：" + "这是一段较长的回答。" * 50 for i in range(PUSH_QUOTA))
    k = Kit()
    parts = k.compose(f"{five}\n\n{TABLE}", page_base=HOOK)
    assert len(parts) == PUSH_QUOTA
    assert [p[:3] for p in parts] == [f"第{i}段" for i in range(PUSH_QUOTA)]
    k.page_of(parts[-1])


def test_a_few_plain_parts_get_no_link() -> None:
    k = Kit()
    parts = k.compose(MEDIUM, page_base=HOOK)
    assert len(parts) >= 2 and all("阅读全文" not in p for p in parts)
    assert k.pages_saved() == 0


def test_without_the_hook_url_there_is_no_link_and_every_part_stays() -> None:
    k = Kit()
    parts = k.compose(LONG, page_base="")
    assert len(parts) > PUSH_QUOTA and all("阅读全文" not in p for p in parts)
    assert k.pages_saved() == 0


def test_a_hook_url_of_another_endpoint_gives_no_link() -> None:
    k = Kit()
    parts = k.compose(LONG, page_base="https://dify.example.com/e/abc123/other")
    assert len(parts) > PUSH_QUOTA and all("阅读全文" not in p for p in parts)


@pytest.mark.parametrize("off", [False, "false", "0", "off"])
def test_with_full_answer_link_off_there_is_no_link_and_no_page(off: Any) -> None:
    k = Kit(full_answer_link=off)
    parts = k.compose(LONG + "\n\n" + TABLE, page_base=HOOK)
    assert len(parts) > PUSH_QUOTA and all("阅读全文" not in p for p in parts)
    assert k.pages_saved() == 0


def test_a_page_that_cannot_be_saved_gives_no_link() -> None:
    k = Kit()
    real_set = k.storage.set

    def no_pages(key: str, val: bytes) -> None:
        if "/page/" in key:
            raise RuntimeError("storage quota exceeded")
        real_set(key, val)

    k.storage.set = no_pages  # type: ignore[method-assign]
    parts = k.compose(LONG, page_base=HOOK)
    assert len(parts) > PUSH_QUOTA and all("阅读全文" not in p for p in parts)


# --- compose: images ---------------------------------------------------------------------


def test_images_of_the_answer_follow_the_text(wechat: FakeWeChatAPI) -> None:
    a, b = signed("a.png"), signed("b.png")
    png = media_samples.png_image()
    k = Kit(wechat, images={a: Download(png, "image/png"), b: Download(png, "image/png")})
    answer = AppAnswer(
        f"这是示意图：\n\n![示意图]({b})\n\n请查收。",
        "conv-1",
        files=(AnswerFile(url=a, kind="image", mimetype="image/png"),),
    )
    parts = k.compose(answer, page_base=HOOK)
    assert parts[0] == "这是示意图：\n\n请查收。"  # the sent picture left the text
    assert [read_part(p).kind for p in parts[1:]] == [PartKind.IMAGE, PartKind.IMAGE]
    assert k.fetch.calls == [a, b]  # message files first, then markdown images
    assert k.pages_saved() == 0  # nothing left that text cannot show


def test_an_answer_of_pictures_only_is_pictures(wechat: FakeWeChatAPI) -> None:
    a = signed("a.png")
    k = Kit(wechat, images={a: Download(media_samples.png_image(), "image/png")})
    parts = k.compose(AppAnswer("", "c", files=(AnswerFile(url=a, kind="image"),)))
    assert [read_part(p).kind for p in parts] == [PartKind.IMAGE]
    parts = k.compose(f"![]({a})", page_base=HOOK)  # markdown images: Dify's host only
    assert [read_part(p).kind for p in parts] == [PartKind.IMAGE]


def test_a_picture_that_cannot_be_sent_stays_a_link_with_the_page(
    wechat: FakeWeChatAPI,
) -> None:
    a = signed("a.webp")
    k = Kit(wechat, images={a: Download(b"RIFF....WEBP", "image/webp")})
    answer = AppAnswer("看图。", "c", files=(AnswerFile(url=a, kind="image"),))
    [part] = k.compose(answer, page_base=HOOK)
    assert part.startswith("看图。\n\n[图片]") and a in part
    _, page = k.page_of(part)
    assert a in page.markdown
    assert wechat.count(MEDIA_UPLOAD) == 0


def test_a_markdown_picture_that_cannot_be_sent_is_not_repeated(wechat: FakeWeChatAPI) -> None:
    a = signed("a.png")
    k = Kit(wechat, images={a: TooLarge()})
    [part] = k.compose(f"看图 ![示意]({a})")
    assert part == f"看图 [图片] 示意 ({a})"


def test_without_an_app_secret_pictures_are_links(wechat: FakeWeChatAPI) -> None:
    a, b = signed("a.png"), signed("b.png")
    k = Kit(wechat, app_secret="")
    answer = AppAnswer(f"图一 ![一]({b})", "c", files=(AnswerFile(url=a, kind="image"),))
    parts = k.compose(answer)
    assert all(is_text(p) for p in parts)
    assert a in parts[0] and b in parts[0]
    assert parts[0].count(b) == 1
    assert k.fetch.calls == []


def test_at_most_three_pictures_the_rest_are_links(wechat: FakeWeChatAPI) -> None:
    urls = [signed(f"{i}.png") for i in range(5)]
    png = Download(media_samples.png_image(), "image/png")
    k = Kit(wechat, images=dict.fromkeys(urls, png))
    answer = AppAnswer("五张图", "c", files=tuple(AnswerFile(url=u, kind="image") for u in urls))
    parts = k.compose(answer)
    assert [read_part(p).kind for p in parts] == [PartKind.TEXT] + [PartKind.IMAGE] * 3
    assert urls[3] in parts[0] and urls[4] in parts[0]
    assert urls[0] not in parts[0]


def test_a_long_answer_with_pictures_is_first_part_link_then_pictures(
    wechat: FakeWeChatAPI,
) -> None:
    a = signed("a.png")
    k = Kit(wechat, images={a: Download(media_samples.png_image(), "image/png")})
    answer = AppAnswer(LONG, "c", files=(AnswerFile(url=a, kind="image"),))
    parts = k.compose(answer, page_base=HOOK)
    assert [read_part(p).kind for p in parts] == [PartKind.TEXT, PartKind.IMAGE]
    k.page_of(parts[0])


def test_a_picture_shown_twice_is_sent_once(wechat: FakeWeChatAPI) -> None:
    a = signed("a.png")
    k = Kit(wechat, images={a: Download(media_samples.png_image(), "image/png")})
    parts = k.compose(f"开头 ![图]({a})\n\n结尾再看一次 ![图]({a})", page_base=HOOK)
    assert [read_part(p).kind for p in parts] == [PartKind.TEXT, PartKind.IMAGE]
    assert wechat.count(MEDIA_UPLOAD) == 1


def test_a_file_that_is_not_a_picture_stays_a_link(wechat: FakeWeChatAPI) -> None:
    pdf, song = signed("report.pdf"), signed("song.mp3")
    k = Kit(wechat)
    answer = AppAnswer(
        "报告已生成。",
        "c",
        files=(
            AnswerFile(url=pdf, kind="document", mimetype="application/pdf", name="周报.pdf"),
            AnswerFile(url=song, kind="audio", mimetype="audio/mpeg"),
        ),
    )
    [part] = k.compose(answer, page_base=HOOK)
    assert part.startswith("报告已生成。")
    assert f"周报.pdf ({pdf})" in part and song in part
    assert "[图片]" not in part  # a file is not announced as a picture
    assert "阅读全文" not in part  # links show fine as text
    assert wechat.count(MEDIA_UPLOAD) == 0


def test_a_file_link_already_in_the_text_is_not_repeated(wechat: FakeWeChatAPI) -> None:
    pdf = signed("report.pdf")
    k = Kit(wechat)
    answer = AppAnswer(f"[下载报告]({pdf})", "c", files=(AnswerFile(url=pdf, kind="document"),))
    assert k.compose(answer) == [f"下载报告 ({pdf})"]


# --- compose: voice ------------------------------------------------------------------------


@pytest.fixture
def mp3() -> bytes:
    if not audio.available():
        pytest.skip("PyAV is needed to make an MP3")
    return media_samples.mp3_clip(0.5)


def test_a_spoken_question_gets_a_voice_after_the_text(wechat: FakeWeChatAPI, mp3: bytes) -> None:
    a = signed("a.png")
    services = FakeServices(speech=mp3)
    k = Kit(
        wechat,
        services=services,
        voice_reply=True,
        images={a: Download(media_samples.png_image(), "image/png")},
    )
    answer = AppAnswer("**明天**有雨。", "c", files=(AnswerFile(url=a, kind="image"),))
    parts = k.compose(answer, spoken=True)
    assert [read_part(p).kind for p in parts] == [PartKind.TEXT, PartKind.VOICE, PartKind.IMAGE]
    assert parts[0] == "明天有雨。"
    assert services.speeches == [(TTS_MODEL, "明天有雨。")]  # the rendered text is spoken


@pytest.mark.parametrize(
    ("spoken", "overrides"),
    [
        (False, {"voice_reply": True}),
        (True, {"voice_reply": False}),
        (True, {"voice_reply": True, "text_to_speech_model": None}),
        (True, {"voice_reply": True, "app_secret": ""}),
    ],
    ids=["typed question", "voice reply off", "no tts model", "no secret"],
)
def test_no_voice_unless_spoken_and_able_to_speak(
    wechat: FakeWeChatAPI, mp3: bytes, spoken: bool, overrides: dict[str, Any]
) -> None:
    services = FakeServices(speech=mp3)
    k = Kit(wechat, services=services, **overrides)
    assert k.compose("明天有雨。", spoken=spoken) == ["明天有雨。"]
    assert services.speeches == []


def test_no_voice_without_services(wechat: FakeWeChatAPI) -> None:
    k = Kit(wechat, no_services=True, voice_reply=True)
    assert k.compose("明天有雨。", spoken=True) == ["明天有雨。"]


def test_no_voice_for_an_answer_without_text(wechat: FakeWeChatAPI, mp3: bytes) -> None:
    services = FakeServices(speech=mp3)
    k = Kit(wechat, services=services, voice_reply=True)
    assert k.compose("", spoken=True) == [EMPTY_ANSWER]
    assert services.speeches == []


def test_no_voice_is_made_once_time_is_up(wechat: FakeWeChatAPI, mp3: bytes) -> None:
    services = FakeServices(speech=mp3)
    k = Kit(wechat, services=services, voice_reply=True)
    question = Question("oUSER", "q", spoken=True)
    parts = k.kit.compose(question, "q", AppAnswer("明天有雨。", "c"), lambda: True)
    assert parts == ["明天有雨。"]
    assert services.speeches == [] and wechat.count(MEDIA_UPLOAD) == 0


def test_a_failed_voice_leaves_the_text(wechat: FakeWeChatAPI) -> None:
    services = FakeServices()
    services.fail("text_to_speech")
    k = Kit(wechat, services=services, voice_reply=True)
    assert k.compose("明天有雨。", spoken=True) == ["明天有雨。"]
    assert len(services.speeches) == 1


# --- finish_answer -------------------------------------------------------------------------


def job() -> Job:
    return Job(
        key="k" * 32,
        state=JobState.RUNNING,
        owner="owner-1",
        created_at=1_700_000_000.0,
        lease_until=1_700_000_030.0,
        user="u" * 32,
    )


def app_for(k: Kit, caller: ScriptedCaller) -> DifyApp:
    conversations = ConversationStore(k.store, k.clock)
    return DifyApp(caller, k.settings.dify_app_id, k.settings.dify_app_inputs, conversations)


def test_finish_answer_asks_the_app_and_shapes_its_answer() -> None:
    k = Kit()
    caller = ScriptedCaller(lambda call: chat_chunks("**答**：好的"))
    started: list[bool] = []
    question = Question("oUSER", "你好", metadata={"wechat_msg_type": "text"})
    settled, answer = finish_answer(
        job(), question, app_for(k, caller), k.kit, on_started=lambda: started.append(True)
    )
    assert settled.state is JobState.DONE and settled.parts == ["答：好的"]
    assert answer is not None and answer.conversation_id == "conv-1"
    assert started == [True]
    [call] = caller.calls
    assert call["query"] == "你好" and call["user"] == "oUSER"
    assert call["inputs"]["wechat_msg_type"] == "text"


def test_finish_answer_passes_the_file_input_to_the_app(wechat: FakeWeChatAPI) -> None:
    services = FakeServices(parameters=app_parameters({"wechat_file": "file-list"}))
    k = Kit(wechat, services=services)
    media_id = wechat.add_media(media_samples.png_image(), "image/png")
    caller = ScriptedCaller()
    question = Question(
        "oUSER",
        "[图片] http://mmbiz.qpic.cn/x",
        metadata={"wechat_pic_url": "http://mmbiz.qpic.cn/x"},
        media=MediaRequest("image", media_id, "http://mmbiz.qpic.cn/x"),
    )
    settled, _ = finish_answer(job(), question, app_for(k, caller), k.kit)
    assert settled.state is JobState.DONE
    inputs = caller.calls[0]["inputs"]
    assert inputs["wechat_file"] == [
        {"tool_file_id": "file-1", "transfer_method": "tool_file", "type": "image"}
    ]
    assert inputs["wechat_pic_url"] == "http://mmbiz.qpic.cn/x"
    assert caller.calls[0]["query"] == "[图片] http://mmbiz.qpic.cn/x"


def test_finish_answer_asks_with_the_transcript(wechat: FakeWeChatAPI) -> None:
    if not audio.available():
        pytest.skip("PyAV is needed to convert AMR")
    services = FakeServices(transcript="明天会下雨吗")
    k = Kit(wechat, services=services)
    media_id = wechat.add_media(media_samples.amr_clip(0.3), "audio/amr", kind="voice")
    caller = ScriptedCaller()
    question = Question(
        "oUSER",
        "[语音]",
        metadata={"wechat_msg_type": "voice"},
        media=MediaRequest("voice", media_id),
        spoken=True,
        page_base=HOOK,
    )
    settled, _ = finish_answer(job(), question, app_for(k, caller), k.kit)
    assert settled.parts == ["echo: 明天会下雨吗"]
    [call] = caller.calls
    assert call["query"] == "明天会下雨吗"
    assert call["inputs"]["wechat_voice_transcript"] == "明天会下雨吗"
    assert call["inputs"]["wechat_msg_type"] == "voice"


def test_a_media_problem_is_answered_without_the_app() -> None:
    k = Kit(app_secret="", voice_unavailable_message="请发文字")
    caller = ScriptedCaller()
    started: list[bool] = []
    question = Question("oUSER", "[语音]", media=MediaRequest("voice", "MID"), spoken=True)
    settled, answer = finish_answer(
        job(), question, app_for(k, caller), k.kit, on_started=lambda: started.append(True)
    )
    assert (settled.state, settled.parts) == (JobState.DONE, ["请发文字"])
    assert settled.reason == "voice transcription not set up"
    assert answer is None and caller.calls == []


def test_an_app_error_is_the_error_message() -> None:
    k = Kit(error_message="出错啦")
    caller = ScriptedCaller(lambda call: [{"event": "error", "message": "quota exceeded"}])
    settled, answer = finish_answer(job(), Question("o", "q"), app_for(k, caller), k.kit)
    assert (settled.state, settled.parts) == (JobState.FAILED, ["出错啦"])
    assert "quota exceeded" in settled.reason
    assert answer is None


def test_an_unexpected_preparation_failure_is_the_error_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    k = Kit(error_message="出错啦")

    def broken(question: Question) -> Prepared:
        raise KeyError("bug")

    monkeypatch.setattr(k.kit, "prepare", broken)
    caller = ScriptedCaller()
    settled, _ = finish_answer(job(), Question("o", "q"), app_for(k, caller), k.kit)
    assert (settled.state, settled.parts, settled.reason) == (
        JobState.FAILED,
        ["出错啦"],
        "KeyError",
    )
    assert caller.calls == []


def test_a_composing_failure_is_the_error_message_but_keeps_the_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    k = Kit(error_message="出错啦")

    def broken(*args: Any) -> list[str]:
        raise ValueError("bug")

    monkeypatch.setattr(k.kit, "compose", broken)
    settled, answer = finish_answer(job(), Question("o", "q"), app_for(k, ScriptedCaller()), k.kit)
    assert (settled.state, settled.parts) == (JobState.FAILED, ["出错啦"])
    assert answer is not None  # the conversation is still remembered


def test_cancelling_propagates() -> None:
    k = Kit()
    with pytest.raises(AppCancelled):
        finish_answer(
            job(), Question("o", "q"), app_for(k, ScriptedCaller()), k.kit, should_stop=lambda: True
        )


def test_the_job_keeps_its_identity() -> None:
    k = Kit()
    original = replace(job(), worker=True)
    settled, _ = finish_answer(original, Question("o", "q"), app_for(k, ScriptedCaller()), k.kit)
    assert (settled.key, settled.owner, settled.worker) == (original.key, "owner-1", True)


# --- WeCom: markdown parts ------------------------------------------------------------------

WECOM: dict[str, Any] = {
    "platform": "wecom",
    "app_id": "ww0123456789abcdef",
    "agent_id": "1000002",
}
HEADINGS = "\n\n".join(f"# 第{i}节\n\n" + "说明。" * 3 for i in range(200))


def test_wecom_answers_are_markdown_parts_that_read_as_text_too() -> None:
    k = Kit(**WECOM)
    parts = k.compose("## 结论\n\n**注意：**先看 [文档](https://example.com/doc)。")
    assert len(parts) == 1
    part = read_part(parts[0])
    assert part.kind is PartKind.MARKDOWN
    assert part.value.startswith("## 结论") and "**注意：**" in part.value
    assert "[文档](https://example.com/doc)" in part.value
    assert "**" not in part.text and "https://example.com/doc" in part.text


def test_wecom_markdown_parts_fit_as_markdown_and_as_text() -> None:
    # Many short h1 sections: rendering "# 第1节" as "【第1节】" lengthens the text, so a
    # plain split would give passive replies over the budget.
    budget = TEXT_BUDGET_BYTES - HINT_RESERVE
    plain = split_text(HEADINGS, budget)
    assert max(utf8_len(markdown_to_wechat_text(p)) for p in plain) > budget
    parts = paginate_markdown(HEADINGS, "1")
    assert len(parts) >= len(plain)
    for stored in parts:
        part = read_part(stored)
        assert part.kind is PartKind.MARKDOWN
        assert utf8_len(part.value) <= TEXT_BUDGET_BYTES - HINT_RESERVE
        assert utf8_len(part.text) <= TEXT_BUDGET_BYTES - HINT_RESERVE


def test_wecom_without_markdown_or_without_push_gets_text_parts() -> None:
    for overrides in ({"wecom_markdown": False}, {"delivery_mode": "fetch"}):
        parts = Kit(**WECOM, **overrides).compose("**粗体** 和 [链接](https://example.com)")
        assert read_part(parts[0]).kind is PartKind.TEXT, overrides
        assert "**" not in parts[0]


def test_wecom_long_answers_get_the_page_link_after_ten_parts() -> None:
    k = Kit(**WECOM)
    nine = "\n\n".join(f"第{i}段：" + "这是一段较长的回答。" * 60 for i in range(9))
    assert all("阅读全文" not in read_part(p).value for p in k.compose(nine, page_base=HOOK))
    eleven = "\n\n".join(f"第{i}段：" + "这是一段较长的回答。" * 60 for i in range(14))
    parts = k.compose(eleven, page_base=HOOK)
    assert len(parts) == 1
    part = read_part(parts[0])
    # A markdown link (WeCom markdown has no HTML); as text it keeps its URL.
    match = re.search(r"\n\n\[阅读全文\]\((https://[^)]+)\)$", part.value)
    assert match and match.group(1).startswith(PAGE_PREFIX)
    assert part.text.endswith(f"阅读全文 ({match.group(1)})")
    assert utf8_len(part.value) <= TEXT_BUDGET_BYTES and utf8_len(part.text) <= TEXT_BUDGET_BYTES


def test_wecom_markdown_that_cannot_fit_as_text_becomes_text_parts() -> None:
    pathological = "\n\n".join("# a" for _ in range(3000))
    parts = paginate_markdown(pathological, "1")
    assert all(read_part(p).kind is PartKind.TEXT for p in parts)
    assert all(utf8_len(p) <= TEXT_BUDGET_BYTES - HINT_RESERVE for p in parts)
