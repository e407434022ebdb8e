"""Answer parts stored as strings (endpoints/wechat/parts.py) and the custom-menu CLICK map
(endpoints/wechat/menus.py)."""

from __future__ import annotations

import pytest

from endpoints.wechat.menus import (
    RESERVED_KEYS,
    MenuAction,
    MenuKind,
    menu_action,
    parse_menu_map,
)
from endpoints.wechat.parts import Part, PartKind, is_text, media_part, read_part

# --- parts ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [PartKind.IMAGE, PartKind.VOICE])
def test_media_part_round_trip(kind: PartKind) -> None:
    stored = media_part(kind, "MEDIA-id_123")
    assert isinstance(stored, str)
    assert not is_text(stored)
    part = read_part(stored)
    assert part == Part(kind, "MEDIA-id_123")
    assert not part.is_text


def test_media_part_is_distinct_from_any_text_that_looks_alike() -> None:
    for text in ("image:abc", "voice:abc", " \x00image:abc", "[图片] image:abc"):
        assert is_text(text)
        assert read_part(text) == Part(PartKind.TEXT, text)
    assert media_part(PartKind.IMAGE, "abc") != "image:abc"


def test_media_id_with_a_colon_is_kept_whole() -> None:
    assert read_part(media_part(PartKind.VOICE, "a:b:c")).value == "a:b:c"


def test_text_parts_read_back_unchanged() -> None:
    for text in ("", "hello", "你好\n\n（内容较长，回复「1」查看后续）", "a\x00b"):
        part = read_part(text)
        assert part.kind is PartKind.TEXT and part.value == text and part.is_text


@pytest.mark.parametrize(
    ("kind", "media_id"),
    [(PartKind.TEXT, "abc"), (PartKind.IMAGE, ""), (PartKind.VOICE, "")],
)
def test_media_part_needs_a_media_kind_and_an_id(kind: PartKind, media_id: str) -> None:
    with pytest.raises(ValueError):
        media_part(kind, media_id)


@pytest.mark.parametrize(
    "corrupt", ["\x00", "\x00image", "\x00image:", "\x00video:abc", "\x00text:abc", "\x00:abc"]
)
def test_a_corrupt_marker_never_shows_its_bytes(corrupt: str) -> None:
    part = read_part(corrupt)
    assert part.is_text
    assert "\x00" not in part.value and "abc" not in part.value


# --- menu map: parsing -------------------------------------------------------------------


def test_entries_by_line_and_by_semicolon() -> None:
    entries, bad = parse_menu_map("PRICE=What are your prices?; HOURS=reply:Open 9-18\nMAP = 地图")
    assert bad == []
    assert entries == {
        "PRICE": MenuAction(MenuKind.ASK, "What are your prices?"),
        "HOURS": MenuAction(MenuKind.REPLY, "Open 9-18"),
        "MAP": MenuAction(MenuKind.ASK, "地图"),
    }


@pytest.mark.parametrize("prefix", ["reply:", "REPLY:", "Reply:", "回复:", "回复："])
def test_reply_prefixes(prefix: str) -> None:
    entries, bad = parse_menu_map(f"K={prefix}  营业时间 9:00-18:00 ")
    assert bad == []
    assert entries["K"] == MenuAction(MenuKind.REPLY, "营业时间 9:00-18:00")


def test_escapes_line_breaks_and_semicolons() -> None:
    entries, bad = parse_menu_map(r"K=reply:第一行\n第二行\; 还是第二行; L=a\;b")
    assert bad == []
    assert entries["K"] == MenuAction(MenuKind.REPLY, "第一行\n第二行; 还是第二行")
    assert entries["L"] == MenuAction(MenuKind.ASK, "a;b")


def test_the_value_may_contain_equals_signs() -> None:
    entries, _ = parse_menu_map("Q=1+1=?")
    assert entries["Q"] == MenuAction(MenuKind.ASK, "1+1=?")


def test_commands_are_kept_as_ask_entries() -> None:
    entries, _ = parse_menu_map("NEW=/clear\nHELP_ME=/help")
    assert entries["NEW"] == MenuAction(MenuKind.ASK, "/clear")
    assert entries["HELP_ME"] == MenuAction(MenuKind.ASK, "/help")


def test_blank_lines_and_comments_are_skipped_and_bad_entries_numbered() -> None:
    text = "# a comment\nGOOD=text\n\nno equals sign\n=no key\nEMPTY=\n  \nOK=reply:x"
    entries, bad = parse_menu_map(text)
    assert set(entries) == {"GOOD", "OK"}
    assert bad == [4, 5, 6]


def test_an_empty_reply_is_an_entry_with_no_text() -> None:
    entries, bad = parse_menu_map("QUIET=reply:")
    assert bad == []
    assert entries["QUIET"] == MenuAction(MenuKind.REPLY, "")


def test_the_last_entry_for_a_key_wins() -> None:
    entries, _ = parse_menu_map("K=first\nK=second")
    assert entries == {"K": MenuAction(MenuKind.ASK, "second")}


def test_empty_map() -> None:
    assert parse_menu_map("") == ({}, [])
    assert parse_menu_map(" \n ; \n") == ({}, [])


# --- menu map: what a click does ---------------------------------------------------------


def test_reserved_keys() -> None:
    assert RESERVED_KEYS["new_conversation"] == MenuAction(MenuKind.ASK, "/clear")
    assert RESERVED_KEYS["help"] == MenuAction(MenuKind.ASK, "/help")


def test_menu_action_prefers_the_configured_entry() -> None:
    entries, _ = parse_menu_map("help=reply:我们的帮助\nPRICE=价格")
    assert menu_action("help", entries) == MenuAction(MenuKind.REPLY, "我们的帮助")
    assert menu_action("PRICE", entries) == MenuAction(MenuKind.ASK, "价格")


@pytest.mark.parametrize(
    ("key", "command"),
    [
        ("new_conversation", "/clear"),
        ("NEW_CONVERSATION", "/clear"),
        (" new_conversation ", "/clear"),
        ("help", "/help"),
        ("Help", "/help"),
    ],
)
def test_reserved_keys_work_without_an_entry_in_any_case(key: str, command: str) -> None:
    assert menu_action(key, {}) == MenuAction(MenuKind.ASK, command)


def test_unknown_keys_have_no_action() -> None:
    entries, _ = parse_menu_map("PRICE=价格")
    assert menu_action("price", entries) is None  # configured keys are case-sensitive
    assert menu_action("OTHER", entries) is None
    assert menu_action("", entries) is None
