"""Turn Dify answers into what WeChat can show, and build passive-reply XML.

Everything here is a pure function: no Dify imports, no I/O, no clock (callers pass
``create_time``).

* :func:`markdown_to_wechat_text` renders markdown as plain text that reads well in the
  WeChat chat window (which shows no markup at all).  It walks markdown-it-py's token
  stream; there is no regex-based markdown handling.
* :func:`markdown_to_wecom_markdown` renders it as the markdown subset WeCom app messages
  show, by the same walk (a renderer subclass overriding what differs).
* :func:`split_text` cuts a text into parts of at most ``budget_bytes`` UTF-8 bytes at the
  most natural boundary available.
* :func:`cdata`, :func:`text_reply_xml` and :func:`image_reply_xml` build passive replies
  (protocol reference §6).
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from itertools import accumulate

from markdown_it import MarkdownIt
from markdown_it.rules_inline.state_inline import Delimiter, StateInline
from markdown_it.token import Token

__all__ = [
    "SUCCESS_BODY",
    "TEXT_BUDGET_BYTES",
    "WeChatText",
    "cdata",
    "has_tables_or_images",
    "image_reply_xml",
    "markdown_to_wechat_text",
    "markdown_to_wecom_markdown",
    "render_wechat_text",
    "split_text",
    "text_reply_xml",
    "utf8_len",
]

TEXT_BUDGET_BYTES = 2048
"""WeChat passive/customer-service text limit, in UTF-8 bytes."""

SUCCESS_BODY = "success"
"""WeChat's "acknowledged, no reply" body; never encrypted."""


# ---------------------------------------------------------------------------
# markdown -> plain text
# ---------------------------------------------------------------------------

# markdown-it silently drops block content nested deeper than ``maxNesting``; the
# commonmark preset's 20 allows only ~9 nested lists.  40 is still far from Python's
# recursion limit (markdown-it parses nested blocks recursively, and so do we).
_MAX_NESTING = 40

_MD = MarkdownIt("commonmark", {"maxNesting": _MAX_NESTING}).enable("table").enable("strikethrough")


def _is_cjk(char: str) -> bool:
    return unicodedata.east_asian_width(char) in ("W", "F")


def _is_md_punct(char: str) -> bool:
    return unicodedata.category(char)[0] in "PS"


def _is_md_space(char: str) -> bool:
    return char in " \t\n\r\f\v" or unicodedata.category(char) == "Zs"


def _emphasis_tokenize(state: StateInline, silent: bool) -> bool:
    """markdown-it's ``*``/``_`` delimiter scan, made friendly to Chinese text.

    CommonMark refuses ``**注意：**这是`` as bold: a closing run after punctuation must be
    followed by space or punctuation, and Chinese puts neither between words.  As in the
    "CJK-friendly emphasis" proposal, a run next to a CJK character counts as if that
    character were whitespace for the punctuation test.  Everything else is as CommonMark.
    """
    start = state.pos
    marker = state.src[start]
    if silent or marker not in ("*", "_"):
        return False
    end = start
    while end < state.posMax and state.src[end] == marker:
        end += 1
    last = state.src[start - 1] if start > 0 else " "
    after = state.src[end] if end < state.posMax else " "
    last_space, after_space = _is_md_space(last), _is_md_space(after)
    last_punct, after_punct = _is_md_punct(last), _is_md_punct(after)
    left = not after_space and (
        not after_punct or last_space or last_punct or _is_cjk(last) or _is_cjk(after)
    )
    right = not last_space and (
        not last_punct or after_space or after_punct or _is_cjk(after) or _is_cjk(last)
    )
    if marker == "*":
        can_open, can_close = left, right
    else:
        can_open = left and (not right or last_punct)
        can_close = right and (not left or after_punct)
    length = end - start
    for _ in range(length):
        token = state.push("text", "", 0)
        token.content = marker
        state.delimiters.append(
            Delimiter(
                marker=ord(marker),
                length=length,
                token=len(state.tokens) - 1,
                end=-1,
                open=can_open,
                close=can_close,
            )
        )
    state.pos = end
    return True


_MD.inline.ruler.at("emphasis", _emphasis_tokenize)

_HEADING_OPEN, _HEADING_CLOSE = "【", "】"
_BULLETS = ("•", "◦", "▪")
_HR_LINE = "——————"
_IMAGE_LABEL = "[图片]"
_CELL_SEP = "："
_INDENT = "  "

# HTML tags that are removed (their text is kept).  Anything else that merely looks like a
# tag -- "List<String>", "<用户名>", "<ctrl>" -- is ordinary text and stays as written.
# fmt: off
_HTML_TAGS = frozenset({
    "a", "abbr", "address", "article", "aside", "audio", "b", "base", "basefont", "bdi", "bdo",
    "big", "blockquote", "body", "br", "button", "canvas", "caption", "center", "cite", "code",
    "col", "colgroup", "data", "dd", "del", "details", "dfn", "dialog", "dir", "div", "dl",
    "dt", "em", "embed", "fieldset", "figcaption", "figure", "font", "footer", "form", "frame",
    "frameset", "h1", "h2", "h3", "h4", "h5", "h6", "head", "header", "hgroup", "hr", "html",
    "i", "iframe", "img", "input", "ins", "kbd", "label", "legend", "li", "link", "main",
    "mark", "math", "menu", "menuitem", "meta", "nav", "noframes", "noscript", "object", "ol",
    "optgroup", "option", "p", "param", "picture", "pre", "q", "rp", "rt", "ruby", "s", "samp",
    "script", "search", "section", "select", "small", "source", "span", "strike", "strong",
    "style", "sub", "summary", "sup", "svg", "table", "tbody", "td", "template", "textarea",
    "tfoot", "th", "thead", "think", "time", "title", "tr", "track", "tt", "u", "ul", "var",
    "video", "wbr",
})
# Tags that end a line when they appear in an HTML block.
_HTML_BREAK_TAGS = frozenset({
    "address", "article", "aside", "blockquote", "br", "dd", "details", "dialog", "div", "dl",
    "dt", "figcaption", "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr",
    "li", "main", "nav", "ol", "p", "pre", "section", "summary", "table", "think", "tr", "ul",
})
# fmt: on
# Content users must not see: code, and the reasoning of "thinking" models, which Dify apps
# emit as <think>…</think> or inside a <details> block.
_HTML_SKIP_CONTENT = frozenset({"script", "style", "template", "think", "details"})


@dataclass(slots=True)
class _Block:
    """A block-level node: an ``*_open`` token (with children) or a leaf block token."""

    token: Token
    children: list[_Block] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.token.type.removesuffix("_open")


@dataclass(frozen=True)
class WeChatText:
    """An answer rendered for WeChat, and whether the text can only approximate it."""

    text: str
    #: Tables or images: shown as text blocks and links, better read on a page.
    rich: bool


def markdown_to_wechat_text(markdown: str) -> str:
    """Render *markdown* as plain text for the WeChat chat window.

    Headings become ``【Title】`` (levels 1-2) or plain lines, lists get ``•``/``◦``/``▪`` or
    their numbers, tables become ``Header：value`` blocks per row, links ``text (url)``,
    images ``[图片] alt (url)``; emphasis markers, code fences and HTML tags disappear while
    their text stays, code blocks are indented by two spaces.  Blocks are separated by one
    blank line.
    """
    return render_wechat_text(markdown).text


