"""XML → models. The only module that knows WeChat's XML quirks.

Refuses oversize bodies, DTDs and entity declarations before any parsing, parses with
xmltodict (expat, entities disabled), and normalises what WeChat sends loosely: empty
CDATA (None → ""), surrounding whitespace, event names in any case.
"""

from __future__ import annotations

from typing import Any

import xmltodict
from pydantic import ValidationError

from .models import InboundMessage, message_from_fields

#: WeChat messages are small (a text is at most a few KB; compatible mode roughly triples
#: that). Anything far larger is not from WeChat.
MAX_BODY_BYTES = 128 * 1024

_FORBIDDEN_MARKUP = (b"<!doctype", b"<!entity", b"<!element", b"<!attlist", b"<?xml-stylesheet")


class XmlRefusedError(ValueError):
    """The body is not acceptable XML; ``reason`` is safe to log (no content)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_xml_fields(body: bytes | str) -> dict[str, Any]:
    """Parse a WeChat ``<xml>…</xml>`` document into a flat dict of its children."""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    if len(raw) > MAX_BODY_BYTES:
        raise XmlRefusedError("body too large")
    if not raw.strip():
        raise XmlRefusedError("empty body")
    lowered = raw.lower()
    if any(marker in lowered for marker in _FORBIDDEN_MARKUP):
        raise XmlRefusedError("DTD or entity declaration")
    try:
        document = xmltodict.parse(raw, disable_entities=True)
    except Exception as exc:  # expat raises several types; all mean "malformed"
        raise XmlRefusedError("malformed XML") from exc
    if not isinstance(document, dict) or len(document) != 1:
        raise XmlRefusedError("not a single root element")
    root_name, root = next(iter(document.items()))
    if root_name != "xml" or not isinstance(root, dict):
        raise XmlRefusedError("root element is not <xml>")
    return {key: _normalise(value) for key, value in root.items()}


def _normalise(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, dict):
        return {key: _normalise(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalise(item) for item in value]
    return value


def parse_message(body: bytes | str) -> InboundMessage:
    """Parse a decrypted message body into its model."""
    fields = parse_xml_fields(body)
    return message_from_fields_checked(fields)


def message_from_fields_checked(fields: dict[str, Any]) -> InboundMessage:
    for required in ("ToUserName", "FromUserName", "CreateTime", "MsgType"):
        if not isinstance(fields.get(required), str) or not fields[required]:
            raise XmlRefusedError(f"missing {required}")
    try:
        return message_from_fields(fields)
    except ValidationError as exc:
        raise XmlRefusedError("invalid message fields") from exc
