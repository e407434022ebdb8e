"""Who sends what the passive reply cannot: one sender per platform behind one protocol.

* Official Account: customer-service messages (``/cgi-bin/message/custom/send``) and the
  typing indicator.
* WeCom: app messages (``/cgi-bin/message/send`` with the AgentId); markdown parts go out as
  markdown, or as their text rendering when ``wecom_markdown`` is off or WeCom refuses the
  markdown (40058). WeCom has no typing indicator.

:func:`api_client` is the one place that picks the server API client for the settings'
platform (media downloads and uploads use it too).
"""

from __future__ import annotations

import logging
from typing import Protocol

from .api import ContentRejected, ServerAPIClient, WeChatClient, WeComClient
from .parts import PartKind, read_part
from .settings import Settings
from .storage import EndpointStore

logger = logging.getLogger(__name__)

#: How long one push may take (token fetch, send, refresh and retry included).
PUSH_TIMEOUT = 10.0


def api_client(settings: Settings, store: EndpointStore) -> ServerAPIClient:
    """The server API client of the endpoint's platform (close it, or use ``with``)."""
    if settings.is_wecom:
        return WeComClient(
            settings.api_base_url, settings.app_id, settings.app_secret, settings.agent_id, store
        )
    return WeChatClient(settings.api_base_url, settings.app_id, settings.app_secret, store)


class TextSender(Protocol):
    def send_text(self, openid: str, content: str) -> None:
        """Send one stored text part (plain text, or a markdown part) to the user."""
        ...

    def send_media(self, openid: str, kind: PartKind, media_id: str) -> None: ...

    def start_typing(self, openid: str) -> None: ...

    def close(self) -> None: ...


class WeChatSender:
    """The customer-service API behind :class:`TextSender`."""

    def __init__(self, settings: Settings, store: EndpointStore) -> None:
        self._client = WeChatClient(
            settings.api_base_url, settings.app_id, settings.app_secret, store
        )

    def send_text(self, openid: str, content: str) -> None:
        text = read_part(content).text  # a markdown part (never made for WeChat) as text
        self._client.custom_message.send_text(openid, text, timeout=PUSH_TIMEOUT)

    def send_media(self, openid: str, kind: PartKind, media_id: str) -> None:
        messages = self._client.custom_message
        send = messages.send_voice if kind is PartKind.VOICE else messages.send_image
        send(openid, media_id, timeout=PUSH_TIMEOUT)

    def start_typing(self, openid: str) -> None:
        self._client.typing.start(openid, timeout=PUSH_TIMEOUT)

    def close(self) -> None:
        self._client.close()


class WeComSender:
    """WeCom app messages behind :class:`TextSender`."""

    def __init__(self, settings: Settings, store: EndpointStore) -> None:
        self._client = WeComClient(
            settings.api_base_url, settings.app_id, settings.app_secret, settings.agent_id, store
        )
        self._markdown = settings.wecom_markdown

    def send_text(self, openid: str, content: str) -> None:
        part = read_part(content)
        messages = self._client.message
        if part.kind is PartKind.MARKDOWN and self._markdown:
            try:
                messages.send_markdown(openid, part.value, timeout=PUSH_TIMEOUT)
                return
            except (ContentRejected, ValueError) as exc:
                logger.warning(
                    "WeCom refused a markdown message (%s); sending it as text",
                    getattr(exc, "errcode", type(exc).__name__),
                )
        messages.send_text(openid, part.text, timeout=PUSH_TIMEOUT)

    def send_media(self, openid: str, kind: PartKind, media_id: str) -> None:
        self._client.message.send_media(openid, kind.value, media_id, timeout=PUSH_TIMEOUT)

    def start_typing(self, openid: str) -> None:
        """WeCom shows no typing indicator."""

    def close(self) -> None:
        self._client.close()


def sender_for(settings: Settings, store: EndpointStore) -> TextSender:
    if settings.is_wecom:
        return WeComSender(settings, store)
    return WeChatSender(settings, store)