def render_wechat_text(markdown: str) -> WeChatText:
    """:func:`markdown_to_wechat_text`, plus whether the answer has tables or images,
    from the same parse."""
    markdown = strip_leading_reasoning(markdown)
    if not markdown or markdown.isspace():
        return WeChatText("", False)
    tokens = _parse_tokens(markdown)
    if tokens is None:
        return WeChatText(_normalize_whitespace(_plain_source(markdown)), False)
    rich = _has_tables_or_images(tokens)
    try:
        rendered = _TEXT.blocks(_build_tree(tokens), 0)
    except RecursionError:  # pragma: no cover - bounded by _MAX_NESTING
        return WeChatText(_normalize_whitespace(_plain_source(markdown)), rich)
    return WeChatText(_normalize_whitespace(rendered), rich)


def has_tables_or_images(markdown: str) -> bool:
    """Whether *markdown* has a table or an image (no parse when it cannot have one)."""
    if "|" not in markdown and "![" not in markdown:
        return False
    tokens = _parse_tokens(strip_leading_reasoning(markdown))
    return tokens is not None and _has_tables_or_images(tokens)


def _has_tables_or_images(tokens: list[Token]) -> bool:
    for token in tokens:
        if token.type == "table_open":
            return True
        if token.type == "inline" and any(c.type == "image" for c in token.children or []):
            return True
    return False


def markdown_to_wecom_markdown(markdown: str) -> str:
    """Render *markdown* as the markdown subset WeCom app messages show (``msgtype``
    ``markdown``, protocol reference §10.4).

    Kept as markdown: headings (``# Title``, same level; inside a list or quote, where
    WeCom shows none, ``**Title**``), ``**bold**``, links ``[text](url)`` (autolinks and
    links whose text is their URL as the bare URL), ``inline code`` and ``> `` quotes --
    also inside lists, tables and quotes.  Images become links ``[图片 alt](url)`` (or
    ``[图片](url)``).  Everything else is rendered as :func:`markdown_to_wechat_text` does:
    lists with the same bullets, numbers and indentation, tables as ``Header：value``
    blocks, rules as a line of dashes, HTML tags and leading reasoning removed, italics and
    strikethrough markers dropped (``3*4*5`` keeps its stars).  Code blocks are indented by
    four spaces, which keeps them markdown code blocks.  A line whose text would otherwise
    start with markup (``\\# 不是标题`` in the answer) gets a U+200B in front.

    The result is also valid input for :func:`markdown_to_wechat_text`, which sends it as
    text where WeCom markdown cannot go.  Bound, checked on every call: that text is never
    longer in UTF-8 bytes than ``markdown_to_wechat_text(markdown)`` plus 3 bytes per
    U+200B this function put in front of a line -- no more than the plain rendering for an
    answer that starts no line with escaped or HTML-borne markup.  (Should some unusual
    literal text -- markdown inside raw HTML, markup whose delimiters only HTML tags kept
    apart -- be read back as longer markup, the plain rendering with its markup characters
    backslash-escaped is returned instead: it converts back to at most the plain rendering,
    though WeCom will likely show the backslashes.)
    """
    markdown = strip_leading_reasoning(markdown)
    if not markdown or markdown.isspace():
        return ""
    tree = _parse(markdown)
    if tree is None:
        return _escape_markdown(_normalize_whitespace(_plain_source(markdown)))
    renderer = _WeComRenderer()
    try:
        text = _normalize_whitespace(_TEXT.blocks(tree, 0))
        wecom = renderer.render(tree)
    except RecursionError:  # pragma: no cover - bounded by _MAX_NESTING
        return _escape_markdown(_normalize_whitespace(_plain_source(markdown)))
    allowance = utf8_len(text) + _GUARD_BYTES * renderer.guards
    if utf8_len(markdown_to_wechat_text(wecom)) <= allowance:
        return wecom
    return _escape_markdown(text)


_REASONING_TAGS = ("think", "details")


def strip_leading_reasoning(answer: str) -> str:
    """Drop the reasoning block a "thinking" model puts before its answer.

    Dify apps emit it as ``<think>…</think>`` or, in some versions, as a ``<details>``
    block, possibly spanning several markdown paragraphs. Only a block that opens the
    answer is removed, so the words ``<think>`` inside the answer or a code block stay.
    """
    body = answer.lstrip()
    lowered = body.lower()
    for tag in _REASONING_TAGS:
        if lowered.startswith(f"<{tag}") and lowered[len(tag) + 1 : len(tag) + 2] in (">", " "):
            end = lowered.find(f"</{tag}>")
            if end == -1:
                return answer  # unterminated: keep everything rather than lose the answer
            return body[end + len(tag) + 3 :]
    return answer


def _plain_source(markdown: str) -> str:
    return markdown.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "\ufffd")


def _normalize_whitespace(text: str) -> str:
    """Strip trailing spaces, keep at most one blank line in a row, trim blank edges."""
    out: list[str] = []
    for raw in text.split("\n"):
        line = raw.rstrip()
        if line or (out and out[-1]):
            out.append(line)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out)


def _parse(markdown: str) -> list[_Block] | None:
    """The block tree of *markdown*, or None where rendering it could lose text."""
    tokens = _parse_tokens(markdown)
    return None if tokens is None else _build_tree(tokens)


def _parse_tokens(markdown: str) -> list[Token] | None:
    """markdown-it's tokens for *markdown*, or None where rendering them could lose text."""
    try:
        tokens = _MD.parse(markdown)
    except RecursionError:  # pathological nesting inside markdown-it itself
        return None
    if any(tok.level >= _MAX_NESTING - 1 for tok in tokens):
        # markdown-it stopped descending and dropped the deepest content: never lose text.
        return None
    return tokens


def _build_tree(tokens: list[Token]) -> list[_Block]:
    root: list[_Block] = []
    stack: list[list[_Block]] = [root]
    for tok in tokens:
        if tok.nesting == 1:
            node = _Block(tok)
            stack[-1].append(node)
            stack.append(node.children)
        elif tok.nesting == -1:
            if len(stack) > 1:
                stack.pop()
        else:
            stack[-1].append(_Block(tok))
    return root


# Blocks that always stand apart with a blank line, even inside a tight list item.
_SPACIOUS_BLOCKS = frozenset({"fence", "code_block", "table", "blockquote", "html_block", "hr"})

_TEXT_TYPES = frozenset({"text", "text_special"})
_EMPHASIS_TYPES = frozenset({"em_open", "em_close", "strong_open", "strong_close"})
_MAX_IMAGE_DEPTH = 8
_EMPTY_SKIPPABLE = _TEXT_TYPES | _EMPHASIS_TYPES
_NO_LITERAL: frozenset[int] = frozenset()

_ImageText = Callable[[str, str], str]  # an image from its alt text and URL


