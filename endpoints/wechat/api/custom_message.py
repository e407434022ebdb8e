"""客服消息 (customer-service messages): push text or an image to a user.

https://developers.weixin.qq.com/doc/service/api/customer/message/api_sendcustommessage
(also ``/doc/subscription/guide/product/kf/intro.md``; ``wechat-protocol.md`` §7).

Only verified accounts may send (else 48001); a user message opens a 48-hour window with a
quota of 5 messages (45015 outside it, 45047 over quota). Keep each text at most 2048 UTF-8
bytes (45002 when too long; WeChat documents no exact number).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import WeChatClient

SEND_PATH = "/cgi-bin/message/custom/send"


class CustomMessageAPI:
    """``client.custom_message``: ``POST /cgi-bin/message/custom/send``."""

    def __init__(self, client: WeChatClient) -> None:
        self._client = client

    def send_text(self, openid: str, content: str, *, timeout: float | None = None) -> None:
        """Send ``content`` as a text message to ``openid``."""
        self._send({"touser": openid, "msgtype": "text", "text": {"content": content}}, timeout)

    def send_image(self, openid: str, media_id: str, *, timeout: float | None = None) -> None:
        """Send an uploaded image (``client.media.upload("image", …)``) to ``openid``."""
        self._send({"touser": openid, "msgtype": "image", "image": {"media_id": media_id}}, timeout)

    def send_voice(self, openid: str, media_id: str, *, timeout: float | None = None) -> None:
        """Send an uploaded voice clip (``client.media.upload("voice", …)``) to ``openid``."""
        self._send({"touser": openid, "msgtype": "voice", "voice": {"media_id": media_id}}, timeout)

    def _send(self, body: dict[str, Any], timeout: float | None) -> None:
        self._client._call("POST", SEND_PATH, json=body, timeout=timeout)
