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
POLL_INTERVAL = max(0.05, 0.25 * TIME_SCALE)