class _TextRenderer:
    """Walks a block tree (:func:`_build_tree`) and renders it as WeChat plain text.

    Every output dialect shares this walk; :class:`_WeComRenderer` overrides the hooks
    where WeCom markdown differs.  Stateless: the module keeps one instance, ``_TEXT``.
    """

    __slots__ = ()

    code_indent = _INDENT
    """What every non-blank line of a code block starts with."""
    keeps_bold = False
    """Whether strong emphasis stays markup (:meth:`bold_span`) or only its text is kept."""

    # --- blocks ----------------------------------------------------------------------------

    def blocks(self, nodes: list[_Block], list_depth: int) -> str:
        out: list[str] = []
        prev: _Block | None = None
        block = self.block
        for node in nodes:
            text = block(node, list_depth)
            if not text.strip():
                continue
            if prev is not None:
                tight = (
                    (_is_hidden_paragraph(prev) or _is_hidden_paragraph(node))
                    and prev.kind not in _SPACIOUS_BLOCKS
                    and node.kind not in _SPACIOUS_BLOCKS
                )
                out.append("\n" if tight else "\n\n")
            out.append(text)
            prev = node
        return "".join(out)

    def block(self, node: _Block, list_depth: int) -> str:
        kind = node.kind
        if kind == "inline":
            return self.inline(node.token)
        if kind == "paragraph":
            return "".join(self.inline(child.token) for child in node.children)
        if kind == "heading":
            return self.heading(node)
        if kind in ("fence", "code_block"):
            # Indented, so that a reader -- and split_text -- can tell where the code ends.
            lines = node.token.content.rstrip("\n").split("\n")
            indent = self.code_indent
            return "\n".join(f"{indent}{line}" if line.strip() else "" for line in lines)
        if kind in ("bullet_list", "ordered_list"):
            return self.list_block(node, list_depth)
        if kind == "blockquote":
            return self.blockquote(node, list_depth)
        if kind == "table":
            return self.table(node)
        if kind == "hr":
            return _HR_LINE
        if kind == "html_block":
            return self.html_block(node.token.content)
        # Unknown container or leaf (e.g. from a future markdown-it rule): keep its text.
        if node.children:
            return self.blocks(node.children, list_depth)
        return node.token.content

    def heading(self, node: _Block) -> str:
        title = "".join(self.inline(child.token) for child in node.children).strip()
        if not title:
            return ""
        if node.token.tag in ("h1", "h2"):
            return f"{_HEADING_OPEN}{title}{_HEADING_CLOSE}"
        return title

    def blockquote(self, node: _Block, list_depth: int) -> str:
        inner = _normalize_whitespace(self.blocks(node.children, list_depth))
        return "\n".join(f"> {line}" if line else ">" for line in inner.split("\n"))

    def list_block(self, node: _Block, list_depth: int) -> str:
        ordered = node.kind == "ordered_list"
        number = 1
        if ordered:
            start = node.token.attrGet("start")
            if start is not None:
                try:
                    number = int(start)
                except (TypeError, ValueError):
                    number = 1
        delimiter = node.token.markup or "."
        bullet = _BULLETS[list_depth % len(_BULLETS)]
        tight = True
        markers: list[str] = []
        items: list[str] = []
        for item in node.children:
            if item.kind != "list_item":
                continue
            for child in item.children:
                if child.kind == "paragraph" and not child.token.hidden:
                    tight = False
            marker = f"{number}{delimiter}" if ordered else bullet
            number += 1
            body = _normalize_whitespace(self.item_blocks(item, list_depth + 1))
            markers.append(marker)
            items.append(self.item(marker, body))
        return self.join_items(items, markers, tight=tight, ordered=ordered)

    def item_blocks(self, item: _Block, list_depth: int) -> str:
        return self.blocks(item.children, list_depth)

    def item(self, marker: str, body: str) -> str:
        if not body:
            return marker
        lines = body.split("\n")
        rendered = [f"{marker} {lines[0]}"]
        rendered.extend(f"{_INDENT}{line}" if line else "" for line in lines[1:])
        return "\n".join(rendered)

    def join_items(
        self, items: list[str], markers: list[str], *, tight: bool, ordered: bool
    ) -> str:
        return ("\n" if tight else "\n\n").join(items)

    def table(self, node: _Block) -> str:
        headers: list[str] = []
        rows: list[list[str]] = []
        for section in node.children:
            for tr in section.children:
                cells = [
                    _normalize_whitespace(
                        "".join(self.inline(child.token) for child in cell.children)
                    ).strip()
                    for cell in tr.children
                ]
                if section.kind == "thead":
                    headers = cells
                else:
                    rows.append(cells)
        if not any(headers):
            joined = (" | ".join(row) for row in rows)
            return "\n".join(line for line in joined if line.strip(" |"))
        if not rows:
            return " | ".join(headers)
        blocks: list[str] = []
        for row in rows:
            lines: list[str] = []
            for index, header in enumerate(headers):
                value = row[index] if index < len(row) else ""
                lines.append(f"{header}{_CELL_SEP}{value}" if header else value)
            blocks.append("\n".join(line for line in lines if line))
        return "\n\n".join(block for block in blocks if block)

    def html_block(self, content: str) -> str:
        return _html_block_text(content, _image_text)

    # --- inline ----------------------------------------------------------------------------

    def inline(self, token: Token, depth: int = 0) -> str:
        if token.type != "inline":
            return "" if token.nesting else token.content
        # Without a "*" in its source, an inline has no "*" emphasis to print literally.
        return self.inline_children(token.children or [], depth, stars="*" in token.content)

    def inline_children(self, children: list[Token], depth: int, *, stars: bool = True) -> str:
        literal = _literal_emphasis(children) if stars else _NO_LITERAL
        out: list[str] = []
        links: list[tuple[str, bool, int]] = []
        strong: list[int] = []
        for index, tok in enumerate(children):
            kind = tok.type
            if kind in _TEXT_TYPES:
                out.append(tok.content)
            elif kind == "code_inline":
                out.append(self.code_span(tok.content))
            elif kind in ("softbreak", "hardbreak"):
                out.append("\n")
            elif kind in _EMPHASIS_TYPES:
                if index in literal:
                    out.append(tok.markup)
                elif self.keeps_bold and kind[0] == "s":
                    if kind == "strong_open":
                        strong.append(len(out))
                    elif strong:
                        mark = strong.pop()
                        if not strong:  # the outermost of nested strong spans
                            self.bold_span(out, mark)
            elif kind in ("s_open", "s_close"):
                continue
            elif kind == "link_open":
                links.append((str(tok.attrGet("href") or ""), tok.markup == "autolink", len(out)))
            elif kind == "link_close":
                if links:
                    href, autolink, mark = links.pop()
                    self.link(out, mark, href, autolink)
            elif kind == "image":
                out.append(self.image(tok, depth))
            elif kind == "html_inline":
                out.append(self.html_inline(tok.content))
            elif tok.nesting == 0:
                out.append(tok.content)
        return "".join(out)

    def code_span(self, content: str) -> str:
        return content

    def bold_span(self, out: list[str], mark: int) -> None:
        """Mark ``out[mark:]``, the text of a strong span, as bold."""

    def link(self, out: list[str], mark: int, href: str, autolink: bool) -> None:
        """Render the link whose text is ``out[mark:]`` (in place)."""
        out.append(_link_suffix(href, autolink, "".join(out[mark:])))

    def image(self, tok: Token, depth: int) -> str:
        return _image_text(_image_alt(tok, depth), _display_url(str(tok.attrGet("src") or "")))

    def html_inline(self, content: str) -> str:
        return _html_inline_text(content, _image_text)


def _is_hidden_paragraph(node: _Block) -> bool:
    return node.kind == "paragraph" and node.token.hidden


_TEXT = _TextRenderer()


