"""The "full answer" page: ``GET …/wechat/answer/<token>`` shows a stored answer as HTML.

WeChat shows plain text only, 2048 bytes at a time, and nothing of tables or images. When
an answer suffers from that, the user gets its first part and a 「阅读全文」 link to a page
this plugin serves itself. This module holds everything behind that link:

* **storage** — :class:`AnswerPages` keeps the markdown under a random page id, with its
  own expiry (storage has no TTL), and notes every page in a small bounded sweep ring so
  pages nobody opens are deleted by later saves instead of filling the storage quota;
* **token** — the link carries ``base64url(page_id|expiry).MAC``: an HMAC with a key
  derived from the endpoint's secrets (like the worker's, with its own label), so a
  guessed or altered link is refused without a storage read, and a link dies with its
  expiry or when the endpoint's secrets change;
* **URL** — derived from the inbound request's ``Dify-Hook-Url`` (the public URL of
  ``POST …/wechat``) without its query string, which holds WeChat's signature;
* **rendering** — markdown-it-py with raw HTML disabled, only http(s)/mailto links and
  http(s) images, inside a small self-contained mobile page whose CSP forbids scripts;
* **the handler** — :func:`serve_answer_page`: 200 with the page, or one and the same 404
  page whatever went wrong, so a probe learns nothing.

The token is a bearer credential: it is never logged (a short hash at DEBUG at most), and
the page is served with ``Referrer-Policy: no-referrer`` so links on it do not leak it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from urllib.parse import quote, urlsplit, urlunsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token

from .formatters import _emphasis_tokenize, strip_leading_reasoning
from .paths import group_base
from .settings import Settings
from .storage import EndpointStore, hashed

logger = logging.getLogger(__name__)

__all__ = [
    "ANSWER_PATH_SUFFIX",
    "ERROR_HEADERS",
    "MAX_MARKDOWN_BYTES",
    "PAGE_HEADERS",
    "AnswerPages",
    "PageReply",
    "StoredPage",
    "make_token",
    "not_found_reply",
    "page_key",
    "page_url",
    "read_token",
    "render_page",
    "serve_answer_page",
    "unavailable_reply",
]

ANSWER_PATH_SUFFIX = "/answer/"
HTML = "text/html; charset=utf-8"
_KIND = "page"
_RING_KIND = "page-sweep"
_RING_IDENT = "ring"

#: Largest markdown kept per page (UTF-8 bytes). A JSON record of it stays far below the
#: ~2.5 MB a storage value can hold, and one answer cannot take much of the quota.
MAX_MARKDOWN_BYTES = 512 * 1024
MAX_TITLE_CHARS = 120
#: Pages noted in the sweep ring; beyond either bound the oldest are deleted early (their
#: links then show the "expired" page). The manifest's storage quota is 32 MiB in all.
MAX_RING_ENTRIES = 200
MAX_RING_BYTES = 8 * 1024 * 1024
#: Expired pages deleted per save, so a save never takes noticeably longer.
MAX_SWEEP_PER_SAVE = 8
_TRUNCATED_NOTE = "\n\n……（内容过长，已截断 / truncated）"

# Log texts (no token, no content: a short hash of the token at most, and only at DEBUG).
_LOG_REFUSED = "Answer page %s: %s"
_LOG_SERVED = "Answer page %s served"
_LOG_RING_FAILED = "Noting an answer page for the sweep failed"


# --- storage ----------------------------------------------------------------------------


_PAGE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16}$")
# C0 controls other than tab and newline: useless in HTML, and JSON would store each as a
# six-byte escape, so the byte cap would no longer bound the record.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class StoredPage:
    page_id: str
    markdown: str
    title: str
    created_at: float
    expires_at: float


def _clean_markdown(markdown: str) -> str:
    """Line breaks normalised, control characters dropped, at most ``MAX_MARKDOWN_BYTES``."""
    text = _CONTROL_RE.sub("", markdown.replace("\r\n", "\n").replace("\r", "\n"))
    encoded = text.encode("utf-8")
    if len(encoded) <= MAX_MARKDOWN_BYTES:
        return text
    room = MAX_MARKDOWN_BYTES - len(_TRUNCATED_NOTE.encode("utf-8"))
    return encoded[:room].decode("utf-8", "ignore") + _TRUNCATED_NOTE


def _clean_title(title: str) -> str:
    return " ".join(_CONTROL_RE.sub(" ", title).split())[:MAX_TITLE_CHARS]


class AnswerPages:
    """Answer pages of one endpoint: ``wx/<endpoint>/page/<page id>`` JSON records."""

    def __init__(self, store: EndpointStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def save(self, markdown: str, *, title: str, expires_at: float) -> str:
        """Store an answer until ``expires_at``; returns its new, unguessable page id."""
        page_id = secrets.token_urlsafe(12)
        text = _clean_markdown(markdown)
        record = {
            "v": 1,
            "markdown": text,
            "title": _clean_title(title),
            "created_at": self._clock(),
            "expires_at": float(expires_at),
        }
        # Noted before it is written: a request cut short between the two leaves a note
        # of a missing page (harmless), never a page nothing will delete.
        self._note(page_id, expires_at, len(text.encode("utf-8")))
        self._store.save(_KIND, page_id, record)
        return page_id

    def load(self, page_id: str, now: float) -> StoredPage | None:
        """The page, or None when missing, malformed or expired (an expired one is deleted)."""
        if not (isinstance(page_id, str) and _PAGE_ID_RE.match(page_id)):
            return None
        record = self._store.load(_KIND, page_id)
        if record is None:
            return None
        try:
            page = StoredPage(
                page_id=page_id,
                markdown=str(record["markdown"]),
                title=str(record.get("title", "")),
                created_at=float(record.get("created_at", 0.0)),
                expires_at=float(record["expires_at"]),
            )
        except (KeyError, TypeError, ValueError):
            return None
        if page.expires_at <= now:
            self._store.remove(_KIND, page_id)
            return None
        return page

    # --- sweep ring: storage has no TTL and no key listing ------------------------------

    def _note(self, page_id: str, expires_at: float, size: int) -> None:
        """Add the page to the ring, deleting a few expired pages and any over the bounds.

        Concurrent saves may lose each other's ring update; the cost is a page that
        lingers in storage, never a wrong page.
        """
        try:
            entries = self._ring_entries()
            now = self._clock()
            doomed = [e for e in entries if e[1] <= now][:MAX_SWEEP_PER_SAVE]
            live = [e for e in entries if e not in doomed]
            live.append((page_id, float(math.ceil(expires_at)), size))
            while len(live) > MAX_RING_ENTRIES or sum(e[2] for e in live) > MAX_RING_BYTES:
                if len(live) == 1:
                    break
                doomed.append(live.pop(0))  # oldest first
            self._store.save(_RING_KIND, _RING_IDENT, {"v": 1, "entries": [list(e) for e in live]})
            for entry in doomed:
                self._store.remove(_KIND, entry[0])
        except Exception:
            logger.warning(_LOG_RING_FAILED, exc_info=True)

    def _ring_entries(self) -> list[tuple[str, float, int]]:
        record = self._store.load(_RING_KIND, _RING_IDENT) or {}
        entries: list[tuple[str, float, int]] = []
        for raw in record.get("entries", []):
            try:
                page_id, expires_at, size = raw
                entries.append((str(page_id), float(expires_at), int(size)))
            except (TypeError, ValueError):
                continue
        return entries


# --- token ------------------------------------------------------------------------------


_MAC_BYTES = 16  # 128 bits
_TOKEN_RE = re.compile(r"^([A-Za-z0-9_-]{4,64})\.([A-Za-z0-9_-]{22})$")
_PAYLOAD_RE = re.compile(r"^([A-Za-z0-9_-]{16})\|([0-9]{1,12})$")


def page_key(settings: Settings, endpoint_id: str) -> bytes:
    """A per-endpoint key only the endpoint's secrets give; changing them kills old links."""
    return settings.derived_key("wechat-dify-bridge/answer-page/v1", endpoint_id)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _mac(key: bytes, payload: str) -> str:
    digest = hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest()
    return _b64(digest[:_MAC_BYTES])


