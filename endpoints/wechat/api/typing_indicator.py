"""The "对方正在输入…" indicator shown to a user while an answer is being prepared.

https://developers.weixin.qq.com/doc/subscription/api/customer/message/api_typing.md
(rules: ``/miniprogram/dev/framework/open-ability/customer-message/typing.md``;
``wechat-protocol.md`` §7).

Needs the customer-service permission and an interaction within the last 30 s (else 45080);
it lasts 15 s and may not be re-sent meanwhile (45081); a sent message cancels it. It is a
slow synchronous call: keep it out of the 5-second answer window.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .client import WeChatClient

TYPING_PATH = "/cgi-bin/message/custom/typing"


class TypingAPI:
    """``client.typing``: ``POST /cgi-bin/message/custom/typing``."""

    def __init__(self, client: WeChatClient) -> None:
        self._client = client

    def start(self, openid: str, *, timeout: float | None = None) -> None:
        """Show the typing indicator to ``openid`` (command ``Typing``)."""
        self._command(openid, "Typing", timeout)

    def stop(self, openid: str, *, timeout: float | None = None) -> None:
        """Hide the typing indicator (command ``CancelTyping``)."""
        self._command(openid, "CancelTyping", timeout)

    def _command(self, openid: str, command: str, timeout: float | None) -> None:
        self._client._call(
            "POST", TYPING_PATH, json={"touser": openid, "command": command}, timeout=timeout
        )
