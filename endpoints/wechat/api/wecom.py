"""The WeCom (企业微信) server API for one self-built app: token and app messages.

Same request core as the Official Account client (:class:`.client.ServerAPIClient`: one
refresh-and-retry on a rejected token, bounded time, nothing secret in errors); what
differs is here (``wechat-protocol.md`` §10.4-§10.5):

- the token comes from ``GET /cgi-bin/gettoken?corpid=…&corpsecret=…``; it belongs to the
  app's Secret, so the shared cache is keyed by CorpID, AgentId and a digest of the Secret
  (pasting the right Secret over a wrong one must not keep serving the wrong one's token);
- messages go out through ``POST /cgi-bin/message/send`` with the app's ``agentid``: text,
  markdown (≤ 2048 UTF-8 bytes, shown in the WeCom client only), image, voice;
- error codes have WeCom meanings (:func:`.errors.wecom_error_for`), e.g. 60020 when the
  server's IP is not among the app's trusted IPs.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from ..storage import EndpointStore
from .client import DEFAULT_TIMEOUT, ServerAPIClient, Transport
from .errors import UserUnavailable, WeChatAPIError, error_for, wecom_error_for

GETTOKEN_PATH = "/cgi-bin/gettoken"
MESSAGE_SEND_PATH = "/cgi-bin/message/send"
MARKDOWN_LIMIT_BYTES = 2048


class WeComClient(ServerAPIClient):
    """Client of the WeCom server API for the app ``agent_id`` of the enterprise ``corp_id``."""

    message: WeComMessageAPI
    """应用消息: ``send_text``, ``send_markdown``, ``send_media``."""

    def __init__(
        self,
        base_url: str,
        corp_id: str,
        secret: str,
        agent_id: str,
        store: EndpointStore,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.time,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        secret_digest = hashlib.sha256(secret.encode("utf-8")).hexdigest()[:16]
        owner = f"wecom:{corp_id}:{agent_id}:{secret_digest}"
        super().__init__(base_url, owner, secret, store, transport, clock, timeout)
        self._corp_id = corp_id
        self._agent_id = agent_id
        self.message = WeComMessageAPI(self, agent_id)

    def __repr__(self) -> str:
        return f"WeComClient({self._host!r}, corp_id={self._corp_id!r}, agent={self._agent_id!r})"

    def _fetch_token(self) -> tuple[str, int]:
        if not self._corp_id or not self._secret:
            raise error_for(41004 if self._corp_id else 41002, "corpid or secret missing")
        response = self._send(
            "GET", GETTOKEN_PATH, params={"corpid": self._corp_id, "corpsecret": self._secret}
        )
        data = self._json(GETTOKEN_PATH, response, (self._secret,))
        return self._token_from(GETTOKEN_PATH, data)

    def _error(self, errcode: int, errmsg: str, redact: tuple[str, ...]) -> WeChatAPIError:
        return wecom_error_for(errcode, errmsg, redact=redact)


class WeComMessageAPI:
    """``client.message``: ``POST /cgi-bin/message/send`` to one member at a time."""

    def __init__(self, client: WeComClient, agent_id: str) -> None:
        self._client = client
        self._agent_id = agent_id

    def send_text(self, user_id: str, content: str, *, timeout: float | None = None) -> None:
        self._send(user_id, "text", {"content": content}, timeout)

    def send_markdown(self, user_id: str, content: str, *, timeout: float | None = None) -> None:
        """Markdown (WeCom's subset) for ``user_id``; at most 2048 UTF-8 bytes."""
        if len(content.encode("utf-8")) > MARKDOWN_LIMIT_BYTES:
            raise ValueError("WeCom markdown messages are limited to 2048 UTF-8 bytes")
        self._send(user_id, "markdown", {"content": content}, timeout)

    def send_media(
        self, user_id: str, kind: str, media_id: str, *, timeout: float | None = None
    ) -> None:
        """An uploaded ``image`` or ``voice`` (``client.media.upload``) for ``user_id``."""
        self._send(user_id, kind, {"media_id": media_id}, timeout)

    def _send(
        self, user_id: str, msgtype: str, body: dict[str, Any], timeout: float | None
    ) -> None:
        payload: dict[str, Any] = {
            "touser": user_id,
            "msgtype": msgtype,
            "agentid": int(self._agent_id) if self._agent_id.isdigit() else self._agent_id,
            msgtype: body,
        }
        answer = self._client._call("POST", MESSAGE_SEND_PATH, json=payload, timeout=timeout)
        # errcode 0 can still mean "not delivered": WeCom lists the members it skipped.
        invalid = str(answer.get("invaliduser") or "").split("|")
        if user_id in invalid:
            raise UserUnavailable(
                81013,
                "invaliduser",
                hint=(
                    "WeCom did not deliver to the member: check the app's visibility range "
                    "(可见范围) and that the member is active."
                ),
            )
