from __future__ import annotations

from ..inbound_media import MediaRequest
from ..models import ImageMessage, InboundMessage
from .base import AskApp, HandlerContext, Outcome, TypeHandler


class ImageHandler(TypeHandler):
    """The picture reaches the app as a file input (when the app declares one) and by URL
    (in the query and ``inputs.wechat_pic_url``)."""

    handles = (ImageMessage,)

    def handle(self, message: InboundMessage, ctx: HandlerContext) -> Outcome:
        assert isinstance(message, ImageMessage)
        media = MediaRequest("image", message.media_id, message.pic_url)
        return AskApp(f"[图片] {message.pic_url}".strip(), media=media)