# --- WeCom markdown ----------------------------------------------------------------------
#
# The result is read twice: by the WeCom client, which knows only the subset (§10.4), and
# by markdown_to_wechat_text (a full CommonMark parser) when the part goes out as text.
# What the renderer writes as text -- list lines, table rows, code -- must stay text for
# both, and convert back to the same bytes.  The devices:
#
# * Lists are never markdown lists: bullets "•◦▪" are no list markers anyway; an ordered
#   list that could be read as one gets U+200A (hair space) before each item that starts a
#   paragraph.  CommonMark trims it off a paragraph's start, so it costs nothing there.
# * The lines inside a list item (indented in the text rendering) start with _PIN, a space
#   and a no-break space, standing for the first two spaces of their indentation: a line
#   starting with a no-break space is a paragraph line for CommonMark, never code, a list
#   item or a quote, and the parser strips only the plain space, so it converts back to as
#   many bytes as the two spaces it replaces.  In WeCom it looks like the indentation.
# * Code blocks are indented by four spaces: CommonMark code blocks, so "# comment" lines
#   and "**kwargs" stay code, and convert back to the text rendering's two-space indent.
#   While rendering, a code line starts with _CODE_MARK (turned into the indentation at the
#   end), so that list items can tell code lines from text; a code block that cannot be a
#   markdown code block (one that shares a line with a list marker, or that a tight list
#   continues right after) is written as pinned text lines instead.
# * WeCom has no escape character (a backslash would show).  A line whose text would start
#   with markup -- "\# 不是标题" in the answer, a "> " or "1. " from raw HTML -- gets a
#   zero-width space (U+200B) in front: invisible, and neither WeCom (whose docs show "# "
#   and "> " at the very start of a line only -- we assume indented lines, like code, are
#   not read as markup) nor CommonMark sees markup after it.  A full-width "＃" would read
#   the same but changes the character a user copies, and there is no full-width
#   counterpart for "1." or "```".

_CODE_MARK = "\x00"  # never in rendered text: markdown-it turns NUL into U+FFFD
_CODE_INDENT = "    "
_PIN = " \u00a0"
_LIST_START = "\u200a"
_ZWSP = "\u200b"
_GUARD_BYTES = len(_ZWSP.encode("utf-8"))
_IMAGE_WORD = "图片"

# Text at the start of a line that CommonMark or WeCom would read as markup.  "\s*$":
# trailing (Unicode) whitespace is stripped later.
_MARKUP_START = re.compile(
    r"^(?:"
    r"[ \t]"  # indentation (text from raw HTML): dropped, else it could become code
    r"|#{1,6}(?:[ \t]|\s*$)"  # heading
    r"|>"  # quote
    r"|[-+*](?:[ \t]|\s*$)"  # bullet item
    r"|\d{1,9}[.)](?:[ \t]|\s*$)"  # ordered item
    r"|```|~~~"  # code fence
    r"|<[A-Za-z/!?]"  # HTML block, WeCom's <font>
    r"|\[[^\]]*\]:"  # link reference definition
    r"|([-*_])[ \t]*(?:\1[ \t]*){2,}\s*$"  # thematic break
    r"|(?:=+|-+)\s*$"  # setext heading underline
    r"|(?=[^\n]*\|)(?=[^\n]*-)[|:\- \t]+\s*$"  # table delimiter row
    r")",
    re.MULTILINE,
)
_BACKTICK_RUN = re.compile("`+")


class _WeComRenderer(_TextRenderer):
    """Renders a block tree as WeCom markdown (see :func:`markdown_to_wecom_markdown`).

    One instance per answer: it counts what it is inside of, and the guards it adds.
    """

    __slots__ = ("_bold_off", "_inert", "_nested", "guards")

    code_indent = _CODE_MARK
    keeps_bold = True

    def __init__(self) -> None:
        self._nested = 0  # list items and quotes around the current block
        self._inert = 0  # list items around the current block
        self._bold_off = 0  # inside a heading written as bold
        self.guards = 0  # lines given a _ZWSP

    def render(self, tree: list[_Block]) -> str:
        return _normalize_whitespace(self.blocks(tree, 0)).replace(_CODE_MARK, _CODE_INDENT)

    def guard(self, text: str) -> str:
        """Put a _ZWSP before every line of *text* that would start with markup."""
        if not _MARKUP_START.search(text):
            return text
        lines = text.split("\n")
        for index, line in enumerate(lines):
            if line[:1] in (" ", "\t"):
                line = lines[index] = line.lstrip(" \t")
            if _MARKUP_START.match(line):
                lines[index] = _ZWSP + line
                self.guards += 1
        return "\n".join(lines)

    # --- blocks ----------------------------------------------------------------------------

    def block(self, node: _Block, list_depth: int) -> str:
        text = super().block(node, list_depth)
        return self.guard(text) if node.kind in ("paragraph", "table") else text

    def heading(self, node: _Block) -> str:
        if not self._nested:
            title = self._one_line(node)
            return f"{'#' * int(node.token.tag[1:])} {title}" if title else ""
        self._bold_off += 1  # WeCom shows no heading here: bold, and nothing bold inside
        try:
            return _bold(self._one_line(node))
        finally:
            self._bold_off -= 1

    def _one_line(self, node: _Block) -> str:
        text = "".join(self.inline(child.token) for child in node.children)
        return " ".join(part for part in map(str.strip, text.split("\n")) if part)

    def blockquote(self, node: _Block, list_depth: int) -> str:
        self._nested += 1
        try:
            return super().blockquote(node, list_depth)
        finally:
            self._nested -= 1

    def item_blocks(self, item: _Block, list_depth: int) -> str:
        self._nested += 1
        self._inert += 1
        try:
            return super().item_blocks(item, list_depth)
        finally:
            self._nested -= 1
            self._inert -= 1

    def item(self, marker: str, body: str) -> str:
        if not body:
            return marker
        lines = body.split("\n")
        rendered = [f"{marker} {lines[0].replace(_CODE_MARK, _INDENT)}"]
        for line in lines[1:]:
            if not line:
                rendered.append("")
            elif _is_code_line(line):
                rendered.append(_INDENT + line)
            else:
                rendered.append(_pin(line))
        return "\n".join(rendered)

    def join_items(
        self, items: list[str], markers: list[str], *, tight: bool, ordered: bool
    ) -> str:
        if ordered and not self._inert:
            for index, marker in enumerate(markers):
                if index == 0 or not tight:  # starts a paragraph: could start a list
                    items[index] = _LIST_START + items[index]
                elif marker[:-1] == "1":  # "1." could interrupt the paragraph above
                    items[index] = _ZWSP + items[index]
                    self.guards += 1
        joined = super().join_items(items, markers, tight=tight, ordered=ordered)
        return _pin_code_next_to_text(joined)

    def html_block(self, content: str) -> str:
        text = self.guard(_html_block_text(content, _wecom_html_image))
        if "![" in text:  # markdown in an HTML block is text; an image would read longer
            self.guards += text.count("![")
            text = text.replace("![", f"!{_ZWSP}[")
        return text

    # --- inline ----------------------------------------------------------------------------

    def code_span(self, content: str) -> str:
        spaced = content[:1] == " " == content[-1:] and content.strip(" ")
        if "`" not in content and not spaced:
            return f"`{content}`"
        # A longer fence than any backtick run inside; CommonMark drops one space per side.
        runs = _BACKTICK_RUN.findall(content)
        fence = "`" * (max(map(len, runs), default=0) + 1)
        return f"{fence} {content} {fence}"

    def bold_span(self, out: list[str], mark: int) -> None:
        if not self._bold_off:
            out[mark:] = [_bold("".join(out[mark:]))]

    def link(self, out: list[str], mark: int, href: str, autolink: bool) -> None:
        out[mark:] = [_wecom_link(href, autolink, "".join(out[mark:]))]

    def image(self, tok: Token, depth: int) -> str:
        return _wecom_image(_image_alt(tok, depth), str(tok.attrGet("src") or ""))

    def html_inline(self, content: str) -> str:
        return _html_inline_text(content, _wecom_html_image)


def _is_code_line(line: str) -> bool:
    return line.lstrip(" ").startswith(_CODE_MARK)


