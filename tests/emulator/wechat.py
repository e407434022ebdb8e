"""A WeChat Official Account server simulator: plays WeChat's side against the endpoint URL.

Emulates what WeChat's servers do with the "服务器地址(URL)" of an Official Account
(reference ``/work/shared/reference/wechat-protocol.md``):

- §2 URL verification: signed ``GET ?signature&timestamp&nonce&echostr``.
- §3 message push in the three modes: plain (``signature, timestamp, nonce, openid``),
  compatible (plaintext fields *and* ``<Encrypt>``, ``encrypt_type=aes&msg_signature=…``) and
  safe (``<ToUserName>`` + ``<Encrypt>`` only).
- §6 delivery: up to 3 attempts of the same XML (same MsgId/CreateTime), each waiting 5 s, the
  next starting 5 s after the previous one started; the user sees the first reply received in
  time, nothing for ``success``/empty, and "该公众号暂时无法提供服务，请稍后再试" when every
  attempt timed out or the reply was malformed. All times scale with ``time_scale``.

Signing and crypto use **wechatpy** (``WeChatSigner``, ``WeChatCrypto``), an implementation
independent of the plugin's. Replies are checked like WeChat would: encrypted replies must
carry a valid ``MsgSignature`` over the envelope's own ``TimeStamp``/``Nonce`` and decrypt for
our AppID; ``ToUserName``/``FromUserName`` must be swapped relative to the inbound message.

HTTP is done with ``http.client`` so that the 5 s deadline is a *total* deadline and a timed-out
attempt really hangs up (the daemon emulator then ends that request's session); results are
returned as ``requests.Response`` objects.
"""

from __future__ import annotations

import http.client
import itertools
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import requests
import xmltodict
from requests.structures import CaseInsensitiveDict
from wechatpy.crypto import WeChatCrypto
from wechatpy.utils import WeChatSigner

WECHAT_FAILURE_TEXT = "该公众号暂时无法提供服务，请稍后再试"
"""What the WeChat client shows when the account's server failed (D-reply)."""

WECHAT_TIMEOUT = 5.0
"""WeChat waits 5 s per delivery and starts the next one 5 s after the previous started."""

Mode = Literal["plain", "compatible", "safe"]
Seen = str | tuple[str, ...]
Tamper = str | Callable[[dict[str, str], str], tuple[dict[str, str], str]]

TAMPER_KINDS = (
    "signature",  # wrong `signature`
    "msg_signature",  # wrong `msg_signature` (encrypted modes)
    "ciphertext",  # corrupted <Encrypt>, msg_signature recomputed over it
    "app_id",  # encrypted for another AppID, correctly signed
    "no_encrypt_type",  # encrypted body but no encrypt_type/msg_signature in the query
    "plaintext",  # compatible mode: plaintext fields changed after signing
)


def sign(*parts: str) -> str:
    """WeChat's sha1 over the sorted parts (wechatpy ``WeChatSigner``)."""
    signer = WeChatSigner()
    signer.add_data(*parts)
    return str(signer.signature)


def cdata(value: str) -> str:
    """A CDATA section for any text (``]]>`` split across two sections)."""
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def corrupt_ciphertext(encrypt: str) -> str:
    """``encrypt`` with one base64 character changed (still decodes; no longer decrypts)."""
    flipped = "A" if encrypt[10] != "A" else "B"
    return encrypt[:10] + flipped + encrypt[11:]


def _nonce() -> str:
    return str(secrets.randbelow(9_000_000_000) + 1_000_000_000)


@dataclass
class Attempt:
    """One HTTP delivery attempt of a message."""

    index: int
    started: float
    """Seconds after the delivery began (``time.monotonic`` based)."""
    status: int | None
    body: bytes
    elapsed: float
    timed_out: bool
    error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def answered(self) -> bool:
        """The server answered and the platform took the answer (no ``error``, e.g. no
        WeCom retry after a non-200)."""
        return self.status is not None and not self.timed_out and self.error is None


