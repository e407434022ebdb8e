"""One access token per Official Account, shared by every process through plugin storage.

WeChat wants a central token cache (中控服务器): every worker, process and endpoint instance of
the same AppID uses the same token, refreshes it ahead of expiry, and refreshes it passively
when an API call says it is invalid (40001/40014/42001). Reference: ``wechat-protocol.md`` §8,
https://developers.weixin.qq.com/doc/subscription/api/base/api_getstableaccesstoken.html

The token comes from ``POST /cgi-bin/stable_token`` (the ``fetch`` callable), never from
``/cgi-bin/token``: in normal mode (``force_refresh: false``) stable_token returns the *same*
token to every caller until WeChat renews it about 5 minutes before expiry, so two processes
that refresh at the same time get the same token and cannot invalidate each other. That is why
no lock across processes is needed (storage has no atomic operations anyway).

Record: kind ``"token"``, ident = hash of the AppID (never the AppSecret), value
``{"token", "expires_at", "refresh_at", "fetched_at"}`` in seconds of ``clock()`` (wall clock,
since the record is shared between processes).

Choices:

- Refresh ahead: a token is refreshed once ``refresh_at`` is reached, ``refresh_ahead``
  (default 5 min) before expiry; when WeChat hands out a token with less than that left (its
  own renewal window), ``refresh_at`` is half its remaining life, so we never re-fetch in a
  loop. If the refresh fails while the cached token has not expired, the cached token is used.
- ``invalidate(token)`` removes the record only if it still holds *that* token: a process
  holding a stale token must not delete the fresh one another process just stored. (Read,
  compare and delete are not atomic; losing that race costs one extra stable_token call that
  returns the same token.)
- After an invalidation the refresh still uses ``force_refresh: false``. The usual cause of
  40001/42001 is a token that WeChat already renewed (expired, or force-refreshed by someone
  else), and normal mode then returns the new one. ``force_refresh: true`` is limited to 20 a
  day, 30 s apart, and invalidates the token every other caller holds; if normal mode returns
  the very token that failed, the client's single retry fails and ``AccessTokenInvalid``
  reaches the caller with a hint for the admin instead of burning that quota automatically.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..storage import EndpointStore, hashed
from .errors import WeChatError

logger = logging.getLogger(__name__)

TOKEN_KIND = "token"  # noqa: S105 (a storage kind, not a secret)
REFRESH_AHEAD = 300.0
"""Seconds before expiry at which the token is refreshed (WeChat renews its own 5 min ahead)."""

TokenFetcher = Callable[[], tuple[str, int]]
"""Returns ``(access_token, expires_in_seconds)`` or raises a :class:`WeChatError`."""


@dataclass(frozen=True)
class _Record:
    token: str
    expires_at: float
    refresh_at: float


class AccessTokenCache:
    """The AppID's access token, from storage or freshly fetched; see the module docstring."""

    def __init__(
        self,
        store: EndpointStore,
        fetch: TokenFetcher,
        clock: Callable[[], float] = time.time,
        *,
        app_id: str,
        refresh_ahead: float = REFRESH_AHEAD,
    ) -> None:
        self._store = store
        self._fetch = fetch
        self._clock = clock
        self._ident = hashed(f"access-token:{app_id}")
        self._refresh_ahead = refresh_ahead
        self._memo: _Record | None = None  # this instance's copy; storage is the truth
        self._lock = threading.Lock()  # one fetch at a time within the process

    def get(self) -> str:
        """A token believed valid: the cached one, or a fresh one from ``fetch``."""
        memo = self._memo
        if memo is not None and self._clock() < memo.refresh_at:
            return memo.token
        with self._lock:
            record = self._load()
            now = self._clock()
            if record is not None and now < record.refresh_at:
                self._memo = record
                return record.token
            try:
                token, expires_in = self._fetch()
            except WeChatError as exc:
                if record is not None and now < record.expires_at:
                    logger.warning(
                        "Refreshing the WeChat access token failed (%s); using the cached one",
                        type(exc).__name__,
                    )
                    self._memo = record
                    return record.token
                raise
            now = self._clock()
            record = _Record(
                token=token,
                expires_at=now + expires_in,
                refresh_at=now + max(expires_in - self._refresh_ahead, expires_in / 2),
            )
            self._store.save(
                TOKEN_KIND,
                self._ident,
                {
                    "token": record.token,
                    "expires_at": record.expires_at,
                    "refresh_at": record.refresh_at,
                    "fetched_at": now,
                },
            )
            self._memo = record
            return token

    def invalidate(self, token: str) -> None:
        """Forget ``token`` after WeChat rejected it, unless a newer one was stored meanwhile."""
        with self._lock:
            if self._memo is not None and self._memo.token == token:
                self._memo = None
            record = self._load()
            if record is not None and record.token == token:
                self._store.remove(TOKEN_KIND, self._ident)

    def _load(self) -> _Record | None:
        raw = self._store.load(TOKEN_KIND, self._ident)
        if raw is None:
            return None
        token, expires_at, refresh_at = (
            raw.get("token"),
            raw.get("expires_at"),
            raw.get("refresh_at"),
        )
        if not isinstance(token, str) or not token:
            return None
        if not isinstance(expires_at, int | float) or not isinstance(refresh_at, int | float):
            return None
        return _Record(token, float(expires_at), float(refresh_at))
