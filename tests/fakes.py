"""Test doubles for what the pipeline gets from Dify: storage, the app, a clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class MemoryStorage:
    """Behaves like ``session.storage``: bytes only, ``get`` of a missing key raises."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes:
        with self._lock:
            self.calls.append(("get", key))
            if key not in self.data:
                raise Exception("key not found")
            return self.data[key]

    def set(self, key: str, val: bytes) -> None:
        assert isinstance(val, bytes)
        assert len(key) <= 256 and ".." not in key and "//" not in key
        with self._lock:
            self.calls.append(("set", key))
            self.data[key] = val

    def delete(self, key: str) -> None:
        with self._lock:
            self.calls.append(("del", key))
            self.data.pop(key, None)

    def exist(self, key: str) -> bool:
        return key in self.data

    @property
    def writes(self) -> list[str]:
        return [key for op, key in self.calls if op in ("set", "del")]


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def chat_chunks(answer: str, conversation_id: str = "conv-1") -> list[dict[str, Any]]:
    pieces = [answer[i : i + 5] for i in range(0, len(answer), 5)] or [""]
    chunks: list[dict[str, Any]] = [
        {"event": "message", "answer": p, "conversation_id": conversation_id} for p in pieces
    ]
    chunks.append({"event": "message_end", "conversation_id": conversation_id})
    return chunks


class ScriptedCaller:
    """An ``AppCaller`` that records calls and replays chunks (or raises)."""

    def __init__(
        self,
        respond: Callable[[dict[str, Any]], Iterable[Any]] | None = None,
        delay: float = 0.0,
    ) -> None:
        self.calls: list[dict[str, Any]] = []
        self._respond = respond or (lambda call: chat_chunks(f"echo: {call['query']}"))
        self._delay = delay

    def __call__(
        self,
        app_id: str,
        query: str,
        inputs: dict[str, Any],
        conversation_id: str | None,
        user: str,
    ) -> Iterator[Any]:
        call = {
            "app_id": app_id,
            "query": query,
            "inputs": inputs,
            "conversation_id": conversation_id,
            "user": user,
        }
        self.calls.append(call)
        if self._delay:
            time.sleep(self._delay)
        return iter(self._respond(call))


# --- Dify services and hosted files (rich conversations) --------------------------------

from collections.abc import Mapping  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402


def app_parameters(
    inputs: dict[str, str] | None = None, opening_statement: str = ""
) -> dict[str, Any]:
    """What ``session.app.fetch_app`` answers: ``{"data": <app parameters>}``.

    ``inputs`` maps variable → form type ("text-input", "file", "file-list", …)."""
    form = [
        {kind: {"variable": variable, "label": variable, "required": False}}
        for variable, kind in (inputs or {}).items()
    ]
    return {"data": {"opening_statement": opening_statement, "user_input_form": form}}


