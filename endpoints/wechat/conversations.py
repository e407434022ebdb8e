"""One Dify conversation per (endpoint, WeChat user), kept in storage."""

from __future__ import annotations

import time
from collections.abc import Callable

from .storage import EndpointStore, hashed

_KIND = "conv"


class ConversationStore:
    """Built per request; what it read or wrote in this request is remembered, so a lookup
    made ahead of time (:meth:`prefetch`, side by side with other writes) is not repeated."""

    def __init__(self, store: EndpointStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._known: dict[str, str | None] = {}

    def get(self, openid: str) -> str | None:
        if openid in self._known:
            return self._known[openid]
        record = self._store.load(_KIND, hashed(openid))
        conversation_id = record.get("conversation_id") if record else None
        found = conversation_id if isinstance(conversation_id, str) and conversation_id else None
        self._known[openid] = found
        return found

    def prefetch(self, openid: str) -> None:
        self.get(openid)

    def set(self, openid: str, conversation_id: str) -> None:
        self._known.pop(openid, None)
        self._store.save(
            _KIND,
            hashed(openid),
            {"v": 1, "conversation_id": conversation_id, "updated_at": self._clock()},
        )
        self._known[openid] = conversation_id

    def clear(self, openid: str) -> None:
        self._known.pop(openid, None)
        self._store.remove(_KIND, hashed(openid))
