"""State of each inbound message across WeChat's repeated deliveries.

WeChat delivers a message up to three times (same MsgId, or FromUserName + CreateTime for
events). The first delivery *claims* the message by writing a job record; later
deliveries, in this process or another, find the record and wait for its outcome instead
of starting the app again (one app invocation per message). The record lives in storage;
process memory only holds wake-up signals for deliveries waiting in the same process.

A job record has a single writer at a time: the claimer writes it once, then only the
work that owns it writes the outcome. Deliveries never write it.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from .storage import EndpointStore, hashed

_KIND = "job"
#: While a key is carried (see LocalSignals), a waiter checks this often, in memory,
#: whether the connection carrying it is still there, instead of polling storage.
CARRIED_RECHECK = 1.0
#: ... and reads storage every this many rechecks all the same (see wait_settled).
CARRIED_POLLS = 3


class JobState(StrEnum):
    """Lifecycle of a message's work. RUNNING past ``lease_until`` means the work died."""

    RUNNING = "running"  # claimed; the owner may still store an outcome until lease_until
    DONE = "done"  # reply parts stored (an empty list means "acknowledge silently")
    FAILED = "failed"  # the app failed; parts hold the friendly error text


@dataclass(frozen=True)
class Job:
    key: str  # hashed dedupe key
    state: JobState
    owner: str
    created_at: float
    lease_until: float
    user: str  # hashed OpenID
    parts: list[str] = field(default_factory=list)
    reason: str = ""  # why it failed, for logs (no content, no secrets)
    worker: bool = False  # a worker request took the work over (see worker.py)
    awaits: str = ""  # a fetch message waiting for this other job's answer

    def elapsed(self, now: float) -> float:
        """Time since the first delivery of this message claimed it."""
        return now - self.created_at

    def is_settled(self) -> bool:
        return self.state is not JobState.RUNNING

    def is_lost(self, now: float) -> bool:
        return self.state is JobState.RUNNING and now > self.lease_until

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["state"] = self.state.value
        record["v"] = 1
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Job | None:
        try:
            return cls(
                key=str(record["key"]),
                state=JobState(record["state"]),
                owner=str(record["owner"]),
                created_at=float(record["created_at"]),
                lease_until=float(record["lease_until"]),
                user=str(record.get("user", "")),
                parts=[str(p) for p in record.get("parts", [])],
                reason=str(record.get("reason", "")),
                worker=bool(record.get("worker", False)),
                awaits=str(record.get("awaits", "")),
            )
        except (KeyError, ValueError, TypeError):
            return None


@dataclass
class _Slot:
    event: threading.Event = field(default_factory=threading.Event)
    job: Job | None = None
    watchers: int = 0


class LocalSignals:
    """Hands a settled job to deliveries waiting in the same process, without a storage
    round trip (threading.Event is a gevent primitive once the SDK has monkey-patched the
    process). A waiter registers *before* the work starts, so no wake-up is missed.

    A key is *carried* while a connection in this process follows the worker that owns it
    (``worker_link``): its outcome will be handed over here, so waiters need not poll
    storage. An outcome fired for a carried key is kept until the connection ends, so a
    delivery that starts waiting after the hand-over (it read the job a moment before the
    worker stored the outcome) still gets it at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._carried: dict[str, int] = {}
        self._outcomes: dict[str, Job] = {}

    def watch(self, key: str) -> _Slot:
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot()
                outcome = self._outcomes.get(key)
                if outcome is not None:
                    slot.job = outcome
                    slot.event.set()
            slot.watchers += 1
            return slot

    def release(self, key: str) -> None:
        with self._lock:
            slot = self._slots.get(key)
            if slot is not None:
                slot.watchers -= 1
                if slot.watchers <= 0:
                    del self._slots[key]

    def fire(self, job: Job) -> None:
        with self._lock:
            slot = self._slots.get(job.key)
            if job.key in self._carried:
                self._outcomes[job.key] = job
        if slot is not None:
            slot.job = job
            slot.event.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._slots)

    def carry(self, key: str) -> None:
        """A connection in this process will hand ``key``'s outcome over when it comes."""
        with self._lock:
            self._carried[key] = self._carried.get(key, 0) + 1

    def drop(self, key: str) -> None:
        with self._lock:
            left = self._carried.get(key, 0) - 1
            if left > 0:
                self._carried[key] = left
            else:
                self._carried.pop(key, None)
                self._outcomes.pop(key, None)

    def carried(self, key: str) -> bool:
        with self._lock:
            return key in self._carried

    def knows(self, key: str) -> bool:
        """Whether this process is waiting for ``key`` or following its worker."""
        with self._lock:
            return key in self._carried or key in self._slots


SIGNALS = LocalSignals()


