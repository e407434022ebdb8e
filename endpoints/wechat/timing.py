"""Deadlines of WeChat's delivery protocol, as named constants tests can shorten.

WeChat waits 5 s for a reply and delivers a message up to 3 times, ~5 s apart
(reference/wechat-protocol.md §6). Every constant scales with the environment
variable ``WECHAT_PLUGIN_TIME_SCALE`` (default 1.0) so integration tests can run
the real protocol at a fraction of the wall-clock time.
"""

from __future__ import annotations

import os


def _scale() -> float:
    try:
        value = float(os.environ.get("WECHAT_PLUGIN_TIME_SCALE", "1") or 1)
    except ValueError:
        return 1.0
    return value if 0.01 <= value <= 10 else 1.0


TIME_SCALE = _scale()

#: WeChat hangs up on a delivery after this long.
WECHAT_TIMEOUT = 5.0 * TIME_SCALE
#: A delivery waits for the answer until this long after it arrived, leaving room for
#: formatting, encryption and the network before WeChat's own deadline.
DELIVERY_DEADLINE = 4.4 * TIME_SCALE
#: Work started inside a delivery may still store its result until this point; later the
#: request (and its Dify session) may already be gone, so nothing touches the session.
#: WeChat's 5 s started before our clock did (network, Dify's proxy and daemon), hence the
#: margin.
STORE_GUARD = 4.7 * TIME_SCALE
#: A delivery that lets WeChat retry keeps its connection open until WeChat has given up,
#: because only "no response within 5 s" is a documented retry trigger.
HOLD_UNTIL = 5.5 * TIME_SCALE
#: How often a delivery polls storage for an answer produced in another process.
POLL_INTERVAL = max(0.05, 0.2 * TIME_SCALE)
#: A delivery whose answer comes over a connection of its own process (the worker it
#: follows) does not poll storage; it checks this often, in memory, that the connection
#: is still there, and polls once it is gone.
CARRIED_RECHECK = max(0.1, 1.0 * TIME_SCALE)

# --- background work (the worker request) ---------------------------------------------

#: WeChat starts its next delivery this long after the previous one started.
RETRY_GAP = 5.0 * TIME_SCALE
#: A delivery arriving this long after the first one is the last WeChat makes (the third,
#: at ~10 s). Read "重试三次" as four deliveries and the answer is merely handed off 5 s
#: earlier: a handed-off reply ends WeChat's retries either way.
LAST_DELIVERY_AFTER = 1.5 * RETRY_GAP
#: The last delivery stops waiting this much earlier: its hand-off writes a few records
#: before it replies, and WeChat's 5 s include the network. Under load it takes most of a
#: second: bench/load.py (200 users at once) saw the wake-up come 0.6 s late and the
#: writes take 0.25 s more, so with 0.3 s most hand-offs missed WeChat's deadline and their
#: answers were lost. An answer finishing in this last moment is pushed (or fetched)
#: instead of replied passively.
HANDOFF_RESERVE = 0.8 * TIME_SCALE
#: After this long from the first delivery no delivery can still reply with the answer:
#: the last one (≈2 gaps in) has passed its deadline, with a margin for a late arrival.
WINDOW_CLOSED_AFTER = 2 * RETRY_GAP + DELIVERY_DEADLINE + 2.0 * TIME_SCALE
#: How long the first delivery waits for the worker request to confirm it started before
#: carrying on without knowing (the work then simply shows up later, or is lost).
WORKER_START_TIMEOUT = 2.5 * TIME_SCALE
#: The claim made before the worker takes over lasts this long.
WORKER_START_GRACE = 8.0 * TIME_SCALE
#: The worker renews its lease this often and the lease lasts three renewals; a job whose
#: lease ran out is lost (its worker died with its process).
HEARTBEAT = 10.0 * TIME_SCALE
LEASE = 3 * HEARTBEAT
#: Clocks of different plugin processes (or machines) may differ a little: a worker
#: allows this much when it reasons about what a delivery elsewhere may have seen.
CLOCK_MARGIN = 1.0 * TIME_SCALE
#: How often the worker looks for a hand-off or a passive reply of the first part.
DELIVERY_POLL = max(0.1, 0.5 * TIME_SCALE)
#: A pushed remainder waits this long after the passive reply of the first part, so the
#: user sees the parts in order.
PUSH_ORDER_DELAY = 0.5 * TIME_SCALE
#: After a worker was unreachable, messages are answered inside the window without trying
#: it again for this long (per process).
WORKER_RETRY_AFTER = 60.0
#: The worker call's signature is accepted for this long (not scaled: clocks, not protocol).
WORKER_SIGNATURE_TTL = 60.0
