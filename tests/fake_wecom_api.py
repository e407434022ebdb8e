"""A loopback fake of the WeCom (企业微信) server API (``qyapi.weixin.qq.com``).

Built on :class:`tests.fake_wechat_api.FakeWeChatAPI` (same server, scripting and inspection;
this module only overrides where WeCom differs). Point a client at :attr:`base_url`::

    with FakeWeComAPI() as wecom:
        token = requests.get(f"{wecom.base_url}/cgi-bin/gettoken",
                             params={"corpid": wecom.corp_id, "corpsecret": wecom.corp_secret})
        ...  # POST /cgi-bin/message/send?access_token=…
        assert wecom.texts("zhangsan") == ["hi"]

What it emulates (``/work/shared/reference/wechat-protocol.md`` §10.4-§10.5):

- ``GET /cgi-bin/gettoken?corpid=…&corpsecret=…`` → ``{"errcode":0,"errmsg":"ok",
  "access_token":…,"expires_in":7200}``; a wrong corpid is 40013, a wrong secret 40001
  (missing: 41002 / 41004). While the token is valid every call returns it again with its
  remaining lifetime (WeCom's older text says so; ⚠ the current page is silent); once it is
  expired or revoked a new one is issued.
- Every other call needs ``access_token``: missing → 41001, unknown or revoked → 40014,
  expired → 42001.
- Trusted IPs (企业可信IP, §10.5): after :meth:`~FakeWeComAPI.distrust_ip` every call except
  gettoken answers 60020 ``not allow to access from your ip, hint: […], from ip: …, more info
  at https://open.work.weixin.qq.com/devtool/query?e=60020``. Every error message carries
  WeCom's ``hint``/``from ip``/``more info at`` suffix, so clients must not compare errmsg
  for equality.
- ``POST /cgi-bin/message/send`` (JSON, whatever the Content-Type): ``agentid`` (int or numeric
  string; missing 41011, wrong 40056), ``msgtype`` text | markdown | image | voice | video |
  file | textcard | news (other: 40008). Text over ``max_text_bytes`` (2048 UTF-8 bytes) is
  accepted and shown truncated (:meth:`~FakeWeComAPI.truncated_texts`); markdown over
  ``max_markdown_bytes`` is 40058 ``markdown.content exceed max length 2048`` (⚠ the limit
  and the message are inferred from the robot webhook; change the argument to test others).
  Media messages need a ``media_id`` of that kind the fake knows (40007). ``touser`` is
  ``"a|b"`` or ``@all``; with ``members`` set, unknown ids come back in ``invaliduser`` and
  all-unknown is 81013. Accepted messages are recorded per user id in arrival order (``@all``
  for every member, or under ``"@all"`` when ``members`` is None).
- ``POST /cgi-bin/media/upload?type=image|voice|video|file`` (multipart field ``media``;
  image ≤10 MB JPG/PNG, voice ≤2 MB AMR, video ≤10 MB MP4, file ≤20 MB any type; a wrong type
  40005, oversized :data:`MEDIA_SIZE_ERRCODES`) answering ``created_at`` as a string as the
  docs show, and ``GET /cgi-bin/media/get`` (bytes for every kind, videos included;
  an unknown media_id a JSON 40007).

Scripting and inspection are the OA fake's: :meth:`expire_token`, :meth:`revoke_token`,
:meth:`fail`, :meth:`respond_raw`, :meth:`delay`, :meth:`add_media`; :meth:`calls`,
:meth:`count`, :attr:`token_fetches`, :meth:`outbox`, :meth:`timeline`, :meth:`texts`,
:meth:`received_media`, :meth:`wait_until`; plus :meth:`~FakeWeComAPI.markdowns`.
Not emulated: per-member rate limits (30/min, 1000/h, excess silently dropped), toparty/totag,
the duplicate check, template cards.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

from tests.fake_wechat_api import (
    JSON_TYPE,
    MEDIA_GET,
    MEDIA_UPLOAD,
    FakeWeChatAPI,
    _Answer,
    _json_answer,
)

__all__ = [
    "DEFAULT_AGENT_ID",
    "DEFAULT_CORP_ID",
    "DEFAULT_CORP_SECRET",
    "DEFAULT_UNTRUSTED_IP",
    "ERRMSGS",
    "GETTOKEN",
    "MEDIA_GET",
    "MEDIA_UPLOAD",
    "MESSAGE_SEND",
    "MSGTYPES",
    "FakeWeComAPI",
]

DEFAULT_CORP_ID = "ww" + "fa4e0000c0ffee01"
DEFAULT_CORP_SECRET = "fake-corp-secret-" + "0" * 26  # 43 characters, like a real one
DEFAULT_AGENT_ID = 1000002
DEFAULT_UNTRUSTED_IP = "203.0.113.7"

GETTOKEN = "/cgi-bin/gettoken"
MESSAGE_SEND = "/cgi-bin/message/send"
MORE_INFO = "https://open.work.weixin.qq.com/devtool/query?e="

MSGTYPES = ("text", "markdown", "image", "voice", "video", "file", "textcard", "news")
MAX_ARTICLES = 8

_MB = 1024 * 1024
MEDIA_LIMITS = {"image": 10 * _MB, "voice": 2 * _MB, "video": 10 * _MB, "file": 20 * _MB}
MEDIA_EXTENSIONS: dict[str, frozenset[str]] = {
    "image": frozenset({"jpg", "jpeg", "png"}),
    "voice": frozenset({"amr"}),
    "video": frozenset({"mp4"}),
    "file": frozenset(),  # any type
}
MEDIA_SIZE_ERRCODES = {"image": 40009, "voice": 40006, "video": 40011, "file": 40006}
"""⚠ WeCom's global codes as we read them: 40009 image size, 40011 video size, 40006 any other
file size (not verified against the live API)."""

ERRMSGS = {
    -1: "system busy",
    40001: "invalid secret",
    40004: "invalid media type",
    40005: "invalid file type",
    40006: "invalid file size",
    40007: "invalid media_id",
    40008: "invalid message type",
    40009: "invalid image size",
    40011: "invalid video size",
    40013: "invalid corpid",
    40014: "invalid access_token",
    40056: "invalid agentid",
    40058: "invalid Request Parameter",
    41001: "access_token missing",
    41002: "corpid missing",
    41004: "corpsecret missing",
    41005: "media data missing",
    41011: "missing agentid",
    42001: "access_token expired",
    43002: "require POST method",
    44004: "empty content",
    45008: "article size out of limit",
    45009: "api freq out of limit",
    47001: "data format error",
    48002: "api forbidden",
    60020: "not allow to access from your ip",
    81013: "user & party & tag all invalid",
}


def _same_agent(value: Any, agent_id: int) -> bool:
    """``agentid`` as WeCom accepts it: the int, or its decimal string."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value == agent_id
    return isinstance(value, str) and value.strip().isdigit() and int(value) == agent_id


