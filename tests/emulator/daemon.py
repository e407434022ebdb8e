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
  :class:`~tests.emulator.apps.ScriptedApp`), ``fetch_app``, ``upload_file``, ``speech2text``,
  ``tts``; anything else is an error event. Every answer is what the daemon writes after
  calling Dify's inner API (``internal/core/dify_invocation/calldify/http_request.go``): a
  ``"struct"`` result is one ``response`` event, a stream one ``response`` event per chunk,
  a failure one ``error`` event worded as ``task.go`` words it, then ``end``.

* **Dify's file server** (``FILES_URL``; :attr:`DaemonEmulator.files_url`, default the
  emulator itself) — ``POST /files/upload/for-plugin`` and ``GET /files/tools/<id><ext>``.

**Permissions** (``task.go`` ``checkPermission``): ``storage`` needs ``storage.enabled``,
``app``/``fetch_app`` ``app.enabled``, ``speech2text``/``tts`` ``model.enabled`` plus
``model.speech2text``/``model.tts`` in the plugin's ``manifest.yaml`` (``resource.permission``,
read at construction into :attr:`DaemonEmulator.permissions`); otherwise one ``error`` event
"permission denied, you need to enable … access in plugin manifest". ``upload_file`` needs none.

**fetch_app** — Dify (``api/core/plugin/backwards_invocation/app.py`` ``fetch_app_info``)
answers ``{"data": get_parameters_from_feature_dict(…)}`` and the daemon's ``FetchApp``
unwraps that ``data``, so the plugin's ``session.app.fetch_app(app_id)`` returns the *bare*
parameters dict (``opening_statement``, ``user_input_form``, ``file_upload``, ``speech_to_text``,
``text_to_speech``, ``system_parameters``, … — build it with
:func:`~tests.emulator.apps.app_parameters`). An unknown app makes Dify's inner API fail with a
500 whose JSON has no ``data``, which the daemon reports as "fetch app failed: data is nil".

**upload_file** (SDK ``invocations/file.py``): the request ``{"filename", "mimetype"}`` is
answered with ``{"url": <signed upload URL>}`` (Dify ``core/file/helpers.py``
``get_signed_file_url_for_plugin``: ``{FILES_URL}/files/upload/for-plugin?timestamp&nonce&sign
&user_id&tenant_id``, HMAC-SHA256 over ``upload|filename|mimetype|tenant|user|ts|nonce``). The
SDK then POSTs multipart field ``file`` there (``requests``, 10 s timeout) and wants 201.
Emulates ``api/controllers/files/upload.py`` ``PluginUploadFileApi``: the part's filename and
mimetype must be the signed ones and the URL younger than ``FILES_ACCESS_TIMEOUT`` (300 s) →
else 403 ``{"code": "forbidden", "message": "Invalid request.", "status": 403}``; no ``file``
part → 400; larger than :attr:`~DaemonEmulator.upload_limit_bytes` → 413 ``file_too_large``;
success → 201 with Dify's ``FileResponse`` (``fields/file_fields.py``): ``id``, ``name``
(the filename, ``+ extension`` when it has none), ``size``, ``extension`` (``".png"``, from
``mimetypes.guess_extension``, ``".bin"`` if unknown — *with* the dot), ``mime_type``,
``preview_url`` (signed ``/files/tools/<id><ext>`` URL), ``user_id``, ``tenant_id``,
``file_key``, and ``created_by``/``created_at``/``source_url``/``original_url``/
``conversation_id`` null. No ``type`` key: the SDK derives it from ``mime_type``. The signed URL
is not bound to the session (Dify knows nothing of sessions), only to its age.

**Hosted files** (``GET /files/tools/<id><ext>?timestamp&nonce&sign[&as_attachment=true]``):
``api/controllers/files/tool_files.py`` — signature ``file-preview|id|ts|nonce`` checked with
the same 300 s window (403 otherwise), the bytes with the file's ``Content-Type`` and
``Content-Length``, ``Content-Disposition: attachment; filename*=UTF-8''…`` on request; an
unknown id is answered 415 ``unsupported_file_type`` (the controller turns its ``NotFound``
into that). :meth:`~DaemonEmulator.host_file` registers a file an app "produced" and returns it
as Dify's ``File.to_dict()`` (``core/file/models.py``; see the method).

**speech2text** (SDK ``invocations/model/speech2text.py``): request ``{"provider", "model",
"model_type": "speech2text", "file": <audio hex>}``, answer ``{"result": <text>}`` (Dify
``backwards_invocation/model.py`` ``invoke_speech2text``). Any failure comes back as
``{"error": …}`` from Dify's inner API → "invoke speech2text model failed: request failed: …".
**tts** (``invocations/model/tts.py``): request ``{"provider", "model", "model_type": "tts",
"voice", "content_text"}``, answer one ``response`` ``{"result": <hex chunk>}`` per audio chunk
(``invoke_tts`` ``handle``). A model Dify does not have fails before the stream (Dify answers
500) → "invoke tts model failed: request failed with status code: 500 and respond with: …"; a
failure while synthesising → "read tts model failed: request failed: …" mid-stream. A model
is known when ``(provider, model, model_type)`` is in :attr:`~DaemonEmulator.models` (the
provider as ``openai`` or ``langgenius/openai/openai``); otherwise Dify's
``ProviderManager``/``ModelInstance`` errors: "Provider X does not exist." or "Model X
credentials is not initialized.".

