"""Talking to the Dify app: one streaming call for every app mode, errors made typed.

``session.app.chat.invoke`` reaches any app: Dify dispatches on the app's mode (chat,
advanced-chat, agent-chat → chat generator, ``query`` required; workflow and completion
take ``inputs``). Agent apps reject blocking mode, so we always stream and collect.
Reference: reference/dify-plugin-runtime.md §4.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .conversations import ConversationStore

logger = logging.getLogger(__name__)

#: Output names tried, in order, when a workflow returns several outputs.
_PREFERRED_OUTPUTS = ("answer", "text", "result", "output", "content")
_FILE_MARK = "__dify__file__"


class AppCaller(Protocol):
    """``session.app.chat.invoke`` in streaming mode."""

    def __call__(
        self,
        app_id: str,
        query: str,
        inputs: dict[str, Any],
        conversation_id: str | None,
        user: str,
    ) -> Iterable[Any]: ...


class AppError(Exception):
    """The app call failed; ``reason`` is for the log (no message content, no secrets)."""

    def __init__(self, reason: str, *, conversation_related: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.conversation_related = conversation_related


class AppCancelled(Exception):
    """The caller stopped waiting; the stream was abandoned on purpose."""


@dataclass(frozen=True)
class AnswerFile:
    """A file the app produced (``message_file`` event or a workflow file output)."""

    url: str
    kind: str  # Dify's file type: "image", "audio", "video", "document", "custom"
    mimetype: str = ""
    name: str = ""


@dataclass(frozen=True)
class AppAnswer:
    text: str
    conversation_id: str | None
    previous_conversation_id: str | None = None
    files: tuple[AnswerFile, ...] = ()


def session_app_caller(session: Any) -> AppCaller:
    def call(
        app_id: str,
        query: str,
        inputs: dict[str, Any],
        conversation_id: str | None,
        user: str,
    ) -> Iterable[Any]:
        return session.app.chat.invoke(
            app_id=app_id,
            query=query,
            inputs=inputs,
            response_mode="streaming",
            conversation_id=conversation_id,
            user=user,
        )

    return call


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


class _StreamCollector:
    """Folds the event stream of any app mode into one answer."""

    def __init__(self) -> None:
        self.chat_answer = ""
        self.workflow_text = ""
        self.outputs: Mapping[str, Any] | None = None
        self.conversation_id: str | None = None
        self.finished = False
        self.files: list[AnswerFile] = []

    def feed(self, chunk: Any) -> None:
        if not isinstance(chunk, Mapping):
            return  # "ping" keep-alives and other noise
        conversation_id = chunk.get("conversation_id")
        if isinstance(conversation_id, str) and conversation_id:
            self.conversation_id = conversation_id
        event = chunk.get("event")
        raw_data = chunk.get("data")
        data: Mapping[str, Any] = raw_data if isinstance(raw_data, Mapping) else {}
        if event in ("message", "agent_message"):
            self.chat_answer += str(chunk.get("answer") or "")
        elif event == "message_file":
            if chunk.get("belongs_to") in (None, "assistant"):
                self._add_file(chunk)
        elif event == "message_replace":
            self.chat_answer = str(chunk.get("answer") or "")
        elif event == "text_chunk":
            self.workflow_text += str(data.get("text") or "")
        elif event == "workflow_finished":
            if data.get("status") not in (None, "succeeded", "partial-succeeded"):
                raise AppError(f"workflow {data.get('status')}: {data.get('error') or ''}"[:300])
            outputs = data.get("outputs")
            self.outputs = outputs if isinstance(outputs, Mapping) else {}
            self.finished = True
        elif event == "message_end":
            self.finished = True
        elif event == "error":
            message = str(chunk.get("message") or "app error")
            code = str(chunk.get("code") or "")
            raise AppError(
                f"{code}: {message}"[:300] if code else message[:300],
                conversation_related="conversation" in message.lower(),
            )
        elif event is None and "answer" in chunk:  # a blocking-style result
            self.chat_answer += str(chunk.get("answer") or "")
            self.finished = True

    def _add_file(self, spec: Mapping[str, Any]) -> None:
        url = spec.get("url") or spec.get("remote_url")
        if not isinstance(url, str) or not url or any(f.url == url for f in self.files):
            return
        self.files.append(
            AnswerFile(
                url=url,
                kind=str(spec.get("type") or ""),
                mimetype=str(spec.get("mime_type") or ""),
                name=str(spec.get("filename") or ""),
            )
        )

    def output_files(self) -> None:
        """Files among a workflow's outputs (Dify serialises them with a marker)."""
        for value in (self.outputs or {}).values():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, Mapping) and item.get("dify_model_identity") == _FILE_MARK:
                    self._add_file(item)

    def answer(self) -> str:
        if self.chat_answer.strip():
            return self.chat_answer
        if self.outputs:
            strings = {k: v for k, v in self.outputs.items() if isinstance(v, str)}
            if len(self.outputs) == 1 and strings:
                return next(iter(strings.values()))
            for name in _PREFERRED_OUTPUTS:
                if strings.get(name, "").strip():
                    return strings[name]
        if self.workflow_text.strip():
            return self.workflow_text
        shown = {k: v for k, v in (self.outputs or {}).items() if not _is_file_output(v)}
        return "\n".join(
            f"{k}: {v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}"
            for k, v in shown.items()
        )