def make_token(key: bytes, page_id: str, expires_at: int) -> str:
    """``base64url(page_id|expiry) "." base64url(HMAC-SHA256[:16])``: ~60 URL-safe chars."""
    payload = _b64(f"{page_id}|{int(expires_at)}".encode("ascii"))
    return f"{payload}.{_mac(key, payload)}"


def read_token(key: bytes, token: str, now: float) -> str | None:
    """The page id of a genuine, unexpired token; None for anything else. Never raises."""
    try:
        match = _TOKEN_RE.match(token) if isinstance(token, str) else None
        if match is None:
            return None
        payload, mac = match.groups()
        if not hmac.compare_digest(_mac(key, payload).encode(), mac.encode()):
            return None
        decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode("ascii")
        fields = _PAYLOAD_RE.match(decoded)
        if fields is None or int(fields.group(2)) <= now:
            return None
        return fields.group(1)
    except Exception:  # a MAC-valid token is ours, but never let odd input raise
        return None


# --- URL --------------------------------------------------------------------------------


def page_url(hook_url: str, token: str) -> str | None:
    """The page's public URL beside ``POST …/wechat`` (or ``…/wecom``), from its
    ``Dify-Hook-Url``.

    The query (WeChat's signature, timestamp, nonce) and any fragment are dropped. None
    when the hook URL is missing or is not an http(s) URL of a ``…/wechat`` endpoint.
    """
    if not hook_url or not token:
        return None
    try:
        parts = urlsplit(hook_url.strip())
        userinfo = parts.username or parts.password
    except ValueError:
        return None
    path = group_base(parts.path)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or userinfo:
        return None
    if path is None:
        return None
    path += ANSWER_PATH_SUFFIX + quote(token, safe="")
    return urlunsplit((parts.scheme.lower(), parts.netloc, path, "", ""))


