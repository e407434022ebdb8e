"""The plugin as Dify runs it (``python -m main``, serverless) under the daemon emulator,
with WeChat played by the simulator: real signatures, encryption and retry timing
(deadlines scaled by ``WECHAT_TEST_TIME_SCALE``)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from endpoints.wechat.settings import DEFAULT_TEXTS
from tests.conftest import EmulatorFactory
from tests.emulator import WECHAT_FAILURE_TEXT, DaemonEmulator, ScriptedApp, WeChatSimulator

pytestmark = pytest.mark.integration

TIMEOUT_TEXT = "抱歉，这个问题我需要想得久一点，没能及时回复。请稍后再问我一次。"
UNSUPPORTED_TEXT = DEFAULT_TEXTS["unsupported_message"]


def plain(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k != "encoding_aes_key"}


def simulator(
    emu: DaemonEmulator, settings: dict[str, Any], mode: str, time_scale: float
) -> WeChatSimulator:
    return WeChatSimulator(
        emu.url("/wechat"),
        settings["wechat_token"],
        settings["app_id"],
        settings.get("encoding_aes_key"),
        mode=mode,  # type: ignore[arg-type]
        time_scale=time_scale,
    )


def assert_no_secret_in_logs(emu: DaemonEmulator, settings: dict[str, Any]) -> None:
    logs = emu.plugin_logs()
    for name in ("wechat_token", "encoding_aes_key", "app_secret"):
        value = settings.get(name)
        if value:
            assert value not in logs, f"{name} leaked into the plugin log"


# --- GET ----------------------------------------------------------------------------------


def test_url_verification_and_status_page(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    settings = {**default_settings, "app_secret": "APPSECRET-should-not-show"}
    emu = emulator_factory(settings=settings)
    sim = simulator(emu, settings, "safe", time_scale)
    ok = sim.verify_url(echostr="8472615930")
    assert (ok.status_code, ok.text) == (200, "8472615930")

    forged = sim.get(
        {"signature": "0" * 40, "timestamp": str(int(time.time())), "nonce": "1", "echostr": "42"}
    )
    assert forged.status_code == 403 and "42" not in forged.text

    page = requests.get(emu.url("/wechat"), timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert emu.url("/wechat") in page.text
    for secret in (settings["wechat_token"], settings["encoding_aes_key"], settings["app_secret"]):
        assert secret not in page.text
    assert emu.app_calls == [] and emu.late_calls == []


def test_status_page_explains_missing_settings(emulator_factory: EmulatorFactory) -> None:
    bad_key = "not-a-valid-key-123"
    emu = emulator_factory(settings={"app_id": "not-an-appid", "encoding_aes_key": bad_key})
    page = requests.get(emu.url("/wechat"), timeout=10).text
    assert "wechat_token" in page and "encoding_aes_key" in page and "❌" in page
    assert bad_key not in page


# --- POST in every mode -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["plain", "compatible", "safe"])
def test_text_round_trip_in_every_mode(
    mode: str,
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    time_scale: float,
) -> None:
    settings = plain(default_settings) if mode == "plain" else default_settings
    emu = emulator_factory(settings=settings)
    sim = simulator(emu, settings, mode, time_scale)
    user = sim.user("oAlice")
    assert user.say("你好，世界 ]]> <&>") == ["echo: 你好，世界 ]]> <&>"]
    assert user.last is not None and user.last.answered_by is not None
    assert user.last.answered_by.index == 0
    assert len(emu.app_calls) == 1
    call = emu.app_calls[0]
    assert call["user"] == "oAlice"
    assert call["inputs"]["wechat_openid"] == "oAlice"
    assert call["inputs"]["wechat_msg_type"] == "text"
    assert_no_secret_in_logs(emu, settings)


@pytest.mark.parametrize("tamper", ["signature", "msg_signature", "ciphertext", "app_id"])
def test_forged_requests_are_refused_without_side_effects(
    tamper: str,
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    time_scale: float,
) -> None:
    emu = emulator_factory()
    sim = simulator(emu, default_settings, "safe", time_scale)
    response = sim.post_xml(sim.text("oMallory", "run up the bill"), tamper=tamper)
    assert 400 <= response.status_code < 500
    assert emu.app_calls == [] and emu.storage == {}
    assert sim.user("oAlice").say("still fine") == ["echo: still fine"]


def test_plaintext_is_refused_when_a_key_is_configured(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    emu = emulator_factory()
    sim = simulator(emu, default_settings, "plain", time_scale)
    response = sim.post_xml(sim.text("oMallory", "downgrade"))
    assert response.status_code == 403
    assert emu.app_calls == [] and emu.storage == {}
    assert "安全模式" in emu.plugin_logs() or "EncodingAESKey" in emu.plugin_logs()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"<xml><ToUserName>x</ToUserName>", 400),
        (b'<!DOCTYPE x [<!ENTITY e "boom">]><xml><Content>&e;</Content></xml>', 400),
        (b"<xml>" + b"A" * 300_000 + b"</xml>", 413),
    ],
)
def test_malformed_bodies_are_refused(
    body: bytes,
    status: int,
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    time_scale: float,
) -> None:
    settings = plain(default_settings)
    emu = emulator_factory(settings=settings)
    sim = simulator(emu, settings, "plain", time_scale)
    response = sim.post_xml(sim.text("oX", "x"), tamper=lambda params, _: (params, body.decode()))
    assert response.status_code == status
    assert emu.app_calls == [] and emu.storage == {}


def test_stale_timestamp_is_refused(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    emu = emulator_factory()
    sim = simulator(emu, default_settings, "safe", time_scale)
    stale = str(int(time.time()) - 3600)
    assert sim.post_xml(sim.text("oX", "old"), timestamp=stale).status_code == 403
    assert emu.app_calls == [] and emu.storage == {}


# --- message types ------------------------------------------------------------------------


def test_every_message_type_and_event(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    settings = {**default_settings, "welcome_message": "欢迎关注！场景 {qr_scene}"}
    emu = emulator_factory(settings=settings)
    sim = simulator(emu, settings, "safe", time_scale)
    u = "oTypes"

    def saw(xml: str) -> list[Any]:
        return sim.deliver(xml).user_saw

    assert saw(sim.event(u, "subscribe", "qrscene_spring", Ticket="T")) == ["欢迎关注！场景 spring"]
    assert saw(sim.image(u, pic_url="http://mmbiz.qpic.cn/a.jpg")) == [
        "echo: [图片] http://mmbiz.qpic.cn/a.jpg"
    ]
    assert saw(sim.voice(u, recognition="今天天气怎么样")) == ["echo: 今天天气怎么样"]
    # No recognition and no AppSecret/speech model: the user is told what is missing.
    assert saw(sim.voice(u)) == [DEFAULT_TEXTS["voice_unavailable_message"]]
    assert saw(sim.video(u)) == ["echo: [视频] 用户发来一段视频"]
    assert saw(sim.shortvideo(u)) == ["echo: [小视频] 用户发来一段视频"]
    link = saw(sim.link(u, title="标题", description="描述", url="https://example.com/a"))
    assert link == ["echo: [链接] 标题\n描述\nhttps://example.com/a"]
    location = saw(sim.location(u, label="广州塔", x=23.1, y=113.3))
    assert "广州塔" in str(location[0]) and "23.1" in str(location[0])
    assert saw(sim.event(u, "CLICK", "MENU_HELLO")) == ["echo: MENU_HELLO"]
    for silent in ("VIEW", "SCAN", "LOCATION", "TEMPLATESENDJOBFINISH", "something_new"):
        assert saw(sim.event(u, silent, "k")) == [], silent
    assert saw(sim.event(u, "unsubscribe")) == []

    queries = [c["query"] for c in emu.app_calls]
    assert len(queries) == 7
    image_call = emu.app_calls[0]
    assert image_call["inputs"]["wechat_pic_url"] == "http://mmbiz.qpic.cn/a.jpg"
    assert emu.late_calls == []


def test_commands_and_conversation_continuity(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    app = ScriptedApp.echo()
    emu = emulator_factory(app=app)
    user = simulator(emu, default_settings, "safe", time_scale).user("oConv")
    user.say("one")
    user.say("two")
    first, second = emu.app_calls
    assert first["conversation_id"] in (None, "")
    assert second["conversation_id"]
    assert len(app.history(second["conversation_id"])) == 2

    cleared = user.say("/clear")
    assert "新的对话" in str(cleared[0])
    user.say("three")
    assert emu.app_calls[-1]["conversation_id"] in (None, "")
    assert "/clear" in str(user.say("/help")[0])
    assert len(emu.app_calls) == 3


def test_stale_conversation_is_replaced(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    emu = emulator_factory()
    user = simulator(emu, default_settings, "safe", time_scale).user("oStale")
    user.say("hello")
    conversation_keys = [k for k in emu.storage if "/conv/" in k]
    assert len(conversation_keys) == 1
    emu.storage[conversation_keys[0]] = b'{"v":1,"conversation_id":"deleted-long-ago"}'
    assert user.say("again") == ["echo: again"]
    assert [c["conversation_id"] for c in emu.app_calls[1:]] == ["deleted-long-ago", None]


def test_app_failure_reaches_the_user_as_friendly_text(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    settings = {**default_settings, "error_message": "小助手开小差了"}
    app = ScriptedApp("chat", "partial answer", 0.1, error_after=0.05, error_message="quota")
    emu = emulator_factory(app=app, settings=settings)
    user = simulator(emu, settings, "safe", time_scale).user("oErr")
    assert user.say("anything") == ["小助手开小差了"]
    assert "quota" in emu.plugin_logs()
    assert "Traceback" not in str(user.last.reply if user.last else "")


@pytest.mark.parametrize("mode", ["advanced-chat", "agent-chat", "workflow", "completion"])
def test_every_app_mode(
    mode: str,
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    time_scale: float,
) -> None:
    emu = emulator_factory(app=ScriptedApp.echo(mode))  # type: ignore[arg-type]
    user = simulator(emu, default_settings, "safe", time_scale).user("oModes")
    assert user.say("mode test") == ["echo: mode test"]


# --- timing, retries and dedupe ------------------------------------------------------------


def test_repeated_delivery_starts_one_app_call(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    emu = emulator_factory()
    sim = simulator(emu, default_settings, "safe", time_scale)
    xml = sim.text("oDup", "same message")
    assert sim.deliver(xml).user_saw == ["echo: same message"]
    assert sim.deliver(xml).user_saw == ["echo: same message"]  # WeChat lost our first reply
    assert len(emu.app_calls) == 1


def test_without_a_worker_a_slow_app_gets_the_too_slow_reply(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    app = ScriptedApp.echo(latency=8 * time_scale)
    emu = emulator_factory(app=app)
    emu.blocked_paths.add("/wechat/worker")  # e.g. Dify's public URL unreachable from here
    sim = simulator(emu, default_settings, "safe", time_scale)
    delivery = sim.deliver(sim.text("oSlow", "think hard"))
    assert delivery.user_saw == [TIMEOUT_TEXT]
    assert WECHAT_FAILURE_TEXT not in delivery.user_saw
    assert delivery.attempts[0].timed_out
    assert len(emu.app_calls) == 1
    emu.wait_idle()
    assert emu.late_calls == []  # nothing touched a session after its request ended


def test_answer_just_after_the_first_deadline_arrives_with_the_retry(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any]
) -> None:
    # Real WeChat timing. The app finishes after the delivery's own deadline (4.4 s after
    # it arrived) but while that request may still store it (4.7 s): WeChat's retry at
    # 5 s gets the answer at once instead of a second app run.
    scale = 1.0
    app = ScriptedApp.echo()
    emu = emulator_factory(app=app, env={"WECHAT_PLUGIN_TIME_SCALE": str(scale)})
    sim = simulator(emu, default_settings, "safe", scale)
    sim.deliver(sim.text("oWarm", "warm up"))  # a fresh process is slower on its first call
    # The answer is complete 4.55 s after WeChat sent the message, however long the
    # plugin took to start the app (a loaded machine makes that vary).
    sent_at = time.monotonic()
    app.latency = lambda: sent_at + 4.55 - time.monotonic()
    delivery = sim.deliver(sim.text("oEdge", "borderline"))
    assert delivery.user_saw == ["echo: borderline"]
    answered = delivery.answered_by
    assert answered is not None and answered.index == 1
    assert answered.elapsed < 1.0
    assert len([c for c in emu.app_calls if c["query"] == "borderline"]) == 1


def test_two_plugin_processes_share_dedupe_and_conversations(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    app = ScriptedApp.echo(latency=7 * time_scale)
    emu = emulator_factory(app=app, processes=2)
    sim = simulator(emu, default_settings, "safe", time_scale)
    slow = sim.deliver(sim.text("oTwo", "slow one"))
    assert slow.user_saw == ["echo: slow one"]  # produced by the worker, seen by a retry
    assert len(emu.app_calls) == 1
    processes = {s["process"] for s in emu.sessions if "process" in s}
    assert len(processes) == 2  # the retries landed on the other process

    app.latency = 0.05
    user = sim.user("oTwo2")
    user.say("a")
    user.say("b")
    user.say("c")
    conversation_ids = {c["conversation_id"] for c in emu.app_calls[2:]}
    assert len(conversation_ids) == 1 and None not in conversation_ids


# --- formatting ---------------------------------------------------------------------------


def test_markdown_is_rendered_and_long_answers_are_fetched(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    sections = "\n\n".join(
        f"## 第{i}部分\n\n- **要点**：{'内容很长。' * 60}\n- 链接：[文档](https://example.com/{i})"
        for i in range(8)
    )

    def respond(req: Any) -> str:
        return "app saw: " + str(req.query) if req.query == "1" else sections

    emu = emulator_factory(app=ScriptedApp("chat", respond))
    user = simulator(emu, default_settings, "safe", time_scale).user("oLong")
    parts = [str(user.say("tell me everything")[0])]
    while "回复「1」" in parts[-1]:
        parts.append(str(user.say("1")[0]))
        assert len(parts) < 20
    assert len(parts) >= 3
    for part in parts:
        assert len(part.encode("utf-8")) <= 2048
        assert "**" not in part and "## " not in part
    text = "".join(parts)
    assert "【第0部分】" in text and "【第7部分】" in text
    assert "文档 (https://example.com/7)" in text
    assert len(emu.app_calls) == 1
    assert user.say("1") == ["app saw: 1"]  # nothing waiting: "1" is a normal message


def test_waiting_parts_survive_a_plugin_restart(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    long_answer = "\n\n".join(f"第{i}段。" + "内容" * 250 for i in range(3))
    emu = emulator_factory(app=ScriptedApp("chat", long_answer))
    sim = simulator(emu, default_settings, "safe", time_scale)
    user = sim.user("oRestart")
    first = str(user.say("long please")[0])
    assert "回复「1」" in first
    emu.restart_plugins()
    second = str(simulator(emu, default_settings, "safe", time_scale).user("oRestart").say("1")[0])
    assert second.startswith("第1段")
    assert len(emu.app_calls) == 1


def test_logs_hold_no_message_content_or_secrets(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    settings = {**default_settings, "app_secret": "APPSECRET0123456789abcdef01234567"}
    app = ScriptedApp("chat", "ANSWER-CANARY-42", error_after=None)
    emu = emulator_factory(app=app, settings=settings)
    sim = simulator(emu, settings, "safe", time_scale)
    sim.user("oPrivate").say("QUESTION-CANARY-17")
    failing = ScriptedApp("chat", "x", 0.05, error_after=0.01, error_message="upstream down")
    emu.app = failing
    sim.user("oPrivate").say("QUESTION-CANARY-18")
    sim.post_xml(sim.text("oMallory", "QUESTION-CANARY-19"), tamper="signature")
    emu.wait_idle()
    logs = emu.plugin_logs()
    for canary in ("QUESTION-CANARY-17", "QUESTION-CANARY-18", "QUESTION-CANARY-19"):
        assert canary not in logs
    assert "ANSWER-CANARY-42" not in logs
    assert_no_secret_in_logs(emu, settings)
    assert "upstream down" in logs  # the cause of a failure is logged
    assert "signature mismatch" in logs  # and so is the reason for a refusal
