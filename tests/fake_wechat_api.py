"""A loopback fake of the WeChat Official Account server API (``api.weixin.qq.com``).

Start it as a context manager and point a client (or the plugin, through the endpoint
setting ``wechat_api_base_url``) at :attr:`FakeWeChatAPI.base_url`::

    with FakeWeChatAPI() as wechat:
        client = WeChatClient(wechat.base_url, wechat.app_id, wechat.app_secret, store)
        client.custom_message.send_text("openid-1", "hi")
        assert wechat.texts("openid-1") == ["hi"]

What it emulates (``/work/shared/reference/wechat-protocol.md`` §7-§9):

- ``POST /cgi-bin/stable_token``: checks AppID (40013) and AppSecret (40125), POST only
  (43002). Normal mode returns the current token with its remaining ``expires_in`` and
  issues a new one only when none is valid or less than 5 minutes are left (the old one then
  stays valid until it expires); ``force_refresh: true`` issues a new one and revokes the old.
  ``GET /cgi-bin/token`` also works (its own tokens, each call revoking the previous one) so
  tests can assert the plugin never uses it.
- Every other call needs ``access_token``: missing → 41001, unknown or revoked → 40001,
  expired → 42001.
- ``/cgi-bin/message/custom/send`` and ``/cgi-bin/message/custom/typing`` bodies are checked
  (openid, msgtype, command, text size, known media_id) and recorded per OpenID in arrival
  order: :meth:`timeline`, :meth:`texts`, :meth:`outbox`. An optional per-user ``quota`` models
  the 48-hour window (45015 before :meth:`user_interacted`, 45047 once used up).
- ``/cgi-bin/media/upload`` (multipart field ``media``; §9 limits: image ≤2 MB
  PNG/JPEG/JPG/GIF, voice ≤2 MB AMR/MP3, video ≤10 MB MP4, thumb ≤64 KB JPG — a wrong file
  type is 40005 "invalid file type", an oversized file the global code of its kind, see
  :data:`MEDIA_SIZE_ERRCODES`; an unknown ``type`` 40004, no data 41005) and
  ``/cgi-bin/media/get`` (bytes with Content-Type and Content-disposition; a video as
  ``{"video_url": …}``, by default a URL on this fake that serves the bytes without a token;
  an unknown media_id as a JSON error with HTTP 200 and ``text/plain``, as users report WeChat
  does). Custom-service ``image``/``voice``/``video`` messages need a media_id of that kind
  the fake knows (else 40007); :meth:`received_media` gives what the user got as bytes.

Scripting: :meth:`expire_token` (next call with it → 42001), :meth:`revoke_token` (→ 40001),
:meth:`fail` (an errcode for the next N calls), :meth:`respond_raw` (a non-JSON or HTTP-error
answer), :meth:`delay` (slow answers, for timeouts). Every request is recorded
(:meth:`calls`, :meth:`count`); the access token is kept out of the recorded query.

Time comes from ``clock`` (default ``time.time``) so tests can share a fake clock with the
client. Threads are daemons and every wait is bounded, so a hung test cannot hang the run.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

DEFAULT_APP_ID = "wxfa4e0000c0ffee00"
DEFAULT_APP_SECRET = "fake-secret-" + "0" * 20

STABLE_TOKEN = "/cgi-bin/stable_token"
TOKEN = "/cgi-bin/token"
CUSTOM_SEND = "/cgi-bin/message/custom/send"
TYPING = "/cgi-bin/message/custom/typing"
MEDIA_UPLOAD = "/cgi-bin/media/upload"
MEDIA_GET = "/cgi-bin/media/get"
TOKEN_PATHS = (STABLE_TOKEN, TOKEN)

JSON_TYPE = "application/json; encoding=utf-8"  # what WeChat sends
RENEW_AHEAD = 300  # stable_token renews a token this many seconds before it expires
VIDEO_FILES = "/fake-media/"  # where a video's ``video_url`` points (no token needed)
MEDIA_LIMITS = {"image": 2 * 1024 * 1024, "voice": 2 * 1024 * 1024, "video": 10 * 1024 * 1024}
MEDIA_LIMITS["thumb"] = 64 * 1024
MEDIA_EXTENSIONS: dict[str, frozenset[str]] = {
    "image": frozenset({"png", "jpeg", "jpg", "gif"}),
    "voice": frozenset({"amr", "mp3"}),
    "video": frozenset({"mp4"}),
    "thumb": frozenset({"jpg", "jpeg"}),
}
"""§9 formats per upload ``type`` (judged by the file name's extension, else its MIME type)."""
MEDIA_SIZE_ERRCODES = {"image": 40009, "voice": 40010, "video": 40011, "thumb": 40006}
"""WeChat's global codes for an oversized upload: 40009 invalid image size, 40010 invalid
voice size, 40011 invalid video size; a thumb answers the generic 40006 invalid media size
(the global table also lists 40012 for thumbs; change this mapping to test that)."""
_MIME_EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/png": "png",
    "image/gif": "gif",
    "audio/amr": "amr",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "video/mp4": "mp4",
}

