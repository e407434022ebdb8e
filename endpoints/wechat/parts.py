"""The parts of an answer: text, or a WeChat media message (image, voice).

A job record keeps an answer as a list of strings, one per WeChat message. Media parts are
stored as strings too, behind a prefix that cannot occur in text: NUL is not allowed in XML
1.0, so no text WeChat accepts (nor any text we produce) contains it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

_MARK = "\x00"


class PartKind(StrEnum):
    TEXT = "text"
    IMAGE = "image"
    VOICE = "voice"


@dataclass(frozen=True)
class Part:
    kind: PartKind
    value: str  # the text, or the WeChat media_id

    @property
    def is_text(self) -> bool:
        return self.kind is PartKind.TEXT


def media_part(kind: PartKind, media_id: str) -> str:
    if kind is PartKind.TEXT or not media_id:
        raise ValueError("a media part needs a media kind and a media_id")
    return f"{_MARK}{kind.value}:{media_id}"


def read_part(stored: str) -> Part:
    if stored.startswith(_MARK):
        kind, _, media_id = stored[1:].partition(":")
        if kind in (PartKind.IMAGE.value, PartKind.VOICE.value) and media_id:
            return Part(PartKind(kind), media_id)
        return Part(PartKind.TEXT, "")  # a corrupt marker never reaches the user
    return Part(PartKind.TEXT, stored)


def is_text(stored: str) -> bool:
    return not stored.startswith(_MARK)