def _is_file_output(value: Any) -> bool:
    items = value if isinstance(value, list) and value else [value]
    return all(isinstance(i, Mapping) and i.get("dify_model_identity") == _FILE_MARK for i in items)


def _consume(stream: Iterable[Any], should_stop: Callable[[], bool]) -> _StreamCollector:
    collector = _StreamCollector()
    iterator: Iterator[Any] = iter(stream)
    try:
        for chunk in iterator:
            collector.feed(chunk)
            if should_stop():
                raise AppCancelled
    finally:
        close = getattr(iterator, "close", None)
        if callable(close):
            try:
                close()
            except Exception:
                logger.debug("Closing the app stream failed", exc_info=True)
    return collector


class DifyApp:
    """Asks the configured app one question, keeping the user's conversation."""

    def __init__(
        self,
        caller: AppCaller,
        app_id: str,
        configured_inputs: Mapping[str, Any],
        conversations: ConversationStore,
    ) -> None:
        self._caller = caller
        self._app_id = app_id
        self._configured_inputs = dict(configured_inputs)
        self._conversations = conversations

    @property
    def conversations(self) -> ConversationStore:
        return self._conversations

    def build_inputs(
        self, query: str, metadata: Mapping[str, str], files: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        # Message metadata first; what the admin configured in the app selector wins, except
        # over the files this message brought (nobody can configure those).
        inputs: dict[str, Any] = {"query": query, **metadata}
        inputs.update({k: v for k, v in self._configured_inputs.items() if v is not None})
        inputs.update(files or {})
        return inputs

    def ask(
        self,
        query: str,
        openid: str,
        metadata: Mapping[str, str],
        should_stop: Callable[[], bool] = lambda: False,
        on_started: Callable[[], None] = lambda: None,
        files: Mapping[str, Any] | None = None,
    ) -> AppAnswer:
        """Ask the app; ``on_started`` is called once the app call is about to go out.
        ``files`` are file-type inputs (Dify file parameters) by variable name."""
        if not self._app_id:
            raise AppError("no Dify app is selected in the endpoint settings")
        inputs = self.build_inputs(query, metadata, files)
        conversation_id = self._conversations.get(openid)
        on_started()
        try:
            collector = self._run(query, inputs, conversation_id, openid, should_stop)
        except AppError as exc:
            if conversation_id is None or not exc.conversation_related or should_stop():
                raise
            # A stale or foreign conversation id (deleted, other app, other workspace):
            # drop it and try once with a fresh conversation.
            logger.info("App call failed with a stored conversation (%s); retrying fresh", exc)
            self._conversations.clear(openid)
            collector = self._run(query, inputs, None, openid, should_stop)
        if should_stop():
            raise AppCancelled
        collector.output_files()
        return AppAnswer(
            text=collector.answer(),
            conversation_id=collector.conversation_id,
            previous_conversation_id=conversation_id,
            files=tuple(collector.files),
        )

    def remember(self, openid: str, answer: AppAnswer) -> None:
        """Keep the user's conversation for the next message (a separate step, so the
        caller can deliver the answer first)."""
        if answer.conversation_id and answer.conversation_id != answer.previous_conversation_id:
            self._conversations.set(openid, answer.conversation_id)

    def _run(
        self,
        query: str,
        inputs: dict[str, Any],
        conversation_id: str | None,
        openid: str,
        should_stop: Callable[[], bool],
    ) -> _StreamCollector:
        try:
            stream = self._caller(self._app_id, query, inputs, conversation_id, openid)
            return _consume(stream, should_stop)
        except (AppError, AppCancelled):
            raise
        except Exception as exc:
            reason = _describe(exc)
            raise AppError(reason, conversation_related="conversation" in reason.lower()) from exc
