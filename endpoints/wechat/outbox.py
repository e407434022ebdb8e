"""What outlives a message: answer parts waiting to be fetched, and the lazy sweep that
keeps storage bounded.

Storage has no TTL and no key listing, so every record the plugin leaves behind is noted
in one bounded ring per endpoint with its expiry, and expired records are deleted by later
requests: job records (dedupe + reply) after the replay window, a user's waiting parts
after the answer retention. Concurrent writers may lose a ring update; the cost is a
record that lingers, never a wrong answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .retry_tracker import RetryTracker
from .storage import EndpointStore, hashed

_USER_KIND = "user"
_RING_KIND = "sweep"
_RING_IDENT = "ring"  # one record per shard: ring-0 … ring-f

#: Shortest life of a job record: WeChat's three deliveries take ~15 s.
MIN_JOB_RETENTION_SECONDS = 120.0
#: Longest life of a job record, whatever the timestamp tolerance.
MAX_JOB_RETENTION_SECONDS = 1800.0
#: How long an undelivered remainder stays fetchable.
ANSWER_RETENTION_SECONDS = 24 * 3600.0
#: The sweep ring is split by the first hex digit of the record id: smaller values to
#: rewrite, and concurrent requests rarely touch the same shard.
RING_SHARDS = 16
#: Bound per shard; when full, the oldest records are deleted early.
MAX_RING_ENTRIES = 200
#: Expired records deleted per request, so a sweep never delays a reply noticeably.
MAX_SWEEP_PER_CALL = 8
#: Bound on answers waiting per user (the oldest is dropped beyond it).
MAX_PENDING_ANSWERS = 5


@dataclass
class PendingAnswer:
    job: str
    parts: list[str] = field(default_factory=list)
    stored_at: float = 0.0


class Outbox:
    def __init__(
        self,
        store: EndpointStore,
        tracker: RetryTracker,
        clock: Callable[[], float] = time.time,
        retention: float = ANSWER_RETENTION_SECONDS,
        job_retention: float = MIN_JOB_RETENTION_SECONDS,
    ) -> None:
        self._store = store
        self._tracker = tracker
        self._clock = clock
        self._retention = retention
        self._job_retention = min(
            MAX_JOB_RETENTION_SECONDS, max(MIN_JOB_RETENTION_SECONDS, job_retention)
        )

    # --- sweep ring --------------------------------------------------------------------

    def track_job(self, job_key: str) -> None:
        """Note a new job record; a few expired records of anyone are deleted on the way."""
        self._track("j", job_key, self._clock() + self._job_retention)

    def _track(self, kind: str, ident: str, expires_at: float) -> None:
        now = self._clock()
        shard = ident[:1] if ident[:1] in "0123456789abcdef" else "x"
        record = self._store.load(_RING_KIND, f"{_RING_IDENT}-{shard}") or {}
        live: list[list[Any]] = []
        expired: list[list[Any]] = []
        for entry in record.get("entries", []):
            if not (isinstance(entry, list) and len(entry) == 3):
                continue
            if float(entry[2]) <= now and len(expired) < MAX_SWEEP_PER_CALL:
                expired.append(entry)
            else:
                live.append(entry)
        existing = next((e for e in live if e[0] == kind and e[1] == ident), None)
        if existing is not None:
            existing[2] = max(float(existing[2]), round(expires_at))
        else:
            live.append([kind, ident, round(expires_at)])
        while len(live) > MAX_RING_ENTRIES:
            expired.append(live.pop(0))
        # Save first: a request cut short must not leave entries it already dealt with.
        self._store.save(_RING_KIND, f"{_RING_IDENT}-{shard}", {"v": 1, "entries": live})
        for entry in expired:
            self._expire(str(entry[0]), str(entry[1]))

    def _expire(self, kind: str, ident: str) -> None:
        if kind == "j":
            self._tracker.remove(ident)
        elif kind == "u":
            pending = self._load_pending(ident, strict=True)
            live = self._live_pending(pending)
            if live:  # still waiting: keep it, and keep it tracked
                self._save_pending(ident, live)
                oldest = min(p.stored_at for p in live)
                self._track("u", ident, oldest + self._retention)
            else:
                self._store.remove(_USER_KIND, ident)

    # --- waiting answer parts ------------------------------------------------------------

    def _load_pending(self, user_ident: str, strict: bool = False) -> list[PendingAnswer]:
        record = self._store.load(_USER_KIND, user_ident, strict=strict) or {}
        pending: list[PendingAnswer] = []
        for item in record.get("pending", []):
            try:
                pending.append(PendingAnswer(**item))
            except TypeError:
                continue
        return pending

    def _save_pending(self, user_ident: str, pending: list[PendingAnswer]) -> None:
        if pending:
            record = {"v": 1, "pending": [asdict(p) for p in pending]}
            self._store.save(_USER_KIND, user_ident, record)
        else:
            self._store.remove(_USER_KIND, user_ident)

    def _live_pending(self, pending: list[PendingAnswer]) -> list[PendingAnswer]:
        now = self._clock()
        return [p for p in pending if p.parts and now - p.stored_at < self._retention]

    def has_pending(self, openid: str) -> bool:
        return bool(self._live_pending(self._load_pending(hashed(openid))))

    def add_remainder(self, openid: str, job_key: str, parts: list[str]) -> None:
        """Keep ``parts`` (the rest of a job's answer) until fetched or expired."""
        if not parts:
            return
        ident = hashed(openid)
        pending = self._live_pending(self._load_pending(ident))
        if any(p.job == job_key for p in pending):
            return  # a retried delivery of the same message
        pending.append(PendingAnswer(job_key, list(parts), self._clock()))
        self._save_pending(ident, pending[-MAX_PENDING_ANSWERS:])
        self._track("u", ident, self._clock() + self._retention)

    def take_next(self, openid: str) -> tuple[str, bool] | None:
        """Pop the next waiting part (oldest answer first) → (text, more_waiting)."""
        ident = hashed(openid)
        pending = self._live_pending(self._load_pending(ident))
        if not pending:
            return None
        head = pending[0]
        text = head.parts.pop(0)
        if not head.parts:
            pending.pop(0)
        self._save_pending(ident, pending)
        return text, bool(pending)

    def forget_user(self, openid: str) -> None:
        """Delete what is kept for a user (they unfollowed the account)."""
        self._store.remove(_USER_KIND, hashed(openid))
