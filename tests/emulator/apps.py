"""Scripted Dify apps: what the daemon emulator answers to ``session.app.*.invoke``.

Emulates the Dify API side of an app backwards invocation, i.e. what the plugin receives
through the daemon:

- Dify ``api/core/plugin/backwards_invocation/app.py``
  (``PluginAppBackwardsInvocation.invoke_app``): the *app's* mode decides the behaviour,
  not the SDK method that was called; chat modes
  (``chat``, ``advanced-chat``, ``agent-chat``) need a non-empty ``query`` ("missing query");
  ``workflow`` and ``completion`` ignore ``query`` and ``conversation_id``; an unknown app id
  is "app not found".
- Dify ``AgentChatAppGenerator`` rejects blocking mode; ``ConversationService`` raises
  "Conversation Not Exists." for an id it did not create.
- Daemon ``internal/core/io_tunnel/backwards_invocation/task.go``
  (``executeDifyInvocationAppTask``): every streamed chunk is one ``response`` event whose
  ``data`` is the chunk dict; a failure before the stream is one ``error`` event
  ("invoke app failed: …"), which the SDK (``core/runtime.py`` ``_line_converter_wrapper``)
  raises as a plain ``Exception``.

Chunk shapes follow the Dify service API streaming events (see
``/work/shared/reference/dify-plugin-runtime.md`` §4): chat chunks carry ``conversation_id``
and ``message_id`` on every chunk; workflow apps stream ``text_chunk`` (``data.text``) and end
with ``workflow_finished`` (``data.outputs``, ``data.status``).

This module is pure stdlib and knows nothing about HTTP: :class:`ScriptedApp.plan` turns one
request into an :class:`AppPlan` (timed chunks or one blocking result) and the daemon emulator
plays it out, honouring the session lifetime rule.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

AppMode = Literal["chat", "advanced-chat", "agent-chat", "workflow", "completion"]

CHAT_MODES: frozenset[str] = frozenset({"chat", "advanced-chat", "agent-chat"})
ALL_MODES: frozenset[str] = CHAT_MODES | {"workflow", "completion"}

DEFAULT_APP_ID = "app-test-1"
"""The app id the default test settings select (``settings["app"]["app_id"]``)."""

DEFAULT_PARAMETERS: dict[str, Any] = {
    "user_input_form": [],
    "file_upload": {},
    "opening_statement": "",
}
"""What ``session.app.fetch_app(app_id)`` returns unless the test configures otherwise."""

# Terminal events: dropped when the script ends the stream with an error chunk instead.
_TERMINAL_EVENTS = frozenset({"message_end", "workflow_finished", "node_finished"})


@dataclass(frozen=True)
class AppRequest:
    """One app invocation as the scripted app sees it (what the plugin sent, plus history)."""

    app_id: str
    query: str | None
    inputs: Mapping[str, Any]
    response_mode: str
    conversation_id: str | None
    user: str | None
    mode: str
    history: tuple[tuple[str, str], ...] = ()
    """Earlier ``(query, answer)`` turns of this conversation (chat modes only)."""
    raw: Mapping[str, Any] = field(default_factory=dict)
    """The request dict exactly as the plugin sent it."""


Responder = Callable[[AppRequest], "str | BaseException"]


class AppInvocationError(Exception):
    """The invocation fails before any chunk: the daemon answers one ``error`` event."""


@dataclass
class AppPlan:
    """What the app sends for one invocation, with times relative to the call's start."""

    events: list[tuple[float, dict[str, Any]]]
    """Streaming: ``(seconds after start, chunk)`` in order."""
    blocking_at: float
    """Blocking: when the single result (or error) is sent."""
    blocking_result: dict[str, Any] | None
    blocking_error: str | None
    conversation_id: str | None
    answer: str | None


def _split(text: str, parts: int) -> list[str]:
    """Split ``text`` into at most ``parts`` non-empty deltas (one empty delta for "")."""
    if not text:
        return [""]
    parts = max(1, min(parts, len(text)))
    size, rest = divmod(len(text), parts)
    out: list[str] = []
    pos = 0
    for i in range(parts):
        n = size + (1 if i < rest else 0)
        out.append(text[pos : pos + n])
        pos += n
    return out


