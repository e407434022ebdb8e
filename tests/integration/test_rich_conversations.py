"""Rich conversations under the daemon emulator: pictures the app can see, voice the app can
hear, video, menus, welcome modes, images and voice back to the user, the 阅读全文 page.

Media is real and small (a generated PNG/JPEG, a hand-built AMR clip, an MP3 for voice
replies); the loopback fake WeChat API serves what users "sent" and records what the plugin
sends back; the emulator plays Dify's file upload, speech-to-text and text-to-speech.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from endpoints.wechat.settings import DEFAULT_TEXTS
from endpoints.wechat.texts import CONVERSATION_CLEARED
from tests.conftest import EmulatorFactory
from tests.emulator import AppReply, AppRequest, DaemonEmulator, ScriptedApp, WeChatSimulator
from tests.emulator.apps import app_parameters, form_field
from tests.fake_wechat_api import FakeWeChatAPI
from tests.media_samples import amr_clip, jpeg_image, mp3_clip, png_image

STT_MODEL = {"provider": "openai", "model": "whisper-1", "model_type": "speech2text"}
TTS_MODEL = {"provider": "openai", "model": "tts-1", "model_type": "tts", "voice": "alloy"}
TRANSCRIPT = "你好，这是一段语音"
UNREACHABLE = "http://127.0.0.1:9/nothing-here.jpg"  # refused at once: never the internet
PUSH_WAIT = "问题有点复杂，我还在思考，想好了会马上发给你。"


@pytest.fixture
def wechat_api() -> Iterator[FakeWeChatAPI]:
    with FakeWeChatAPI() as api:
        yield api


def with_api(base: dict[str, Any], api: FakeWeChatAPI | None, **extra: Any) -> dict[str, Any]:
    settings = dict(base, delivery_mode="push", **extra)
    if api is not None:
        settings.update(
            app_id=api.app_id, app_secret=api.app_secret, wechat_api_base_url=api.base_url
        )
    return settings


def simulator(emu: DaemonEmulator, settings: dict[str, Any], time_scale: float) -> WeChatSimulator:
    return WeChatSimulator(
        emu.url("/wechat"),
        settings["wechat_token"],
        settings["app_id"],
        settings.get("encoding_aes_key"),
        mode="safe",
        time_scale=time_scale,
    )


def echo_with_files(req: AppRequest) -> str:
    """Echo the query and say which file inputs arrived."""
    files = req.inputs.get("wechat_file")
    return f"echo: {req.query} | file: {'yes' if files else 'no'}"


def vision_app(kind: str = "file", allowed: tuple[str, ...] = ("image",)) -> ScriptedApp:
    field = form_field(kind, "wechat_file", allowed_file_types=allowed)  # type: ignore[arg-type]
    return ScriptedApp(
        "advanced-chat", echo_with_files, parameters=app_parameters(user_input_form=[field])
    )


def finish(emu: DaemonEmulator) -> None:
    assert emu.wait_idle(timeout=30)
    assert emu.late_calls == []


def session_path(emu: DaemonEmulator, session_id: str) -> str:
    return next(s["path"] for s in emu.sessions if s["session_id"] == session_id)


# --- pictures in ------------------------------------------------------------------------------


def test_a_picture_reaches_the_app_as_a_file_input(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wechat_api: FakeWeChatAPI,
    time_scale: float,
) -> None:
    picture = png_image(32, 32)
    media_id = wechat_api.add_media(picture, "image/png")
    settings = with_api(default_settings, wechat_api)
    emu = emulator_factory(app=vision_app(), settings=settings)
    sim = simulator(emu, settings, time_scale)
    seen = sim.deliver(sim.image("oPic", media_id=media_id, pic_url=UNREACHABLE)).user_saw
    assert seen == [f"echo: [图片] {UNREACHABLE} | file: yes"]
    finish(emu)
    [upload] = emu.uploads
    assert upload["content"] == picture and upload["mimetype"] == "image/png"
    inputs = emu.app_calls[0]["inputs"]
    assert inputs["wechat_file"] == {
        "tool_file_id": upload["id"],
        "transfer_method": "tool_file",
        "type": "image",
    }
    assert inputs["wechat_pic_url"] == UNREACHABLE
    # Downloaded and uploaded in the worker request, not in WeChat's delivery.
    assert session_path(emu, upload["session_id"]) == "/wechat/worker"


def test_without_an_app_secret_the_picture_comes_from_its_pic_url(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    picture = jpeg_image()
    emu = emulator_factory(app=vision_app("file-list"), settings=default_settings)
    pic_url = emu.host_file(picture, "image/jpeg")["url"]
    sim = simulator(emu, default_settings, time_scale)
    seen = sim.deliver(sim.image("oPicUrl", pic_url=pic_url)).user_saw
    assert seen == [f"echo: [图片] {pic_url} | file: yes"]
    finish(emu)
    [upload] = emu.uploads
    assert upload["content"] == picture
    files = emu.app_calls[0]["inputs"]["wechat_file"]
    assert isinstance(files, list) and files[0]["tool_file_id"] == upload["id"]  # file list


def test_an_app_without_the_file_variable_gets_the_url_only(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wechat_api: FakeWeChatAPI,
    time_scale: float,
) -> None:
    media_id = wechat_api.add_media(png_image(), "image/png")
    settings = with_api(default_settings, wechat_api)
    emu = emulator_factory(app=ScriptedApp("chat", echo_with_files), settings=settings)
    sim = simulator(emu, settings, time_scale)
    seen = sim.deliver(sim.image("oNoVar", media_id=media_id, pic_url=UNREACHABLE)).user_saw
    assert seen == [f"echo: [图片] {UNREACHABLE} | file: no"]
    finish(emu)
    assert emu.uploads == [] and wechat_api.count("/cgi-bin/media/get") == 0


@pytest.mark.parametrize("failure", ["media_api_error", "too_large", "dify_upload_fails"])
def test_picture_failures_still_answer_with_the_url(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wechat_api: FakeWeChatAPI,
    time_scale: float,
    failure: str,
) -> None:
    big = png_image() + bytes(11 * 1024 * 1024)  # over Dify's 10 MB image limit
    media_id = wechat_api.add_media(big if failure == "too_large" else png_image(), "image/png")
    if failure == "media_api_error":
        wechat_api.fail(40007, path="/cgi-bin/media/get")
    settings = with_api(default_settings, wechat_api)
    emu = emulator_factory(app=vision_app(), settings=settings)
    if failure == "dify_upload_fails":
        emu.fail_uploads(times=1, status=500)
    sim = simulator(emu, settings, time_scale)
    seen = sim.deliver(sim.image("oPicFail", media_id=media_id, pic_url=UNREACHABLE)).user_saw
    assert seen == [f"echo: [图片] {UNREACHABLE} | file: no"]
    finish(emu)
    assert emu.uploads == []
    assert len(emu.app_calls) == 1


# --- voice in ---------------------------------------------------------------------------------


def test_voice_is_transcribed_by_the_chosen_model_in_the_worker(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wechat_api: FakeWeChatAPI,
    time_scale: float,
) -> None:
    media_id = wechat_api.add_media(amr_clip(2.0), "audio/amr")
    settings = with_api(default_settings, wechat_api, speech_to_text_model=STT_MODEL)
    emu = emulator_factory(settings=settings)
    sim = simulator(emu, settings, time_scale)
    assert sim.deliver(sim.voice("oVoice", media_id=media_id)).user_saw == [f"echo: {TRANSCRIPT}"]
    finish(emu)
    [stt] = emu.stt_calls
    assert stt["audio"][:4] == b"RIFF" and stt["audio"][8:12] == b"WAVE"  # AMR converted
    assert session_path(emu, stt["session_id"]) == "/wechat/worker"
    [call] = emu.app_calls
    assert call["query"] == TRANSCRIPT
    assert call["inputs"]["wechat_voice_transcript"] == TRANSCRIPT


def test_a_slow_transcription_does_not_cost_the_answer(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wechat_api: FakeWeChatAPI,
    time_scale: float,
) -> None:
    media_id = wechat_api.add_media(amr_clip(), "audio/amr")
    settings = with_api(default_settings, wechat_api, speech_to_text_model=STT_MODEL)
    emu = emulator_factory(settings=settings)
    emu.stt_delay = 20 * time_scale  # longer than all of WeChat's deliveries
    sim = simulator(emu, settings, time_scale)
    wechat_api.user_interacted("oSlowVoice")
    assert sim.deliver(sim.voice("oSlowVoice", media_id=media_id)).user_saw == [PUSH_WAIT]
    wechat_api.wait_until(lambda a: bool(a.texts("oSlowVoice")), timeout=30)
    assert wechat_api.texts("oSlowVoice") == [f"echo: {TRANSCRIPT}"]
    finish(emu)


@pytest.mark.parametrize("failure", ["stt_error", "media_error", "no_model", "no_app_secret"])
def test_voice_failures_get_a_friendly_reply_and_no_app_call(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wechat_api: FakeWeChatAPI,
    time_scale: float,
    failure: str,
) -> None:
    media_id = wechat_api.add_media(amr_clip(), "audio/amr")
    model = None if failure == "no_model" else STT_MODEL
    api = None if failure == "no_app_secret" else wechat_api
    settings = with_api(default_settings, api, speech_to_text_model=model)
    emu = emulator_factory(settings=settings)
    if failure == "stt_error":
        emu.fail_stt("quota exceeded")
    sim = simulator(emu, settings, time_scale)
    voice_id = "unknown-media" if failure == "media_error" else media_id
    seen = sim.deliver(sim.voice("oVoiceFail", media_id=voice_id)).user_saw
    expected = {
        "stt_error": DEFAULT_TEXTS["voice_fallback_message"],
        "media_error": DEFAULT_TEXTS["voice_fallback_message"],
        "no_model": DEFAULT_TEXTS["voice_unavailable_message"],
        "no_app_secret": DEFAULT_TEXTS["voice_unavailable_message"],
    }[failure]
    assert seen == [expected]
    finish(emu)
    assert emu.app_calls == []
    assert "quota exceeded" not in seen[0]  # causes go to the log, not to users


# --- video in ---------------------------------------------------------------------------------


def test_a_video_reaches_the_app_as_a_file_with_an_app_secret(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wechat_api: FakeWeChatAPI,
    time_scale: float,
) -> None:
    clip = b"\x00\x00\x00\x18ftypmp42" + bytes(2048)
    media_id = wechat_api.add_media(clip, "video/mp4")
    settings = with_api(default_settings, wechat_api)
    emu = emulator_factory(app=vision_app(allowed=("image", "video")), settings=settings)
    sim = simulator(emu, settings, time_scale)
    seen = sim.deliver(sim.video("oVideo", media_id=media_id)).user_saw
    assert seen == ["echo: [视频] 用户发来一段视频 | file: yes"]
    finish(emu)
    [upload] = emu.uploads
    assert upload["content"] == clip
    assert emu.app_calls[0]["inputs"]["wechat_media_id"] == media_id


def test_a_video_is_not_passed_to_an_images_only_input(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wechat_api: FakeWeChatAPI,
    time_scale: float,
) -> None:
    media_id = wechat_api.add_media(b"\x00\x00\x00\x18ftypmp42" + bytes(64), "video/mp4")
    settings = with_api(default_settings, wechat_api)
    emu = emulator_factory(app=vision_app(allowed=("image",)), settings=settings)
    sim = simulator(emu, settings, time_scale)
    seen = sim.deliver(sim.shortvideo("oVideo2", media_id=media_id)).user_saw
    assert seen == ["echo: [小视频] 用户发来一段视频 | file: no"]
    finish(emu)
    assert emu.uploads == []


# --- menus and welcome ------------------------------------------------------------------------


def test_menu_keys_ask_reply_or_run_commands(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    settings = dict(
        default_settings,
        menu_click_map="PRICE=你们的价格是多少？; HOURS=reply:营业时间 9:00-18:00\nNEW=/clear",
    )
    emu = emulator_factory(settings=settings)
    sim = simulator(emu, settings, time_scale)

    def click(key: str) -> list[Any]:
        return sim.deliver(sim.event("oMenu", "CLICK", key)).user_saw

    assert click("PRICE") == ["echo: 你们的价格是多少？"]
    assert click("HOURS") == ["营业时间 9:00-18:00"]
    assert click("NEW") == [CONVERSATION_CLEARED]
    assert click("new_conversation") == [CONVERSATION_CLEARED]  # reserved: no entry needed
    assert "/clear" in str(click("help")[0])
    assert click("OTHER") == ["echo: OTHER"]  # not mapped: click_event_mode (query)
    finish(emu)
    assert [c["query"] for c in emu.app_calls] == ["你们的价格是多少？", "OTHER"]


def test_welcome_from_the_app_with_the_qr_scene(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    settings = dict(default_settings, welcome_mode="app")
    emu = emulator_factory(settings=settings)
    sim = simulator(emu, settings, time_scale)
    seen = sim.deliver(sim.event("oHi", "subscribe", "qrscene_poster")).user_saw
    assert seen == ["echo: 你好"]
    finish(emu)
    inputs = emu.app_calls[0]["inputs"]
    assert inputs["wechat_event"] == "subscribe" and inputs["wechat_qr_scene"] == "poster"


@pytest.mark.parametrize(
    ("opening", "expected"), [("**欢迎**来到小店", "欢迎来到小店"), ("", None)]
)
def test_welcome_with_the_apps_opening_statement(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    time_scale: float,
    opening: str,
    expected: str | None,
) -> None:
    settings = dict(default_settings, welcome_mode="opening_statement")
    app = ScriptedApp("chat", parameters=app_parameters(opening_statement=opening))
    emu = emulator_factory(app=app, settings=settings)
    sim = simulator(emu, settings, time_scale)
    seen = sim.deliver(sim.event("oOpen", "subscribe")).user_saw
    assert seen == [expected or DEFAULT_TEXTS["welcome_message"]]
    finish(emu)
    assert emu.app_calls == []


# --- images and voice out ---------------------------------------------------------------------


def test_an_image_from_the_app_follows_the_text_as_a_wechat_image(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wechat_api: FakeWeChatAPI,
    time_scale: float,
) -> None:
    chart = png_image(40, 20)
    settings = with_api(default_settings, wechat_api)
    emu = emulator_factory(settings=settings)
    file = emu.host_file(chart, "image/png", "chart.png")
    emu.app.respond = AppReply(text="这是本月的图表", files=[file])
    sim = simulator(emu, settings, time_scale)
    wechat_api.user_interacted("oChart")
    assert sim.deliver(sim.text("oChart", "画个图")).user_saw == ["这是本月的图表"]
    assert wechat_api.wait_until(lambda a: bool(a.received_media("oChart")), timeout=20)
    assert wechat_api.received_media("oChart") == [("image", chart)]
    finish(emu)


def test_an_image_only_answer_is_the_passive_reply(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wechat_api: FakeWeChatAPI,
    time_scale: float,
) -> None:
    picture = jpeg_image(24, 24)
    settings = with_api(default_settings, wechat_api)
    emu = emulator_factory(settings=settings)
    emu.app.respond = AppReply(text="", files=[emu.host_file(picture, "image/jpeg")])
    sim = simulator(emu, settings, time_scale)
    [seen] = sim.deliver(sim.text("oImgOnly", "来张图")).user_saw
    assert isinstance(seen, tuple) and seen[0] == "image"
    stored = wechat_api.media(seen[1])
    assert stored is not None and stored.content == picture
    finish(emu)
    assert wechat_api.received_media("oImgOnly") == []  # nothing pushed on top


def test_without_an_app_secret_images_from_the_app_stay_links(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    emu = emulator_factory(settings=default_settings)
    file = emu.host_file(png_image(), "image/png", "chart.png")
    emu.app.respond = AppReply(text="图表如下", files=[file], markdown=True)
    sim = simulator(emu, default_settings, time_scale)
    [seen] = sim.deliver(sim.text("oLinks", "画个图")).user_saw
    assert isinstance(seen, str) and seen.startswith("图表如下")
    assert "[图片]" in seen and str(file["url"]).split("?")[0] in seen
    finish(emu)


def test_a_voice_question_gets_a_voice_reply_after_the_text(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wechat_api: FakeWeChatAPI,
    time_scale: float,
) -> None:
    speech = mp3_clip(2.0)
    settings = with_api(
        default_settings, wechat_api, voice_reply=True, text_to_speech_model=TTS_MODEL
    )
    emu = emulator_factory(settings=settings)
    emu.tts_audio = speech
    sim = simulator(emu, settings, time_scale)
    wechat_api.user_interacted("oSpeak")
    seen = sim.deliver(sim.voice("oSpeak", recognition="明天天气如何")).user_saw
    assert seen == ["echo: 明天天气如何"]
    assert wechat_api.wait_until(lambda a: bool(a.received_media("oSpeak")), timeout=20)
    assert wechat_api.received_media("oSpeak") == [("voice", speech)]
    assert emu.tts_calls[0]["content_text"] == "echo: 明天天气如何"
    finish(emu)


# --- the 阅读全文 page --------------------------------------------------------------------------


def page_link(text: str) -> str:
    match = re.search(r'<a href="([^"]+)">阅读全文</a>', text)
    assert match, text
    return match.group(1)


def test_a_very_long_answer_gets_its_first_part_and_a_full_answer_link(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wechat_api: FakeWeChatAPI,
    time_scale: float,
) -> None:
    answer = "\n\n".join(f"## 第{i}节\n\n" + "内容" * 300 for i in range(1, 9))
    settings = with_api(default_settings, wechat_api)
    emu = emulator_factory(app=ScriptedApp("chat", answer), settings=settings)
    sim = simulator(emu, settings, time_scale)
    [first] = sim.deliver(sim.text("oLong", "讲讲")).user_saw
    assert isinstance(first, str) and "第1节" in first and "第8节" not in first
    url = page_link(first)
    assert url.startswith(emu.url("/wechat/answer/"))
    finish(emu)
    time.sleep(0.2)
    assert wechat_api.texts("oLong") == []  # the page holds the rest: nothing pushed
    page = requests.get(url, timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert "第8节" in page.text and "<script" not in page.text
    assert "no-referrer" in page.headers.get("Referrer-Policy", "")
    forged = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    assert requests.get(forged, timeout=10).status_code == 404


def test_a_table_answer_gets_the_link_and_it_can_be_switched_off(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    table = "价格如下：\n\n| 套餐 | 价格 |\n|---|---|\n| 基础 | 10 元 |\n| 高级 | 20 元 |"
    emu = emulator_factory(app=ScriptedApp("chat", table), settings=default_settings)
    sim = simulator(emu, default_settings, time_scale)
    [seen] = sim.deliver(sim.text("oTable", "价格")).user_saw
    assert isinstance(seen, str) and "基础" in seen
    assert requests.get(page_link(seen), timeout=10).status_code == 200
    emu.set_settings(full_answer_link=False)
    [plain] = sim.deliver(sim.text("oTable", "价格?")).user_saw
    assert isinstance(plain, str) and "阅读全文" not in plain
    finish(emu)
