"""What users send besides text (endpoints/wechat/inbound_media.py): images and videos
uploaded to Dify as file inputs, voice downloaded, converted and transcribed.

WeChat is the loopback fake (tests/fake_wechat_api.py); Dify's services are FakeServices;
the voice conversion is the real one (PyAV) on AMR clips built by tests/media_samples.py.
"""

from __future__ import annotations

import io
import logging
import wave
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from endpoints.wechat import audio, dify_services, inbound_media
from endpoints.wechat.inbound_media import (
    MAX_BYTES,
    Download,
    MediaPreparer,
    MediaProblem,
    MediaRequest,
    Prepared,
    TooLarge,
    fetch_url,
    sniff_image,
    voice_ready,
)
from endpoints.wechat.settings import DEFAULT_TEXTS, Settings, load_settings
from endpoints.wechat.storage import EndpointStore
from tests import media_samples
from tests.fake_wechat_api import DEFAULT_APP_ID, DEFAULT_APP_SECRET, MEDIA_GET, FakeWeChatAPI
from tests.fakes import FakeServices, Fetcher, FileHost, MemoryStorage, app_parameters

PIC_URL = "http://mmbiz.qpic.cn/mmbiz_jpg/abc/0"
STT_MODEL = {"provider": "langgenius/openai/openai", "model": "whisper-1", "model_type": "stt"}
FALLBACK = "没听清（测试）"
UNAVAILABLE = "不能识别语音（测试）"
PARAM_KEYS = {"tool_file_id", "transfer_method", "type"}

pytestmark = pytest.mark.skipif(not audio.available(), reason="PyAV with AMR-NB is needed")


@pytest.fixture(autouse=True)
def fresh_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dify_services, "_PROFILES", dify_services._ProfileCache())


@pytest.fixture
def wechat() -> Iterator[FakeWeChatAPI]:
    with FakeWeChatAPI() as fake:
        yield fake


def make_settings(wechat: FakeWeChatAPI | None = None, **overrides: Any) -> Settings:
    raw: dict[str, Any] = {
        "app": {"app_id": "app-1", "inputs": {}},
        "wechat_token": "token123",
        "app_id": DEFAULT_APP_ID,
        "app_secret": DEFAULT_APP_SECRET,
        "speech_to_text_model": STT_MODEL,
        "voice_fallback_message": FALLBACK,
        "voice_unavailable_message": UNAVAILABLE,
    }
    if wechat is not None:
        raw["wechat_api_base_url"] = wechat.base_url
    raw.update(overrides)
    return load_settings(raw)


def preparer(
    settings: Settings,
    services: FakeServices | None = None,
    fetch: Fetcher | None = None,
) -> tuple[MediaPreparer, FakeServices, Fetcher]:
    services = services or FakeServices(parameters=app_parameters({"wechat_file": "file"}))
    fetch = fetch or Fetcher()
    store = EndpointStore(MemoryStorage(), "ep-1")
    return MediaPreparer(settings, store, services, fetch), services, fetch


# --- MediaRequest --------------------------------------------------------------------------


def test_media_request_travels_as_a_dict() -> None:
    request = MediaRequest("image", "MID", PIC_URL)
    assert request.to_dict() == {"kind": "image", "media_id": "MID", "url": PIC_URL}
    assert MediaRequest.from_dict(request.to_dict()) == request
    assert MediaRequest.from_dict({"kind": "voice", "media_id": "V"}) == MediaRequest("voice", "V")


@pytest.mark.parametrize("data", [None, {}, {"kind": "thumb"}, {"kind": "IMAGE"}, {"url": "x"}])
def test_media_request_from_anything_else_is_none(data: Any) -> None:
    assert MediaRequest.from_dict(data) is None


def test_no_media_leaves_the_query_alone() -> None:
    prep, services, fetch = preparer(make_settings())
    assert prep.prepare("hello", None, "ref") == Prepared("hello")
    assert services.uploads == [] and fetch.calls == [] and services.fetches == []


