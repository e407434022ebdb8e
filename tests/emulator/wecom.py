"""A WeCom (企业微信) server simulator: a self-built app's callback, played against the plugin.

Emulates what WeCom's servers do with the app's 接收消息 → 设置API接收 URL (reference
``/work/shared/reference/wechat-protocol.md`` §10, crypto §4), on top of
:class:`tests.emulator.wechat.WeChatSimulator` (same HTTP layer, retry loop, reply checks):

- §10.1 URL verification: ``GET ?msg_signature&timestamp&nonce&echostr`` where ``echostr`` is
  an encrypted random number (percent-encoded in the query, ``+ / =`` included). It succeeds
  when the answer is HTTP 200 whose body is exactly the decrypted plaintext (no quotes, BOM
  or newline) within 1 s (:class:`VerifyResponse`).
- §10.2 message push: always encrypted, ``POST ?msg_signature&timestamp&nonce`` with
  ``<xml><ToUserName>CorpID</ToUserName><Encrypt>…</Encrypt><AgentID>…</AgentID></xml>``;
  the plaintext carries ``<AgentID>`` too. Messages have ``MsgId``, events don't.
- §10.3 delivery: each attempt waits 5 s (scaled by ``time_scale``) and the next starts 5 s
  after the previous one started; an HTTP status other than 200 is a failure and retried too.
  ``deliveries`` attempts in all (default 3: "总共重试三次" is ambiguous, as for OA). HTTP 200
  with an empty body or ``success`` = received, nothing shown. A reply must be the encrypted
  envelope with a valid ``MsgSignature`` that decrypts for the CorpID, with ``ToUserName`` =
  the user id and ``FromUserName`` = the CorpID; a text over 2048 UTF-8 bytes is shown cut
  (``Delivery.notes``). WeCom shows the user no failure text: when every attempt failed, or
  the reply was bad, the user sees nothing and ``Delivery.problem`` says why.

Crypto is wechatpy's WeCom implementation (``wechatpy.enterprise.crypto`` in the pinned
1.8.18; ``wechatpy.work.crypto`` in 2.x), receive id = CorpID, independent of the plugin's.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import requests
import xmltodict
from wechatpy.enterprise.crypto import PrpCrypto
from wechatpy.enterprise.crypto import WeChatCrypto as WeComCrypto

from .wechat import (
    Delivery,
    Seen,
    WeChatSimulator,
    WeChatUser,
    _nonce,
    cdata,
    corrupt_ciphertext,
    sign,
)

__all__ = [
    "DEFAULT_AGENT_ID",
    "VERIFY_DEADLINE",
    "WECOM_TAMPER_KINDS",
    "WECOM_TEXT_LIMIT",
    "Delivery",
    "Seen",
    "VerifyResponse",
    "WeComSimulator",
    "WeComUser",
]

DEFAULT_AGENT_ID = 1000002
VERIFY_DEADLINE = 1.0
"""WeCom wants the verification answer within 1 s (not scaled: a real-time requirement)."""
WECOM_TEXT_LIMIT = 2048
"""A passive text reply is shown cut to this many UTF-8 bytes (§10.3)."""

WeComTamper = str | Callable[[dict[str, str], str], tuple[dict[str, str], str]]
WECOM_TAMPER_KINDS = (
    "msg_signature",  # wrong `msg_signature`
    "ciphertext",  # corrupted <Encrypt>, msg_signature recomputed over it
    "corp_id",  # encrypted for another CorpID, correctly signed
)
_OTHER_CORP_ID = "ww0000000000000bad"


class VerifyResponse(requests.Response):
    """The answer to a verification GET, judged as WeCom judges it."""

    expected: str = ""
    """The echostr plaintext WeCom encrypted (what the body must be)."""
    problem: str | None = None
    """Why WeCom would refuse the URL (None: verified)."""

    @property
    def verified(self) -> bool:
        return self.problem is None


def _verification_problem(r: requests.Response, expected: str, deadline: float) -> str | None:
    elapsed = r.elapsed.total_seconds()
    if r.status_code != 200:
        return f"HTTP {r.status_code}"
    body = r.content
    if body == expected.encode("utf-8"):
        return None if elapsed <= deadline else f"answered after {elapsed:.2f}s (> {deadline}s)"
    if body.startswith(b"\xef\xbb\xbf"):
        return "body starts with a BOM"
    if body.strip() == expected.encode("utf-8"):
        return "body has whitespace or a newline around the plaintext"
    if body.strip(b"\"' \r\n") == expected.encode("utf-8"):
        return "body is the plaintext in quotes"
    return f"body {body[:80]!r} is not the decrypted echostr {expected!r}"


class WeComUser(WeChatUser):
    """Convenience wrapper: one member of the corp talking to the app."""

    sim: WeComSimulator

    def __init__(self, sim: WeComSimulator, user_id: str) -> None:
        super().__init__(sim, user_id)

    @property
    def user_id(self) -> str:
        return self.openid


class WeComSimulator(WeChatSimulator):
    """WeCom's servers for one self-built app, pointed at the plugin's callback URL."""

    crypto_class = WeComCrypto
    failure_text = None  # WeCom shows nothing when the app's server failed

    def __init__(
        self,
        url: str,
        token: str,
        corp_id: str,
        encoding_aes_key: str,
        agent_id: int = DEFAULT_AGENT_ID,
        time_scale: float = 1.0,
        deliveries: int = 3,
        verify_deadline: float = VERIFY_DEADLINE,
        max_text_bytes: int = WECOM_TEXT_LIMIT,
    ) -> None:
        super().__init__(
            url,
            token,
            corp_id,
            encoding_aes_key,
            mode="safe",
            time_scale=time_scale,
            deliveries=deliveries,
            original_id=corp_id,
        )
        self.agent_id = agent_id
        self.verify_deadline = verify_deadline
        self.max_text_bytes = max_text_bytes

    @property
    def corp_id(self) -> str:
        return self.app_id

    def user(self, openid: str) -> WeComUser:
        """The member with UserID ``openid``."""
        return WeComUser(self, openid)

    # ------------------------------------------------------------------ URL verification

    def encrypt_echostr(self, plaintext: str, corp_id: str | None = None) -> str:
        """``plaintext`` encrypted as WeCom's ``echostr`` (base64, receive id = CorpID)."""
        assert self.crypto is not None
        return str(PrpCrypto(self.crypto.key).encrypt(plaintext, corp_id or self.corp_id), "ascii")

    def verify_url(
        self,
        echostr: str | None = None,
        timestamp: int | str | None = None,
        nonce: str | None = None,
        timeout: float | None = None,
    ) -> VerifyResponse:
        """The GET WeCom sends when the URL is saved (§10.1); ``echostr`` is the plaintext
        (default: a random number), sent encrypted. Raises ``requests.Timeout`` if there
        is no answer within ``timeout`` (default: the larger of 5 s scaled and 1 s)."""
        ts = str(timestamp if timestamp is not None else int(time.time()))
        nonce = nonce or _nonce()
        plaintext = echostr or str(secrets.randbelow(10**19))
        encrypted = self.encrypt_echostr(plaintext)
        params = {
            "msg_signature": sign(self.token, ts, nonce, encrypted),
            "timestamp": ts,
            "nonce": nonce,
            "echostr": encrypted,
        }
        wait = timeout or max(self.timeout, self.verify_deadline)
        r = self._http("GET", params, None, wait)
        judged = VerifyResponse()
        judged.__dict__.update(r.__dict__)
        judged.expected = plaintext
        judged.problem = _verification_problem(r, plaintext, self.verify_deadline)
        return judged

    # ------------------------------------------------------------------ message push

    def build_request(
        self,
        xml: str,
        timestamp: int | str | None = None,
        nonce: str | None = None,
        tamper: WeComTamper | None = None,
    ) -> tuple[dict[str, str], str]:
        """Query parameters and body of one encrypted push.

        ``tamper``: one of :data:`WECOM_TAMPER_KINDS` or ``f(params, body) -> (params, body)``.
        """
        if isinstance(tamper, str) and tamper not in WECOM_TAMPER_KINDS:
            raise ValueError(f"unknown tamper {tamper!r}; one of {WECOM_TAMPER_KINDS}")
        ts = str(timestamp if timestamp is not None else int(time.time()))
        nonce = nonce or _nonce()
        receive_id = _OTHER_CORP_ID if tamper == "corp_id" else None
        encrypt, msg_sig = self._encrypt(xml, ts, nonce, app_id=receive_id)
        if tamper == "ciphertext":
            encrypt = corrupt_ciphertext(encrypt)
            msg_sig = sign(self.token, ts, nonce, encrypt)
        elif tamper == "msg_signature":
            msg_sig = sign("not-the-token", ts, nonce, encrypt)
        params = {"msg_signature": msg_sig, "timestamp": ts, "nonce": nonce}
        body = (
            f"<xml><ToUserName>{cdata(self.corp_id)}</ToUserName>"
            f"<Encrypt>{cdata(encrypt)}</Encrypt>"
            f"<AgentID>{cdata(str(self.agent_id))}</AgentID></xml>"
        )
        if tamper is not None and not isinstance(tamper, str):
            params, body = tamper(dict(params), body)
        return params, body

    def decrypt_request(self, params: dict[str, str], body: str) -> str:
        """The plaintext XML of a push built by :meth:`build_request` (for checks)."""
        assert self.crypto is not None
        envelope = xmltodict.parse(body)["xml"]
        ts, nonce = params["timestamp"], params["nonce"]
        return str(self.crypto.decrypt_message(envelope, params["msg_signature"], ts, nonce))

    # ------------------------------------------------------------------ hooks

    def _retry_reason(self, r: requests.Response) -> str | None:
        return None if r.status_code == 200 else f"HTTP {r.status_code}"

    def _shown_text(self, content: str, delivery: Delivery) -> str:
        raw = content.encode("utf-8")
        if len(raw) <= self.max_text_bytes:
            return content
        delivery.notes.append(f"text reply cut from {len(raw)} to {self.max_text_bytes} bytes")
        return raw[: self.max_text_bytes].decode("utf-8", "ignore")

    def _message(
        self,
        openid: str,
        msg_type: str,
        fields: list[tuple[str, Any]],
        msg_id: int | None,
        with_msg_id: bool = True,
    ) -> str:
        xml = super()._message(openid, msg_type, fields, msg_id, with_msg_id)
        return xml.removesuffix("</xml>") + f"<AgentID>{self.agent_id}</AgentID></xml>"

    # ------------------------------------------------------------------ message builders

    def link(
        self,
        openid: str,
        title: str = "企业微信",
        description: str = "企业微信官网链接",
        url: str = "https://work.weixin.qq.com/",
        msg_id: int | None = None,
        pic_url: str = "https://wework.qpic.cn/wwpic/test.png",
    ) -> str:
        """A link message (WeCom's carries ``PicUrl``)."""
        fields = [("Title", title), ("Description", description), ("Url", url)]
        return self._message(openid, "link", [*fields, ("PicUrl", pic_url)], msg_id)

    def event(self, openid: str, event: str, event_key: str | None = None, **extra: Any) -> str:
        """An event push (no MsgId): ``subscribe``, ``unsubscribe``, ``enter_agent``,
        ``click``, ``view``, ``LOCATION`` (``Latitude=…, Longitude=…, Precision=…``), …

        ``enter_agent`` carries an empty ``EventKey`` unless one is given.
        """
        if event_key is None and event == "enter_agent":
            event_key = ""
        return super().event(openid, event, event_key, **extra)
