"""Dify's services besides the app call (endpoints/wechat/dify_services.py): the app's
parameters as read from ``fetch_app``, their per-process cache, and the session adapter."""

from __future__ import annotations

import io
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from endpoints.wechat import dify_services
from endpoints.wechat.dify_services import (
    PROFILE_CACHE_SECONDS,
    UNREADABLE,
    AppProfile,
    FileInput,
    SessionServices,
    app_profile,
    read_profile,
)
from tests.fakes import FakeServices, app_parameters

NOW = 1_700_000_000.0


@pytest.fixture(autouse=True)
def fresh_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dify_services, "_PROFILES", dify_services._ProfileCache())


# --- read_profile --------------------------------------------------------------------------


def test_profile_of_a_fetch_app_answer() -> None:
    answer = app_parameters(
        {"topic": "text-input", "wechat_file": "file", "photos": "file-list", "n": "number"},
        opening_statement="  你好！我是 **助手**。\n",
    )
    profile = read_profile(answer)
    assert profile.readable
    assert profile.inputs == {
        "topic": "text-input",
        "wechat_file": "file",
        "photos": "file-list",
        "n": "number",
    }
    assert profile.opening_statement == "你好！我是 **助手**。"


def test_bare_parameters_are_read_too() -> None:
    bare = app_parameters({"wechat_file": "file"}, "hi")["data"]
    assert read_profile(bare) == AppProfile({"wechat_file": "file"}, "hi")


@pytest.mark.parametrize("data", [None, "text", 3, ["a"]])
def test_data_that_is_not_a_mapping_is_unreadable(data: Any) -> None:
    profile = read_profile({"data": data})
    assert profile is UNREADABLE and not profile.readable


def test_malformed_form_entries_are_skipped() -> None:
    answer = {
        "data": {
            "user_input_form": [
                "not a mapping",
                {"file": "not a mapping"},
                {"file": {"label": "no variable"}},
                {"file": {"variable": 42}},
                {"file-list": {"variable": "ok"}},
                {},
            ],
            "opening_statement": ["not", "text"],
        }
    }
    assert read_profile(answer) == AppProfile({"ok": "file-list"}, "")


def test_a_form_that_is_not_a_list_gives_no_inputs() -> None:
    profile = read_profile({"data": {"user_input_form": {"file": {"variable": "x"}}}})
    assert profile.readable and profile.inputs == {}


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("file", FileInput.SINGLE),
        ("file-list", FileInput.LIST),
        ("text-input", FileInput.ABSENT),
        ("paragraph", FileInput.ABSENT),
    ],
)
def test_file_input_kinds(kind: str, expected: FileInput) -> None:
    profile = read_profile(app_parameters({"wechat_file": kind}))
    assert profile.file_input("wechat_file") is expected


def test_file_input_of_a_missing_variable_or_an_unreadable_app() -> None:
    profile = read_profile(app_parameters({"other": "file"}))
    assert profile.file_input("wechat_file") is FileInput.ABSENT
    assert UNREADABLE.file_input("wechat_file") is FileInput.UNKNOWN
    assert UNREADABLE.opening_statement == ""


# --- app_profile: the per-process cache ------------------------------------------------------


def test_the_profile_is_cached_for_a_minute_per_app() -> None:
    services = FakeServices(parameters=app_parameters({"wechat_file": "file"}, "hello"))
    first = app_profile(services, "app-1", now=NOW)
    assert first.opening_statement == "hello"
    services.parameters = app_parameters({}, "changed")
    assert app_profile(services, "app-1", now=NOW + PROFILE_CACHE_SECONDS - 1) == first
    assert services.fetches == ["app-1"]
    assert app_profile(services, "app-2", now=NOW).opening_statement == "changed"
    assert services.fetches == ["app-1", "app-2"]
    refreshed = app_profile(services, "app-1", now=NOW + PROFILE_CACHE_SECONDS)
    assert refreshed.opening_statement == "changed"
    assert services.fetches == ["app-1", "app-2", "app-1"]


def test_a_failed_fetch_is_unreadable_and_not_cached() -> None:
    services = FakeServices(parameters=app_parameters({"wechat_file": "file-list"}))
    services.fail("fetch_app", RuntimeError("daemon unreachable"))
    assert app_profile(services, "app-1", now=NOW) is UNREADABLE
    profile = app_profile(services, "app-1", now=NOW + 1)
    assert profile.file_input("wechat_file") is FileInput.LIST
    assert services.fetches == ["app-1", "app-1"]


