"""Custom-menu CLICK keys → what happens (setting ``menu_click_map``).

One entry per line (or separated by ``;``): ``KEY=text`` sends *text* to the app as the
user's question; ``KEY=reply:text`` answers *text* without the app; a text that is a command
(``/clear``, ``/help``) runs it. The keys ``new_conversation`` and ``help`` work without an
entry. ``\\n`` in a text is a line break, ``\\;`` a literal semicolon.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

_REPLY_PREFIXES = ("reply:", "回复:", "回复：")
_SPLIT = re.compile(r"(?<!\\);|\n")


class MenuKind(StrEnum):
    ASK = "ask"  # the text goes to the app (or runs, when it is a command)
    REPLY = "reply"  # the text is the answer


@dataclass(frozen=True)
class MenuAction:
    kind: MenuKind
    text: str


RESERVED_KEYS = {
    "new_conversation": MenuAction(MenuKind.ASK, "/clear"),
    "help": MenuAction(MenuKind.ASK, "/help"),
}


def _action(value: str) -> MenuAction:
    lowered = value.lower()
    for prefix in _REPLY_PREFIXES:
        if lowered.startswith(prefix):
            return MenuAction(MenuKind.REPLY, value[len(prefix) :].strip())
    return MenuAction(MenuKind.ASK, value)


def parse_menu_map(text: str) -> tuple[dict[str, MenuAction], list[int]]:
    """The entries, and the numbers (1-based) of entries that could not be read."""
    entries: dict[str, MenuAction] = {}
    bad: list[int] = []
    for number, raw in enumerate(_SPLIT.split(text), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        value = value.strip().replace("\\;", ";").replace("\\n", "\n")
        if not sep or not key.strip() or not value:
            bad.append(number)
            continue
        entries[key.strip()] = _action(value)
    return entries, bad


def menu_action(key: str, entries: dict[str, MenuAction]) -> MenuAction | None:
    """What a CLICK with ``key`` does: the configured entry, else a reserved key."""
    if key in entries:
        return entries[key]
    return RESERVED_KEYS.get(key.strip().lower())
