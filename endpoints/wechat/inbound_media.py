"""What users send besides text, made into something the app can use.

* **image** — the picture is fetched (the media API when an AppSecret is set, else its
  ``PicUrl``), uploaded to Dify (``session.file.upload``) and passed in the app's file input
  variable (setting ``file_input_variable``) as well as by URL. When the app declares no
  such variable, or anything on the way fails, the URL alone is passed: nothing breaks.
* **voice** without WeChat's ``Recognition`` — downloaded with the media API, converted
  (WeChat sends AMR; Dify's speech-to-text models do not read it) and transcribed with the
  model chosen in ``speech_to_text_model``. The transcript becomes the query.
* **video** — the app gets a description; with an AppSecret and a file input, the video too.

This runs in the request that asks the app — the worker when there is one — so a slow
download never eats the first delivery's 5-second window (DESIGN §3-4).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from . import audio
from .api import WeChatError
from .api.errors import error_label
from .diagnostics import Journal
from .dify_services import DifyServices, FileInput, app_profile
from .senders import api_client
from .settings import Settings
from .storage import EndpointStore

logger = logging.getLogger(__name__)

#: Dify's default upload limits (image 10 MB); WeChat's own (voice 2 MB, video 10 MB).
MAX_BYTES = {"image": 10 * 1024 * 1024, "voice": 2 * 1024 * 1024, "video": 10 * 1024 * 1024}
#: One media download or upload, in seconds (the worker has time; the window does not).
MEDIA_TIMEOUT = 15.0
_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "video/mp4": ".mp4",
}


@dataclass(frozen=True)
class MediaRequest:
    """Media to prepare before the app is asked; travels in the worker ticket."""

    kind: str  # "image" | "voice" | "video"
    media_id: str = ""
    url: str = ""  # PicUrl of an image

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> MediaRequest | None:
        if not data or data.get("kind") not in MAX_BYTES:
            return None
        return cls(str(data["kind"]), str(data.get("media_id", "")), str(data.get("url", "")))


@dataclass(frozen=True)
class Prepared:
    query: str
    metadata: dict[str, str] = field(default_factory=dict)  # extra ``wechat_*`` inputs
    files: dict[str, Any] = field(default_factory=dict)  # file-type inputs


class MediaProblem(Exception):
    """The message cannot be answered by the app; ``text`` is what the user gets and
    ``reason`` is for the log (no content, no secrets)."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(reason)
        self.text = text
        self.reason = reason


@dataclass(frozen=True)
class Download:
    content: bytes
    content_type: str


class TooLarge(Exception):
    pass


