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

**Files in answers** (:class:`AppReply`; file dicts come from
:meth:`~tests.emulator.daemon.DaemonEmulator.host_file`, shaped like Dify's ``File.to_dict()``
in ``api/core/file/models.py``). What each mode emits, as read in Dify's task pipelines:

- ``chat`` / ``completion`` (``easy_ui_based_generate_task_pipeline.py``
  ``_message_file_to_stream_response``): one ``message_file`` chunk per file,
  ``{"event": "message_file", "id": <message file id>, "type": "image", "belongs_to":
  "assistant", "url": <signed /files/tools/<id><ext> URL>}`` plus ``conversation_id``,
  ``message_id``, ``created_at``, ``task_id`` (the service API converter adds them to every
  chunk); sent after the answer deltas, before ``message_end``. (A plain chat app only gets
  files from tools/plugins; the emulator allows it anyway.)
- ``agent-chat``: the same ``message_file`` chunks, right after the tool's ``agent_thought``
  and before the answer deltas (the agent runner publishes a tool's files as it gets them);
  the final ``agent_thought`` lists their ids in ``message_files``.
- ``advanced-chat`` (``advanced_chat/generate_task_pipeline.py``): **no** ``message_file``
  events — the files recorded from Answer/End/LLM node outputs go into ``message_end.files``
  and into ``workflow_finished.data.outputs[files_output_key]`` (default ``"files"``) and
  ``data.files``.
- ``workflow``: ``workflow_finished.data.outputs[files_output_key]`` (a list of file dicts) and
  ``data.files``; no ``message_file`` events.
- ``AppReply(markdown=True)``: the answer text also carries each file as markdown
  (``![name](url)`` for images, ``[name](url)`` otherwise — ``File.markdown``), as an Answer
  node that references a file variable renders it.

This module is pure stdlib and knows nothing about HTTP: :class:`ScriptedApp.plan` turns one
request into an :class:`AppPlan` (timed chunks or one blocking result) and the daemon emulator
plays it out, honouring the session lifetime rule.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

AppMode = Literal["chat", "advanced-chat", "agent-chat", "workflow", "completion"]

CHAT_MODES: frozenset[str] = frozenset({"chat", "advanced-chat", "agent-chat"})
ALL_MODES: frozenset[str] = CHAT_MODES | {"workflow", "completion"}

DEFAULT_APP_ID = "app-test-1"
"""The app id the default test settings select (``settings["app"]["app_id"]``)."""

DEFAULT_FILE_NUMBER_LIMITS = 3
"""Dify ``constants.DEFAULT_FILE_NUMBER_LIMITS``."""

DEFAULT_SYSTEM_PARAMETERS: dict[str, int] = {
    "image_file_size_limit": 10,
    "video_file_size_limit": 100,
    "audio_file_size_limit": 50,
    "file_size_limit": 15,
    "workflow_file_upload_limit": 10,
}
"""Dify's default ``UPLOAD_*_FILE_SIZE_LIMIT`` (MB) and ``WORKFLOW_FILE_UPLOAD_LIMIT``."""


def app_parameters(
    *,
    user_input_form: Sequence[Mapping[str, Any]] = (),
    opening_statement: str | None = "",
    suggested_questions: Sequence[str] = (),
    speech_to_text: bool = False,
    text_to_speech: bool | Mapping[str, Any] = False,
    file_upload: Mapping[str, Any] | None = None,
    **features: Any,
) -> dict[str, Any]:
    """An app's parameters exactly as ``session.app.fetch_app(app_id)`` returns them.

    Dify ``api/core/app/app_config/common/parameters_mapping.py``
    ``get_parameters_from_feature_dict`` (the same dict the service API's ``GET /parameters``
    answers). ``fetch_app_info`` wraps it as ``{"data": <parameters>}``, but the daemon
    (``calldify/http_request.go`` ``FetchApp``) unwraps that ``data`` before answering the
    plugin, so the SDK yields the bare parameters. ``user_input_form`` entries are built with
    :func:`form_field`; ``features`` override any other top-level key.
    """
    tts: dict[str, Any]
    if isinstance(text_to_speech, Mapping):
        tts = dict(text_to_speech)
    else:
        tts = {"enabled": bool(text_to_speech)}
        if text_to_speech:
            tts.update({"voice": "alloy", "language": "zh-Hans", "autoPlay": "disabled"})
    params: dict[str, Any] = {
        "opening_statement": opening_statement,
        "suggested_questions": list(suggested_questions),
        "suggested_questions_after_answer": {"enabled": False},
        "speech_to_text": {"enabled": bool(speech_to_text)},
        "text_to_speech": tts,
        "retriever_resource": {"enabled": False},
        "annotation_reply": {"enabled": False},
        "more_like_this": {"enabled": False},
        "user_input_form": [dict(entry) for entry in user_input_form],
        "sensitive_word_avoidance": {"enabled": False, "type": "", "configs": []},
        "file_upload": dict(file_upload)
        if file_upload is not None
        else {
            "image": {
                "enabled": False,
                "number_limits": DEFAULT_FILE_NUMBER_LIMITS,
                "detail": "high",
                "transfer_methods": ["remote_url", "local_file"],
            }
        },
        "system_parameters": dict(DEFAULT_SYSTEM_PARAMETERS),
    }
    params.update(features)
    return params


FormType = Literal["text-input", "paragraph", "select", "number", "file", "file-list"]


def form_field(
    kind: FormType,
    variable: str,
    *,
    label: str | None = None,
    required: bool = False,
    max_length: int | None = None,
    options: Sequence[str] = (),
    allowed_file_types: Sequence[str] = ("image",),
    allowed_file_extensions: Sequence[str] = (),
    allowed_file_upload_methods: Sequence[str] = ("local_file", "remote_url"),
    **extra: Any,
) -> dict[str, Any]:
    """One ``user_input_form`` entry in Dify's "old structure": ``{kind: {…variable…}}``.

    Workflow/chatflow apps: ``Workflow.user_input_form(to_old_structure=True)`` wraps each
    Start-node variable as ``{variable["type"]: variable}``; easy-UI apps store the same shape.
    ``file``/``file-list`` entries carry ``allowed_file_types`` (``image``, ``document``,
    ``audio``, ``video``, ``custom``), ``allowed_file_extensions`` and
    ``allowed_file_upload_methods``; a ``file-list``'s ``max_length`` is its file count limit.
    """
    spec: dict[str, Any] = {
        "variable": variable,
        "label": label if label is not None else variable,
        "type": kind,
        "required": required,
    }
    if kind in ("text-input", "paragraph"):
        spec["max_length"] = 48 if max_length is None and kind == "text-input" else max_length
        spec["default"] = ""
    elif kind == "select":
        spec["options"] = list(options)
        spec["default"] = ""
    elif kind in ("file", "file-list"):
        spec["allowed_file_types"] = list(allowed_file_types)
        spec["allowed_file_extensions"] = list(allowed_file_extensions)
        spec["allowed_file_upload_methods"] = list(allowed_file_upload_methods)
        if kind == "file-list":
            spec["max_length"] = 5 if max_length is None else max_length
    spec.update(extra)
    return {kind: spec}


DEFAULT_PARAMETERS: dict[str, Any] = app_parameters()
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


@dataclass(frozen=True)
class AppReply:
    """A rich answer: text plus Dify-hosted files (and, rarely needed, extra raw chunks).

    ``files`` are file dicts from :meth:`DaemonEmulator.host_file
    <tests.emulator.daemon.DaemonEmulator.host_file>` (Dify's ``File.to_dict()`` shape); how
    each app mode emits them is described in the module docstring. ``markdown=True`` appends
    each file to the answer text as markdown, like an Answer node that references a file
    variable. ``events`` are extra chunks sent just before the terminal event(s) (chat modes:
    merged over the usual ``task_id``/``conversation_id``/``message_id``/``created_at``).
    ``outputs`` are extra workflow outputs (``workflow`` and ``advanced-chat``).
    """

    text: str = ""
    files: Sequence[Mapping[str, Any]] = ()
    markdown: bool = False
    events: Sequence[Mapping[str, Any]] = ()
    outputs: Mapping[str, Any] = field(default_factory=dict)

    def full_text(self) -> str:
        """The answer text as streamed (with the files' markdown when ``markdown``)."""
        if not self.markdown or not self.files:
            return self.text
        links = "\n".join(file_markdown(f) for f in self.files)
        return f"{self.text}\n\n{links}" if self.text else links


def file_markdown(file: Mapping[str, Any]) -> str:
    """Dify ``File.markdown``: ``![filename](url)`` for images, ``[filename or url](url)``."""
    url = str(file.get("url") or "")
    name = file.get("filename")
    if file.get("type") == "image":
        return f"![{name or ''}]({url})"
    return f"[{name or url}]({url})"


Answer = str | AppReply | BaseException
Responder = Callable[[AppRequest], "str | AppReply | BaseException"]


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
    files: list[dict[str, Any]] = field(default_factory=list)
    """Files the answer carries (file dicts), for assertions."""


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

    ``respond`` is a fixed text, a fixed :class:`AppReply`, or a function
    ``(AppRequest) -> str | AppReply | Exception``; a returned (or raised) exception makes the
    *generation* fail: streaming → an ``error`` chunk at ``latency``; blocking → an ``error``
    event (the SDK raises). An :class:`AppReply` adds files (see the module docstring).
    ``latency`` is the time until the answer is complete; the answer is streamed in ``chunks``
    deltas spread evenly over it.
    ``error_after`` (seconds) ends the stream with an ``{"event": "error", "code", "message",
    "status"}`` chunk at that time, after whatever deltas came before it (blocking: an error
    event at that time). ``invoke_error`` makes every invocation fail up front (like a Dify
    API 4xx/5xx). ``app_id``: when set, calls for another app id fail with "app not found".
    ``parameters`` is what ``fetch_app`` answers (build it with :func:`app_parameters`, or
    give just the keys that matter, e.g. ``{"user_input_form": [...]}``: the rest are Dify's
    defaults). ``workflow_output_key`` names the text output of a workflow
    app, ``files_output_key`` the file-list output of a workflow or chatflow app.

    Thread-safe: several plugin processes may call it at once.
    """

    def __init__(
        self,
        mode: AppMode = "chat",
        respond: Responder | str | AppReply = "ok",
        latency: float | Callable[[], float] = 0.0,
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
        files_output_key: str = "files",
    ) -> None:
        if mode not in ALL_MODES:
            raise ValueError(f"unknown app mode {mode!r}")
        self.mode: str = mode
        self.respond: Responder | str | AppReply = respond
        #: Seconds until the answer is complete, or a callable giving them when a call
        #: starts (e.g. "until a given moment", whatever the plugin's overhead was).
        self.latency: float | Callable[[], float] = latency
        self.chunks = chunks
        self.error_after = error_after
        self.error_code = error_code
        self.error_message = error_message
        self.error_status = error_status
        self.invoke_error = invoke_error
        self.app_id = app_id
        self.parameters: dict[str, Any] = {
            **copy.deepcopy(DEFAULT_PARAMETERS),
            **(parameters or {}),
        }
        """What ``fetch_app`` answers. The constructor fills keys missing from ``parameters``
        with Dify's defaults (Dify always answers them all); assign the attribute to answer
        exactly a given dict."""
        self.workflow_output_key = workflow_output_key
        self.files_output_key = files_output_key
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

    def _answer(self, req: AppRequest) -> Answer:
        if isinstance(self.respond, str | AppReply):
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
        if chat and conversation_id is not None and not isinstance(answer, BaseException):
            said = answer.full_text() if isinstance(answer, AppReply) else answer
            with self._lock:
                self.conversations[conversation_id].append((str(query), said))
        return self._build_plan(req, answer)

    def _build_plan(self, req: AppRequest, answer: Answer) -> AppPlan:
        now = int(time.time())
        task_id = str(uuid.uuid4())
        message_id = str(uuid.uuid4())
        run_id = str(uuid.uuid4())
        cid = req.conversation_id
        lat = max(0.0, self.latency() if callable(self.latency) else self.latency)
        failed = isinstance(answer, BaseException)
        reply = answer if isinstance(answer, AppReply) else None
        text: str
        if isinstance(answer, BaseException):
            text = ""
        elif isinstance(answer, AppReply):
            text = answer.full_text()
        else:
            text = answer
        files = [dict(f) for f in reply.files] if reply is not None else []
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
        files_key = self.files_output_key
        outputs: dict[str, Any] = {outputs_key: text}
        if files:
            outputs[files_key] = files
        if reply is not None:
            outputs.update(reply.outputs)
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
                "outputs": outputs,
                "error": None,
                "elapsed_time": lat,
                "total_tokens": 0,
                "total_steps": 3,
                "created_at": now,
                "finished_at": now + int(lat),
                "files": files,
            },
        )
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        message_end = {
            **chat_base("message_end"),
            "metadata": {"usage": usage},
            "files": files if self.mode == "advanced-chat" else [],
        }
        # easy_ui_based_generate_task_pipeline._message_file_to_stream_response
        message_files = [
            {
                **chat_base("message_file"),
                "id": str(uuid.uuid4()),
                "type": str(f.get("type") or "image"),
                "belongs_to": "assistant",
                "url": f.get("url"),
            }
            for f in files
        ]
        extra: list[dict[str, Any]] = []
        for raw in reply.events if reply is not None else ():
            if self.mode == "workflow":
                extra.append(dict(raw))
            else:
                extra.append({**chat_base(str(raw.get("event") or "message")), **raw})

        events: list[tuple[float, dict[str, Any]]] = []
        if self.mode == "workflow":
            events.append((0.0, wf_started))
            events.append((0.0, node_started))
            for t, d in zip(times, deltas, strict=True):
                chunk = wf_base(
                    "text_chunk", {"text": d, "from_variable_selector": ["llm", "text"]}
                )
                events.append((t, chunk))
            events.extend((lat, c) for c in extra)
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
            events.extend((0.0, c) for c in message_files)
            for t, d in zip(times, deltas, strict=True):
                events.append((t, {**chat_base("agent_message"), "answer": d}))
            final_thought = {
                **thought,
                "thought": text,
                "message_files": [c["id"] for c in message_files],
            }
            events.append((lat, final_thought))
            events.extend((lat, c) for c in extra)
            events.append((lat, message_end))
        else:  # chat, advanced-chat, completion
            if self.mode == "advanced-chat":
                events.append((0.0, wf_started))
                events.append((0.0, node_started))
            for t, d in zip(times, deltas, strict=True):
                events.append((t, {**chat_base("message"), "answer": d}))
            if self.mode != "advanced-chat":  # advanced-chat: files only in message_end
                events.extend((lat, c) for c in message_files)
            events.extend((lat, c) for c in extra)
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
            files=[] if failed else files,
        )

    def _error_chunk(self, base: dict[str, Any], message: str) -> dict[str, Any]:
        return {
            **base,
            "event": "error",
            "code": self.error_code,
            "message": message,
            "status": self.error_status,
        }