def _pin(line: str) -> str:
    """*line* (of a list item's body) indented one level more, as a pinned line."""
    if line.startswith(_PIN):
        return f"{_PIN}{_INDENT}{line[len(_PIN) :]}"
    # All of the line is text now: a code line or a pinned line inside it (after quote
    # markers) goes back to plain indentation.
    start = 0
    while line.startswith(">", start):
        start += 2 if line.startswith("> ", start) else 1
    if line.startswith(_PIN, start):
        line = f"{line[:start]}{_INDENT}{line[start + len(_PIN) :]}"
    return _PIN + line.replace(_CODE_MARK, _INDENT)


def _pin_code_next_to_text(text: str) -> str:
    """Write the code lines right before or after a text line (no blank line between:
    a tight list going on, a code block opening an item) as pinned text lines."""
    if _CODE_MARK not in text:
        return text
    lines = text.split("\n")
    start = -1  # first line of the current run of code lines
    for index in range(len(lines) + 1):
        line = lines[index] if index < len(lines) else ""
        if line and _is_code_line(line):
            if start == -1:
                start = index
            continue
        if start != -1 and (line or (start > 0 and lines[start - 1])):
            for run in range(start, index):  # body lines: they start with _INDENT
                lines[run] = _PIN + lines[run][len(_INDENT) :].replace(_CODE_MARK, _INDENT)
        start = -1
    return "\n".join(lines)


def _bold(text: str) -> str:
    """``**text**`` line by line, whitespace around each line kept outside the markers."""
    lines = text.split("\n")
    for index, line in enumerate(lines):
        core = line.strip()
        if core:
            lead = len(line) - len(line.lstrip())
            lines[index] = f"{line[:lead]}**{core}**{line[lead + len(core) :]}"
    return "\n".join(lines)


def _link_destination(href: str) -> str:
    """*href* (normalized by markdown-it) for ``[text](…)``: as written where that is safe
    (shorter, and readable), else percent-encoded.  WeCom ends a link at the first ")"."""
    url = _display_url(href)
    if any(char.isspace() or not char.isprintable() or char in "<>" for char in url):
        url = href
    return url.replace("(", "%28").replace(")", "%29")


def _wecom_link(href: str, autolink: bool, label: str) -> str:
    if autolink or not href:
        return label
    url = _display_url(href)
    text = label.strip()
    if not text:
        return url
    if text in (url, href) or (href.startswith("mailto:") and text == href[len("mailto:") :]):
        return label
    if "[" in label or "]" in label:  # no link markup inside link text
        return f"{label} ({url})"
    return f"[{' '.join(label.split(chr(10)))}]({_link_destination(href)})"


def _wecom_image(alt: str, href: str) -> str:
    if not href or "[" in alt or "]" in alt:
        return _image_text(alt, _display_url(href))
    label = f"{_IMAGE_WORD} {alt}" if alt else _IMAGE_WORD
    return f"[{label}]({_link_destination(href)})"


def _wecom_html_image(alt: str, src: str) -> str:
    href = _MD.normalizeLink(src) if src else ""
    if not href or not _MD.validateLink(href):
        return _image_text(alt, src)
    return _wecom_image(alt, href)


_ESCAPED = re.compile(r"[\\`*_\[\]<&~|]")
_ESCAPED_AT_LINE_START = frozenset("#>-+=:")


def _escape_markdown(text: str) -> str:
    """*text* as markdown that renders as *text* (less indentation): every character that
    could start markup is backslash-escaped.  The fallback of markdown_to_wecom_markdown."""
    lines = text.split("\n")
    for index, raw in enumerate(lines):
        line = _ESCAPED.sub(r"\\\g<0>", raw.lstrip(" \t"))
        digits = len(line) - len(line.lstrip("0123456789"))
        if 0 < digits <= 9 and line[digits : digits + 1] in (".", ")"):
            line = f"{line[:digits]}\\{line[digits:]}"
        elif line[:1] in _ESCAPED_AT_LINE_START:
            line = "\\" + line
        lines[index] = line
    return "\n".join(lines)


# --- inline helpers ----------------------------------------------------------------------


def _display_url(href: str) -> str:
    # markdown-it percent-encodes / punycodes hrefs; show them the way they were written.
    return _MD.normalizeLinkText(href) if href else ""


def _link_suffix(href: str, autolink: bool, text: str) -> str:
    if autolink or not href:
        return ""
    url = _display_url(href)
    label = text.strip()
    if not label:
        return url
    if label in (url, href) or (href.startswith("mailto:") and label == href[len("mailto:") :]):
        return ""
    return f" ({url})"


def _image_alt(tok: Token, depth: int) -> str:
    if depth < _MAX_IMAGE_DEPTH:
        alt = _TEXT.inline_children(tok.children or [], depth + 1)
    else:
        alt = tok.content
    return " ".join(alt.split())


def _image_text(alt: str, url: str) -> str:
    if alt and url:
        return f"{_IMAGE_LABEL} {alt} ({url})"
    if alt or url:
        return f"{_IMAGE_LABEL} {alt or url}"
    return _IMAGE_LABEL


_ADJACENT_LOOKAROUND = 4  # bounded: pathological "*****…" runs nest thousands deep


def _adjacent_char(children: list[Token], index: int, step: int) -> str:
    """The character right before (step=-1) or after (step=1) token *index*, or ""."""
    pos = index + step
    for _ in range(_ADJACENT_LOOKAROUND):
        if not 0 <= pos < len(children):
            break
        tok = children[pos]
        if tok.content and (tok.type in _TEXT_TYPES or tok.type == "code_inline"):
            return tok.content[-1] if step < 0 else tok.content[0]
        if tok.content or tok.type not in _EMPTY_SKIPPABLE:
            break
        pos += step
    return ""


def _is_ascii_alnum(char: str) -> bool:
    return bool(char) and char.isascii() and char.isalnum()


def _literal_emphasis(children: list[Token]) -> set[int]:
    """Token indexes of ``*`` emphasis pairs that are really arithmetic; printed literally.

    CommonMark allows intraword ``*`` emphasis, so ``3*4=12 和 5*6=30`` would lose its
    products.  A pair with a delimiter squeezed between ASCII letters/digits is almost never
    meant as emphasis in chat answers.
    """
    literal: set[int] = set()
    stack: list[int] = []
    for index, tok in enumerate(children):
        if tok.type in ("em_open", "strong_open"):
            stack.append(index)
        elif tok.type in ("em_close", "strong_close") and stack:
            opener = stack.pop()
            if tok.markup.startswith("*"):
                open_intraword = _is_ascii_alnum(_adjacent_char(children, opener, -1)) and (
                    _is_ascii_alnum(_adjacent_char(children, opener, 1))
                )
                close_intraword = _is_ascii_alnum(_adjacent_char(children, index, -1)) and (
                    _is_ascii_alnum(_adjacent_char(children, index, 1))
                )
                if open_intraword or close_intraword:
                    literal.update((opener, index))
    return literal


# --- HTML --------------------------------------------------------------------------------


class _HtmlText(HTMLParser):
    """Collects the text of an HTML fragment; known tags vanish, unknown ones stay."""

    def __init__(self, *, block: bool, image: _ImageText) -> None:
        super().__init__(convert_charrefs=True)
        self._block = block
        self._image = image
        self._skipping = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HTML_SKIP_CONTENT:
            self._skipping += 1
        self._tag(tag, attrs)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag(tag, attrs)

    def _tag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skipping and tag not in _HTML_SKIP_CONTENT:
            return
        if tag not in _HTML_TAGS:
            self.parts.append(self.get_starttag_text() or "")
        elif tag == "img":
            values = dict(attrs)
            alt = " ".join((values.get("alt") or "").split())
            src = values.get("src") or ""
            if alt or src:
                self.parts.append(self._image(alt, src))
        elif tag == "br" or (self._block and tag in _HTML_BREAK_TAGS):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _HTML_SKIP_CONTENT:
            self._skipping = max(0, self._skipping - 1)
        elif self._skipping:
            return
        elif tag not in _HTML_TAGS:
            self.parts.append(f"</{tag}>")
        elif self._block and tag in _HTML_BREAK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def _html_block_text(content: str, image: _ImageText) -> str:
    parser = _HtmlText(block=True, image=image)
    parser.feed(content)
    parser.close()
    lines = (line.strip() for line in "".join(parser.parts).split("\n"))
    return _normalize_whitespace("\n".join(lines))


