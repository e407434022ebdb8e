"""One Dify conversation per (endpoint, WeChat user), kept in storage."""

from __future__ import annotations

import time
from collections.abc import Callable

from .storage import EndpointStore, hashed

_KIND = "conv"


class ConversationStore:
    def __init__(self, store: EndpointStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def get(self, openid: str) -> str | None:
        record = self._store.load(_KIND, hashed(openid))
        if not record:
            return None
        conversation_id = record.get("conversation_id")
        return conversation_id if isinstance(conversation_id, str) and conversation_id else None

    def set(self, openid: str, conversation_id: str) -> None:
        self._store.save(
            _KIND,
            hashed(openid),
            {"v": 1, "conversation_id": conversation_id, "updated_at": self._clock()},
        )

    def clear(self, openid: str) -> None:
        self._store.remove(_KIND, hashed(openid))