def fetch_url(url: str, limit: int, timeout: float = MEDIA_TIMEOUT) -> Download:
    """GET a media URL (http/https only), refusing bodies over ``limit`` bytes."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError("not an http(s) URL")
    with requests.get(url, timeout=(min(5.0, timeout), timeout), stream=True) as response:
        if response.status_code != 200:
            raise OSError(f"HTTP {response.status_code}")
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise TooLarge
        content = bytearray()
        for chunk in response.iter_content(64 * 1024):
            content += chunk
            if len(content) > limit:
                raise TooLarge
        kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    return Download(bytes(content), kind)


def voice_ready(settings: Settings) -> bool:
    """Whether a voice message without ``Recognition`` can be transcribed here."""
    return bool(settings.can_call_api and settings.speech_to_text_model) and audio.available()


class MediaPreparer:
    def __init__(
        self,
        settings: Settings,
        store: EndpointStore,
        services: DifyServices,
        fetch: Callable[[str, int], Download] = fetch_url,
        journal: Journal | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._services = services
        self._fetch = fetch
        self._journal = journal or Journal(None)

    def prepare(self, query: str, media: MediaRequest | None, ref: str) -> Prepared:
        if media is None:
            return Prepared(query)
        if media.kind == "voice":
            return self._voice(media, ref)
        files = self._attach(media, ref)
        return Prepared(query, files=files)

    # --- voice ------------------------------------------------------------------------

    def _voice(self, media: MediaRequest, ref: str) -> Prepared:
        settings = self._settings
        model = settings.speech_to_text_model
        if not (settings.can_call_api and model):
            raise MediaProblem(settings.voice_unavailable_message, "voice transcription not set up")
        try:
            downloaded = self._download(media.media_id)
        except TooLarge:
            raise MediaProblem(settings.voice_fallback_message, "voice too large") from None
        except Exception as exc:
            self._journal.record_wechat(exc)
            raise MediaProblem(
                settings.voice_fallback_message, f"voice download failed ({_describe(exc)})"
            ) from None
        try:
            wav = audio.voice_to_wav(downloaded.content)
        except audio.AudioUnavailable as exc:
            raise MediaProblem(settings.voice_unavailable_message, str(exc)) from None
        except audio.AudioInvalid as exc:
            raise MediaProblem(
                settings.voice_fallback_message, f"voice unreadable ({exc})"
            ) from None
        try:
            transcript = self._services.speech_to_text(model, wav).strip()
        except Exception as exc:
            raise MediaProblem(
                settings.voice_fallback_message, f"speech-to-text failed ({_describe(exc)})"
            ) from None
        if not transcript:
            raise MediaProblem(settings.voice_fallback_message, "empty transcript")
        logger.info("Voice of message %s transcribed (%d characters)", ref, len(transcript))
        return Prepared(transcript, metadata={"wechat_voice_transcript": transcript})

    # --- images and videos ---------------------------------------------------------------

    def _attach(self, media: MediaRequest, ref: str) -> dict[str, Any]:
        """The file input for an image or video; empty when it cannot or need not be."""
        variable = self._settings.file_input_variable
        if not variable:
            return {}
        profile = app_profile(self._services, self._settings.dify_app_id)
        form = profile.file_input(variable)
        if form is FileInput.ABSENT:
            return {}  # the app takes no file: the URL in the query is all it gets
        if not profile.accepts(variable, media.kind):
            logger.info("The app's %s input takes no %s files", variable, media.kind)
            return {}  # Dify would refuse the whole call
        try:
            downloaded = self._media_bytes(media)
        except TooLarge:
            logger.warning("The %s of message %s is too large to pass on", media.kind, ref)
            return {}
        except Exception as exc:
            logger.warning(
                "Fetching the %s of message %s failed (%s); the app gets its URL only",
                media.kind,
                ref,
                _describe(exc),
            )
            self._journal.record_wechat(exc)
            return {}
        if downloaded is None:
            return {}
        mimetype = downloaded.content_type or _sniff_mimetype(downloaded.content, media.kind)
        filename = f"wechat-{media.kind}{_EXTENSIONS.get(mimetype, '')}"
        try:
            parameter = self._services.upload_file(filename, downloaded.content, mimetype)
        except Exception as exc:
            logger.warning(
                "Uploading the %s of message %s to Dify failed (%s); the app gets its URL only",
                media.kind,
                ref,
                _describe(exc),
            )
            return {}
        logger.info("The %s of message %s reached Dify as a file input", media.kind, ref)
        return {variable: [parameter] if form is FileInput.LIST else parameter}

    def _media_bytes(self, media: MediaRequest) -> Download | None:
        if media.kind == "image":
            if self._settings.can_call_api and media.media_id:
                try:
                    return self._download(media.media_id, kind="image")
                except TooLarge:
                    raise
                except Exception as exc:  # PicUrl may still work
                    if not media.url:
                        raise
                    logger.info("Media API download failed (%s); trying PicUrl", _describe(exc))
                    self._journal.record_wechat(exc)
            return self._fetch(media.url, MAX_BYTES["image"]) if media.url else None
        if not (self._settings.can_call_api and media.media_id):
            return None  # a video can only be fetched through the media API
        return self._download(media.media_id, kind="video")

    def _download(self, media_id: str, kind: str = "voice") -> Download:
        limit = MAX_BYTES[kind] if kind in MAX_BYTES else MAX_BYTES["image"]
        settings = self._settings
        with api_client(settings, self._store) as client:
            media = client.media.download(media_id, timeout=MEDIA_TIMEOUT)
        if media.video_url:  # videos come as a link to the file
            return self._fetch(media.video_url, limit)
        if len(media.content) > limit:
            raise TooLarge
        return Download(media.content, media.content_type.split(";")[0].strip().lower())


def sniff_image(content: bytes) -> str | None:
    if content.startswith(b"\x89PNG"):
        return "image/png"
    if content.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if content.startswith(b"GIF8"):
        return "image/gif"
    return None


def _sniff_mimetype(content: bytes, kind: str) -> str:
    if kind == "video":
        return "video/mp4"
    return sniff_image(content) or "application/octet-stream"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, WeChatError):
        return error_label(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
