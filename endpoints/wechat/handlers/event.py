"""Events: follow → welcome, unfollow → forget the user, menu click → the menu map or the
app, WeCom's enter_agent → the welcome if switched on; the rest are acknowledged silently
(answering a VIEW or LOCATION event would confuse the user)."""

from __future__ import annotations

import logging

from ..dify_services import app_profile
from ..formatters import markdown_to_wechat_text
from ..menus import MenuKind, menu_action
from ..models import (
    ClickEvent,
    EnterAgentEvent,
    EventMessage,
    InboundMessage,
    SubscribeEvent,
    UnsubscribeEvent,
)
from ..settings import ClickEventMode, WelcomeMode
from ..texts import CONVERSATION_CLEARED, HELP_TEMPLATE, WELCOME_QUERY
from .base import SILENT, AskApp, HandlerContext, Outcome, Reply, TypeHandler
from .commands import CLEAR_COMMANDS, HELP_COMMANDS, normalise_command

logger = logging.getLogger(__name__)


def welcome(ctx: HandlerContext, qr_scene: str = "") -> Outcome:
    """What a new follower (or a WeCom member opening the app) gets, per ``welcome_mode``."""
    settings = ctx.settings
    if settings.welcome_mode is WelcomeMode.APP:
        # The app sees wechat_event (subscribe / enter_agent) and wechat_qr_scene.
        return AskApp(WELCOME_QUERY)
    if settings.welcome_mode is WelcomeMode.OPENING_STATEMENT and ctx.services is not None:
        opening = app_profile(ctx.services, settings.dify_app_id).opening_statement
        if opening:
            return Reply(markdown_to_wechat_text(opening))
        logger.info("The app has no opening statement; sending the welcome message")
    text = settings.welcome_message
    if not text:
        return SILENT
    # The welcome may mention the QR scene the user came from.
    return Reply(text.replace("{qr_scene}", qr_scene))


class SubscribeHandler(TypeHandler):
    handles = (SubscribeEvent,)

    def handle(self, message: InboundMessage, ctx: HandlerContext) -> Outcome:
        assert isinstance(message, SubscribeEvent)
        return welcome(ctx, message.qr_scene)


class EnterAgentHandler(TypeHandler):
    """WeCom: a member opened the app; welcomed only when ``welcome_on_enter`` is on."""

    handles = (EnterAgentEvent,)

    def handle(self, message: InboundMessage, ctx: HandlerContext) -> Outcome:
        return welcome(ctx) if ctx.settings.welcome_on_enter else SILENT


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
        action = menu_action(message.event_key, dict(ctx.settings.menu_click_map))
        if action is not None:
            if action.kind is MenuKind.REPLY:
                return Reply(action.text) if action.text else SILENT
            command = normalise_command(action.text)
            if command in CLEAR_COMMANDS:
                ctx.conversations.clear(message.from_user)
                return Reply(CONVERSATION_CLEARED)
            if command in HELP_COMMANDS:
                return Reply(HELP_TEMPLATE.format(keyword=ctx.settings.fetch_keyword))
            return AskApp(action.text)
        if ctx.settings.click_event_mode is ClickEventMode.IGNORE or not message.event_key:
            return SILENT
        return AskApp(message.event_key)


class SilentEventHandler(TypeHandler):
    """VIEW, SCAN, LOCATION, TEMPLATESENDJOBFINISH and every unknown event."""

    handles = (EventMessage,)

    def handle(self, message: InboundMessage, ctx: HandlerContext) -> Outcome:
        return SILENT
