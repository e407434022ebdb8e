"""The page a browser sees at the endpoint URL: is it live, is it configured, what goes
where in the WeChat console. It shows which settings are set, never their values."""

from __future__ import annotations

import time
from collections.abc import Callable
from html import escape
from urllib.parse import urlsplit, urlunsplit

from . import audio
from .diagnostics import COUNTERS, Diagnostics, JournalEntry, explain
from .settings import DeliveryMode, Settings
from .worker_link import WorkerHealth


def public_endpoint_url(hook_url: str) -> str:
    """The URL to paste into WeChat: Dify's hook URL without query or fragment."""
    if not hook_url:
        return ""
    parts = urlsplit(hook_url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _row(ok: bool | None, name: str, text_en: str, text_zh: str) -> str:
    mark = {True: "✅", False: "❌", None: "⚠️"}[ok]
    return (
        f"<tr><td>{mark}</td><td><code>{escape(name)}</code></td>"
        f"<td>{escape(text_en)}<br><span class=zh>{escape(text_zh)}</span></td></tr>"
    )


def _worker_rows(settings: Settings, health: WorkerHealth | None) -> str:
    if health is None:
        state = _row(
            None,
            "worker",
            "Not used yet: the first message that needs the app will try it.",
            "尚未使用：第一条需要调用应用的消息会启动它。",
        )
    elif health.ok:
        state = _row(
            True,
            "worker",
            f"Reachable at {health.target}: answers may take as long as the app needs.",
            f"可以访问（{health.target}）：答案不受 5 秒限制。",
        )
    else:
        state = _row(
            False,
            "worker",
            f"Unreachable at {health.target or '(unknown)'} ({health.reason}): only answers "
            "ready within ~4 s reach users. Make Dify's public URL (ENDPOINT_URL_TEMPLATE / "
            "nginx) reachable from the plugin, or set worker_base_url to an address that is.",
            f"无法访问（{health.reason}）：只有 4 秒内生成的答案能送达。请确认插件能访问 Dify 的"
            "公网地址，或在 worker_base_url 中填写插件可访问的地址。",
        )
    mode = settings.delivery_mode
    if not settings.can_push:
        route_en = f"Late answers wait for the keyword 「{settings.fetch_keyword}」 (fetch)."
        route_zh = f"迟到的答案需用户回复「{settings.fetch_keyword}」获取。"
    elif settings.is_wecom:
        kind_en = "WeCom markdown" if settings.sends_markdown else "text"
        kind_zh = "Markdown" if settings.sends_markdown else "文本"
        route_en = (
            f"Late answers are sent as app messages ({kind_en}); if WeCom refuses (e.g. "
            "60020, IP not trusted) they wait for the keyword."
        )
        route_zh = (
            f"迟到的答案以应用消息（{kind_zh}）发送；企业微信拒绝时（如 60020）改为回复关键词获取。"
        )
    elif mode is DeliveryMode.PUSH:
        route_en, route_zh = (
            "Late answers are pushed (customer-service messages).",
            "迟到的答案主动推送（客服消息）。",
        )
    else:
        route_en = "Late answers are pushed while the account allows it, else fetched (auto)."
        route_zh = "迟到的答案优先主动推送，公众号无权限时改为回复关键词获取（auto）。"
    return state + _row(True, "delivery_mode", route_en, route_zh)


def _media_rows(settings: Settings) -> str:
    """What pictures and voice do with these settings (no values beyond names)."""
    rows = [
        _row(
            True,
            "file_input_variable",
            f"Pictures reach apps that declare a File input named "
            f"{settings.file_input_variable}; other apps get the picture's URL.",
            f"图片会传给声明了文件变量 {settings.file_input_variable} 的应用；"
            "其他应用只收到图片链接。",
        )
    ]
    converter = audio.available()
    own = "WeCom sends no transcript" if settings.is_wecom else "WeChat's recognition"
    if settings.speech_to_text_model and settings.can_call_api and converter:
        rows.append(
            _row(
                True,
                "speech_to_text_model",
                f"Voice ({own}) is transcribed by the chosen model.",
                "微信未识别的语音由所选模型转成文字。",
            )
        )
    elif settings.speech_to_text_model and settings.can_call_api:
        rows.append(
            _row(
                False,
                "speech_to_text_model",
                f"Voice cannot be converted here: {audio.describe()}.",
                f"无法转换语音格式：{audio.describe()}。",
            )
        )
    elif settings.is_wecom:
        rows.append(
            _row(
                None,
                "speech_to_text_model",
                "Voice messages get the voice text; set the app's Secret and a speech-to-text "
                "model to transcribe them (WeCom sends no transcript).",
                "语音消息会收到提示文字；设置应用 Secret 和语音转文字模型后可转写语音"
                "（企业微信不提供识别结果）。",
            )
        )
    else:
        rows.append(
            _row(
                None,
                "speech_to_text_model",
                "Only WeChat's own recognition (接收语音识别结果) is used; set the AppSecret "
                "and a speech-to-text model to transcribe other voice messages.",
                "仅使用微信自带的语音识别结果；设置 AppSecret 和语音转文字模型后可转写其余语音。",
            )
        )
    for name in ("speech_to_text_model", "voice_reply", "menu_click_map", "welcome_mode"):
        problem = next((p for p in settings.problems if p.setting == name), None)
        if problem is not None:
            rows.append(_row(False, name, problem.message_en, problem.message_zh))
    return "".join(rows)


_COUNTER_LEGEND = (
    ("passive", "app answers replied within WeChat's window", "窗口内被动回复的答案"),
    ("pushed", "parts sent as customer-service messages", "以客服消息推送的部分"),
    ("fetched", "parts fetched with the keyword", "通过关键词获取的部分"),
    ("expired", "fetches whose answer was gone", "答案已过期的获取"),
    ("handed_off", "answers that continued after the window", "超过窗口后转交的答案"),
    ("app_error", "the app failed", "应用调用失败"),
)


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


def _cells(values: list[str], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{escape(v)}</{tag}>" for v in values) + "</tr>"


def _diag_worker(health: WorkerHealth | None, diagnostics: Diagnostics) -> str:
    """Reachability now, and the last failure with its reason and time (the health record
    only keeps the latest state; the journal keeps earlier failures)."""
    if health is None:
        now = _row(None, "worker", "No worker call recorded yet.", "尚无后台任务调用记录。")
    elif health.ok:
        now = _row(
            True,
            "worker",
            f"Reachable (last checked {_utc(health.at)} UTC).",
            f"可以访问（最近检查：{_utc(health.at)} UTC）。",
        )
    else:
        now = _row(
            False,
            "worker",
            f"Unreachable since {_utc(health.at)} UTC: {health.reason}.",
            f"自 {_utc(health.at)} UTC 起无法访问：{health.reason}。",
        )
    failure = diagnostics.last_worker_failure()
    if health is not None and not health.ok and (failure is None or failure.at < health.at):
        at, reason = health.at, health.reason
    elif failure is not None:
        at, reason = failure.at, failure.detail
    else:
        return now + _row(True, "worker", "No failure recorded.", "没有失败记录。")
    return now + _row(
        False if health is not None and not health.ok else None,
        "worker",
        f"Last failure: {_utc(at)} UTC — {reason}.",
        f"最近一次失败：{_utc(at)} UTC — {reason}。",
    )


def _diag_counters(diagnostics: Diagnostics) -> str:
    header = _cells(["Day (UTC) / 日期", *COUNTERS], "th")
    rows = [
        _cells([f"{day[:4]}-{day[4:6]}-{day[6:]}", *(str(counts.get(n, 0)) for n in COUNTERS)])
        for day, counts in diagnostics.days
    ]
    totals = diagnostics.totals()
    rows.append(_cells([f"{len(diagnostics.days)} days / 天", *(str(totals[n]) for n in COUNTERS)]))
    legend = "; ".join(f"{name}: {en} / {zh}" for name, en, zh in _COUNTER_LEGEND)
    return f"<table>{header}{''.join(rows)}</table>\n<p class=zh>{escape(legend)}</p>\n"


def _diag_error(entry: JournalEntry, wecom: bool) -> str:
    en, zh = explain(entry.code, entry.ip, entry.detail, wecom=wecom)
    return (
        f"<tr><td>{escape(_utc(entry.at))}</td><td>{escape(entry.source)}</td>"
        f"<td><code>{escape(str(entry.code))}</code></td>"
        f"<td>{escape(en)}<br><span class=zh>{escape(zh)}</span></td>"
        f"<td><code>{escape(entry.detail)}</code></td></tr>"
    )


def _diagnostics_section(
    health: WorkerHealth | None, diagnostics: Diagnostics | None, wecom: bool = False
) -> str:
    """Only for the right key (see intake); empty otherwise, so the page is unchanged."""
    if diagnostics is None:
        return ""
    if diagnostics.errors:
        header = _cells(
            ["Time (UTC)", "Source / 来源", "Code", "Explanation / 说明", "Detail"], "th"
        )
        rows = "".join(_diag_error(e, wecom) for e in diagnostics.errors)
        errors = f"<table>{header}{rows}</table>"
    else:
        errors = "<p>No errors recorded. / 暂无错误记录。</p>"
    return (
        "<h2>Diagnostics / 诊断</h2>\n"
        "<p class=zh>Times are UTC. Counts are approximate: processes writing at the same "
        "moment may lose an increment. / 时间为 UTC；计数为近似值。</p>\n"
        f"<h3>Worker / 后台任务</h3>\n<table>{_diag_worker(health, diagnostics)}</table>\n"
        f"<h3>Deliveries / 投递计数</h3>\n{_diag_counters(diagnostics)}"
        f"<h3>Last errors / 最近错误</h3>\n{errors}\n"
    )


def render_status_page(
    settings: Settings,
    endpoint_url: str,
    health: WorkerHealth | None = None,
    diagnostics: Diagnostics | None = None,
) -> str:
    url = public_endpoint_url(endpoint_url)
    problems = {p.setting: p for p in settings.problems}
    rows: list[str] = []

    def check(name: str, ok_en: str, ok_zh: str, optional_missing: tuple[str, str] | None = None):
        problem = problems.get(name)
        if problem is not None:
            rows.append(_row(False, name, problem.message_en, problem.message_zh))
        elif optional_missing is not None:
            rows.append(_row(None, name, *optional_missing))
        else:
            rows.append(_row(True, name, ok_en, ok_zh))

    check("app", "A Dify app is selected.", "已选择 Dify 应用。")
    if settings.is_wecom:
        _wecom_checks(settings, check)
    else:
        _official_account_checks(settings, check)
    check("wechat_api_base_url", "The API base URL is valid.", "接口地址有效。")
    check("timestamp_tolerance", "Timestamp tolerance is valid.", "时间戳容差有效。")
    for name in ("delivery_mode", "worker_base_url", "answer_retention_hours", "full_answer_days"):
        if name in problems:
            check(name, "", "")

    ready = not any(p.fatal for p in settings.problems) and "app" not in problems
    headline = (
        "Endpoint is live and ready. / 接口已就绪。"
        if ready
        else "Endpoint is live, but the settings need attention. / 接口在线，但配置需要修改。"
    )
    console = _wecom_console(url) if settings.is_wecom else _official_account_console(url, settings)
    return _PAGE.format(
        headline=escape(headline),
        settings="".join(rows),
        worker=_worker_rows(settings, health),
        media=_media_rows(settings),
        console=console,
        diagnostics=_diagnostics_section(health, diagnostics, settings.is_wecom),
    )


Check = Callable[..., None]


def _official_account_checks(settings: Settings, check: Check) -> None:
    check("platform", "Platform: WeChat Official Account.", "接入平台：微信公众号。")
    check("wechat_token", "Token is set.", "已设置 Token。")
    check("app_id", "AppID is set.", "已设置 AppID。")
    check(
        "encoding_aes_key",
        "EncodingAESKey is set: use 安全模式 (safe) in the console.",
        "已设置 EncodingAESKey：后台请选择「安全模式」。",
        None
        if settings.encoding_aes_key
        else (
            "Not set: only 明文模式 (plain) works. Set it to use safe mode.",
            "未设置：只能使用明文模式。设置后可使用安全模式。",
        ),
    )
    check(
        "app_secret",
        "AppSecret is set.",
        "已设置 AppSecret。",
        None if settings.app_secret else ("Not set (optional).", "未设置（可选）。"),
    )


def _wecom_checks(settings: Settings, check: Check) -> None:
    check("platform", "Platform: WeCom self-built app.", "接入平台：企业微信自建应用。")
    check("wechat_token", "Token is set.", "已设置 Token。")
    check("app_id", "CorpID is set (in app_id).", "已设置企业ID（app_id）。")
    check("agent_id", "AgentId is set.", "已设置 AgentId。")
    check("encoding_aes_key", "EncodingAESKey is set.", "已设置 EncodingAESKey。")
    check(
        "app_secret",
        "The app's Secret is set: late answers are sent as app messages.",
        "已设置应用 Secret：迟到的答案以应用消息发送。",
        None
        if settings.app_secret
        else (
            "Not set: late answers wait for the fetch keyword, pictures and voice cannot be "
            "downloaded.",
            "未设置：迟到的答案只能回复关键词获取，无法下载图片和语音。",
        ),
    )
    for name in ("voice_reply",):
        if any(p.setting == name for p in settings.problems):
            check(name, "", "")


def _official_account_console(url: str, settings: Settings) -> str:
    mode = "安全模式 (safe)" if settings.encoding_aes_key else "明文模式 (plain)"
    return f"""<h2>WeChat console / 公众号后台（设置与开发 → 基本配置 → 服务器配置）</h2>
<ol>
<li>服务器地址(URL) / Server URL:
<code>{escape(url) or "(this page's URL without the query)"}</code>
 — must be reachable from the internet on port 80 or 443 (WeChat calls no other port).</li>
<li>令牌(Token): the same value as the <code>wechat_token</code> setting.</li>
<li>消息加解密密钥(EncodingAESKey): the same value as the
<code>encoding_aes_key</code> setting.</li>
<li>消息加解密方式: {escape(mode)}.</li>
<li>Submit, then 启用 (enable) the server configuration.</li>
</ol>
<p class=zh>If WeChat says 「该公众号暂时无法提供服务」,
see the README's troubleshooting section.</p>
"""


def _wecom_console(url: str) -> str:
    return f"""<h2>WeCom console / 企业微信管理后台
（应用管理 → 自建应用 → 接收消息 → 设置API接收）</h2>
<ol>
<li>URL: <code>{escape(url) or "(this page's URL without the query)"}</code>
 — reachable from the internet; verified enterprises need an ICP-filed domain of their own.</li>
<li>Token: the same value as the <code>wechat_token</code> setting.</li>
<li>EncodingAESKey: the same value as the <code>encoding_aes_key</code> setting.</li>
<li>Save: WeCom verifies the URL at once (this endpoint answers within a second).</li>
<li>企业可信IP (the app's page): add the Dify server's egress IP, or sending answers fails
with 60020. 可见范围: members outside the app's visibility range cannot use it.</li>
<li>Optional: 上报进入应用事件, for <code>welcome_on_enter</code>.</li>
</ol>
"""


_PAGE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>WeChat ⇄ Dify endpoint</title>
<style>
body{{font-family:-apple-system,system-ui,sans-serif;max-width:760px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.5}}
table{{border-collapse:collapse;width:100%}}td{{border-bottom:1px solid #eee;padding:.4em;
vertical-align:top}}code{{background:#f4f4f4;padding:0 .3em;border-radius:3px}}
.zh{{color:#555}}h1{{font-size:1.3em}}h2{{font-size:1.1em;margin-top:1.5em}}
</style></head><body>
<h1>WeChat ⇄ Dify</h1>
<p><strong>{headline}</strong></p>
<h2>Settings / 配置检查</h2>
<table>{settings}</table>
<h2>Answers after 5 s / 超过 5 秒的答案</h2>
<table>{worker}</table>
<h2>Pictures and voice / 图片与语音</h2>
<table>{media}</table>
{console}{diagnostics}</body></html>
"""
