"""Process-level tuning of what the Dify SDK does on our behalf.

In serverless mode the SDK opens a fresh ``httpx.Client()`` for every backwards invocation
(each storage get/set, each app call). Every client builds a TLS context and loads the CA
bundle — about 30 ms of CPU here — and under gevent that CPU time stalls every other
request in the process: with four users at once, each storage call took ~120 ms instead of
~30 ms (bench/latency.py). Reusing one context per configuration removes that cost; a TLS
context is safe to share between connections.
"""

from __future__ import annotations

import ssl
import threading
from typing import Any


def share_default_tls_context() -> bool:
    """Make httpx reuse one TLS context per (verify, trust_env); True when in effect."""
    try:
        import httpx._transports.default as transport
    except ImportError:  # pragma: no cover - httpx is a dependency of the SDK
        return False
    original = getattr(transport, "create_ssl_context", None)
    if original is None:  # a future httpx: leave it alone rather than fail to start
        return False
    if getattr(original, "shared_contexts", None) is not None:
        return True
    contexts: dict[tuple[Any, bool], ssl.SSLContext] = {}
    lock = threading.Lock()

    def create_ssl_context(
        verify: Any = True, cert: Any = None, trust_env: bool = True
    ) -> ssl.SSLContext:
        if cert is not None or not isinstance(verify, bool | str):
            return original(verify=verify, cert=cert, trust_env=trust_env)
        key = (verify, trust_env)
        with lock:
            context = contexts.get(key)
        if context is None:
            context = original(verify=verify, cert=cert, trust_env=trust_env)
            with lock:
                context = contexts.setdefault(key, context)
        return context

    create_ssl_context.shared_contexts = contexts  # type: ignore[attr-defined]
    transport.create_ssl_context = create_ssl_context
    return True