def _html_tag_name(content: str) -> str:
    start = 2 if content.startswith("</") else 1
    end = start
    while (
        end < len(content)
        and content[end].isascii()
        and (content[end].isalnum() or content[end] == "-")
    ):
        end += 1
    return content[start:end].lower()


def _html_inline_text(content: str, image: _ImageText) -> str:
    if content.startswith(("<!", "<?")):  # comment, declaration, CDATA, processing instr.
        return ""
    name = _html_tag_name(content)
    if name not in _HTML_TAGS:
        return content
    if name in ("br", "img"):
        parser = _HtmlText(block=False, image=image)
        parser.feed(content)
        parser.close()
        return "".join(parser.parts)
    return ""


# ---------------------------------------------------------------------------
# splitting
# ---------------------------------------------------------------------------


def utf8_len(text: str) -> int:
    """Length of *text* in UTF-8 bytes (lone surrogates count 3, as WeChat would see)."""
    return len(text.encode("utf-8", "surrogatepass"))


# Boundary ranks of line breaks, best first (see _choose_cut).  "Top-level" means outside
# any list item; a code block or table row "fits" if it is no bigger than the budget.
# Tier A: cuts between blocks, then inside list items, then inside blocks that cannot fit.
_RANK_SECTION = 110  # right before a heading
_RANK_PARAGRAPH = 100  # at a blank line between top-level blocks
_RANK_STRUCTURE = 90  # right before a top-level list item, quote, rule or code block
_RANK_LINE = 80  # any other line break between top-level lines
_RANK_LEAD_IN = 70  # right after a top-level line ending with a colon ("步骤：")
_RANK_IN_ITEM = 60  # inside a list item: before a sub-item or at a blank line
_RANK_ITEM_LEVEL = 3  # ... less this per level deeper; other line breaks in items rank 1 less
_MAX_ITEM_LEVELS = 6
_RANK_IN_BLOCK = 30  # inside a table row or item paragraph (see below) that does not fit
_RANK_IN_CODE_GAP = 25  # at a blank line inside a code block that does not fit
_RANK_IN_CODE = 20  # inside a code block and its blank-line-delimited chunk; neither fits
_TIER_A = 10
# Tier B: inside a block that fits, used only when tier A has nothing.  Blocks: a code
# block, a table row, a paragraph of several lines after a blank line in a list item
# (often code written unindented between list items, so rendered at the item's indent),
# and a blank-line-delimited chunk of a code block that does not fit as a whole.
_RANK_HEADING_KEEP = 9  # after a heading followed by a block that fits, but not with it
_RANK_KEPT_BLOCK = 8
_RANK_KEPT_CODE_GAP = 7
_RANK_KEPT_CODE = 6
_TIER_B = 5
# After a heading otherwise: only once even sentence ends and spaces are exhausted.
_RANK_AFTER_HEADING = 1

# Line kinds seen by _line_boundaries.
_BLANK, _PLAIN, _ITEM, _HEADING, _OTHER, _CODE = range(6)

_SENTENCE_ENDS = "。！？!?.；;"
_ASCII_SENTENCE_ENDS = frozenset("!?.;")
_CLOSERS = frozenset("\"')]}”’）】」』》〉〕］｝")
_SPACES = " \t\u3000"
_COMMAS = "，,、"
_LIST_MARKS = ("• ", "◦ ", "▪ ", "- ", "* ", "+ ", "> ", "#", "【", _HR_LINE)
_ITEM_MARKS = ("• ", "◦ ", "▪ ", "- ", "* ", "+ ")
_LEAD_IN_ENDS = ("：", ":")
_ZWJ = "\u200d"
_FILL_DIVISOR = 3  # a natural boundary counts once the part holds >= 1/3 of the budget
_GRAPHEME_BACKOFF = 32


