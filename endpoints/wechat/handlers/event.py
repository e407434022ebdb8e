"""Events: follow → welcome, unfollow → forget the user, menu click → app; the rest are
acknowledged silently (answering a VIEW or LOCATION event would confuse the user)."""

from __future__ import annotations

from ..models import ClickEvent, EventMessage, InboundMessage, SubscribeEvent, UnsubscribeEvent
from ..settings import ClickEventMode
from .base import SILENT, AskApp, HandlerContext, Outcome, Reply, TypeHandler


class SubscribeHandler(TypeHandler):
    handles = (SubscribeEvent,)

    def handle(self, message: InboundMessage, ctx: HandlerContext) -> Outcome:
        assert isinstance(message, SubscribeEvent)
        welcome = ctx.settings.welcome_message
        if not welcome:
            return SILENT
        # The welcome may mention the QR scene the user came from.
        return Reply(welcome.replace("{qr_scene}", message.qr_scene))


class UnsubscribeHandler(TypeHandler):
    handles = (UnsubscribeEvent,)

    def handle(self, message: InboundMessage, ctx: HandlerContext) -> Outcome:
        ctx.conversations.clear(message.from_user)
        ctx.outbox.forget_user(message.from_user)
        return SILENT


class ClickHandler(TypeHandler):
    handles = (ClickEvent,)

    def handle(self, message: InboundMessage, ctx: HandlerContext) -> Outcome:
        assert isinstance(message, ClickEvent)
        if ctx.settings.click_event_mode is ClickEventMode.IGNORE or not message.event_key:
            return SILENT
        return AskApp(message.event_key)


class SilentEventHandler(TypeHandler):
    """VIEW, SCAN, LOCATION, TEMPLATESENDJOBFINISH and every unknown event."""

    handles = (EventMessage,)

    def handle(self, message: InboundMessage, ctx: HandlerContext) -> Outcome:
        return SILENT
