"""The endpoint's settings form (group/wechat.yaml), read once per request.

Reading never raises: a malformed value falls back to its default and is reported as a
``SettingProblem`` that the status page and the log show. Secret values never appear in
a problem's text.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from .crypto import InvalidAESKeyError, validate_encoding_aes_key
from .menus import MenuAction, parse_menu_map

DEFAULT_API_BASE_URL = "https://api.weixin.qq.com"
WECOM_API_BASE_URL = "https://qyapi.weixin.qq.com"
DEFAULT_TIMESTAMP_TOLERANCE = 300

DEFAULT_TEXTS = {
    "welcome_message": "感谢关注！我是 AI 助手，直接发消息就能和我对话。发送 /help 查看可用指令。",
    "error_message": "抱歉，AI 助手暂时出了点问题，请稍后再试。",
    "timeout_message": "抱歉，这个问题我需要想得久一点，没能及时回复。请稍后再问我一次。",
    "unsupported_message": "暂时无法处理这种消息，请发文字、图片或语音给我吧。",
    "voice_fallback_message": "抱歉，这条语音我没听清，请发文字给我吧。",
    "voice_unavailable_message": (
        "抱歉，暂时还不能识别语音，请发文字给我吧。"
        "（管理员：在公众号后台开启「接收语音识别结果」，"
        "或在插件中设置 AppSecret 和语音转文字模型即可）"
    ),
    "push_waiting_message": "问题有点复杂，我还在思考，想好了会马上发给你。",
    "fetch_waiting_message": "问题有点复杂，我还在思考。请稍后回复「{keyword}」获取答案。",
}
DEFAULT_ANSWER_RETENTION_HOURS = 24
DEFAULT_FILE_INPUT_VARIABLE = "wechat_file"
DEFAULT_FULL_ANSWER_DAYS = 7

_TOKEN_RE = re.compile(r"^[A-Za-z0-9]{3,32}$")
_APP_ID_RE = re.compile(r"^wx[0-9a-zA-Z]{16}$")
# CorpIDs are "ww" + 16 characters; enterprises registered before 2019 have "wx" ones.
_CORP_ID_RE = re.compile(r"^w[wx][0-9a-zA-Z]{16}$")
_AGENT_ID_RE = re.compile(r"^[0-9]{1,10}$")


class Platform(StrEnum):
    """Who calls the endpoint (setting ``platform``)."""

    OFFICIAL_ACCOUNT = "official_account"  # 公众号 / 服务号
    WECOM = "wecom"  # 企业微信 self-built app (自建应用)


class DeliveryMode(StrEnum):
    """How an answer that missed WeChat's reply window reaches the user (``delivery_mode``)."""

    AUTO = "auto"  # push when the account can, fetch otherwise
    PUSH = "push"  # customer-service messages (AppSecret, verified account)
    FETCH = "fetch"  # the user sends the fetch keyword


class WelcomeMode(StrEnum):
    """What a new follower gets (setting ``welcome_mode``)."""

    TEXT = "text"  # welcome_message
    APP = "app"  # the app answers a subscribe event
    OPENING_STATEMENT = "opening_statement"  # the app's opening statement (else the text)


class ClickEventMode(StrEnum):
    """What a CLICK menu event does (setting ``click_event_mode``)."""

    QUERY = "query"  # the menu key is sent to the app as the question
    IGNORE = "ignore"  # acknowledged silently


@dataclass(frozen=True)
class SettingProblem:
    """A setting that is missing or malformed; ``fatal`` ones stop message intake."""

    setting: str
    message_en: str
    message_zh: str
    fatal: bool = False


