"""Process-level tuning of what the Dify SDK does on our behalf.

In serverless mode every backwards invocation (each storage get/set/exist, each app call)
is an HTTP request of its own: ``BackwardsInvocation._http_backwards_invoke`` in
``dify_plugin/core/runtime.py`` (0.10.x) does ``with httpx.Client() as client,
client.stream(...)``. A message costs a dozen of them, and under gevent their CPU time
stalls every other request of the process, so their cost is the plugin's throughput.
Instructions per storage call, counted with callgrind against the tests' daemon emulator:

* :func:`share_default_tls_context` — every client built a TLS context and loaded the CA
  bundle, about 30 ms of CPU (with four users at once each storage call took ~120 ms
  instead of ~30 ms, bench/latency.py); now one context per configuration is shared (a
  TLS context is safe to share between connections).
* :func:`reuse_backwards_clients` — every client also scanned the environment for
  proxies and built a transport, a pool and a cookie jar; now idle clients are reused,
  one call at a time each, and keep no cookies: 3.34 M → 2.99 M instructions per call.
* :func:`resolve_ip_literals_inline` — gevent resolved even ``127.0.0.1`` in its thread
  pool: a thread hand-off and a turn of the event loop per connection (→ 2.91 M).
* :func:`cache_backwards_type_adapter` — every line of an answer was parsed through a new
  ``TypeAdapter(dict[str, Any])``, a pydantic schema built each time (→ 2.66 M; with the
  cookie-free clients → 2.42 M, 28 % less than before these three).

:func:`tune_sdk` applies them all (``main.py``). Each is narrow, idempotent and guarded:
it checks the SDK version and the shape of what it patches, and leaves anything
unexpected alone (returning False) rather than fail to start.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Hashable
from importlib import metadata
from types import ModuleType, TracebackType
from typing import Any

import httpx
import pydantic

#: SDK versions whose ``_http_backwards_invoke`` was read for the patches below.
SHARED_CLIENT_SDK_VERSIONS = ("0.10.",)
#: Idle clients kept for reuse (a few KiB each, no sockets: keep-alive is off).
MAX_IDLE_CLIENTS = 256


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


class _NoCookies(httpx.Cookies):
    """A reused client serves every session in turn and must not carry state from one to
    the next, so it keeps no cookies (a fresh client per call kept none beyond its call;
    the daemon sets none). Not even looking at responses for them saves a tenth of a
    storage call's CPU."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


_NO_COOKIES = _NoCookies()


class _Client(httpx.Client):
    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        return None


def _new_client() -> httpx.Client:
    # httpx's defaults, as the SDK's own client, except keep-alive: a fresh client per
    # call never reused a connection, so neither does this one (the wire stays the same).
    return _Client(limits=httpx.Limits(max_keepalive_connections=0))


class _ClientShelf:
    """Idle clients for the SDK's backwards invocations, one call at a time each.

    Not one client for all: httpx's connection pool walks all its connections on every
    request and every response, and a busy process has hundreds open at once (app streams
    last seconds) — that walk cost more CPU than building a client (bench/load.py, 200
    users). A client lent to one call at a time keeps its pool at one connection."""

    def __init__(self, factory: Callable[[], httpx.Client] = _new_client) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._idle: list[httpx.Client] = []

    def lend(self) -> _Lent:
        with self._lock:
            client = self._idle.pop() if self._idle else None
        if client is None or client.is_closed:
            client = self._factory()
        return _Lent(client, self)

    def take_back(self, client: httpx.Client) -> None:
        if client.is_closed:
            return
        with self._lock:
            if len(self._idle) < MAX_IDLE_CLIENTS:
                self._idle.append(client)
                return
        client.close()

    @property
    def idle(self) -> int:
        with self._lock:
            return len(self._idle)


class _Lent:
    """What ``httpx.Client()`` returns to the SDK: a client from the shelf, for one
    ``with`` block; leaving the block puts it back instead of closing it."""

    def __init__(self, client: httpx.Client, shelf: _ClientShelf) -> None:
        self._client = client
        self._shelf: _ClientShelf | None = shelf

    def __enter__(self) -> httpx.Client:
        return self._client

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        shelf, self._shelf = self._shelf, None
        if shelf is not None:  # once: a second close must not lend it twice
            shelf.take_back(self._client)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class _HttpxWithClientShelf(ModuleType):
    """Stands in for ``httpx`` inside the SDK's runtime module only: ``Client()`` without
    arguments lends a client from the shelf; everything else is httpx itself."""

    def __init__(self, module: ModuleType) -> None:
        super().__init__(module.__name__)
        self._module = module
        self.shelf = _ClientShelf()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def Client(self, *args: Any, **kwargs: Any) -> Any:  # httpx.Client, as the SDK calls it
        if args or kwargs:  # a configured client is not ours to lend
            return self._module.Client(*args, **kwargs)
        return self.shelf.lend()