# --- images ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "listed"), [("file", False), ("file-list", True)], ids=["file", "file-list"]
)
def test_image_through_the_media_api_becomes_a_file_input(
    wechat: FakeWeChatAPI, form: str, listed: bool
) -> None:
    png = media_samples.png_image()
    media_id = wechat.add_media(png, "image/png")
    services = FakeServices(parameters=app_parameters({"wechat_file": form, "topic": "text-input"}))
    prep, services, fetch = preparer(make_settings(wechat), services)
    prepared = prep.prepare(f"[图片] {PIC_URL}", MediaRequest("image", media_id, PIC_URL), "r1")
    assert prepared.query == f"[图片] {PIC_URL}"  # the URL still goes along
    assert prepared.metadata == {}
    assert services.uploads == [("wechat-image.png", png, "image/png")]
    assert services.fetches == ["app-1"]
    assert fetch.calls == []  # the media API had it: PicUrl not needed
    parameter = {"tool_file_id": "file-1", "transfer_method": "tool_file", "type": "image"}
    assert prepared.files == {"wechat_file": [parameter] if listed else parameter}
    assert [c.query.get("media_id") for c in wechat.calls(MEDIA_GET)] == [media_id]


def test_a_custom_variable_name_is_used(wechat: FakeWeChatAPI) -> None:
    media_id = wechat.add_media(b"\xff\xd8\xff\xe0jpeg", "image/jpeg")
    services = FakeServices(parameters=app_parameters({"photo": "file"}))
    prep, services, _ = preparer(make_settings(wechat, file_input_variable="photo"), services)
    prepared = prep.prepare("q", MediaRequest("image", media_id, PIC_URL), "r")
    assert set(prepared.files) == {"photo"}
    assert services.uploads[0][0] == "wechat-image.jpg"
    assert services.uploads[0][2] == "image/jpeg"


def test_without_an_app_secret_the_image_comes_from_its_pic_url() -> None:
    jpeg = b"\xff\xd8\xff\xe0 a jpeg"
    fetch = Fetcher({PIC_URL: Download(jpeg, "image/jpeg")})
    prep, services, fetch = preparer(make_settings(app_secret=""), fetch=fetch)
    prepared = prep.prepare("q", MediaRequest("image", "MID", PIC_URL), "r")
    assert fetch.calls == [(PIC_URL, MAX_BYTES["image"])]
    assert services.uploads == [("wechat-image.jpg", jpeg, "image/jpeg")]
    assert set(prepared.files["wechat_file"]) == PARAM_KEYS


def test_a_failed_media_api_download_falls_back_to_the_pic_url(wechat: FakeWeChatAPI) -> None:
    png = media_samples.png_image()
    fetch = Fetcher({PIC_URL: Download(png, "image/png")})
    prep, services, fetch = preparer(make_settings(wechat), fetch=fetch)
    prepared = prep.prepare("q", MediaRequest("image", "unknown-media-id", PIC_URL), "r")
    assert wechat.count(MEDIA_GET) == 1
    assert fetch.calls == [(PIC_URL, MAX_BYTES["image"])]
    assert services.uploads == [("wechat-image.png", png, "image/png")]
    assert "wechat_file" in prepared.files


def test_a_failed_media_api_download_without_pic_url_gives_no_file(
    wechat: FakeWeChatAPI, caplog: pytest.LogCaptureFixture
) -> None:
    prep, services, fetch = preparer(make_settings(wechat))
    with caplog.at_level(logging.WARNING, "endpoints.wechat.inbound_media"):
        prepared = prep.prepare("[图片]", MediaRequest("image", "unknown-media-id"), "ref-9")
    assert prepared == Prepared("[图片]")
    assert services.uploads == [] and fetch.calls == []
    assert "ref-9" in caplog.text
    assert DEFAULT_APP_SECRET not in caplog.text


def test_no_media_id_and_no_pic_url_gives_no_file(wechat: FakeWeChatAPI) -> None:
    prep, services, _ = preparer(make_settings(wechat))
    assert prep.prepare("q", MediaRequest("image"), "r") == Prepared("q")
    assert services.uploads == [] and wechat.count(MEDIA_GET) == 0


