from __future__ import annotations

from ..models import InboundMessage, TextMessage
from .base import SILENT, AskApp, HandlerContext, Outcome, TypeHandler


class TextHandler(TypeHandler):
    handles = (TextMessage,)

    def handle(self, message: InboundMessage, ctx: HandlerContext) -> Outcome:
        assert isinstance(message, TextMessage)
        query = message.content.strip()
        return AskApp(query) if query else SILENT