**Session lifetime (DESIGN §3, reference ``dify-plugin-runtime.md`` §1).** A session lives
from the arrival of the front request until the front response is finished, the front client
disconnects, or the execution timeout hits (``endpoint.go``: ``defer session.Close``, returns
on ``CloseNotify``). Disconnects are detected while waiting by polling the client socket every
20 ms (``poll`` + ``recv(1, MSG_PEEK) == b""``). When a session ends the emulator closes the
plugin ``/invoke`` connection and cuts every backwards stream of the session still running
(``cut_mode="abort"``: the chunked response is dropped mid-body, so the SDK's httpx raises;
``"end"``: a clean early ``end``, so the plugin sees a truncated stream). A backwards call for a
closed or unknown session is answered as the real daemon does — HTTP 400 with a *bare*
``BackwardsInvocationResponseEvent`` JSON ("failed to get session info from cache"); the SDK
fails on it at once with ``KeyError('session_id')`` — and recorded in :attr:`late_calls`.

Without a front request, :meth:`~DaemonEmulator.open_session` opens a live session (and
:meth:`~DaemonEmulator.close_session` ends it) so tests can drive the backwards-invocation
endpoint directly; ``processes=0`` runs the emulator without any plugin process.

Pure stdlib (plus the scripted app); never imports ``dify_plugin``. All servers bind
127.0.0.1, all threads are daemon threads, every wait is bounded. Times recorded in
``sessions``/``app_calls``/``late_calls``/``uploads``/``stt_calls``/``tts_calls``/
``file_downloads`` are ``time.monotonic()`` values.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.client
import json
import mimetypes
import os
import queue
import re
import select
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from .apps import AppInvocationError, ScriptedApp
from .plugin_process import REPO_ROOT, PluginProcess

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

DEFAULT_UPLOAD_LIMIT = 15 * 1024 * 1024
"""Dify's ``UPLOAD_FILE_SIZE_LIMIT`` default (15 MB)."""
FILES_ACCESS_TIMEOUT = 300.0
"""Dify's ``FILES_ACCESS_TIMEOUT``: how long a signed file URL stays valid (seconds)."""
MAX_UPLOAD_READ = 64 * 1024 * 1024
"""Upload bodies above this are refused with 413 without reading them (nginx's job)."""
FILE_MODEL_IDENTITY = "__dify__file__"
"""Dify ``core/file/constants.py``: marks a serialized ``File`` in app outputs."""
DEFAULT_TRANSCRIPT = "你好，这是一段语音"
DEFAULT_MODELS: frozenset[tuple[str, str, str]] = frozenset(
    {("openai", "whisper-1", "speech2text"), ("openai", "tts-1", "tts")}
)
DEFAULT_TTS_AUDIO = b"ID3\x04\x00\x00\x00\x00\x00\x00" + (b"\xff\xf3\x14\xc4" + bytes(20)) * 6
"""A stand-in "MP3" (an ID3 header and a few frame headers); tests set real audio."""

_PERMISSIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "storage": (("storage", "enabled"),),
    "app": (("app", "enabled"),),
    "fetch_app": (("app", "enabled"),),
    "tts": (("model", "enabled"), ("model", "tts")),
    "speech2text": (("model", "enabled"), ("model", "speech2text")),
    "upload_file": (),
}
"""``task.go`` ``permissionMapping`` for the invocation types the emulator serves."""
_PERMISSION_NAMES = {
    "storage": "storage",
    "app": "app",
    "fetch_app": "app",
    "tts": "tts",
    "speech2text": "speech2text",
}

_FORBIDDEN = {"code": "forbidden", "message": "Invalid request.", "status": 403}
_SERVER_ERROR = {
    "code": "internal_server_error",
    "message": "Internal Server Error",
    "status": 500,
}