class FakeServices:
    """A ``DifyServices`` that records every call; failures are scripted per service.

    ``fail("upload_file", RuntimeError("quota"), times=1)`` makes the next call raise;
    ``times=None`` makes every call raise until :meth:`heal`.
    """

    SERVICES = ("upload_file", "speech_to_text", "text_to_speech", "fetch_app")

    def __init__(
        self,
        *,
        parameters: Any = None,
        transcript: str = "今天天气怎么样",
        speech: bytes = b"",
    ) -> None:
        self.parameters: Any = app_parameters() if parameters is None else parameters
        self.transcript = transcript
        self.speech = speech
        self.uploads: list[tuple[str, bytes, str]] = []
        self.transcriptions: list[tuple[dict[str, Any], bytes]] = []
        self.speeches: list[tuple[dict[str, Any], str]] = []
        self.fetches: list[str] = []
        self._failures: dict[str, tuple[BaseException, int | None]] = {}
        self._lock = threading.Lock()

    def fail(self, service: str, exc: BaseException | None = None, times: int | None = 1) -> None:
        assert service in self.SERVICES, service
        with self._lock:
            self._failures[service] = (exc or RuntimeError(f"{service} failed"), times)

    def heal(self, service: str | None = None) -> None:
        with self._lock:
            if service is None:
                self._failures.clear()
            else:
                self._failures.pop(service, None)

    def _maybe_fail(self, service: str) -> None:
        with self._lock:
            scripted = self._failures.get(service)
            if scripted is None:
                return
            exc, times = scripted
            if times is not None:
                if times <= 1:
                    del self._failures[service]
                else:
                    self._failures[service] = (exc, times - 1)
        raise exc

    def upload_file(self, filename: str, content: bytes, mimetype: str) -> dict[str, Any]:
        with self._lock:
            self.uploads.append((filename, content, mimetype))
            number = len(self.uploads)
        self._maybe_fail("upload_file")
        kind = mimetype.partition("/")[0]
        return {
            "tool_file_id": f"file-{number}",
            "transfer_method": "tool_file",
            "type": kind if kind in ("image", "video", "audio") else "document",
        }

    def speech_to_text(self, model: Mapping[str, Any], audio: bytes) -> str:
        with self._lock:
            self.transcriptions.append((dict(model), audio))
        self._maybe_fail("speech_to_text")
        return self.transcript

    def text_to_speech(self, model: Mapping[str, Any], text: str) -> bytes:
        with self._lock:
            self.speeches.append((dict(model), text))
        self._maybe_fail("text_to_speech")
        return self.speech

    def fetch_app(self, app_id: str) -> Mapping[str, Any]:
        with self._lock:
            self.fetches.append(app_id)
        self._maybe_fail("fetch_app")
        return self.parameters


class FileHost:
    """A loopback HTTP server for files the app returns or WeChat's ``PicUrl`` points at.

    ``add(path, content, content_type)`` serves a file; ``status`` answers with an HTTP
    error; ``chunked=True`` sends no Content-Length (the body ends with the connection).
    Every requested path (with its query) is recorded in :attr:`requests`.
    """

    def __init__(self) -> None:
        self.files: dict[str, tuple[int, bytes, str, bool, int | None]] = {}
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add(
        self,
        path: str,
        content: bytes,
        content_type: str = "image/png",
        *,
        status: int = 200,
        chunked: bool = False,
        declared_length: int | None = None,
    ) -> str:
        """Serve ``content`` at ``path`` (query ignored); returns the full URL of ``path``.
        ``declared_length`` is a Content-Length to claim instead of the real one."""
        with self._lock:
            self.files[path.partition("?")[0]] = (
                status,
                content,
                content_type,
                chunked,
                declared_length,
            )
        return self.url(path)

    def url(self, path: str) -> str:
        assert self._server is not None, "start the host first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def _answer(self, target: str) -> tuple[int, bytes, str, bool, int | None]:
        with self._lock:
            self.requests.append(target)
            return self.files.get(
                target.partition("?")[0], (404, b"not found", "text/plain", False, None)
            )

    def start(self) -> FileHost:
        host = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10

            def do_GET(self) -> None:
                status, content, content_type, chunked, declared = host._answer(self.path)
                try:
                    self.send_response(status)
                    if content_type:
                        self.send_header("Content-Type", content_type)
                    if chunked:
                        self.send_header("Connection", "close")
                    else:
                        length = len(content) if declared is None else declared
                        self.send_header("Content-Length", str(length))
                    self.end_headers()
                    self.wfile.write(content)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading (a size limit)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FileHost:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


from endpoints.wechat.inbound_media import Download, TooLarge  # noqa: E402


class Fetcher:
    """Stands in for ``inbound_media.fetch_url``: answers per URL, records ``(url, limit)``."""

    def __init__(self, answers: dict[str, Download | BaseException] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[str, int]] = []

    def __call__(self, url: str, limit: int) -> Download:
        self.calls.append((url, limit))
        answer = self.answers.get(url, OSError("HTTP 404"))
        if isinstance(answer, BaseException):
            raise answer
        if len(answer.content) > limit:
            raise TooLarge
        return answer