@dataclass
class Delivery:
    """The outcome of WeChat delivering one message (all its attempts)."""

    xml: str
    attempts: list[Attempt]
    user_saw: list[Seen]
    reply: dict[str, Any] | None = None
    """The (decrypted) reply XML as a dict, when the answering attempt sent one."""
    reply_xml: str | None = None
    problem: str | None = None
    """Why the user saw the failure text, if they did (WeCom: why the delivery failed)."""
    started_at: float = 0.0
    """``time.monotonic()`` when the first attempt started."""
    notes: list[str] = field(default_factory=list)
    """What the platform changed on the way (e.g. a WeCom text reply cut to 2048 bytes)."""

    @property
    def answered_by(self) -> Attempt | None:
        """The attempt whose response WeChat used (None: all timed out or failed)."""
        return next((a for a in self.attempts if a.answered), None)

    @property
    def text(self) -> str | None:
        """The first text the user saw, if any."""
        return next((s for s in self.user_saw if isinstance(s, str)), None)


def _reason(attempt: Attempt) -> str:
    return attempt.error or f"HTTP {attempt.status}"


class WeChatUser:
    """Convenience wrapper: one follower talking to the account."""

    def __init__(self, sim: WeChatSimulator, openid: str) -> None:
        self.sim = sim
        self.openid = openid
        self.last: Delivery | None = None

    def send(self, xml: str) -> list[Seen]:
        self.last = self.sim.deliver(xml)
        return self.last.user_saw

    def say(self, content: str) -> list[Seen]:
        """Send a text message; returns what this user saw."""
        return self.send(self.sim.text(self.openid, content))

    def event(self, event: str, event_key: str | None = None, **extra: Any) -> list[Seen]:
        return self.send(self.sim.event(self.openid, event, event_key, **extra))


