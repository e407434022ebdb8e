"""The WeChat server API client: one request core, API groups bound on the client.

``WeChatClient`` owns the transport (a ``requests.Session`` unless one is injected), the
shared access-token cache and one private ``_call`` that every API method goes through:

1. takes a token from :class:`~.token_cache.AccessTokenCache` (fetching one if needed),
2. sends the request with ``access_token`` in the query and a UTF-8 JSON body (not
   ``\\uXXXX`` escapes; redirects are not followed, so nothing is re-sent elsewhere),
3. maps ``errcode != 0`` to a typed error (:func:`.errors.error_for`), also inside a binary
   media download answered with a JSON body and HTTP 200,
4. on :class:`~.errors.AccessTokenInvalid` invalidates that token, gets a fresh one and retries
   exactly once; a second failure is raised.

Time: ``timeout`` (client default, or per call) is the budget of the whole call — token fetch,
request, refresh and retry included; each HTTP request waits at most what is left. Callers
inside WeChat's 5-second window pass their remaining budget. ``None`` means "the client's
default", never "wait forever".

Nothing the client raises contains a URL with a query string, the access token or the
AppSecret: exceptions of the HTTP library (which embed the URL) are replaced, not chained.
Reference: ``wechat-protocol.md`` §7-§9.
"""

from __future__ import annotations

import json as jsonlib
import re
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any, Literal, Protocol, Self, overload
from urllib.parse import urlsplit

import requests

from ..storage import EndpointStore
from .custom_message import CustomMessageAPI
from .errors import (
    AccessTokenInvalid,
    TransportError,
    WeChatAPIError,
    error_for,
)
from .media import MediaAPI, MediaFile
from .token_cache import AccessTokenCache
from .typing_indicator import TypingAPI

DEFAULT_TIMEOUT = 5.0
STABLE_TOKEN_PATH = "/cgi-bin/stable_token"  # noqa: S105 (a path, not a secret)
_SNIFF_LIMIT = 64 * 1024  # a JSON error body is tiny; never parse a big download as JSON
_FILENAME_RE = re.compile(r"""filename\*?=(?:UTF-8'')?"?([^";]+)"?""", re.IGNORECASE)

FileSpec = tuple[str, bytes, str]
"""``(filename, content, mimetype)`` of one multipart field."""


