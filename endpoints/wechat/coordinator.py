"""Decides, for each delivery of a message, what WeChat gets: a reply now, a silent
acknowledgement, or nothing yet (let WeChat deliver again).

Handlers only say "answer this" or "ask the app"; this is the one place that knows about
deliveries, deadlines and the job record (DESIGN §4). The first delivery claims the
message and starts the app in the background of its own request; every delivery waits
for the outcome until its deadline and replies the moment it is stored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol

from . import log_messages as msgs
from . import timing
from .answering import AnswerKit, Question, finish_answer, paginate
from .concurrency import run_side_by_side, start_background
from .delivery import Router
from .diagnostics import WORKER_ERROR, Journal
from .dify_app import AppCancelled, DifyApp
from .factory import handler_for
from .formatters import TEXT_BUDGET_BYTES, utf8_len
from .handlers.base import AskApp, FetchNext, HandlerContext, Reply
from .models import InboundMessage
from .outbox import Outbox, Route
from .parts import Part, is_text, read_part
from .retry_tracker import Job, JobState, RetryTracker
from .settings import Settings
from .storage import hashed
from .texts import ANSWER_EXPIRED, MORE_HINT, PUSH_MORE_HINT, UNREAD_HINT
from .worker_link import WorkerCall, WorkTicket

logger = logging.getLogger(__name__)


class Action(StrEnum):
    REPLY = "reply"  # passive text reply
    ACK = "ack"  # "success": received, nothing to say, do not retry
    RETRY = "retry"  # no answer yet: stay silent so WeChat delivers again


@dataclass(frozen=True)
class Decision:
    action: Action
    text: str = ""
    media: Part | None = None  # an image or voice reply instead of text


def part_decision(stored: str, suffix: str = "") -> Decision:
    """The reply for one stored part; ``suffix`` (a hint) only fits after text."""
    part = read_part(stored)
    if part.is_text:
        return Decision(Action.REPLY, part.text + suffix)
    return Decision(Action.REPLY, media=part)


ACK = Decision(Action.ACK)
RETRY = Decision(Action.RETRY)


class WorkerStarter(Protocol):
    """Starts worker requests (worker_link.WorkerLauncher, bound to this request)."""

    def available(self) -> bool: ...

    def start(self, ticket: WorkTicket) -> WorkerCall: ...

    def reached(self) -> None: ...

    def failed(self, reason: str) -> None: ...


class Coordinator:
    def __init__(
        self,
        ctx: HandlerContext,
        tracker: RetryTracker,
        app: DifyApp,
        clock: Callable[[], float] = time.time,
        spawn: Callable[[Callable[[], None]], None] = start_background,
        worker: WorkerStarter | None = None,
        router: Router | None = None,
        kit: AnswerKit | None = None,
        page_base: str = "",
        journal: Journal | None = None,
    ) -> None:
        self._ctx = ctx
        self._journal = journal or Journal(None)
        self._tracker = tracker
        self._app = app
        self._kit = kit
        self._page_base = page_base
        self._clock = clock
        self._spawn = spawn
        self._worker = worker
        self._router = router

    @property
    def _outbox(self) -> Outbox:
        return self._ctx.outbox

    @property
    def _settings(self) -> Settings:
        return self._ctx.settings

    def process(self, message: InboundMessage, arrived_at: float) -> Decision:
        key = RetryTracker.job_key(message.dedupe_key)
        existing = self._tracker.get(key, strict=True)
        if existing is not None:
            if existing.awaits:
                return self._fetch(message, arrived_at, existing)
            return self._follow(existing, message, arrived_at)

        outcome = handler_for(message, self._ctx).handle(message, self._ctx)
        user = hashed(message.from_user)
        if isinstance(outcome, Reply):
            if outcome.text is None:
                return ACK
            if outcome.paginated:  # already one WeChat-sized part
                parts = [outcome.text]
            else:
                parts = paginate(outcome.text, self._settings.fetch_keyword)
            job = self._tracker.record_instant(key, user, parts)
            self._bookkeep(lambda: self._outbox.track_job(key))
            return self._reply_from(job, message)
        if isinstance(outcome, FetchNext):
            return self._fetch(message, arrived_at, None)
        assert isinstance(outcome, AskApp)
        question = Question(
            openid=message.from_user,
            query=outcome.query,
            metadata={**message.app_inputs(), **outcome.metadata},
            media=outcome.media,
            spoken=outcome.spoken,
            page_base=self._page_base,
            ref=_short(message),
        )
        claimed: Job | None = None
        if self._worker is not None and self._worker.available():
            started = self._ask_in_worker(key, user, message, question, arrived_at)
            if isinstance(started, Decision):
                return started
            claimed = started
        return self._ask_inline(key, user, message, question, arrived_at, claimed)

    # --- asking the app ------------------------------------------------------------------

    def _ask_in_worker(
        self, key: str, user: str, message: InboundMessage, question: Question, arrived_at: float
    ) -> Decision | Job:
        """Run the app in a worker request. When the worker cannot be reached, the claimed
        job is returned for the inline fallback."""
        assert self._worker is not None
        job, mine = self._tracker.claim(
            key, user, lease_until=arrived_at + timing.WORKER_START_GRACE
        )
        if not mine:
            return self._follow(job, message, arrived_at)
        ticket = WorkTicket.for_question(
            key, job.owner, question, arrived_at, self._settings.platform.value
        )
        deadline = arrived_at + timing.DELIVERY_DEADLINE
        self._tracker.watch(key)  # before the worker starts: its hand-over cannot be missed
        try:
            call = self._worker.start(ticket)
            call.wait(min(timing.WORKER_START_TIMEOUT, deadline - self._clock()))
            if call.conflict:  # another claim's worker owns the message: follow it
                return self._follow(job, message, arrived_at)
            if call.failure is not None and not call.started:
                worker, reason = self._worker, call.failure
                self._bookkeep(lambda: worker.failed(reason))
                self._journal.record_error("worker", WORKER_ERROR, reason)
                inline = replace(job, lease_until=arrived_at + timing.STORE_GUARD)
                self._tracker.store(inline)
                return inline
            if call.started:
                self._bookkeep(self._worker.reached)
            self._bookkeep(lambda: self._outbox.track_job(key))
            # While the app works: is an earlier answer waiting that the user was never
            # told about (its push failed)? The reply can say so.
            self._bookkeep(lambda: self._outbox.pending(message.from_user))
            return self._follow(job, message, arrived_at)
        finally:
            self._tracker.release(key)

    def _ask_inline(
        self,
        key: str,
        user: str,
        message: InboundMessage,
        question: Question,
        arrived_at: float,
        claimed: Job | None,
    ) -> Decision:
        """The app inside this delivery (no worker): what is not ready before the deadline
        is lost, and the next delivery says so."""
        job = claimed
        if job is None:
            job, mine = self._tracker.claim(key, user, lease_until=arrived_at + timing.STORE_GUARD)
            if not mine:
                return self._follow(job, message, arrived_at)
        else:
            job = replace(job, lease_until=arrived_at + timing.STORE_GUARD)
        started, finished = threading.Event(), threading.Event()
        deadline = arrived_at + timing.DELIVERY_DEADLINE
        self._tracker.watch(key)
        try:
            self._spawn(
                lambda: self._run_app(job, message, question, arrived_at, started, finished)
            )
            started.wait(timeout=max(0.0, deadline - self._clock()))
            self._bookkeep(lambda: self._outbox.track_job(key))
            return self._follow(job, message, arrived_at, runs_here=True)
        finally:
            self._tracker.release(key)
            # The work may still be writing the outcome and the conversation with this
            # request's session: the request must not end before it has (bounded).
            finished.wait(timeout=max(0.0, arrived_at + timing.STORE_GUARD - self._clock()))

    def _answer_kit(self) -> AnswerKit:
        if self._kit is None:  # tests without Dify services: text in, text out
            self._kit = AnswerKit(self._settings, self._outbox.store, "", None, self._clock)
        return self._kit

    @staticmethod
    def _bookkeep(task: Callable[[], object]) -> None:
        """Storage housekeeping never decides a reply: log its failure and go on."""
        try:
            task()
        except Exception:
            logger.warning(msgs.BOOKKEEPING_FAILED, exc_info=True)

    # --- waiting for an answer -------------------------------------------------------------

    def _wait(self, job: Job, until: float, runs_here: bool = False) -> Job:
        # Work in this request, or a worker followed from this process, hands its outcome
        # over in-process (no storage polls, see RetryTracker.wait_settled); storage is
        # polled only for work elsewhere.
        poll = timing.POLL_INTERVAL
        if runs_here:
            poll = max(poll, until - self._clock())
        settled = self._tracker.wait_settled(
            job, until=until, poll_interval=poll, carried_recheck=timing.CARRIED_RECHECK
        )
        if settled.is_lost(self._clock()):
            # Given up for lost (storage says so). Under load a worker can outlive its
            # lease; should it answer after all, the closed record makes it deliver the
            # answer instead of dropping it (DESIGN §4.4, Worker._continue).
            self._bookkeep(lambda: self._outbox.give_up(settled, self._route()))
        return settled

    def _follow(
        self, job: Job, message: InboundMessage, arrived_at: float, runs_here: bool = False
    ) -> Decision:
        deadline = arrived_at + timing.DELIVERY_DEADLINE
        if job.worker and self._is_last(job, arrived_at):
            deadline -= timing.HANDOFF_RESERVE  # the hand-off writes before it replies
        settled = self._wait(job, deadline, runs_here)
        if settled.is_settled():
            if settled.worker and self._is_last(settled, arrived_at):
                handed = self._outbox.get(settled.key, strict=True)
                if handed is not None and handed.sent == 0:
                    # An earlier delivery handed off: the answer goes that way, only once.
                    return Decision(Action.REPLY, self._waiting_text(handed.route))
            if settled.owner != "instant" and settled.state is JobState.DONE and settled.parts:
                self._journal.count("passive")  # an app's answer, replied passively
            return self._reply_from(settled, message)
        if settled.is_lost(self._clock()):
            # The work that owned this message ended without an answer; it will not come.
            logger.warning(msgs.ANSWER_LOST, _short(message))
            return Decision(Action.REPLY, self._settings.timeout_message)
        if settled.worker and self._is_last(settled, arrived_at):
            return self._hand_off(settled, message)
        return RETRY

    @staticmethod
    def _is_last(job: Job, arrived_at: float) -> bool:
        """Whether this delivery is WeChat's last for the message ``job`` answers."""
        return arrived_at - job.created_at >= timing.LAST_DELIVERY_AFTER

    def _hand_off(self, job: Job, message: InboundMessage) -> Decision:
        """The last delivery and no answer yet: say it is coming, and how. From the moment
        the delivery record exists the worker owns the answer's delivery, so this reply
        never carries the answer, even if it was stored a moment ago."""
        route = self._route()
        try:
            delivery = self._outbox.open(message.from_user, job.key, route, sent=0)
        except Exception:
            # Whether the record made it or not, the user is told to wait; the log says why
            # the answer may not follow.
            logger.warning(msgs.BOOKKEEPING_FAILED, exc_info=True)
            return Decision(Action.REPLY, self._waiting_text(route))
        logger.info(msgs.HANDED_OFF, _short(message), delivery.route.value)
        self._journal.count("handed_off")
        return Decision(Action.REPLY, self._waiting_text(delivery.route))

    def _waiting_text(self, route: Route) -> str:
        keyword = self._settings.fetch_keyword
        if route is Route.PUSH:
            return self._settings.push_waiting_message.replace("{keyword}", keyword)
        return self._settings.fetch_waiting_message.replace("{keyword}", keyword)

    def _route(self) -> Route:
        return self._router.route() if self._router is not None else Route.FETCH

    def _reply_from(self, job: Job, message: InboundMessage) -> Decision:
        if not job.parts:
            return ACK
        hint = ""
        if len(job.parts) > 1:
            # Only a worker can push the rest; anything else is fetched.
            route = self._route() if job.worker else Route.FETCH
            try:
                delivery = self._outbox.open(message.from_user, job.key, route, sent=1)
            except Exception:  # the first part still goes out; the rest cannot follow
                logger.warning(msgs.BOOKKEEPING_FAILED, exc_info=True)
            else:
                media_only = not any(is_text(p) for p in job.parts[1:])
                if not (media_only and delivery.route is Route.PUSH):  # a picture needs no
                    hint = self._more_hint(delivery.route)  # "more is coming" warning
        decision = part_decision(job.parts[0], hint)
        if job.worker and decision.media is None:
            decision = replace(
                decision, text=self._announce_unread(decision.text, message, job.key)
            )
        return decision

    def _announce_unread(self, text: str, message: InboundMessage, current: str) -> str:
        """Tell the user about an earlier answer that waits for the keyword because its
        push failed (the only chance to: pushing is what failed)."""
        unread = [
            d
            for d in self._outbox.cached_pending(message.from_user)
            if d.unannounced and d.job != current
        ]
        notice = UNREAD_HINT.format(keyword=self._settings.fetch_keyword)
        if not unread or utf8_len(text + notice) > TEXT_BUDGET_BYTES:
            return text
        try:
            for delivery in unread:
                fresh = self._outbox.get(delivery.job, strict=True)  # the keyword may have
                if fresh is not None:  # moved it on meanwhile
                    self._outbox.save(replace(fresh, unannounced=False))
        except Exception:
            logger.warning(msgs.BOOKKEEPING_FAILED, exc_info=True)
            return text
        return text + notice

    def _more_hint(self, route: Route) -> str:
        if route is Route.PUSH:
            return PUSH_MORE_HINT
        return MORE_HINT.format(keyword=self._settings.fetch_keyword)

    # --- the fetch keyword ---------------------------------------------------------------

    def _fetch(self, message: InboundMessage, arrived_at: float, marker: Job | None) -> Decision:
        """Reply with the next waiting part, oldest answer first. If that answer is still
        being produced, this message's own deliveries wait for it."""
        key = RetryTracker.job_key(message.dedupe_key)
        user = hashed(message.from_user)
        first_arrival = marker.created_at if marker is not None else arrived_at

        def reply(text: str) -> Decision:
            self._tracker.record_instant(key, user, [text], created_at=first_arrival)
            if marker is None:
                self._bookkeep(lambda: self._outbox.track_job(key))
            return part_decision(text)

        pending = self._outbox.pending(message.from_user)
        fetchable = [d for d in pending if d.route is Route.FETCH]
        if not fetchable:
            if pending:  # on its way by push
                return reply(self._waiting_text(Route.PUSH))
            return ACK
        head = fetchable[0]
        target = self._tracker.get(head.job, strict=True)
        if target is not None and not target.is_settled() and not target.is_lost(self._clock()):
            target = self._wait(target, arrived_at + timing.DELIVERY_DEADLINE)
        if target is None or target.is_lost(self._clock()):
            self._outbox.close(head)
            self._journal.count("expired")
            return reply(ANSWER_EXPIRED)
        if not target.is_settled():
            if arrived_at - first_arrival >= timing.LAST_DELIVERY_AFTER:  # the last one
                return reply(self._waiting_text(Route.FETCH))
            if marker is None:
                until = arrived_at + timing.WINDOW_CLOSED_AFTER
                self._tracker.mark_waiting(key, user, head.job, arrived_at, until)
                self._bookkeep(lambda: self._outbox.track_job(key))
            return RETRY
        if head.sent >= len(target.parts):
            self._outbox.close(head)
            self._journal.count("expired")
            return reply(ANSWER_EXPIRED)
        text = target.parts[head.sent]
        moved = self._outbox.advance(head, head.sent + 1, len(target.parts))
        if (not moved.closed or len(fetchable) > 1) and read_part(text).is_text:
            # As text first: the hint (and the keyword in it) must not be read as markdown.
            text = read_part(text).text + MORE_HINT.format(keyword=self._settings.fetch_keyword)
        self._journal.count("fetched")
        return reply(text)

    # --- inline work -----------------------------------------------------------------------

    def _run_app(
        self,
        job: Job,
        message: InboundMessage,
        question: Question,
        arrived_at: float,
        started: threading.Event,
        finished: threading.Event,
    ) -> None:
        guard = arrived_at + timing.STORE_GUARD

        def too_late() -> bool:
            return self._clock() >= guard

        try:
            try:
                settled, answer = finish_answer(
                    job, question, self._app, self._answer_kit(), too_late, started.set
                )
            except AppCancelled:
                logger.info(msgs.APP_TOO_SLOW, _short(message))
                return
            if too_late():
                logger.info(msgs.APP_TOO_SLOW, _short(message))
                return
            self._tracker.signals.fire(settled)
            # Both writes must be done before the request ends; run them side by side.
            writes = [lambda: self._tracker.store(settled)]
            if answer is not None:
                done = answer
                writes.append(lambda: self._app.remember(message.from_user, done))
            run_side_by_side(writes)
        except Exception:
            logger.exception(msgs.HANDLER_FAILED, _short(message))
        finally:
            started.set()
            finished.set()


def _short(message: InboundMessage) -> str:
    """A log-safe reference to a message: its hashed dedupe key."""
    return hashed(message.dedupe_key)[:12]
