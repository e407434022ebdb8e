from __future__ import annotations

from ..models import InboundMessage, VideoMessage
from .base import HandlerContext, Outcome, Reply, TypeHandler


class VideoHandler(TypeHandler):
    """Videos and short videos get the configurable friendly reply."""

    handles = (VideoMessage,)  # ShortVideoMessage is a subclass

    def handle(self, message: InboundMessage, ctx: HandlerContext) -> Outcome:
        return Reply(ctx.settings.unsupported_message)
