from __future__ import annotations

from ..models import InboundMessage, LocationMessage
from .base import AskApp, HandlerContext, Outcome, TypeHandler


class LocationHandler(TypeHandler):
    handles = (LocationMessage,)

    def handle(self, message: InboundMessage, ctx: HandlerContext) -> Outcome:
        assert isinstance(message, LocationMessage)
        where = f"{message.label} " if message.label else ""
        coordinates = f"（纬度 {message.location_x}，经度 {message.location_y}）"
        return AskApp(f"[位置] {where}{coordinates}")
