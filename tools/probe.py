"""Check a deployed endpoint the way WeChat (or WeCom) will use it, before pasting it into the
console.

    python -m tools.probe https://dify.example.com/e/<hook_id>/wechat --token … \\
        [--app-id wx… --aes-key …] [--mode plain|compatible|safe] [--timeout 5] [--allow-local]
    python -m tools.probe https://dify.example.com/e/<hook_id>/wecom --token … \\
        --corp-id ww… --aes-key … [--agent-id 1000002] [--platform wecom]
    make probe URL=… TOKEN=… [APP_ID=… AES_KEY=… MODE=… TIMEOUT=… ALLOW_LOCAL=1]

Four steps, each ending in OK / WARN / FAIL (SKIP when an earlier step makes it pointless) and,
for problems, one line saying what to change:

1. URL — what WeChat accepts as 服务器地址: port 80 or 443 only, a public host (Dify builds the
   URL from ENDPOINT_URL_TEMPLATE, which defaults to localhost), a path ending in ``/wechat``.
   http is allowed by WeChat, so it is only a warning (reference wechat-protocol.md §2).
2. Reachability — an unsigned GET, which this plugin answers with its status page (setting
   names and whether each is set; never a value). A 404 means a wrong hook id or a disabled
   endpoint (dify-plugin-runtime.md §8); connection and TLS errors are explained.
3. Signed verification — the GET WeChat sends when the URL is saved: the body must be the
   ``echostr`` exactly.
4. Test message — a signed POST in plain, compatible or safe mode, timed against WeChat's
   5-second deadline, the reply verified and decrypted as WeChat would.

Nothing reaches a real user: the message is ``/help`` (answered by the plugin itself, no app
call) from a made-up OpenID ``probe-<random>`` to ``gh_probe``. The plugin refuses bad
requests with a bare 403/400 (the reason is only in its log, see ``intake.py``), so the fix
for a refusal is inferred from what the earlier steps established (Token verified, which
settings the status page reports, clock offset). Output never contains the Token, the
EncodingAESKey, a signature or a query string. Requests go straight to the URL (no proxy from
the environment), as WeChat's would, and every wait is bounded.

WeCom (企业微信) self-built apps: ``--platform wecom``, inferred (and said so) when the path ends
in ``/wecom``. Same four steps, with WeCom's rules (wechat-protocol.md §10): any port (WeCom's
docs name none), a public IP only warned about (verified enterprises need an ICP-filed domain);
step 3 sends an *encrypted* ``echostr`` signed with ``msg_signature`` (receiver id = CorpID)
and wants its plaintext back within 1 s; step 4 posts an encrypted ``/help`` with ``AgentID``
(omitted without ``--agent-id``) from ``probe-<random>`` to the CorpID, and checks the encrypted
passive reply (MsgSignature, CorpID, addressing). A refused step 3 cannot say whether the Token,
the EncodingAESKey or the CorpID is wrong (one 403 for all, the plugin's log names it); a 403
in step 4 after a good step 3 is the AgentID (or the clock).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Literal, cast
from urllib.parse import urlsplit, urlunsplit

import requests

from endpoints.wechat.crypto import (
    CryptoError,
    DecryptError,
    InvalidAESKeyError,
    MessageCrypto,
    ReceiverIdMismatchError,
    SignatureError,
    compute_signature,
    make_nonce,
    validate_encoding_aes_key,
)
from endpoints.wechat.parsers import XmlRefusedError, parse_xml_fields
from endpoints.wechat.settings import Platform

Mode = Literal["plain", "compatible", "safe"]
MODES: tuple[Mode, ...] = ("plain", "compatible", "safe")

#: WeChat hangs up on the server after this many seconds (wechat-protocol.md §6).
WECHAT_DEADLINE = 5.0
#: Above this share of the deadline a reply is on time but leaves little room for real answers.
SLOW_SHARE = 0.6
#: How long past the deadline the probe keeps listening, to tell "slow" from "no reply".
REPLY_GRACE = 1.0
#: Replies are small; never read more than this.
MAX_BODY = 256 * 1024
#: Clock offset (s) worth a warning; the plugin's default tolerance is 300 s.
CLOCK_WARN_SECONDS = 60.0
WECHAT_PORTS = (80, 443)
PROBE_TO_USER = "gh_probe"
PROBE_COMMAND = "/help"
ENV_TOKEN, ENV_APP_ID, ENV_AES_KEY = "PROBE_TOKEN", "PROBE_APP_ID", "PROBE_AES_KEY"
ENV_PLATFORM, ENV_AGENT_ID = "PROBE_PLATFORM", "PROBE_AGENT_ID"
PLATFORMS: tuple[str, ...] = tuple(p.value for p in Platform)
#: WeCom wants the decrypted echostr within this many seconds (wechat-protocol.md §10.1).
WECOM_VERIFY_DEADLINE = 1.0
#: The made-up sender: OpenID (Official Account) or UserID (WeCom) ``probe-<random>``.
PROBE_USER_PREFIX = "probe-"

_STATUS_PAGE_TITLE = "<title>WeChat ⇄ Dify endpoint</title>"
_STATUS_ROW = re.compile(r"<tr><td>(✅|❌|⚠️)</td><td><code>([A-Za-z0-9_]+)</code></td>")
_PLATFORM_ROW = re.compile(r"<code>platform</code></td><td>Platform: ([^<.]+)\.")
_AGENT_ID = re.compile(r"[0-9]{1,10}")
_CORP_ID = re.compile(r"[A-Za-z0-9]{1,64}")
_BOM = b"\xef\xbb\xbf"
_ROW_STATE = {"✅": "ok", "❌": "problem", "⚠️": "unset"}
_DISPATCH_404 = "Failed to dispatch endpoint request"
_USER_AGENT = "wechat-endpoint-probe/1"

FIX_LOCAL_HOST = (
    "Dify builds endpoint URLs from ENDPOINT_URL_TEMPLATE; set it to your public https host "
    "(e.g. https://dify.example.com/e/{hook_id}) and copy the endpoint URL again"
)
FIX_PORT = (
    "WeChat only calls ports 80 and 443: serve Dify on 443 (e.g. nginx in front) and set "
    "ENDPOINT_URL_TEMPLATE without a port"
)
FIX_NOT_FOUND = (
    "endpoint disabled or wrong URL (hook id): enable the endpoint in Dify (Plugins → this "
    "plugin → Endpoints) and copy its URL again"
)
FIX_TOKEN = (
    "Token mismatch: the Token in the endpoint settings (wechat_token) differs from --token; "
    "make both equal to the console's Token (基本配置 → 服务器配置)"
)
FIX_SLOW = (
    "slow reply: WeChat hangs up after 5 s and retries; /help needs no app call, so the time "
    "went to the network, Dify's proxy or the plugin daemon (cold start? run the probe again)"
)
FIX_WECOM_TOKEN = (
    "Token mismatch: the Token in the endpoint settings (wechat_token) differs from --token; "
    "make both equal to the app's Token (接收消息 → 设置API接收)"
)
FIX_WECOM_SLOW = (
    "slow reply: WeCom waits 5 s, then retries; /help needs no app call, so the time went to "
    "the network, Dify's proxy or the plugin daemon (cold start? run the probe again)"
)
FIX_WECOM_SLOW_VERIFY = (
    "slow answer: WeCom wants it within 1 s or does not save the URL; the time went to the "
    "network, Dify's proxy or the plugin daemon (cold start? run the probe again, then save)"
)
FIX_WECOM_KEYS = (
    "Token, EncodingAESKey or CorpID mismatch (the plugin does not say which): set "
    "wechat_token, encoding_aes_key and app_id in the endpoint settings to --token, "
    "--aes-key and --corp-id (设置API接收; 我的企业 → 企业信息 → 企业ID)"
)
FIX_WECOM_LOG = (
    "the plugin's log in Dify says which (Refused a WeChat GET request: …): “…signature "
    "mismatch” = Token, “decryption refused” = EncodingAESKey, “another CorpID” = app_id"
)
FIX_WECOM_ON_OFFICIAL_ACCOUNT = (
    "the endpoint's platform setting is official_account, so /wechat answers as an Official "
    "Account: set platform to wecom in the endpoint settings, or use the URL ending in /wecom"
)


@dataclass(frozen=True)
class Wording:
    """What the output says differently per platform (the Official Account's is the original)."""

    caller: str
    path: str
    receiver_option: str
    token_fix: str
    receiver_fix: str
    slow_fix: str
    refused_url_fix: str
    no_redirect_fix: str
    http_detail: str
    bad_reply: str
    plaintext_reply: tuple[str, str]


WORDING: dict[Platform, Wording] = {
    Platform.OFFICIAL_ACCOUNT: Wording(
        caller="WeChat",
        path="/wechat",
        receiver_option="--app-id",
        token_fix=FIX_TOKEN,
        receiver_fix="AppID mismatch: set app_id in the endpoint settings to --app-id (the "
        "console's)",
        slow_fix=FIX_SLOW,
        refused_url_fix=FIX_PORT,
        no_redirect_fix="paste the final URL: WeChat calls the URL as given and does not "
        "follow redirects",
        http_detail="plain http (WeChat accepts it, but traffic is readable on the way)",
        bad_reply="WeChat would show 该公众号暂时无法提供服务",
        plaintext_reply=(
            "plaintext reply to a safe-mode message (WeChat drops it)",
            "the endpoint must encrypt replies in safe mode: is it running this plugin?",
        ),
    ),
    Platform.WECOM: Wording(
        caller="WeCom",
        path="/wecom",
        receiver_option="--corp-id",
        token_fix=FIX_WECOM_TOKEN,
        receiver_fix="CorpID mismatch: set app_id in the endpoint settings to --corp-id "
        "(我的企业 → 企业信息 → 企业ID)",
        slow_fix=FIX_WECOM_SLOW,
        refused_url_fix="copy the endpoint URL from Dify again",
        no_redirect_fix="paste the final URL: the callback URL must answer itself (do not "
        "rely on WeCom following redirects)",
        http_detail="plain http (WeCom accepts it; callbacks stay encrypted, other traffic "
        "is readable on the way)",
        bad_reply="WeCom would show the member nothing",
        plaintext_reply=(
            "plaintext reply (WeCom drops it: replies must be encrypted)",
            "the endpoint must encrypt replies to WeCom: is it running this plugin?",
        ),
    ),
}
OFFICIAL_ACCOUNT_WORDING = WORDING[Platform.OFFICIAL_ACCOUNT]


class Verdict(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"

    @property
    def label(self) -> str:
        return f"[{self.value:^4}]"


@dataclass(frozen=True)
class StepResult:
    """One step's outcome; ``fixes`` are what to change, one line each."""

    name: str
    verdict: Verdict
    detail: str
    fixes: tuple[str, ...] = ()
    elapsed_ms: int | None = None

    def lines(self) -> list[str]:
        timing = f" — {self.elapsed_ms} ms" if self.elapsed_ms is not None else ""
        out = [f"{self.verdict.label} {self.name} — {self.detail}{timing}"]
        out.extend(f"       fix: {fix}" for fix in self.fixes)
        return out


class ProbeUsageError(ValueError):
    """Bad arguments; the message never contains a secret."""


@dataclass(frozen=True)
class ProbeConfig:
    url: str
    token: str = field(repr=False)
    app_id: str = ""
    aes_key: str = field(default="", repr=False)
    mode: Mode = "plain"
    timeout: float = 5.0
    allow_local: bool = False
    deadline: float = WECHAT_DEADLINE
    platform: Platform = Platform.OFFICIAL_ACCOUNT
    #: The platform came from the URL's path (``/wecom``), not from ``--platform``.
    platform_inferred: bool = False
    #: WeCom: the AgentId sent in the test message ("" = no ``<AgentID>``, not checked).
    agent_id: str = ""
    verify_deadline: float = WECOM_VERIFY_DEADLINE

    @property
    def wecom(self) -> bool:
        return self.platform is Platform.WECOM

    @property
    def words(self) -> Wording:
        return WORDING[self.platform]

    @property
    def encrypted(self) -> bool:
        return self.mode != "plain"

    @property
    def hidden_values(self) -> tuple[str, ...]:
        return tuple(s for s in (self.token, self.aes_key) if s)


def make_config(
    url: str,
    token: str,
    *,
    app_id: str = "",
    aes_key: str = "",
    mode: str | None = None,
    timeout: float = 5.0,
    allow_local: bool = False,
    deadline: float = WECHAT_DEADLINE,
    platform: str | None = None,
    agent_id: str = "",
    verify_deadline: float = WECOM_VERIFY_DEADLINE,
) -> ProbeConfig:
    """Validate the arguments. Mode defaults to safe with an AES key, plain without one.
    The platform defaults to WeCom for a path ending in ``/wecom``, else Official Account."""
    url, token, app_id, aes_key = url.strip(), token.strip(), app_id.strip(), aes_key.strip()
    agent_id = agent_id.strip()
    if not token:
        raise ProbeUsageError(f"a Token is required (--token or ${ENV_TOKEN})")
    chosen_platform, inferred = choose_platform(url, platform)
    if chosen_platform is Platform.WECOM:
        return _wecom_config(
            ProbeConfig(
                url,
                token,
                app_id,
                aes_key,
                "safe",
                timeout,
                allow_local,
                deadline,
                Platform.WECOM,
                inferred,
                agent_id,
                verify_deadline,
            ),
            mode,
        )
    if agent_id:
        raise ProbeUsageError("--agent-id is for WeCom only (--platform wecom)")
    chosen = mode or ("safe" if aes_key else "plain")
    if chosen not in MODES:
        raise ProbeUsageError(f"--mode must be one of {', '.join(MODES)}")
    if chosen != "plain" and not aes_key:
        raise ProbeUsageError(f"--mode {chosen} needs --aes-key (the console's EncodingAESKey)")
    if aes_key:
        try:
            validate_encoding_aes_key(aes_key)
        except InvalidAESKeyError:
            raise ProbeUsageError("--aes-key must be 43 letters or digits") from None
        if not app_id:
            raise ProbeUsageError("--aes-key needs --app-id (encrypted messages carry the AppID)")
    if not 0 < timeout <= 60 or not 0 < deadline <= 60:
        raise ProbeUsageError("--timeout must be between 0 and 60 seconds")
    return ProbeConfig(
        url, token, app_id, aes_key, cast(Mode, chosen), timeout, allow_local, deadline
    )


def choose_platform(url: str, platform: str | None) -> tuple[Platform, bool]:
    """``--platform``, or the one the URL's path names; the flag says it was inferred."""
    if platform:
        if platform not in PLATFORMS:
            raise ProbeUsageError(f"--platform must be one of {', '.join(PLATFORMS)}")
        return Platform(platform), False
    try:
        path = urlsplit(url).path.rstrip("/")
    except ValueError:
        path = ""
    if path.endswith(WORDING[Platform.WECOM].path):
        return Platform.WECOM, True
    return Platform.OFFICIAL_ACCOUNT, False


def _wecom_config(cfg: ProbeConfig, mode: str | None) -> ProbeConfig:
    """Check a WeCom configuration: always encrypted, CorpID required, AgentID optional."""
    where = " (platform wecom, inferred from the /wecom path)" if cfg.platform_inferred else ""
    if mode not in (None, "", "safe"):
        raise ProbeUsageError(
            f"--mode does not apply to WeCom{where}: every WeCom callback is encrypted"
        )
    if not cfg.aes_key:
        raise ProbeUsageError(
            f"WeCom needs --aes-key{where}: every WeCom callback is encrypted; pass the app's "
            f"EncodingAESKey (接收消息 → 设置API接收), or set ${ENV_AES_KEY}"
        )
    try:
        validate_encoding_aes_key(cfg.aes_key)
    except InvalidAESKeyError:
        raise ProbeUsageError("--aes-key must be 43 letters or digits") from None
    if not cfg.app_id:
        raise ProbeUsageError(
            f"WeCom needs --corp-id (or --app-id){where}: the CorpID, ww… "
            "(我的企业 → 企业信息 → 企业ID)"
        )
    if _CORP_ID.fullmatch(cfg.app_id) is None:
        raise ProbeUsageError("--corp-id must be letters and digits (the CorpID, ww…)")
    if cfg.app_id.isdigit():
        raise ProbeUsageError(
            "--corp-id is the CorpID (ww…), not the AgentId: pass the AgentId as --agent-id"
        )
    if cfg.agent_id and _AGENT_ID.fullmatch(cfg.agent_id) is None:
        raise ProbeUsageError("--agent-id must be a number such as 1000002 (the app's AgentId)")
    if not all(0 < t <= 60 for t in (cfg.timeout, cfg.deadline, cfg.verify_deadline)):
        raise ProbeUsageError("--timeout must be between 0 and 60 seconds")
    return cfg


# --- step 1: the URL ------------------------------------------------------------------------


def display_url(url: str) -> str:
    """The URL without credentials, with any query or fragment masked (they may hold secrets)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host + (f":{port}" if port is not None else "")
    shown = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return shown + ("?…" if parts.query or parts.fragment else "")


def request_url(url: str) -> str:
    """The URL WeChat would call: the pasted one without query or fragment."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def host_problem(host: str) -> str | None:
    """Why WeChat's servers cannot reach ``host``, or None for a public host name/address."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return "localhost"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if "." not in host:
            return "a host name without a domain (only resolvable inside your network)"
        if host.endswith((".local", ".internal", ".lan")):
            return "a local-network host name"
        return None
    if address.is_loopback:
        return "a loopback address"
    if not address.is_global:
        return "a private or reserved IP address"
    return None


def check_url(
    url: str, allow_local: bool = False, platform: Platform = Platform.OFFICIAL_ACCOUNT
) -> StepResult:
    """Step 1, no network: would WeChat (or WeCom) accept and be able to call this URL?

    WeChat calls ports 80 and 443 only (wechat-protocol.md §2); WeCom's docs name no port
    restriction (§10.1), so no port is flagged for it, and ``/wechat`` is accepted too (it
    serves WeCom when the endpoint's platform setting says so: step 2 checks)."""
    name = "URL"
    words = WORDING[platform]
    wecom = platform is Platform.WECOM
    example = f"https://<dify-host>/e/<hook_id>{words.path}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return StepResult(
            name,
            Verdict.FAIL,
            "not an http(s) URL",
            (f"paste the endpoint URL from Dify: {example}",),
        )
    try:
        port = parts.port
    except ValueError:
        return StepResult(name, Verdict.FAIL, "the port is not a number", (words.refused_url_fix,))
    soft = Verdict.WARN if allow_local else Verdict.FAIL
    findings: list[tuple[Verdict, str, str]] = []
    if port is not None and port not in WECHAT_PORTS and not wecom:
        findings.append((soft, f"port {port} (WeChat calls only 80 and 443)", FIX_PORT))
    problem = host_problem(parts.hostname)
    if problem is not None:
        findings.append(
            (soft, f"host is {problem}, unreachable from {words.caller}", FIX_LOCAL_HOST)
        )
    elif wecom and _is_ip_address(parts.hostname):
        findings.append(
            (
                Verdict.WARN,
                "host is an IP address (WeCom allows that for unverified enterprises only)",
                "a verified (已认证) enterprise needs an ICP-filed (备案) domain of its own or "
                "a related one: use it in ENDPOINT_URL_TEMPLATE",
            )
        )
    if parts.scheme == "http":
        findings.append(
            (Verdict.WARN, words.http_detail, "serve Dify over https and use the https URL")
        )
    endings = (words.path, OFFICIAL_ACCOUNT_WORDING.path) if wecom else (words.path,)
    if not parts.path.rstrip("/").endswith(endings) or parts.path.endswith("/"):
        findings.append(
            (
                Verdict.FAIL,
                f"path does not end with {words.path}",
                f"copy the full endpoint URL from Dify: {example}",
            )
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        findings.append(
            (
                Verdict.WARN,
                "URL carries a query, fragment or credentials (ignored here)",
                f"paste the URL without anything after {words.path}",
            )
        )
    shown_port = port or (443 if parts.scheme == "https" else 80)
    return _merge(name, findings, ok_detail=f"{parts.scheme}, port {shown_port}, public host")


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _merge(name: str, findings: list[tuple[Verdict, str, str]], ok_detail: str) -> StepResult:
    if not findings:
        return StepResult(name, Verdict.OK, ok_detail)
    worst = Verdict.FAIL if any(v is Verdict.FAIL for v, _, _ in findings) else Verdict.WARN
    details = "; ".join(d for _, d, _ in findings)
    fixes = tuple(dict.fromkeys(f for _, _, f in findings))
    return StepResult(name, worst, details, fixes)


# --- HTTP -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpResult:
    status: int
    headers: Mapping[str, str]
    body: bytes
    elapsed_ms: int

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Unreachable(Exception):
    """No HTTP answer: ``detail`` and ``fix`` are safe to print (no URL, no query)."""

    def __init__(self, detail: str, fix: str, elapsed_ms: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix
        self.elapsed_ms = elapsed_ms


class NoReply(Unreachable):
    """Connected, but no complete answer within the wait."""


class HttpClient:
    """Bounded requests without environment proxies or redirects (WeChat uses neither)."""

    def __init__(
        self,
        connect_timeout: float,
        session: requests.Session | None = None,
        caller: str = OFFICIAL_ACCOUNT_WORDING.caller,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.session = session or requests.Session()
        self.session.trust_env = False
        self.caller = caller

    def send(
        self,
        method: str,
        url: str,
        wait: float,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> HttpResult:
        """One request; ``wait`` bounds the whole answer (headers and body)."""
        start = time.monotonic()
        headers = {"User-Agent": _USER_AGENT, "Accept": "*/*"}
        if body is not None:
            headers["Content-Type"] = "text/xml"
        try:
            response = self.session.request(
                method,
                url,
                params=params,
                data=body,
                headers=headers,
                timeout=(self.connect_timeout, wait),
                allow_redirects=False,
                stream=True,
            )
            with response:
                content = _read_bounded(response, start + wait)
        except (requests.RequestException, OSError, ValueError) as exc:
            raise _explain(exc, _ms_since(start), wait, self.caller) from None
        return HttpResult(response.status_code, response.headers, content, _ms_since(start))


def _read_bounded(response: requests.Response, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(8192):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY:
            break
        if time.monotonic() > deadline:
            raise requests.exceptions.ReadTimeout("body too slow")
    return b"".join(chunks)[:MAX_BODY]


def _ms_since(start: float) -> int:
    return round((time.monotonic() - start) * 1000)


_CONNECT_CAUSES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (
        (
            "name or service not known",
            "nodename nor servname",
            "temporary failure in name",
            "getaddrinfo failed",
            "nameresolutionerror",
            "no address associated",
        ),
        "the host name does not resolve (DNS)",
        "add a DNS record for the host pointing at the server's public IP",
    ),
    (
        ("connection refused",),
        "connection refused: nothing listens on that port",
        "start Dify's nginx on port 443/80 or open the port in the firewall",
    ),
    (
        ("connection reset", "remotedisconnected", "connection aborted"),
        "the server closed the connection",
        "check the proxy/load balancer in front of Dify and its logs",
    ),
    (
        ("network is unreachable", "no route to host"),
        "no route to the host",
        "check the host's address and the network/firewall",
    ),
)

_TLS_CAUSES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("certificate has expired",), "the certificate has expired"),
    (("self signed", "self-signed"), "the certificate is self-signed"),
    (
        ("hostname mismatch", "doesn't match", "not valid for"),
        "the certificate is for another host",
    ),
    (("unable to get local issuer", "unknown ca"), "the certificate chain is incomplete"),
    (("wrong_version_number", "wrong version number"), "the port does not speak TLS (http?)"),
)


def _explain(
    exc: Exception, elapsed_ms: int, wait: float, caller: str = OFFICIAL_ACCOUNT_WORDING.caller
) -> Unreachable:
    """Turn a requests exception into a printable reason. Never uses ``str(exc)`` in the
    output: it contains the full URL, query string and signatures included."""
    text = repr(exc).lower()
    if isinstance(exc, requests.exceptions.SSLError):
        cause = next((c for keys, c in _TLS_CAUSES if any(k in text for k in keys)), "")
        detail = "TLS handshake failed" + (f": {cause}" if cause else "")
        fix = (
            f"{caller} needs a valid certificate for this host from a public CA (e.g. Let's "
            "Encrypt)"
        )
        return Unreachable(detail, fix, elapsed_ms)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return Unreachable(
            "connection timed out",
            "open port 443 (or 80) to the internet in the firewall / security group",
            elapsed_ms,
        )
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return NoReply(
            f"no complete answer within {wait:.1f} s",
            "check that Dify's api and plugin_daemon are running and the plugin is installed",
            elapsed_ms,
        )
    if isinstance(exc, requests.exceptions.ConnectionError):
        for keys, detail, fix in _CONNECT_CAUSES:
            if any(k in text for k in keys):
                return Unreachable(detail, fix, elapsed_ms)
        return Unreachable(
            f"connection failed ({type(exc).__name__})",
            "check the host, port and firewall",
            elapsed_ms,
        )
    return Unreachable(f"request failed ({type(exc).__name__})", "check the URL", elapsed_ms)


def describe_http_failure(
    result: HttpResult, words: Wording = OFFICIAL_ACCOUNT_WORDING
) -> tuple[str, tuple[str, ...]]:
    """Detail and fixes for an HTTP status none of the steps expected."""
    status = result.status
    if status == 404:
        where = (
            "the plugin has no route for this path"
            if _DISPATCH_404 in result.text
            else "no such endpoint"
        )
        return f"HTTP 404 ({where})", (FIX_NOT_FOUND,)
    if 300 <= status < 400:
        target = display_url(result.headers.get("Location", ""))
        return f"HTTP {status} redirect to {target or '?'}", (words.no_redirect_fix,)
    if status in (401, 407) or (status == 403 and result.text.strip() != "forbidden"):
        return f"HTTP {status} before reaching the plugin (auth, WAF or IP allow-list?)", (
            f"let {words.caller}'s servers reach /e/…{words.path} without authentication",
        )
    if status in (502, 503, 504):
        return f"HTTP {status} from the gateway", (
            "Dify's nginx cannot reach the api/plugin daemon, or the plugin is not running: "
            "check those containers and the plugin's install status",
        )
    if status >= 500:
        return f"HTTP {status} (server error)", (
            "see the plugin's log in Dify and the plugin_daemon log for the error",
        )
    return f"unexpected HTTP {status}", ("check that the URL is this plugin's endpoint",)


# --- step 2: reachability and the status page -----------------------------------------------


@dataclass
class ServerInfo:
    """What step 2 learned: is it this plugin, which settings it reports, clock offset."""

    reachable: bool = False
    status_page: bool = False
    settings: dict[str, str] = field(default_factory=dict)
    clock_offset: float | None = None
    #: The platform the status page says this URL serves (None: no page, or it does not say).
    platform: Platform | None = None

    def setting(self, name: str) -> str | None:
        """``ok`` / ``unset`` / ``problem``, or None when unknown."""
        return self.settings.get(name)

    @property
    def clock_off(self) -> bool:
        return self.clock_offset is not None and abs(self.clock_offset) > CLOCK_WARN_SECONDS


def parse_status_page(html: str) -> dict[str, str] | None:
    """Setting name → state from this plugin's status page; None for any other page."""
    if _STATUS_PAGE_TITLE not in html:
        return None
    return {name: _ROW_STATE[mark] for mark, name in _STATUS_ROW.findall(html)}


def page_platform(html: str, settings: Mapping[str, str]) -> Platform | None:
    """The platform this plugin's status page serves: its ``platform`` row, or (when that row
    reports a problem instead) the ``agent_id`` row only WeCom's checks have."""
    match = _PLATFORM_ROW.search(html)
    if match is not None:
        return Platform.WECOM if "WeCom" in match.group(1) else Platform.OFFICIAL_ACCOUNT
    return Platform.WECOM if "agent_id" in settings else None


def clock_offset(headers: Mapping[str, str], now: float) -> float | None:
    """Server clock minus ours, from the ``Date`` header (1 s resolution)."""
    value = headers.get("Date")
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def check_reachability(
    client: HttpClient, cfg: ProbeConfig, clock: Callable[[], float]
) -> tuple[StepResult, ServerInfo]:
    name = "reachability (GET, no signature)"
    info = ServerInfo()
    try:
        result = client.send("GET", request_url(cfg.url), cfg.timeout)
    except Unreachable as exc:
        return StepResult(name, Verdict.FAIL, exc.detail, (exc.fix,), exc.elapsed_ms), info
    info.clock_offset = clock_offset(result.headers, clock() - result.elapsed_ms / 2000)
    if result.status != 200:
        detail, fixes = describe_http_failure(result, cfg.words)
        info.reachable = result.status >= 500  # an error page: signed steps may still work
        return StepResult(name, Verdict.FAIL, detail, fixes, result.elapsed_ms), info
    info.reachable = True
    settings = parse_status_page(result.text)
    findings: list[tuple[Verdict, str, str]] = []
    if settings is None:
        findings.append(
            (
                Verdict.WARN,
                "answered 200, but not with this plugin's status page",
                "make sure the URL is this plugin's endpoint and nothing in front rewrites it",
            )
        )
    else:
        info.status_page, info.settings = True, settings
        info.platform = page_platform(result.text, settings)
        if cfg.wecom and info.platform is Platform.OFFICIAL_ACCOUNT:
            findings.append(
                (
                    Verdict.WARN,
                    "the status page is an Official Account's (platform setting)",
                    FIX_WECOM_ON_OFFICIAL_ACCOUNT,
                )
            )
        problems = [n for n, state in settings.items() if state == "problem"]
        if problems:
            findings.append(
                (
                    Verdict.WARN,
                    "status page reports settings to fix: " + ", ".join(problems),
                    "open the URL in a browser: the status page explains each; fix them in "
                    "the endpoint's settings in Dify",
                )
            )
    if info.clock_off:
        assert info.clock_offset is not None
        findings.append(
            (
                Verdict.WARN,
                f"server clock is {info.clock_offset:+.0f} s off this machine's",
                "sync the clocks (NTP): the plugin refuses messages whose timestamp is more "
                "than timestamp_tolerance (300 s) away from its clock",
            )
        )
    summary = _wecom_page_summary(settings) if cfg.wecom else _page_summary(settings)
    step = _merge(name, findings, ok_detail=summary)
    return StepResult(step.name, step.verdict, step.detail, step.fixes, result.elapsed_ms), info


def _page_summary(settings: Mapping[str, str] | None) -> str:
    if settings is None:
        return "answered 200"
    key = settings.get("encoding_aes_key")
    mode = {
        "ok": "EncodingAESKey set: console in 安全模式/兼容模式",
        "unset": "no EncodingAESKey: console in 明文模式",
    }.get(key or "", "")
    return "status page: settings complete" + (f" ({mode})" if mode else "")


def _wecom_page_summary(settings: Mapping[str, str] | None) -> str:
    if settings is None:
        return "answered 200"
    return "status page: settings complete (WeCom self-built app)"


# --- step 3: signed GET verification --------------------------------------------------------


def signed_query(token: str, timestamp: str, nonce: str) -> dict[str, str]:
    return {
        "signature": compute_signature(token, timestamp, nonce),
        "timestamp": timestamp,
        "nonce": nonce,
    }


def check_verification(
    client: HttpClient, cfg: ProbeConfig, info: ServerInfo, clock: Callable[[], float]
) -> tuple[StepResult, bool]:
    """The GET WeChat sends when the URL is saved. Also says whether the plugin refused the
    signature (then a signed POST would only be refused the same way)."""
    name = verification_step_name(cfg)
    echostr = str(secrets.randbelow(10**19))
    params = signed_query(cfg.token, str(int(clock())), make_nonce())
    params["echostr"] = echostr
    try:
        result = client.send("GET", request_url(cfg.url), cfg.timeout, params=params)
    except Unreachable as exc:
        return StepResult(name, Verdict.FAIL, exc.detail, (exc.fix,), exc.elapsed_ms), False
    ms = result.elapsed_ms
    if result.status == 403 and result.text.strip() == "forbidden":
        if info.setting("wechat_token") == "problem":
            fix = "the endpoint has no valid Token: set wechat_token to the console's Token"
            return StepResult(name, Verdict.FAIL, "refused (403): Token missing", (fix,), ms), True
        detail = "refused (403): signature mismatch"
        return StepResult(name, Verdict.FAIL, detail, (FIX_TOKEN,), ms), True
    if result.status != 200:
        detail, fixes = describe_http_failure(result, cfg.words)
        return StepResult(name, Verdict.FAIL, detail, fixes, ms), False
    if result.body == echostr.encode():
        if ms > cfg.deadline * 1000:
            return StepResult(name, Verdict.FAIL, "echostr returned late", (FIX_SLOW,), ms), False
        return StepResult(name, Verdict.OK, "echostr returned exactly", elapsed_ms=ms), False
    detail, fixes = _wrong_echo(result, echostr)
    return StepResult(name, Verdict.FAIL, detail, fixes, ms), False


def _wrong_echo(result: HttpResult, echostr: str) -> tuple[str, tuple[str, ...]]:
    if result.text.strip().strip('"') == echostr:
        return "echostr returned with extra whitespace/quotes", (
            "WeChat compares the body exactly: return echostr alone, no newline or quotes",
        )
    if parse_status_page(result.text) is not None:
        return "the status page came back: the query string was lost", (
            "a proxy in front of Dify drops the query string; forward it unchanged",
        )
    return "the body is not the echostr", ("check that the URL is this plugin's endpoint",)


def verification_step_name(cfg: ProbeConfig) -> str:
    if cfg.wecom:
        return "signed verification (GET, encrypted echostr)"
    return "signed verification (GET)"


def check_wecom_verification(
    client: HttpClient, cfg: ProbeConfig, info: ServerInfo, clock: Callable[[], float]
) -> tuple[StepResult, bool]:
    """The GET WeCom sends when the callback URL is saved (wechat-protocol.md §10.1): an
    encrypted random number as ``echostr``, signed with ``msg_signature``; the answer must be
    its plaintext, exactly, within 1 s. Also says whether the plugin refused it (then the
    test message would only be refused the same way)."""
    name = verification_step_name(cfg)
    plaintext = str(secrets.randbelow(10**19))
    echostr = MessageCrypto(cfg.token, cfg.aes_key, cfg.app_id).encrypt(plaintext)
    timestamp, nonce = str(int(clock())), make_nonce()
    params = {
        "msg_signature": compute_signature(cfg.token, timestamp, nonce, echostr),
        "timestamp": timestamp,
        "nonce": nonce,
        "echostr": echostr,  # percent-encoded by requests (+ / = included), as WeCom does
    }
    try:
        result = client.send("GET", request_url(cfg.url), cfg.timeout, params=params)
    except Unreachable as exc:
        return StepResult(name, Verdict.FAIL, exc.detail, (exc.fix,), exc.elapsed_ms), False
    ms = result.elapsed_ms
    if result.status == 403 and result.text.strip() == "forbidden":
        fixes = diagnose_wecom_verification(cfg, info)
        return StepResult(name, Verdict.FAIL, "refused (403)", fixes, ms), True
    if result.status != 200:
        detail, fixes = describe_http_failure(result, cfg.words)
        return StepResult(name, Verdict.FAIL, detail, fixes, ms), False
    if result.body != plaintext.encode():
        detail, fixes = _wrong_wecom_echo(result, plaintext, echostr)
        return StepResult(name, Verdict.FAIL, detail, fixes, ms), False
    limit = cfg.verify_deadline * 1000
    if ms > limit:
        detail = f"echostr decrypted, but after WeCom's {limit:.0f} ms limit"
        return StepResult(name, Verdict.FAIL, detail, (FIX_WECOM_SLOW_VERIFY,), ms), False
    if ms > limit * SLOW_SHARE:
        detail = f"echostr decrypted, close to WeCom's {limit:.0f} ms limit"
        return StepResult(name, Verdict.WARN, detail, (FIX_WECOM_SLOW_VERIFY,), ms), False
    ok = StepResult(name, Verdict.OK, "echostr decrypted, plaintext returned", elapsed_ms=ms)
    return ok, False


def diagnose_wecom_verification(cfg: ProbeConfig, info: ServerInfo) -> tuple[str, ...]:
    """Fixes for a bare 403 to WeCom's verification: one refusal for a wrong Token,
    EncodingAESKey or CorpID, or for WeCom's request on an Official Account's /wechat."""
    if info.platform is Platform.OFFICIAL_ACCOUNT:
        return (FIX_WECOM_ON_OFFICIAL_ACCOUNT,)
    fixes = [
        f"the endpoint's {label} is missing or malformed (status page): set it to {option}"
        for setting, label, option in (
            ("wechat_token", "Token (wechat_token)", "--token"),
            ("encoding_aes_key", "EncodingAESKey (encoding_aes_key)", "--aes-key"),
            ("app_id", "CorpID (app_id)", "--corp-id"),
        )
        if info.setting(setting) in ("problem", "unset")
    ]
    if not fixes:
        fixes.append(FIX_WECOM_KEYS)
    fixes.append(FIX_WECOM_LOG)
    if info.platform is None and _path_ends_with(cfg.url, OFFICIAL_ACCOUNT_WORDING.path):
        fixes.append("or " + FIX_WECOM_ON_OFFICIAL_ACCOUNT)
    return tuple(fixes)


def _path_ends_with(url: str, ending: str) -> bool:
    return urlsplit(url).path.rstrip("/").endswith(ending)


def _wrong_wecom_echo(
    result: HttpResult, plaintext: str, echostr: str
) -> tuple[str, tuple[str, ...]]:
    """Why the body is not what WeCom wants; never shows the body (it may be the echostr)."""
    exact = "WeCom compares the body exactly: return the plaintext alone, no BOM, quotes or newline"
    if result.body.startswith(_BOM) and result.body[len(_BOM) :].strip() == plaintext.encode():
        return "the plaintext came back behind a BOM", (exact,)
    if result.text.strip().strip('"') == plaintext:
        return "the plaintext came back with extra whitespace/quotes", (exact,)
    if result.text.strip() in (echostr, echostr.replace("+", " ")):
        return "the echostr came back still encrypted (an Official Account's answer)", (
            "WeCom needs the decrypted echostr: use the URL ending in /wecom, or set the "
            "endpoint's platform to wecom",
        )
    if parse_status_page(result.text) is not None:
        return "the status page came back: the query string was lost", (
            "a proxy in front of Dify drops the query string; forward it unchanged",
        )
    return "the body is not the decrypted echostr", (
        "check that the URL is this plugin's endpoint",
    )


# --- step 4: signed test message ------------------------------------------------------------


@dataclass(frozen=True)
class ProbeMessage:
    """The POST WeChat would send for a user typing ``/help``; ``crypto`` set when encrypted."""

    params: dict[str, str]
    body: bytes
    openid: str
    crypto: MessageCrypto | None
    #: Who the message was sent to, so who the reply must come from.
    to_user: str = PROBE_TO_USER


def build_message(cfg: ProbeConfig, now: float) -> ProbeMessage:
    if cfg.wecom:
        return build_wecom_message(cfg, now)
    openid = PROBE_USER_PREFIX + secrets.token_hex(6)
    timestamp, nonce = str(int(now)), make_nonce()
    xml = (
        f"<xml><ToUserName><![CDATA[{PROBE_TO_USER}]]></ToUserName>"
        f"<FromUserName><![CDATA[{openid}]]></FromUserName>"
        f"<CreateTime>{timestamp}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        f"<Content><![CDATA[{PROBE_COMMAND}]]></Content>"
        f"<MsgId>{secrets.randbits(62)}</MsgId></xml>"
    )
    params = signed_query(cfg.token, timestamp, nonce)
    params["openid"] = openid
    if not cfg.encrypted:
        return ProbeMessage(params, xml.encode(), openid, None)
    crypto = MessageCrypto(cfg.token, cfg.aes_key, cfg.app_id)
    encrypted = crypto.encrypt(xml)
    params["encrypt_type"] = "aes"
    params["msg_signature"] = compute_signature(cfg.token, timestamp, nonce, encrypted)
    element = f"<Encrypt><![CDATA[{encrypted}]]></Encrypt>"
    if cfg.mode == "safe":
        body = f"<xml><ToUserName><![CDATA[{PROBE_TO_USER}]]></ToUserName>{element}</xml>"
    else:  # compatible: the plaintext fields and the ciphertext
        body = xml.replace("</xml>", element + "</xml>")
    return ProbeMessage(params, body.encode(), openid, crypto)


def build_wecom_message(cfg: ProbeConfig, now: float) -> ProbeMessage:
    """The push WeCom would send for a member typing ``/help`` (wechat-protocol.md §10.2):
    from a made-up UserID to the CorpID, always encrypted, signed by ``msg_signature`` only,
    ``<AgentID>`` in the envelope and in the plaintext (neither without ``--agent-id``)."""
    user_id = PROBE_USER_PREFIX + secrets.token_hex(6)
    timestamp, nonce = str(int(now)), make_nonce()
    agent = f"<AgentID>{cfg.agent_id}</AgentID>" if cfg.agent_id else ""
    xml = (
        f"<xml><ToUserName><![CDATA[{cfg.app_id}]]></ToUserName>"
        f"<FromUserName><![CDATA[{user_id}]]></FromUserName>"
        f"<CreateTime>{timestamp}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        f"<Content><![CDATA[{PROBE_COMMAND}]]></Content>"
        f"<MsgId>{secrets.randbits(62)}</MsgId>{agent}</xml>"
    )
    crypto = MessageCrypto(cfg.token, cfg.aes_key, cfg.app_id)
    encrypted = crypto.encrypt(xml)
    params = {
        "msg_signature": compute_signature(cfg.token, timestamp, nonce, encrypted),
        "timestamp": timestamp,
        "nonce": nonce,
    }
    envelope_agent = f"<AgentID><![CDATA[{cfg.agent_id}]]></AgentID>" if cfg.agent_id else ""
    body = (
        f"<xml><ToUserName><![CDATA[{cfg.app_id}]]></ToUserName>"
        f"<Encrypt><![CDATA[{encrypted}]]></Encrypt>{envelope_agent}</xml>"
    )
    return ProbeMessage(params, body.encode(), user_id, crypto, to_user=cfg.app_id)


class ReplyProblem(Exception):
    def __init__(self, detail: str, fix: str, verdict: Verdict = Verdict.FAIL) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix
        self.verdict = verdict


def read_reply(body: bytes, cfg: ProbeConfig, message: ProbeMessage) -> str:
    """Check a 200 reply as WeChat would; returns a summary or raises :class:`ReplyProblem`."""
    if body.strip() in (b"", b"success"):
        raise ReplyProblem(
            "acknowledged without a reply",
            "the plugin answers /help itself: is this endpoint running this plugin?",
            Verdict.WARN,
        )
    words = cfg.words
    fields = _xml(body, "reply", words)
    encrypted = "Encrypt" in fields
    if encrypted:
        fields = _xml(_decrypt_reply(fields, message, words).encode(), "decrypted reply", words)
    elif cfg.mode == "safe":
        raise ReplyProblem(*words.plaintext_reply)
    if fields.get("ToUserName") != message.openid or fields.get("FromUserName") != message.to_user:
        raise ReplyProblem(
            "reply is not addressed back to the sender",
            "ToUserName/FromUserName must be the message's swapped: a plugin bug, report it",
        )
    content = fields.get("Content")
    what = f"text “{_first_line(content)}”" if isinstance(content, str) and content else ""
    what = what or f"{fields.get('MsgType') or 'unknown'} message"
    return f"{'encrypted ' if encrypted else ''}reply: {what}"


def _xml(body: bytes, what: str, words: Wording = OFFICIAL_ACCOUNT_WORDING) -> dict[str, Any]:
    try:
        return parse_xml_fields(body)
    except XmlRefusedError as exc:
        raise ReplyProblem(
            f"{what} is not {words.caller} XML ({exc.reason})",
            f"{words.bad_reply}: see the plugin's log and report it",
        ) from None


def _decrypt_reply(
    fields: Mapping[str, Any], message: ProbeMessage, words: Wording = OFFICIAL_ACCOUNT_WORDING
) -> str:
    if message.crypto is None:
        raise ReplyProblem(
            "encrypted reply to a plaintext message",
            "the endpoint should answer plaintext in plain mode: is it running this plugin?",
        )
    parts = [fields.get(k) for k in ("MsgSignature", "TimeStamp", "Nonce", "Encrypt")]
    if not all(isinstance(p, str) and p for p in parts):
        raise ReplyProblem(
            "encrypted reply without MsgSignature/TimeStamp/Nonce",
            f"{words.caller} drops such replies: a plugin bug, report it",
        )
    signature, timestamp, nonce, encrypted = cast(list[str], parts)
    try:
        return message.crypto.decrypt_message(signature, timestamp, nonce, encrypted)
    except SignatureError:
        fix = "the reply was signed with another Token: " + words.token_fix
    except ReceiverIdMismatchError:
        fix = words.receiver_fix
    except DecryptError:
        fix = "EncodingAESKey mismatch: set encoding_aes_key to --aes-key (the console's)"
    except CryptoError:
        fix = "the reply cannot be opened: report it with the plugin's log"
    options = f"--token/--aes-key/{words.receiver_option}"
    raise ReplyProblem(f"reply cannot be verified/decrypted with {options}", fix)


def _first_line(text: str, limit: int = 24) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def diagnose_refusal(cfg: ProbeConfig, info: ServerInfo, token_ok: bool) -> tuple[str, ...]:
    """Fixes for a bare 403 from the plugin, from what the earlier steps established."""
    fixes: list[str] = []
    if info.clock_off:
        fixes.append("the clocks differ (step 2): sync the server's clock (NTP)")
    key = info.setting("encoding_aes_key")
    if cfg.mode == "plain":
        if key != "unset":
            fixes.append(
                "plaintext refused because an EncodingAESKey is set on the endpoint: rerun "
                "with --aes-key/--app-id (mode safe), or clear encoding_aes_key if the "
                "console is in 明文模式"
            )
    elif key in ("unset", "problem"):
        fixes.append(
            "the endpoint has no valid EncodingAESKey: set encoding_aes_key to the console's "
            "(43 characters), or rerun with --mode plain if the console is in 明文模式"
        )
    elif info.setting("app_id") == "problem":
        fixes.append("AppID mismatch: the endpoint's app_id is missing or malformed")
    else:
        fixes.append(
            "EncodingAESKey or AppID mismatch (the plugin does not say which): set "
            "encoding_aes_key and app_id in the endpoint settings to --aes-key/--app-id, "
            "the values in 基本配置"
        )
    if not token_ok:
        fixes.append(FIX_TOKEN)
    if not fixes:
        fixes.append("the plugin refused a correctly signed message: see its log in Dify")
    return tuple(fixes)


def diagnose_wecom_refusal(cfg: ProbeConfig, info: ServerInfo, verified: bool) -> tuple[str, ...]:
    """Fixes for a bare 403 to WeCom's test message. After a good verification the Token,
    EncodingAESKey and CorpID are right, so what is left is the AgentID and the clock."""
    fixes: list[str] = []
    if info.clock_off:
        fixes.append("the clocks differ (step 2): sync the server's clock (NTP)")
    if not verified:
        fixes.extend(diagnose_wecom_verification(cfg, info))
    elif cfg.agent_id and info.setting("agent_id") not in ("unset", "problem"):
        fixes.append(
            "AgentID mismatch: the endpoint's agent_id differs from --agent-id; each WeCom "
            "app needs its own endpoint: set agent_id to the AgentId of the app whose "
            "callback this is (应用管理 → the app)"
        )
    if not fixes:
        fixes.append("the plugin refused a correctly signed message: see its log in Dify")
    return tuple(fixes)


def message_step_name(cfg: ProbeConfig) -> str:
    if cfg.wecom:
        return f"test message (POST {PROBE_COMMAND}, WeCom)"
    return f"test message (POST {PROBE_COMMAND}, {cfg.mode} mode)"


def check_message(
    client: HttpClient,
    cfg: ProbeConfig,
    info: ServerInfo,
    token_ok: bool,
    clock: Callable[[], float],
) -> StepResult:
    name = message_step_name(cfg)
    message = build_message(cfg, clock())
    wait = cfg.deadline + REPLY_GRACE
    try:
        result = client.send(
            "POST", request_url(cfg.url), wait, params=message.params, body=message.body
        )
    except NoReply as exc:
        detail = f"no reply within {wait:.1f} s"
        return StepResult(name, Verdict.FAIL, detail, (cfg.words.slow_fix,), exc.elapsed_ms)
    except Unreachable as exc:
        return StepResult(name, Verdict.FAIL, exc.detail, (exc.fix,), exc.elapsed_ms)
    return judge_message(result, cfg, info, token_ok, message, name)


def judge_message(
    result: HttpResult,
    cfg: ProbeConfig,
    info: ServerInfo,
    token_ok: bool,
    message: ProbeMessage,
    name: str,
) -> StepResult:
    ms = result.elapsed_ms
    if result.status == 403 and result.text.strip() == "forbidden":
        if cfg.wecom:
            fixes = diagnose_wecom_refusal(cfg, info, token_ok)
        else:
            fixes = diagnose_refusal(cfg, info, token_ok)
        return StepResult(name, Verdict.FAIL, "refused (403)", fixes, ms)
    if result.status in (400, 413) and result.text.strip() == "bad request":
        return StepResult(
            name,
            Verdict.FAIL,
            f"refused as malformed ({result.status})",
            (f"something between {cfg.words.caller} and the plugin changed the body (proxy/WAF?)",),
            ms,
        )
    if result.status != 200:
        detail, fixes = describe_http_failure(result, cfg.words)
        return StepResult(name, Verdict.FAIL, detail, fixes, ms)
    try:
        summary = read_reply(result.body, cfg, message)
    except ReplyProblem as problem:
        return StepResult(name, problem.verdict, problem.detail, (problem.fix,), ms)
    if cfg.wecom and not cfg.agent_id:
        summary += " (no --agent-id: AgentID not sent, not checked)"
    limit = cfg.deadline * 1000
    if ms > limit:
        fix = cfg.words.slow_fix
        return StepResult(name, Verdict.FAIL, f"{summary}, after {limit:.0f} ms", (fix,), ms)
    if ms > limit * SLOW_SHARE:
        fix = "answers that need the app get little time: check the network path to Dify"
        return StepResult(name, Verdict.WARN, f"{summary}, close to the limit", (fix,), ms)
    return StepResult(name, Verdict.OK, summary, elapsed_ms=ms)


# --- the whole probe ------------------------------------------------------------------------


def run_probe(
    url: str,
    token: str,
    *,
    app_id: str = "",
    aes_key: str = "",
    mode: str | None = None,
    timeout: float = 5.0,
    allow_local: bool = False,
    deadline: float = WECHAT_DEADLINE,
    session: requests.Session | None = None,
    clock: Callable[[], float] = time.time,
    platform: str | None = None,
    agent_id: str = "",
    verify_deadline: float = WECOM_VERIFY_DEADLINE,
) -> list[StepResult]:
    """Run the four steps (see the module docstring); raises :class:`ProbeUsageError`."""
    cfg = make_config(
        url,
        token,
        app_id=app_id,
        aes_key=aes_key,
        mode=mode,
        timeout=timeout,
        allow_local=allow_local,
        deadline=deadline,
        platform=platform,
        agent_id=agent_id,
        verify_deadline=verify_deadline,
    )
    return probe(cfg, make_client(cfg, session), clock)


def make_client(cfg: ProbeConfig, session: requests.Session | None = None) -> HttpClient:
    return HttpClient(cfg.timeout, session, cfg.words.caller)


def probe(cfg: ProbeConfig, client: HttpClient, clock: Callable[[], float]) -> list[StepResult]:
    results = [check_url(cfg.url, cfg.allow_local, cfg.platform)]
    reach, info = check_reachability(client, cfg, clock)
    results.append(reach)
    if not info.reachable:
        skipped = "skipped: the endpoint is not reachable (step 2)"
        results.append(StepResult(verification_step_name(cfg), Verdict.SKIP, skipped))
        results.append(StepResult(message_step_name(cfg), Verdict.SKIP, skipped))
        return results
    if cfg.wecom:
        verification, refused = check_wecom_verification(client, cfg, info, clock)
        first = "skipped: fix the verification first (the message would be refused alike)"
    else:
        verification, refused = check_verification(client, cfg, info, clock)
        first = "skipped: fix the Token first"
    results.append(verification)
    if refused:
        results.append(StepResult(message_step_name(cfg), Verdict.SKIP, first))
        return results
    token_ok = verification.verdict is Verdict.OK
    results.append(check_message(client, cfg, info, token_ok, clock))
    return results


def exit_code(results: Iterable[StepResult]) -> int:
    return 1 if any(r.verdict is Verdict.FAIL for r in results) else 0


def redact(text: str, hidden: Sequence[str]) -> str:
    """Last line of defence: no secret reaches the terminal even if a message had one."""
    for value in sorted(hidden, key=len, reverse=True):
        if value:
            text = text.replace(value, "***")
    return text


def report_header(cfg: ProbeConfig) -> str:
    if not cfg.wecom:
        return f"Probing {display_url(cfg.url)} as WeChat would ({cfg.mode} mode)"
    agent = f"AgentID {cfg.agent_id}" if cfg.agent_id else "no --agent-id: AgentID not checked"
    inferred = "; platform wecom inferred from the /wecom path" if cfg.platform_inferred else ""
    return f"Probing {display_url(cfg.url)} as WeCom would (self-built app, {agent}{inferred})"


def format_report(cfg: ProbeConfig, results: Sequence[StepResult]) -> str:
    lines = [report_header(cfg)]
    for result in results:
        lines.extend(result.lines())
    fails = sum(r.verdict is Verdict.FAIL for r in results)
    warns = sum(r.verdict is Verdict.WARN for r in results)
    caller = cfg.words.caller
    outcome = (
        f"{caller} will not accept this set-up yet."
        if fails
        else f"the endpoint works for {caller}."
    )
    lines.append(f"{fails} failure(s), {warns} warning(s): {outcome}")
    return redact("\n".join(lines), cfg.hidden_values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.probe",
        description="Check a deployed WeChat Official Account or WeCom endpoint the way "
        "WeChat/WeCom uses it. Sends /help from a made-up user; never prints secrets.",
    )
    parser.add_argument(
        "url", help="the endpoint URL: https://<dify-host>/e/<hook_id>/wechat (or …/wecom)"
    )
    parser.add_argument(
        "--platform",
        choices=PLATFORMS,
        default=os.environ.get(ENV_PLATFORM) or None,
        help="official_account (default) or wecom (default for a URL ending in /wecom)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(ENV_TOKEN, ""),
        help=f"the console's Token (or ${ENV_TOKEN}, which keeps it out of shell history)",
    )
    parser.add_argument(
        "--app-id",
        "--corp-id",
        dest="app_id",
        default=os.environ.get(ENV_APP_ID, ""),
        help=f"the AppID, or for WeCom the CorpID (企业ID) (or ${ENV_APP_ID})",
    )
    parser.add_argument(
        "--aes-key",
        default=os.environ.get(ENV_AES_KEY, ""),
        help=f"the EncodingAESKey (or ${ENV_AES_KEY}); implies --mode safe; required for WeCom",
    )
    parser.add_argument(
        "--agent-id",
        default=os.environ.get(ENV_AGENT_ID, ""),
        help=f"WeCom: the app's AgentId, sent in the test message (or ${ENV_AGENT_ID})",
    )
    parser.add_argument("--mode", choices=MODES, help="default: safe with --aes-key, else plain")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds for connecting and each GET"
    )
    parser.add_argument(
        "--allow-local",
        action="store_true",
        help="a local test set-up: non-public host or port is a warning, not a failure",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = make_config(
            args.url,
            args.token,
            app_id=args.app_id,
            aes_key=args.aes_key,
            mode=args.mode,
            timeout=args.timeout,
            allow_local=args.allow_local,
            platform=args.platform,
            agent_id=args.agent_id,
        )
    except ProbeUsageError as exc:
        parser.error(str(exc))
    results = probe(cfg, make_client(cfg), time.time)
    print(format_report(cfg, results), flush=True)
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