@dataclass(frozen=True)
class Settings:
    dify_app_id: str
    dify_app_inputs: Mapping[str, Any]
    token: str
    app_id: str
    encoding_aes_key: str
    app_secret: str
    api_base_url: str
    welcome_message: str
    error_message: str
    timeout_message: str
    unsupported_message: str
    voice_fallback_message: str
    push_waiting_message: str
    fetch_waiting_message: str
    click_event_mode: ClickEventMode
    fetch_keyword: str
    timestamp_tolerance: int
    delivery_mode: DeliveryMode = DeliveryMode.AUTO
    worker_base_url: str = ""
    answer_retention_hours: float = DEFAULT_ANSWER_RETENTION_HOURS
    voice_unavailable_message: str = DEFAULT_TEXTS["voice_unavailable_message"]
    file_input_variable: str = DEFAULT_FILE_INPUT_VARIABLE
    speech_to_text_model: Mapping[str, Any] | None = None
    voice_reply: bool = False
    text_to_speech_model: Mapping[str, Any] | None = None
    menu_click_map: Mapping[str, MenuAction] = field(default_factory=dict)
    welcome_mode: WelcomeMode = WelcomeMode.TEXT
    full_answer_link: bool = True
    full_answer_days: float = DEFAULT_FULL_ANSWER_DAYS
    platform: Platform = Platform.OFFICIAL_ACCOUNT
    #: WeCom: the self-built app's AgentId (app messages are sent as this app).
    agent_id: str = ""
    #: WeCom: late answers as markdown messages (False: plain text, e.g. for users who
    #: read WeCom messages inside WeChat, which shows no markdown).
    wecom_markdown: bool = True
    #: WeCom: welcome a member each time they open the app (enter_agent event).
    welcome_on_enter: bool = False
    problems: tuple[SettingProblem, ...] = field(default=())

    @property
    def is_wecom(self) -> bool:
        return self.platform is Platform.WECOM

    @property
    def encrypted_mode_available(self) -> bool:
        return bool(self.encoding_aes_key) and not any(
            p.setting == "encoding_aes_key" for p in self.problems
        )

    @property
    def can_verify(self) -> bool:
        return bool(self.token)

    @property
    def can_call_api(self) -> bool:
        """The server API is usable: AppID/CorpID and secret (WeCom: and the AgentId)."""
        if self.is_wecom:
            return bool(self.app_secret and self.app_id and self.agent_id)
        return bool(self.app_secret and self.app_id)

    @property
    def can_push(self) -> bool:
        """Pushing late answers: customer-service messages (AppSecret, verified account)
        or WeCom app messages (Secret and AgentId)."""
        return self.can_call_api and self.delivery_mode is not DeliveryMode.FETCH

    @property
    def push_quota(self) -> int:
        """Messages pushed per user message: WeChat allows 5 customer-service messages;
        WeCom has no such quota (30 per minute per member), 10 keeps answers readable."""
        return 10 if self.is_wecom else 5

    @property
    def sends_markdown(self) -> bool:
        """Answers are shaped as WeCom markdown (shown as text where only text goes)."""
        return self.is_wecom and self.wecom_markdown and self.can_push

    @property
    def answer_retention_seconds(self) -> float:
        return self.answer_retention_hours * 3600.0

    def derived_key(self, label: str, endpoint_id: str) -> bytes:
        """A key for ``label`` that only this endpoint's secrets give; it changes when
        they do."""
        material = "\0".join(
            (label, endpoint_id, self.token, self.encoding_aes_key, self.app_secret)
        )
        return hashlib.sha256(material.encode("utf-8")).digest()

    @property
    def full_answer_seconds(self) -> float:
        return self.full_answer_days * 86400.0

    @property
    def can_speak(self) -> bool:
        """Voice replies: switched on, a TTS model chosen, and media uploads possible (not
        on WeCom, whose voice messages must be AMR, which the plugin cannot encode)."""
        return (
            self.voice_reply
            and bool(self.text_to_speech_model)
            and bool(self.app_secret)
            and not self.is_wecom
        )


def _text(raw: Mapping[str, Any], name: str, default: str = "") -> str:
    value = raw.get(name)
    if value is None:
        return default
    return str(value).strip()


def _number(
    raw: Mapping[str, Any], name: str, default: float, low: float, high: float, whole: bool = False
) -> float | None:
    """A numeric setting within [low, high]; ``default`` when empty, None when malformed."""
    text = _text(raw, name)
    if not text:
        return default
    try:
        value = float(text)
        if whole:
            value = int(value)
    except (ValueError, OverflowError):
        return None
    return value if low <= value <= high else None


def _choice[E: StrEnum](
    raw: Mapping[str, Any],
    name: str,
    default: E,
    problems: list[SettingProblem],
    message_en: str,
    message_zh: str,
) -> E:
    """A select setting; an unknown value falls back to ``default`` and is reported."""
    text = _text(raw, name) or default.value
    try:
        return type(default)(text)
    except ValueError:
        problems.append(SettingProblem(name, message_en, message_zh))
        return default


def _flag(raw: Mapping[str, Any], name: str, default: bool) -> bool:
    value = raw.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "1", "yes", "on")


