"""The worker request: runs one message's app call in a Dify session of its own, and sees
the answer through to the user (DESIGN §3-4).

The first delivery of a message claims its job and calls ``POST …/wechat/worker`` with a
signed :class:`~.worker_link.WorkTicket`. Here the ticket is checked (signature, age, the
job still waiting for exactly this claim), the job is taken over, and the answer is
streamed back as lines (see ``worker_link``) while:

1. the app runs; the job's lease is renewed every ``HEARTBEAT`` (deliveries treat a job
   whose lease ran out as lost) and a keep-alive line keeps the caller's connection open;
2. the outcome is handed to waiting deliveries (in-process signal, the ``done`` line for
   the caller's process, storage for the rest);
3. the worker stays until WeChat's deliveries are over: if the last one handed off, or the
   first part went out passively with more to come, the rest is pushed or left to fetch.

A refused ticket gets 403 (bad signature) or 409 (nothing to do) before any side effect.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial

from . import timing
from .answering import AnswerKit, finish_answer
from .concurrency import run_side_by_side, start_background
from .delivery import Pusher, Router
from .diagnostics import Journal
from .dify_app import AppAnswer, DifyApp
from .outbox import Delivery, Outbox, Route
from .retry_tracker import Job, JobState, RetryTracker
from .senders import TextSender, sender_for
from .settings import Settings
from .storage import EndpointStore
from .worker_link import WorkTicket, signature_valid, worker_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerRefusal:
    status: int
    reason: str


@dataclass
class WorkerContext:
    settings: Settings
    endpoint_id: str
    store: EndpointStore
    tracker: RetryTracker
    outbox: Outbox
    app: DifyApp
    router: Router
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    sender_factory: Callable[[], TextSender] | None = None
    kit: AnswerKit | None = None
    #: Failures and counts for the status page (None: not recorded).
    journal: Journal | None = None

    def answer_kit(self) -> AnswerKit:
        if self.kit is None:  # no Dify services (tests): text in, text out
            self.kit = AnswerKit(
                self.settings, self.store, self.endpoint_id, None, self.clock, journal=self.journal
            )
        return self.kit


def check_ticket(
    headers: dict[str, str], body: bytes, ctx: WorkerContext
) -> tuple[WorkTicket, Job] | WorkerRefusal:
    """Everything a worker call must pass before it may touch anything."""
    if not ctx.settings.can_verify:
        return WorkerRefusal(403, "no Token configured")
    key = worker_key(ctx.settings, ctx.endpoint_id)
    if not signature_valid(key, headers, body, ctx.clock(), timing.WORKER_SIGNATURE_TTL):
        return WorkerRefusal(403, "bad or stale worker signature")
    ticket = WorkTicket.from_bytes(body)
    if ticket is None:
        return WorkerRefusal(400, "malformed worker ticket")
    job = ctx.tracker.get(ticket.job, strict=True, expect_missing=False)  # claimed just now
    if job is None or job.owner != ticket.owner or job.state is not JobState.RUNNING:
        return WorkerRefusal(409, "the job is not waiting for this worker")
    if job.worker:
        return WorkerRefusal(409, "the job was already taken by a worker")
    if job.is_lost(ctx.clock()):
        # Too late: a delivery may already have told the user the answer timed out.
        return WorkerRefusal(409, "the job's claim expired before the worker started")
    return ticket, job


class Worker:
    def __init__(self, ctx: WorkerContext, ticket: WorkTicket, job: Job) -> None:
        self._ctx = ctx
        self._ticket = ticket
        self._job = job
        #: A lease of this job may have run out before its renewal was stored: a delivery
        #: may then have given the answer up for lost (see ``_see_through``).
        self._lapsed = False

    def _store_lease(self, job: Job, previous_lease: float) -> None:
        self._ctx.tracker.store(job)
        if self._ctx.clock() > previous_lease - timing.CLOCK_MARGIN:
            self._lapsed = True

    def run(self) -> Iterator[str]:
        """The response body: progress lines for the caller (see ``worker_link``)."""
        ctx, ticket = self._ctx, self._ticket
        job = replace(self._job, worker=True, lease_until=ctx.clock() + timing.LEASE)
        # The app call needs the user's conversation: look it up while the takeover is
        # written (one storage round trip less before the app starts; under load each
        # costs a turn of a crowded event loop). Should the lookup fail, the app call
        # makes it again.
        conversations = ctx.app.conversations
        run_side_by_side(
            [
                lambda: self._store_lease(job, self._job.lease_until),
                lambda: self._quietly(
                    lambda: conversations.prefetch(ticket.openid), "looking up the conversation"
                ),
            ]
        )
        yield "started\n"

        outcome: list[tuple[Job, AppAnswer | None]] = []
        done = threading.Event()

        def work() -> None:
            try:
                outcome.append(finish_answer(job, ticket.question, ctx.app, ctx.answer_kit()))
            finally:
                done.set()

        start_background(work)
        next_beat = ctx.clock() + timing.HEARTBEAT
        # The typing indicator follows a push hand-off, which the last delivery makes at
        # its deadline: look for it from then until WeChat's window has surely closed.
        typing_from = job.created_at + 2 * timing.RETRY_GAP + timing.DELIVERY_DEADLINE
        typing_until = job.created_at + timing.WINDOW_CLOSED_AFTER
        typing_done = False
        while not done.wait(timeout=min(timing.HEARTBEAT, 1.0 * timing.TIME_SCALE + 0.05)):
            now = ctx.clock()
            if now >= next_beat:
                previous, job = job.lease_until, replace(job, lease_until=now + timing.LEASE)
                self._quietly(partial(self._store_lease, job, previous), "renewing the lease")
                next_beat = now + timing.HEARTBEAT
                yield "\n"
            if not typing_done and typing_from <= now:
                typing_done = now > typing_until or self._typing_after_handoff()

        if not outcome:  # the work itself failed unexpectedly (logged there)
            yield "end\n"
            return
        settled, answer = outcome[0]
        ctx.tracker.signals.fire(settled)
        yield "done " + json.dumps(settled.to_record(), ensure_ascii=False) + "\n"
        writes = [lambda: ctx.tracker.store(settled)]
        if answer is not None:
            done_answer = answer
            writes.append(lambda: ctx.app.remember(ticket.openid, done_answer))
        self._quietly(lambda: run_side_by_side(writes), "storing the answer")
        self._quietly(lambda: self._see_through(settled), "delivering the answer")
        if ctx.journal is not None:  # this request has time: write what this process noted
            ctx.journal.flush()
        yield "end\n"

    def _quietly(self, task: Callable[[], None], what: str) -> None:
        try:
            task()
        except Exception:
            logger.warning(
                "Worker for message %s: %s failed", self._ticket.ref, what, exc_info=True
            )

    def _typing_after_handoff(self) -> bool:
        """Show the typing indicator once the last delivery handed off for a push; True
        once there is nothing more to look for."""
        try:
            delivery = self._ctx.outbox.get(self._ticket.job)
        except Exception:
            return False
        if delivery is None:
            return False
        if delivery.route is Route.PUSH and delivery.sent == 0:
            self._quietly(
                lambda: self._pusher(lambda pusher: pusher.start_typing(self._ticket.openid)),
                "showing the typing indicator",
            )
        return True

    def _see_through(self, settled: Job) -> None:
        """Wait until no delivery can reply any more, then send what is still owed.

        A delivery record says what is owed: the last delivery handed off, the first of
        several parts went out passively, or a delivery gave the answer up for lost. No
        record when the window closes: the answer went out passively (or WeChat stopped
        delivering). Records are usually missing, so each look is one ``exist``."""
        ctx = self._ctx
        closes_at = settled.created_at + timing.WINDOW_CLOSED_AFTER
        # A longer answer may need its rest pushed right after a passive first part. A
        # single part only matters once a record can exist: a hand-off comes at the last
        # delivery's deadline at the earliest, a give-up only after a lease ran out.
        interval = timing.DELIVERY_POLL if len(settled.parts) > 1 else None
        handoff_from = (
            settled.created_at
            + timing.LAST_DELIVERY_AFTER
            + timing.DELIVERY_DEADLINE
            - timing.HANDOFF_RESERVE
            - timing.CLOCK_MARGIN
        )
        delivery = None
        if interval is not None or self._lapsed or ctx.clock() >= handoff_from:
            delivery = ctx.outbox.get(settled.key, strict=True, expect_missing=True)
        while delivery is None:
            now = ctx.clock()
            if now >= closes_at:
                return  # answered passively (or WeChat stopped delivering)
            ctx.sleep(min(interval or closes_at - now, closes_at - now))
            delivery = ctx.outbox.get(settled.key, strict=True, expect_missing=True)
        self._continue(delivery, settled)

    def _continue(self, delivery: Delivery, settled: Job) -> None:
        ctx = self._ctx
        if ctx.outbox.given_up(delivery, len(settled.parts)):
            # Given up for lost while this worker was still at it (its lease ran out under
            # load): the user never got it, so it goes out after all (DESIGN §4.4).
            delivery = ctx.outbox.reopen(delivery, ctx.router.route())
            logger.info(
                "Message %s: answered after it was given up for lost; delivering it by %s",
                self._ticket.ref,
                delivery.route.value,
            )
        if delivery.closed or delivery.route is not Route.PUSH:
            return  # fetch: the parts wait in the job record for the keyword
        owed = delivery
        self._pusher(
            lambda pusher: pusher.push(owed, settled.parts, self._ticket.openid, self._ticket.ref)
        )

    def _pusher(self, use: Callable[[Pusher], object]) -> None:
        ctx = self._ctx
        sender = ctx.sender_factory() if ctx.sender_factory else None
        if sender is None:
            sender = sender_for(ctx.settings, ctx.store)
        try:
            use(Pusher(ctx.settings, ctx.outbox, ctx.router, sender, ctx.sleep, ctx.journal))
        finally:
            sender.close()