def test_an_app_without_the_variable_gets_the_url_only(wechat: FakeWeChatAPI) -> None:
    media_id = wechat.add_media(media_samples.png_image(), "image/png")
    services = FakeServices(parameters=app_parameters({"topic": "text-input"}))
    fetch = Fetcher({PIC_URL: Download(b"\x89PNG", "image/png")})
    prep, services, fetch = preparer(make_settings(wechat), services, fetch)
    prepared = prep.prepare("q", MediaRequest("image", media_id, PIC_URL), "r")
    assert prepared == Prepared("q")
    assert services.fetches == ["app-1"]
    assert services.uploads == [] and fetch.calls == [] and wechat.count(MEDIA_GET) == 0


def test_a_variable_of_another_type_counts_as_absent(wechat: FakeWeChatAPI) -> None:
    services = FakeServices(parameters=app_parameters({"wechat_file": "text-input"}))
    prep, services, _ = preparer(make_settings(wechat), services)
    media_id = wechat.add_media(media_samples.png_image(), "image/png")
    assert prep.prepare("q", MediaRequest("image", media_id, PIC_URL), "r").files == {}
    assert services.uploads == []


def test_unreadable_app_parameters_still_pass_the_file(wechat: FakeWeChatAPI) -> None:
    services = FakeServices()
    services.fail("fetch_app", times=None)
    media_id = wechat.add_media(media_samples.png_image(), "image/png")
    prep, services, _ = preparer(make_settings(wechat), services)
    prepared = prep.prepare("q", MediaRequest("image", media_id, PIC_URL), "r")
    assert isinstance(prepared.files["wechat_file"], dict)  # a single file: the common case
    assert len(services.uploads) == 1


def test_a_failed_upload_to_dify_degrades_to_the_url(wechat: FakeWeChatAPI) -> None:
    services = FakeServices(parameters=app_parameters({"wechat_file": "file"}))
    services.fail("upload_file", RuntimeError("storage quota exceeded"))
    media_id = wechat.add_media(media_samples.png_image(), "image/png")
    prep, services, _ = preparer(make_settings(wechat), services)
    prepared = prep.prepare("q", MediaRequest("image", media_id, PIC_URL), "r")
    assert prepared == Prepared("q")
    assert len(services.uploads) == 1


@pytest.mark.parametrize(
    "failure", [TooLarge(), OSError("HTTP 403"), ValueError("not an http(s) URL")]
)
def test_a_pic_url_that_cannot_be_fetched_degrades_to_the_url(failure: BaseException) -> None:
    fetch = Fetcher({PIC_URL: failure})
    prep, services, fetch = preparer(make_settings(app_secret=""), fetch=fetch)
    assert prep.prepare("q", MediaRequest("image", "", PIC_URL), "r") == Prepared("q")
    assert len(fetch.calls) == 1 and services.uploads == []


def test_a_pic_url_over_ten_megabytes_is_not_passed() -> None:
    big = Download(b"\xff\xd8" + b"\0" * MAX_BYTES["image"], "image/jpeg")
    prep, services, _ = preparer(make_settings(app_secret=""), fetch=Fetcher({PIC_URL: big}))
    assert prep.prepare("q", MediaRequest("image", "", PIC_URL), "r").files == {}
    assert services.uploads == []


def test_an_image_over_ten_megabytes_from_the_media_api_is_not_passed(
    wechat: FakeWeChatAPI,
) -> None:
    media_id = wechat.add_media(b"\xff\xd8" + b"\0" * MAX_BYTES["image"], "image/jpeg")
    prep, services, _ = preparer(make_settings(wechat))
    assert prep.prepare("q", MediaRequest("image", media_id), "r").files == {}
    assert services.uploads == []


def test_a_three_megabyte_image_from_the_media_api_is_passed(wechat: FakeWeChatAPI) -> None:
    photo = b"\xff\xd8\xff\xe0" + b"\0" * (3 * 1024 * 1024)  # an original-quality photo
    media_id = wechat.add_media(photo, "image/jpeg")
    prep, services, _ = preparer(make_settings(wechat))
    prepared = prep.prepare("q", MediaRequest("image", media_id), "r")
    assert "wechat_file" in prepared.files
    assert services.uploads == [("wechat-image.jpg", photo, "image/jpeg")]


