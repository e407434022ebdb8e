"""Handler protocol: each handler says what it handles and what to do with it.

A handler either answers at once (``Reply``) or asks for the app (``AskApp``); only the
coordinator decides when and how the answer reaches WeChat.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..conversations import ConversationStore
from ..dify_services import DifyServices
from ..inbound_media import MediaRequest
from ..models import InboundMessage
from ..outbox import Outbox
from ..settings import Settings


@dataclass(frozen=True)
class Reply:
    """Answer now. ``text=None`` acknowledges silently (WeChat's ``success``).
    ``paginated``: the text is already one WeChat-sized part, hint included."""

    text: str | None
    paginated: bool = False


@dataclass(frozen=True)
class AskApp:
    """Send ``query`` to the Dify app; its answer is the reply. ``media`` is prepared first
    (by the request that asks the app); ``metadata`` adds ``wechat_*`` inputs; ``spoken``
    marks a question asked by voice (a voice reply may follow)."""

    query: str
    media: MediaRequest | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    spoken: bool = False


@dataclass(frozen=True)
class FetchNext:
    """Reply with the next waiting part of an earlier answer (waiting for it if the app
    is still working on it)."""


Outcome = Reply | AskApp | FetchNext

SILENT = Reply(None)


@dataclass(frozen=True)
class HandlerContext:
    settings: Settings
    conversations: ConversationStore
    outbox: Outbox
    services: DifyServices | None = None  # Dify besides the app call (app parameters)


class Handler(ABC):
    @abstractmethod
    def matches(self, message: InboundMessage, ctx: HandlerContext) -> bool: ...

    @abstractmethod
    def handle(self, message: InboundMessage, ctx: HandlerContext) -> Outcome: ...


class TypeHandler(Handler):
    """Matches one message model (and its subclasses)."""

    handles: tuple[type[InboundMessage], ...] = ()

    def matches(self, message: InboundMessage, ctx: HandlerContext) -> bool:
        return isinstance(message, self.handles)