def _sign(secret: bytes, message: str) -> str:
    """Dify's signature: urlsafe base64 of HMAC-SHA256(SECRET_KEY, message)."""
    digest = hmac.new(secret, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode()


def guess_extension(mimetype: str) -> str | None:
    """``mimetypes.guess_extension`` as Dify calls it (``".png"``, ``".jpg"``, ``None``)."""
    return mimetypes.guess_extension(mimetype)


def dify_file_type(mimetype: str) -> str:
    """Dify's ``FileType`` for a MIME type: image, video, audio, document or custom."""
    major = mimetype.partition("/")[0]
    if major in ("image", "video", "audio"):
        return major
    if major == "text" or mimetype in (
        "application/pdf",
        "application/msword",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/json",
    ):
        return "document"
    return "custom"


def _normalize_provider(provider: str) -> str:
    """Dify ``ModelProviderID``: ``openai`` means ``langgenius/openai/openai``."""
    return provider if "/" in provider else f"langgenius/{provider}/{provider}"


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, str, bytes]]:
    """``{field name: (filename or None, part content type, content)}`` of a form-data body.

    Content types lose their parameters (werkzeug's ``FileStorage.mimetype``); a part without
    one is ``text/plain`` unless it has a filename (``application/octet-stream``).
    """
    boundary = ""
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not content_type.lower().startswith("multipart/form-data") or not boundary:
        return {}
    fields: dict[str, tuple[str | None, str, bytes]] = {}
    delimiter = b"--" + boundary.encode("latin-1")
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        part = part.removeprefix(b"\r\n")
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        content = content.removesuffix(b"\r\n")
        name: str | None = None
        filename: str | None = None
        part_type = ""
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-type":
                part_type = value.split(";")[0].strip().lower()
            elif key.strip().lower() == "content-disposition":
                for m in re.finditer(r'(\w+\*?)=("(?:[^"\\]|\\.)*"|[^;]*)', value):
                    pkey, pval = m.group(1).lower(), m.group(2).strip()
                    if pval.startswith('"'):
                        pval = pval[1:-1].replace('\\"', '"').replace("\\\\", "\\")
                    if pkey == "name":
                        name = pval
                    elif pkey == "filename" and filename is None:
                        filename = pval
                    elif pkey == "filename*":
                        _, _, encoded = pval.partition("''")
                        filename = unquote(encoded)
        if name is None:
            continue
        if not part_type:
            part_type = "application/octet-stream" if filename is not None else "text/plain"
        fields.setdefault(name, (filename, part_type, content))
    return fields


def _scalar(value: str) -> Any:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    low = value.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    with contextlib.suppress(ValueError):
        return int(value)
    return value


def parse_manifest_permissions(text: str) -> dict[str, Any]:
    """``resource.permission`` of a plugin ``manifest.yaml`` (nested ``key: value`` maps only;
    enough for manifests, no YAML library needed)."""
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(-1, root)]
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith(("#", "-")):
            continue
        m = re.match(r"^([A-Za-z0-9_.\-]+):(?:\s+(.*))?$", stripped)
        if m is None:
            continue
        indent = len(raw) - len(raw.lstrip())
        while len(stack) > 1 and indent <= stack[-1][0]:
            stack.pop()
        parent = stack[-1][1]
        key, value = m.group(1), (m.group(2) or "").split(" #")[0].strip()
        if value:
            parent[key] = _scalar(value)
        else:
            child: dict[str, Any] = {}
            parent[key] = child
            stack.append((indent, child))
    resource = root.get("resource")
    permission = resource.get("permission") if isinstance(resource, dict) else None
    return permission if isinstance(permission, dict) else {}


@dataclass
class _StoredFile:
    """A Dify tool file (``ToolFile``): uploaded by the plugin or produced by an app."""

    id: str
    name: str
    mimetype: str
    extension: str
    content: bytes
    origin: str  # "upload" | "hosted"
    created: float = field(default_factory=time.monotonic)


