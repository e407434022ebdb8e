"""What outlives a message: answers still being delivered, and the lazy sweep that keeps
storage bounded.

An answer's parts live in its job record (``retry_tracker``). When not all of them went
out in passive replies, a *delivery record* notes how the rest travels and how far it got:

* ``mode`` ``push`` — the worker sends the rest as customer-service messages;
  ``fetch`` — the user sends the fetch keyword for each next part;
* ``sent`` — how many parts the user has had (0 when the last delivery handed off before
  the app finished).

A delivery record is opened once per job: by the delivery that replied with the first
part (``sent=1``) or by the last delivery that handed off (``sent=0``). From then on one
writer moves it on at a time — the worker while it pushes, the user's fetch messages
otherwise. Each user has an index of their open deliveries, oldest first.

Storage has no TTL and no key listing, so every record the plugin leaves behind is noted
in one bounded ring per endpoint with its expiry, and expired records are deleted by later
requests. Concurrent writers may lose a ring update; the cost is a record that lingers,
never a wrong answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from functools import partial
from typing import Any

from .concurrency import run_side_by_side
from .retry_tracker import Job, RetryTracker
from .storage import EndpointStore, hashed

logger = logging.getLogger(__name__)

_USER_KIND = "user"
_DELIVERY_KIND = "delivery"
_RING_KIND = "sweep"
_RING_IDENT = "ring"  # one record per shard: ring-0 … ring-f

#: Shortest life of a job record: WeChat's three deliveries take ~15 s.
MIN_JOB_RETENTION_SECONDS = 120.0
#: Longest life of a job record that nothing waits for, whatever the timestamp tolerance.
MAX_JOB_RETENTION_SECONDS = 1800.0
#: How long an undelivered answer stays fetchable (setting ``answer_retention_hours``).
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
#: Attempts to add a job to a user's index when concurrent writers overwrite each other.
_INDEX_ATTEMPTS = 3


#: Writes of a ring shard per request: one, so that a reply waiting for it (a hand-off)
#: never waits for a second; notes that arrive meanwhile go with the shard's next write.
_RING_WRITES_PER_CALL = 1
#: Bound on notes waiting in memory per ring shard (the oldest are dropped beyond it:
#: their records then linger, as when concurrent writers overwrite each other).
MAX_PENDING_NOTES = 2 * MAX_RING_ENTRIES


class _PendingNotes:
    """Sweep notes waiting for a write of their ring shard, per process (see
    ``Outbox._track_all``). Lost with the process; the cost is records that linger."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._notes: dict[str, list[tuple[str, str, float]]] = {}
        self._writing: set[str] = set()

    def add(self, ring: str, notes: list[tuple[str, str, float]]) -> bool:
        """Queue ``notes``; True when the caller is to write them (nobody else is)."""
        with self._lock:
            queued = self._notes.setdefault(ring, [])
            queued.extend(notes)
            del queued[:-MAX_PENDING_NOTES]
            if ring in self._writing:
                return False
            self._writing.add(ring)
            return True

    def take(self, ring: str) -> list[tuple[str, str, float]]:
        with self._lock:
            return self._notes.pop(ring, [])

    def put_back(self, ring: str, notes: list[tuple[str, str, float]]) -> None:
        with self._lock:
            queued = self._notes.setdefault(ring, [])
            queued[:0] = notes
            del queued[:-MAX_PENDING_NOTES]

    def done(self, ring: str) -> None:
        with self._lock:
            self._writing.discard(ring)

    def waiting(self, ring: str) -> int:
        with self._lock:
            return len(self._notes.get(ring, []))


_PENDING_NOTES = _PendingNotes()


class Route(StrEnum):
    PUSH = "push"
    FETCH = "fetch"


