"""What went wrong lately and how answers travelled: the data behind the status page's
diagnostics section (shown only with the per-endpoint key, see :func:`diagnostics_key`).

* **errors** — the last ``MAX_ERRORS`` failures (WeChat API errcodes, Dify app failures,
  an unreachable worker) in one storage record, each with a *sanitized* detail: no access
  token, secret, OpenID, URL path or query, or message content — only the errcode, a short
  errmsg and, for 40164/60020, the IP WeChat saw (this server's egress IP, not a secret).
* **counters** — per UTC day (``counters-YYYYMMDD``, ``KEEP_DAYS`` kept): passive replies
  with an app answer, pushed parts, fetched parts, expired fetches, hand-offs, app errors.

Cost and accuracy: recording never touches storage. Entries wait in process memory
(:class:`JournalBuffer`) and are written by :meth:`Journal.flush` at points where a
request has time to spare — a POST whose reply is decided early (at most once per
``FLUSH_INTERVAL`` per process), the end of a worker request, the diagnostics page.
Storage has no atomic operations, so a flush is read-add-write: processes flushing at the
same instant can lose each other's increments, and entries of a process that dies before
flushing, or of a flush that fails, are lost. The numbers are approximate: for diagnosis,
not billing. A journal failure never affects a reply: every public method swallows errors.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .api.errors import WeChatAPIError, WeChatError, error_for, sanitize, wecom_error_for
from .storage import EndpointStore

logger = logging.getLogger(__name__)

KEY_CONTEXT = "wechat-dify-bridge/diagnostics/v1:"
KEY_LENGTH = 16
MAX_ERRORS = 20
KEEP_DAYS = 7
#: A POST flushes this process's pending entries at most this often (seconds).
FLUSH_INTERVAL = 30.0
MAX_DETAIL = 200

SOURCES = ("wechat-api", "dify-app", "worker", "delivery")
COUNTERS = ("passive", "pushed", "fetched", "expired", "handed_off", "app_error")
#: Error codes that are not WeChat errcodes.
APP_ERROR = "app"
NETWORK_ERROR = "network"
WORKER_ERROR = "unreachable"

_KIND = "diag"
_ERRORS_IDENT = "errors"
_DAY = 86400.0

_URL_RE = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^/\s?#\"'<>]*)[^\s\"'<>]*")
# Long opaque runs: access tokens, OpenIDs (28 chars), AppSecrets, AES keys, media ids.
_OPAQUE_RE = re.compile(r"[A-Za-z0-9_\-]{24,}")
_IP_RES = (
    re.compile(r"invalid ip\s+([0-9A-Fa-f.:]+[0-9A-Fa-f])"),
    re.compile(r"from ip:?\s*([0-9A-Fa-f.:]+[0-9A-Fa-f])"),
)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")


def diagnostics_key(token: str) -> str:
    """The key that opens the diagnostics section: anyone with the Token can compute it
    (the settings help shows how), nobody else can; it reveals nothing about the Token."""
    digest = hashlib.sha256((KEY_CONTEXT + token).encode("utf-8")).hexdigest()
    return digest[:KEY_LENGTH]


def key_matches(given: str, token: str) -> bool:
    """Constant-time check of a ``?key=``; never true without a Token (the key of an empty
    Token would be public)."""
    if not token or not given:
        return False
    expected = diagnostics_key(token).encode()
    return hmac.compare_digest(expected, given.strip().encode("utf-8", "replace"))


def day_of(at: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(at))


def reported_ip(text: str) -> str:
    """The IP WeChat says the call came from (40164, 60020), validated; else ""."""
    for pattern in _IP_RES:
        match = pattern.search(text)
        if match:
            try:
                return str(ipaddress.ip_address(match.group(1)))
            except ValueError:
                continue
    return ""


def clean_detail(text: str, redact: Iterable[str] = ()) -> str:
    """``text`` fit for the status page: settings' secrets masked, URLs cut to their host,
    credential assignments and long opaque ids masked, one short line."""
    for value in sorted((v for v in redact if v and len(v) >= 3), key=len, reverse=True):
        text = text.replace(value, "***")
    text = sanitize(text)
    text = _URL_RE.sub(r"\1", text)
    text = _OPAQUE_RE.sub("***", text)
    text = _CONTROL_RE.sub(" ", text).strip()
    return text[:MAX_DETAIL] + "…" if len(text) > MAX_DETAIL else text


@dataclass(frozen=True)
class JournalEntry:
    at: float
    source: str
    code: int | str
    detail: str
    ip: str = ""

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "at": self.at,
            "source": self.source,
            "code": self.code,
            "detail": self.detail,
        }
        if self.ip:
            record["ip"] = self.ip
        return record

    @classmethod
    def from_record(cls, record: Any) -> JournalEntry | None:
        try:
            code = record["code"]
            return cls(
                at=float(record["at"]),
                source=str(record["source"]),
                code=code if isinstance(code, int) else str(code),
                detail=str(record.get("detail", "")),
                ip=str(record.get("ip", "")),
            )
        except (KeyError, ValueError, TypeError, AttributeError):
            return None


@dataclass(frozen=True)
class Diagnostics:
    """What the status page shows with the key."""

    errors: list[JournalEntry]  # newest first
    days: list[tuple[str, dict[str, int]]]  # today first, KEEP_DAYS days

    def totals(self) -> dict[str, int]:
        return {name: sum(counts.get(name, 0) for _, counts in self.days) for name in COUNTERS}

    def last_worker_failure(self) -> JournalEntry | None:
        return next((e for e in self.errors if e.source == "worker"), None)


@dataclass
class _Pending:
    errors: list[JournalEntry] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # day -> name -> n
    last_flush: float = float("-inf")
    pruned_day: str = ""


class JournalBuffer:
    """Entries not yet written, per endpoint, in this process (requests come and go; the
    buffer stays). Bounded: at most MAX_ERRORS errors per endpoint."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scopes: dict[str, _Pending] = {}

    def add_error(self, scope: str, entry: JournalEntry) -> None:
        with self._lock:
            pending = self._scopes.setdefault(scope, _Pending())
            pending.errors = [*pending.errors, entry][-MAX_ERRORS:]

    def add_count(self, scope: str, day: str, name: str) -> None:
        with self._lock:
            counts = self._scopes.setdefault(scope, _Pending()).counts.setdefault(day, {})
            counts[name] = counts.get(name, 0) + 1

    def take(
        self, scope: str, now: float, interval: float = 0.0
    ) -> tuple[list[JournalEntry], dict[str, dict[str, int]]] | None:
        """The pending entries (removed from the buffer), or None when there are none or
        the last take was less than ``interval`` ago."""
        with self._lock:
            pending = self._scopes.get(scope)
            if pending is None or not (pending.errors or pending.counts):
                return None
            if now - pending.last_flush < interval:
                return None
            taken = (pending.errors, pending.counts)
            pending.errors, pending.counts, pending.last_flush = [], {}, now
            return taken

    def prune_due(self, scope: str, day: str) -> bool:
        """True once per endpoint and day: time to delete old counter records."""
        with self._lock:
            pending = self._scopes.setdefault(scope, _Pending())
            if pending.pruned_day == day:
                return False
            pending.pruned_day = day
            return True


