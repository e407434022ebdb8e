"""Per-user index: recent jobs (for lazy cleanup) and answer parts waiting to be fetched.

Storage has no TTL and no key listing, so every job a user causes is remembered here and
deleted lazily the next time that user writes: settled jobs are kept only for WeChat's
retry window, jobs with undelivered parts until fetched or expired.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .retry_tracker import RetryTracker
from .storage import EndpointStore, hashed

_KIND = "user"

#: How long a job record is kept for WeChat's retries (three deliveries in ~15 s).
JOB_RETENTION_SECONDS = 120.0
#: How long an undelivered remainder stays fetchable.
ANSWER_RETENTION_SECONDS = 24 * 3600.0
#: Bound on remembered jobs per user, so a record never grows without limit.
MAX_TRACKED_JOBS = 50


@dataclass
class PendingAnswer:
    job: str
    next_part: int
    total: int
    stored_at: float


class Outbox:
    def __init__(
        self,
        store: EndpointStore,
        tracker: RetryTracker,
        clock: Callable[[], float] = time.time,
        retention: float = ANSWER_RETENTION_SECONDS,
    ) -> None:
        self._store = store
        self._tracker = tracker
        self._clock = clock
        self._retention = retention

    def _load(self, openid: str) -> tuple[list[list[Any]], list[PendingAnswer]]:
        record = self._store.load(_KIND, hashed(openid)) or {}
        jobs = [j for j in record.get("jobs", []) if isinstance(j, list) and len(j) == 2]
        pending: list[PendingAnswer] = []
        for item in record.get("pending", []):
            try:
                pending.append(PendingAnswer(**item))
            except TypeError:
                continue
        return jobs, pending

    def _save(self, openid: str, jobs: list[list[Any]], pending: list[PendingAnswer]) -> None:
        self._store.save(
            _KIND,
            hashed(openid),
            {
                "v": 1,
                "jobs": jobs[-MAX_TRACKED_JOBS:],
                "pending": [p.__dict__ for p in pending],
            },
        )

    def has_pending(self, openid: str) -> bool:
        now = self._clock()
        _, pending = self._load(openid)
        return any(now - p.stored_at < self._retention for p in pending)

    def track_job(self, openid: str, job_key: str) -> None:
        """Remember a new job of this user and clean up the ones no longer needed."""
        now = self._clock()
        jobs, pending = self._load(openid)
        live_pending = [p for p in pending if now - p.stored_at < self._retention]
        needed = {p.job for p in live_pending}
        kept: list[list[Any]] = []
        for key, created in jobs:
            if key in needed or now - float(created) < JOB_RETENTION_SECONDS:
                kept.append([key, created])
            else:
                self._tracker.remove(str(key))
        for expired in pending:
            if expired not in live_pending and expired.job not in needed:
                self._tracker.remove(expired.job)
        if not any(key == job_key for key, _ in kept):
            kept.append([job_key, now])
        self._save(openid, kept, live_pending)

    def add_remainder(self, openid: str, job_key: str, next_part: int, total: int) -> None:
        """Parts ``next_part..total-1`` of a job's answer wait to be fetched."""
        if next_part >= total:
            return
        jobs, pending = self._load(openid)
        if any(p.job == job_key for p in pending):
            return  # a retried delivery of the same message
        pending.append(PendingAnswer(job_key, next_part, total, self._clock()))
        self._save(openid, jobs, pending)

    def take_next(self, openid: str) -> tuple[str, bool] | None:
        """Pop the next undelivered part (oldest answer first) → (text, more_waiting)."""
        now = self._clock()
        jobs, pending = self._load(openid)
        pending = [p for p in pending if now - p.stored_at < self._retention]
        while pending:
            head = pending[0]
            job = self._tracker.get(head.job)
            if job is None or head.next_part >= len(job.parts):
                pending.pop(0)
                continue
            text = job.parts[head.next_part]
            head.next_part += 1
            if head.next_part >= len(job.parts):
                pending.pop(0)
            self._save(openid, jobs, pending)
            return text, bool(pending)
        self._save(openid, jobs, pending)
        return None

    def forget_user(self, openid: str) -> None:
        """Delete everything kept for a user (they unfollowed the account)."""
        jobs, pending = self._load(openid)
        for key, _ in jobs:
            self._tracker.remove(str(key))
        for item in pending:
            self._tracker.remove(item.job)
        self._store.remove(_KIND, hashed(openid))
