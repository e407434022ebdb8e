"""Dify's services besides the app call: file upload, speech-to-text, text-to-speech and the
app's parameters (``session.file``, ``session.model``, ``session.app.fetch_app``).

The pipeline sees them through :class:`DifyServices` so it runs without Dify in tests.
All of them are backwards invocations bound to the request's session (DESIGN §3): call them
from the request that needs them, never after it ended.
Reference: ``dify-plugin-runtime.md`` §4-§5.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

logger = logging.getLogger(__name__)

#: How long this process trusts what ``fetch_app`` said about an app.
PROFILE_CACHE_SECONDS = 60.0


class DifyServices(Protocol):
    def upload_file(self, filename: str, content: bytes, mimetype: str) -> dict[str, Any]:
        """Upload to Dify; returns the app parameter for a file-type input."""
        ...

    def speech_to_text(self, model: Mapping[str, Any], audio: bytes) -> str: ...

    def text_to_speech(self, model: Mapping[str, Any], text: str) -> bytes: ...

    def fetch_app(self, app_id: str) -> Mapping[str, Any]: ...


class SessionServices:
    """:class:`DifyServices` on a Dify plugin session."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def upload_file(self, filename: str, content: bytes, mimetype: str) -> dict[str, Any]:
        uploaded = self._session.file.upload(filename, content, mimetype)
        return dict(uploaded.to_app_parameter())

    def speech_to_text(self, model: Mapping[str, Any], audio: bytes) -> str:
        from dify_plugin.entities.model.speech2text import Speech2TextModelConfig

        config = Speech2TextModelConfig(provider=str(model["provider"]), model=str(model["model"]))
        return str(self._session.model.speech2text.invoke(config, io.BytesIO(audio)))

    def text_to_speech(self, model: Mapping[str, Any], text: str) -> bytes:
        from dify_plugin.entities.model.tts import TTSModelConfig

        config = TTSModelConfig(
            provider=str(model["provider"]),
            model=str(model["model"]),
            voice=str(model.get("voice") or ""),
        )
        return b"".join(self._session.model.tts.invoke(config, text))

    def fetch_app(self, app_id: str) -> Mapping[str, Any]:
        answer = self._session.app.fetch_app(app_id)
        if not isinstance(answer, Mapping):
            raise ValueError("fetch_app answered something other than the app's parameters")
        return answer


class FileInput(StrEnum):
    """How the app declares the file input variable (``file_input_variable``)."""

    SINGLE = "file"
    LIST = "file-list"
    ABSENT = "absent"  # the app has no input of that name: pass the URL only
    UNKNOWN = "unknown"  # the app's parameters could not be read


@dataclass(frozen=True)
class AppProfile:
    """What the app's parameters say that matters here."""

    inputs: Mapping[str, str]  # variable → its form type ("text-input", "file", …)
    opening_statement: str
    readable: bool = True
    file_types: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Per file variable, the file types it allows ("image", "video", …; empty: any)."""

    def accepts(self, variable: str, kind: str) -> bool:
        allowed = self.file_types.get(variable, ())
        return not allowed or kind in allowed or "custom" in allowed

    def file_input(self, variable: str) -> FileInput:
        if not self.readable:
            return FileInput.UNKNOWN
        kind = self.inputs.get(variable)
        if kind == FileInput.SINGLE.value:
            return FileInput.SINGLE
        if kind == FileInput.LIST.value:
            return FileInput.LIST
        return FileInput.ABSENT


UNREADABLE = AppProfile({}, "", readable=False)


def read_profile(parameters: Mapping[str, Any]) -> AppProfile:
    """Parse ``fetch_app``: Dify answers ``{"data": <app parameters>}`` (the same shape as
    the service API's ``GET /parameters``); accept the bare parameters too."""
    data = parameters.get("data", parameters)
    if not isinstance(data, Mapping):
        return UNREADABLE
    inputs: dict[str, str] = {}
    file_types: dict[str, tuple[str, ...]] = {}
    form = data.get("user_input_form")
    for entry in form if isinstance(form, list) else []:
        # Each entry is {"<type>": {"variable": …, "label": …, …}}.
        if not isinstance(entry, Mapping):
            continue
        for kind, spec in entry.items():
            if isinstance(spec, Mapping) and isinstance(spec.get("variable"), str):
                inputs[spec["variable"]] = str(kind)
                allowed = spec.get("allowed_file_types")
                if isinstance(allowed, list):
                    file_types[spec["variable"]] = tuple(str(t) for t in allowed)
    opening = data.get("opening_statement")
    statement = opening.strip() if isinstance(opening, str) else ""
    return AppProfile(inputs, statement, file_types=file_types)


class _ProfileCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, AppProfile]] = {}

    def get(self, services: DifyServices, app_id: str, now: float) -> AppProfile:
        with self._lock:
            entry = self._entries.get(app_id)
        if entry is not None and now - entry[0] < PROFILE_CACHE_SECONDS:
            return entry[1]
        try:
            profile = read_profile(services.fetch_app(app_id))
        except Exception as exc:
            logger.warning("Reading the Dify app's parameters failed (%s)", type(exc).__name__)
            return UNREADABLE  # not cached: the next message tries again
        with self._lock:
            self._entries[app_id] = (now, profile)
        return profile


_PROFILES = _ProfileCache()


def app_profile(services: DifyServices, app_id: str, now: float | None = None) -> AppProfile:
    """The app's profile, cached for a minute per process."""
    if not app_id:
        return UNREADABLE
    return _PROFILES.get(services, app_id, time.time() if now is None else now)
