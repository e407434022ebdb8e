"""Which handler takes a message: one ordered tuple, first match wins."""

from __future__ import annotations

from .handlers.base import Handler, HandlerContext
from .handlers.commands import ClearCommand, FetchCommand, HelpCommand
from .handlers.event import (
    ClickHandler,
    EnterAgentHandler,
    SilentEventHandler,
    SubscribeHandler,
    UnsubscribeHandler,
)
from .handlers.image import ImageHandler
from .handlers.link import LinkHandler
from .handlers.location import LocationHandler
from .handlers.text import TextHandler
from .handlers.unsupported import UnsupportedHandler
from .handlers.video import VideoHandler
from .handlers.voice import VoiceHandler
from .models import InboundMessage

HANDLERS: tuple[Handler, ...] = (
    ClearCommand(),
    HelpCommand(),
    FetchCommand(),
    TextHandler(),
    ImageHandler(),
    VoiceHandler(),
    LinkHandler(),
    LocationHandler(),
    VideoHandler(),
    SubscribeHandler(),
    UnsubscribeHandler(),
    ClickHandler(),
    EnterAgentHandler(),
    SilentEventHandler(),
    UnsupportedHandler(),
)


def handler_for(message: InboundMessage, ctx: HandlerContext) -> Handler:
    return next(h for h in HANDLERS if h.matches(message, ctx))