def split_text(text: str, budget_bytes: int = TEXT_BUDGET_BYTES) -> list[str]:
    """Split *text* into parts of at most *budget_bytes* UTF-8 bytes each.

    Cuts go to the most natural boundary that leaves the part at least a third full,
    preferring a line break -- before a heading, at a blank line, before a list item -- over
    a sentence end, a space or comma, and only then a hard cut between grapheme clusters.
    The text is read as :func:`markdown_to_wechat_text` renders it (list items continue on
    indented lines, code blocks are indented, table rows are ``Header：value`` lines): a
    part ends inside a list item only if no boundary between blocks is in reach, never
    inside a code block or table row that fits in a part unless nothing else is, and not
    right after a heading.  A code block bigger than a part is cut at its line breaks
    (blank lines first).  Fenced code in raw markdown is recognised too.

    Whitespace at the cut points is dropped, leading/trailing blank lines of every part
    are stripped and no part is empty; apart from that the parts reproduce *text* in order.
    Runs in linear time.
    """
    if budget_bytes < 4:
        raise ValueError("budget_bytes must be at least 4 (one UTF-8 code point)")
    if not text or text.isspace():
        return []
    if utf8_len(text) <= budget_bytes:
        start, _ = _skip_whitespace(text, 0, budget_bytes)
        part = text[start:].rstrip()
        return [part] if part else []

    n = len(text)
    if text.isascii():
        cum = list(range(n + 1))
    else:
        cum = list(accumulate(map(_code_point_bytes, text), initial=0))
    newlines, ranks, section_starts = _line_boundaries(text, cum, budget_bytes)

    parts: list[str] = []
    pos, first = _skip_whitespace(text, 0, budget_bytes)
    while pos < n:
        limit = cum[pos] + budget_bytes
        if cum[n] <= limit:
            part = text[pos:].rstrip()
            if part:
                parts.append(part)
            break
        lim = bisect_right(cum, limit, pos) - 1  # text[pos:lim] is the largest fitting slice
        fill = bisect_left(cum, cum[pos] + budget_bytes // _FILL_DIVISOR, pos, lim)
        end, nxt = _choose_cut(text, first, lim, fill, newlines, ranks, section_starts)
        part = text[pos:end].rstrip()
        if part:
            parts.append(part)
        pos, first = _skip_whitespace(text, nxt, budget_bytes)
    return parts


def _code_point_bytes(char: str) -> int:
    code = ord(char)
    if code < 0x80:
        return 1
    if code < 0x800:
        return 2
    if code < 0x10000:
        return 3
    return 4


def _skip_whitespace(text: str, pos: int, budget_bytes: int) -> tuple[int, int]:
    """Where the next part starts, and its first non-whitespace character.

    Blank lines are skipped, but the indentation of the first line is kept (code) when the
    part starts at a line start and the indentation is small.
    """
    n = len(text)
    first = pos
    while first < n and text[first].isspace():
        first += 1
    if first >= n:
        return n, n
    newline = text.rfind("\n", pos, first)
    if newline != -1:
        start = newline + 1
    elif pos == 0 or text[pos - 1] == "\n":
        start = pos
    else:  # cut in the middle of a line: drop the separating whitespace
        start = first
    if start < first and utf8_len(text[start:first]) * 2 >= budget_bytes:
        start = first
    return start, first


def _line_boundaries(
    text: str, cum: list[int], budget: int
) -> tuple[list[int], list[int], dict[int, int]]:
    """Positions of all newlines, the rank of a cut at each of them, and for every heading
    (by position) where the text after it starts."""
    lines = text.split("\n")
    count = len(lines)
    starts = list(accumulate((len(line) + 1 for line in lines[:-1]), initial=0))
    kinds = [_BLANK] * count
    depth = [0] * count  # list items holding the line (an item's first line: itself too)
    shared = [0] * count  # list items holding both the line and the non-blank one before
    code = [-1] * count  # index in code_spans of the code block holding the line
    code_spans: list[list[int]] = []  # first and last line of every code block
    stack: list[int] = []  # marker indents of the open list items
    code_indent = -1  # an (indented) code block goes on while lines are indented this much
    fence_char, fence_len = "", 0  # a fenced code block (raw markdown) goes on to its fence
    step = len(_INDENT)
    for index, line in enumerate(lines):
        stripped = line.lstrip()
        if not stripped:
            continue
        indent = len(line) - len(stripped)
        if fence_char or 0 <= code_indent <= indent:
            kinds[index] = _CODE
            code[index] = len(code_spans) - 1
            code_spans[-1][1] = index
            depth[index] = shared[index] = len(stack)
            if fence_char and _closes_fence(stripped, fence_char, fence_len):
                fence_char = ""
            continue
        code_indent = -1
        while stack and stack[-1] >= indent:
            stack.pop()
        shared[index] = len(stack)
        body_indent = stack[-1] + step if stack else 0
        fence = _opens_fence(stripped)
        if indent >= body_indent + step or fence:
            # Deeper than the text of the enclosing item (or than top-level text): code.
            if indent >= body_indent + step:
                code_indent = body_indent + step
            else:
                fence_char, fence_len = fence[0], len(fence)
            kinds[index] = _CODE
            code[index] = len(code_spans)
            code_spans.append([index, index])
        elif _is_item_marker(stripped):
            stack.append(indent)
            kinds[index] = _ITEM
        elif _is_heading(stripped, line):
            kinds[index] = _HEADING
        else:
            kinds[index] = _OTHER if _starts_structure(stripped) else _PLAIN
        depth[index] = len(stack)

    def fits(first_line: int, last_line: int) -> bool:
        end = starts[last_line] + len(lines[last_line])
        return cum[end] - cum[starts[first_line]] <= budget

    code_fits = [fits(first_line, last_line) for first_line, last_line in code_spans]
    chunk_fits = [False] * count  # of a code line: its chunk (between blank lines) fits
    for (first_line, last_line), whole in zip(code_spans, code_fits, strict=True):
        chunk = first_line
        for index in range(first_line, last_line + 1):
            if kinds[index] == _BLANK:
                chunk = index + 1
            elif index == last_line or kinds[index + 1] == _BLANK:
                chunk_fits[chunk : index + 1] = [whole or fits(chunk, index)] * (index + 1 - chunk)
    # Other blocks: a table row renders as a run of top-level "Header：value" lines (take
    # any run of top-level lines mostly made of those for one); in a list item, a run of
    # lines after a blank line is a paragraph or code written unindented in the markdown.
    block = [-1] * count
    blocks: list[tuple[int, bool]] = []  # first line, fits
    index = 0
    while index < count:
        top = _is_top_plain(kinds, depth, index)
        in_item = kinds[index] == _PLAIN and depth[index] > 0 and kinds[index - 1] == _BLANK
        if not (top or in_item):
            index += 1
            continue
        last = index
        while last + 1 < count and kinds[last + 1] == _PLAIN and depth[last + 1] == depth[index]:
            last += 1
        if last > index and (
            in_item or 2 * sum(_CELL_SEP in lines[i] for i in range(index, last + 1)) > last - index
        ):
            block[index : last + 1] = [len(blocks)] * (last + 1 - index)
            blocks.append((index, fits(index, last)))
        index = last + 1

    def rank(before: int, after: int, blank: bool) -> int:
        if code[before] != -1 and code[before] == code[after]:
            if code_fits[code[before]]:
                return _RANK_KEPT_CODE_GAP if blank else _RANK_KEPT_CODE
            if blank:
                return _RANK_IN_CODE_GAP
            return _RANK_KEPT_CODE if chunk_fits[before] else _RANK_IN_CODE
        if block[before] != -1 and block[before] == block[after]:
            return _RANK_KEPT_BLOCK if blocks[block[before]][1] else _RANK_IN_BLOCK
        if shared[after]:
            level = min(shared[after], _MAX_ITEM_LEVELS) - 1
            item_rank = _RANK_IN_ITEM - _RANK_ITEM_LEVEL * level
            if blank or kinds[after] in (_ITEM, _CODE) or kinds[before] == _CODE:
                return item_rank
            return item_rank - 1
        if kinds[before] == _HEADING:
            unit = code[after]
            keep = unit != -1 and code_spans[unit][0] == after and code_fits[unit]
            keep = keep or (block[after] != -1 and blocks[block[after]] == (after, True))
            return _RANK_HEADING_KEEP if keep else _RANK_AFTER_HEADING
        if kinds[after] == _HEADING:
            return _RANK_SECTION
        if (
            kinds[before] == _PLAIN
            and not depth[before]
            and block[before] == -1
            and lines[before].rstrip().endswith(_LEAD_IN_ENDS)
        ):
            return _RANK_LEAD_IN
        if blank:
            return _RANK_PARAGRAPH
        if kinds[before] != _PLAIN or kinds[after] != _PLAIN:
            return _RANK_STRUCTURE
        return _RANK_LINE

    newlines = [starts[index] + len(lines[index]) for index in range(count - 1)]
    ranks = [_RANK_PARAGRAPH] * (count - 1)
    section_starts: dict[int, int] = {}
    before = -1
    for index in range(count):
        if kinds[index] == _BLANK:
            continue
        if before != -1:
            ranks[before:index] = [rank(before, index, index > before + 1)] * (index - before)
            if kinds[before] == _HEADING:
                section_starts[starts[before]] = starts[index]
        before = index
    return newlines, ranks, section_starts


def _is_top_plain(kinds: list[int], depth: list[int], index: int) -> bool:
    return kinds[index] == _PLAIN and not depth[index]


def _opens_fence(stripped: str) -> str:
    """The opening fence (backticks or tildes) of a fenced code block, or ""."""
    if not stripped.startswith(("```", "~~~")):
        return ""
    char = stripped[0]
    fence = stripped[: len(stripped) - len(stripped.lstrip(char))]
    if char == "`" and "`" in stripped[len(fence) :]:
        return ""  # inline code, not a fence
    return fence


def _closes_fence(stripped: str, char: str, length: int) -> bool:
    return stripped.startswith(char * length) and not stripped.rstrip().strip(char)


def _is_item_marker(stripped: str) -> bool:
    if stripped.startswith(_ITEM_MARKS) or stripped in _BULLETS:
        return True
    digits = 0
    while digits < len(stripped) and digits < 10 and "0" <= stripped[digits] <= "9":
        digits += 1
    return digits > 0 and stripped[digits : digits + 2] in (". ", ") ", ".", ")")


def _is_heading(stripped: str, line: str) -> bool:
    if stripped.startswith(_HEADING_OPEN):
        return line.rstrip().endswith(_HEADING_CLOSE)
    hashes = len(stripped) - len(stripped.lstrip("#"))
    return 1 <= hashes <= 6 and stripped[hashes : hashes + 1] in ("", " ")


def _starts_structure(stripped: str) -> bool:
    if stripped.startswith(_LIST_MARKS):
        return True
    digits = 0
    while digits < len(stripped) and digits < 10 and "0" <= stripped[digits] <= "9":
        digits += 1
    return digits > 0 and stripped[digits : digits + 2] in (". ", ") ")


def _choose_cut(
    text: str,
    first: int,
    lim: int,
    fill: int,
    newlines: list[int],
    ranks: list[int],
    section_starts: dict[int, int],
) -> tuple[int, int]:
    """Return (end of this part, start of the search for the next part).

    Order: tier-A line breaks (between blocks, inside list items, inside blocks too big
    for a part), then the break after a heading that keeps the block after it whole, then
    line breaks inside a code block or table row that fits, then sentence ends, then
    spaces/commas, then the break after a heading, then a hard cut.  Within each line tier
    a boundary leaving the part at least *fill* full wins over a better-ranked one that
    would leave it nearly empty.
    """
    low_fill = max(fill, first + 1)
    low_any = first + 1
    # 1. line boundaries: the part ends right before the newline at newlines[k]
    high = bisect_right(newlines, lim)
    a_fill = bisect_left(newlines, low_fill)
    a_any = bisect_left(newlines, low_any)
    steps = (
        (_TIER_A, a_fill),
        (_TIER_A, a_any),
        (_RANK_HEADING_KEEP, a_any),
        (_TIER_B, a_fill),
        (_TIER_B, a_any),
    )
    for min_rank, a in steps:
        k = _best_boundary(ranks, a, high, min_rank)
        if k != -1:
            return newlines[k], newlines[k] + 1
    # A part opening with a heading keeps it, and the cut goes into the text after it.
    floor = section_starts.get(first, first) + 1
    for low in (max(low_fill, floor), max(low_any, floor)):
        if low > lim:
            continue
        # 2. sentence ends: the part ends right after the punctuation (and closing quotes)
        end = _last_sentence_end(text, low - 1, lim)
        if end != -1:
            while end < lim and text[end] in _CLOSERS:
                end += 1
            return end, end
        # 3. other whitespace (dropped) or a comma (kept)
        space = max(text.rfind(char, low, lim + 1) for char in _SPACES)
        comma = max(text.rfind(char, low - 1, lim) for char in _COMMAS)
        if space != -1 or comma != -1:
            if comma + 1 > space:
                return comma + 1, comma + 1
            return space, space + 1
    # 4. right after a heading
    k = _best_boundary(ranks, a_any, high, _RANK_AFTER_HEADING)
    if k != -1:
        return newlines[k], newlines[k] + 1
    # 5. hard cut, but not inside a grapheme cluster
    end = _grapheme_boundary(text, first + 1, lim)
    return end, end


def _best_boundary(ranks: list[int], low: int, high: int, min_rank: int) -> int:
    """Index of the latest best-ranked boundary in ranks[low:high] ranked >= min_rank."""
    if low >= high:
        return -1
    window = ranks[low:high]
    best = max(window)
    if best < min_rank:
        return -1
    return high - 1 - window[::-1].index(best)


def _last_sentence_end(text: str, low: int, lim: int) -> int:
    """Index just after the last sentence-ending character in text[low:lim], or -1."""
    best = -1
    for char in _SENTENCE_ENDS:
        found = text.rfind(char, low, lim)
        if char in _ASCII_SENTENCE_ENDS:
            # "3.14", "example.com", "a.php?x=1" are not sentence ends
            while found != -1 and _between_ascii_alnum(text, found):
                found = text.rfind(char, low, found)
        best = max(best, found)
    return best + 1 if best != -1 else -1


def _between_ascii_alnum(text: str, index: int) -> bool:
    return (
        0 < index < len(text) - 1
        and _is_ascii_alnum(text[index - 1])
        and _is_ascii_alnum(text[index + 1])
    )


def _grapheme_boundary(text: str, low: int, end: int) -> int:
    """Move a hard cut at *end* back so it does not split a grapheme cluster (cheaply)."""
    cut = end
    for _ in range(_GRAPHEME_BACKOFF):
        if cut <= low or cut >= len(text):
            break
        if not _joins_previous(text, cut):
            return cut
        cut -= 1
    return end if cut <= low or _joins_previous(text, cut) else cut


def _joins_previous(text: str, index: int) -> bool:
    """True if text[index] belongs to the same user-perceived character as text[index-1]."""
    char, prev = text[index], text[index - 1]
    code = ord(char)
    if prev == _ZWJ or code == 0x200D:
        return True
    if 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF:  # variation selectors
        return True
    if 0x1F3FB <= code <= 0x1F3FF or 0xE0020 <= code <= 0xE007F:  # skin tones, tag chars
        return True
    if 0xDC00 <= code <= 0xDFFF and 0xD800 <= ord(prev) <= 0xDBFF:  # surrogate pair
        return True
    if prev == "\r" and char == "\n":
        return True
    if _is_regional_indicator(char) and _is_regional_indicator(prev):
        run = 0
        back = index - 1
        while back >= 0 and run < _GRAPHEME_BACKOFF and _is_regional_indicator(text[back]):
            run += 1
            back -= 1
        return run % 2 == 1
    return unicodedata.category(char) in ("Mn", "Me", "Mc")


def _is_regional_indicator(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF


# ---------------------------------------------------------------------------
# passive reply XML
# ---------------------------------------------------------------------------

# Characters XML 1.0 cannot carry at all, not even in CDATA (C0 controls except tab/LF/CR,
# surrogates, U+FFFE/U+FFFF); a single one makes WeChat reject the whole reply.
# A regex, not str.translate: translate walks a 2 000-entry table per reply (~30x slower).
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def cdata(value: str) -> str:
    """Wrap *value* in a CDATA section, splitting every ``]]>`` so the XML stays valid.

    Characters that XML 1.0 cannot represent (control characters other than tab/newline/
    carriage return, lone surrogates, U+FFFE/U+FFFF) are dropped.
    """
    value = _XML_ILLEGAL.sub("", value)
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _reply_head(to_user: str, from_user: str, create_time: int, msg_type: str) -> str:
    return (
        f"<xml><ToUserName>{cdata(to_user)}</ToUserName>"
        f"<FromUserName>{cdata(from_user)}</FromUserName>"
        f"<CreateTime>{int(create_time)}</CreateTime>"
        f"<MsgType>{cdata(msg_type)}</MsgType>"
    )


def text_reply_xml(to_user: str, from_user: str, content: str, create_time: int) -> str:
    """Passive text reply.  *to_user* is the user's OpenID, *from_user* the ``gh_`` id.

    The caller keeps *content* within :data:`TEXT_BUDGET_BYTES` (see :func:`split_text`).
    """
    head = _reply_head(to_user, from_user, create_time, "text")
    return f"{head}<Content>{cdata(content)}</Content></xml>"


def image_reply_xml(to_user: str, from_user: str, media_id: str, create_time: int) -> str:
    """Passive image reply for an uploaded *media_id*."""
    head = _reply_head(to_user, from_user, create_time, "image")
    return f"{head}<Image><MediaId>{cdata(media_id)}</MediaId></Image></xml>"


def voice_reply_xml(to_user: str, from_user: str, media_id: str, create_time: int) -> str:
    """Passive voice reply for an uploaded *media_id*."""
    head = _reply_head(to_user, from_user, create_time, "voice")
    return f"{head}<Voice><MediaId>{cdata(media_id)}</MediaId></Voice></xml>"
