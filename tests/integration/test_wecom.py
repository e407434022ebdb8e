"""A WeCom (企业微信) self-built app through the plugin, run as Dify runs it (daemon emulator),
called as WeCom calls it (``WeComSimulator``: encrypted echostr, msg_signature-only pushes,
retries), sending through the loopback ``FakeWeComAPI`` (gettoken, message/send, media).

Each test asserts what the member saw, one app call per message, and that no session was
used after its request ended.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from endpoints.wechat.diagnostics import diagnostics_key
from tests.conftest import EmulatorFactory
from tests.emulator import DaemonEmulator, ScriptedApp
from tests.emulator.apps import AppRequest, app_parameters, form_field
from tests.emulator.wecom import WeComSimulator
from tests.fake_wecom_api import FakeWeComAPI
from tests.media_samples import png_image

PUSH_WAIT = "问题有点复杂，我还在思考，想好了会马上发给你。"
FETCH_WAIT = "问题有点复杂，我还在思考。请稍后回复「1」获取答案。"
PUSH_MORE = "（内容较长，后续部分马上发送）"
MARKDOWN_ANSWER = "## 结论\n\n**注意：**请先阅读 [文档](https://example.com/doc)。"


@pytest.fixture
def wecom_api() -> Iterator[FakeWeComAPI]:
    with FakeWeComAPI() as api:
        yield api


def wecom_settings(
    base: dict[str, Any], api: FakeWeComAPI, path_platform: bool = True, **extra: Any
) -> dict[str, Any]:
    settings = dict(
        base,
        app_id=api.corp_id,
        app_secret=api.corp_secret,
        agent_id=str(api.agent_id),
        wechat_api_base_url=api.base_url,
        **extra,
    )
    if path_platform:
        settings["platform"] = "wecom"
    return settings


def simulator(
    emu: DaemonEmulator, settings: dict[str, Any], time_scale: float, path: str = "/wecom"
) -> WeComSimulator:
    return WeComSimulator(
        emu.url(path),
        settings["wechat_token"],
        settings["app_id"],
        settings["encoding_aes_key"],
        agent_id=int(settings.get("agent_id") or 1000002),
        time_scale=time_scale,
    )


def finish(emu: DaemonEmulator) -> None:
    assert emu.wait_idle(timeout=30)
    assert emu.late_calls == []
    assert emu.errors == []


def calls_for(emu: DaemonEmulator, query: str) -> int:
    return sum(1 for c in emu.app_calls if c["query"] == query)


# --- verification ------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "platform_setting"), [("/wecom", False), ("/wechat", True)])
def test_the_callback_url_is_verified_within_a_second(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wecom_api: FakeWeComAPI,
    time_scale: float,
    path: str,
    platform_setting: bool,
) -> None:
    # /wecom is WeCom's whatever the setting says; /wechat follows the platform setting.
    settings = wecom_settings(default_settings, wecom_api, path_platform=platform_setting)
    emu = emulator_factory(settings=settings)
    sim = simulator(emu, settings, time_scale, path)
    sim.verify_url()  # a fresh process answers its first request more slowly
    answer = sim.verify_url()
    assert answer.verified, answer.problem
    finish(emu)


def test_a_wrong_token_fails_verification_without_revealing_the_echo(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wecom_api: FakeWeComAPI,
    time_scale: float,
) -> None:
    settings = wecom_settings(default_settings, wecom_api)
    emu = emulator_factory(settings=settings)
    sim = simulator(emu, dict(settings, wechat_token="someOtherToken1"), time_scale)
    answer = sim.verify_url()
    assert answer.status_code == 403 and answer.expected not in answer.text
    finish(emu)


# --- messages ------------------------------------------------------------------------------


def test_a_quick_answer_is_the_passive_reply_and_nothing_is_sent_on_top(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wecom_api: FakeWeComAPI,
    time_scale: float,
) -> None:
    settings = wecom_settings(default_settings, wecom_api)
    emu = emulator_factory(settings=settings)
    sim = simulator(emu, settings, time_scale)
    delivery = sim.deliver(sim.text("zhangsan", "你好"))
    assert delivery.user_saw == ["echo: 你好"]
    finish(emu)
    call = emu.app_calls[0]
    assert call["user"] == "zhangsan"
    assert call["inputs"]["wechat_agent_id"] == str(wecom_api.agent_id)
    assert wecom_api.outbox("zhangsan") == []


def test_a_markdown_answer_in_the_window_is_passive_text(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wecom_api: FakeWeComAPI,
    time_scale: float,
) -> None:
    settings = wecom_settings(default_settings, wecom_api)
    emu = emulator_factory(app=ScriptedApp("chat", MARKDOWN_ANSWER), settings=settings)
    sim = simulator(emu, settings, time_scale)
    seen = sim.deliver(sim.text("lisi", "说说")).user_saw
    finish(emu)
    assert len(seen) == 1 and isinstance(seen[0], str)
    assert "**" not in seen[0] and "注意：请先阅读 文档 (https://example.com/doc)" in seen[0]


def test_a_late_answer_arrives_as_a_markdown_app_message(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wecom_api: FakeWeComAPI,
    time_scale: float,
) -> None:
    settings = wecom_settings(default_settings, wecom_api)
    app = ScriptedApp("chat", MARKDOWN_ANSWER, latency=16 * time_scale)
    emu = emulator_factory(app=app, settings=settings)
    sim = simulator(emu, settings, time_scale)
    delivery = sim.deliver(sim.text("wangwu", "慢问题"))
    assert delivery.user_saw == [PUSH_WAIT]
    assert wecom_api.wait_until(lambda a: len(a.outbox("wangwu")) >= 1, timeout=30)
    finish(emu)
    assert wecom_api.markdowns("wangwu") == [MARKDOWN_ANSWER]
    [sent] = wecom_api.outbox("wangwu")
    assert sent["agentid"] == wecom_api.agent_id and sent["touser"] == "wangwu"
    assert calls_for(emu, "慢问题") == 1


def test_the_wecom_url_pushes_as_wecom_even_with_the_official_account_setting(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wecom_api: FakeWeComAPI,
    time_scale: float,
) -> None:
    # The worker request (…/wechat/worker) must know the message came to /wecom.
    settings = wecom_settings(default_settings, wecom_api, path_platform=False)
    app = ScriptedApp("chat", MARKDOWN_ANSWER, latency=16 * time_scale)
    emu = emulator_factory(app=app, settings=settings)
    sim = simulator(emu, settings, time_scale, "/wecom")
    assert sim.deliver(sim.text("wangwu", "慢问题")).user_saw == [PUSH_WAIT]
    assert wecom_api.wait_until(lambda a: len(a.outbox("wangwu")) >= 1, timeout=30)
    finish(emu)
    assert wecom_api.markdowns("wangwu") == [MARKDOWN_ANSWER]
    page = requests.get(emu.url("/wecom"), timeout=10).text
    assert "/wecom" in page and "platform" in page  # the mismatch is pointed out


def test_with_markdown_off_late_answers_are_text(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wecom_api: FakeWeComAPI,
    time_scale: float,
) -> None:
    settings = wecom_settings(default_settings, wecom_api, wecom_markdown=False)
    app = ScriptedApp("chat", MARKDOWN_ANSWER, latency=16 * time_scale)
    emu = emulator_factory(app=app, settings=settings)
    sim = simulator(emu, settings, time_scale)
    assert sim.deliver(sim.text("zhaoliu", "慢问题")).user_saw == [PUSH_WAIT]
    assert wecom_api.wait_until(lambda a: len(a.texts("zhaoliu")) >= 1, timeout=30)
    finish(emu)
    [text] = wecom_api.texts("zhaoliu")
    assert text.startswith("【结论】") and "**" not in text
    assert wecom_api.markdowns("zhaoliu") == []


def test_a_long_answer_continues_in_markdown_after_the_passive_first_part(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wecom_api: FakeWeComAPI,
    time_scale: float,
) -> None:
    answer = "\n\n".join(f"## 第{i}段\n\n" + "**要点**：" + "内容" * 300 for i in range(1, 4))
    settings = wecom_settings(default_settings, wecom_api)
    emu = emulator_factory(app=ScriptedApp("chat", answer), settings=settings)
    sim = simulator(emu, settings, time_scale)
    first = sim.deliver(sim.text("sunqi", "长问题")).text
    assert first is not None and first.startswith("【第1段】") and first.endswith(PUSH_MORE)
    assert wecom_api.wait_until(lambda a: len(a.markdowns("sunqi")) >= 2, timeout=30)
    finish(emu)
    rest = wecom_api.markdowns("sunqi")
    assert [m.split("\n")[0] for m in rest] == ["## 第2段", "## 第3段"]
    assert all(len(m.encode()) <= 2048 for m in rest)


def test_an_expired_token_is_refreshed_once_and_the_answer_still_arrives(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wecom_api: FakeWeComAPI,
    time_scale: float,
) -> None:
    settings = wecom_settings(default_settings, wecom_api)
    app = ScriptedApp.echo(latency=16 * time_scale)
    emu = emulator_factory(app=app, settings=settings)
    sim = simulator(emu, settings, time_scale)
    sim.deliver(sim.text("a1", "first"))
    assert wecom_api.wait_until(lambda a: len(a.outbox("a1")) >= 1, timeout=30)
    assert wecom_api.token_fetches == 1
    wecom_api.expire_token()
    sim.deliver(sim.text("a1", "second"))
    assert wecom_api.wait_until(lambda a: len(a.outbox("a1")) >= 2, timeout=30)
    finish(emu)
    assert wecom_api.markdowns("a1") == ["echo: first", "echo: second"]
    assert wecom_api.token_fetches == 2


def test_an_untrusted_ip_60020_leaves_the_answer_fetchable_and_explains_itself(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wecom_api: FakeWeComAPI,
    time_scale: float,
) -> None:
    settings = wecom_settings(default_settings, wecom_api)
    wecom_api.distrust_ip("203.0.113.9")
    app = ScriptedApp.echo(latency=16 * time_scale)
    emu = emulator_factory(app=app, settings=settings)
    sim = simulator(emu, settings, time_scale)
    assert sim.deliver(sim.text("b2", "blocked")).user_saw == [PUSH_WAIT]
    assert emu.wait_idle(timeout=30)
    assert wecom_api.outbox("b2") == []
    assert sim.deliver(sim.text("b2", "1")).user_saw == ["echo: blocked"]
    finish(emu)
    assert "60020" in emu.plugin_logs() and "203.0.113.9" in emu.plugin_logs()
    key = diagnostics_key(settings["wechat_token"])
    page = requests.get(emu.url("/wecom"), params={"key": key}, timeout=10).text
    assert "60020" in page and "203.0.113.9" in page and "企业可信IP" in page


def test_without_a_secret_late_answers_wait_for_the_keyword(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wecom_api: FakeWeComAPI,
    time_scale: float,
) -> None:
    settings = wecom_settings(default_settings, wecom_api)
    del settings["app_secret"]
    app = ScriptedApp("chat", MARKDOWN_ANSWER, latency=16 * time_scale)
    emu = emulator_factory(app=app, settings=settings)
    sim = simulator(emu, settings, time_scale)
    assert sim.deliver(sim.text("c3", "no secret")).user_saw == [FETCH_WAIT]
    assert emu.wait_idle(timeout=30)
    [fetched] = sim.deliver(sim.text("c3", "1")).user_saw
    finish(emu)
    assert isinstance(fetched, str) and fetched.startswith("【结论】")
    assert wecom_api.calls() == []


# --- every message type and event ---------------------------------------------------------------


def describe(req: AppRequest) -> str:
    inputs = req.inputs
    return f"{inputs.get('wechat_msg_type')}: {req.query} | file: {bool(inputs.get('wechat_file'))}"


def test_each_message_type_reaches_the_app(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wecom_api: FakeWeComAPI,
    time_scale: float,
) -> None:
    picture = wecom_api.add_media(png_image(16, 16), "image/png")
    field = form_field("file", "wechat_file", allowed_file_types=["image"])
    app = ScriptedApp("advanced-chat", describe, parameters=app_parameters(user_input_form=[field]))
    settings = wecom_settings(default_settings, wecom_api)
    emu = emulator_factory(app=app, settings=settings)
    sim = simulator(emu, settings, time_scale)
    user = "d4"
    image = sim.deliver(sim.image(user, media_id=picture, pic_url="http://127.0.0.1:9/x.png"))
    assert image.text == "image: [图片] http://127.0.0.1:9/x.png | file: True"
    location = sim.deliver(sim.location(user, label="深圳市南山区")).text
    assert location is not None and location.startswith("location: ") and "深圳市南山区" in location
    link = sim.deliver(sim.link(user, title="企业微信", url="https://work.weixin.qq.com/")).text
    assert link is not None and "https://work.weixin.qq.com/" in link
    video = sim.deliver(sim.video(user, media_id="unknown-video")).text
    assert video is not None and video.startswith("video: [视频]")
    voice = sim.deliver(sim.voice(user, media_id="unknown-voice")).text
    assert voice is not None and "语音" in voice  # no speech model: the voice text
    finish(emu)
    assert len(emu.app_calls) == 4  # the voice message did not reach the app
    assert wecom_api.outbox(user) == []


def test_events_welcome_menu_and_silence(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wecom_api: FakeWeComAPI,
    time_scale: float,
) -> None:
    settings = wecom_settings(
        default_settings,
        wecom_api,
        welcome_message="欢迎使用知识库助手",
        welcome_on_enter=True,
        menu_click_map="HOURS=reply:工作日 9:00-18:00",
    )
    emu = emulator_factory(settings=settings)
    sim = simulator(emu, settings, time_scale)
    user = sim.user("e5")
    assert user.event("subscribe") == ["欢迎使用知识库助手"]
    assert user.event("enter_agent") == ["欢迎使用知识库助手"]
    assert user.event("click", "HOURS") == ["工作日 9:00-18:00"]
    assert user.event("view", "https://example.com") == []
    assert user.event("LOCATION", Latitude="23.1", Longitude="113.3", Precision="10") == []
    assert user.event("unsubscribe") == []
    finish(emu)
    assert emu.app_calls == []


def test_forged_and_foreign_callbacks_are_refused_without_an_app_call(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wecom_api: FakeWeComAPI,
    time_scale: float,
) -> None:
    settings = wecom_settings(default_settings, wecom_api)
    emu = emulator_factory(settings=settings)
    sim = simulator(emu, settings, time_scale)
    for tamper in ("msg_signature", "ciphertext", "corp_id"):
        refused = sim.post_xml(sim.text("f6", "forged"), tamper=tamper)
        assert refused.status_code in (400, 403), tamper
    other_app = simulator(emu, dict(settings, agent_id="1000099"), time_scale)
    assert other_app.post_xml(other_app.text("f6", "other app")).status_code == 403
    finish(emu)
    assert emu.app_calls == []
    assert "AgentID" in emu.plugin_logs()
