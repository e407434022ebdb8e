"""Text commands that work without the app: new conversation, help, fetch the rest."""

from __future__ import annotations

from ..models import InboundMessage, TextMessage
from ..texts import CONVERSATION_CLEARED, HELP_TEMPLATE
from .base import FetchNext, Handler, HandlerContext, Outcome, Reply

CLEAR_COMMANDS = frozenset({"/clear", "/new", "/reset", "/清除", "/新对话", "/重置"})
HELP_COMMANDS = frozenset({"/help", "/帮助", "/?"})


def normalise_command(text: str) -> str:
    return text.strip().replace("／", "/").replace("？", "?").lower()


class ClearCommand(Handler):
    def matches(self, message: InboundMessage, ctx: HandlerContext) -> bool:
        return isinstance(message, TextMessage) and (
            normalise_command(message.content) in CLEAR_COMMANDS
        )

    def handle(self, message: InboundMessage, ctx: HandlerContext) -> Outcome:
        ctx.conversations.clear(message.from_user)
        return Reply(CONVERSATION_CLEARED)


class HelpCommand(Handler):
    def matches(self, message: InboundMessage, ctx: HandlerContext) -> bool:
        return isinstance(message, TextMessage) and (
            normalise_command(message.content) in HELP_COMMANDS
        )

    def handle(self, message: InboundMessage, ctx: HandlerContext) -> Outcome:
        return Reply(HELP_TEMPLATE.format(keyword=ctx.settings.fetch_keyword))


class FetchCommand(Handler):
    """The fetch keyword means "next part" only while the user has something waiting;
    otherwise it is an ordinary message for the app."""

    def matches(self, message: InboundMessage, ctx: HandlerContext) -> bool:
        return (
            isinstance(message, TextMessage)
            and message.content.strip() == ctx.settings.fetch_keyword
            and ctx.outbox.has_pending(message.from_user)
        )

    def handle(self, message: InboundMessage, ctx: HandlerContext) -> Outcome:
        return FetchNext()