@pytest.mark.parametrize(
    ("content", "mimetype", "filename"),
    [
        (media_samples.png_image(), "image/png", "wechat-image.png"),
        (b"GIF89a....", "image/gif", "wechat-image.gif"),
        (b"\xff\xd8\xff\xdb", "image/jpeg", "wechat-image.jpg"),
        (b"no idea what this is", "application/octet-stream", "wechat-image"),
    ],
)
def test_a_missing_content_type_is_sniffed(content: bytes, mimetype: str, filename: str) -> None:
    fetch = Fetcher({PIC_URL: Download(content, "")})
    prep, services, _ = preparer(make_settings(app_secret=""), fetch=fetch)
    prep.prepare("q", MediaRequest("image", "", PIC_URL), "r")
    assert services.uploads == [(filename, content, mimetype)]


def test_a_webp_keeps_its_type_and_extension() -> None:
    fetch = Fetcher({PIC_URL: Download(b"RIFF....WEBP", "image/webp")})
    prep, services, _ = preparer(make_settings(app_secret=""), fetch=fetch)
    prep.prepare("q", MediaRequest("image", "", PIC_URL), "r")
    assert services.uploads[0][0] == "wechat-image.webp"
    assert services.uploads[0][2] == "image/webp"


# --- videos ------------------------------------------------------------------------------


def test_video_is_fetched_from_its_video_url_and_passed(wechat: FakeWeChatAPI) -> None:
    video_url = "http://video.example/v.mp4"
    media_id = wechat.add_media(b"", "video/mp4", kind="video", video_url=video_url)
    clip = b"\0\0\0\x18ftypmp42 video"
    services = FakeServices(parameters=app_parameters({"wechat_file": "file-list"}))
    fetch = Fetcher({video_url: Download(clip, "")})
    prep, services, fetch = preparer(make_settings(wechat), services, fetch)
    prepared = prep.prepare("[视频] 用户发来一段视频", MediaRequest("video", media_id), "r")
    assert fetch.calls == [(video_url, MAX_BYTES["video"])]
    assert services.uploads == [("wechat-video.mp4", clip, "video/mp4")]
    assert prepared.query == "[视频] 用户发来一段视频"
    assert prepared.files == {
        "wechat_file": [{"tool_file_id": "file-1", "transfer_method": "tool_file", "type": "video"}]
    }


def test_video_fetched_for_real_from_the_video_url(wechat: FakeWeChatAPI) -> None:
    clip = b"\0\0\0\x18ftypmp42 video"
    media_id = wechat.add_media(clip, "video/mp4", kind="video")  # served by the fake
    services = FakeServices(parameters=app_parameters({"wechat_file": "file"}))
    store = EndpointStore(MemoryStorage(), "ep-1")
    prep = MediaPreparer(make_settings(wechat), store, services)  # the real fetch_url
    prepared = prep.prepare("q", MediaRequest("video", media_id), "r")
    assert services.uploads == [("wechat-video.mp4", clip, "video/mp4")]
    assert "wechat_file" in prepared.files


def test_video_without_an_app_secret_is_described_only() -> None:
    prep, services, fetch = preparer(make_settings(app_secret=""))
    assert prep.prepare("q", MediaRequest("video", "MID"), "r") == Prepared("q")
    assert services.uploads == [] and fetch.calls == []


def test_a_video_too_large_is_described_only(wechat: FakeWeChatAPI) -> None:
    video_url = "http://video.example/big.mp4"
    media_id = wechat.add_media(b"", "video/mp4", kind="video", video_url=video_url)
    fetch = Fetcher({video_url: TooLarge()})
    prep, services, _ = preparer(make_settings(wechat), fetch=fetch)
    assert prep.prepare("q", MediaRequest("video", media_id), "r").files == {}
    assert services.uploads == []


# --- voice -------------------------------------------------------------------------------


