"""Refuses a captured request replayed within the timestamp window.

In plain mode WeChat's ``signature`` covers only token, timestamp and nonce, not the
body; without this guard a captured query string could carry a forged body for as long
as the timestamp is accepted. Each accepted signature is remembered with the message it
carried; the same signature with another message is a replay. WeChat's own retries carry
the same message and pass (they are deduplicated later).

The record is a bounded ring on one storage key: storage has no TTL and no listing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .storage import EndpointStore, hashed

_KIND = "replay"
_IDENT = "ring"
MAX_ENTRIES = 512


class ReplayGuard:
    def __init__(
        self,
        store: EndpointStore,
        window_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._window = window_seconds
        self._clock = clock

    def admit(self, signature: str, message_key: str) -> bool:
        """True when this signature is new or belongs to the same message; remembers it."""
        now = self._clock()
        sig = hashed("sig:" + signature)[:20]
        msg = hashed("msg:" + message_key)[:20]
        record = self._store.load(_KIND, _IDENT) or {}
        entries = [
            e
            for e in record.get("entries", [])
            if isinstance(e, list) and len(e) == 3 and now - float(e[2]) <= 2 * self._window
        ]
        for seen_sig, seen_msg, _ in entries:
            if seen_sig == sig:
                return bool(seen_msg == msg)
        entries.append([sig, msg, now])
        self._store.save(_KIND, _IDENT, {"v": 1, "entries": entries[-MAX_ENTRIES:]})
        return True
