"""Temporary media (临时素材): upload for sending, download what users sent.

- Upload: https://developers.weixin.qq.com/doc/subscription/api/material/temporary/api_uploadtempmedia.html
- Download: https://developers.weixin.qq.com/doc/subscription/api/material/temporary/api_getmedia.html

``wechat-protocol.md`` §9: uploads live 3 days and may be reused; limits image ≤2 MB
(PNG/JPEG/JPG/GIF), voice ≤2 MB AMR/MP3, video ≤10 MB MP4, thumb ≤64 KB JPG. A download
answers with the file, a video with JSON ``{"video_url": …}``, and an error with a JSON body
that may come with HTTP 200, so the client sniffs every download.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from .errors import TransportError

if TYPE_CHECKING:
    from .client import ServerAPIClient

UPLOAD_PATH = "/cgi-bin/media/upload"
DOWNLOAD_PATH = "/cgi-bin/media/get"

MediaKind = Literal["image", "voice", "video", "thumb"]
MEDIA_KINDS: tuple[str, ...] = get_args(MediaKind)


@dataclass(frozen=True)
class MediaFile:
    """A downloaded media file; for videos WeChat gives only ``video_url`` (content empty)."""

    content: bytes
    content_type: str
    filename: str | None = None
    video_url: str | None = None

    def __repr__(self) -> str:  # never dump the bytes into a log
        return (
            f"MediaFile({len(self.content)} bytes, {self.content_type!r}, "
            f"filename={self.filename!r}, video_url={'…' if self.video_url else None})"
        )


@dataclass(frozen=True)
class UploadedMedia:
    """WeChat's answer to an upload: ``media_id`` to send, valid for 3 days."""

    media_id: str
    kind: str
    created_at: int


class MediaAPI:
    """``client.media``: ``POST /cgi-bin/media/upload``, ``GET /cgi-bin/media/get``."""

    def __init__(self, client: ServerAPIClient) -> None:
        self._client = client

    def upload(
        self,
        kind: MediaKind,
        filename: str,
        data: bytes,
        mimetype: str,
        *,
        timeout: float | None = None,
    ) -> UploadedMedia:
        """Upload ``data`` as temporary media of ``kind`` (multipart field ``media``)."""
        if kind not in MEDIA_KINDS:
            raise ValueError(f"media kind must be one of {', '.join(MEDIA_KINDS)}")
        if not data:
            raise ValueError("media data is empty")
        answer = self._client._call(
            "POST",
            UPLOAD_PATH,
            params={"type": kind},
            files={"media": (filename, data, mimetype)},
            timeout=timeout,
        )
        # Thumbnails come back as "thumb_media_id".
        media_id = answer.get("media_id") or answer.get("thumb_media_id")
        if not isinstance(media_id, str) or not media_id:
            raise TransportError(f"{UPLOAD_PATH}: answer without a media_id")
        try:
            created_at = int(answer.get("created_at") or 0)
        except (TypeError, ValueError):
            created_at = 0
        return UploadedMedia(media_id, str(answer.get("type") or kind), created_at)

    def download(self, media_id: str, *, timeout: float | None = None) -> MediaFile:
        """The media a user sent (``MediaId`` / ``MediaId16K`` of an inbound message)."""
        return self._client._call(
            "GET", DOWNLOAD_PATH, params={"media_id": media_id}, timeout=timeout, binary=True
        )
