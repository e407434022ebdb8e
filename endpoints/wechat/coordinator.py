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
from dataclasses import dataclass
from enum import StrEnum

from . import log_messages as msgs
from . import timing
from .dify_app import AppAnswer, AppCancelled, AppError, DifyApp
from .factory import handler_for
from .formatters import TEXT_BUDGET_BYTES, markdown_to_wechat_text, split_text, utf8_len
from .handlers.base import HandlerContext, Reply
from .models import InboundMessage
from .outbox import Outbox
from .retry_tracker import Job, JobState, RetryTracker
from .storage import hashed
from .texts import EMPTY_ANSWER, MORE_HINT

logger = logging.getLogger(__name__)


class Action(StrEnum):
    REPLY = "reply"  # passive text reply
    ACK = "ack"  # "success": received, nothing to say, do not retry
    RETRY = "retry"  # no answer yet: stay silent so WeChat delivers again


@dataclass(frozen=True)
class Decision:
    action: Action
    text: str = ""


ACK = Decision(Action.ACK)
RETRY = Decision(Action.RETRY)


def paginate(text: str, keyword: str) -> list[str]:
    """Split a reply into WeChat-sized parts, each leaving room for the "more" hint."""
    reserve = utf8_len(MORE_HINT.format(keyword=keyword))
    return split_text(text, TEXT_BUDGET_BYTES - reserve) or [EMPTY_ANSWER]


def start_background(target: Callable[[], None]) -> None:
    # A greenlet once the SDK has monkey-patched threading; it only lives as long as the
    # request that started it may use the Dify session (see STORE_GUARD).
    threading.Thread(target=target, daemon=True).start()


def run_side_by_side(tasks: list[Callable[[], None]]) -> None:
    """Run independent storage writes concurrently and wait for all of them."""
    if len(tasks) == 1:
        tasks[0]()
        return
    errors: list[BaseException] = []

    def guarded(task: Callable[[], None]) -> None:
        try:
            task()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(task,), daemon=True) for task in tasks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


class Coordinator:
    def __init__(
        self,
        ctx: HandlerContext,
        tracker: RetryTracker,
        app: DifyApp,
        clock: Callable[[], float] = time.time,
        spawn: Callable[[Callable[[], None]], None] = start_background,
    ) -> None:
        self._ctx = ctx
        self._tracker = tracker
        self._app = app
        self._clock = clock
        self._spawn = spawn

    @property
    def _outbox(self) -> Outbox:
        return self._ctx.outbox

    def process(self, message: InboundMessage, arrived_at: float) -> Decision:
        key = RetryTracker.job_key(message.dedupe_key)
        existing = self._tracker.get(key, strict=True)
        if existing is not None:
            return self._follow(existing, message, arrived_at)

        outcome = handler_for(message, self._ctx).handle(message, self._ctx)
        user = hashed(message.from_user)
        if isinstance(outcome, Reply):
            if outcome.text is None:
                return ACK
            if outcome.paginated:  # already one WeChat-sized part (a fetched part)
                parts = [outcome.text]
            else:
                parts = paginate(outcome.text, self._ctx.settings.fetch_keyword)
            job = self._tracker.record_instant(key, user, parts)
            self._bookkeep(lambda: self._outbox.track_job(key))
            return self._reply_from(job, message)

        job, mine = self._tracker.claim(key, user, lease_until=arrived_at + timing.STORE_GUARD)
        if not mine:
            return self._follow(job, message, arrived_at)
        query = outcome.query
        started, finished = threading.Event(), threading.Event()
        deadline = arrived_at + timing.DELIVERY_DEADLINE
        # Watch before starting the work so its hand-over cannot be missed; bookkeeping
        # waits until the app call is out, so it never delays the app.
        self._tracker.watch(key)
        try:
            self._spawn(lambda: self._run_app(job, message, query, arrived_at, started, finished))
            started.wait(timeout=max(0.0, deadline - self._clock()))
            self._bookkeep(lambda: self._outbox.track_job(key))
            return self._follow(job, message, arrived_at, runs_here=True)
        finally:
            self._tracker.release(key)
            # The work may still be writing the outcome and the conversation with this
            # request's session: the request must not end before it has (bounded).
            finished.wait(timeout=max(0.0, arrived_at + timing.STORE_GUARD - self._clock()))

    @staticmethod
    def _bookkeep(task: Callable[[], None]) -> None:
        """Storage housekeeping never decides a reply: log its failure and go on."""
        try:
            task()
        except Exception:
            logger.warning(msgs.BOOKKEEPING_FAILED, exc_info=True)

    def _follow(
        self, job: Job, message: InboundMessage, arrived_at: float, runs_here: bool = False
    ) -> Decision:
        deadline = arrived_at + timing.DELIVERY_DEADLINE
        # Work running in this request hands its outcome over in-process (registered before
        # it started); storage is polled only for work running elsewhere.
        poll = deadline - arrived_at if runs_here else timing.POLL_INTERVAL
        settled = self._tracker.wait_settled(job, until=deadline, poll_interval=poll)
        if settled.is_settled():
            return self._reply_from(settled, message)
        if settled.is_lost(self._clock()):
            # The work that owned this message ended without an answer; it will not come.
            logger.warning(msgs.ANSWER_LOST, _short(message))
            return Decision(Action.REPLY, self._ctx.settings.timeout_message)
        return RETRY

    def _reply_from(self, job: Job, message: InboundMessage) -> Decision:
        if not job.parts:
            return ACK
        text = job.parts[0]
        if len(job.parts) > 1:
            text += MORE_HINT.format(keyword=self._ctx.settings.fetch_keyword)
            remainder = job.parts[1:]
            self._bookkeep(
                lambda: self._outbox.add_remainder(message.from_user, job.key, remainder)
            )
        return Decision(Action.REPLY, text)

    def _run_app(
        self,
        job: Job,
        message: InboundMessage,
        query: str,
        arrived_at: float,
        started: threading.Event,
        finished: threading.Event,
    ) -> None:
        guard = arrived_at + timing.STORE_GUARD

        def too_late() -> bool:
            return self._clock() >= guard

        try:
            state, reason = JobState.DONE, ""
            answer: AppAnswer | None = None
            try:
                answer = self._app.ask(
                    query, message.from_user, message.app_inputs(), too_late, started.set
                )
                text = markdown_to_wechat_text(answer.text) if answer.text.strip() else ""
                parts = paginate(text or EMPTY_ANSWER, self._ctx.settings.fetch_keyword)
            except AppCancelled:
                logger.info(msgs.APP_TOO_SLOW, _short(message))
                return
            except AppError as exc:
                logger.warning(msgs.APP_FAILED, _short(message), message.msg_type, exc.reason)
                state, reason = JobState.FAILED, exc.reason
                parts = [self._ctx.settings.error_message]
            except Exception as exc:
                logger.exception(msgs.HANDLER_FAILED, _short(message))
                state, reason = JobState.FAILED, type(exc).__name__
                parts = [self._ctx.settings.error_message]
            if too_late():
                logger.info(msgs.APP_TOO_SLOW, _short(message))
                return
            settled = self._tracker.hand_over(job, state, parts, reason)
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