ERRMSGS = {
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40003: "invalid openid",
    40004: "invalid media type",
    40005: "invalid file type",
    40006: "invalid meida size",
    40007: "invalid media_id",
    40009: "invalid image size",
    40010: "invalid voice size",
    40011: "invalid video size",
    40012: "invalid thumb size",
    40013: "invalid appid",
    40014: "invalid access_token",
    40125: "invalid appsecret",
    40164: "invalid ip 203.0.113.7 ipv6 ::ffff:203.0.113.7, not in whitelist",
    41001: "access_token missing",
    41005: "media data missing",
    42001: "access_token expired",
    43002: "require POST method",
    43004: "require subscribe",
    44004: "empty content",
    45002: "content size out of limit",
    45009: "reach max api daily quota limit",
    45011: "api minute-quota reach limit, must slower, retry next minute",
    45015: "response out of time limit or subscription is canceled",
    45047: "out of response count limit",
    45072: "command field content is invalid",
    47001: "data format error",
    48001: "api unauthorized",
    48002: "user block the message",
}


@dataclass(frozen=True)
class Call:
    """One request as the fake saw it (``query`` without ``access_token``)."""

    method: str
    path: str
    query: dict[str, str]
    token: str | None
    body: bytes
    json: Any = None


@dataclass
class StoredMedia:
    content: bytes
    content_type: str
    filename: str
    kind: str = "image"
    video_url: str | None = None
    media_id: str = ""


@dataclass
class _Token:
    expires_at: float
    revoked: bool = False


@dataclass
class _Script:
    """A scripted answer for the next ``times`` calls (to ``path``, or any API call)."""

    times: int
    path: str | None
    errcode: int | None = None
    errmsg: str | None = None
    raw: tuple[int, str, bytes] | None = None  # status, content type, body
    delay: float = 0.0


@dataclass
class _Answer:
    status: int = 200
    content_type: str = JSON_TYPE
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _json_answer(payload: dict[str, Any], status: int = 200) -> _Answer:
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    return _Answer(status=status, body=body)


_OK = {"errcode": 0, "errmsg": "ok"}