def test_no_app_id_is_unreadable_without_a_fetch() -> None:
    services = FakeServices()
    assert app_profile(services, "", now=NOW) is UNREADABLE
    assert services.fetches == []


def test_the_cache_uses_the_wall_clock_by_default() -> None:
    services = FakeServices()
    app_profile(services, "app-1")
    app_profile(services, "app-1")
    assert services.fetches == ["app-1"]


# --- SessionServices: the adapter on a Dify session -------------------------------------------


@dataclass
class _Uploaded:
    parameter: dict[str, Any]

    def to_app_parameter(self) -> dict[str, Any]:
        return self.parameter


class _FakeSession:
    """Just the attributes SessionServices reads, recording what it is given."""

    def __init__(self, fetched: Any = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        outer = self

        class File:
            def upload(self, filename: str, content: bytes, mimetype: str) -> _Uploaded:
                outer.calls.append(("upload", (filename, content, mimetype)))
                return _Uploaded({"tool_file_id": "tf-1", "transfer_method": "tool_file"})

        class App:
            def fetch_app(self, app_id: str) -> Any:
                outer.calls.append(("fetch_app", app_id))
                return fetched

        class Speech2Text:
            def invoke(self, config: Any, audio: io.BytesIO) -> str:
                outer.calls.append(("speech2text", (config, audio.read())))
                return "  transcript  "

        class TTS:
            def invoke(self, config: Any, text: str) -> Iterator[bytes]:
                outer.calls.append(("tts", (config, text)))
                return iter([b"ID3", b"abc", b""])

        class Model:
            speech2text = Speech2Text()
            tts = TTS()

        self.file = File()
        self.app = App()
        self.model = Model()


class _Config:
    def __init__(self, **fields: Any) -> None:
        self.fields = fields


@pytest.fixture
def sdk_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-ins for the SDK's model configs: importing dify_plugin patches gevent."""
    for name, cls_name in (
        ("dify_plugin.entities.model.speech2text", "Speech2TextModelConfig"),
        ("dify_plugin.entities.model.tts", "TTSModelConfig"),
    ):
        module = types.ModuleType(name)
        setattr(module, cls_name, _Config)
        monkeypatch.setitem(sys.modules, name, module)


def test_session_upload_returns_the_app_parameter() -> None:
    session = _FakeSession()
    parameter = SessionServices(session).upload_file("wechat-image.png", b"PNG", "image/png")
    assert parameter == {"tool_file_id": "tf-1", "transfer_method": "tool_file"}
    assert session.calls == [("upload", ("wechat-image.png", b"PNG", "image/png"))]


def test_session_fetch_app_answers_a_mapping_or_nothing() -> None:
    answer = app_parameters({"wechat_file": "file"})
    assert SessionServices(_FakeSession(answer)).fetch_app("app-1") == answer
    # Anything else is "could not read" (not "an app without inputs"): it must not be cached.
    for odd in (None, ["odd"]):
        with pytest.raises(ValueError):
            SessionServices(_FakeSession(odd)).fetch_app("app-1")


@pytest.mark.usefixtures("sdk_configs")
def test_session_speech_to_text_passes_the_chosen_model_and_the_audio() -> None:
    session = _FakeSession()
    model = {"provider": "langgenius/openai/openai", "model": "whisper-1", "model_type": "stt"}
    text = SessionServices(session).speech_to_text(model, b"RIFF....WAVE")
    assert text == "  transcript  "  # the caller strips it
    [(name, (config, audio))] = session.calls
    assert name == "speech2text" and audio == b"RIFF....WAVE"
    assert config.fields == {"provider": "langgenius/openai/openai", "model": "whisper-1"}


@pytest.mark.usefixtures("sdk_configs")
def test_session_text_to_speech_joins_the_audio_chunks() -> None:
    session = _FakeSession()
    model = {"provider": "p", "model": "tts-1", "voice": "alloy"}
    assert SessionServices(session).text_to_speech(model, "你好") == b"ID3abc"
    [(name, (config, text))] = session.calls
    assert name == "tts" and text == "你好"
    assert config.fields == {"provider": "p", "model": "tts-1", "voice": "alloy"}
    SessionServices(session).text_to_speech({"provider": "p", "model": "tts-1"}, "x")
    assert session.calls[-1][1][0].fields["voice"] == ""


def test_file_input_values_match_dify_form_types() -> None:
    assert FileInput.SINGLE.value == "file"
    assert FileInput.LIST.value == "file-list"