class WeChatSimulator:
    """WeChat's servers for one Official Account, pointed at the plugin's endpoint URL.

    ``tests/emulator/wecom.py`` subclasses it; the hooks are :attr:`crypto_class`,
    :attr:`failure_text`, :meth:`_retry_reason`, :meth:`_shown_text` and :meth:`_message`.
    """

    crypto_class: Callable[[str, str, str], Any] = WeChatCrypto
    """wechatpy crypto taking ``(token, EncodingAESKey, receive id)``; OA: the AppID."""
    failure_text: str | None = WECHAT_FAILURE_TEXT
    """What the client shows when the server failed (None: nothing)."""

    def __init__(
        self,
        url: str,
        token: str,
        app_id: str,
        encoding_aes_key: str | None = None,
        mode: Mode = "plain",
        time_scale: float = 1.0,
        deliveries: int = 3,
        original_id: str = "gh_0123456789ab",
    ) -> None:
        if mode != "plain" and not encoding_aes_key:
            raise ValueError(f"mode {mode!r} needs an EncodingAESKey")
        self.url = url
        self.token = token
        self.app_id = app_id
        self.encoding_aes_key = encoding_aes_key
        self.mode: Mode = mode
        self.time_scale = time_scale
        self.deliveries = deliveries
        self.original_id = original_id
        self.crypto = (
            self.crypto_class(token, encoding_aes_key, app_id) if encoding_aes_key else None
        )
        self.history: list[Delivery] = []
        self._ids = itertools.count(24_000_000_000_000_000 + secrets.randbelow(10**9) * 1000)
        self._ids_lock = threading.Lock()

    @property
    def timeout(self) -> float:
        """WeChat's per-attempt wait, scaled."""
        return WECHAT_TIMEOUT * self.time_scale

    def user(self, openid: str) -> WeChatUser:
        return WeChatUser(self, openid)

    # ------------------------------------------------------------------ HTTP

    def _http(
        self,
        method: str,
        params: Mapping[str, str],
        body: bytes | None,
        timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """One request with a *total* deadline; raises ``requests.Timeout`` when it passes."""
        full = (
            self.url + ("&" if "?" in self.url else "?") + urlencode(params) if params else self.url
        )
        parts = urlsplit(full)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        start = time.monotonic()
        deadline = start + timeout

        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise requests.exceptions.ReadTimeout(f"no response within {timeout:.2f}s")
            return left

        conn = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout
        )
        hdrs = {"User-Agent": "Mozilla/4.0", "Accept": "*/*", "Pragma": "no-cache"}
        if body is not None:
            hdrs["Content-Type"] = "text/xml"
        hdrs.update(headers or {})
        try:
            conn.connect()
            sock = conn.sock
            assert isinstance(sock, socket.socket)
            sock.settimeout(remaining())
            conn.request(method, target, body=body, headers=hdrs)
            sock.settimeout(remaining())
            resp = conn.getresponse()
            chunks: list[bytes] = []
            while True:
                sock.settimeout(remaining())
                data = resp.read1(65536)
                if not data:
                    break
                chunks.append(data)
        except TimeoutError as exc:
            raise requests.exceptions.ReadTimeout(f"no response within {timeout:.2f}s") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise requests.exceptions.ConnectionError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()
        r = requests.Response()
        r.status_code = resp.status
        r.reason = resp.reason
        r.headers = CaseInsensitiveDict(resp.getheaders())
        r._content = b"".join(chunks)
        r.url = full
        content_type = r.headers.get("Content-Type", "")
        charset = next(
            (p.split("=", 1)[1].strip() for p in content_type.split(";") if "charset=" in p), None
        )
        r.encoding = charset or "utf-8"
        r.elapsed = timedelta(seconds=time.monotonic() - start)
        return r

    # ------------------------------------------------------------------ URL verification

    def verify_url(
        self,
        echostr: str | None = None,
        timestamp: int | str | None = None,
        nonce: str | None = None,
        timeout: float | None = None,
    ) -> requests.Response:
        """The signed GET WeChat sends when the URL is saved in the console (§2)."""
        ts = str(timestamp if timestamp is not None else int(time.time()))
        nonce = nonce or _nonce()
        echostr = echostr or str(secrets.randbelow(10**18))
        params = {
            "signature": sign(self.token, ts, nonce),
            "echostr": echostr,
            "timestamp": ts,
            "nonce": nonce,
        }
        return self._http("GET", params, None, timeout or self.timeout)

    def get(self, params: Mapping[str, str], timeout: float | None = None) -> requests.Response:
        """A raw GET with exactly these query parameters (nothing signed)."""
        return self._http("GET", dict(params), None, timeout or self.timeout)

    # ------------------------------------------------------------------ message push

    def _encrypt(self, xml: str, ts: str, nonce: str, app_id: str | None = None) -> tuple[str, str]:
        """``(Encrypt, msg_signature)`` for a plaintext message, via wechatpy."""
        crypto = self.crypto
        if app_id is not None and app_id != self.app_id:
            assert self.encoding_aes_key
            crypto = self.crypto_class(self.token, self.encoding_aes_key, app_id)
        if crypto is None:
            raise ValueError("no EncodingAESKey configured")
        envelope = xmltodict.parse(crypto.encrypt_message(xml, nonce, ts))["xml"]
        return str(envelope["Encrypt"]), str(envelope["MsgSignature"])

    def build_request(
        self,
        xml: str,
        timestamp: int | str | None = None,
        nonce: str | None = None,
        tamper: Tamper | None = None,
    ) -> tuple[dict[str, str], str]:
        """Query parameters and body of one signed push in the simulator's mode."""
        ts = str(timestamp if timestamp is not None else int(time.time()))
        nonce = nonce or _nonce()
        msg = xmltodict.parse(xml)["xml"]
        params = {
            "signature": sign(self.token, ts, nonce),
            "timestamp": ts,
            "nonce": nonce,
            "openid": str(msg.get("FromUserName") or ""),
        }
        body = xml
        if self.mode != "plain":
            encrypt, msg_sig = self._encrypt(
                xml, ts, nonce, app_id="wx_wrong_appid0000" if tamper == "app_id" else None
            )
            if tamper == "ciphertext":
                encrypt = corrupt_ciphertext(encrypt)
                msg_sig = sign(self.token, ts, nonce, encrypt)
            params["encrypt_type"] = "aes"
            params["msg_signature"] = msg_sig
            if self.mode == "compatible":
                body = xml.replace("</xml>", f"<Encrypt>{cdata(encrypt)}</Encrypt></xml>", 1)
            else:
                to = str(msg.get("ToUserName") or self.original_id)
                body = (
                    f"<xml><ToUserName>{cdata(to)}</ToUserName>"
                    f"<Encrypt>{cdata(encrypt)}</Encrypt></xml>"
                )
        if isinstance(tamper, str):
            if tamper not in TAMPER_KINDS:
                raise ValueError(f"unknown tamper {tamper!r}; one of {TAMPER_KINDS}")
            if tamper == "signature":
                params["signature"] = sign("not-the-token", ts, nonce)
            elif tamper == "msg_signature":
                params["msg_signature"] = sign("not-the-token", ts, nonce, "x")
            elif tamper == "no_encrypt_type":
                params.pop("encrypt_type", None)
                params.pop("msg_signature", None)
            elif tamper == "plaintext":
                content = msg.get("Content")
                if content is not None:
                    body = body.replace(cdata(str(content)), cdata(str(content) + " (tampered)"), 1)
        elif tamper is not None:
            params, body = tamper(dict(params), body)
        return params, body

    def post_xml(
        self,
        xml: str,
        timestamp: int | str | None = None,
        nonce: str | None = None,
        tamper: Tamper | None = None,
        timeout: float | None = None,
    ) -> requests.Response:
        """One signed delivery of ``xml``; returns the raw response (raises on timeout).

        ``tamper``: one of :data:`TAMPER_KINDS` or ``f(params, body) -> (params, body)``.
        """
        params, body = self.build_request(xml, timestamp, nonce, tamper)
        return self._http("POST", params, body.encode("utf-8"), timeout or self.timeout)

    def deliver(self, xml: str, tamper: Tamper | None = None) -> Delivery:
        """Deliver ``xml`` the way WeChat does (retries, deadlines) and judge the reply."""
        gap = self.timeout
        t0 = time.monotonic()
        attempts: list[Attempt] = []
        answer: requests.Response | None = None
        for i in range(max(1, self.deliveries)):
            wait = t0 + i * gap - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            start = time.monotonic()
            try:
                r = self.post_xml(xml, tamper=tamper, timeout=gap)
            except requests.exceptions.Timeout:
                attempts.append(
                    Attempt(i, start - t0, None, b"", time.monotonic() - start, True, "timeout")
                )
                continue
            except requests.exceptions.RequestException as exc:
                attempts.append(
                    Attempt(i, start - t0, None, b"", time.monotonic() - start, False, str(exc))
                )
                continue
            retry = self._retry_reason(r)
            attempts.append(
                Attempt(
                    i,
                    start - t0,
                    r.status_code,
                    r.content,
                    time.monotonic() - start,
                    False,
                    retry,
                    dict(r.headers),
                )
            )
            if retry is not None:
                continue
            answer = r
            break
        delivery = Delivery(xml=xml, attempts=attempts, user_saw=[], started_at=t0)
        if answer is None:
            if all(a.status is None for a in attempts):
                self._fail(delivery, "no response within the deadline on any attempt")
            else:
                self._fail(delivery, "every attempt failed: " + ", ".join(map(_reason, attempts)))
        else:
            self._judge(xml, answer, delivery)
        self.history.append(delivery)
        return delivery

    # ------------------------------------------------------------------ replies

    def _retry_reason(self, r: requests.Response) -> str | None:
        """Why the platform retries after this answer (None: it takes it; OA takes any)."""
        return None

    def _fail(self, delivery: Delivery, problem: str) -> None:
        delivery.user_saw = [self.failure_text] if self.failure_text is not None else []
        delivery.problem = problem

    def _shown_text(self, content: str, delivery: Delivery) -> str:
        """How the client shows a text reply (OA: as it is)."""
        return content

    def _judge(self, inbound_xml: str, r: requests.Response, delivery: Delivery) -> None:
        """Fill ``delivery.user_saw`` from the reply as the WeChat client would show it."""

        def failed(problem: str) -> None:
            self._fail(delivery, problem)

        if r.status_code != 200:
            failed(f"HTTP {r.status_code}")
            return
        body = r.content.strip()
        if body in (b"", b"success"):
            return
        try:
            reply, inner_xml = self.open_reply(body)
        except ValueError as exc:
            failed(str(exc))
            return
        delivery.reply = reply
        delivery.reply_xml = inner_xml
        inbound = xmltodict.parse(inbound_xml)["xml"]
        if reply.get("ToUserName") != inbound.get("FromUserName") or reply.get(
            "FromUserName"
        ) != inbound.get("ToUserName"):
            failed("reply ToUserName/FromUserName are not the inbound ones swapped")
            return
        msg_type = reply.get("MsgType")
        if msg_type == "text":
            content = reply.get("Content")
            if not content:
                failed("text reply with empty Content")
                return
            delivery.user_saw = [self._shown_text(str(content), delivery)]
        elif msg_type in ("image", "voice"):
            media = (reply.get(msg_type.capitalize()) or {}).get("MediaId")
            if not media:
                failed(f"{msg_type} reply without MediaId")
                return
            delivery.user_saw = [(msg_type, str(media))]
        elif msg_type == "video":
            media = (reply.get("Video") or {}).get("MediaId")
            if not media:
                failed("video reply without MediaId")
                return
            delivery.user_saw = [("video", str(media))]
        elif msg_type == "music":
            delivery.user_saw = [("music", str((reply.get("Music") or {}).get("Title") or ""))]
        elif msg_type == "news":
            items = ((reply.get("Articles") or {}).get("item")) or []
            if isinstance(items, dict):
                items = [items]
            delivery.user_saw = [("news", *(str(i.get("Title") or "") for i in items))]
        elif msg_type == "transfer_customer_service":
            return
        else:
            failed(f"unknown reply MsgType {msg_type!r}")

    def open_reply(self, body: bytes) -> tuple[dict[str, Any], str]:
        """Parse (and in encrypted modes verify + decrypt) a reply; ``ValueError`` if bad."""
        try:
            text = body.decode("utf-8")
            outer = xmltodict.parse(text, disable_entities=True)
        except Exception as exc:
            raise ValueError(f"reply is not XML: {exc}") from exc
        root = outer.get("xml") if isinstance(outer, dict) else None
        if not isinstance(root, dict):
            raise ValueError("reply has no <xml> root")
        if "Encrypt" not in root:
            if self.mode == "safe":
                raise ValueError("plaintext reply in safe mode")
            return root, text
        if self.mode == "plain" or self.crypto is None:
            raise ValueError("encrypted reply in plain mode")
        try:
            encrypt = str(root["Encrypt"])
            msg_sig = str(root["MsgSignature"])
            ts = str(root["TimeStamp"])
            nonce = str(root["Nonce"])
        except KeyError as exc:
            raise ValueError(f"encrypted reply without {exc}") from exc
        if sign(self.token, ts, nonce, encrypt) != msg_sig:
            raise ValueError("reply MsgSignature does not verify")
        try:
            inner_xml = str(self.crypto.decrypt_message(root, msg_sig, ts, nonce))
            inner = xmltodict.parse(inner_xml, disable_entities=True)["xml"]
        except Exception as exc:
            raise ValueError(f"reply does not decrypt: {type(exc).__name__}: {exc}") from exc
        if not isinstance(inner, dict):
            raise ValueError("decrypted reply has no fields")
        return inner, inner_xml

    # ------------------------------------------------------------------ message builders

    def next_msg_id(self) -> int:
        with self._ids_lock:
            return next(self._ids)

    def _message(
        self,
        openid: str,
        msg_type: str,
        fields: list[tuple[str, Any]],
        msg_id: int | None,
        with_msg_id: bool = True,
    ) -> str:
        parts = [
            f"<ToUserName>{cdata(self.original_id)}</ToUserName>",
            f"<FromUserName>{cdata(openid)}</FromUserName>",
            f"<CreateTime>{int(time.time())}</CreateTime>",
            f"<MsgType>{cdata(msg_type)}</MsgType>",
        ]
        for name, value in fields:
            if value is None:
                continue
            if isinstance(value, str):
                parts.append(f"<{name}>{cdata(value)}</{name}>")
            else:
                parts.append(f"<{name}>{value}</{name}>")
        if with_msg_id:
            parts.append(f"<MsgId>{msg_id if msg_id is not None else self.next_msg_id()}</MsgId>")
        return "<xml>" + "".join(parts) + "</xml>"

    def text(self, openid: str, content: str, msg_id: int | None = None, **extra: Any) -> str:
        return self._message(openid, "text", [("Content", content), *extra.items()], msg_id)

    def image(
        self,
        openid: str,
        media_id: str = "media_image_1",
        pic_url: str = "http://mmbiz.qpic.cn/test.jpg",
        msg_id: int | None = None,
    ) -> str:
        return self._message(openid, "image", [("PicUrl", pic_url), ("MediaId", media_id)], msg_id)

    def voice(
        self,
        openid: str,
        media_id: str = "media_voice_1",
        recognition: str | None = None,
        format: str = "amr",
        msg_id: int | None = None,
        media_id_16k: str | None = None,
    ) -> str:
        fields: list[tuple[str, Any]] = [("MediaId", media_id), ("Format", format)]
        if recognition is not None:
            fields.append(("Recognition", recognition))
        if media_id_16k is not None:
            fields.append(("MediaId16K", media_id_16k))
        return self._message(openid, "voice", fields, msg_id)

    def video(
        self,
        openid: str,
        media_id: str = "media_video_1",
        thumb_media_id: str = "thumb_1",
        msg_id: int | None = None,
    ) -> str:
        fields = [("MediaId", media_id), ("ThumbMediaId", thumb_media_id)]
        return self._message(openid, "video", fields, msg_id)

    def shortvideo(
        self,
        openid: str,
        media_id: str = "media_shortvideo_1",
        thumb_media_id: str = "thumb_1",
        msg_id: int | None = None,
    ) -> str:
        fields = [("MediaId", media_id), ("ThumbMediaId", thumb_media_id)]
        return self._message(openid, "shortvideo", fields, msg_id)

    def location(
        self,
        openid: str,
        x: float = 23.134521,
        y: float = 113.358803,
        scale: int = 20,
        label: str = "位置信息",
        msg_id: int | None = None,
    ) -> str:
        fields: list[tuple[str, Any]] = [
            ("Location_X", x),
            ("Location_Y", y),
            ("Scale", scale),
            ("Label", label),
        ]
        return self._message(openid, "location", fields, msg_id)

    def link(
        self,
        openid: str,
        title: str = "公众平台官网链接",
        description: str = "公众平台官网链接",
        url: str = "https://mp.weixin.qq.com/",
        msg_id: int | None = None,
    ) -> str:
        fields = [("Title", title), ("Description", description), ("Url", url)]
        return self._message(openid, "link", fields, msg_id)

    def event(self, openid: str, event: str, event_key: str | None = None, **extra: Any) -> str:
        """An event push (no MsgId): ``subscribe``, ``SCAN``, ``CLICK``, ``LOCATION``, …

        ``extra`` become elements, e.g. ``Ticket="…"``, ``Latitude=23.1``.
        """
        fields: list[tuple[str, Any]] = [("Event", event)]
        if event_key is not None:
            fields.append(("EventKey", event_key))
        fields.extend(extra.items())
        return self._message(openid, "event", fields, None, with_msg_id=False)
