from __future__ import annotations

from ..inbound_media import MediaRequest
from ..models import InboundMessage, ShortVideoMessage, VideoMessage
from .base import AskApp, HandlerContext, Outcome, TypeHandler


class VideoHandler(TypeHandler):
    """The app gets a description (and ``wechat_media_id``); with an AppSecret and a file
    input variable, the video itself as a file."""

    handles = (VideoMessage,)  # ShortVideoMessage is a subclass

    def handle(self, message: InboundMessage, ctx: HandlerContext) -> Outcome:
        assert isinstance(message, VideoMessage)
        label = "[小视频]" if isinstance(message, ShortVideoMessage) else "[视频]"
        return AskApp(f"{label} 用户发来一段视频", media=MediaRequest("video", message.media_id))