class FakeWeChatAPI:
    """The fake server; see the module docstring. Thread-safe; use as a context manager.

    Subclasses for other WeChat-family APIs (``tests/fake_wecom_api.py``) override the class
    attributes below and the hooks :meth:`_token_route`, :meth:`_check_access`,
    :meth:`_api_route`, :meth:`_error`, :meth:`_parse_json`, :meth:`_kind_for`,
    :meth:`_uploaded` and :meth:`_shown`.
    """

    TOKEN_PATHS: tuple[str, ...] = TOKEN_PATHS
    """Token endpoints: no access token needed; untargeted scripts skip them. The first one
    is what :attr:`token_fetches` counts."""
    INVALID_TOKEN_ERRCODE = 40001
    """The answer to an unknown or revoked access token."""
    ERRMSGS: dict[int, str] = ERRMSGS
    MEDIA_LIMITS: dict[str, int] = MEDIA_LIMITS
    MEDIA_EXTENSIONS: dict[str, frozenset[str]] = MEDIA_EXTENSIONS
    """Allowed extensions per upload ``type``; an empty set allows any."""
    MEDIA_SIZE_ERRCODES: dict[str, int] = MEDIA_SIZE_ERRCODES
    MEDIA_MSGTYPES: tuple[str, ...] = ("image", "voice", "video")
    """Message types that carry a ``media_id`` the fake must know (of that kind)."""
    CONTENT_MSGTYPES: tuple[str, ...] = ("text",)
    """Message types whose ``content`` :meth:`timeline` shows."""
    VIDEO_AS_URL = True
    """media/get answers a video as ``{"video_url": …}`` (OA) rather than its bytes."""
    MISSING_MEDIA_CONTENT_TYPE = "text/plain"
    """Content-Type of media/get's JSON error for an unknown media_id."""

    def __init__(
        self,
        app_id: str = DEFAULT_APP_ID,
        app_secret: str = DEFAULT_APP_SECRET,
        *,
        token_ttl: int = 7200,
        clock: Callable[[], float] = time.time,
        max_text_bytes: int | None = 2048,
        quota: int | None = None,
    ) -> None:
        self.app_id = app_id
        self.app_secret = app_secret
        self.token_ttl = token_ttl
        self.max_text_bytes = max_text_bytes  # WeChat documents no number; 2048 is our budget
        self.quota = quota
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._tokens: dict[str, _Token] = {}
        self._current: str | None = None
        self._classic: str | None = None
        self._scripts: list[_Script] = []
        self._calls: list[Call] = []
        self._outbox: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._sent_at: dict[str, list[float]] = defaultdict(list)
        self._quota_left: dict[str, int] = {}
        self._unfollowed: set[str] = set()
        self._media: dict[str, StoredMedia] = {}
        self.uploads: list[StoredMedia] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        fake: FakeWeChatAPI = self

        class Handler(_Handler):
            api = fake

        server = _Server(("127.0.0.1", 0), Handler)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes scripted delays
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``, the value for the ``wechat_api_base_url`` setting."""
        assert self._server is not None, "start the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- scripting ------------------------------------------------------------------------

    @property
    def current_token(self) -> str | None:
        """The token stable_token hands out now (None before the first call)."""
        with self._lock:
            return self._current

    def expire_token(self, token: str | None = None) -> None:
        """Let ``token`` (default: the current stable token) expire: next use → 42001."""
        with self._lock:
            target = token or self._current
            if target in self._tokens:
                self._tokens[target].expires_at = self._clock() - 1

    def revoke_token(self, token: str | None = None) -> None:
        """Revoke ``token`` (default: current) as a force refresh elsewhere would: → 40001."""
        with self._lock:
            target = token or self._current
            if target in self._tokens:
                self._tokens[target].revoked = True
            if target == self._current:
                self._current = None

    def fail(
        self, errcode: int, *, times: int = 1, path: str | None = None, errmsg: str | None = None
    ) -> None:
        """Answer the next ``times`` calls with ``errcode``.

        ``path=None`` means any API call except the token endpoints (the access token is
        still checked first); pass ``path=STABLE_TOKEN`` to fail token fetches (e.g. 40164).
        """
        with self._lock:
            self._scripts.append(_Script(times, path, errcode=errcode, errmsg=errmsg))

    def respond_raw(
        self,
        body: bytes,
        *,
        status: int = 200,
        content_type: str = "text/html",
        times: int = 1,
        path: str | None = None,
    ) -> None:
        """Answer the next ``times`` calls with this raw body (e.g. a proxy's error page)."""
        with self._lock:
            self._scripts.append(_Script(times, path, raw=(status, content_type, body)))

    def delay(self, seconds: float, *, times: int = 1, path: str | None = None) -> None:
        """Hold the next ``times`` answers for ``seconds`` (bounded; cut short by ``stop``)."""
        with self._lock:
            self._scripts.append(_Script(times, path, delay=seconds))

    def add_media(
        self,
        content: bytes,
        content_type: str = "image/jpeg",
        *,
        filename: str | None = None,
        kind: str | None = None,
        video_url: str | None = None,
        media_id: str | None = None,
    ) -> str:
        """Make media downloadable (as if a user had sent it); returns its media_id.

        ``kind`` defaults from ``content_type`` (``audio/*`` voice, ``video/*`` video, else
        image); voice is ``audio/amr`` as WeChat delivers it. A video's download answers
        ``{"video_url": …}`` — ``video_url`` if given, else a URL on this fake serving
        ``content``. ``media_id`` picks the id (e.g. the one a simulated push carries).
        """
        media_id = media_id or secrets.token_urlsafe(24)
        kind = kind or self._kind_for(content_type)
        ext = _MIME_EXTENSIONS.get(content_type) or content_type.rpartition("/")[2] or "bin"
        with self._lock:
            self._media[media_id] = StoredMedia(
                content,
                content_type,
                filename or f"{media_id}.{ext}",
                kind,
                video_url,
                media_id,
            )
        return media_id

    def _kind_for(self, content_type: str) -> str:
        """The media kind :meth:`add_media` assumes for ``content_type``."""
        major = content_type.partition("/")[0]
        return {"audio": "voice", "video": "video"}.get(major, "image")

    def unfollow(self, openid: str) -> None:
        """``openid`` no longer follows the account: sends answer 43004."""
        with self._lock:
            self._unfollowed.add(openid)

    def user_interacted(self, openid: str) -> None:
        """The user sent a message: with ``quota`` set, opens ``quota`` sends for them."""
        with self._lock:
            if self.quota is not None:
                self._quota_left[openid] = self.quota

    # -- inspection -----------------------------------------------------------------------

    def calls(self, path: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if path is None or c.path == path]

    def count(self, path: str) -> int:
        return len(self.calls(path))

    @property
    def token_fetches(self) -> int:
        """How many times the token endpoint (``/cgi-bin/stable_token``) was called."""
        return self.count(self.TOKEN_PATHS[0])

    def outbox(self, openid: str) -> list[dict[str, Any]]:
        """Accepted custom/send and typing bodies for ``openid``, in arrival order."""
        with self._lock:
            return list(self._outbox.get(openid, []))

    def timeline(self, openid: str) -> list[tuple[str, str]]:
        """What the user saw: ``("text", content)``, ``("image"|"voice"|"video", media_id)``,
        ``("typing", "Typing"|"CancelTyping")``, ``(msgtype, json)`` for other messages."""
        seen: list[tuple[str, str]] = []
        for body in self.outbox(openid):
            msgtype = body.get("msgtype")
            if "command" in body:
                seen.append(("typing", body["command"]))
            elif msgtype in self.CONTENT_MSGTYPES:
                seen.append((msgtype, self._shown(msgtype, body[msgtype]["content"])))
            elif msgtype in self.MEDIA_MSGTYPES:
                seen.append((msgtype, body[msgtype]["media_id"]))
            else:
                seen.append((str(body.get("msgtype")), json.dumps(body, ensure_ascii=False)))
        return seen

    def _shown(self, msgtype: str, content: str) -> str:
        """How the client shows an accepted message's ``content`` (OA: as sent)."""
        return content

    def timed_texts(self, openid: str) -> list[tuple[float, str]]:
        """``(time.monotonic() when accepted, content)`` of each text sent to ``openid``."""
        with self._lock:
            pairs = list(
                zip(self._sent_at.get(openid, []), self._outbox.get(openid, []), strict=True)
            )
        return [(at, b["text"]["content"]) for at, b in pairs if b.get("msgtype") == "text"]

    def texts(self, openid: str) -> list[str]:
        """The text messages ``openid`` received, in order."""
        return [value for kind, value in self.timeline(openid) if kind == "text"]

    def received_media(self, openid: str) -> list[tuple[str, bytes]]:
        """``(msgtype, bytes)`` of each image/voice/video message ``openid`` received, in
        order — the media's content as uploaded (or added)."""
        got: list[tuple[str, bytes]] = []
        for kind, media_id in self.timeline(openid):
            if kind in self.MEDIA_MSGTYPES:
                stored = self.media(media_id)
                got.append((kind, stored.content if stored is not None else b""))
        return got

    def wait_until(self, predicate: Callable[[Self], bool], timeout: float) -> bool:
        """Poll ``predicate`` after every request until true or ``timeout`` s passed."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                self._changed.wait(min(remaining, 0.05))
        return True

    def media(self, media_id: str) -> StoredMedia | None:
        with self._lock:
            return self._media.get(media_id)

    # -- request handling (called from server threads) -------------------------------------

    def _handle(self, method: str, target: str, headers: Any, body: bytes) -> _Answer:
        parts = urlsplit(target)
        path = parts.path
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        token = query.pop("access_token", None)
        if path.startswith(VIDEO_FILES) and method == "GET":
            with self._changed:
                self._calls.append(Call(method, path, query, token, body, None))
                self._changed.notify_all()
                return self._video_file(path[len(VIDEO_FILES) :])
        parsed = self._parse_json(headers, body)
        with self._changed:
            self._calls.append(Call(method, path, query, token, body, parsed))
            self._changed.notify_all()
            delay = self._take(path, lambda s: s.delay > 0)
        if delay is not None:
            self._stopping.wait(min(delay.delay, 30.0))
        with self._changed:
            try:
                return self._route(method, path, query, token, headers, body, parsed)
            finally:
                self._changed.notify_all()

    def _parse_json(self, headers: Any, body: bytes) -> Any:
        """The request body as JSON (None when it is not JSON)."""
        if body and "json" in (headers.get("Content-Type") or ""):
            try:
                return json.loads(body)
            except ValueError:
                return None
        return None

    def _take(self, path: str, kind: Callable[[_Script], bool]) -> _Script | None:
        """The first matching script for ``path``, consumed once (caller holds the lock)."""
        for script in self._scripts:
            if not kind(script):
                continue
            if script.path is None and path in self.TOKEN_PATHS:
                continue
            if script.path is not None and script.path != path:
                continue
            script.times -= 1
            if script.times <= 0:
                self._scripts.remove(script)
            return script
        return None

    def _route(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        token: str | None,
        headers: Any,
        body: bytes,
        parsed: Any,
    ) -> _Answer:
        raw = self._take(path, lambda s: s.raw is not None)
        if raw is not None and raw.raw is not None:
            status, content_type, payload = raw.raw
            return _Answer(status=status, content_type=content_type, body=payload)
        if path in self.TOKEN_PATHS:
            return self._token_route(method, path, query, parsed)
        refused = self._check_access(path, token)
        if refused is not None:
            return refused
        script = self._take(path, lambda s: s.errcode is not None)
        if script is not None and script.errcode is not None:
            return self._error(script.errcode, script.errmsg)
        answer = self._api_route(method, path, query, headers, body, parsed)
        if answer is None:
            return _json_answer({"errcode": 40066, "errmsg": "invalid url"}, status=404)
        return answer

    def _token_route(self, method: str, path: str, query: dict[str, str], parsed: Any) -> _Answer:
        """Answer a call to one of :attr:`TOKEN_PATHS`."""
        if path == STABLE_TOKEN:
            return self._stable_token(method, parsed)
        return self._classic_token(query)

    def _check_access(self, path: str, token: str | None) -> _Answer | None:
        """The refusal of a non-token call before any scripted error (None: allowed)."""
        problem = self._check_token(token)
        return None if problem is None else self._error(problem)

    def _api_route(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: Any,
        body: bytes,
        parsed: Any,
    ) -> _Answer | None:
        """Answer an authorised API call (None: unknown path → 40066)."""
        if path == CUSTOM_SEND:
            return self._custom_send(method, parsed)
        if path == TYPING:
            return self._typing(method, parsed)
        if path == MEDIA_UPLOAD:
            return self._upload(method, query, headers, body)
        if path == MEDIA_GET:
            return self._download(query)
        return None

    def _error(self, errcode: int, errmsg: str | None = None) -> _Answer:
        """The JSON error answer for ``errcode`` (default message from :attr:`ERRMSGS`)."""
        message = errmsg or self.ERRMSGS.get(errcode, "error")
        return _json_answer({"errcode": errcode, "errmsg": message})

    def _issue(self) -> tuple[str, int]:
        token = secrets.token_urlsafe(96)
        self._tokens[token] = _Token(self._clock() + self.token_ttl)
        return token, self.token_ttl

    def _stable_token(self, method: str, body: Any) -> _Answer:
        if method != "POST":
            return self._error(43002)
        if not isinstance(body, dict) or body.get("grant_type") != "client_credential":
            return self._error(47001)
        script = self._take(STABLE_TOKEN, lambda s: s.errcode is not None)
        if script is not None and script.errcode is not None:
            return self._error(script.errcode, script.errmsg)
        if body.get("appid") != self.app_id:
            return self._error(40013)
        if body.get("secret") != self.app_secret:
            return self._error(40125)
        now = self._clock()
        current = self._tokens.get(self._current or "")
        if body.get("force_refresh") is True:
            if current is not None:
                current.revoked = True
        elif current is not None and not current.revoked:
            remaining = int(current.expires_at - now)
            if remaining > RENEW_AHEAD:
                return _json_answer({"access_token": self._current, "expires_in": remaining})
        token, expires_in = self._issue()
        self._current = token
        return _json_answer({"access_token": token, "expires_in": expires_in})

    def _classic_token(self, query: dict[str, str]) -> _Answer:
        script = self._take(TOKEN, lambda s: s.errcode is not None)
        if script is not None and script.errcode is not None:
            return self._error(script.errcode, script.errmsg)
        if query.get("appid") != self.app_id:
            return self._error(40013)
        if query.get("secret") != self.app_secret:
            return self._error(40125)
        if self._classic in self._tokens:
            self._tokens[self._classic].revoked = True  # each call invalidates the previous
        token, expires_in = self._issue()
        self._classic = token
        return _json_answer({"access_token": token, "expires_in": expires_in})

    def _check_token(self, token: str | None) -> int | None:
        if not token:
            return 41001
        state = self._tokens.get(token)
        if state is None or state.revoked:
            return self.INVALID_TOKEN_ERRCODE
        if self._clock() >= state.expires_at:
            return 42001
        return None

    def _recipient(self, method: str, body: Any) -> tuple[str | None, int | None]:
        if method != "POST":
            return None, 43002
        if not isinstance(body, dict):
            return None, 47001
        openid = body.get("touser")
        if not isinstance(openid, str) or not openid:
            return None, 40003
        if openid in self._unfollowed:
            return None, 43004
        return openid, None

    def _custom_send(self, method: str, body: Any) -> _Answer:
        openid, problem = self._recipient(method, body)
        if problem is not None or openid is None:
            return self._error(problem or 40003)
        msgtype = body.get("msgtype")
        payload = body.get(msgtype) if isinstance(msgtype, str) else None
        if not isinstance(payload, dict):
            return self._error(47001)
        if msgtype == "text":
            content = payload.get("content")
            if not isinstance(content, str) or not content:
                return self._error(44004)
            if self.max_text_bytes and len(content.encode("utf-8")) > self.max_text_bytes:
                return self._error(45002)
        if msgtype in self.MEDIA_MSGTYPES and not self._known_media(msgtype, payload):
            return self._error(40007)
        if self.quota is not None:
            left = self._quota_left.get(openid)
            if left is None:
                return self._error(45015)
            if left <= 0:
                return self._error(45047)
            self._quota_left[openid] = left - 1
        self._record(openid, body)
        return _json_answer(_OK)

    def _known_media(self, msgtype: str, payload: dict[str, Any]) -> bool:
        """Whether ``payload["media_id"]`` is media of kind ``msgtype`` (another kind: no)."""
        stored = self._media.get(str(payload.get("media_id") or ""))
        return stored is not None and stored.kind == msgtype

    def _record(self, user: str, body: dict[str, Any]) -> None:
        """Keep an accepted message for ``user`` (caller holds the lock)."""
        self._outbox[user].append(body)
        self._sent_at[user].append(time.monotonic())

    def _typing(self, method: str, body: Any) -> _Answer:
        openid, problem = self._recipient(method, body)
        if problem is not None or openid is None:
            return self._error(problem or 40003)
        if body.get("command") not in ("Typing", "CancelTyping"):
            return self._error(45072)
        self._record(openid, body)
        return _json_answer(_OK)

    def _upload(self, method: str, query: dict[str, str], headers: Any, body: bytes) -> _Answer:
        if method != "POST":
            return self._error(43002)
        kind = query.get("type", "")
        if kind not in self.MEDIA_LIMITS:
            return self._error(40004)
        field_ = _multipart_field(headers.get("Content-Type") or "", body, "media")
        if field_ is None or not field_[2]:
            return self._error(41005)
        filename, content_type, content = field_
        ext = filename.rpartition(".")[2].lower() if "." in filename else ""
        ext = ext or _MIME_EXTENSIONS.get(content_type.lower(), "")
        allowed = self.MEDIA_EXTENSIONS.get(kind)
        if allowed and ext not in allowed:
            return self._error(40005)
        if len(content) > self.MEDIA_LIMITS[kind]:
            return self._error(self.MEDIA_SIZE_ERRCODES[kind])
        media_id = secrets.token_urlsafe(24)
        stored = StoredMedia(content, content_type, filename, kind, media_id=media_id)
        self._media[media_id] = stored
        self.uploads.append(stored)
        return self._uploaded(kind, media_id)

    def _uploaded(self, kind: str, media_id: str) -> _Answer:
        """The answer to a successful upload."""
        id_field = "thumb_media_id" if kind == "thumb" else "media_id"
        return _json_answer({"type": kind, id_field: media_id, "created_at": int(self._clock())})

    def _download(self, query: dict[str, str]) -> _Answer:
        stored = self._media.get(query.get("media_id", ""))
        if stored is None:
            answer = self._error(40007)
            answer.content_type = self.MISSING_MEDIA_CONTENT_TYPE  # OA: text/plain, HTTP 200
            return answer
        if stored.video_url is not None or (self.VIDEO_AS_URL and stored.kind == "video"):
            url = stored.video_url or f"{self.base_url}{VIDEO_FILES}{stored.media_id}"
            return _json_answer({"video_url": url})
        return _Answer(
            content_type=stored.content_type,
            body=stored.content,
            headers={"Content-disposition": f'attachment; filename="{stored.filename}"'},
        )

    def _video_file(self, media_id: str) -> _Answer:
        stored = self._media.get(media_id)
        if stored is None or stored.kind != "video":
            return _Answer(status=404, content_type="text/plain", body=b"not found")
        return _Answer(content_type=stored.content_type, body=stored.content)


def _multipart_field(content_type: str, body: bytes, name: str) -> tuple[str, str, bytes] | None:
    """``(filename, content type, content)`` of form field ``name``, or None."""
    boundary = ""
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        return None
    for part in body.split(b"--" + boundary.encode()):
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        lines = head.decode("utf-8", "replace").strip().split("\r\n")
        disposition = next((x for x in lines if x.lower().startswith("content-disposition")), "")
        if f'name="{name}"' not in disposition:
            continue
        filename = disposition.partition('filename="')[2].partition('"')[0]
        part_type = next(
            (x.partition(":")[2].strip() for x in lines if x.lower().startswith("content-type")),
            "application/octet-stream",
        )
        return filename, part_type, content.removesuffix(b"\r\n")
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is expected, not a test failure


class _Handler(BaseHTTPRequestHandler):
    api: FakeWeChatAPI
    timeout = 10  # idle keep-alive connections do not hold threads forever

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        answer = self.api._handle(self.command, self.path, self.headers, body)
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            for key, value in answer.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(answer.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

    do_GET = _serve
    do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; calls are recorded instead
