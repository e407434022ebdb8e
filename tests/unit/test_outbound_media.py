"""Pictures and speech the app produces, made into WeChat media messages
(endpoints/wechat/outbound_media.py). WeChat is the loopback fake; Dify's file downloads
are an injected fetch; speech is FakeServices' text-to-speech."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from endpoints.wechat import audio
from endpoints.wechat.dify_app import AnswerFile
from endpoints.wechat.inbound_media import Download, TooLarge
from endpoints.wechat.outbound_media import (
    MAX_IMAGES,
    SPOKEN_CHARACTERS,
    WECHAT_IMAGE_LIMIT,
    MediaPublisher,
    Published,
    _speakable,
    hosted_images,
    is_dify_file_url,
    remove_images,
)
from endpoints.wechat.parts import Part, PartKind, read_part
from endpoints.wechat.settings import Settings, load_settings
from endpoints.wechat.storage import EndpointStore
from tests import media_samples
from tests.fake_wechat_api import DEFAULT_APP_ID, DEFAULT_APP_SECRET, MEDIA_UPLOAD, FakeWeChatAPI
from tests.fakes import FakeServices, Fetcher, MemoryStorage

DIFY = "https://dify.example.com"
TTS_MODEL = {"provider": "langgenius/openai/openai", "model": "tts-1", "voice": "alloy"}


def signed(name: str) -> str:
    return f"{DIFY}/files/tools/{name}?timestamp=1700000000&nonce=abc&sign=c2lnbmF0dXJl"


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
        "voice_reply": True,
        "text_to_speech_model": TTS_MODEL,
    }
    if wechat is not None:
        raw["wechat_api_base_url"] = wechat.base_url
    raw.update(overrides)
    return load_settings(raw)


def publisher(settings: Settings, fetch: Fetcher | None = None) -> tuple[MediaPublisher, Fetcher]:
    fetch = fetch or Fetcher()
    return MediaPublisher(settings, EndpointStore(MemoryStorage(), "ep-1"), fetch), fetch


def image(url: str, mimetype: str = "image/png", kind: str = "image") -> AnswerFile:
    return AnswerFile(url=url, kind=kind, mimetype=mimetype, name="pic")


def never() -> bool:
    return False


def link_urls(published: Published) -> list[str]:
    return [f.url for f in published.links]


def media_ids(parts: list[str]) -> list[Part]:
    return [read_part(p) for p in parts]


# --- recognising Dify's files ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "hosted"),
    [
        (signed("a.png"), True),
        (f"http://localhost/files/{'0' * 8}/file-preview?timestamp=1&nonce=2&sign=x", True),
        (f"{DIFY}/files/a.png?timestamp=1&nonce=2", False),  # unsigned
        (f"{DIFY}/files/a.png?timestamp=1&nonce=2&sign=", False),  # empty signature
        (f"{DIFY}/images/a.png?sign=x", False),  # not a file path
        ("https://example.com/a.png", False),
        ("/files/tools/a.png?sign=x", False),  # relative
        ("ftp://dify.example.com/files/a.png?sign=x", False),
    ],
)
def test_is_dify_file_url(url: str, hosted: bool) -> None:
    assert is_dify_file_url(url) is hosted


def test_hosted_images_finds_markdown_images_of_dify_files_only() -> None:
    first, second = signed("a.png"), signed("b.jpg")
    markdown = (
        f"看图：![示意图]({first})\n\n"
        f"![外部](https://example.com/x.png) and [a link]({signed('c.png')})\n"
        f'![]( <{second}> "标题" )'
    )
    host = urlsplit(first).hostname or ""
    assert hosted_images(markdown, {host}) == [
        AnswerFile(url=first, kind="image", name="示意图"),
        AnswerFile(url=second, kind="image", name=""),
    ]
    assert hosted_images(markdown, {"other.example.com"}) == []  # untrusted host: not fetched


def test_remove_images_removes_only_the_sent_ones() -> None:
    first, second = signed("a.png"), signed("b.jpg")
    markdown = f"前 ![a]({first}) 中 ![b]({second}) 后 ![c](https://example.com/c.png)"
    assert remove_images(markdown, {first}) == (
        f"前  中 ![b]({second}) 后 ![c](https://example.com/c.png)"
    )
    assert remove_images(markdown, set()) == markdown


# --- images --------------------------------------------------------------------------------


def test_no_files_means_nothing_to_do(wechat: FakeWeChatAPI) -> None:
    pub, fetch = publisher(make_settings(wechat))
    assert pub.images([], "r", never) == Published([], set(), [])
    assert fetch.calls == [] and wechat.count(MEDIA_UPLOAD) == 0


def test_files_that_are_not_pictures_stay_links(wechat: FakeWeChatAPI) -> None:
    pub, fetch = publisher(make_settings(wechat))
    files = [
        AnswerFile(url=signed("report.pdf"), kind="document", mimetype="application/pdf"),
        AnswerFile(url=signed("song.mp3"), kind="audio", mimetype="audio/mpeg"),
        AnswerFile(url=signed("clip.mp4"), kind="video", mimetype="video/mp4"),
    ]
    assert pub.images(files, "r", never) == Published([], set(), files)
    assert fetch.calls == [] and wechat.count(MEDIA_UPLOAD) == 0


def test_images_become_wechat_image_parts(wechat: FakeWeChatAPI) -> None:
    png, gif = media_samples.png_image(), b"GIF89a" + b"\0" * 20
    urls = [signed("a.png"), signed("b.gif")]
    fetch = Fetcher({urls[0]: Download(png, "image/png"), urls[1]: Download(gif, "image/gif")})
    pub, fetch = publisher(make_settings(wechat), fetch)
    published = pub.images([image(urls[0]), image(urls[1], "image/gif")], "r", never)
    assert published.sent_urls == set(urls) and published.links == []
    parts = media_ids(published.parts)
    assert [p.kind for p in parts] == [PartKind.IMAGE, PartKind.IMAGE]
    uploaded = [wechat.media(p.value) for p in parts]  # in answer order
    assert [(m.content, m.kind) for m in uploaded if m is not None] == [
        (png, "image"),
        (gif, "image"),
    ]
    assert [(u.filename, u.content_type) for u in wechat.uploads] == [
        ("answer.png", "image/png"),
        ("answer.gif", "image/gif"),
    ]
    assert fetch.calls == [(urls[0], WECHAT_IMAGE_LIMIT), (urls[1], WECHAT_IMAGE_LIMIT)]


def test_a_file_with_an_image_mimetype_counts_as_an_image(wechat: FakeWeChatAPI) -> None:
    url = signed("x")
    fetch = Fetcher({url: Download(b"\xff\xd8\xff\xe0jpeg", "image/jpeg")})
    pub, _ = publisher(make_settings(wechat), fetch)
    published = pub.images([image(url, "image/jpeg", kind="custom")], "r", never)
    assert len(published.parts) == 1
    assert wechat.uploads[0].filename == "answer.jpg"


@pytest.mark.parametrize(
    ("content_type", "declared", "content", "filename"),
    [
        ("", "image/png", b"whatever", "answer.png"),  # the file's declared type
        ("", "", b"\x89PNG\r\n", "answer.png"),  # sniffed
        ("application/octet-stream", "", b"\xff\xd8\xff", "answer.jpg"),  # sniffed
        ("image/jpg", "", b"GIF89a", "answer.gif"),  # not a WeChat type: sniffed
    ],
)
def test_the_image_type_comes_from_the_download_the_file_or_the_bytes(
    wechat: FakeWeChatAPI, content_type: str, declared: str, content: bytes, filename: str
) -> None:
    url = signed("x")
    pub, _ = publisher(make_settings(wechat), Fetcher({url: Download(content, content_type)}))
    published = pub.images([image(url, declared)], "r", never)
    assert len(published.parts) == 1, published
    assert wechat.uploads[0].filename == filename


@pytest.mark.parametrize(
    "answer",
    [
        Download(b"RIFF....WEBPVP8 ", "image/webp"),  # WeChat takes JPEG/PNG/GIF only
        Download(b"<svg/>", "image/svg+xml"),
        Download(b"\xff\xd8" + b"\0" * WECHAT_IMAGE_LIMIT, "image/jpeg"),  # over 2 MB
        TooLarge(),
        OSError("HTTP 403"),
    ],
    ids=["webp", "svg", "over 2 MB", "too large", "unreachable"],
)
def test_an_image_that_cannot_be_sent_stays_a_link(
    wechat: FakeWeChatAPI, answer: Download | BaseException
) -> None:
    good, bad = signed("good.png"), signed("bad")
    fetch = Fetcher({good: Download(media_samples.png_image(), "image/png"), bad: answer})
    pub, _ = publisher(make_settings(wechat), fetch)
    published = pub.images([image(bad), image(good)], "r", never)
    assert link_urls(published) == [bad]
    assert published.sent_urls == {good}
    assert len(published.parts) == 1
    assert len(wechat.uploads) == 1


def test_a_wechat_upload_failure_leaves_a_link(wechat: FakeWeChatAPI) -> None:
    url = signed("a.png")
    wechat.fail(45009, path=MEDIA_UPLOAD)
    pub, _ = publisher(make_settings(wechat), Fetcher({url: Download(b"\x89PNG", "image/png")}))
    assert pub.images([image(url)], "r", never) == Published([], set(), [image(url)])


def test_without_an_app_secret_images_stay_links(wechat: FakeWeChatAPI) -> None:
    urls = [signed("a.png"), signed("b.png")]
    pub, fetch = publisher(make_settings(wechat, app_secret=""))
    files = [image(u) for u in urls]
    assert pub.images(files, "r", never) == Published([], set(), files)
    assert fetch.calls == [] and wechat.count(MEDIA_UPLOAD) == 0


def test_relative_urls_are_neither_fetched_nor_linked(
    wechat: FakeWeChatAPI, caplog: pytest.LogCaptureFixture
) -> None:
    url = signed("a.png")
    pub, fetch = publisher(make_settings(wechat), Fetcher({url: Download(b"\x89PNG", "")}))
    published = pub.images([image("/files/tools/x.png?sign=1"), image(url)], "r", never)
    assert published.sent_urls == {url} and published.links == []
    assert [c[0] for c in fetch.calls] == [url]
    assert "FILES_URL" in caplog.text


def test_at_most_max_images_are_sent_the_rest_stay_links(wechat: FakeWeChatAPI) -> None:
    urls = [signed(f"{i}.png") for i in range(MAX_IMAGES + 2)]
    fetch = Fetcher({u: Download(media_samples.png_image(), "image/png") for u in urls})
    pub, fetch = publisher(make_settings(wechat), fetch)
    published = pub.images([image(u) for u in urls], "r", never)
    assert len(published.parts) == MAX_IMAGES == len(fetch.calls)
    assert published.sent_urls == set(urls[:MAX_IMAGES])
    assert link_urls(published) == urls[MAX_IMAGES:]


def test_stopping_leaves_the_rest_as_links(wechat: FakeWeChatAPI) -> None:
    urls = [signed("a.png"), signed("b.png")]
    fetch = Fetcher({u: Download(media_samples.png_image(), "image/png") for u in urls})
    pub, fetch = publisher(make_settings(wechat), fetch)
    asked: list[int] = []

    def after_first() -> bool:
        asked.append(1)
        return len(asked) > 1

    published = pub.images([image(u) for u in urls], "r", after_first)
    assert published.sent_urls == {urls[0]} and link_urls(published) == [urls[1]]
    assert len(fetch.calls) == 1


# --- voice ---------------------------------------------------------------------------------


@pytest.fixture
def mp3() -> bytes:
    if not audio.available():
        pytest.skip("PyAV is needed to make an MP3")
    return media_samples.mp3_clip(1.0)


def test_the_answer_is_spoken_as_a_wechat_voice(wechat: FakeWeChatAPI, mp3: bytes) -> None:
    services = FakeServices(speech=mp3)
    pub, _ = publisher(make_settings(wechat))
    stored = pub.voice(services, "今天晴，最高 25 度。详见 https://weather.example/today", "r")
    assert stored is not None
    part = read_part(stored)
    assert part.kind is PartKind.VOICE
    uploaded = wechat.media(part.value)
    assert uploaded is not None and uploaded.kind == "voice" and uploaded.content == mp3
    assert (wechat.uploads[0].filename, wechat.uploads[0].content_type) == (
        "answer.mp3",
        "audio/mpeg",
    )
    assert services.speeches == [(TTS_MODEL, "今天晴，最高 25 度。详见")]  # no URL read out


def test_speech_in_another_format_is_converted_to_mp3(wechat: FakeWeChatAPI) -> None:
    if not audio.available():
        pytest.skip("PyAV is needed to re-encode")
    services = FakeServices(speech=media_samples.wav_clip(0.5))
    pub, _ = publisher(make_settings(wechat))
    assert pub.voice(services, "你好", "r") is not None
    assert audio.sniff_format(wechat.uploads[0].content) == "mp3"


@pytest.mark.parametrize(
    "overrides",
    [{"text_to_speech_model": None}, {"app_secret": ""}],
    ids=["no model", "no secret"],
)
def test_no_voice_without_model_or_secret(wechat: FakeWeChatAPI, overrides: dict[str, Any]) -> None:
    services = FakeServices(speech=b"ID3")
    pub, _ = publisher(make_settings(wechat, **overrides))
    assert pub.voice(services, "你好", "r") is None
    assert services.speeches == [] and wechat.count(MEDIA_UPLOAD) == 0


def test_nothing_to_say_is_no_voice(wechat: FakeWeChatAPI) -> None:
    services = FakeServices(speech=b"ID3")
    pub, _ = publisher(make_settings(wechat))
    assert pub.voice(services, "  https://example.com/only-a-link  ", "r") is None
    assert services.speeches == []


def test_a_failing_speech_model_is_no_voice(wechat: FakeWeChatAPI) -> None:
    services = FakeServices()
    services.fail("text_to_speech", RuntimeError("tts quota"))
    pub, _ = publisher(make_settings(wechat))
    assert pub.voice(services, "你好", "r") is None
    assert wechat.count(MEDIA_UPLOAD) == 0


def test_speech_that_is_not_audio_is_no_voice(wechat: FakeWeChatAPI) -> None:
    pub, _ = publisher(make_settings(wechat))
    assert pub.voice(FakeServices(speech=b"not audio at all"), "你好", "r") is None
    assert pub.voice(FakeServices(speech=b""), "你好", "r") is None
    assert wechat.count(MEDIA_UPLOAD) == 0


def test_a_failing_voice_upload_is_no_voice(wechat: FakeWeChatAPI, mp3: bytes) -> None:
    wechat.fail(40005, path=MEDIA_UPLOAD)
    pub, _ = publisher(make_settings(wechat))
    assert pub.voice(FakeServices(speech=mp3), "你好", "r") is None


def test_speakable_text_is_short_and_ends_at_a_sentence() -> None:
    assert _speakable("  短回答。 ") == "短回答。"
    sentence = "这是一句完整的话。"  # 9 characters
    long = sentence * 40
    spoken = _speakable(long)
    assert len(spoken) <= SPOKEN_CHARACTERS and spoken.endswith("。")
    assert long.startswith(spoken) and len(spoken) > SPOKEN_CHARACTERS // 2
    unbroken = "字" * (SPOKEN_CHARACTERS * 2)
    assert _speakable(unbroken) == "字" * SPOKEN_CHARACTERS
    early_stop = "短。" + "字" * (SPOKEN_CHARACTERS * 2)  # the only sentence end is too early
    assert len(_speakable(early_stop)) == SPOKEN_CHARACTERS
    assert _speakable("见 http://a.example/x?y=1 和 https://b.example") == "见  和"
