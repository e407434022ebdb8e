"""A Dify plugin daemon (+ Dify API) emulator that runs the plugin exactly as Dify does.

One loopback HTTP server plays two roles of ``langgenius/dify-plugin-daemon``:

* **Endpoint front** — ``<METHOD> /e/<hook_id>/<path>?<query>`` as WeChat calls it. Emulates
  ``internal/service/endpoint.go`` (``copyRequest`` + ``Endpoint``) and Dify's nginx: the raw
  HTTP request is rebuilt (path after the hook id, query re-encoded with sorted keys, body
  capped at 10 MiB, ``X-Forwarded-For`` & co. removed, ``Dify-Hook-Id`` and ``Dify-Hook-Url``
  added, headers with ``_`` dropped as nginx does), hex-encoded and POSTed to a plugin
  process's ``/invoke`` (SDK ``core/server/serverless/request_reader.py``), round-robin over
  the processes. The plugin's answer is a stream of ``"\\n\\n"``-separated JSON lines (SDK
  ``core/server/__base/response_writer.py``): first ``{"status", "headers"}`` (with
  ``"result"`` too for a non-streaming ``Response``; SDK ``core/plugin_executor.py``
  ``invoke_endpoint``), then ``{"result": hex}`` chunks, then ``end``; a plugin ``error``
  message becomes a 500, like the daemon's ``exception.InternalServerError``.

* **Backwards invocations** — ``POST /backwards-invocation/transaction`` (serverless mode; SDK
  ``core/runtime.py`` ``_http_backwards_invoke``). Emulates the daemon's
  ``transaction/serverless_event_handler.go`` and ``backwards_invocation/task.go``: storage
  (``persistence.go`` key rules, missing key → error), apps (delegated to a
  :class:`~tests.emulator.apps.ScriptedApp`), ``fetch_app``; anything else is an error event.

**Session lifetime (DESIGN §3, reference ``dify-plugin-runtime.md`` §1).** A session lives
from the arrival of the front request until the front response is finished, the front client
disconnects, or the execution timeout hits (``endpoint.go``: ``defer session.Close``, returns
on ``CloseNotify``). Disconnects are detected while waiting by polling the client socket every
20 ms (``select`` + ``recv(1, MSG_PEEK) == b""``). When a session ends the emulator closes the
plugin ``/invoke`` connection and cuts every backwards stream of the session still running
(``cut_mode="abort"``: the chunked response is dropped mid-body, so the SDK's httpx raises;
``"end"``: a clean early ``end``, so the plugin sees a truncated stream). A backwards call for a
closed or unknown session is answered as the real daemon does — HTTP 400 with a *bare*
``BackwardsInvocationResponseEvent`` JSON ("failed to get session info from cache"); the SDK
fails on it at once with ``KeyError('session_id')`` — and recorded in :attr:`late_calls`.

Pure stdlib (plus the scripted app); never imports ``dify_plugin``. All servers bind
127.0.0.1, all threads are daemon threads, every wait is bounded. Times recorded in
``sessions``/``app_calls``/``late_calls`` are ``time.monotonic()`` values.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import select
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from .apps import AppInvocationError, ScriptedApp
from .plugin_process import PluginProcess

MAX_ENDPOINT_BODY = 10 * 1024 * 1024
"""``endpoint.go``: ``io.LimitReader(req.Body, 10*1024*1024)`` — larger bodies are truncated."""
MAX_TRANSACTION_BODY = 6 * 1024 * 1024
"""``serverless_event_handler.go`` reads at most 6 MB of a transaction request."""
MAX_STORAGE_KEY = 256
POLL_INTERVAL = 0.02
"""How often a waiting front request checks whether its client hung up."""

# endpoint.go copyRequest: "remove ip traces for security"
_STRIPPED_HEADERS = frozenset(
    {
        "x-forwarded-for",
        "x-real-ip",
        "x-forwarded",
        "x-original-forwarded-for",
        "x-original-url",
        "x-original-host",
    }
)
# Go's Request.Write writes these itself (reqWriteExcludeHeader) — or we set them.
_REWRITTEN_HEADERS = frozenset(
    {"host", "user-agent", "content-length", "transfer-encoding", "trailer"}
    | {"dify-hook-id", "dify-hook-url"}
)
_HOP_BY_HOP_RESPONSE = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}
)

CutMode = Literal["abort", "end"]

_LOAD_FAILED = "load data failed, please check if the key is correct or you have not set it"


def _canonical(name: str) -> str:
    """Go's ``textproto.CanonicalMIMEHeaderKey``: ``content-type`` → ``Content-Type``."""
    return "-".join(p[:1].upper() + p[1:].lower() for p in name.split("-"))