def _cut(content: str, limit: int | None) -> str:
    """``content`` cut to at most ``limit`` UTF-8 bytes, on a character boundary."""
    if limit is None:
        return content
    return content.encode("utf-8")[:limit].decode("utf-8", "ignore")


class FakeWeComAPI(FakeWeChatAPI):
    """The fake WeCom server for one self-built app; see the module docstring."""

    TOKEN_PATHS = (GETTOKEN,)
    INVALID_TOKEN_ERRCODE = 40014
    ERRMSGS = ERRMSGS
    MEDIA_LIMITS = MEDIA_LIMITS
    MEDIA_EXTENSIONS = MEDIA_EXTENSIONS
    MEDIA_SIZE_ERRCODES = MEDIA_SIZE_ERRCODES
    MEDIA_MSGTYPES = ("image", "voice", "video", "file")
    CONTENT_MSGTYPES = ("text", "markdown")
    VIDEO_AS_URL = False
    MISSING_MEDIA_CONTENT_TYPE = JSON_TYPE

    def __init__(
        self,
        corp_id: str = DEFAULT_CORP_ID,
        corp_secret: str = DEFAULT_CORP_SECRET,
        agent_id: int = DEFAULT_AGENT_ID,
        *,
        token_ttl: int = 7200,
        clock: Callable[[], float] = time.time,
        max_text_bytes: int | None = 2048,
        max_markdown_bytes: int = 2048,
        members: Iterable[str] | None = None,
    ) -> None:
        super().__init__(
            corp_id, corp_secret, token_ttl=token_ttl, clock=clock, max_text_bytes=max_text_bytes
        )
        self.agent_id = agent_id
        self.max_markdown_bytes = max_markdown_bytes
        self.members: set[str] | None = set(members) if members is not None else None
        """The app's visible members; None accepts every user id."""
        self.caller_ip = "127.0.0.1"
        """The ``from ip`` in error messages (while trusted)."""
        self._untrusted_ip: str | None = None

    @property
    def corp_id(self) -> str:
        return self.app_id

    @property
    def corp_secret(self) -> str:
        return self.app_secret

    # -- scripting ------------------------------------------------------------------------

    def distrust_ip(self, ip: str = DEFAULT_UNTRUSTED_IP) -> None:
        """Calls now come from ``ip``, not in 企业可信IP: everything but gettoken → 60020."""
        with self._lock:
            self._untrusted_ip = ip

    def trust_ip(self) -> None:
        """Undo :meth:`distrust_ip`."""
        with self._lock:
            self._untrusted_ip = None

    # -- inspection -----------------------------------------------------------------------

    def markdowns(self, user: str) -> list[str]:
        """The markdown messages ``user`` received, in order."""
        return [value for kind, value in self.timeline(user) if kind == "markdown"]

    def truncated_texts(self, user: str) -> list[str]:
        """The texts sent to ``user`` that WeCom showed cut to ``max_text_bytes`` (as sent)."""
        texts = [b["text"]["content"] for b in self.outbox(user) if b.get("msgtype") == "text"]
        return [text for text in texts if _cut(text, self.max_text_bytes) != text]

    # -- hooks ----------------------------------------------------------------------------

    def _shown(self, msgtype: str, content: str) -> str:
        return _cut(content, self.max_text_bytes) if msgtype == "text" else content

    def _kind_for(self, content_type: str) -> str:
        major = content_type.partition("/")[0]
        return {"image": "image", "audio": "voice", "video": "video"}.get(major, "file")

    def _parse_json(self, headers: Any, body: bytes) -> Any:
        """WeCom reads the body as JSON whatever the Content-Type (wechatpy sends none)."""
        try:
            return json.loads(body) if body else None
        except ValueError:
            return None

    def _error(self, errcode: int, errmsg: str | None = None) -> _Answer:
        """WeCom's error shape: ``<message>, hint: [...], from ip: ..., more info at <url>``."""
        message = errmsg or self.ERRMSGS.get(errcode, "error")
        if "more info at" not in message:
            hint = f"{int(self._clock())}_{secrets.randbelow(90) + 10}_{secrets.token_hex(16)}"
            ip = self._untrusted_ip if errcode == 60020 else None
            message = (
                f"{message}, hint: [{hint}], from ip: {ip or self.caller_ip}, "
                f"more info at {MORE_INFO}{errcode}"
            )
        return super()._error(errcode, message)

    def _token_route(self, method: str, path: str, query: dict[str, str], parsed: Any) -> _Answer:
        script = self._take(GETTOKEN, lambda s: s.errcode is not None)
        if script is not None and script.errcode is not None:
            return self._error(script.errcode, script.errmsg)
        corp_id, secret = query.get("corpid"), query.get("corpsecret")
        if not corp_id:
            return self._error(41002)
        if corp_id != self.app_id:
            return self._error(40013)
        if not secret:
            return self._error(41004)
        if secret != self.app_secret:
            return self._error(40001)
        now = self._clock()
        current = self._tokens.get(self._current or "")
        if current is None or current.revoked or now >= current.expires_at:
            self._current, _ = self._issue()
            current = self._tokens[self._current]
        expires_in = int(current.expires_at - now)
        return _json_answer(
            {"errcode": 0, "errmsg": "ok", "access_token": self._current, "expires_in": expires_in}
        )

    def _check_access(self, path: str, token: str | None) -> _Answer | None:
        if self._untrusted_ip is not None:
            return self._error(60020)
        return super()._check_access(path, token)

    def _api_route(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: Any,
        body: bytes,
        parsed: Any,
    ) -> _Answer | None:
        if path == MESSAGE_SEND:
            return self._message_send(method, parsed)
        if path in (MEDIA_UPLOAD, MEDIA_GET):
            return super()._api_route(method, path, query, headers, body, parsed)
        return None

    def _uploaded(self, kind: str, media_id: str) -> _Answer:
        created_at = str(int(self._clock()))  # a string in WeCom's documented answer
        return _json_answer(
            {
                "errcode": 0,
                "errmsg": "",
                "type": kind,
                "media_id": media_id,
                "created_at": created_at,
            }
        )

    # -- message/send ---------------------------------------------------------------------

    def _message_send(self, method: str, body: Any) -> _Answer:
        if method != "POST":
            return self._error(43002)
        if not isinstance(body, dict):
            return self._error(47001)
        agent = body.get("agentid")
        if agent is None or agent == "":
            return self._error(41011)
        if not _same_agent(agent, self.agent_id):
            return self._error(40056)
        msgtype = body.get("msgtype")
        if msgtype not in MSGTYPES:
            return self._error(40008)
        payload = body.get(msgtype)
        if not isinstance(payload, dict):
            return self._error(47001)
        refused = self._check_payload(msgtype, payload)
        if refused is not None:
            return refused
        users, invalid = self._recipients(body.get("touser"))
        if not users:
            return self._error(81013)
        for user in users:
            self._record(user, body)
        return _json_answer(
            {
                "errcode": 0,
                "errmsg": "ok",
                "invaliduser": "|".join(invalid),
                "invalidparty": "",
                "invalidtag": "",
                "unlicenseduser": "",
                "msgid": secrets.token_urlsafe(32),
                "response_code": secrets.token_urlsafe(32),
            }
        )

    def _check_payload(self, msgtype: str, payload: dict[str, Any]) -> _Answer | None:
        """The refusal of a message's content (None: accepted)."""
        if msgtype in self.CONTENT_MSGTYPES:
            content = payload.get("content")
            if not isinstance(content, str) or not content:
                return self._error(44004)
            size = len(content.encode("utf-8"))
            if msgtype == "markdown" and size > self.max_markdown_bytes:
                limit = self.max_markdown_bytes
                return self._error(40058, f"markdown.content exceed max length {limit}")
        elif msgtype in self.MEDIA_MSGTYPES:
            if not self._known_media(msgtype, payload):
                return self._error(40007)
        elif msgtype == "textcard":
            for key in ("title", "description", "url"):
                if not isinstance(payload.get(key), str) or not payload[key]:
                    return self._error(40058, f"textcard.{key} is required")
        elif msgtype == "news":
            articles = payload.get("articles")
            if not isinstance(articles, list) or not articles:
                return self._error(40058, "news.articles is required")
            if len(articles) > MAX_ARTICLES:
                return self._error(45008)
            if not all(isinstance(a, dict) and a.get("title") for a in articles):
                return self._error(40058, "news.articles.title is required")
        return None

    def _recipients(self, touser: Any) -> tuple[list[str], list[str]]:
        """``(valid, invalid)`` user ids of ``touser`` (``"a|b"`` or ``@all``)."""
        ids = list(dict.fromkeys(u for u in str(touser or "").split("|") if u))
        if ids == ["@all"]:
            return (sorted(self.members) if self.members is not None else ["@all"]), []
        if self.members is None:
            return ids, []
        return [u for u in ids if u in self.members], [u for u in ids if u not in self.members]
