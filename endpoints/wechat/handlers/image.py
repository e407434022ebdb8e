from __future__ import annotations

from ..models import ImageMessage, InboundMessage
from .base import AskApp, HandlerContext, Outcome, TypeHandler


class ImageHandler(TypeHandler):
    """The picture URL reaches the app in the query and in ``inputs.wechat_pic_url``."""

    handles = (ImageMessage,)

    def handle(self, message: InboundMessage, ctx: HandlerContext) -> Outcome:
        assert isinstance(message, ImageMessage)
        return AskApp(f"[图片] {message.pic_url}".strip())
