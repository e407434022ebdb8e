"""How the rest of an answer reaches the user after WeChat's reply window: push or fetch.

* **push** — customer-service messages (Official Account) or app messages (WeCom), sent
  by a :mod:`.senders` sender, at most ``settings.push_quota`` per user message (WeChat
  allows 5 within 48 h after a user's message); what does not fit stays fetchable and the
  last pushed part says how to get it.
* **fetch** — the parts wait in storage; the user sends the fetch keyword for each one.
* **auto** — push where the account can: the AppSecret is set and WeChat has not answered
  48001 (not allowed) lately; fetch otherwise.

A push that fails for the account (48001), the user (45015 outside the 48-hour window,
45047 quota used) or the network leaves the rest fetchable. Token expiry (40001/42001/
40014) is handled inside the client: one refresh, one retry.
Reference: ``wechat-protocol.md`` §7.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from . import timing
from .api import (
    CredentialError,
    IPNotTrusted,
    IPNotWhitelisted,
    TransportError,
    Unauthorized,
    WeChatError,
)
from .api.errors import error_label
from .diagnostics import Journal
from .outbox import Delivery, Outbox, Route
from .parts import read_part
from .senders import TextSender
from .settings import DeliveryMode, Settings
from .storage import EndpointStore
from .texts import MORE_HINT

logger = logging.getLogger(__name__)

#: A 48001 ("api unauthorized") keeps auto mode on fetch for this long.
PUSH_BLOCKED_SECONDS = 6 * 3600.0
#: A set-up error an admin fixes in minutes (an IP not whitelisted or trusted, a wrong
#: Secret or AgentId) keeps auto mode on fetch for this long: users are told to fetch
#: rather than promised a push that fails, and pushing resumes soon after the fix.
PUSH_SETUP_BLOCKED_SECONDS = 600.0
_SETUP_ERRORS = (IPNotWhitelisted, IPNotTrusted, CredentialError)
_STATE_KIND = "state"
_BLOCKED_IDENT = "push-blocked"
_CACHE_SECONDS = 30.0


class _BlockedCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, bool]] = {}

    def get(self, scope: str, now: float) -> bool | None:
        with self._lock:
            entry = self._entries.get(scope)
        if entry is None or now - entry[0] > _CACHE_SECONDS:
            return None
        return entry[1]

    def put(self, scope: str, now: float, blocked: bool) -> None:
        with self._lock:
            self._entries[scope] = (now, blocked)


_BLOCKED = _BlockedCache()


class Router:
    """Chooses push or fetch for an answer that continues after the window."""

    def __init__(
        self,
        settings: Settings,
        store: EndpointStore,
        scope: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._store = store
        self._scope = scope
        self._clock = clock

    def route(self) -> Route:
        mode = self._settings.delivery_mode
        if mode is DeliveryMode.FETCH or not self._settings.can_push:
            return Route.FETCH
        if mode is DeliveryMode.PUSH:
            return Route.PUSH
        return Route.FETCH if self.push_blocked() else Route.PUSH

    def push_blocked(self) -> bool:
        now = self._clock()
        cached = _BLOCKED.get(self._scope, now)
        if cached is not None:
            return cached
        record = self._store.load(_STATE_KIND, _BLOCKED_IDENT) or {}
        blocked = float(record.get("until", 0) or 0) > now
        _BLOCKED.put(self._scope, now, blocked)
        return blocked

    def block_push(self, seconds: float = PUSH_BLOCKED_SECONDS) -> None:
        now = self._clock()
        self._store.save(_STATE_KIND, _BLOCKED_IDENT, {"until": now + seconds})
        _BLOCKED.put(self._scope, now, True)


class Pusher:
    """Sends the rest of an answer as customer-service messages (the worker's job)."""

    def __init__(
        self,
        settings: Settings,
        outbox: Outbox,
        router: Router,
        sender: TextSender,
        sleep: Callable[[float], None] = time.sleep,
        journal: Journal | None = None,
    ) -> None:
        self._settings = settings
        self._outbox = outbox
        self._router = router
        self._sender = sender
        self._sleep = sleep
        self._journal = journal or Journal(None)

    def push(self, delivery: Delivery, parts: list[str], openid: str, ref: str) -> Delivery:
        start = delivery.sent
        if start >= len(parts):
            return self._outbox.close(delivery)
        if start > 0:  # the first part went out as a passive reply a moment ago
            self._sleep(timing.PUSH_ORDER_DELAY)
        end = min(len(parts), start + self._settings.push_quota)
        keyword = self._settings.fetch_keyword
        for index in range(start, end):
            stored = parts[index]
            part = read_part(stored)
            last_pushed = index == end - 1
            try:
                if not part.is_text:
                    self._sender.send_media(openid, part.kind, part.value)
                elif last_pushed and end < len(parts):
                    self._sender.send_text(openid, stored + MORE_HINT.format(keyword=keyword))
                else:
                    self._sender.send_text(openid, stored)
            except Unauthorized as exc:
                logger.warning(
                    "WeChat refused to push (%s): %s Late answers now wait for the fetch "
                    "keyword; set delivery_mode to fetch to stop trying.",
                    exc.errcode,
                    exc.hint,
                )
                self._journal.record_wechat(exc)
                self._router.block_push()
                return self._outbox.switch_to_fetch(delivery, announced=False)
            except _SETUP_ERRORS as exc:
                logger.warning(
                    "Pushing part %d of message %s failed (%s): %s Late answers wait for the "
                    "fetch keyword for the next %d minutes.",
                    index + 1,
                    ref,
                    error_label(exc),
                    exc.hint,
                    PUSH_SETUP_BLOCKED_SECONDS // 60,
                )
                self._journal.record_wechat(exc)
                self._router.block_push(PUSH_SETUP_BLOCKED_SECONDS)
                return self._outbox.switch_to_fetch(delivery, announced=False)
            except (TransportError, WeChatError) as exc:
                logger.warning(
                    "Pushing part %d of message %s failed (%s); the rest waits for the "
                    "fetch keyword. %s",
                    index + 1,
                    ref,
                    error_label(exc),
                    exc.hint,
                )
                self._journal.record_wechat(exc)
                return self._outbox.switch_to_fetch(delivery, announced=False)
            except Exception as exc:
                logger.exception("Pushing part %d of message %s failed", index + 1, ref)
                self._journal.record_error("delivery", type(exc).__name__, "")
                return self._outbox.switch_to_fetch(delivery, announced=False)
            self._journal.count("pushed")
            delivery = self._outbox.advance(delivery, index + 1, len(parts))
        logger.info("Pushed %d part(s) of message %s", end - start, ref)
        if end < len(parts):
            return self._outbox.switch_to_fetch(delivery, announced=True)
        return delivery

    def start_typing(self, openid: str) -> None:
        try:
            self._sender.start_typing(openid)
        except Exception as exc:  # a nicety: never worth more than a debug line
            logger.debug("Typing indicator not shown (%s)", error_label(exc))
