"""State that must outlive a request lives in Dify's plugin storage, behind this interface.

Dify's storage (``session.storage``) holds bytes, has no TTL and no atomic operations,
and is shared by every endpoint of the plugin in a workspace and by every plugin process
(reference/dify-plugin-runtime.md §6). So keys are namespaced by endpoint and hashed
where they contain user ids, and values are JSON records carrying their own timestamps.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class KeyValueStore(Protocol):
    """The subset of ``session.storage`` we use."""

    def get(self, key: str) -> bytes: ...  # raises when the key is missing

    def set(self, key: str, val: bytes) -> None: ...

    def delete(self, key: str) -> None: ...

    def exist(self, key: str) -> bool: ...


def hashed(value: str) -> str:
    """Stable, non-reversible id for user ids and message ids inside keys."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:32]


class EndpointStore:
    """JSON records under ``wx/<endpoint>/<kind>/<id>``; misses are ``None``, not errors."""

    def __init__(self, backend: KeyValueStore, endpoint_id: str) -> None:
        self._backend = backend
        # Endpoint ids are UUIDs; hash anything else so the key stays within Dify's rules.
        safe = endpoint_id if endpoint_id.replace("-", "").isalnum() else hashed(endpoint_id)
        self._prefix = f"wx/{safe or 'default'}"

    def key(self, kind: str, ident: str) -> str:
        return f"{self._prefix}/{kind}/{ident}"

    def load(
        self, kind: str, ident: str, strict: bool = False, expect_missing: bool = False
    ) -> dict[str, Any] | None:
        """The record, or None when missing. ``get`` raises for a missing key *and* for a
        failure; ``strict`` asks ``exist`` after a failed ``get`` so a failure raises instead
        of passing for "missing" — where mistaking one for the other would start a second
        app call. ``expect_missing`` (with ``strict``) asks ``exist`` first: one storage
        call instead of two when the record is usually not there, one more when it is."""
        key = self.key(kind, ident)
        if strict and expect_missing:
            if not self._backend.exist(key):  # raises when storage fails
                return None
            raw = self._backend.get(key)
            return self._decode(kind, raw)
        try:
            raw = self._backend.get(key)
        except Exception:  # a missing key raises by design: not worth a warning
            if not (strict and self._backend.exist(key)):
                return None
            # It exists: either it was written just now (another request created it
            # between the two calls) or reading failed. One more read tells them apart.
            raw = self._backend.get(key)
        return self._decode(kind, raw)

    @staticmethod
    def _decode(kind: str, raw: bytes) -> dict[str, Any] | None:
        if not raw:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            logger.warning("Ignoring a corrupt storage record of kind %s", kind)
            return None
        return value if isinstance(value, dict) else None

    def save(self, kind: str, ident: str, record: dict[str, Any]) -> None:
        payload = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        self._backend.set(self.key(kind, ident), payload.encode("utf-8"))

    def remove(self, kind: str, ident: str) -> None:
        try:
            self._backend.delete(self.key(kind, ident))
        except Exception:
            logger.debug("Deleting a storage record of kind %s failed", kind, exc_info=True)