BUFFER = JournalBuffer()


class Journal:
    """Records errors and counts for one endpoint; see the module docstring. Built per
    request from that request's store; ``store=None`` makes every method a no-op."""

    def __init__(
        self,
        store: EndpointStore | None,
        clock: Callable[[], float] = time.time,
        redact: Iterable[str] = (),
        buffer: JournalBuffer | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._redact = tuple(v for v in redact if v)
        self._buffer = buffer if buffer is not None else BUFFER
        self._scope = store.key(_KIND, "") if store is not None else ""

    # --- recording (memory only) ---------------------------------------------------------

    def record_error(self, source: str, code: int | str, detail: str) -> None:
        """Keep one failure; ``detail`` is sanitized here, before it is kept anywhere."""
        if self._store is None:
            return
        try:
            text = str(detail)
            entry = JournalEntry(
                at=self._clock(),
                source=source if source in SOURCES else "delivery",
                code=code if isinstance(code, int) else clean_detail(str(code))[:40],
                detail=clean_detail(text, self._redact),
                ip=reported_ip(text),
            )
            self._buffer.add_error(self._scope, entry)
        except Exception:
            logger.debug("Diagnostics: recording an error failed", exc_info=True)

    def record_wechat(self, exc: BaseException) -> None:
        """Keep a failed WeChat API call (errcode and errmsg, or "network"); exceptions
        that are not WeChat's (a download, a Dify call) are left to the log."""
        if isinstance(exc, WeChatAPIError):
            self.record_error("wechat-api", exc.errcode, exc.errmsg)
        elif isinstance(exc, WeChatError):
            self.record_error("wechat-api", NETWORK_ERROR, str(exc))

    def count(self, name: str) -> None:
        if self._store is None or name not in COUNTERS:
            return
        try:
            self._buffer.add_count(self._scope, day_of(self._clock()), name)
        except Exception:
            logger.debug("Diagnostics: counting failed", exc_info=True)

    # --- writing -------------------------------------------------------------------------

    def flush_if_due(self) -> None:
        """Write pending entries unless this process wrote some less than FLUSH_INTERVAL
        ago (a POST pays for at most one flush per interval)."""
        self._flush(FLUSH_INTERVAL, housekeeping=False)

    def flush(self, housekeeping: bool = True) -> None:
        """Write pending entries now; ``housekeeping`` also deletes counters older than
        KEEP_DAYS (once a day per process; for requests with time to spare)."""
        self._flush(0.0, housekeeping)

    def _flush(self, interval: float, housekeeping: bool) -> None:
        if self._store is None:
            return
        try:
            now = self._clock()
            taken = self._buffer.take(self._scope, now, interval)
            if taken is not None:
                self._write(self._store, *taken)
            if housekeeping and self._buffer.prune_due(self._scope, day_of(now)):
                self._prune(self._store, now)
        except Exception:
            logger.debug("Diagnostics: writing the journal failed", exc_info=True)

    @staticmethod
    def _write(
        store: EndpointStore, errors: list[JournalEntry], counts: dict[str, dict[str, int]]
    ) -> None:
        if errors:
            kept = _load_errors(store) + errors
            kept.sort(key=lambda e: e.at)  # stable: equal times keep their order
            records = [e.to_record() for e in kept[-MAX_ERRORS:]]
            store.save(_KIND, _ERRORS_IDENT, {"v": 1, "items": records})
        for day, added in counts.items():
            stored = _load_counts(store, day)
            for name, n in added.items():
                stored[name] = stored.get(name, 0) + n
            store.save(_KIND, f"counters-{day}", {"v": 1, "day": day, "counts": stored})

    @staticmethod
    def _prune(store: EndpointStore, now: float) -> None:
        # No listing in Dify's storage: delete the days just past the kept ones (a week of
        # them, so a pause in traffic leaves nothing behind).
        for age in range(KEEP_DAYS, 2 * KEEP_DAYS):
            store.remove(_KIND, f"counters-{day_of(now - age * _DAY)}")

    # --- reading -------------------------------------------------------------------------

    def report(self) -> Diagnostics | None:
        """Flush this process's pending entries, then read everything back."""
        if self._store is None:
            return None
        self.flush()
        store, now = self._store, self._clock()
        try:
            errors = _load_errors(store)[::-1]  # stored oldest first
        except Exception:
            logger.debug("Diagnostics: reading errors failed", exc_info=True)
            errors = []
        days: list[tuple[str, dict[str, int]]] = []
        for age in range(KEEP_DAYS):
            day = day_of(now - age * _DAY)
            try:
                days.append((day, _load_counts(store, day)))
            except Exception:
                logger.debug("Diagnostics: reading counters failed", exc_info=True)
                days.append((day, {}))
        return Diagnostics(errors, days)


def _load_errors(store: EndpointStore) -> list[JournalEntry]:
    record = store.load(_KIND, _ERRORS_IDENT) or {}
    items = record.get("items")
    entries = [JournalEntry.from_record(r) for r in items] if isinstance(items, list) else []
    return [e for e in entries if e is not None]


def _load_counts(store: EndpointStore, day: str) -> dict[str, int]:
    record = store.load(_KIND, f"counters-{day}") or {}
    counts = record.get("counts")
    if not isinstance(counts, dict):
        return {}
    return {str(k): v for k, v in counts.items() if isinstance(v, int) and k in COUNTERS}


# --- explanations ------------------------------------------------------------------------

_WHITELIST_EN = "设置与开发 → 基本配置 → IP白名单"


def explain(
    code: int | str, ip: str = "", detail: str = "", wecom: bool = False
) -> tuple[str, str]:
    """What an error means and what to do, in English and Chinese (``wecom``: the code is
    WeCom's, whose numbers sometimes mean something else)."""
    where = ip or "this server's egress IP"
    where_zh = ip or "本服务器的出口 IP"
    if code == 40164:
        return (
            f"WeChat refused the call from {where}: add it to the IP whitelist ({_WHITELIST_EN}).",
            f"微信拒绝了来自 {where_zh} 的调用：请把它加入「{_WHITELIST_EN}」。",
        )
    if code == 60020:
        return (
            f"WeCom refused the call from {where}: add it to the app's trusted IPs "
            "(应用详情 → 企业可信IP).",
            f"企业微信拒绝了来自 {where_zh} 的调用：请在「应用详情 → 企业可信IP」中添加。",
        )
    if wecom and isinstance(code, int):
        zh = _WECOM_ZH.get(code)
        if zh is None:
            zh = f"企业微信返回错误码 {code}，请在企业微信开发者中心的错误码查询工具中查看。"
        return f"WeCom error {code}: {wecom_error_for(code, '').hint}", zh
    known = _EXPLAINED.get(code) if isinstance(code, int) else _EXPLAINED_STR.get(code)
    if known is not None:
        en, zh = known
        return en.format(detail=detail or "-"), zh.format(detail=detail or "-")
    if isinstance(code, int):
        hint = error_for(code, "").hint
        return (
            f"WeChat error {code}: {hint}",
            f"微信返回错误码 {code}，请查阅微信全局返回码说明。",
        )
    return (
        f"Unexpected failure ({code}); see the plugin log.",
        f"意外错误（{code}），请查看插件日志。",
    )


_TOKEN_TEXT = (
    "The access token was rejected: check that the AppSecret is current and that no other "
    "system refreshes this account's token.",
    "access_token 无效或已过期：请确认 AppSecret 正确，且没有其他系统在刷新该公众号的 token。",
)
_EXPLAINED: dict[int, tuple[str, str]] = {
    48001: (
        "This account may not send customer-service messages (verified accounts only): late "
        "answers wait for the fetch keyword. Set delivery_mode to fetch to stop trying.",
        "该公众号无权发送客服消息（需认证账号）：迟到的答案改为回复关键词获取。"
        "可将 delivery_mode 设为 fetch 以停止尝试。",
    ),
    45015: (
        "The user has not written in the last 48 hours or unfollowed: the answer waits for "
        "the fetch keyword.",
        "用户超过 48 小时未互动或已取消关注：答案需回复关键词获取。",
    ),
    45047: (
        "The quota of 5 customer-service messages per user message is used: the rest waits "
        "for the fetch keyword.",
        "每条用户消息最多 5 条客服消息，额度已用完：其余内容需回复关键词获取。",
    ),
    40001: _TOKEN_TEXT,
    40014: _TOKEN_TEXT,
    42001: _TOKEN_TEXT,
}
# WeCom: the English text is the error's own hint (api.errors); the Chinese one is here.
_WECOM_ZH: dict[int, str] = {
    40001: "应用 Secret 不正确：请重新复制（「应用管理 → 应用 → Secret」）。",
    40013: "企业ID (app_id) 不正确：请从「我的企业 → 企业信息 → 企业ID」复制。",
    40014: _TOKEN_TEXT[1],
    42001: _TOKEN_TEXT[1],
    40056: "AgentId 不正确：请从「应用管理 → 应用」页面复制。",
    40058: "企业微信拒绝了消息参数（如 Markdown 过长），已改为文本发送。",
    48002: "企业微信不允许该应用调用此接口：请使用应用自己的 Secret 并检查应用权限。",
    81013: "成员无法接收该应用的消息：请检查应用的「可见范围」以及成员状态。",
}
_EXPLAINED_STR: dict[str, tuple[str, str]] = {
    APP_ERROR: (
        "The Dify app failed: {detail}. The user got the error message.",
        "Dify 应用调用失败：{detail}。用户收到了出错提示。",
    ),
    NETWORK_ERROR: (
        "The WeChat API could not be reached or answered garbage: check the network access "
        "to the WeChat API base URL.",
        "无法访问微信接口或返回异常：请检查到微信接口地址的网络。",
    ),
    WORKER_ERROR: (
        "The background worker could not be reached ({detail}): only answers ready within "
        "~4 s reach users.",
        "无法访问后台任务（{detail}）：只有 4 秒内生成的答案能送达。",
    ),
}