def test_voice_is_downloaded_converted_and_transcribed(wechat: FakeWeChatAPI) -> None:
    media_id = wechat.add_media(media_samples.amr_clip(1.0), "audio/amr", kind="voice")
    services = FakeServices(transcript="  明天会下雨吗？ \n")
    prep, services, _ = preparer(make_settings(wechat), services)
    prepared = prep.prepare("[语音]", MediaRequest("voice", media_id), "r")
    assert prepared == Prepared(
        "明天会下雨吗？", metadata={"wechat_voice_transcript": "明天会下雨吗？"}
    )
    [(model, wav)] = services.transcriptions
    assert model == STT_MODEL
    with wave.open(io.BytesIO(wav)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (
            1,
            2,
            16000,
        )
        assert 0.8 < reader.getnframes() / 16000 < 1.2
    assert services.uploads == []  # voice is transcribed, not uploaded


@pytest.mark.parametrize(
    "overrides",
    [{"app_secret": ""}, {"speech_to_text_model": None}, {"speech_to_text_model": {"model": "x"}}],
    ids=["no secret", "no model", "incomplete model"],
)
def test_voice_without_setup_is_the_unavailable_text(overrides: dict[str, Any]) -> None:
    prep, services, _ = preparer(make_settings(**overrides))
    with pytest.raises(MediaProblem) as caught:
        prep.prepare("[语音]", MediaRequest("voice", "MID"), "r")
    assert caught.value.text == UNAVAILABLE
    assert services.transcriptions == []


def test_voice_that_cannot_be_downloaded_is_the_fallback_text(wechat: FakeWeChatAPI) -> None:
    prep, services, _ = preparer(make_settings(wechat))
    with pytest.raises(MediaProblem) as caught:
        prep.prepare("[语音]", MediaRequest("voice", "expired-media-id"), "r")
    assert caught.value.text == FALLBACK
    assert "download failed" in caught.value.reason and "40007" in caught.value.reason
    assert DEFAULT_APP_SECRET not in caught.value.reason
    assert services.transcriptions == []


def test_voice_over_two_megabytes_is_the_fallback_text(wechat: FakeWeChatAPI) -> None:
    media_id = wechat.add_media(b"#!AMR\n" + b"\0" * MAX_BYTES["voice"], "audio/amr", kind="voice")
    prep, services, _ = preparer(make_settings(wechat))
    with pytest.raises(MediaProblem) as caught:
        prep.prepare("[语音]", MediaRequest("voice", media_id), "r")
    assert (caught.value.text, caught.value.reason) == (FALLBACK, "voice too large")
    assert services.transcriptions == []


def test_voice_that_is_not_audio_is_the_fallback_text(wechat: FakeWeChatAPI) -> None:
    media_id = wechat.add_media(b"<html>not audio</html>", "audio/amr", kind="voice")
    prep, services, _ = preparer(make_settings(wechat))
    with pytest.raises(MediaProblem) as caught:
        prep.prepare("[语音]", MediaRequest("voice", media_id), "r")
    assert caught.value.text == FALLBACK
    assert caught.value.reason.startswith("voice unreadable")
    assert services.transcriptions == []


def test_voice_without_the_conversion_library_is_the_unavailable_text(
    wechat: FakeWeChatAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing(data: bytes, **kwargs: Any) -> bytes:
        raise audio.AudioUnavailable("voice conversion needs PyAV")

    monkeypatch.setattr(audio, "voice_to_wav", missing)
    media_id = wechat.add_media(media_samples.amr_clip(0.2), "audio/amr", kind="voice")
    prep, _, _ = preparer(make_settings(wechat))
    with pytest.raises(MediaProblem) as caught:
        prep.prepare("[语音]", MediaRequest("voice", media_id), "r")
    assert caught.value.text == UNAVAILABLE
    assert "PyAV" in caught.value.reason


def test_a_failing_speech_model_is_the_fallback_text(wechat: FakeWeChatAPI) -> None:
    media_id = wechat.add_media(media_samples.amr_clip(0.2), "audio/amr", kind="voice")
    services = FakeServices()
    services.fail("speech_to_text", RuntimeError("model quota exceeded"))
    prep, services, _ = preparer(make_settings(wechat), services)
    with pytest.raises(MediaProblem) as caught:
        prep.prepare("[语音]", MediaRequest("voice", media_id), "r")
    assert caught.value.text == FALLBACK
    assert "speech-to-text failed" in caught.value.reason
    assert len(services.transcriptions) == 1


def test_an_empty_transcript_is_the_fallback_text(wechat: FakeWeChatAPI) -> None:
    media_id = wechat.add_media(media_samples.amr_clip(0.2), "audio/amr", kind="voice")
    prep, _, _ = preparer(make_settings(wechat), FakeServices(transcript=" \n "))
    with pytest.raises(MediaProblem) as caught:
        prep.prepare("[语音]", MediaRequest("voice", media_id), "r")
    assert (caught.value.text, caught.value.reason) == (FALLBACK, "empty transcript")


def test_default_voice_texts() -> None:
    settings = make_settings(voice_fallback_message="", voice_unavailable_message="")
    assert settings.voice_fallback_message == DEFAULT_TEXTS["voice_fallback_message"]
    prep, _, _ = preparer(replace(settings, app_secret=""))
    with pytest.raises(MediaProblem) as caught:
        prep.prepare("[语音]", MediaRequest("voice", "MID"), "r")
    assert caught.value.text == DEFAULT_TEXTS["voice_unavailable_message"]


def test_voice_ready_needs_secret_model_and_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    assert voice_ready(make_settings())
    assert not voice_ready(make_settings(app_secret=""))
    assert not voice_ready(make_settings(speech_to_text_model=None))
    monkeypatch.setattr(audio, "available", lambda: False)
    assert not voice_ready(make_settings())


# --- fetch_url -----------------------------------------------------------------------------


@pytest.fixture
def host() -> Iterator[FileHost]:
    with FileHost() as files:
        yield files


def test_fetch_url_returns_the_body_and_its_bare_content_type(host: FileHost) -> None:
    png = media_samples.png_image()
    url = host.add("/pic.png", png, "Image/PNG; charset=binary")
    assert fetch_url(url + "?x=1", 1024) == Download(png, "image/png")
    assert host.requests == ["/pic.png?x=1"]


def test_fetch_url_refuses_a_declared_size_over_the_limit(host: FileHost) -> None:
    url = host.add("/big.jpg", b"\xff" * 2000, "image/jpeg")
    with pytest.raises(TooLarge):
        fetch_url(url, 1999)
    assert fetch_url(url, 2000).content == b"\xff" * 2000  # the limit itself is fine


def test_fetch_url_refuses_a_declared_size_before_reading_the_body(host: FileHost) -> None:
    # The body is shorter than declared: reading it would fail otherwise than TooLarge.
    url = host.add("/huge.jpg", b"\xff" * 10, "image/jpeg", declared_length=50_000_000)
    with pytest.raises(TooLarge):
        fetch_url(url, 1024)


def test_fetch_url_stops_reading_an_undeclared_body_over_the_limit(host: FileHost) -> None:
    url = host.add("/stream.jpg", b"\xff" * 300_000, "image/jpeg", chunked=True)
    with pytest.raises(TooLarge):
        fetch_url(url, 100_000)
    assert len(fetch_url(url, 300_000).content) == 300_000


@pytest.mark.parametrize("status", [403, 404, 500, 302])
def test_fetch_url_refuses_other_statuses(host: FileHost, status: int) -> None:
    url = host.add("/x.jpg", b"error page", "text/html", status=status)
    with pytest.raises(OSError, match=str(status)):
        fetch_url(url, 1024)


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.jpg", "/files/relative.png", ""]
)
def test_fetch_url_only_fetches_http(url: str) -> None:
    with pytest.raises(ValueError):
        fetch_url(url, 1024)


def test_fetch_url_timeout_is_bounded(host: FileHost, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    real_get = inbound_media.requests.get

    def spy(url: str, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return real_get(url, **kwargs)

    monkeypatch.setattr(inbound_media.requests, "get", spy)
    fetch_url(host.add("/a.png", b"\x89PNG"), 10, timeout=12.0)
    assert seen["timeout"] == (5.0, 12.0) and seen["stream"] is True


def test_sniff_image() -> None:
    assert sniff_image(media_samples.png_image()) == "image/png"
    assert sniff_image(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert sniff_image(b"GIF87a") == "image/gif"
    assert sniff_image(b"RIFF....WEBP") is None
    assert sniff_image(b"") is None