def sorted_query(raw_query: str) -> str:
    """Go's ``url.Values.Encode()`` of a parsed query: keys sorted, values in order."""
    pairs = parse_qsl(raw_query, keep_blank_values=True)
    grouped: dict[str, list[str]] = {}
    for k, v in pairs:
        grouped.setdefault(k, []).append(v)
    return urlencode([(k, v) for k in sorted(grouped) for v in grouped[k]])


def build_raw_request(
    method: str,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    body: bytes,
    *,
    hook_id: str,
    hook_url: str,
    host: str,
) -> bytes:
    """The raw HTTP/1.1 request the daemon hex-encodes into ``raw_http_request``.

    Mirrors ``copyRequest`` + Go's ``Request.Write``: request line, ``Host``, ``User-Agent``,
    ``Content-Length``, then the remaining headers sorted by canonical name. A client-supplied
    ``Dify-Hook-Url`` is replaced, as Dify's nginx does (``proxy_set_header Dify-Hook-Url
    $scheme://$host$request_uri``); ``hook_url`` is that value.
    """
    target = path + (f"?{query}" if query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    user_agent = next((v for k, v in headers if k.lower() == "user-agent"), "Go-http-client/1.1")
    lines.append(f"User-Agent: {user_agent}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    kept: dict[str, list[str]] = {}
    for name, value in headers:
        low = name.lower()
        if low in _STRIPPED_HEADERS or low in _REWRITTEN_HEADERS:
            continue
        if "_" in name:  # nginx: underscores_in_headers off (the SDK would reject them)
            continue
        kept.setdefault(_canonical(name), []).append(value)
    kept["Dify-Hook-Id"] = [hook_id]
    kept["Dify-Hook-Url"] = [hook_url]
    for name in sorted(kept):
        lines.extend(f"{name}: {v}" for v in kept[name])
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def client_gone(sock: socket.socket) -> bool:
    """True when the peer closed the connection (readable and ``recv`` peeks ``b""``)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class _Session:
    """One daemon session = one front request (``session_manager.NewSession``)."""

    def __init__(self, session_id: str, method: str, path: str, process: int) -> None:
        self.id = session_id
        self.method = method
        self.path = path
        self.process = process
        self.started = time.monotonic()
        self.ended: float | None = None
        self.end_reason: str | None = None
        self.status: int | None = None
        self.closed = threading.Event()
        self.invoke_conn: http.client.HTTPConnection | None = None
        self.lock = threading.Lock()

    def snapshot(self) -> dict[str, Any]:
        return {
            "session_id": self.id,
            "method": self.method,
            "path": self.path,
            "process": self.process,
            "started": self.started,
            "ended": self.ended,
            "end_reason": self.end_reason,
            "status": self.status,
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128
    emulator: DaemonEmulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return
        self.emulator.errors.append(f"{type(exc).__name__}: {exc}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        self.server.emulator.access_log.append(format % args)

    def _route(self) -> None:
        self.server.emulator._route(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _route


class _BackwardsStream:
    """The chunked ``text/event-stream`` answer to one transaction request."""

    def __init__(self, handler: _Handler, session_id: str, request_id: str) -> None:
        self.h = handler
        self.session_id = session_id
        self.request_id = request_id
        self.broken = False

    def open(self) -> None:
        self.h.send_response(200)
        self.h.send_header("Content-Type", "text/event-stream")
        self.h.send_header("Transfer-Encoding", "chunked")
        self.h.send_header("Connection", "close")
        self.h.end_headers()
        self.h.close_connection = True

    def _write(self, data: bytes) -> bool:
        if self.broken:
            return False
        try:
            self.h.wfile.write(data)
            self.h.wfile.flush()
            return True
        except OSError:
            self.broken = True
            return False

    def send(self, event: str, data: Any = None, message: str = "") -> bool:
        line = json.dumps(
            {
                "session_id": self.session_id,
                "event": "backwards_response",
                "data": {
                    "backwards_request_id": self.request_id,
                    "event": event,
                    "message": message,
                    "data": data,
                },
            },
            ensure_ascii=False,
        ).encode()
        payload = line + b"\n\n"
        return self._write(b"%x\r\n%s\r\n" % (len(payload), payload))

    def error(self, message: str) -> None:
        self.send("error", None, message)

    def end(self) -> None:
        self.send("end", None)
        self._write(b"0\r\n\r\n")

    def abort(self) -> None:
        """Drop the connection mid-body: the SDK's httpx sees an incomplete chunked read."""
        self.broken = True
        with contextlib.suppress(OSError):
            self.h.connection.shutdown(socket.SHUT_RDWR)


class DaemonEmulator:
    """Plays the Dify plugin daemon and Dify API for one endpoint of one plugin.

    ``settings`` are the endpoint's (decrypted) settings; ``app`` the Dify app the plugin may
    call; ``processes`` how many serverless plugin processes share the work (and
    :attr:`storage`); ``env`` extra environment for them. ``plugin_dir`` defaults to the
    repository root. ``cut_mode`` chooses how a running app stream is cut when its session
    ends ("abort" or "end", see module doc). ``max_execution_timeout`` is the daemon's
    ``PLUGIN_MAX_EXECUTION_TIMEOUT`` (600 s in Dify; short here).
    """

    def __init__(
        self,
        settings: Mapping[str, Any],
        app: ScriptedApp,
        processes: int = 1,
        env: Mapping[str, str] | None = None,
        endpoint_id: str = "ep-test-1",
        hook_id: str = "hook123",
        *,
        plugin_dir: str | Path | None = None,
        python: str | None = None,
        max_invocation_timeout: int = 10,
        max_execution_timeout: float = 60.0,
        cut_mode: CutMode = "abort",
        startup_timeout: float = 30.0,
        ping_interval: float = 1.0,
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be >= 1")
        self.settings: dict[str, Any] = dict(settings)
        self.app = app
        self.endpoint_id = endpoint_id
        self.hook_id = hook_id
        self.enabled = True
        self.cut_mode: CutMode = cut_mode
        self.max_execution_timeout = max_execution_timeout
        self.startup_timeout = startup_timeout
        self.ping_interval = ping_interval
        """Dify's app streams carry ``ping`` events while nothing else happens (Dify sends
        one every 10 s); a long app's stream would otherwise hit MAX_INVOCATION_TIMEOUT."""
        self.blocked_paths: set[str] = set()
        """Endpoint paths (after the hook id) answered 404, like a route the installed
        plugin version does not have."""
        self._n_processes = processes
        self._env = dict(env or {})
        self._plugin_dir = plugin_dir
        self._python = python
        self._max_invocation_timeout = max_invocation_timeout

        self._lock = threading.Lock()
        self._storage: dict[str, bytes] = {}
        self._sessions: dict[str, _Session] = {}
        self._app_calls: list[dict[str, Any]] = []
        self._late_calls: list[dict[str, Any]] = []
        self._storage_calls: list[dict[str, Any]] = []
        self._procs: list[PluginProcess] = []
        self._rr = 0
        self.errors: list[str] = []
        """Unexpected exceptions inside the emulator's handlers (tests may assert it stays [])."""
        self.access_log: deque[str] = deque(maxlen=1000)

        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._started = False

    # ------------------------------------------------------------------ public state

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("emulator not started")
        return int(self._server.server_address[1])

    @property
    def daemon_url(self) -> str:
        """What the plugin gets as ``DIFY_PLUGIN_DAEMON_URL``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The endpoint URL prefix WeChat is configured with: ``…/e/<hook_id>``."""
        return f"{self.daemon_url}/e/{self.hook_id}"

    def url(self, path: str) -> str:
        """Full endpoint URL for a plugin path such as ``/wechat``."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    @property
    def storage(self) -> dict[str, bytes]:
        """The plugin's persistent storage, shared by all processes (mutable; thread-safe use
        from tests: read it when no request is running, or copy it)."""
        return self._storage

    @property
    def app_calls(self) -> list[dict[str, Any]]:
        """Every app invocation: request fields, ``session_id``, ``started``/``ended``,
        ``cut`` (session ended mid-call), ``error``, ``chunks_sent``, ``conversation_id_out``."""
        with self._lock:
            return list(self._app_calls)

    @property
    def late_calls(self) -> list[dict[str, Any]]:
        """Backwards invocations that arrived for a closed or unknown session."""
        with self._lock:
            return list(self._late_calls)

    @property
    def storage_calls(self) -> list[dict[str, Any]]:
        """Every storage operation served: ``session_id``, ``opt``, ``key``, ``at``, ``ok``."""
        with self._lock:
            return list(self._storage_calls)

    @property
    def sessions(self) -> list[dict[str, Any]]:
        """Snapshots of all sessions (front requests) so far, oldest first."""
        with self._lock:
            return [s.snapshot() for s in self._sessions.values()]

    @property
    def processes(self) -> list[PluginProcess]:
        return list(self._procs)

    def live_sessions(self) -> int:
        with self._lock:
            return sum(1 for s in self._sessions.values() if not s.closed.is_set())

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait (bounded) until no front request is in flight."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.live_sessions() == 0:
                return True
            time.sleep(0.02)
        return self.live_sessions() == 0

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02
    ) -> bool:
        """Poll ``predicate`` until it is true or ``timeout`` passes; returns its last value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        return bool(predicate())

    def plugin_logs(self) -> str:
        """Combined stdout+stderr of all plugin processes (all their runs)."""
        return "\n".join(p.logs() for p in self._procs)

    def set_settings(self, settings: Mapping[str, Any] | None = None, **updates: Any) -> None:
        """Replace the endpoint settings and/or update single keys (next requests see them)."""
        with self._lock:
            if settings is not None:
                self.settings = dict(settings)
            self.settings.update(updates)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> DaemonEmulator:
        if self._started:
            return self
        server = _Server(("127.0.0.1", 0), _Handler)
        server.emulator = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="daemon-emulator",
            daemon=True,
        )
        self._thread.start()
        self._started = True
        try:
            self._procs = [
                PluginProcess(
                    self.daemon_url,
                    plugin_dir=self._plugin_dir,
                    env=self._env,
                    python=self._python,
                    max_invocation_timeout=self._max_invocation_timeout,
                    name=f"plugin-{i}",
                )
                for i in range(self._n_processes)
            ]
            self._start_processes()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_processes(self) -> None:
        errors: list[BaseException] = []

        def run(p: PluginProcess) -> None:
            try:
                p.start(timeout=self.startup_timeout)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(p,), daemon=True) for p in self._procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.startup_timeout + 10)
        if errors:
            raise errors[0]

    def _stop_processes(self) -> None:
        threads = [threading.Thread(target=p.stop, daemon=True) for p in self._procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)

    def restart_plugins(self) -> None:
        """Stop and start all plugin processes (new ports), keeping storage and the app."""
        self._close_all_sessions("plugin_restart")
        self._stop_processes()
        self._start_processes()

    def stop(self) -> None:
        """End all sessions, stop plugin processes and the server (every step bounded)."""
        self._close_all_sessions("stopped")
        self._stop_processes()
        server = self._server
        if server is not None and self._started:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._started = False

    def __enter__(self) -> DaemonEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ sessions

    def _close_all_sessions(self, reason: str) -> None:
        with self._lock:
            live = [s for s in self._sessions.values() if not s.closed.is_set()]
        for s in live:
            self._end_session(s, reason)

    def _end_session(self, sess: _Session, reason: str) -> None:
        """``session.Close``: no more backwards calls; cut the plugin connection and streams."""
        with sess.lock:
            if sess.closed.is_set():
                return
            sess.ended = time.monotonic()
            sess.end_reason = reason
            sess.closed.set()
            conn = sess.invoke_conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def _pick_process(self) -> tuple[int, PluginProcess] | None:
        with self._lock:
            n = len(self._procs)
            for _ in range(n):
                i = self._rr % n
                self._rr += 1
                if self._procs[i].is_running():
                    return i, self._procs[i]
        return None

    # ------------------------------------------------------------------ routing

    def _route(self, h: _Handler) -> None:
        split = urlsplit(h.path)
        if split.path.startswith("/e/"):
            self._front(h, split.path[3:], split.query)
        elif split.path == "/backwards-invocation/transaction" and h.command == "POST":
            self._backwards(h)
        elif split.path == "/health" and h.command == "GET":
            self._simple(h, 200, b"OK", "text/plain")
        else:
            self._json_error(h, 404, -404, "not found")

    def _simple(self, h: _Handler, status: int, body: bytes, content_type: str) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(body)))
            h.send_header("Connection", "close")
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(body)
        except OSError:
            pass
        h.close_connection = True

    def _json_error(self, h: _Handler, status: int, code: int, message: str) -> None:
        body = json.dumps({"code": code, "message": message, "data": None}).encode()
        self._simple(h, status, body, "application/json")

    # ------------------------------------------------------------------ endpoint front

    def _read_body(self, h: _Handler) -> bytes:
        if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
            parts: list[bytes] = []
            total = 0
            while True:
                size_line = h.rfile.readline(1024)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunk = h.rfile.read(size)
                h.rfile.readline(16)
                if total < MAX_ENDPOINT_BODY:
                    parts.append(chunk[: MAX_ENDPOINT_BODY - total])
                total += len(chunk)
            return b"".join(parts)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(min(length, MAX_ENDPOINT_BODY))
        rest = length - len(body)
        while rest > 0:  # drain what the daemon would have ignored
            got = h.rfile.read(min(rest, 1 << 20))
            if not got:
                break
            rest -= len(got)
        return body

    def _front(self, h: _Handler, after_e: str, raw_query: str) -> None:
        hook_id, slash, rest = after_e.partition("/")
        if (
            hook_id != self.hook_id
            or not slash
            or not self.enabled
            or ("/" + rest in self.blocked_paths)
        ):
            self._read_body(h)
            self._json_error(h, 404, -404, "endpoint not found")
            return
        path = "/" + rest
        body = self._read_body(h)
        host = h.headers.get("Host") or f"127.0.0.1:{self.port}"
        raw = build_raw_request(
            h.command,
            path,
            sorted_query(raw_query),
            list(h.headers.items()),
            body,
            hook_id=self.hook_id,
            hook_url=f"http://127.0.0.1:{self.port}{h.path}",
            host=host,
        )
        picked = self._pick_process()
        if picked is None:
            self._json_error(h, 404, -404, "plugin not found")
            return
        index, proc = picked
        sess = _Session(str(uuid.uuid4()), h.command, path, index)
        with self._lock:
            self._sessions[sess.id] = sess
            settings = json.loads(json.dumps(self.settings))
        payload = json.dumps(
            {
                "event": "request",
                "session_id": sess.id,
                "endpoint_id": self.endpoint_id,
                "data": {
                    "type": "endpoint",
                    "action": "invoke_endpoint",
                    "settings": settings,
                    "raw_http_request": raw.hex(),
                },
            }
        ).encode()
        q: queue.Queue[tuple[str, Any]] = queue.Queue()
        threading.Thread(
            target=self._pump, args=(sess, proc, payload, q), name="invoke-pump", daemon=True
        ).start()
        try:
            self._relay(h, sess, q)
        finally:
            self._end_session(sess, "response")
            h.close_connection = True

    def _pump(
        self, sess: _Session, proc: PluginProcess, payload: bytes, q: queue.Queue[tuple[str, Any]]
    ) -> None:
        """Read the plugin's ``/invoke`` stream and queue its lines (runs in its own thread)."""
        port = proc.port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=self.max_execution_timeout)
        try:
            conn.connect()
            with sess.lock:
                sess.invoke_conn = conn
                if sess.closed.is_set():
                    return
            conn.request(
                "POST", "/invoke", body=payload, headers={"Content-Type": "application/json"}
            )
            resp = conn.getresponse()
            if resp.status != 200:
                text = resp.read(4096).decode("utf-8", "replace")
                q.put(("fail", f"plugin /invoke answered {resp.status}: {text}"))
                return
            buf = b""
            while True:
                data = resp.read1(65536)
                if not data:
                    break
                buf += data
                while b"\n" in buf:
                    line, _, buf = buf.partition(b"\n")
                    if line.strip():
                        q.put(("line", line.strip()))
            if buf.strip():
                q.put(("line", buf.strip()))
            q.put(("eof", None))
        except Exception as exc:
            q.put(("fail", f"{type(exc).__name__}: {exc}"))
        finally:
            conn.close()

    def _relay(self, h: _Handler, sess: _Session, q: queue.Queue[tuple[str, Any]]) -> None:
        """Relay the plugin stream to the client while enforcing the session lifetime."""
        deadline = sess.started + self.max_execution_timeout
        status: int | None = None
        headers: dict[str, str] = {}
        headers_sent = False
        chunked = False
        head_only = h.command == "HEAD"

        def send_head(content_length: int | None) -> None:
            nonlocal headers_sent, chunked
            assert status is not None
            h.send_response(status)
            for k, v in headers.items():
                if k.lower() not in _HOP_BY_HOP_RESPONSE:
                    h.send_header(k, str(v))
            if content_length is not None:
                h.send_header("Content-Length", str(content_length))
            elif not head_only:
                h.send_header("Transfer-Encoding", "chunked")
                chunked = True
            h.send_header("Connection", "close")
            h.end_headers()
            headers_sent = True
            sess.status = status

        def write_chunk(data: bytes) -> None:
            if head_only or not data:
                return
            if chunked:
                h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                h.wfile.write(data)
            h.wfile.flush()

        def finish() -> None:
            if not headers_sent:
                send_head(0)
            elif chunked:
                h.wfile.write(b"0\r\n\r\n")
                h.wfile.flush()

        def fail(message: str) -> None:
            if headers_sent:
                write_chunk(message.encode())
                finish()
            elif status is not None:
                body = message.encode()
                send_head(len(body))
                write_chunk(body)
            else:
                sess.status = 500
                self._json_error(h, 500, -500, message)

        try:
            while True:
                try:
                    kind, value = q.get(timeout=POLL_INTERVAL)
                except queue.Empty:
                    if client_gone(h.connection):
                        self._end_session(sess, "client_disconnect")
                        return
                    if time.monotonic() > deadline:
                        self._end_session(sess, "timeout")
                        fail("killed by timeout")
                        return
                    continue
                if kind == "line":
                    msg = json.loads(value)
                    if msg.get("event") != "session":
                        continue
                    data = msg.get("data") or {}
                    typ = data.get("type")
                    inner = data.get("data") or {}
                    if typ == "stream":
                        if status is None and "status" in inner:
                            status = int(inner["status"])
                            headers = {
                                str(k): str(v) for k, v in (inner.get("headers") or {}).items()
                            }
                            if "result" in inner:  # a complete, non-streaming Response
                                body = bytes.fromhex(inner["result"] or "")
                                send_head(len(body))
                                write_chunk(body)
                        elif "result" in inner:
                            chunk = bytes.fromhex(inner["result"] or "")
                            if not headers_sent:
                                if status is None:
                                    status = 200
                                send_head(None)
                            write_chunk(chunk)
                    elif typ == "error":
                        fail("PluginInvokeError: " + json.dumps(inner, ensure_ascii=False))
                        return
                    elif typ == "end":
                        finish()
                        return
                elif kind == "eof":
                    if status is None:
                        fail("plugin stream ended without a response")
                    else:
                        finish()
                    return
                else:  # "fail"
                    if sess.closed.is_set():
                        return
                    fail(str(value))
                    return
        except OSError:
            self._end_session(sess, "client_disconnect")

    # ------------------------------------------------------------------ backwards invocations

    def _backwards(self, h: _Handler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(min(length, MAX_TRANSACTION_BODY))
        header_sid = h.headers.get("Dify-Plugin-Session-ID") or ""
        try:
            line = next(ln for ln in body.decode("utf-8").splitlines() if ln.strip())
            msg = json.loads(line)
            sid = str(msg.get("session_id") or header_sid)
            inv = (msg.get("data") or {}).get("data") or {}
            invoke_type = str(inv.get("type") or "")
            request_id = str(inv.get("backwards_request_id") or "")
            request = inv.get("request") or {}
        except (StopIteration, ValueError, AttributeError) as exc:
            self._simple(h, 400, str(exc).encode(), "text/plain")
            return

        with self._lock:
            sess = self._sessions.get(sid)
            if sess is None or sess.closed.is_set():
                self._late_calls.append(
                    {
                        "session_id": sid,
                        "type": invoke_type,
                        "request": request,
                        "at": time.monotonic(),
                        "reason": "unknown_session" if sess is None else "session_closed",
                        "session_ended": None if sess is None else sess.ended,
                    }
                )
                late = True
            else:
                late = False
        if late:
            # serverless_event_handler.go: status 400 and a bare BackwardsInvocationResponseEvent
            # (no session envelope) — the SDK then fails with KeyError('session_id').
            err = {
                "backwards_request_id": request_id,
                "event": "error",
                "message": "failed to get session info from cache",
                "data": {
                    "error_type": "SessionNotFound",
                    "detail": "key not found",
                    "session_id": sid,
                },
            }
            self._simple(h, 400, json.dumps(err).encode(), "text/event-stream")
            return
        assert sess is not None

        stream = _BackwardsStream(h, sid, request_id)
        try:
            stream.open()
        except OSError:
            return
        if invoke_type == "storage":
            self._bw_storage(sess, stream, request)
        elif invoke_type == "app":
            self._bw_app(sess, stream, request)
        elif invoke_type == "fetch_app":
            self._bw_fetch_app(stream, request)
        elif invoke_type == "upload_file":
            stream.error("upload file failed: not supported by the daemon emulator")
        else:
            stream.error(f"unsupported invoke type: {invoke_type}")
        if not stream.broken:
            stream.end()

    def _bw_storage(self, sess: _Session, stream: _BackwardsStream, req: Mapping[str, Any]) -> None:
        """``executeDifyInvocationStorageTask`` + ``persistence.go`` key checks."""
        opt = str(req.get("opt") or "")
        key = req.get("key")
        record: dict[str, Any] = {
            "session_id": sess.id,
            "opt": opt,
            "key": key,
            "at": time.monotonic(),
            "ok": False,
        }
        with self._lock:
            self._storage_calls.append(record)
        if not isinstance(key, str) or not key:
            stream.error("invalid key: empty")
            return
        if ".." in key or "//" in key or "\\" in key:
            stream.error("invalid key: path traversal attempt detected")
            return
        if len(key) > MAX_STORAGE_KEY:
            stream.error("key length must be less than 256 characters")
            return
        with self._lock:
            if opt == "get":
                value = self._storage.get(key)
                if value is None:
                    result: Any = None
                    error = _LOAD_FAILED
                else:
                    result, error = {"data": value.hex()}, None
            elif opt == "set":
                try:
                    self._storage[key] = bytes.fromhex(str(req.get("value") or ""))
                    result, error = {"data": "ok"}, None
                except ValueError as exc:
                    result, error = None, f"decode data failed: {exc}"
            elif opt == "del":
                existed = self._storage.pop(key, None) is not None
                result, error = {"data": "ok", "deleted_num": int(existed)}, None
            elif opt == "exist":
                present = key in self._storage
                result, error = {"data": present, "exist_num": int(present)}, None
            else:
                result, error = None, f"unsupported storage opt: {opt}"
            record["ok"] = error is None
        if error is not None:
            stream.error(error)
        else:
            stream.send("response", result)

    def _bw_fetch_app(self, stream: _BackwardsStream, req: Mapping[str, Any]) -> None:
        app_id = req.get("app_id")
        if self.app.app_id is not None and app_id != self.app.app_id:
            stream.error("fetch app failed: app not found")
            return
        stream.send("response", dict(self.app.parameters))

    def _bw_app(self, sess: _Session, stream: _BackwardsStream, req: Mapping[str, Any]) -> None:
        """``executeDifyInvocationAppTask``: play a scripted app, cut when the session ends."""
        call: dict[str, Any] = {
            "session_id": sess.id,
            "process": sess.process,
            "request": dict(req),
            "app_id": req.get("app_id"),
            "query": req.get("query"),
            "inputs": req.get("inputs"),
            "response_mode": req.get("response_mode"),
            "conversation_id": req.get("conversation_id"),
            "user": req.get("user"),
            "started": time.monotonic(),
            "ended": None,
            "cut": False,
            "abandoned": False,
            "error": None,
            "chunks_sent": 0,
            "answer": None,
            "conversation_id_out": None,
        }
        with self._lock:
            self._app_calls.append(call)
        try:
            plan = self.app.plan(req)
        except AppInvocationError as exc:
            call["error"] = str(exc)
            call["ended"] = time.monotonic()
            stream.error(f"invoke app failed: {exc}")
            return
        call["answer"] = plan.answer
        call["conversation_id_out"] = plan.conversation_id
        start = call["started"]

        def wait_until(offset: float) -> bool:
            """Sleep until ``start + offset`` (pinging meanwhile when streaming); False when
            the session ended meanwhile."""
            while True:
                remaining = start + offset - time.monotonic()
                if remaining <= 0:
                    return not sess.closed.is_set()
                streaming = call["response_mode"] == "streaming"
                step = min(remaining, self.ping_interval) if streaming else remaining
                if sess.closed.wait(step):
                    return False
                if streaming and start + offset - time.monotonic() > 0:
                    stream.send("response", {"event": "ping"})

        def cut() -> None:
            call["cut"] = True
            call["ended"] = time.monotonic()
            if self.cut_mode == "abort":
                stream.abort()
            else:
                stream.end()
                stream.broken = True

        if call["response_mode"] == "streaming":
            for offset, chunk in plan.events:
                if not wait_until(offset):
                    cut()
                    return
                if not stream.send("response", chunk):
                    call["abandoned"] = True
                    break
                call["chunks_sent"] += 1
        else:
            if not wait_until(plan.blocking_at):
                cut()
                return
            if plan.blocking_error is not None:
                call["error"] = plan.blocking_error
                stream.error(f"invoke app failed: {plan.blocking_error}")
            elif not stream.send("response", plan.blocking_result):
                call["abandoned"] = True
            else:
                call["chunks_sent"] = 1
        call["ended"] = time.monotonic()
