from __future__ import annotations

from ..models import InboundMessage, LinkMessage
from .base import AskApp, HandlerContext, Outcome, TypeHandler


class LinkHandler(TypeHandler):
    handles = (LinkMessage,)

    def handle(self, message: InboundMessage, ctx: HandlerContext) -> Outcome:
        assert isinstance(message, LinkMessage)
        lines = [f"[链接] {message.title}".rstrip(), message.description, message.url]
        return AskApp("\n".join(line for line in lines if line))