class Response(Protocol):
    """What the client reads from a transport's answer (a ``requests.Response`` fits)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...


class Transport(Protocol):
    """The subset of ``requests.Session`` the client uses; inject a fake in tests."""

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = ...,
        data: bytes | None = ...,
        headers: Mapping[str, str] | None = ...,
        files: Mapping[str, FileSpec] | None = ...,
        timeout: tuple[float, float] | None = ...,
        allow_redirects: bool = ...,
    ) -> Response: ...


# The deadline (time.monotonic) of the call in progress, read by the token fetch that
# AccessTokenCache triggers from inside that call. A ContextVar keeps threads/greenlets apart.
_deadline: ContextVar[float | None] = ContextVar("wechat_api_deadline", default=None)


class ServerAPIClient:
    """The request core shared by the Official Account and WeCom clients.

    ``owner`` names whose token this is (the AppID, or CorpID and AgentId) and keys the
    shared token cache; ``secret`` is redacted from every error text. Subclasses fetch
    tokens their platform's way and bind their API groups.
    """

    tokens: AccessTokenCache
    """The shared access-token cache (``get``, ``invalidate``), e.g. for a status check."""
    media: MediaAPI
    """Temporary media: ``upload``, ``download``."""

    def __init__(
        self,
        base_url: str,
        owner: str,
        secret: str,
        store: EndpointStore,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.time,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        parts = urlsplit(self._base_url)
        self._host = parts.netloc.rpartition("@")[2] or "WeChat API"
        self._secret = secret
        self._owns_transport = transport is None
        self._transport: Transport = transport if transport is not None else requests.Session()
        self._timeout = timeout
        self.tokens = AccessTokenCache(store, self._fetch_token, clock, app_id=owner)
        self.media = MediaAPI(self)

    def _fetch_token(self) -> tuple[str, int]:
        """A fresh ``(access_token, expires_in)``; raises a :class:`WeChatError`."""
        raise NotImplementedError

    def _error(self, errcode: int, errmsg: str, redact: tuple[str, ...]) -> WeChatAPIError:
        """The typed exception for an ``errcode`` answer (platforms differ in codes)."""
        return error_for(errcode, errmsg, redact=redact)

    def _token_from(self, path: str, data: Mapping[str, Any]) -> tuple[str, int]:
        token, expires_in = data.get("access_token"), data.get("expires_in")
        if not isinstance(token, str) or not token or not isinstance(expires_in, int):
            raise TransportError(f"{self._host}{path}: answer without a token")
        if expires_in <= 0:
            raise TransportError(f"{self._host}{path}: token already expired")
        return token, expires_in

    def close(self) -> None:
        """Close the transport if the client created it."""
        if self._owns_transport and isinstance(self._transport, requests.Session):
            self._transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the request core -----------------------------------------------------------------

    @overload
    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        files: Mapping[str, FileSpec] | None = None,
        timeout: float | None = None,
        binary: Literal[False] = False,
    ) -> dict[str, Any]: ...

    @overload
    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        files: Mapping[str, FileSpec] | None = None,
        timeout: float | None = None,
        binary: Literal[True],
    ) -> MediaFile: ...

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        files: Mapping[str, FileSpec] | None = None,
        timeout: float | None = None,
        binary: bool = False,
    ) -> dict[str, Any] | MediaFile:
        """Call ``path`` with the access token; see the module docstring for the steps.

        ``binary`` answers are media (bytes + content type) unless the body is a JSON error.
        """
        budget = self._timeout if timeout is None else timeout
        reset = _deadline.set(time.monotonic() + budget)
        try:
            token = self.tokens.get()
            try:
                return self._call_once(method, path, token, json, params, files, binary)
            except AccessTokenInvalid:
                self.tokens.invalidate(token)
            token = self.tokens.get()
            return self._call_once(method, path, token, json, params, files, binary)
        finally:
            _deadline.reset(reset)

    def _call_once(
        self,
        method: str,
        path: str,
        token: str,
        json: Mapping[str, Any] | None,
        params: Mapping[str, str] | None,
        files: Mapping[str, FileSpec] | None,
        binary: bool,
    ) -> dict[str, Any] | MediaFile:
        response = self._send(
            method, path, params={**(params or {}), "access_token": token}, json=json, files=files
        )
        redact = (self._secret, token)
        if binary:
            return self._media(path, response, redact)
        return self._json(path, response, redact)

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Mapping[str, Any] | None = None,
        files: Mapping[str, FileSpec] | None = None,
    ) -> Response:
        where = f"{method} {self._host}{path}"
        deadline = _deadline.get()
        remaining = self._timeout if deadline is None else deadline - time.monotonic()
        if remaining <= 0:
            raise TransportError(f"{where}: no time left for the request", timed_out=True)
        data: bytes | None = None
        headers: dict[str, str] | None = None
        if json is not None:
            data = jsonlib.dumps(json, ensure_ascii=False, separators=(",", ":")).encode()
            headers = {"Content-Type": "application/json; charset=utf-8"}
        failure: str | None = None
        timed_out = False
        try:
            return self._transport.request(
                method,
                self._base_url + path,
                params=params,
                data=data,
                headers=headers,
                files=files,
                timeout=(remaining, remaining),
                allow_redirects=False,
            )
        except requests.Timeout:
            failure, timed_out = f"timed out after {remaining:.1f} s", True
        except requests.ConnectionError:
            failure = "connection failed"
        except (requests.RequestException, OSError, ValueError) as exc:
            failure = f"request failed ({type(exc).__name__})"
        # Raised outside the except blocks: the library's exception (with the full URL,
        # token included) must not even be the implicit __context__.
        raise TransportError(f"{where}: {failure}", timed_out=timed_out) from None

    def _json(self, path: str, response: Response, redact: tuple[str, ...]) -> dict[str, Any]:
        data = _json_object(response.content)
        if data is None:
            raise TransportError(
                f"{self._host}{path}: HTTP {response.status_code}, answer is not a JSON object"
            )
        self._raise_for_errcode(path, data, redact)
        if response.status_code >= 400:
            raise TransportError(f"{self._host}{path}: HTTP {response.status_code}")
        return data

    def _media(self, path: str, response: Response, redact: tuple[str, ...]) -> MediaFile:
        content = response.content
        content_type = response.headers.get("Content-Type", "")
        # Errors come as JSON, reportedly with HTTP 200 and text/plain: sniff the body.
        data = _json_object(content) if len(content) <= _SNIFF_LIMIT else None
        if data is not None:
            self._raise_for_errcode(path, data, redact)
            video_url = data.get("video_url")
            if isinstance(video_url, str) and video_url:
                return MediaFile(b"", content_type, None, video_url=video_url)
            raise TransportError(f"{self._host}{path}: unexpected JSON answer")
        if response.status_code >= 400:
            raise TransportError(f"{self._host}{path}: HTTP {response.status_code}")
        match = _FILENAME_RE.search(response.headers.get("Content-Disposition", ""))
        return MediaFile(content, content_type, match.group(1) if match else None)

    def _raise_for_errcode(
        self, path: str, data: Mapping[str, Any], redact: tuple[str, ...]
    ) -> None:
        errcode = data.get("errcode", 0)
        if errcode == 0:
            return
        if not isinstance(errcode, int):
            raise TransportError(f"{self._host}{path}: malformed errcode")
        errmsg = data.get("errmsg")
        raise self._error(errcode, errmsg if isinstance(errmsg, str) else "", redact)


class WeChatClient(ServerAPIClient):
    """Client of the WeChat Official Account server API for one AppID.

    ``store`` is the endpoint's storage (shared token cache); ``clock`` gives wall-clock
    seconds for token expiry; ``timeout`` is the default budget of one call in seconds.
    """

    custom_message: CustomMessageAPI
    """客服消息: ``send_text``, ``send_image``."""
    typing: TypingAPI
    """Typing indicator: ``start``, ``stop``."""

    def __init__(
        self,
        base_url: str,
        app_id: str,
        app_secret: str,
        store: EndpointStore,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.time,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(base_url, app_id, app_secret, store, transport, clock, timeout)
        self._app_id = app_id
        self.custom_message = CustomMessageAPI(self)
        self.typing = TypingAPI(self)

    def __repr__(self) -> str:
        return f"WeChatClient({self._host!r}, app_id={self._app_id!r})"

    def _fetch_token(self) -> tuple[str, int]:
        """``POST /cgi-bin/stable_token`` in normal mode (see ``token_cache`` for why)."""
        if not self._app_id or not self._secret:
            raise error_for(41004 if self._app_id else 41002, "appid or appsecret missing")
        response = self._send(
            "POST",
            STABLE_TOKEN_PATH,
            json={
                "grant_type": "client_credential",
                "appid": self._app_id,
                "secret": self._secret,
                "force_refresh": False,
            },
        )
        data = self._json(STABLE_TOKEN_PATH, response, (self._secret,))
        return self._token_from(STABLE_TOKEN_PATH, data)


def _json_object(body: bytes) -> dict[str, Any] | None:
    """``body`` as a JSON object, or None when it is not one."""
    if body.lstrip()[:1] != b"{":
        return None
    try:
        value = jsonlib.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
