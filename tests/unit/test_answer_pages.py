"""The "full answer" page: storage with its sweep, signed tokens, the page URL, the HTML
rendering and the request handler (endpoints/wechat/answer_pages.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
from typing import Any

import pytest

from endpoints.wechat import answer_pages
from endpoints.wechat.answer_pages import (
    MAX_MARKDOWN_BYTES,
    AnswerPages,
    make_token,
    page_key,
    page_url,
    read_token,
    render_page,
    serve_answer_page,
)
from endpoints.wechat.settings import Settings, load_settings
from endpoints.wechat.storage import EndpointStore
from tests.fakes import FakeClock, MemoryStorage

ENDPOINT = "3f1c9a2e-0000-4000-8000-1234567890ab"
OTHER_ENDPOINT = "9d2b7c1e-0000-4000-8000-abcdefabcdef"
NOW = 1_700_000_000.0
LATER = int(NOW) + 3600
PAGE_ID = "AbCdEfGhIjKl-_12"


def settings(**overrides: Any) -> Settings:
    raw: dict[str, Any] = {
        "app": {"app_id": "app-1", "inputs": {}},
        "wechat_token": "token123",
        "app_id": "wx1234567890abcdef",
        "encoding_aes_key": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        "app_secret": "appsecret",
    }
    raw.update(overrides)
    return load_settings(raw)


KEY = page_key(settings(), ENDPOINT)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- token ------------------------------------------------------------------------------


def test_token_round_trip_is_compact_and_url_safe() -> None:
    token = make_token(KEY, PAGE_ID, LATER)
    assert read_token(KEY, token, NOW) == PAGE_ID
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{22}", token)  # 128-bit MAC
    assert len(token) <= 64


def test_token_key_depends_on_endpoint_and_secrets_and_differs_from_the_worker_key() -> None:
    assert page_key(settings(), OTHER_ENDPOINT) != KEY
    assert page_key(settings(app_secret="other"), ENDPOINT) != KEY
    assert page_key(settings(wechat_token="token456"), ENDPOINT) != KEY
    conf = settings()
    # worker_link.worker_key's derivation (not imported: it pulls in the whole pipeline).
    worker_material = "\0".join(
        (
            "wechat-dify-bridge/worker/v1",
            ENDPOINT,
            conf.token,
            conf.encoding_aes_key,
            conf.app_secret,
        )
    )
    assert hashlib.sha256(worker_material.encode()).digest() != KEY


def test_token_of_another_endpoint_is_refused() -> None:
    token = make_token(page_key(settings(), OTHER_ENDPOINT), PAGE_ID, LATER)
    assert read_token(KEY, token, NOW) is None


def test_expired_token_is_refused() -> None:
    token = make_token(KEY, PAGE_ID, LATER)
    assert read_token(KEY, token, LATER - 1) == PAGE_ID
    assert read_token(KEY, token, LATER) is None
    assert read_token(KEY, token, LATER + 10) is None


def tampered_tokens() -> list[str]:
    token = make_token(KEY, PAGE_ID, LATER)
    payload, mac = token.split(".")
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    longer_life = b64(f"{PAGE_ID}|{LATER + 10**6}".encode())
    other_page = b64(f"{'Z' * 16}|{LATER}".encode())
    return [
        f"{payload}.{flipped}",
        f"{longer_life}.{mac}",
        f"{other_page}.{mac}",
        token[:-1],
        token[:-5],
        token[: len(payload)],
        token.split(".")[0] + ".",
        "." + mac,
        token + ".",
        token + "A",
        token.replace(".", ""),
        token + "/../x",
        f"{payload}={'.' + mac}",
    ]


@pytest.mark.parametrize("token", tampered_tokens())
def test_tampered_or_truncated_tokens_are_refused(token: str) -> None:
    assert read_token(KEY, token, NOW) is None


def signed(payload: str) -> str:
    """A MAC-valid token over any payload: checks what the parser does after the MAC."""
    mac = hmac.new(KEY, payload.encode(), hashlib.sha256).digest()[:16]
    return f"{payload}.{b64(mac)}"


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "..",
        "garbage",
        "a.b",
        "x" * 10_000,
        "é.é",
        "\x00\x01.\x02",
        "%2e%2e.%2f",
        signed(b64(b"no-separator")),
        signed(b64(f"{PAGE_ID}|notanumber".encode())),
        signed(b64(f"{PAGE_ID}|-5".encode())),
        signed(b64(f"short|{LATER}".encode())),
        signed(b64(f"{PAGE_ID}|{LATER}|extra".encode())),
        signed(b64(b"\xff\xfe\xfd\xfc")),
        signed("abcde"),  # not a valid base64 length
    ],
)
def test_garbage_tokens_are_refused_without_raising(token: str) -> None:
    assert read_token(KEY, token, NOW) is None


def test_read_token_tolerates_non_strings() -> None:
    assert read_token(KEY, None, NOW) is None  # type: ignore[arg-type]
    assert read_token(KEY, b"abc.def", NOW) is None  # type: ignore[arg-type]


# --- URL --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hook_url",
    [
        f"https://dify.example.com/e/{ENDPOINT}/wechat",
        f"https://dify.example.com/e/{ENDPOINT}/wechat/",
        f"https://dify.example.com/e/{ENDPOINT}/wechat?signature=abc&timestamp=1&nonce=2",
        f"https://dify.example.com/e/{ENDPOINT}/wechat/?signature=abc#frag",
    ],
)
def test_page_url_is_beside_the_endpoint_without_the_query(hook_url: str) -> None:
    url = page_url(hook_url, "tok.en")
    assert url == f"https://dify.example.com/e/{ENDPOINT}/wechat/answer/tok.en"


def test_page_url_keeps_scheme_host_and_port() -> None:
    url = page_url("http://10.0.0.5:8080/e/abc/wechat?x=1", "t")
    assert url == "http://10.0.0.5:8080/e/abc/wechat/answer/t"


@pytest.mark.parametrize(
    "hook_url",
    [
        "",
        "   ",
        "not a url",
        "/e/abc/wechat",
        "ftp://dify.example.com/e/abc/wechat",
        "javascript://dify.example.com/e/abc/wechat",
        "https:///e/abc/wechat",
        "https://dify.example.com/e/abc/wechat/worker",
        "https://dify.example.com/e/abc/notwechat",
        "https://dify.example.com/e/abc",
        "https://user:pw@dify.example.com/e/abc/wechat",
        "http://[::1/e/abc/wechat",
    ],
)
def test_page_url_refuses_odd_hook_urls(hook_url: str) -> None:
    assert page_url(hook_url, "token") is None


def test_page_url_needs_a_token() -> None:
    assert page_url("https://dify.example.com/e/abc/wechat", "") is None


# --- rendering --------------------------------------------------------------------------


RICH = """# 标题