class ScriptedApp:
    """A Dify app the test scripts: mode, answer, timing, failures, conversations.

    ``respond`` is a fixed text or a function ``(AppRequest) -> str | Exception``; a returned
    (or raised) exception makes the *generation* fail: streaming → an ``error`` chunk at
    ``latency``; blocking → an ``error`` event (the SDK raises). ``latency`` is the time until
    the answer is complete; the answer is streamed in ``chunks`` deltas spread evenly over it.
    ``error_after`` (seconds) ends the stream with an ``{"event": "error", "code", "message",
    "status"}`` chunk at that time, after whatever deltas came before it (blocking: an error
    event at that time). ``invoke_error`` makes every invocation fail up front (like a Dify
    API 4xx/5xx). ``app_id``: when set, calls for another app id fail with "app not found".

    Thread-safe: several plugin processes may call it at once.
    """

    def __init__(
        self,
        mode: AppMode = "chat",
        respond: Responder | str = "ok",
        latency: float = 0.0,
        *,
        chunks: int = 3,
        error_after: float | None = None,
        error_code: str = "internal_server_error",
        error_message: str = "scripted app error",
        error_status: int = 500,
        invoke_error: str | None = None,
        app_id: str | None = DEFAULT_APP_ID,
        parameters: Mapping[str, Any] | None = None,
        workflow_output_key: str = "text",
    ) -> None:
        if mode not in ALL_MODES:
            raise ValueError(f"unknown app mode {mode!r}")
        self.mode: str = mode
        self.respond: Responder | str = respond
        self.latency = latency
        self.chunks = chunks
        self.error_after = error_after
        self.error_code = error_code
        self.error_message = error_message
        self.error_status = error_status
        self.invoke_error = invoke_error
        self.app_id = app_id
        self.parameters: dict[str, Any] = dict(
            DEFAULT_PARAMETERS if parameters is None else parameters
        )
        self.workflow_output_key = workflow_output_key
        self.conversations: dict[str, list[tuple[str, str]]] = {}
        self._lock = threading.Lock()

    @classmethod
    def echo(cls, mode: AppMode = "chat", latency: float = 0.0, **kwargs: Any) -> ScriptedApp:
        """An app answering ``echo: <query>`` (workflow/completion: ``inputs["query"]``)."""

        def _echo(req: AppRequest) -> str:
            q = req.query if req.query else req.inputs.get("query", "")
            return f"echo: {q}"

        return cls(mode, _echo, latency, **kwargs)

    # ------------------------------------------------------------------ conversations

    def history(self, conversation_id: str) -> list[tuple[str, str]]:
        """The ``(query, answer)`` turns of one conversation, oldest first."""
        with self._lock:
            return list(self.conversations.get(conversation_id, []))

    def new_conversation(self) -> str:
        """Create an (empty) conversation, as if a user had talked before; returns its id."""
        cid = str(uuid.uuid4())
        with self._lock:
            self.conversations[cid] = []
        return cid

    # ------------------------------------------------------------------ planning

    def _answer(self, req: AppRequest) -> str | BaseException:
        if isinstance(self.respond, str):
            return self.respond
        try:
            return self.respond(req)
        except Exception as exc:  # the script "fails" by raising, too
            return exc

    def plan(self, request: Mapping[str, Any]) -> AppPlan:
        """Validate one invocation like Dify does and compute what to send.

        Raises :class:`AppInvocationError` for failures before the stream starts.
        """
        app_id = str(request.get("app_id") or "")
        query = request.get("query")
        inputs = request.get("inputs") or {}
        response_mode = str(request.get("response_mode") or "blocking")
        conversation_id = request.get("conversation_id") or None
        user = request.get("user")
        chat = self.mode in CHAT_MODES

        if self.app_id is not None and app_id != self.app_id:
            raise AppInvocationError("app not found")
        if self.invoke_error is not None:
            raise AppInvocationError(self.invoke_error)
        if response_mode not in ("streaming", "blocking"):
            raise AppInvocationError(f"invalid response_mode {response_mode!r}")
        if chat and not query:
            raise AppInvocationError("missing query")
        if self.mode == "agent-chat" and response_mode == "blocking":
            raise AppInvocationError("Agent Chat App does not support blocking mode")

        with self._lock:
            if chat:
                if conversation_id is not None:
                    if conversation_id not in self.conversations:
                        raise AppInvocationError("Conversation Not Exists.")
                else:
                    conversation_id = str(uuid.uuid4())
                    self.conversations[conversation_id] = []
                history = tuple(self.conversations[conversation_id])
            else:
                conversation_id = None
                history = ()

        req = AppRequest(
            app_id=app_id,
            query=str(query) if query is not None else None,
            inputs=dict(inputs),
            response_mode=response_mode,
            conversation_id=conversation_id,
            user=user,
            mode=self.mode,
            history=history,
            raw=dict(request),
        )
        answer = self._answer(req)
        if chat and conversation_id is not None and isinstance(answer, str):
            with self._lock:
                self.conversations[conversation_id].append((str(query), answer))
        return self._build_plan(req, answer)

    def _build_plan(self, req: AppRequest, answer: str | BaseException) -> AppPlan:
        now = int(time.time())
        task_id = str(uuid.uuid4())
        message_id = str(uuid.uuid4())
        run_id = str(uuid.uuid4())
        cid = req.conversation_id
        lat = max(0.0, self.latency)
        failed = isinstance(answer, BaseException)
        text = "" if isinstance(answer, BaseException) else answer
        deltas = _split(text, self.chunks)
        times = [lat * (i + 1) / len(deltas) for i in range(len(deltas))]

        def chat_base(event: str) -> dict[str, Any]:
            d: dict[str, Any] = {
                "event": event,
                "task_id": task_id,
                "id": message_id,
                "message_id": message_id,
                "created_at": now,
            }
            if cid is not None:
                d["conversation_id"] = cid
            return d

        def wf_base(event: str, data: dict[str, Any]) -> dict[str, Any]:
            d: dict[str, Any] = {"event": event, "task_id": task_id, "workflow_run_id": run_id}
            if cid is not None:
                d["conversation_id"] = cid
                d["message_id"] = message_id
            d["data"] = data
            return d

        outputs_key = "answer" if self.mode == "advanced-chat" else self.workflow_output_key
        wf_started = wf_base(
            "workflow_started", {"id": run_id, "workflow_id": "wf-1", "created_at": now}
        )
        node_started = wf_base(
            "node_started", {"id": "n-1", "node_id": "llm", "node_type": "llm", "title": "LLM"}
        )
        node_finished = wf_base(
            "node_finished",
            {"id": "n-1", "node_id": "llm", "node_type": "llm", "status": "succeeded"},
        )
        wf_finished = wf_base(
            "workflow_finished",
            {
                "id": run_id,
                "workflow_id": "wf-1",
                "status": "succeeded",
                "outputs": {outputs_key: text},
                "error": None,
                "elapsed_time": lat,
                "total_tokens": 0,
                "total_steps": 3,
                "created_at": now,
                "finished_at": now + int(lat),
            },
        )
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        message_end = {**chat_base("message_end"), "metadata": {"usage": usage}, "files": []}

        events: list[tuple[float, dict[str, Any]]] = []
        if self.mode == "workflow":
            events.append((0.0, wf_started))
            events.append((0.0, node_started))
            for t, d in zip(times, deltas, strict=True):
                chunk = wf_base(
                    "text_chunk", {"text": d, "from_variable_selector": ["llm", "text"]}
                )
                events.append((t, chunk))
            events.append((lat, node_finished))
            events.append((lat, wf_finished))
        elif self.mode == "agent-chat":
            thought_id = str(uuid.uuid4())
            thought = {
                **chat_base("agent_thought"),
                "id": thought_id,
                "position": 1,
                "thought": "",
                "observation": "",
                "tool": "",
                "tool_input": "",
                "message_files": [],
            }
            events.append((0.0, thought))
            for t, d in zip(times, deltas, strict=True):
                events.append((t, {**chat_base("agent_message"), "answer": d}))
            events.append((lat, {**thought, "thought": text}))
            events.append((lat, message_end))
        else:  # chat, advanced-chat, completion
            if self.mode == "advanced-chat":
                events.append((0.0, wf_started))
                events.append((0.0, node_started))
            for t, d in zip(times, deltas, strict=True):
                events.append((t, {**chat_base("message"), "answer": d}))
            if self.mode == "advanced-chat":
                events.append((lat, node_finished))
                events.append((lat, wf_finished))
            events.append((lat, message_end))

        blocking_error: str | None = None
        blocking_at = lat
        if failed:
            msg = str(answer) or type(answer).__name__
            events = [(t, c) for t, c in events if t <= 0.0 and c["event"] not in _TERMINAL_EVENTS]
            events.append((lat, self._error_chunk(chat_base("error"), msg)))
            blocking_error = msg
        elif self.error_after is not None:
            cut = max(0.0, self.error_after)
            events = [(t, c) for t, c in events if t < cut and c["event"] not in _TERMINAL_EVENTS]
            events.append((cut, self._error_chunk(chat_base("error"), self.error_message)))
            blocking_error = self.error_message
            blocking_at = cut

        blocking_result: dict[str, Any] | None = None
        if blocking_error is None:
            if self.mode == "workflow":
                blocking_result = {
                    "task_id": task_id,
                    "workflow_run_id": run_id,
                    "data": wf_finished["data"],
                }
            else:
                blocking_result = {
                    **chat_base("message"),
                    "mode": self.mode,
                    "answer": text,
                    "metadata": {"usage": usage},
                }
        return AppPlan(
            events=events,
            blocking_at=blocking_at,
            blocking_result=blocking_result,
            blocking_error=blocking_error,
            conversation_id=cid,
            answer=None if failed else text,
        )

    def _error_chunk(self, base: dict[str, Any], message: str) -> dict[str, Any]:
        return {
            **base,
            "event": "error",
            "code": self.error_code,
            "message": message,
            "status": self.error_status,
        }
