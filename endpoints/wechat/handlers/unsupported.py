from __future__ import annotations

from ..models import InboundMessage
from .base import Handler, HandlerContext, Outcome, Reply


class UnsupportedHandler(Handler):
    """Default: any message no other handler took gets the friendly reply."""

    def matches(self, message: InboundMessage, ctx: HandlerContext) -> bool:
        return True

    def handle(self, message: InboundMessage, ctx: HandlerContext) -> Outcome:
        return Reply(ctx.settings.unsupported_message)
