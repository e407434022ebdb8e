"""The parts of an answer: text, WeCom markdown, or a media message (image, voice).

A job record keeps an answer as a list of strings, one per message. Non-text parts are
stored as strings too, behind a prefix that cannot occur in text: NUL is not allowed in XML
1.0, so no text WeChat accepts (nor any text we produce) contains it.

A markdown part (WeCom only) is text that a WeCom app message can show as markdown; where
only plain text can go (a passive reply, the fetch keyword) it is rendered as text.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .formatters import markdown_to_wechat_text

_MARK = "\x00"


class PartKind(StrEnum):
    TEXT = "text"
    MARKDOWN = "markdown"
    IMAGE = "image"
    VOICE = "voice"


_MEDIA_KINDS = (PartKind.IMAGE.value, PartKind.VOICE.value)
_MARKDOWN_PREFIX = f"{_MARK}{PartKind.MARKDOWN.value}:"


@dataclass(frozen=True)
class Part:
    kind: PartKind
    value: str  # the text, the markdown, or the media_id

    @property
    def is_text(self) -> bool:
        """Text of either kind (it can carry a hint), as opposed to a media message."""
        return self.kind in (PartKind.TEXT, PartKind.MARKDOWN)

    @property
    def text(self) -> str:
        """What a text-only message shows: the text, or the markdown rendered as text."""
        if self.kind is PartKind.MARKDOWN:
            return markdown_to_wechat_text(self.value)
        return self.value if self.kind is PartKind.TEXT else ""


def media_part(kind: PartKind, media_id: str) -> str:
    if kind not in (PartKind.IMAGE, PartKind.VOICE) or not media_id:
        raise ValueError("a media part needs a media kind and a media_id")
    return f"{_MARK}{kind.value}:{media_id}"


def markdown_part(markdown: str) -> str:
    return _MARKDOWN_PREFIX + markdown


def read_part(stored: str) -> Part:
    if stored.startswith(_MARK):
        kind, _, value = stored[1:].partition(":")
        if kind == PartKind.MARKDOWN.value:
            return Part(PartKind.MARKDOWN, value)
        if kind in _MEDIA_KINDS and value:
            return Part(PartKind(kind), value)
        return Part(PartKind.TEXT, "")  # a corrupt marker never reaches the user
    return Part(PartKind.TEXT, stored)


def is_text(stored: str) -> bool:
    return not stored.startswith(_MARK) or stored.startswith(_MARKDOWN_PREFIX)
