"""Pictures and speech the app produces, made into WeChat media messages.

Images the app returns (``message_file`` events, workflow file outputs, markdown images of
files Dify hosts) are downloaded from Dify and uploaded to WeChat as temporary media
(AppSecret needed; ≤2 MB JPEG/PNG/GIF). A voice reply is the app's text spoken by the
chosen text-to-speech model, converted to MP3 for WeChat. What cannot be sent as media
stays in the text as a link.
Reference: ``wechat-protocol.md`` §8-§9.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from . import audio
from .api import ServerAPIClient
from .api.errors import error_label
from .diagnostics import Journal
from .dify_app import AnswerFile
from .dify_services import DifyServices
from .inbound_media import MEDIA_TIMEOUT, Download, TooLarge, fetch_url, sniff_image
from .parts import PartKind, media_part
from .senders import api_client
from .settings import Settings
from .storage import EndpointStore

logger = logging.getLogger(__name__)

WECHAT_IMAGE_LIMIT = 2 * 1024 * 1024
WECHAT_IMAGE_TYPES = {"image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif"}
#: How much of an answer is spoken: WeChat voice messages last at most 60 seconds.
SPOKEN_CHARACTERS = 200
#: At most this many images of one answer become WeChat messages (5 customer-service
#: messages per user message, and the text comes first).
MAX_IMAGES = 3

_MARKDOWN_IMAGE = re.compile(r"!\[([^\]\n]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def is_dify_file_url(url: str) -> bool:
    """A signed URL of a file Dify hosts (``…/files/…?timestamp=…&nonce=…&sign=…``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or "/files/" not in parts.path:
        return False
    return "sign" in parse_qs(parts.query)


def hosted_images(markdown: str, hosts: set[str]) -> list[AnswerFile]:
    """Markdown images in the answer that point at files Dify hosts on one of ``hosts``."""
    return [
        AnswerFile(url=m.group(2), kind="image", name=m.group(1))
        for m in _MARKDOWN_IMAGE.finditer(markdown)
        if is_dify_file_url(m.group(2)) and urlsplit(m.group(2)).hostname in hosts
    ]


def remove_images(markdown: str, urls: set[str]) -> str:
    """The answer without the markdown images that go out as WeChat images."""
    return _MARKDOWN_IMAGE.sub(lambda m: "" if m.group(2) in urls else m.group(0), markdown)


@dataclass(frozen=True)
class Published:
    parts: list[str]  # media parts, in answer order
    sent_urls: set[str]  # files that became WeChat media
    links: list[AnswerFile]  # files that must stay links in the text


class MediaPublisher:
    def __init__(
        self,
        settings: Settings,
        store: EndpointStore,
        fetch: Callable[[str, int], Download] = fetch_url,
        journal: Journal | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._fetch = fetch
        self._journal = journal or Journal(None)

    def _client(self) -> ServerAPIClient:
        return api_client(self._settings, self._store)

    def images(
        self, files: list[AnswerFile], ref: str, should_stop: Callable[[], bool]
    ) -> Published:
        """Images become WeChat image parts where possible; every other file (and every
        image that cannot be sent) stays a link."""
        usable = [f for f in files if urlsplit(f.url).scheme in ("http", "https")]
        if len(usable) < len(files):
            logger.warning(
                "The app returned %d file(s) with a relative URL; set FILES_URL in Dify so "
                "files have public URLs",
                len(files) - len(usable),
            )
        images = [f for f in usable if f.kind == "image" or f.mimetype.startswith("image/")]
        parts: list[str] = []
        sent: set[str] = set()
        if images and self._settings.can_call_api:
            with self._client() as client:
                for file in images[:MAX_IMAGES]:
                    if should_stop():
                        break
                    media_id = self._upload_image(client, file, ref)
                    if media_id:
                        parts.append(media_part(PartKind.IMAGE, media_id))
                        sent.add(file.url)
        return Published(parts, sent, [f for f in usable if f.url not in sent])

    def _upload_image(self, client: ServerAPIClient, file: AnswerFile, ref: str) -> str | None:
        try:
            downloaded = self._fetch(file.url, WECHAT_IMAGE_LIMIT)
        except TooLarge:
            logger.info("An image of message %s is over WeChat's 2 MB: sent as a link", ref)
            return None
        except Exception as exc:
            logger.warning("Fetching an image of message %s failed (%s)", ref, error_label(exc))
            return None
        mimetype = downloaded.content_type or file.mimetype
        if mimetype not in WECHAT_IMAGE_TYPES:
            mimetype = sniff_image(downloaded.content) or mimetype
        if mimetype not in WECHAT_IMAGE_TYPES:
            logger.info(
                "An image of message %s is %s, not JPEG/PNG/GIF: sent as a link", ref, mimetype
            )
            return None
        try:
            uploaded = client.media.upload(
                "image",
                "answer" + WECHAT_IMAGE_TYPES[mimetype],
                downloaded.content,
                mimetype,
                timeout=MEDIA_TIMEOUT,
            )
        except Exception as exc:
            logger.warning(
                "Uploading an image of message %s to WeChat failed (%s)", ref, error_label(exc)
            )
            self._journal.record_wechat(exc)
            return None
        return uploaded.media_id

    def voice(self, services: DifyServices, text: str, ref: str) -> str | None:
        """The answer spoken (a voice media part), or None when that cannot be done."""
        model = self._settings.text_to_speech_model
        spoken = _speakable(text)
        if not (model and spoken and self._settings.can_speak):
            return None
        try:
            speech = services.text_to_speech(model, spoken)
            content, extension, mimetype = audio.speech_to_wechat_voice(speech)
            with self._client() as client:
                uploaded = client.media.upload(
                    "voice", "answer" + extension, content, mimetype, timeout=MEDIA_TIMEOUT
                )
        except Exception as exc:
            logger.warning("The voice reply to message %s failed (%s)", ref, error_label(exc))
            self._journal.record_wechat(exc)
            return None
        return media_part(PartKind.VOICE, uploaded.media_id)


def _speakable(text: str) -> str:
    """The beginning of the answer, cut at a sentence end, short enough for 60 seconds."""
    text = re.sub(r"https?://\S+", "", text).strip()
    if len(text) <= SPOKEN_CHARACTERS:
        return text
    head = text[:SPOKEN_CHARACTERS]
    cut = max(head.rfind(mark) for mark in "。！？!?.\n")
    return head[: cut + 1] if cut > SPOKEN_CHARACTERS // 2 else head