def default_transcriber(audio: bytes) -> str:
    """The default :attr:`DaemonEmulator.transcriber`: :data:`DEFAULT_TRANSCRIPT` for any
    audio, an error for an empty file."""
    if not audio:
        raise ValueError("Invalid file: the audio file is empty")
    return DEFAULT_TRANSCRIPT


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
    """True when the peer closed the connection (readable and ``recv`` peeks ``b""``).

    ``poll()``, not ``select()``: select cannot watch a descriptor above 1023 and would call
    every such client gone (a bench with hundreds of users holds over a thousand sockets)."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLPRI)
        if not poller.poll(0):
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
    ``PLUGIN_MAX_EXECUTION_TIMEOUT`` (600 s in Dify; short here). ``processes=0`` runs no
    plugin at all (drive the backwards endpoint yourself, see :meth:`open_session`).

    Media scripting (all plain attributes, change them any time): :attr:`files_url`,
    :attr:`files_access_timeout`, :attr:`upload_limit_bytes`, :attr:`transcriber`,
    :attr:`models`, :attr:`tts_audio`, :attr:`tts_chunks`, :attr:`synthesizer`,
    :attr:`stt_delay`, :attr:`tts_delay`, :attr:`permissions`; scripted failures
    :meth:`fail_uploads`, :meth:`fail_stt`, :meth:`fail_tts`, :meth:`fail_file_downloads`.
    Records: :attr:`uploads`, :attr:`upload_attempts`, :attr:`stt_calls`, :attr:`tts_calls`,
    :attr:`file_downloads`.
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
        if processes < 0:
            raise ValueError("processes must be >= 0")
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

        # ---- Dify side of media: files, speech-to-text, text-to-speech
        self.tenant_id = "tenant-" + uuid.uuid4().hex[:12]
        """The workspace id Dify puts into signed URLs and file dicts."""
        self.dify_user_id = str(uuid.uuid4())
        """The end user Dify resolves for endpoint calls (the daemon sends no user id)."""
        self.secret_key = os.urandom(32)
        """Dify's ``SECRET_KEY`` signing every file URL."""
        self.files_url: str | None = None
        """Dify's ``FILES_URL`` (no trailing slash); None = this emulator. ``""`` gives relative
        URLs, as a Dify without ``FILES_URL`` configured does."""
        self.files_access_timeout = FILES_ACCESS_TIMEOUT
        self.upload_limit_bytes = DEFAULT_UPLOAD_LIMIT
        """Uploads larger than this are answered 413 ``file_too_large``."""
        self.transcriber: Callable[[bytes], str] = default_transcriber
        """speech2text: audio bytes → text (an exception becomes a model error)."""
        self.models: set[tuple[str, str, str]] = set(DEFAULT_MODELS)
        """``(provider, model, model_type)`` the workspace has configured."""
        self.tts_audio: bytes = DEFAULT_TTS_AUDIO
        """What every tts call returns (unless :attr:`synthesizer` is set)."""
        self.tts_chunks = 3
        """How many ``response`` events a tts answer is split into."""
        self.synthesizer: Callable[[str], bytes] | None = None
        """tts: content text → audio bytes; overrides :attr:`tts_audio`."""
        self.stt_delay = 0.0
        """Seconds a speech2text call takes (a session ending meanwhile cuts the stream)."""
        self.tts_delay = 0.0
        """Seconds a tts call takes in total, spread over its chunks."""
        self.permissions: dict[str, Any] | None = self._read_permissions()
        """The plugin manifest's ``resource.permission`` (None: not enforced)."""
        self._files: dict[str, _StoredFile] = {}
        self._upload_sessions: dict[str, str] = {}
        self._uploads: list[dict[str, Any]] = []
        self._upload_attempts: list[dict[str, Any]] = []
        self._upload_failures: list[list[int]] = []
        self._download_failures: list[list[int]] = []
        self._file_downloads: list[dict[str, Any]] = []
        self._stt_calls: list[dict[str, Any]] = []
        self._stt_failures: list[list[Any]] = []
        self._tts_calls: list[dict[str, Any]] = []
        self._tts_failures: list[list[Any]] = []

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
        ``cut`` (session ended mid-call), ``error``, ``chunks_sent``, ``answer``, ``files``
        (file dicts the answer carried), ``conversation_id_out``."""
        with self._lock:
            return list(self._app_calls)

    @property
    def uploads(self) -> list[dict[str, Any]]:
        """Successful uploads: ``id``, ``filename``, ``mimetype``, ``size``, ``content``,
        ``extension``, ``name``, ``preview_url``, ``session_id`` (of the ``upload_file`` call
        that signed the URL), ``at``."""
        with self._lock:
            return list(self._uploads)

    @property
    def upload_attempts(self) -> list[dict[str, Any]]:
        """Every POST to the upload URL: ``status``, ``reason``, ``filename``, ``mimetype``,
        ``size``, ``session_id``, ``at`` (``reason`` is "ok", "scripted", "no_file",
        "no_filename", "bad_signature", "expired", "too_large")."""
        with self._lock:
            return list(self._upload_attempts)

    @property
    def stt_calls(self) -> list[dict[str, Any]]:
        """speech2text calls: ``provider``, ``model``, ``model_type``, ``audio`` (bytes),
        ``session_id``, ``at``, ``ok``, ``result``, ``error`` (the cause), ``cut``."""
        with self._lock:
            return list(self._stt_calls)

    @property
    def tts_calls(self) -> list[dict[str, Any]]:
        """tts calls: ``provider``, ``model``, ``model_type``, ``voice``, ``content_text``,
        ``session_id``, ``at``, ``ok``, ``audio`` (the bytes sent), ``chunks_sent``,
        ``error`` (the cause), ``cut``."""
        with self._lock:
            return list(self._tts_calls)

    @property
    def file_downloads(self) -> list[dict[str, Any]]:
        """GETs of ``/files/tools/…``: ``file_id``, ``status``, ``as_attachment``, ``size``,
        ``at``."""
        with self._lock:
            return list(self._file_downloads)

    def hosted_file(self, file_id: str) -> dict[str, Any] | None:
        """A stored tool file (uploaded or hosted): ``id``, ``name``, ``mimetype``,
        ``extension``, ``content``, ``origin`` ("upload"/"hosted"); None if unknown."""
        with self._lock:
            f = self._files.get(file_id)
        if f is None:
            return None
        return {
            "id": f.id,
            "name": f.name,
            "mimetype": f.mimetype,
            "extension": f.extension,
            "content": f.content,
            "origin": f.origin,
        }

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

    # ------------------------------------------------------------------ media scripting

    def fail_uploads(self, times: int = 1, status: int = 500) -> None:
        """Answer the next ``times`` POSTs to an upload URL with ``status`` (a Dify error
        JSON), before any other check."""
        with self._lock:
            self._upload_failures.append([times, status])

    def fail_file_downloads(self, times: int = 1, status: int = 500) -> None:
        """Answer the next ``times`` GETs of ``/files/tools/…`` with ``status``."""
        with self._lock:
            self._download_failures.append([times, status])

    def fail_stt(self, message: str = "speech2text model error", times: int = 1) -> None:
        """The next ``times`` speech2text calls fail in the model: the plugin gets an ``error``
        event "invoke speech2text model failed: request failed: <message>"."""
        with self._lock:
            self._stt_failures.append([times, message])

    def fail_tts(
        self, message: str = "tts model error", times: int = 1, after_chunks: int = 0
    ) -> None:
        """The next ``times`` tts calls fail after ``after_chunks`` chunks: an ``error`` event
        "read tts model failed: request failed: <message>" ends the stream."""
        with self._lock:
            self._tts_failures.append([times, message, after_chunks])

    @staticmethod
    def _take_script(scripts: list[list[Any]]) -> list[Any] | None:
        """Consume one use of the first script (caller holds the lock)."""
        if not scripts:
            return None
        script = scripts[0]
        script[0] -= 1
        if script[0] <= 0:
            scripts.pop(0)
        return script

    def _files_base(self) -> str:
        return self.daemon_url if self.files_url is None else self.files_url.rstrip("/")

    def file_url(self, file_id: str, *, as_attachment: bool = False, age: float = 0.0) -> str:
        """A signed URL of a stored file, as Dify's ``sign_tool_file`` makes it:
        ``{FILES_URL}/files/tools/<id><ext>?timestamp&nonce&sign``. ``age`` backdates the
        timestamp (``age > files_access_timeout`` gives an expired URL)."""
        with self._lock:
            stored = self._files.get(file_id)
        extension = stored.extension if stored is not None else ".bin"
        timestamp = str(int(time.time() - age))
        nonce = os.urandom(16).hex()
        sign = _sign(self.secret_key, f"file-preview|{file_id}|{timestamp}|{nonce}")
        url = f"{self._files_base()}/files/tools/{file_id}{extension}"
        url += f"?timestamp={timestamp}&nonce={nonce}&sign={sign}"
        return url + ("&as_attachment=true" if as_attachment else "")

    def _store_file(
        self, content: bytes, mimetype: str, filename: str | None, origin: str
    ) -> _StoredFile:
        """``ToolFileManager.create_file_by_raw``: extension from the MIME type, the name
        given (plus the extension when it has none) or ``<hex><ext>``."""
        extension = guess_extension(mimetype) or ".bin"
        unique = uuid.uuid4()
        if filename is None:
            name = f"{unique.hex}{extension}"
        else:
            name = filename if len(filename.split(".")) > 1 else f"{filename}{extension}"
        stored = _StoredFile(str(unique), name, mimetype, extension, bytes(content), origin)
        with self._lock:
            self._files[stored.id] = stored
        return stored

    def host_file(
        self,
        content: bytes,
        mimetype: str,
        filename: str | None = None,
        *,
        file_type: str | None = None,
    ) -> dict[str, Any]:
        """Register a file an app produced (a tool file) and return it as app outputs carry it.

        The dict is Dify's ``File.to_dict()`` (``api/core/file/models.py``) for a
        ``tool_file``: ``{"dify_model_identity": "__dify__file__", "id": None, "tenant_id",
        "type": "image"|"audio"|"video"|"document"|"custom", "transfer_method": "tool_file",
        "remote_url": None, "related_id": <tool file id>, "filename", "extension": ".png",
        "mime_type", "size", "url": <signed /files/tools/<id><ext> URL>}`` — ``id`` is the
        message-file id, None for files coming out of a node. Pass it in
        ``AppReply(files=[…])``; the emulator serves ``url`` (signed, valid
        :attr:`files_access_timeout` seconds from now) and records downloads.
        """
        stored = self._store_file(content, mimetype, filename, "hosted")
        return {
            "dify_model_identity": FILE_MODEL_IDENTITY,
            "id": None,
            "tenant_id": self.tenant_id,
            "type": file_type or dify_file_type(mimetype),
            "transfer_method": "tool_file",
            "remote_url": None,
            "related_id": stored.id,
            "filename": stored.name,
            "extension": stored.extension,
            "mime_type": mimetype,
            "size": len(stored.content),
            "url": self.file_url(stored.id),
        }

    def upload_url(self, filename: str, mimetype: str, *, age: float = 0.0) -> str:
        """A signed upload URL as Dify's ``get_signed_file_url_for_plugin`` makes it (what an
        ``upload_file`` invocation answers); ``age`` backdates it."""
        timestamp = str(int(time.time() - age))
        nonce = os.urandom(16).hex()
        message = (
            f"upload|{filename}|{mimetype}|{self.tenant_id}|{self.dify_user_id}|{timestamp}|{nonce}"
        )
        sign = _sign(self.secret_key, message)
        return (
            f"{self._files_base()}/files/upload/for-plugin?timestamp={timestamp}&nonce={nonce}"
            f"&sign={sign}&user_id={self.dify_user_id}&tenant_id={self.tenant_id}"
        )

    # ------------------------------------------------------------------ sessions for tests

    def open_session(self, method: str = "POST", path: str = "/test") -> str:
        """Open a live session without a front request (as if one were in flight) and return
        its id, for driving ``/backwards-invocation/transaction`` directly."""
        sess = _Session(str(uuid.uuid4()), method, path, -1)
        with self._lock:
            self._sessions[sess.id] = sess
        return sess.id

    def close_session(self, session_id: str, reason: str = "closed_by_test") -> None:
        """End a session (its running backwards streams are cut, later calls refused)."""
        with self._lock:
            sess = self._sessions.get(session_id)
        if sess is not None:
            self._end_session(sess, reason)

    def _read_permissions(self) -> dict[str, Any] | None:
        root = Path(self._plugin_dir) if self._plugin_dir is not None else REPO_ROOT
        try:
            return parse_manifest_permissions((root / "manifest.yaml").read_text("utf-8"))
        except OSError:
            return None

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
        elif split.path == "/files/upload/for-plugin" and h.command == "POST":
            self._files_upload(h, split.query)
        elif split.path.startswith("/files/tools/") and h.command in ("GET", "HEAD"):
            self._files_tool(h, split.path[len("/files/tools/") :], split.query)
        else:
            self._json_error(h, 404, -404, "not found")

    # ------------------------------------------------------------------ Dify's file server

    def _dify_error(self, h: _Handler, status: int, code: str, message: str) -> None:
        """Dify's JSON error body (``libs/external_api.py``)."""
        body = json.dumps({"code": code, "message": message, "status": status}).encode()
        self._simple(h, status, body, "application/json")

    def _verify(self, message: str, timestamp: str, sign: str) -> str | None:
        """None if ``sign`` is valid and fresh, else "bad_signature"/"expired"."""
        if not hmac.compare_digest(_sign(self.secret_key, message), sign):
            return "bad_signature"
        try:
            age = time.time() - int(timestamp)
        except ValueError:
            return "bad_signature"
        return "expired" if age > self.files_access_timeout else None

    def _read_upload(self, h: _Handler) -> bytes | None:
        """The request body, or None when it is larger than :data:`MAX_UPLOAD_READ`."""
        length = int(h.headers.get("Content-Length") or 0)
        if length > MAX_UPLOAD_READ:
            return None
        data = bytearray()
        while len(data) < length:
            got = h.rfile.read(min(length - len(data), 1 << 20))
            if not got:
                break
            data += got
        return bytes(data)

    def _files_upload(self, h: _Handler, raw_query: str) -> None:
        """``PluginUploadFileApi.post`` (``api/controllers/files/upload.py``)."""
        attempt: dict[str, Any] = {
            "at": time.monotonic(),
            "status": None,
            "reason": None,
            "filename": None,
            "mimetype": None,
            "size": None,
            "session_id": None,
        }
        with self._lock:
            self._upload_attempts.append(attempt)

        def answer(status: int, reason: str, code: str, message: str) -> None:
            attempt["status"], attempt["reason"] = status, reason
            self._dify_error(h, status, code, message)

        body = self._read_upload(h)
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        with self._lock:
            attempt["session_id"] = self._upload_sessions.get(query.get("nonce", ""))
            script = self._take_script(self._upload_failures)
        if body is None:
            h.close_connection = True
            answer(413, "too_large", "file_too_large", "File size exceeded.")
            return
        if script is not None:
            status = int(script[1])
            answer(status, "scripted", "internal_server_error", f"scripted failure ({status})")
            return
        part = parse_multipart(h.headers.get("Content-Type") or "", body).get("file")
        if part is None:
            answer(400, "no_file", "no_file_uploaded", "Please upload your file.")
            return
        filename, mimetype, content = part
        attempt.update(filename=filename, mimetype=mimetype, size=len(content))
        if not filename:
            answer(
                400, "no_filename", "filename_not_exists", "The specified filename does not exist."
            )
            return
        timestamp, nonce, sign = query.get("timestamp"), query.get("nonce"), query.get("sign")
        tenant_id, user_id = query.get("tenant_id"), query.get("user_id", "")
        if not tenant_id or not timestamp or not nonce or not sign:
            answer(403, "bad_signature", "forbidden", "Invalid request.")
            return
        problem = self._verify(
            f"upload|{filename}|{mimetype}|{tenant_id}|{user_id}|{timestamp}|{nonce}",
            timestamp,
            sign,
        )
        if problem is not None:
            answer(403, problem, "forbidden", "Invalid request.")
            return
        if len(content) > self.upload_limit_bytes:
            limit_mb = self.upload_limit_bytes / (1024 * 1024)
            answer(
                413,
                "too_large",
                "file_too_large",
                f"File size exceeded. File size exceeded {limit_mb:g}MB.",
            )
            return
        stored = self._store_file(content, mimetype, filename, "upload")
        preview_url = self.file_url(stored.id)
        result = {
            "id": stored.id,
            "name": stored.name,
            "size": len(content),
            "extension": stored.extension,
            "mime_type": mimetype,
            "created_by": None,
            "created_at": None,
            "preview_url": preview_url,
            "source_url": None,
            "original_url": None,
            "user_id": user_id,
            "tenant_id": tenant_id,
            "conversation_id": None,
            "file_key": f"tools/{tenant_id}/{uuid.UUID(stored.id).hex}{stored.extension}",
        }
        with self._lock:
            self._uploads.append(
                {
                    "id": stored.id,
                    "filename": filename,
                    "mimetype": mimetype,
                    "size": len(content),
                    "content": content,
                    "extension": stored.extension,
                    "name": stored.name,
                    "preview_url": preview_url,
                    "session_id": attempt["session_id"],
                    "at": time.monotonic(),
                }
            )
        attempt["status"], attempt["reason"] = 201, "ok"
        self._simple(h, 201, json.dumps(result).encode(), "application/json")

    def _files_tool(self, h: _Handler, name: str, raw_query: str) -> None:
        """``ToolFilePreviewApi.get`` (``api/controllers/files/tool_files.py``)."""
        file_id, dot, _extension = name.partition(".")
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        record: dict[str, Any] = {
            "file_id": file_id,
            "status": None,
            "as_attachment": query.get("as_attachment", "").lower() in ("true", "1"),
            "size": 0,
            "at": time.monotonic(),
        }
        with self._lock:
            self._file_downloads.append(record)
            script = self._take_script(self._download_failures)
        try:
            uuid.UUID(file_id)
            valid_route = bool(dot)
        except ValueError:
            valid_route = False
        if not valid_route:  # Flask: /files/tools/<uuid:file_id>.<string:extension>
            record["status"] = 404
            self._dify_error(h, 404, "not_found", "The requested URL was not found on the server.")
            return
        if script is not None:
            record["status"] = int(script[1])
            self._dify_error(h, int(script[1]), "internal_server_error", "scripted failure")
            return
        timestamp, nonce, sign = query.get("timestamp"), query.get("nonce"), query.get("sign")
        if not timestamp or not nonce or not sign:
            record["status"] = 400
            missing = next(k for k in ("timestamp", "nonce", "sign") if not query.get(k))
            body = {"message": {missing: "Missing required parameter in the query string"}}
            self._simple(h, 400, json.dumps(body).encode(), "application/json")
            return
        if self._verify(f"file-preview|{file_id}|{timestamp}|{nonce}", timestamp, sign):
            record["status"] = 403
            self._dify_error(h, 403, "forbidden", "Invalid request.")
            return
        with self._lock:
            stored = self._files.get(file_id)
        if stored is None:  # NotFound inside the try → UnsupportedFileTypeError
            record["status"] = 415
            self._dify_error(h, 415, "unsupported_file_type", "File type not allowed.")
            return
        record["status"], record["size"] = 200, len(stored.content)
        try:
            h.send_response(200)
            h.send_header("Content-Type", stored.mimetype)
            h.send_header("Content-Length", str(len(stored.content)))
            if record["as_attachment"]:
                h.send_header(
                    "Content-Disposition", f"attachment; filename*=UTF-8''{quote(stored.name)}"
                )
            h.send_header("Connection", "close")
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(stored.content)
        except OSError:
            pass
        h.close_connection = True

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
        denied = self._permission_error(invoke_type)
        if denied is not None:
            stream.error(denied)
        elif invoke_type == "storage":
            self._bw_storage(sess, stream, request)
        elif invoke_type == "app":
            self._bw_app(sess, stream, request)
        elif invoke_type == "fetch_app":
            self._bw_fetch_app(stream, request)
        elif invoke_type == "upload_file":
            self._bw_upload_file(sess, stream, request)
        elif invoke_type == "speech2text":
            self._bw_speech2text(sess, stream, request)
        elif invoke_type == "tts":
            self._bw_tts(sess, stream, request)
        else:
            stream.error(f"unsupported invoke type: {invoke_type}")
        if not stream.broken:
            stream.end()

    def _permission_error(self, invoke_type: str) -> str | None:
        """``task.go`` ``checkPermission`` against the manifest's ``resource.permission``."""
        perms = self.permissions
        rule = _PERMISSIONS.get(invoke_type)
        if perms is None or rule is None:
            return None
        for section, flag in rule:
            block = perms.get(section)
            if not isinstance(block, Mapping) or block.get(flag) is not True:
                name = _PERMISSION_NAMES[invoke_type]
                return f"permission denied, you need to enable {name} access in plugin manifest"
        return None

    def _cut(self, stream: _BackwardsStream) -> None:
        """The session ended while a backwards stream was running: cut it (see cut_mode)."""
        if self.cut_mode == "abort":
            stream.abort()
        else:
            stream.end()
            stream.broken = True

    def _model_problem(self, provider: str, model: str, model_type: str) -> str | None:
        """Why Dify could not get a model instance (``ModelManager.get_model_instance``)."""
        wanted = (_normalize_provider(provider), model, model_type)
        known = {(_normalize_provider(p), m, t) for p, m, t in set(self.models)}
        if wanted in known:
            return None
        if not provider:
            return f"Default model not found for {model_type}"
        if not any(p == wanted[0] for p, _, _ in known):
            return f"Provider {provider} does not exist."
        return f"Model {model} credentials is not initialized."

    def _bw_upload_file(
        self, sess: _Session, stream: _BackwardsStream, req: Mapping[str, Any]
    ) -> None:
        """``executeDifyInvocationUploadFileTask``: Dify signs an upload URL."""
        filename = req.get("filename")
        mimetype = req.get("mimetype")
        if not isinstance(filename, str) or not filename:
            stream.error("unmarshal backwards invoke request failed: filename is required")
            return
        if not isinstance(mimetype, str) or not mimetype:
            stream.error("unmarshal backwards invoke request failed: mimetype is required")
            return
        url = self.upload_url(filename, mimetype)
        nonce = dict(parse_qsl(urlsplit(url).query)).get("nonce", "")
        with self._lock:
            self._upload_sessions[nonce] = sess.id
        stream.send("response", {"url": url})

    def _bw_speech2text(
        self, sess: _Session, stream: _BackwardsStream, req: Mapping[str, Any]
    ) -> None:
        """``executeDifyInvocationSpeech2TextTask`` + Dify ``invoke_speech2text``."""
        provider = str(req.get("provider") or "")
        model = str(req.get("model") or "")
        model_type = str(req.get("model_type") or "")
        record: dict[str, Any] = {
            "session_id": sess.id,
            "provider": provider,
            "model": model,
            "model_type": model_type,
            "audio": b"",
            "at": time.monotonic(),
            "ok": False,
            "result": None,
            "error": None,
            "cut": False,
        }
        with self._lock:
            self._stt_calls.append(record)

        def fail(cause: str) -> None:
            record["error"] = cause
            stream.error(f"invoke speech2text model failed: request failed: {cause}")

        try:
            audio = bytes.fromhex(str(req.get("file") or ""))
        except ValueError:
            fail("Non-hexadecimal digit found")
            return
        record["audio"] = audio
        problem = self._model_problem(provider, model, model_type or "speech2text")
        if problem is None and model_type != "speech2text":
            problem = "Model type instance is not Speech2TextModel"
        if problem is not None:
            fail(problem)
            return
        if self.stt_delay > 0 and sess.closed.wait(self.stt_delay):
            record["cut"] = True
            self._cut(stream)
            return
        with self._lock:
            script = self._take_script(self._stt_failures)
        if script is not None:
            fail(str(script[1]))
            return
        try:
            text = self.transcriber(audio)
        except Exception as exc:
            fail(str(exc) or type(exc).__name__)
            return
        record["ok"], record["result"] = True, text
        stream.send("response", {"result": text})

    def _bw_tts(self, sess: _Session, stream: _BackwardsStream, req: Mapping[str, Any]) -> None:
        """``executeDifyInvocationTTSTask`` + Dify ``invoke_tts`` (one chunk per event)."""
        provider = str(req.get("provider") or "")
        model = str(req.get("model") or "")
        model_type = str(req.get("model_type") or "")
        content_text = str(req.get("content_text") or "")
        record: dict[str, Any] = {
            "session_id": sess.id,
            "provider": provider,
            "model": model,
            "model_type": model_type,
            "voice": req.get("voice"),
            "content_text": content_text,
            "at": time.monotonic(),
            "ok": False,
            "audio": b"",
            "chunks_sent": 0,
            "error": None,
            "cut": False,
        }
        with self._lock:
            self._tts_calls.append(record)
        problem = self._model_problem(provider, model, model_type or "tts")
        if problem is None and model_type != "tts":
            problem = "Model type instance is not TTSModel"
        if problem is not None:
            # Dify's TTS controller gets the model before streaming: the error is a 500
            record["error"] = problem
            body = json.dumps(_SERVER_ERROR)
            stream.error(
                "invoke tts model failed: request failed with status code: 500 "
                f"and respond with: {body}"
            )
            return
        with self._lock:
            script = self._take_script(self._tts_failures)
        fail_after = int(script[2]) if script is not None else -1
        try:
            audio = self.synthesizer(content_text) if self.synthesizer else self.tts_audio
        except Exception as exc:
            script, fail_after = [0, str(exc) or type(exc).__name__, 0], 0
            audio = b""
        n = max(1, min(self.tts_chunks, len(audio))) if audio else 0
        size, rest = divmod(len(audio), n) if n else (0, 0)
        chunks: list[bytes] = []
        pos = 0
        for i in range(n):
            step = size + (1 if i < rest else 0)
            chunks.append(audio[pos : pos + step])
            pos += step
        per_chunk = self.tts_delay / n if n else self.tts_delay
        for i, chunk in enumerate([*chunks, None]):
            if script is not None and i == fail_after:
                record["error"] = str(script[1])
                stream.error(f"read tts model failed: request failed: {script[1]}")
                return
            if chunk is None:
                break
            if per_chunk > 0 and sess.closed.wait(per_chunk):
                record["cut"] = True
                self._cut(stream)
                return
            if not stream.send("response", {"result": chunk.hex()}):
                return
            record["chunks_sent"] += 1
            record["audio"] += chunk
        if n == 0 and self.tts_delay > 0 and sess.closed.wait(self.tts_delay):
            record["cut"] = True
            self._cut(stream)
            return
        record["ok"] = True

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
        """``executeDifyInvocationFetchAppTask``: the bare parameters (see module doc)."""
        app_id = req.get("app_id")
        if not app_id or (self.app.app_id is not None and app_id != self.app.app_id):
            # Dify raises "app not found" → HTTP 500 without "data" → the daemon's message
            stream.error("fetch app failed: data is nil")
            return
        stream.send("response", json.loads(json.dumps(self.app.parameters)))

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
            "files": [],
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
        call["files"] = plan.files
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