**注意：**这是重点，~~旧的~~。

1. first
2. second
   - nested

| 名称 | 数量 |
|:--|--:|
| 苹果 | 3 |

```python
print("hi")
```

Inline `code`, [a link](https://example.com/a?b=1&c=2) and ![图](https://img.example/p.png "t").

> quoted
"""


def test_render_page_is_a_mobile_html_document() -> None:
    html = render_page(RICH, "我的问题")
    assert html.startswith("<!doctype html>")
    assert '<meta charset="utf-8">' in html
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert "<title>我的问题</title>" in html
    assert '<h1 class="title">我的问题</h1>' in html
    for css in ("PingFang SC", "max-width:720px", "prefers-color-scheme:dark", "overflow-x:auto"):
        assert css in html
    assert "<script" not in html


def test_render_page_renders_markdown_features() -> None:
    html = render_page(RICH, "")
    assert "<h1>标题</h1>" in html
    assert "<strong>注意：</strong>" in html  # CJK-friendly emphasis, as in WeChat text
    assert "<s>旧的</s>" in html
    assert "<ol>" in html and "<ul>" in html and "<li>nested</li>" in html
    assert "<table>" in html and "<th" in html and "<td" in html and "苹果" in html
    assert '<pre><code class="language-python">print(&quot;hi&quot;)' in html
    assert "<code>code</code>" in html
    assert "<blockquote>" in html
    assert (
        '<a href="https://example.com/a?b=1&amp;c=2" rel="noopener noreferrer" '
        'target="_blank">a link</a>'
    ) in html
    assert '<img src="https://img.example/p.png" alt="图" title="t" loading="lazy"' in html


def test_empty_title_gets_a_default_and_no_heading() -> None:
    html = render_page("text", "  ")
    assert "<title>回答 / Answer</title>" in html
    assert 'class="title"' not in html


def test_title_is_escaped() -> None:
    html = render_page("x", "<script>alert(1)</script>")
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


HOSTILE = [
    "<script>alert(1)</script>",
    "<div>\n<script>alert(1)</script>\n</div>",
    "text <script>alert(1)</script> inline",
    '<img src=x onerror="alert(1)">',
    "<iframe src='https://evil.example'></iframe>",
    "<style>body{display:none}</style>",
    "<!-- comment --><a href='javascript:alert(1)'>x</a>",
    "| a |\n|---|\n| <script>alert(1)</script> |",
    "[x](<javascript:alert(1)>) and `<script>`",
]


@pytest.mark.parametrize("markdown", HOSTILE)
def test_raw_html_is_escaped(markdown: str) -> None:
    html = render_page(markdown, "")
    body = html.split("<main>", 1)[1]
    for tag in ("<script", "<img", "<iframe", "<style", "<a href='", "<div", "<!--"):
        assert tag not in body
    assert "&lt;" in body


@pytest.mark.parametrize(
    "link",
    [
        "[x](javascript:alert(1))",
        "[x](JaVaScRiPt:alert(1))",
        "[x](java%0ascript:alert(1))",
        "[x](&#106;avascript:alert(1))",
        "[x](vbscript:msgbox(1))",
        "[x](data:text/html;base64,PHNjcmlwdD4=)",
        "[x](file:///etc/passwd)",
        "[x](/relative/path)",
        "[x](//evil.example/x)",
        "[x](#anchor)",
        "[x](ftp://example.com/f)",
        "<javascript:alert(1)>",
        "[x]: javascript:alert(1)\n\n[x]",
    ],
)
def test_only_http_https_and_mailto_links_survive(link: str) -> None:
    body = render_page(link, "").split("<main>", 1)[1]
    assert "href=" not in body
    assert "<a " not in body


def test_mailto_and_autolinks_are_links() -> None:
    body = render_page("[mail](mailto:a@example.com) <https://auto.example/x>", "")
    assert '<a href="mailto:a@example.com" rel="noopener noreferrer" target="_blank">' in body
    assert '<a href="https://auto.example/x" rel="noopener noreferrer" target="_blank">' in body


def test_a_refused_link_keeps_its_text() -> None:
    body = render_page("see [the docs](/docs) please", "").split("<main>", 1)[1]
    assert "see the docs please" in body


@pytest.mark.parametrize(
    "image",
    [
        "![alt text](data:image/png;base64,iVBORw0KGgo=)",
        "![alt text](mailto:a@example.com)",
        "![alt text](/local.png)",
        "![alt text](javascript:alert(1))",
    ],
)
def test_only_http_images_are_shown(image: str) -> None:
    body = render_page(image, "").split("<main>", 1)[1]
    assert "<img" not in body
    assert "alt text" in body


def test_leading_reasoning_is_stripped() -> None:
    for answer in (
        "<think>private chain of thought</think>\n\nThe **answer**.",
        '<details style="color:gray">\n<summary>Thinking</summary>\n\nprivate chain of thought'
        "\n</details>\nThe **answer**.",
    ):
        html = render_page(answer, "")
        assert "private chain of thought" not in html
        assert "<strong>answer</strong>" in html


def test_pathological_nesting_still_renders() -> None:
    html = render_page("> " * 5000 + "deep", "")
    assert "deep" in html
    assert html.rstrip().endswith("</html>")


# --- storage ----------------------------------------------------------------------------


@pytest.fixture
def storage() -> MemoryStorage:
    return MemoryStorage()


@pytest.fixture
def store(storage: MemoryStorage) -> EndpointStore:
    return EndpointStore(storage, ENDPOINT)


def test_save_and_load(store: EndpointStore) -> None:
    clock = FakeClock(NOW)
    pages = AnswerPages(store, clock)
    page_id = pages.save("# Hi\r\nthere", title="问题", expires_at=NOW + 60)
    assert re.fullmatch(r"[A-Za-z0-9_-]{16}", page_id)
    page = pages.load(page_id, NOW + 1)
    assert page is not None
    assert (page.page_id, page.markdown, page.title) == (page_id, "# Hi\nthere", "问题")
    assert (page.created_at, page.expires_at) == (NOW, NOW + 60)


def test_page_ids_are_random(store: EndpointStore) -> None:
    pages = AnswerPages(store, FakeClock(NOW))
    ids = {pages.save("x", title="", expires_at=NOW + 60) for _ in range(20)}
    assert len(ids) == 20


def test_record_is_namespaced_json(storage: MemoryStorage, store: EndpointStore) -> None:
    page_id = AnswerPages(store, FakeClock(NOW)).save("answer", title="t", expires_at=NOW + 60)
    record = json.loads(storage.data[f"wx/{ENDPOINT}/page/{page_id}"])
    assert record["markdown"] == "answer" and record["expires_at"] == NOW + 60


def test_missing_and_odd_ids_load_as_none(storage: MemoryStorage, store: EndpointStore) -> None:
    pages = AnswerPages(store, FakeClock(NOW))
    assert pages.load("A" * 16, NOW) is None
    storage.calls.clear()
    for odd in ("", "../x", "a/b", "x" * 300, "A" * 15):
        assert pages.load(odd, NOW) is None
    assert storage.calls == []  # odd ids never become storage keys


def test_expired_page_is_none_and_removed(storage: MemoryStorage, store: EndpointStore) -> None:
    pages = AnswerPages(store, FakeClock(NOW))
    page_id = pages.save("answer", title="", expires_at=NOW + 60)
    assert pages.load(page_id, NOW + 60) is None
    assert f"wx/{ENDPOINT}/page/{page_id}" not in storage.data


def test_corrupt_record_loads_as_none(storage: MemoryStorage, store: EndpointStore) -> None:
    storage.data[store.key("page", PAGE_ID)] = b'{"title": "no markdown"}'
    assert AnswerPages(store).load(PAGE_ID, NOW) is None
    storage.data[store.key("page", PAGE_ID)] = b"not json"
    assert AnswerPages(store).load(PAGE_ID, NOW) is None


def test_markdown_is_capped(storage: MemoryStorage, store: EndpointStore) -> None:
    pages = AnswerPages(store, FakeClock(NOW))
    page_id = pages.save("长" * MAX_MARKDOWN_BYTES, title="t" * 1000, expires_at=NOW + 60)
    page = pages.load(page_id, NOW)
    assert page is not None
    assert len(page.markdown.encode("utf-8")) <= MAX_MARKDOWN_BYTES
    assert page.markdown.endswith("（内容过长，已截断 / truncated）")
    assert len(page.title) == answer_pages.MAX_TITLE_CHARS
    assert len(storage.data[store.key("page", page_id)]) < MAX_MARKDOWN_BYTES + 4096


def test_control_characters_cannot_inflate_the_record(
    storage: MemoryStorage, store: EndpointStore
) -> None:
    pages = AnswerPages(store, FakeClock(NOW))
    page_id = pages.save("\x01" * MAX_MARKDOWN_BYTES + "ok\tok", title="", expires_at=NOW + 60)
    assert len(storage.data[store.key("page", page_id)]) < 1024
    page = pages.load(page_id, NOW)
    assert page is not None and page.markdown == "ok\tok"


def test_save_sweeps_expired_pages(storage: MemoryStorage, store: EndpointStore) -> None:
    clock = FakeClock(NOW)
    pages = AnswerPages(store, clock)
    old = [pages.save("old", title="", expires_at=NOW + 10) for _ in range(3)]
    clock.advance(11)
    fresh = pages.save("new", title="", expires_at=clock.now + 60)
    for page_id in old:
        assert store.key("page", page_id) not in storage.data
    assert pages.load(fresh, clock.now) is not None


def test_sweep_bounds_the_space_pages_take(
    monkeypatch: pytest.MonkeyPatch, storage: MemoryStorage, store: EndpointStore
) -> None:
    monkeypatch.setattr(answer_pages, "MAX_RING_ENTRIES", 5)
    monkeypatch.setattr(answer_pages, "MAX_RING_BYTES", 10_000)
    pages = AnswerPages(store, FakeClock(NOW))
    ids = [pages.save("x" * 100, title="", expires_at=NOW + 3600) for _ in range(8)]
    kept = [i for i in ids if store.key("page", i) in storage.data]
    assert kept == ids[-5:]  # the oldest went first
    big = [pages.save("y" * 4000, title="", expires_at=NOW + 3600) for _ in range(3)]
    kept = [i for i in ids + big if store.key("page", i) in storage.data]
    assert sum(len(json.loads(storage.data[store.key("page", i)])["markdown"]) for i in kept) <= (
        10_000
    )
    assert kept[-2:] == big[-2:]


def test_a_failing_sweep_does_not_fail_the_save(store: EndpointStore) -> None:
    class RingDown(MemoryStorage):
        def set(self, key: str, val: bytes) -> None:
            if "/page-sweep/" in key:
                raise RuntimeError("storage hiccup")
            super().set(key, val)

    pages = AnswerPages(EndpointStore(RingDown(), ENDPOINT), FakeClock(NOW))
    page_id = pages.save("answer", title="", expires_at=NOW + 60)
    assert pages.load(page_id, NOW) is not None


# --- the request handler ----------------------------------------------------------------


def published(store: EndpointStore, markdown: str = RICH, life: int = 3600) -> tuple[str, str]:
    """Save a page as the reply flow would; returns (page id, token)."""
    expires = int(NOW) + life
    page_id = AnswerPages(store, FakeClock(NOW)).save(markdown, title="问题", expires_at=expires)
    return page_id, make_token(KEY, page_id, expires)


def test_a_valid_link_serves_the_page(store: EndpointStore) -> None:
    _, token = published(store)
    reply = serve_answer_page(token, settings(), store, ENDPOINT, NOW + 5)
    assert reply.status == 200
    assert reply.content_type == "text/html; charset=utf-8"
    assert "<h1>标题</h1>" in reply.body
    assert reply.headers == {
        "Content-Security-Policy": (
            "default-src 'none'; img-src https: http: data:; style-src 'unsafe-inline'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "private, max-age=300",
        "X-Robots-Tag": "noindex",
    }


def failures(
    store: EndpointStore, storage: MemoryStorage
) -> dict[str, tuple[str, Settings, float]]:
    """Every way a link can fail: (token, settings, now)."""
    page_id, token = published(store)
    _, short_lived = published(store, life=10)
    removed_id, removed = published(store)
    storage.data.pop(store.key("page", removed_id))
    expires = int(NOW) + 3600
    early_page = AnswerPages(store, FakeClock(NOW)).save("x", title="", expires_at=NOW + 10)
    outlives_page = make_token(KEY, early_page, expires)
    foreign = make_token(page_key(settings(), OTHER_ENDPOINT), page_id, expires)
    return {
        "garbage": ("garbage", settings(), NOW),
        "tampered": (token[:-2] + "AA", settings(), NOW),
        "token expired": (short_lived, settings(), NOW + 11),
        "page deleted": (removed, settings(), NOW),
        "page expired": (outlives_page, settings(), NOW + 11),
        "other endpoint": (foreign, settings(), NOW),
        "secrets changed": (token, settings(app_secret="rotated"), NOW),
        "no token configured": (token, settings(wechat_token=""), NOW),
    }


def test_every_failure_is_the_same_404(storage: MemoryStorage, store: EndpointStore) -> None:
    replies = {
        kind: serve_answer_page(token, conf, store, ENDPOINT, now)
        for kind, (token, conf, now) in failures(store, storage).items()
    }
    bodies = {reply.body for reply in replies.values()}
    assert len(bodies) == 1
    body = bodies.pop()
    assert "链接已失效" in body and "This link has expired" in body
    for reply in replies.values():
        assert reply.status == 404
        assert reply.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert reply.headers["Referrer-Policy"] == "no-referrer"
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        assert reply.headers["Cache-Control"] == "no-store"


def test_an_invalid_token_reads_no_storage(storage: MemoryStorage, store: EndpointStore) -> None:
    _, token = published(store)
    storage.calls.clear()
    for bad in ("garbage", token[:-2] + "AA"):
        assert serve_answer_page(bad, settings(), store, ENDPOINT, NOW).status == 404
    assert serve_answer_page(token, settings(wechat_token=""), store, ENDPOINT, NOW).status == 404
    assert storage.calls == []


def test_raw_html_in_a_stored_answer_is_escaped_when_served(store: EndpointStore) -> None:
    _, token = published(store, "hi <script>alert(1)</script>")
    reply = serve_answer_page(token, settings(), store, ENDPOINT, NOW)
    assert reply.status == 200
    assert "<script" not in reply.body
    assert "&lt;script&gt;" in reply.body


def test_unavailable_reply_is_friendly() -> None:
    reply = answer_pages.unavailable_reply()
    assert reply.status == 500
    assert "页面暂时无法打开" in reply.body
    assert reply.headers["Cache-Control"] == "no-store"


def test_no_token_or_content_in_the_log(
    caplog: pytest.LogCaptureFixture, storage: MemoryStorage, store: EndpointStore
) -> None:
    caplog.set_level(logging.DEBUG)
    cases = failures(store, storage)
    _, good = published(store, "secret answer text")
    cases["served"] = (good, settings(), NOW)
    for token, conf, now in cases.values():
        serve_answer_page(token, conf, store, ENDPOINT, now)
    assert caplog.records  # the outcomes are logged, at DEBUG
    logged = "\n".join(record.getMessage() + repr(record.args) for record in caplog.records)
    for token, _, _ in cases.values():
        assert token not in logged
        assert token.split(".")[0] not in logged
    assert "secret answer text" not in logged
    assert all(record.levelno <= logging.DEBUG for record in caplog.records)