def reuse_backwards_clients() -> bool:
    """Make the SDK's backwards invocations (serverless mode) reuse idle httpx clients
    instead of building one per call; True when in effect."""
    try:
        import dify_plugin.core.runtime as runtime

        version = metadata.version("dify_plugin")
    except (ImportError, metadata.PackageNotFoundError):  # pragma: no cover - dependency
        return False
    current = getattr(runtime, "httpx", None)
    if isinstance(current, _HttpxWithClientShelf):
        return True
    if not version.startswith(SHARED_CLIENT_SDK_VERSIONS) or current is not httpx:
        return False
    invoke = getattr(getattr(runtime, "BackwardsInvocation", None), "_http_backwards_invoke", None)
    names = getattr(getattr(invoke, "__code__", None), "co_names", ())
    if "httpx" not in names or "Client" not in names:  # not the code this was written for
        return False
    setattr(runtime, "httpx", _HttpxWithClientShelf(httpx))  # noqa: B010 - mypy: a module
    return True


class _CachedTypeAdapters:
    """Stands in for ``pydantic.TypeAdapter`` inside the SDK's runtime module only: one
    adapter per type (an adapter is immutable and safe to share once built)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._adapters: dict[Hashable, pydantic.TypeAdapter[Any]] = {}

    def __call__(self, type_: Any, *args: Any, **kwargs: Any) -> pydantic.TypeAdapter[Any]:
        if args or kwargs or not isinstance(type_, Hashable):
            return pydantic.TypeAdapter(type_, *args, **kwargs)
        with self._lock:
            adapter = self._adapters.get(type_)
        if adapter is None:
            adapter = pydantic.TypeAdapter(type_)
            with self._lock:
                adapter = self._adapters.setdefault(type_, adapter)
        return adapter


def cache_backwards_type_adapter() -> bool:
    """Make the SDK's runtime module reuse one pydantic ``TypeAdapter`` per type instead of
    building one per line of every backwards invocation's answer; True when in effect."""
    try:
        import dify_plugin.core.runtime as runtime

        version = metadata.version("dify_plugin")
    except (ImportError, metadata.PackageNotFoundError):  # pragma: no cover - dependency
        return False
    current = getattr(runtime, "TypeAdapter", None)
    if isinstance(current, _CachedTypeAdapters):
        return True
    if not version.startswith(SHARED_CLIENT_SDK_VERSIONS) or current is not pydantic.TypeAdapter:
        return False
    setattr(runtime, "TypeAdapter", _CachedTypeAdapters())  # noqa: B010 - mypy: a class
    return True


def _ip_literal(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str) or not host:
        return False
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except (OSError, ValueError):
        return False
    return True


def resolve_ip_literals_inline() -> bool:
    """Let gevent answer ``getaddrinfo`` for an IP address itself instead of in its thread
    pool; True when in effect.

    Every backwards invocation opens a new connection, and gevent's default resolver sends
    every lookup to a worker thread — also for an address like ``127.0.0.1`` that needs no
    lookup at all. That costs a thread hand-off (and a turn of the event loop, which under
    load is the expensive part) per storage call. Host names still go to the thread pool.
    """
    try:
        import _socket

        import gevent
        from gevent.resolver.thread import Resolver as ThreadResolver
    except ImportError:  # pragma: no cover - gevent is a dependency of the SDK
        return False
    hub = gevent.get_hub()
    current = hub.resolver
    if isinstance(current, _InlineLiteralsResolver):
        return True
    if type(current) is not ThreadResolver:  # configured otherwise (GEVENT_RESOLVER)
        return False

    class _Resolver(ThreadResolver, _InlineLiteralsResolver):
        def getaddrinfo(self, *args: Any, **kwargs: Any) -> Any:
            if args and _ip_literal(args[0]):
                return _socket.getaddrinfo(*args, **kwargs)  # no lookup: nothing blocks
            return super().getaddrinfo(*args, **kwargs)

    hub.resolver = _Resolver(hub=hub)
    return True


class _InlineLiteralsResolver:
    """Marks the resolver installed by :func:`resolve_ip_literals_inline`."""


def tune_sdk() -> dict[str, bool]:
    """Apply every tuning above; which ones took effect (for a start-up log line). A
    tuning that fails in an unforeseen way (e.g. gevent configured with a resolver whose
    module is missing) is skipped: the plugin must start untuned rather than not at all."""
    tunings: dict[str, Callable[[], bool]] = {
        "shared TLS context": share_default_tls_context,
        "reused backwards clients": reuse_backwards_clients,
        "cached type adapters": cache_backwards_type_adapter,
        "inline IP literals": resolve_ip_literals_inline,
    }
    applied: dict[str, bool] = {}
    for name, tune in tunings.items():
        try:
            applied[name] = tune()
        except Exception:
            applied[name] = False
    return applied