class RetryTracker:
    def __init__(
        self,
        store: EndpointStore,
        clock: Callable[[], float] = time.time,
        signals: LocalSignals = SIGNALS,
    ) -> None:
        self._store = store
        self._clock = clock
        self._signals = signals

    @staticmethod
    def job_key(dedupe_key: str) -> str:
        return hashed(dedupe_key)

    def get(self, key: str, strict: bool = False, expect_missing: bool | None = None) -> Job | None:
        """The job, or None. ``strict``: a storage failure raises instead of reading as
        "no job" (see EndpointStore.load). Unless told (``expect_missing``), a strict read
        of a job this process knows nothing of is taken for a message's first delivery and
        asks whether the record exists first (one call for a new message instead of two)."""
        if expect_missing is None:
            expect_missing = not self._signals.knows(key)
        record = self._store.load(
            _KIND, key, strict=strict, expect_missing=strict and expect_missing
        )
        return Job.from_record(record) if record else None

    @property
    def signals(self) -> LocalSignals:
        return self._signals

    def claim(self, key: str, user: str, lease_until: float) -> tuple[Job, bool]:
        """Write a RUNNING job and read it back: storage has no compare-and-set, so two
        deliveries racing on one message both write, and the read-back decides who won."""
        job = Job(
            key=key,
            state=JobState.RUNNING,
            owner=secrets.token_hex(8),
            created_at=self._clock(),
            lease_until=lease_until,
            user=user,
        )
        self._store.save(_KIND, key, job.to_record())
        record = self._store.load(_KIND, key, strict=True)  # just written: get first
        stored = Job.from_record(record) if record else None
        if stored is None:
            raise RuntimeError("a job record just written cannot be read back")
        return stored, stored.owner == job.owner

    def settle(self, job: Job, state: JobState, parts: list[str], reason: str = "") -> Job:
        """Hand the outcome of a job this caller owns over, then store it."""
        settled = self.hand_over(job, state, parts, reason)
        self.store(settled)
        return settled

    def hand_over(self, job: Job, state: JobState, parts: list[str], reason: str = "") -> Job:
        """Give the outcome to deliveries waiting in this process (no storage yet)."""
        settled = replace(job, state=state, parts=parts, reason=reason)
        self._signals.fire(settled)
        return settled

    def store(self, job: Job) -> None:
        """Store an outcome for other processes and later deliveries."""
        self._store.save(_KIND, job.key, job.to_record())

    def watch(self, key: str) -> None:
        """Register interest in ``key`` before starting its work (see LocalSignals)."""
        self._signals.watch(key)

    def release(self, key: str) -> None:
        self._signals.release(key)

    def record_instant(
        self, key: str, user: str, parts: list[str], created_at: float | None = None
    ) -> Job:
        """An outcome known at once (command, welcome…): stored so retries repeat it."""
        now = self._clock()
        job = Job(
            key=key,
            state=JobState.DONE,
            owner="instant",
            created_at=now if created_at is None else created_at,
            lease_until=now,
            user=user,
            parts=parts,
        )
        self._store.save(_KIND, key, job.to_record())
        return job

    def mark_waiting(
        self, key: str, user: str, awaits: str, first_arrival: float, until: float
    ) -> Job:
        """A fetch message whose answer is another job's, not ready yet: its later
        deliveries find this record and keep waiting (see Coordinator)."""
        job = Job(
            key=key,
            state=JobState.RUNNING,
            owner="await",
            created_at=first_arrival,
            lease_until=until,
            user=user,
            awaits=awaits,
        )
        self._store.save(_KIND, key, job.to_record())
        return job

    def remove(self, key: str) -> None:
        self._store.remove(_KIND, key)

    def wait_settled(
        self,
        job: Job,
        until: float,
        poll_interval: float,
        carried_recheck: float = CARRIED_RECHECK,
    ) -> Job:
        """Wait for ``job`` to settle, until the absolute time ``until`` (clock seconds).

        Work running in this process hands its outcome over at once. So does work followed
        by a connection of this process (a *carried* key, see LocalSignals): while it is,
        storage is read only every ``CARRIED_POLLS`` × ``carried_recheck`` seconds (the
        connection could stall behind a buffering proxy with the outcome already stored),
        and once more before giving up at ``until``; in between it is checked, in memory,
        every ``carried_recheck`` seconds that the connection is still there. Other work is
        seen by polling storage every ``poll_interval`` seconds.

        Stops early once the job is lost — but only as storage says so: a copy read before
        its lease ran out is read again first (the worker may have renewed the lease or
        taken the claim over meanwhile; under load a copy goes stale quickly).
        """
        slot = self._signals.watch(job.key)
        current = job
        read_at = float("-inf")  # when ``current`` was read from storage (the caller's: unknown)
        try:
            while True:
                if slot.job is not None:  # handed over, possibly while we were busy
                    current = slot.job
                now = self._clock()
                if current.is_settled():
                    return current
                if now >= until:
                    if self._signals.carried(job.key) and now - read_at > poll_interval:
                        # The last look before a retry or a hand-off: the outcome may be
                        # stored while the connection carrying it stalled.
                        fresh = self.get(job.key)
                        current = fresh if fresh is not None else current
                    return current
                if current.is_lost(now):
                    if read_at > current.lease_until:
                        return current  # read after the lease ran out: lost indeed
                    try:
                        fresh = self.get(job.key, strict=True)
                    except Exception:  # cannot confirm: wait on rather than give up
                        slot.event.wait(timeout=max(0.0, min(poll_interval, until - now)))
                        continue
                    read_at = now
                    if fresh is None:  # swept: long gone
                        return current
                    current = fresh
                    continue
                carried = self._signals.carried(job.key)
                interval = carried_recheck if carried else poll_interval
                # Wake when the lease runs out too, to confirm it before the deadline.
                wake = min(interval, until - now, current.lease_until - now + 0.001)
                slot.event.wait(timeout=max(0.0, wake))
                if slot.job is not None:
                    continue
                if (
                    carried
                    and self._signals.carried(job.key)
                    and self._clock() - read_at < CARRIED_POLLS * carried_recheck
                ):
                    continue  # still on its way over this process's connection
                read_at = self._clock()
                fresh = self.get(job.key)
                if fresh is not None:
                    current = fresh
        finally:
            self._signals.release(job.key)