# --- rendering --------------------------------------------------------------------------


_LINK_SCHEMES = ("http:", "https:", "mailto:")
_IMAGE_SCHEMES = ("http:", "https:")
_MAX_NESTING = 40  # as formatters: deeply nested lists must not vanish silently


def _has_scheme(url: str, schemes: Sequence[str]) -> bool:
    """An allow-list on the (normalised, percent-encoded) URL: anything else is dropped,
    relative URLs included — they would resolve against the plugin's endpoint."""
    lowered = url.strip().lower()
    return any(lowered.startswith(s) for s in schemes)


def _page_markdown() -> MarkdownIt:
    # markdown-it's own ``validateLink`` (no javascript:, vbscript:, file:, most data:) is
    # the first gate; ``_sanitize`` then allows only the schemes above.
    md = MarkdownIt("commonmark", {"html": False, "maxNesting": _MAX_NESTING})
    md.enable(["table", "strikethrough"])
    # Bold/italic that CommonMark refuses next to Chinese punctuation (see formatters).
    md.inline.ruler.at("emphasis", _emphasis_tokenize)
    return md


_MD = _page_markdown()


def _as_text(tok: Token, content: str) -> None:
    """Turn a token into plain (escaped) text in place."""
    tok.type, tok.tag, tok.nesting, tok.attrs, tok.children = "text", "", 0, {}, None
    tok.content = content


def _sanitize_inline(children: list[Token]) -> None:
    """Our own check on top of ``validateLink``: links and images the page may show.

    A refused link keeps its text and loses its target; a refused image shows its alt text.
    """
    open_links: list[bool] = []
    for tok in children:
        if tok.type == "link_open":
            safe = _has_scheme(str(tok.attrGet("href") or ""), _LINK_SCHEMES)
            open_links.append(safe)
            if safe:
                tok.attrSet("rel", "noopener noreferrer")
                tok.attrSet("target", "_blank")
            else:
                _as_text(tok, "")
        elif tok.type == "link_close":
            if not (open_links.pop() if open_links else False):
                _as_text(tok, "")
        elif tok.type == "image":
            if _has_scheme(str(tok.attrGet("src") or ""), _IMAGE_SCHEMES):
                tok.attrSet("loading", "lazy")
            else:
                _as_text(tok, tok.content)
        elif tok.type in ("html_inline", "html_block"):
            _as_text(tok, tok.content)  # raw HTML is off; escape it should it ever appear


def _sanitize(tokens: list[Token]) -> None:
    for tok in tokens:
        if tok.type == "html_block":
            _as_text(tok, tok.content)
        if tok.children:
            _sanitize_inline(tok.children)


def _markdown_html(markdown: str) -> str:
    """The answer's HTML; its source as preformatted text when markdown-it cannot cope."""
    fallback = f"<pre>{escape(markdown)}</pre>\n"
    try:
        tokens = _MD.parse(markdown)
    except RecursionError:  # pathological nesting inside markdown-it itself
        return fallback
    if any(tok.level >= _MAX_NESTING - 1 for tok in tokens):
        return fallback  # markdown-it dropped the deepest content: never lose text
    _sanitize(tokens)
    return _MD.renderer.render(tokens, _MD.options, {})


