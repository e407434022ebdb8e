"""Test doubles for what the pipeline gets from Dify: storage, the app, a clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class MemoryStorage:
    """Behaves like ``session.storage``: bytes only, ``get`` of a missing key raises."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes:
        with self._lock:
            self.calls.append(("get", key))
            if key not in self.data:
                raise Exception("key not found")
            return self.data[key]

    def set(self, key: str, val: bytes) -> None:
        assert isinstance(val, bytes)
        assert len(key) <= 256 and ".." not in key and "//" not in key
        with self._lock:
            self.calls.append(("set", key))
            self.data[key] = val

    def delete(self, key: str) -> None:
        with self._lock:
            self.calls.append(("del", key))
            self.data.pop(key, None)

    def exist(self, key: str) -> bool:
        return key in self.data

    @property
    def writes(self) -> list[str]:
        return [key for op, key in self.calls if op in ("set", "del")]


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def chat_chunks(answer: str, conversation_id: str = "conv-1") -> list[dict[str, Any]]:
    pieces = [answer[i : i + 5] for i in range(0, len(answer), 5)] or [""]
    chunks: list[dict[str, Any]] = [
        {"event": "message", "answer": p, "conversation_id": conversation_id} for p in pieces
    ]
    chunks.append({"event": "message_end", "conversation_id": conversation_id})
    return chunks


class ScriptedCaller:
    """An ``AppCaller`` that records calls and replays chunks (or raises)."""

    def __init__(
        self,
        respond: Callable[[dict[str, Any]], Iterable[Any]] | None = None,
        delay: float = 0.0,
    ) -> None:
        self.calls: list[dict[str, Any]] = []
        self._respond = respond or (lambda call: chat_chunks(f"echo: {call['query']}"))
        self._delay = delay

    def __call__(
        self,
        app_id: str,
        query: str,
        inputs: dict[str, Any],
        conversation_id: str | None,
        user: str,
    ) -> Iterator[Any]:
        call = {
            "app_id": app_id,
            "query": query,
            "inputs": inputs,
            "conversation_id": conversation_id,
            "user": user,
        }
        self.calls.append(call)
        if self._delay:
            time.sleep(self._delay)
        return iter(self._respond(call))
