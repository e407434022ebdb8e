"""XML → models. The only module that knows WeChat's XML quirks.

Refuses oversize bodies, DTDs and entity declarations before any parsing, parses with the
standard library's expat (entities refused) into the dict xmltodict would give for WeChat's
attribute-free documents, and normalises what WeChat sends loosely: empty elements and
CDATA (→ ""), surrounding whitespace, event names in any case.

Why not xmltodict itself: it is general (attributes, namespaces, streaming, postprocessors)
and that generality cost ~50 µs per document, half of our whole intake; WeChat's documents
are one ``<xml>`` element of text elements (a few events nest one or two levels, some with
repeated ``<item>``), which three expat callbacks turn into the same dict in a third of the
time (bench/cpu.py). tests/unit/test_parsers.py checks the result against xmltodict.
"""

from __future__ import annotations

from pyexpat import ExpatError, ParserCreate
from typing import Any

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
        root_name, root = _parse_document(raw)
    except (ExpatError, XmlRefusedError, ValueError) as exc:  # all mean "malformed"
        raise XmlRefusedError("malformed XML") from exc
    if root_name != "xml" or not isinstance(root, dict):
        raise XmlRefusedError("root element is not <xml>")
    return root


class _Element:
    __slots__ = ("children", "name", "text")

    def __init__(self, name: str) -> None:
        self.name = name
        self.children: dict[str, Any] | None = None
        self.text: list[str] = []


def _parse_document(raw: bytes) -> tuple[str, Any]:
    """The root element's name and value: a dict of its children (a list for a repeated
    name), or its stripped text; an element without children or text is ""."""
    stack: list[_Element] = []
    done: list[tuple[str, Any]] = []

    def start(name: str, attributes: dict[str, str]) -> None:
        if done:
            raise ValueError("content after the root element")
        if stack and stack[-1].children is None:
            stack[-1].children = {}
        stack.append(_Element(name))

    def end(name: str) -> None:
        element = stack.pop()
        value: Any = element.children
        if value is None:
            value = "".join(element.text).strip()
        if not stack:
            done.append((name, value))
            return
        siblings = stack[-1].children
        assert siblings is not None
        if name in siblings:
            previous = siblings[name]
            if isinstance(previous, list):
                previous.append(value)
            else:
                siblings[name] = [previous, value]
        else:
            siblings[name] = value

    def text(data: str) -> None:
        if stack:
            stack[-1].text.append(data)

    def refuse(*_: Any) -> None:
        raise ValueError("entity or DTD declaration")

    parser = ParserCreate()
    parser.buffer_text = True
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    parser.EntityDeclHandler = refuse
    parser.StartDoctypeDeclHandler = refuse
    parser.Parse(raw, True)
    if len(done) != 1:
        raise ValueError("no root element")
    return done[0]


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
