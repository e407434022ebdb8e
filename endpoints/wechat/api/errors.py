"""Errors raised by the WeChat server API client.

Exception tree::

    WeChatError                  anything this package raises
    ├── TransportError           no usable answer: network error, timeout (``timed_out``),
    │                            HTTP error without a JSON body, non-JSON or malformed body
    └── WeChatAPIError           WeChat answered ``errcode != 0``: ``errcode``, ``errmsg``, ``hint``
        ├── AccessTokenInvalid   40001, 40014, 42001 — the client refreshes and retries once
        ├── IPNotWhitelisted     40164 — ``ip`` is the egress address WeChat saw
        ├── Unauthorized         48001 — the account has no right to this API
        ├── OutOfWindow          45015 — no user message in the last 48 h, or unsubscribed
        ├── QuotaExceeded        45047 — the per-interaction customer-service quota is used
        ├── ContentTooLong       45002
        ├── RateLimited          45009, 45011, -1 — try again later
        ├── UserUnavailable      40003, 43004, 48002 — bad OpenID, not following, blocked
        ├── CredentialError      40013, 40125, 40243 — AppID / AppSecret wrong or frozen;
        │                        41002, 41004 — AppID / AppSecret missing
        ├── IPNotTrusted         WeCom 60020 — ``ip`` is the address to add to 企业可信IP
        └── ContentRejected      WeCom 40058 — a parameter (e.g. markdown) was refused

``error_for(errcode, errmsg)`` (Official Account) and ``wecom_error_for`` (WeCom, where
some codes mean something else: 40001 is a wrong Secret there, not a stale token) are the
only places that turn an errcode into an exception; unknown codes become a plain
``WeChatAPIError``. Codes and meanings:
``/work/shared/reference/wechat-protocol.md`` §7-§9 and
https://developers.weixin.qq.com/doc/offiaccount/Getting_Started/Global_Return_Code.html

Texts are safe to log: every message goes through :func:`sanitize`, which drops query
strings from URLs (``access_token=`` and ``secret=`` travel there) and masks the values
given as ``redact`` (the client passes its AppSecret and access tokens). Network errors of
the HTTP library embed the full URL, so the client never chains them (``from None``).
Each error carries ``hint``: one English sentence telling the admin what to do.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import ClassVar

REDACTED = "***"

# A URL's query string (everything from "?" up to whitespace or a closing quote/bracket).
_URL_QUERY_RE = re.compile(r"(?P<url>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?\"'<>]*)\?[^\s\"'<>]*")
# Credentials that may appear outside a URL, e.g. "access_token=...; secret: ...".
_CREDENTIAL_RE = re.compile(
    r"(?P<name>access_token|secret|appsecret)(?P<sep>\s*[=:]\s*)[^\s&,;\"']+", re.IGNORECASE
)
_IP_RE = re.compile(r"invalid ip\s+([0-9A-Fa-f.:]+[0-9A-Fa-f])")
_WECOM_IP_RE = re.compile(r"from ip:\s*([0-9A-Fa-f.:]+[0-9A-Fa-f])")
_MAX_ERRMSG = 500  # WeChat's errmsg is short; a proxy's error page is not


def sanitize(text: str, redact: Iterable[str] = ()) -> str:
    """``text`` without URL query strings, credential assignments or the ``redact`` values."""
    for value in sorted((v for v in redact if v and len(v) >= 4), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    text = _URL_QUERY_RE.sub(r"\g<url>", text)
    text = _CREDENTIAL_RE.sub(lambda m: f"{m['name']}{m['sep']}{REDACTED}", text)
    text = text.replace("?", "")  # any leftover query-looking fragment
    if len(text) > _MAX_ERRMSG:
        text = text[:_MAX_ERRMSG] + "…"
    return text


class WeChatError(Exception):
    """Base of everything the WeChat API client raises."""

    hint: str = "See the plugin log for details."


class TransportError(WeChatError):
    """No usable answer from the WeChat API: network error, timeout, HTTP or body error.

    The message names the API path (never a query string) and the kind of failure; the
    underlying exception is deliberately not chained because it embeds the full URL.
    """

    hint = (
        "The WeChat API could not be reached or answered garbage: check the server's "
        "network access to the WeChat API base URL and try again."
    )

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(sanitize(message))
        self.timed_out = timed_out


class WeChatAPIError(WeChatError):
    """WeChat answered with ``errcode != 0``."""

    codes: ClassVar[tuple[int, ...]] = ()
    hint = "WeChat refused the call; look the errcode up in WeChat's global return codes."

    def __init__(self, errcode: int, errmsg: str, *, hint: str | None = None) -> None:
        self.errcode = errcode
        self.errmsg = sanitize(errmsg)
        if hint is not None:
            self.hint = hint
        super().__init__(f"WeChat API error {errcode}: {self.errmsg}")


class AccessTokenInvalid(WeChatAPIError):
    codes = (40001, 40014, 42001)
    hint = (
        "The access token was rejected even after a refresh: check that the AppSecret is "
        "current and that no other system force-refreshes this account's stable token."
    )


class IPNotWhitelisted(WeChatAPIError):
    codes = (40164,)
    hint = (
        "Add this server's egress IP to the Official Account's IP whitelist "
        "(设置与开发 → 基本配置 → IP白名单)."
    )

    def __init__(self, errcode: int, errmsg: str, *, hint: str | None = None) -> None:
        super().__init__(errcode, errmsg, hint=hint)
        match = _IP_RE.search(errmsg)
        self.ip: str | None = match.group(1) if match else None
        if hint is None and self.ip:
            self.hint = (
                f"Add {self.ip} to the Official Account's IP whitelist "
                "(设置与开发 → 基本配置 → IP白名单)."
            )


class Unauthorized(WeChatAPIError):
    codes = (48001,)
    hint = (
        "This account may not use the API: customer-service messages need a verified "
        "(认证) subscription or service account that is not personal-subject; use a test "
        "account or the fetch delivery mode instead."
    )


class OutOfWindow(WeChatAPIError):
    codes = (45015,)
    hint = (
        "The user has not messaged the account in the last 48 hours or has unfollowed it; "
        "wait for the user's next message."
    )


class QuotaExceeded(WeChatAPIError):
    codes = (45047,)
    hint = (
        "The customer-service quota for this user is used up (5 messages per user message "
        "within 48 h); send fewer, longer parts or let the user fetch the rest."
    )


class ContentTooLong(WeChatAPIError):
    codes = (45002,)
    hint = "The message is too long; split it into parts of at most 2048 UTF-8 bytes."


class RateLimited(WeChatAPIError):
    codes = (45009, 45011, -1)
    hint = (
        "WeChat is busy or an API limit was reached; try again later (a daily limit can be "
        "reset with clear_quota in the WeChat console)."
    )


class UserUnavailable(WeChatAPIError):
    codes = (40003, 43004, 48002)
    hint = (
        "The user cannot be messaged: the OpenID is not of this account, the user does not "
        "follow it, or has blocked its messages."
    )


class CredentialError(WeChatAPIError):
    codes = (40013, 40125, 40243, 41002, 41004)
    hint = (
        "The AppID or AppSecret is wrong or the AppSecret is frozen: copy both again from "
        "设置与开发 → 基本配置 (reset the AppSecret if needed)."
    )


class IPNotTrusted(WeChatAPIError):
    """WeCom 60020: the server's egress IP is not among the app's trusted IPs."""

    codes = (60020,)
    hint = (
        "Add this server's egress IP to the WeCom app's trusted IPs (应用管理 → the app → "
        "企业可信IP; a trusted domain or the callback URL must be set first)."
    )

    def __init__(self, errcode: int, errmsg: str, *, hint: str | None = None) -> None:
        super().__init__(errcode, errmsg, hint=hint)
        match = _WECOM_IP_RE.search(errmsg)
        self.ip: str | None = match.group(1) if match else None
        if hint is None and self.ip:
            self.hint = (
                f"Add {self.ip} to the WeCom app's trusted IPs (应用管理 → the app → 企业可信IP; "
                "a trusted domain or the callback URL must be set first)."
            )


class ContentRejected(WeChatAPIError):
    """WeCom 40058: a parameter was refused, e.g. markdown the API would not take."""

    codes = (40058,)
    hint = "WeCom refused a parameter of the message (e.g. markdown too long); sent as text."


_CLASSES: tuple[type[WeChatAPIError], ...] = (
    AccessTokenInvalid,
    IPNotWhitelisted,
    Unauthorized,
    OutOfWindow,
    QuotaExceeded,
    ContentTooLong,
    RateLimited,
    UserUnavailable,
    CredentialError,
)
_BY_CODE: dict[int, type[WeChatAPIError]] = {code: cls for cls in _CLASSES for code in cls.codes}

# Hints for codes that have no class of their own, or a more precise text than the class.
_HINTS: dict[int, str] = {
    -1: "WeChat reports a system error; try again in a few seconds.",
    40001: (
        "The access token was rejected even after a refresh: check that the AppSecret is "
        "current (it may have been reset) and that no other system force-refreshes the "
        "stable token."
    ),
    40007: "The media_id is invalid or expired (temporary media lives 3 days).",
    40013: "The AppID is wrong: copy it again from 设置与开发 → 基本配置.",
    40125: "The AppSecret is wrong: copy it again (or reset it) in 设置与开发 → 基本配置.",
    40243: "The AppSecret is frozen: unfreeze or reset it in 设置与开发 → 基本配置.",
    41001: "The access token is missing from the request.",
    41002: "The AppID is missing: enter it in the endpoint settings.",
    41004: "The AppSecret is missing: enter it in the endpoint settings (设置与开发 → 基本配置).",
    43002: "WeChat expects a POST for this API.",
    45009: "The daily API limit was reached; wait or reset it with clear_quota (10 per month).",
    45011: "Too many calls per minute; slow down and try again shortly.",
    45072: "The typing command is invalid (only Typing and CancelTyping exist).",
    45080: "A typing indicator needs a user interaction within the last 30 seconds.",
    45081: "A typing indicator is already shown (it lasts 15 seconds).",
    89503: "WeChat wants an admin to confirm calls from this IP (risky IP); confirm in the app.",
}


# WeCom's codes (https://developer.work.weixin.qq.com/document/path/90313; wechat-protocol.md
# §10.5): the same numbers as the Official Account's sometimes mean something else.
_WECOM_CLASSES: dict[int, type[WeChatAPIError]] = {
    40001: CredentialError,  # invalid secret
    40013: CredentialError,  # invalid corpid
    40014: AccessTokenInvalid,
    42001: AccessTokenInvalid,
    40056: CredentialError,  # invalid agentid
    40058: ContentRejected,
    45009: RateLimited,
    45033: RateLimited,
    48002: Unauthorized,
    60020: IPNotTrusted,
    81013: UserUnavailable,
    -1: RateLimited,
}
_WECOM_HINTS: dict[int, str] = {
    -1: "WeCom reports a system error; try again in a few seconds.",
    40001: "The Secret is wrong: copy the app's Secret again (应用管理 → the app → Secret).",
    40013: "The CorpID is wrong: copy it again from 我的企业 → 企业信息 → 企业ID.",
    40014: "The access token was rejected even after a refresh: check the app's Secret.",
    42001: "The access token expired and a fresh one was refused: check the app's Secret.",
    40056: "The AgentId is wrong: copy it from 应用管理 → the app → AgentId.",
    41001: "The access token is missing from the request.",
    45009: "WeCom's API limit was reached; try again later.",
    45033: "Too many calls at once; try again shortly.",
    48002: (
        "WeCom forbids this API for the app: check the app's permissions and that the "
        "Secret is the app's own (not the contacts or another app's Secret)."
    ),
    81013: (
        "The member cannot receive the app's messages: check the app's visibility range "
        "(可见范围) and that the member has not left or been disabled."
    ),
}


def wecom_error_for(errcode: int, errmsg: str, *, redact: Iterable[str] = ()) -> WeChatAPIError:
    """The typed exception for a WeCom ``errcode``; ``redact`` values are masked in texts."""
    cls = _WECOM_CLASSES.get(errcode, WeChatAPIError)
    hint = _WECOM_HINTS.get(errcode)
    if hint is None and cls is WeChatAPIError:
        hint = f"Look the code up: https://open.work.weixin.qq.com/devtool/query?e={errcode}"
    return cls(errcode, sanitize(errmsg, redact), hint=hint)


def error_for(errcode: int, errmsg: str, *, redact: Iterable[str] = ()) -> WeChatAPIError:
    """The typed exception for a WeChat ``errcode``; ``redact`` values are masked in texts."""
    cls = _BY_CODE.get(errcode, WeChatAPIError)
    return cls(errcode, sanitize(errmsg, redact), hint=_HINTS.get(errcode))


def error_label(exc: BaseException) -> str:
    """A log-safe name for a failure: its type, plus WeChat's errcode when it has one."""
    code = getattr(exc, "errcode", None)
    return f"{type(exc).__name__} {code}" if code is not None else type(exc).__name__