@dataclass(frozen=True)
class Delivery:
    job: str  # hashed dedupe key of the message whose answer this is
    user: str  # hashed OpenID
    route: Route
    sent: int  # parts the user has had
    opened_at: float
    closed: bool = False
    #: The user has not been told how to get the rest (a push failed after the hand-off).
    unannounced: bool = False

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["route"] = self.route.value
        record["v"] = 1
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Delivery | None:
        try:
            return cls(
                job=str(record["job"]),
                user=str(record["user"]),
                route=Route(record["route"]),
                sent=int(record["sent"]),
                opened_at=float(record["opened_at"]),
                closed=bool(record.get("closed", False)),
                unannounced=bool(record.get("unannounced", False)),
            )
        except (KeyError, ValueError, TypeError):
            return None


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
        self._pending_cache: dict[str, list[Delivery]] = {}

    @property
    def retention(self) -> float:
        return self._retention

    @property
    def store(self) -> EndpointStore:
        return self._store

    # --- sweep ring --------------------------------------------------------------------

    def track_job(self, job_key: str) -> None:
        """Note a new job record; a few expired records of anyone are deleted on the way."""
        self._track("j", job_key, self._clock() + self._job_retention)

    def _track(self, kind: str, ident: str, expires_at: float) -> None:
        self._track_all([(kind, ident, expires_at)])

    def _track_all(self, notes: list[tuple[str, str, float]]) -> None:
        """Note records of one shard (the first id's) with their expiry.

        Group commit: while a request of this process is writing the shard, notes for it
        wait in memory and go with the shard's next write, which takes every note waiting
        by then (a burst of messages would otherwise rewrite each shard once per message).
        Notes of a process that ends first are lost: their records linger, as when
        concurrent writers overwrite each other (module docstring)."""
        ident = notes[0][1]
        shard = ident[:1] if ident[:1] in "0123456789abcdef" else "x"
        ring = self._store.key(_RING_KIND, f"{_RING_IDENT}-{shard}")
        if not _PENDING_NOTES.add(ring, notes):
            return  # a write of this shard is under way in this process: it takes them
        try:
            for _ in range(_RING_WRITES_PER_CALL):
                batch = _PENDING_NOTES.take(ring)
                if not batch:
                    break
                try:
                    self._write_ring(shard, batch)
                except Exception:
                    _PENDING_NOTES.put_back(ring, batch)
                    raise
        finally:
            _PENDING_NOTES.done(ring)

    def _write_ring(self, shard: str, notes: list[tuple[str, str, float]]) -> None:
        now = self._clock()
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
        index = {(str(e[0]), str(e[1])): e for e in live}
        for kind, noted, expires_at in notes:
            existing = index.get((kind, noted))
            if existing is not None:
                existing[2] = max(float(existing[2]), round(expires_at))
            else:
                entry = [kind, noted, round(expires_at)]
                live.append(entry)
                index[(kind, noted)] = entry
        if len(live) > MAX_RING_ENTRIES:
            # Over the bound: give up what expires soonest (a job record kept for minutes
            # before an answer still waiting for the keyword for hours); ties by arrival.
            live.sort(key=lambda entry: float(entry[2]))
            excess = len(live) - MAX_RING_ENTRIES
            expired.extend(live[:excess])
            live = live[excess:]
        # Save first: a request cut short must not leave entries it already dealt with.
        self._store.save(_RING_KIND, f"{_RING_IDENT}-{shard}", {"v": 1, "entries": live})
        for entry in expired:
            self._expire(str(entry[0]), str(entry[1]))

    def _expire(self, kind: str, ident: str) -> None:
        if kind == "j":
            self._tracker.remove(ident)
        elif kind == "d":
            self._store.remove(_DELIVERY_KIND, ident)
        elif kind == "u":
            jobs = self._load_index(ident, strict=True)
            live = [d for d in (self.get(job) for job in jobs) if d is not None and self._live(d)]
            if live:  # still waiting: keep it, and keep it tracked
                oldest = min(d.opened_at for d in live)
                self._track("u", ident, oldest + self._retention)
            else:
                self._store.remove(_USER_KIND, ident)

    # --- delivery records ----------------------------------------------------------------

    def get(
        self, job_key: str, strict: bool = False, expect_missing: bool = False
    ) -> Delivery | None:
        record = self._store.load(
            _DELIVERY_KIND, job_key, strict=strict, expect_missing=expect_missing
        )
        return Delivery.from_record(record) if record else None

    def save(self, delivery: Delivery) -> None:
        self._store.save(_DELIVERY_KIND, delivery.job, delivery.to_record())
        self._pending_cache.pop(delivery.user, None)

    def open(self, openid: str, job_key: str, route: Route, sent: int) -> Delivery:
        """Note that ``job_key``'s answer continues by ``route`` after ``sent`` parts.
        Opening again (a retried delivery) returns the record already there."""
        existing = self.get(job_key, strict=True, expect_missing=True)
        if existing is not None:
            return existing
        delivery = Delivery(job_key, hashed(openid), route, sent, self._clock())
        self._note_open(delivery, save=True)
        return delivery

    def _note_open(self, delivery: Delivery, save: bool = False) -> None:
        """Index an open delivery for its user and note it (and its job) for the sweep;
        ``save`` writes the record itself alongside. An index entry whose record is not
        (yet) there is skipped by readers, so the order does not matter."""
        job_key, user = delivery.job, delivery.user
        expires = delivery.opened_at + self._retention
        # The job record holds the parts: it must live as long as the delivery. Job and
        # delivery share a ring shard (same id), so one update notes both.
        notes = [("j", job_key, expires), ("d", job_key, expires), ("u", user, expires)]
        shards: dict[str, list[tuple[str, str, float]]] = {}
        for note in notes:  # one update per ring shard, so they cannot overwrite each other
            shards.setdefault(note[1][:1], []).append(note)
        # A hand-off replies right after this: the record, the index (needed for the fetch
        # keyword) and the sweep notes are written side by side.
        tasks: list[Callable[[], None]] = [partial(self._add_to_index, user, job_key)]
        if save:
            tasks.append(partial(self.save, delivery))
        tasks += [partial(self._quietly, partial(self._track_all, g)) for g in shards.values()]
        run_side_by_side(tasks)

    def give_up(self, job: Job, route: Route) -> Delivery:
        """Note that ``job``'s answer was given up for lost before any of it went out: a
        *closed* record with nothing sent, which no fetch or index lists. Should the work
        finish after all — a worker that outlived its lease under load — it finds the
        record and delivers the answer by ``route`` after all (:meth:`reopen`). A record
        already there (a hand-off, an earlier give-up) stays as it is."""
        existing = self.get(job.key, strict=True, expect_missing=True)
        if existing is not None:
            return existing
        delivery = Delivery(job.key, job.user, route, 0, self._clock(), closed=True)
        self.save(delivery)
        expires = delivery.opened_at + self._retention
        self._quietly(partial(self._track_all, [("j", job.key, expires), ("d", job.key, expires)]))
        return delivery

    @staticmethod
    def given_up(delivery: Delivery, parts: int) -> bool:
        """Closed before all ``parts`` went out: only a delivery that took the answer for
        lost closes a record so (:meth:`give_up`, or a fetch finding the job lost)."""
        return delivery.closed and delivery.sent < parts

    def reopen(self, delivery: Delivery, route: Route) -> Delivery:
        """The answer of a given-up delivery came after all: the rest continues by
        ``route``. The user was told it was lost, so an answer left to fetch is
        *unannounced* (the next answer they get says one waits)."""
        moved = replace(
            delivery,
            route=route,
            closed=False,
            unannounced=route is Route.FETCH,
            opened_at=self._clock(),
        )
        self._note_open(moved, save=True)
        return moved

    @staticmethod
    def _quietly(task: Callable[[], None]) -> None:
        try:
            task()
        except Exception:
            logger.warning("Noting a delivery for the sweep failed", exc_info=True)

    def advance(self, delivery: Delivery, sent: int, total: int) -> Delivery:
        """Record that the user has had ``sent`` of ``total`` parts."""
        moved = replace(delivery, sent=sent, closed=sent >= total, unannounced=False)
        self.save(moved)
        return moved

    def switch_to_fetch(self, delivery: Delivery, announced: bool) -> Delivery:
        """A push failed: the rest waits for the fetch keyword."""
        moved = replace(delivery, route=Route.FETCH, unannounced=not announced)
        self.save(moved)
        return moved

    def close(self, delivery: Delivery) -> Delivery:
        closed = replace(delivery, closed=True)
        self.save(closed)
        return closed

    def _live(self, delivery: Delivery) -> bool:
        return not delivery.closed and self._clock() - delivery.opened_at < self._retention

    # --- per-user index ------------------------------------------------------------------

    def _load_index(self, user: str, strict: bool = False) -> list[str]:
        record = self._store.load(_USER_KIND, user, strict=strict) or {}
        jobs = record.get("jobs", [])
        return [str(j) for j in jobs] if isinstance(jobs, list) else []

    def _add_to_index(self, user: str, job_key: str) -> None:
        # No compare-and-set: write, read back, and try again if a concurrent writer
        # replaced the list without our job.
        for _ in range(_INDEX_ATTEMPTS):
            jobs = [j for j in self._load_index(user) if j != job_key]
            jobs = [*jobs, job_key][-MAX_PENDING_ANSWERS * 2 :]
            self._store.save(_USER_KIND, user, {"v": 2, "jobs": jobs})
            if job_key in self._load_index(user):
                return

    def pending(self, openid: str) -> list[Delivery]:
        """The user's open deliveries, oldest first (at most MAX_PENDING_ANSWERS)."""
        user = hashed(openid)
        cached = self._pending_cache.get(user)
        if cached is not None:
            return cached
        found = [self.get(job) for job in self._load_index(user)]
        live = [d for d in found if d is not None and self._live(d)][-MAX_PENDING_ANSWERS:]
        self._pending_cache[user] = live
        return live

    def cached_pending(self, openid: str) -> list[Delivery]:
        """What ``pending`` found earlier in this request (nothing if it was not asked)."""
        return self._pending_cache.get(hashed(openid), [])

    def has_pending(self, openid: str) -> bool:
        return bool(self.pending(openid))

    def forget_user(self, openid: str) -> None:
        """Delete what is kept for a user (they unfollowed the account)."""
        user = hashed(openid)
        for job in self._load_index(user):
            self._store.remove(_DELIVERY_KIND, job)
        self._store.remove(_USER_KIND, user)
        self._pending_cache.pop(user, None)