_CSS = """\
:root{color-scheme:light dark;--fg:#1f2328;--bg:#fff;--muted:#59636e;--line:#d1d9e0;\
--code:#f6f8fa;--link:#0969da}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--bg:#0d1117;--muted:#9198a1;\
--line:#3d444d;--code:#151b23;--link:#4493f8}}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%;text-size-adjust:100%}
body{margin:0;background:var(--bg);color:var(--fg);font:17px/1.75 -apple-system,\
BlinkMacSystemFont,"PingFang SC","Hiragino Sans GB","Microsoft YaHei","Noto Sans CJK SC",\
"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;overflow-wrap:break-word}
main{max-width:720px;margin:0 auto;padding:20px 16px 48px}
h1,h2,h3,h4,h5,h6{line-height:1.35;margin:1.4em 0 .6em}
h1{font-size:1.5em}h2{font-size:1.3em}h3{font-size:1.15em}h4,h5,h6{font-size:1em}
.title{margin-top:.2em;padding-bottom:.4em;border-bottom:1px solid var(--line)}
p,ul,ol,blockquote,pre,table{margin:0 0 1em}
ul,ol{padding-left:1.5em}li+li{margin-top:.25em}
a{color:var(--link);text-decoration:none;word-break:break-all}
img{max-width:100%;height:auto}
code{font:.88em/1.5 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;\
background:var(--code);padding:.1em .35em;border-radius:4px}
pre{background:var(--code);padding:12px 14px;border-radius:6px;overflow-x:auto;\
-webkit-overflow-scrolling:touch}
pre code{background:none;padding:0;white-space:pre;word-break:normal;overflow-wrap:normal}
blockquote{margin-left:0;padding:0 1em;color:var(--muted);border-left:4px solid var(--line)}
table{display:block;width:max-content;max-width:100%;overflow-x:auto;\
-webkit-overflow-scrolling:touch;border-collapse:collapse}
th,td{border:1px solid var(--line);padding:6px 12px;vertical-align:top}
th{background:var(--code)}
hr{border:0;border-top:1px solid var(--line);margin:1.5em 0}
"""


def _document(title: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<meta name="referrer" content="no-referrer">
<title>{escape(title)}</title>
<style>
{_CSS}</style></head><body><main>
{body}</main></body></html>
"""


def render_page(markdown: str, title: str) -> str:
    """The answer as a whole HTML document (reasoning removed, raw HTML shown as text)."""
    heading = _clean_title(title)
    body = _markdown_html(strip_leading_reasoning(markdown))
    if heading:
        body = f'<h1 class="title">{escape(heading)}</h1>\n{body}'
    return _document(heading or "回答 / Answer", body)


_GONE_BODY = """<h1>链接已失效</h1>
<p>这个链接已过期或无效。请回到公众号重新提问。</p>
<h1>This link has expired</h1>
<p>It is no longer valid. Please ask again in the Official Account.</p>
"""
_UNAVAILABLE_BODY = """<h1>页面暂时无法打开</h1>
<p>请稍后再试。</p>
<h1>This page is unavailable right now</h1>
<p>Please try again later.</p>
"""


# --- the request ------------------------------------------------------------------------


_SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": "default-src 'none'; img-src https: http: data:; "
    "style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
}
PAGE_HEADERS: Mapping[str, str] = {**_SECURITY_HEADERS, "Cache-Control": "private, max-age=300"}
ERROR_HEADERS: Mapping[str, str] = {**_SECURITY_HEADERS, "Cache-Control": "no-store"}


@dataclass(frozen=True)
class PageReply:
    """Like ``intake.HttpReply``, plus response headers (which ``HttpReply`` lacks).

    A type of its own rather than a subclass: importing ``intake`` here would make an
    import cycle as soon as the reply flow (imported by ``intake``) links to pages.
    """

    status: int
    body: str
    content_type: str = HTML
    headers: Mapping[str, str] = field(default_factory=dict)


def not_found_reply() -> PageReply:
    """The one answer to every bad, expired or unknown link: it tells a prober nothing."""
    return PageReply(
        404, _document("链接已失效 / Link expired", _GONE_BODY), HTML, headers=ERROR_HEADERS
    )


def unavailable_reply() -> PageReply:
    """For an unexpected error in the endpoint: friendly, and no trace."""
    body = _document("暂时无法打开 / Unavailable", _UNAVAILABLE_BODY)
    return PageReply(500, body, HTML, headers=ERROR_HEADERS)


def serve_answer_page(
    token: str, settings: Settings, store: EndpointStore, endpoint_id: str, now: float
) -> PageReply:
    """``GET …/wechat/answer/<token>``: the page, or the same 404 for every failure.

    An invalid token is refused before any storage read, so links cannot be used to
    probe or load storage.
    """
    ref = hashed(token)[:8] if isinstance(token, str) else "-"
    if not settings.can_verify:
        return _refused(ref, "no Token configured")
    page_id = read_token(page_key(settings, endpoint_id), token, now)
    if page_id is None:
        return _refused(ref, "invalid or expired token")
    page = AnswerPages(store, clock=lambda: now).load(page_id, now)
    if page is None:
        return _refused(ref, "page missing or expired")
    logger.debug(_LOG_SERVED, ref)
    return PageReply(200, render_page(page.markdown, page.title), HTML, headers=PAGE_HEADERS)


def _refused(ref: str, reason: str) -> PageReply:
    logger.debug(_LOG_REFUSED, ref, reason)
    return not_found_reply()
