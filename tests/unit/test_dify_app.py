from typing import Any

import pytest

from endpoints.wechat.conversations import ConversationStore
from endpoints.wechat.dify_app import AppCancelled, AppError, DifyApp
from endpoints.wechat.storage import EndpointStore
from tests.fakes import MemoryStorage, ScriptedCaller, chat_chunks


def make(
    caller: ScriptedCaller, inputs: dict[str, Any] | None = None
) -> tuple[DifyApp, ConversationStore]:
    conversations = ConversationStore(EndpointStore(MemoryStorage(), "ep1"))
    return DifyApp(caller, "app-1", inputs or {}, conversations), conversations


def test_chat_stream_collects_deltas_and_keeps_conversation() -> None:
    caller = ScriptedCaller(lambda c: chat_chunks("hello world, how are you?", "conv-9"))
    app, conversations = make(caller)
    answer = app.ask("hi", "openid-1", {"wechat_msg_type": "text"})
    assert answer.text == "hello world, how are you?"
    assert conversations.get("openid-1") is None  # stored only when the caller says so
    app.remember("openid-1", answer)
    assert conversations.get("openid-1") == "conv-9"
    app.ask("again", "openid-1", {})
    assert caller.calls[1]["conversation_id"] == "conv-9"
    assert caller.calls[0]["user"] == "openid-1"
    assert caller.calls[0]["app_id"] == "app-1"


def test_inputs_merge_metadata_and_configured_inputs() -> None:
    caller = ScriptedCaller()
    app, _ = make(caller, {"tone": "formal", "wechat_openid": "override", "empty": None})
    app.ask("q", "u", {"wechat_openid": "u", "wechat_msg_type": "text"})
    inputs = caller.calls[0]["inputs"]
    assert inputs["query"] == "q"
    assert inputs["tone"] == "formal"
    assert inputs["wechat_openid"] == "override"  # the admin's explicit value wins
    assert "empty" not in inputs


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        (
            [
                {"event": "agent_thought", "thought": "thinking"},
                {"event": "agent_message", "answer": "Age", "conversation_id": "c"},
                {"event": "agent_message", "answer": "nt!", "conversation_id": "c"},
                {"event": "message_end", "conversation_id": "c"},
            ],
            "Agent!",
        ),
        (
            [
                {"event": "message", "answer": "draft", "conversation_id": "c"},
                {"event": "message_replace", "answer": "moderated", "conversation_id": "c"},
                {"event": "message_end", "conversation_id": "c"},
            ],
            "moderated",
        ),
        (
            [
                {"event": "workflow_started", "data": {}},
                {"event": "text_chunk", "data": {"text": "streamed "}},
                {"event": "text_chunk", "data": {"text": "text"}},
                {"event": "workflow_finished", "data": {"status": "succeeded", "outputs": {}}},
            ],
            "streamed text",
        ),
        (
            [
                {
                    "event": "workflow_finished",
                    "data": {"status": "succeeded", "outputs": {"result": "from outputs"}},
                }
            ],
            "from outputs",
        ),
        (
            [
                {
                    "event": "workflow_finished",
                    "data": {"status": "succeeded", "outputs": {"score": 3, "answer": "A"}},
                }
            ],
            "A",
        ),
        (
            [
                {
                    "event": "workflow_finished",
                    "data": {"status": "succeeded", "outputs": {"a": 1, "b": [1, 2]}},
                }
            ],
            "a: 1\nb: [1, 2]",
        ),
        (["ping", {"event": "message", "answer": "ok"}, {"event": "message_end"}], "ok"),
        ([{"event": "message", "answer": "completion", "message_id": "m"}], "completion"),
    ],
)
def test_every_app_mode(chunks: list[Any], expected: str) -> None:
    app, _ = make(ScriptedCaller(lambda c: chunks))
    assert app.ask("q", "u", {}).text == expected


def test_error_chunk_and_failed_workflow_raise_app_error() -> None:
    app, _ = make(
        ScriptedCaller(
            lambda c: [
                {"event": "error", "code": "quota", "message": "Quota exceeded", "status": 400}
            ]
        )
    )
    with pytest.raises(AppError, match="Quota exceeded"):
        app.ask("q", "u", {})
    app, _ = make(
        ScriptedCaller(
            lambda c: [
                {"event": "workflow_finished", "data": {"status": "failed", "error": "boom"}}
            ]
        )
    )
    with pytest.raises(AppError, match="boom"):
        app.ask("q", "u", {})


def test_exception_from_the_call_becomes_app_error() -> None:
    def boom(call: dict[str, Any]) -> list[Any]:
        raise RuntimeError("invoke failed: upstream 502\nsecond line")

    app, _ = make(ScriptedCaller(boom))
    with pytest.raises(AppError) as info:
        app.ask("q", "u", {})
    assert info.value.reason == "invoke failed: upstream 502"


def test_stale_conversation_is_dropped_and_retried_once_fresh() -> None:
    def respond(call: dict[str, Any]) -> list[Any]:
        if call["conversation_id"] == "stale":
            return [{"event": "error", "message": "Conversation Not Exists.", "status": 404}]
        return chat_chunks("fresh answer", "conv-new")

    caller = ScriptedCaller(respond)
    app, conversations = make(caller)
    conversations.set("u", "stale")
    answer = app.ask("q", "u", {})
    assert answer.text == "fresh answer"
    assert [c["conversation_id"] for c in caller.calls] == ["stale", None]
    assert conversations.get("u") is None  # the stale one is gone at once
    app.remember("u", answer)
    assert conversations.get("u") == "conv-new"


def test_other_errors_keep_the_conversation_and_do_not_retry() -> None:
    caller = ScriptedCaller(lambda c: [{"event": "error", "message": "model overloaded"}])
    app, conversations = make(caller)
    conversations.set("u", "conv-1")
    with pytest.raises(AppError):
        app.ask("q", "u", {})
    assert len(caller.calls) == 1
    assert conversations.get("u") == "conv-1"


def test_should_stop_abandons_the_stream_without_storing() -> None:
    app, conversations = make(ScriptedCaller(lambda c: chat_chunks("long answer text")))
    with pytest.raises(AppCancelled):
        app.ask("q", "u", {}, should_stop=lambda: True)
    assert conversations.get("u") is None


def test_no_app_selected() -> None:
    conversations = ConversationStore(EndpointStore(MemoryStorage(), "ep1"))
    with pytest.raises(AppError, match="no Dify app"):
        DifyApp(ScriptedCaller(), "", {}, conversations).ask("q", "u", {})