def _model(raw: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    """A model-selector value: ``{"provider", "model", "model_type", …}`` or nothing."""
    value = raw.get(name)
    if isinstance(value, Mapping) and value.get("provider") and value.get("model"):
        return dict(value)
    return None


def normalize_api_base_url(value: str) -> str | None:
    """``api.example.com`` → ``https://api.example.com``; None when unusable."""
    value = value.strip().rstrip("/")
    if not value:
        return DEFAULT_API_BASE_URL
    if "://" not in value:
        value = "https://" + value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    return value


def _is_local_host(host: str | None) -> bool:
    """Loopback or a private-network address: where a plain-http proxy is reasonable."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private


def _platform_mismatch(chosen: Platform, forced: Platform) -> SettingProblem:
    if forced is Platform.WECOM:
        return SettingProblem(
            "platform",
            "This is the WeCom URL (/wecom) but the platform setting says Official Account: "
            "requests here are treated as WeCom; set the platform to wecom.",
            "这是企业微信的地址 (/wecom)，但「平台」设置为公众号：此地址按企业微信处理，"
            "请把平台改为 wecom。",
        )
    return SettingProblem(
        "platform",
        f"The platform setting says {chosen.value}, but this URL serves {forced.value}.",
        f"「平台」设置为 {chosen.value}，但此地址用于 {forced.value}。",
    )


def load_settings(raw: Mapping[str, Any], forced_platform: Platform | None = None) -> Settings:
    """Read the endpoint's settings; ``forced_platform`` is the platform of the URL the
    request came to (``/wecom`` is always WeCom), whatever the setting says."""
    problems: list[SettingProblem] = []

    app = raw.get("app")
    dify_app_id = ""
    dify_inputs: Mapping[str, Any] = {}
    if isinstance(app, Mapping):
        dify_app_id = str(app.get("app_id") or "")
        inputs = app.get("inputs")
        if isinstance(inputs, Mapping):
            dify_inputs = dict(inputs)
    elif isinstance(app, str):
        dify_app_id = app
    if not dify_app_id:
        problems.append(
            SettingProblem(
                "app",
                "No Dify app is selected.",
                "尚未选择 Dify 应用。",
                fatal=False,
            )
        )

    token = _text(raw, "wechat_token")
    if not token:
        problems.append(
            SettingProblem(
                "wechat_token",
                "The Token is missing; no request can be verified.",
                "缺少 Token，无法校验任何请求。",
                fatal=True,
            )
        )
    elif not _TOKEN_RE.match(token):
        problems.append(
            SettingProblem(
                "wechat_token",
                "The Token should be 3-32 letters or digits, as in the WeChat console.",
                "Token 应为 3-32 位字母或数字，与公众号后台一致。",
            )
        )

    platform = _choice(
        raw,
        "platform",
        Platform.OFFICIAL_ACCOUNT,
        problems,
        "The platform must be official_account or wecom; using official_account.",
        "平台必须是 official_account 或 wecom，已使用 official_account（公众号）。",
    )
    if forced_platform is not None and forced_platform is not platform:
        problems.append(_platform_mismatch(platform, forced_platform))
        platform = forced_platform
    wecom = platform is Platform.WECOM

    app_id = _text(raw, "app_id")
    if not app_id:
        problems.append(
            SettingProblem(
                "app_id",
                "The CorpID is missing; no message can be decrypted."
                if wecom
                else "The AppID is missing; encrypted messages cannot be checked.",
                "缺少企业ID (CorpID)，无法解密消息。"
                if wecom
                else "缺少 AppID，无法校验加密消息。",
                fatal=wecom,
            )
        )
    elif wecom and not _CORP_ID_RE.match(app_id):
        problems.append(
            SettingProblem(
                "app_id",
                "The CorpID looks wrong: it is 'ww' (older enterprises: 'wx') followed by 16 "
                "characters (我的企业 → 企业信息 → 企业ID).",
                "企业ID (CorpID) 格式不对：应为 ww 开头加 16 位字符"
                "（「我的企业 → 企业信息 → 企业ID」）。",
            )
        )
    elif not wecom and not _APP_ID_RE.match(app_id):
        problems.append(
            SettingProblem(
                "app_id",
                "The AppID looks wrong: it starts with 'wx' followed by 16 characters.",
                "AppID 格式不对：应为 wx 开头加 16 位字符。",
            )
        )

    agent_id = _text(raw, "agent_id")
    if wecom and not agent_id:
        problems.append(
            SettingProblem(
                "agent_id",
                "The AgentId is missing: late answers cannot be sent as app messages and "
                "wait for the fetch keyword (应用管理 → the app → AgentId).",
                "缺少 AgentId：迟到的答案无法以应用消息发送，只能回复关键词获取"
                "（「应用管理 → 应用 → AgentId」）。",
            )
        )
    elif agent_id and not _AGENT_ID_RE.match(agent_id):
        problems.append(
            SettingProblem(
                "agent_id",
                "The AgentId must be a number such as 1000002; it is ignored.",
                "AgentId 必须是数字（例如 1000002），已忽略。",
            )
        )
        agent_id = ""

    aes_key = _text(raw, "encoding_aes_key")
    if wecom and not aes_key:
        problems.append(
            SettingProblem(
                "encoding_aes_key",
                "WeCom encrypts every callback: the EncodingAESKey is required "
                "(接收消息 → 设置API接收).",
                "企业微信的回调全部加密：必须填写 EncodingAESKey（「接收消息 → 设置API接收」）。",
                fatal=True,
            )
        )
    if aes_key:
        try:
            validate_encoding_aes_key(aes_key)
        except InvalidAESKeyError:
            problems.append(
                SettingProblem(
                    "encoding_aes_key",
                    "The EncodingAESKey must be exactly 43 letters or digits.",
                    "EncodingAESKey 必须是 43 位字母或数字。",
                )
            )

    api_base = normalize_api_base_url(_text(raw, "wechat_api_base_url"))
    if wecom and api_base == DEFAULT_API_BASE_URL:
        api_base = WECOM_API_BASE_URL  # the form's default is the Official Account API
    elif not wecom and api_base == WECOM_API_BASE_URL:
        problems.append(
            SettingProblem(
                "wechat_api_base_url",
                "The API base URL is WeCom's (qyapi.weixin.qq.com) but the platform is "
                "Official Account; using api.weixin.qq.com.",
                "接口地址是企业微信的 (qyapi.weixin.qq.com)，但平台是公众号，"
                "已使用 api.weixin.qq.com。",
            )
        )
        api_base = DEFAULT_API_BASE_URL
    if api_base is None:
        problems.append(
            SettingProblem(
                "wechat_api_base_url",
                "The WeChat API base URL is not a valid http(s) URL; using the default.",
                "微信接口地址不是有效的 http(s) 地址，已使用默认值。",
            )
        )
        api_base = WECOM_API_BASE_URL if wecom else DEFAULT_API_BASE_URL

    elif urlsplit(api_base).scheme == "http" and not _is_local_host(urlsplit(api_base).hostname):
        problems.append(
            SettingProblem(
                "wechat_api_base_url",
                "The WeChat API base URL uses plain http to a non-local host: the AppSecret "
                "and access tokens would cross the network unencrypted. Use https.",
                "微信接口地址对非本机主机使用了明文 http，AppSecret 和 access token 会以明文传输，"
                "请改用 https。",
            )
        )

    parsed_tolerance = _number(
        raw, "timestamp_tolerance", DEFAULT_TIMESTAMP_TOLERANCE, 10, 86400, whole=True
    )
    tolerance = int(parsed_tolerance or DEFAULT_TIMESTAMP_TOLERANCE)
    if parsed_tolerance is None:
        problems.append(
            SettingProblem(
                "timestamp_tolerance",
                "The timestamp tolerance must be a number of seconds (10-86400); using 300.",
                "时间戳容差必须是 10-86400 之间的秒数，已使用 300。",
            )
        )

    delivery_mode = _choice(
        raw,
        "delivery_mode",
        DeliveryMode.AUTO,
        problems,
        "The delivery mode must be auto, push or fetch; using auto.",
        "送达方式必须是 auto、push 或 fetch，已使用 auto。",
    )
    if delivery_mode is DeliveryMode.PUSH and not _text(raw, "app_secret"):
        problems.append(
            SettingProblem(
                "delivery_mode",
                "Push needs the Secret; without it late answers are kept for the fetch keyword."
                if wecom
                else "Push needs the AppSecret; without it late answers are kept for the fetch "
                "keyword.",
                "主动推送需要应用的 Secret；未设置时，迟到的答案改为回复关键词获取。"
                if wecom
                else "主动推送需要 AppSecret；未设置时，迟到的答案改为回复关键词获取。",
            )
        )

    worker_base = ""
    worker_text = _text(raw, "worker_base_url")
    if worker_text:
        normalized = normalize_api_base_url(worker_text)
        if normalized is None:
            problems.append(
                SettingProblem(
                    "worker_base_url",
                    "The worker base URL is not a valid http(s) URL; using Dify's public URL.",
                    "后台任务地址不是有效的 http(s) 地址，已改用 Dify 的公网地址。",
                )
            )
        else:
            worker_base = normalized

    parsed_retention = _number(
        raw, "answer_retention_hours", DEFAULT_ANSWER_RETENTION_HOURS, 0.1, 720
    )
    retention = float(parsed_retention or DEFAULT_ANSWER_RETENTION_HOURS)
    if parsed_retention is None:
        problems.append(
            SettingProblem(
                "answer_retention_hours",
                "The answer retention must be a number of hours (0.1-720); using 24.",
                "答案保留时长必须是 0.1-720 之间的小时数，已使用 24。",
            )
        )

    parsed_days = _number(raw, "full_answer_days", DEFAULT_FULL_ANSWER_DAYS, 0.1, 30)
    full_answer_days = float(parsed_days or DEFAULT_FULL_ANSWER_DAYS)
    if parsed_days is None:
        problems.append(
            SettingProblem(
                "full_answer_days",
                "The full-answer link lifetime must be a number of days (0.1-30); using 7.",
                "「阅读全文」链接有效期必须是 0.1-30 之间的天数，已使用 7。",
            )
        )

    menu_map, bad_entries = parse_menu_map(str(raw.get("menu_click_map") or ""))
    if bad_entries:
        numbers = ", ".join(str(n) for n in bad_entries[:10])
        problems.append(
            SettingProblem(
                "menu_click_map",
                f"Menu entries {numbers} are not KEY=text and are ignored.",
                f"菜单映射第 {numbers} 条不是「KEY=文字」格式，已忽略。",
            )
        )

    welcome_mode = _choice(
        raw,
        "welcome_mode",
        WelcomeMode.TEXT,
        problems,
        "The welcome mode must be text, app or opening_statement; using text.",
        "关注欢迎方式必须是 text、app 或 opening_statement，已使用 text。",
    )

    stt_model = _model(raw, "speech_to_text_model")
    if stt_model and not _text(raw, "app_secret"):
        problems.append(
            SettingProblem(
                "speech_to_text_model",
                "Transcribing voice needs the AppSecret (to download the voice); without it "
                "only WeChat's own recognition (接收语音识别结果) is used.",
                "语音转文字需要 AppSecret 才能下载语音；未设置时只能使用微信自带的语音识别结果。",
            )
        )
    voice_reply = _flag(raw, "voice_reply", False)
    tts_model = _model(raw, "text_to_speech_model")
    if voice_reply and wecom:
        problems.append(
            SettingProblem(
                "voice_reply",
                "Voice replies are not available for WeCom (its voice messages must be AMR); "
                "replies stay text.",
                "企业微信不支持语音回复（其语音消息必须是 AMR 格式），目前仍以文字回复。",
            )
        )
    elif voice_reply and not (tts_model and _text(raw, "app_secret")):
        problems.append(
            SettingProblem(
                "voice_reply",
                "Voice replies need a text-to-speech model and the AppSecret; replies stay text.",
                "语音回复需要选择文字转语音模型并设置 AppSecret；目前仍以文字回复。",
            )
        )

    mode_text = _text(raw, "click_event_mode", ClickEventMode.QUERY.value)
    try:
        click_mode = ClickEventMode(mode_text or ClickEventMode.QUERY.value)
    except ValueError:
        click_mode = ClickEventMode.QUERY

    texts = {name: _text(raw, name, default) for name, default in DEFAULT_TEXTS.items()}
    # An explicitly emptied welcome means "say nothing"; other texts fall back to defaults.
    for name in DEFAULT_TEXTS.keys() - {"welcome_message"}:
        texts[name] = texts[name] or DEFAULT_TEXTS[name]

    return Settings(
        dify_app_id=dify_app_id,
        dify_app_inputs=dify_inputs,
        token=token,
        app_id=app_id,
        encoding_aes_key=aes_key,
        app_secret=_text(raw, "app_secret"),
        api_base_url=api_base,
        click_event_mode=click_mode,
        fetch_keyword=_text(raw, "fetch_keyword", "1") or "1",
        timestamp_tolerance=tolerance,
        delivery_mode=delivery_mode,
        worker_base_url=worker_base,
        answer_retention_hours=retention,
        # Empty means "the default": an app without that variable simply gets the URL.
        file_input_variable=_text(raw, "file_input_variable") or DEFAULT_FILE_INPUT_VARIABLE,
        speech_to_text_model=stt_model,
        voice_reply=voice_reply,
        text_to_speech_model=tts_model,
        menu_click_map=menu_map,
        welcome_mode=welcome_mode,
        full_answer_link=_flag(raw, "full_answer_link", True),
        full_answer_days=full_answer_days,
        platform=platform,
        agent_id=agent_id,
        wecom_markdown=_flag(raw, "wecom_markdown", True),
        welcome_on_enter=_flag(raw, "welcome_on_enter", False),
        problems=tuple(problems),
        **texts,
    )
