"""Every answer arrives: the worker request, hand-off, push and fetch, under the daemon
emulator with WeChat's retry timing (scaled) and the loopback fake WeChat API.

Each test asserts what the user saw, in order (passive replies and pushed messages merged
by time), exactly one app invocation per message, and that no session was used after its
request ended.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import EmulatorFactory
from tests.emulator import DaemonEmulator, ScriptedApp, WeChatSimulator
from tests.emulator.wechat import Delivery
from tests.fake_wechat_api import FakeWeChatAPI

PUSH_WAIT = "问题有点复杂，我还在思考，想好了会马上发给你。"
FETCH_WAIT = "问题有点复杂，我还在思考。请稍后回复「1」获取答案。"
MORE = "（内容较长，回复「1」查看后续）"
PUSH_MORE = "（内容较长，后续部分马上发送）"
UNREAD = "\n\n（你还有一条之前的回答没有收到，回复「1」查看）"
TIMEOUT_TEXT = "抱歉，这个问题我需要想得久一点，没能及时回复。请稍后再问我一次。"


@pytest.fixture
def wechat_api() -> Iterator[FakeWeChatAPI]:
    with FakeWeChatAPI() as api:
        yield api


def settings_for(
    base: dict[str, Any], api: FakeWeChatAPI | None, mode: str, **extra: Any
) -> dict[str, Any]:
    settings = dict(base, delivery_mode=mode, **extra)
    if api is not None:
        settings.update(
            app_id=api.app_id, app_secret=api.app_secret, wechat_api_base_url=api.base_url
        )
    return settings


class Chat:
    """One follower: sends messages the way WeChat delivers them and sees passive replies
    and pushed messages in the order they arrived."""

    def __init__(
        self,
        emu: DaemonEmulator,
        settings: dict[str, Any],
        api: FakeWeChatAPI | None,
        openid: str,
        time_scale: float,
    ) -> None:
        self.emu = emu
        self.api = api
        self.openid = openid
        self.sim = WeChatSimulator(
            emu.url("/wechat"),
            settings["wechat_token"],
            settings["app_id"],
            settings.get("encoding_aes_key"),
            mode="safe",
            time_scale=time_scale,
        )
        self.passive: list[tuple[float, str]] = []

    def say(self, text: str) -> Delivery:
        if self.api is not None:
            self.api.user_interacted(self.openid)
        delivery = self.sim.deliver(self.sim.text(self.openid, text))
        answered = delivery.answered_by
        at = delivery.started_at + (answered.started + answered.elapsed if answered else 15)
        self.passive.extend((at, s) for s in delivery.user_saw if isinstance(s, str))
        return delivery

    def pushed(self) -> list[str]:
        return [] if self.api is None else [t for _, t in self.api.timed_texts(self.openid)]

    def seen(self) -> list[str]:
        pushes = [] if self.api is None else self.api.timed_texts(self.openid)
        return [text for _, text in sorted(self.passive + pushes)]

    def wait_pushed(self, count: int, timeout: float) -> list[str]:
        assert self.api is not None
        self.api.wait_until(lambda a: len(a.texts(self.openid)) >= count, timeout)
        return self.pushed()


def calls_for(emu: DaemonEmulator, query: str) -> int:
    return sum(1 for c in emu.app_calls if c["query"] == query)


def finish(emu: DaemonEmulator) -> None:
    """Every request over (workers included), and none used its session afterwards."""
    assert emu.wait_idle(timeout=30)
    assert emu.late_calls == []
    assert emu.errors == []


def long_answer(paragraphs: int) -> str:
    """Paragraphs of ~1.2 KB: each one fills one WeChat-sized part."""
    return "\n\n".join(f"第{i}段" + "内容" * 200 for i in range(1, paragraphs + 1))


# --- inside the window -------------------------------------------------------------------


@pytest.mark.parametrize(("latency", "answered_by"), [(1.0, 0), (7.0, 1), (12.0, 2)])
def test_answer_inside_the_window_comes_with_the_delivery_that_sees_it(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wechat_api: FakeWeChatAPI,
    time_scale: float,
    latency: float,
    answered_by: int,
) -> None:
    settings = settings_for(default_settings, wechat_api, "auto")
    emu = emulator_factory(app=ScriptedApp.echo(latency=latency * time_scale), settings=settings)
    chat = Chat(emu, settings, wechat_api, "oWin", time_scale)
    delivery = chat.say("hello")
    assert delivery.user_saw == ["echo: hello"]
    answered = delivery.answered_by
    assert answered is not None and answered.index == answered_by
    assert calls_for(emu, "hello") == 1
    finish(emu)
    assert chat.pushed() == []  # answered passively: nothing pushed on top
    assert chat.seen() == ["echo: hello"]


# --- after the window: push ----------------------------------------------------------------


@pytest.mark.parametrize("latency", [16.0, 60.0])
def test_push_delivers_a_late_answer_after_the_waiting_reply(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wechat_api: FakeWeChatAPI,
    time_scale: float,
    latency: float,
) -> None:
    settings = settings_for(default_settings, wechat_api, "push")
    emu = emulator_factory(app=ScriptedApp.echo(latency=latency * time_scale), settings=settings)
    chat = Chat(emu, settings, wechat_api, "oPush", time_scale)
    delivery = chat.say("slow question")
    assert delivery.user_saw == [PUSH_WAIT]
    assert chat.wait_pushed(1, timeout=latency * time_scale + 10) == ["echo: slow question"]
    finish(emu)
    assert chat.seen() == [PUSH_WAIT, "echo: slow question"]
    assert calls_for(emu, "slow question") == 1
    typing = [v for kind, v in wechat_api.timeline("oPush") if kind == "typing"]
    assert typing == ["Typing"]  # shown once, from the background, after the hand-off


def test_push_sends_the_rest_of_a_long_answer_after_the_passive_first_part(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wechat_api: FakeWeChatAPI,
    time_scale: float,
) -> None:
    answer = long_answer(3)
    settings = settings_for(default_settings, wechat_api, "push")
    emu = emulator_factory(app=ScriptedApp("chat", answer), settings=settings)
    chat = Chat(emu, settings, wechat_api, "oLong", time_scale)
    first = chat.say("tell me everything")
    assert first.text is not None and first.text.startswith("第1段")
    assert first.text.endswith(PUSH_MORE)
    rest = chat.wait_pushed(2, timeout=20)
    finish(emu)
    assert [p[:3] for p in rest] == ["第2段", "第3段"]
    assert all(MORE not in p and PUSH_MORE not in p for p in rest)
    assert [s[:3] for s in chat.seen()] == ["第1段", "第2段", "第3段"]
    assert calls_for(emu, "tell me everything") == 1


def test_quota_exhausted_mid_answer_leaves_the_rest_fetchable(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    time_scale: float,
) -> None:
    with FakeWeChatAPI(quota=2) as api:
        answer = long_answer(4)
        settings = settings_for(default_settings, api, "push")
        emu = emulator_factory(app=ScriptedApp("chat", answer), settings=settings)
        chat = Chat(emu, settings, api, "oQuota", time_scale)
        first = chat.say("very long")
        assert first.text is not None and first.text.startswith("第1段")
        pushed = chat.wait_pushed(2, timeout=20)
        assert emu.wait_idle(timeout=30)
        assert [p[:3] for p in pushed] == ["第2段", "第3段"]
        # The third push hit 45047: the last part waits for the keyword.
        fetched = chat.say("1")
        assert fetched.text is not None and fetched.text.startswith("第4段")
        assert MORE not in (fetched.text or "")
        assert [s[:3] for s in chat.seen()] == ["第1段", "第2段", "第3段", "第4段"]
        assert calls_for(emu, "very long") == 1
        assert calls_for(emu, "1") == 0
        finish(emu)


def test_an_expired_token_during_a_push_is_refreshed_once(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wechat_api: FakeWeChatAPI,
    time_scale: float,
) -> None:
    settings = settings_for(default_settings, wechat_api, "push")
    app = ScriptedApp.echo(latency=16 * time_scale)
    emu = emulator_factory(app=app, settings=settings)
    chat = Chat(emu, settings, wechat_api, "oToken", time_scale)
    warm = chat.say("first")  # fetches and caches a token
    assert warm.user_saw == [PUSH_WAIT]
    assert chat.wait_pushed(1, timeout=15) == ["echo: first"]
    assert emu.wait_idle(timeout=30)
    fetches = wechat_api.token_fetches
    wechat_api.expire_token()
    chat.say("second")
    assert chat.wait_pushed(2, timeout=15) == ["echo: first", "echo: second"]
    finish(emu)
    assert wechat_api.token_fetches == fetches + 1
    assert chat.seen() == [PUSH_WAIT, "echo: first", PUSH_WAIT, "echo: second"]


# --- after the window: fetch ---------------------------------------------------------------


def test_fetch_keeps_a_late_answer_for_the_keyword(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    settings = settings_for(default_settings, None, "fetch")
    emu = emulator_factory(app=ScriptedApp.echo(latency=16 * time_scale), settings=settings)
    chat = Chat(emu, settings, None, "oFetch", time_scale)
    assert chat.say("slow").user_saw == [FETCH_WAIT]
    assert emu.wait_idle(timeout=30)  # the app has finished meanwhile
    assert chat.say("1").user_saw == ["echo: slow"]
    # Nothing waits any more: the keyword is an ordinary message again.
    emu.app.latency = 0
    assert chat.say("1").user_saw == ["echo: 1"]
    assert calls_for(emu, "slow") == 1
    finish(emu)


def test_fetch_while_the_app_is_still_working_waits_for_it(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    settings = settings_for(default_settings, None, "fetch")
    emu = emulator_factory(app=ScriptedApp.echo(latency=22 * time_scale), settings=settings)
    chat = Chat(emu, settings, None, "oEarly", time_scale)
    assert chat.say("slow").user_saw == [FETCH_WAIT]
    # Sent right away: the answer is ready ~7 s (scaled) later, inside this message's
    # own deliveries.
    fetched = chat.say("1")
    assert fetched.user_saw == ["echo: slow"]
    answered = fetched.answered_by
    assert answered is not None and answered.index >= 1
    assert calls_for(emu, "slow") == 1 and calls_for(emu, "1") == 0
    finish(emu)


def test_fetch_serves_long_answers_part_by_part_oldest_first(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    settings = settings_for(default_settings, None, "fetch")

    def respond(req: Any) -> str:
        return long_answer(2) if req.query == "long" else f"echo: {req.query}"

    emu = emulator_factory(app=ScriptedApp("chat", respond), settings=settings)
    chat = Chat(emu, settings, None, "oParts", time_scale)
    first = chat.say("long")
    assert first.text is not None and first.text.startswith("第1段") and first.text.endswith(MORE)
    # A new question while part 2 waits gets its own answer; the rest stays fetchable.
    assert chat.say("another").user_saw == ["echo: another"]
    second = chat.say("1")
    assert second.text is not None and second.text.startswith("第2段")
    assert not second.text.endswith(MORE)
    assert chat.say("1").user_saw == ["echo: 1"]
    finish(emu)


# --- auto ------------------------------------------------------------------------------------


def test_auto_falls_back_to_fetch_after_48001_and_remembers_it(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wechat_api: FakeWeChatAPI,
    time_scale: float,
) -> None:
    settings = settings_for(default_settings, wechat_api, "auto")
    emu = emulator_factory(app=ScriptedApp.echo(latency=16 * time_scale), settings=settings)
    wechat_api.fail(48001, times=1, path="/cgi-bin/message/custom/send")
    chat = Chat(emu, settings, wechat_api, "oAuto", time_scale)
    assert chat.say("first").user_saw == [PUSH_WAIT]
    assert emu.wait_idle(timeout=30)
    assert chat.pushed() == []
    # The push was refused: the answer waits for the keyword.
    assert chat.say("1").user_saw == ["echo: first"]
    # Auto mode remembers the 48001: the next late answer is handed off for fetching.
    assert chat.say("second").user_saw == [FETCH_WAIT]
    assert emu.wait_idle(timeout=30)
    assert chat.say("1").user_saw == ["echo: second"]
    assert chat.pushed() == []
    assert calls_for(emu, "first") == 1 and calls_for(emu, "second") == 1
    finish(emu)


def test_auto_without_app_secret_fetches(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    settings = settings_for(default_settings, None, "auto")
    emu = emulator_factory(app=ScriptedApp.echo(latency=16 * time_scale), settings=settings)
    chat = Chat(emu, settings, None, "oNoSecret", time_scale)
    assert chat.say("q").user_saw == [FETCH_WAIT]
    assert emu.wait_idle(timeout=30)
    assert chat.say("1").user_saw == ["echo: q"]
    finish(emu)


# --- processes, restarts, unreachable worker ------------------------------------------------


def test_two_processes_round_robin_deliver_once(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wechat_api: FakeWeChatAPI,
    time_scale: float,
) -> None:
    settings = settings_for(default_settings, wechat_api, "push")
    emu = emulator_factory(
        app=ScriptedApp.echo(latency=12 * time_scale), settings=settings, processes=2
    )
    chat = Chat(emu, settings, wechat_api, "oTwoProc", time_scale)
    assert chat.say("inside").user_saw == ["echo: inside"]
    emu.app.latency = 16 * time_scale
    assert chat.say("after").user_saw == [PUSH_WAIT]
    assert chat.wait_pushed(1, timeout=15) == ["echo: after"]
    finish(emu)
    assert {s["process"] for s in emu.sessions} == {0, 1}
    assert chat.seen() == ["echo: inside", PUSH_WAIT, "echo: after"]
    assert calls_for(emu, "inside") == 1 and calls_for(emu, "after") == 1


def test_a_restart_between_hand_off_and_fetch_loses_nothing(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    settings = settings_for(default_settings, None, "fetch")
    emu = emulator_factory(app=ScriptedApp.echo(latency=16 * time_scale), settings=settings)
    chat = Chat(emu, settings, None, "oRestart", time_scale)
    assert chat.say("kept").user_saw == [FETCH_WAIT]
    assert emu.wait_idle(timeout=30)
    emu.restart_plugins()
    assert chat.say("1").user_saw == ["echo: kept"]
    assert calls_for(emu, "kept") == 1
    finish(emu)


def test_unreachable_worker_falls_back_inside_the_window_and_says_why(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    settings = settings_for(default_settings, None, "auto")
    emu = emulator_factory(app=ScriptedApp.echo(latency=0.2 * time_scale), settings=settings)
    emu.blocked_paths.add("/wechat/worker")
    chat = Chat(emu, settings, None, "oFallback", time_scale)
    assert chat.say("quick").user_saw == ["echo: quick"]
    assert chat.say("again").user_saw == ["echo: again"]
    finish(emu)
    logs = emu.plugin_logs()
    assert logs.count("could not be reached") == 1  # logged once, not per message
    page = requests.get(emu.url("/wechat"), timeout=10).text
    assert "Unreachable" in page and "HTTP 404" in page
    assert calls_for(emu, "quick") == 1 and calls_for(emu, "again") == 1


def test_status_page_shows_a_reachable_worker(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    emu = emulator_factory(settings=default_settings)
    chat = Chat(emu, default_settings, None, "oOk", time_scale)
    assert chat.say("hi").user_saw == ["echo: hi"]
    finish(emu)
    page = requests.get(emu.url("/wechat"), timeout=10).text
    assert "Reachable at http://127.0.0.1" in page
    assert "/e/" not in page.split("Reachable at", 1)[1].split("<", 1)[0]


# --- forged worker calls -----------------------------------------------------------------


def test_forged_worker_calls_are_refused_without_side_effects(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    emu = emulator_factory(settings=default_settings)
    url = emu.url("/wechat/worker")
    ticket = (
        b'{"job":"abc","owner":"x","openid":"oEvil","query":"burn credits",'
        b'"inputs":{},"arrived_at":0}'
    )
    now = str(int(time.time()))
    writes_before = [c for c in emu.storage_calls if c["opt"] in ("set", "del")]
    cases = [
        {},  # no signature at all
        {"X-Wechat-Bridge-Timestamp": now, "X-Wechat-Bridge-Signature": "0" * 64},
        {
            "X-Wechat-Bridge-Timestamp": str(int(time.time()) - 3600),
            "X-Wechat-Bridge-Signature": "0" * 64,
        },
    ]
    for headers in cases:
        r = requests.post(url, data=ticket, headers=headers, timeout=10)
        assert r.status_code == 403, headers
    finish(emu)
    assert emu.app_calls == []
    assert [c for c in emu.storage_calls if c["opt"] in ("set", "del")] == writes_before


def test_a_replayed_worker_call_does_not_run_the_app_again(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    captured: list[tuple[bytes, dict[str, str]]] = []
    emu = emulator_factory(settings=default_settings)
    chat = Chat(emu, default_settings, None, "oReplay", time_scale)
    assert chat.say("once").user_saw == ["echo: once"]
    finish(emu)
    # Rebuild the worker call the plugin made, signed as the plugin signs it.
    from endpoints.wechat.settings import load_settings
    from endpoints.wechat.worker_link import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, worker_key

    job = next(k.rsplit("/", 1)[1] for k in emu.storage if "/job/" in k)
    import json

    record = json.loads(emu.storage[next(k for k in emu.storage if k.endswith("/job/" + job))])
    body = json.dumps(
        {
            "job": job,
            "owner": record["owner"],
            "openid": "oReplay",
            "query": "once",
            "inputs": {},
            "arrived_at": time.time(),
        }
    ).encode()
    ts = str(int(time.time()))
    key = worker_key(load_settings(default_settings), emu.endpoint_id)
    headers = {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: sign(key, ts, body)}
    captured.append((body, headers))
    r = requests.post(emu.url("/wechat/worker"), data=body, headers=headers, timeout=10)
    assert r.status_code == 409
    finish(emu)
    assert calls_for(emu, "once") == 1


# --- very slow apps ------------------------------------------------------------------------


def test_a_five_minute_answer_still_arrives(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], wechat_api: FakeWeChatAPI
) -> None:
    scale = 0.2  # WeChat's timing and the app's 300 s, both at a fifth (0.1 is load-sensitive)
    settings = settings_for(default_settings, wechat_api, "push")
    emu = emulator_factory(
        app=ScriptedApp.echo(latency=300 * scale),
        settings=settings,
        env={"WECHAT_PLUGIN_TIME_SCALE": str(scale)},
        max_execution_timeout=120,
    )
    chat = Chat(emu, settings, wechat_api, "oFive", scale)
    assert chat.say("deep research").user_saw == [PUSH_WAIT]
    assert chat.wait_pushed(1, timeout=300 * scale + 15) == ["echo: deep research"]
    finish(emu)
    assert chat.seen() == [PUSH_WAIT, "echo: deep research"]
    assert calls_for(emu, "deep research") == 1


def test_after_a_failed_push_the_next_reply_says_how_to_get_the_answer(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wechat_api: FakeWeChatAPI,
    time_scale: float,
) -> None:
    settings = settings_for(default_settings, wechat_api, "push")
    app = ScriptedApp.echo(latency=16 * time_scale)
    emu = emulator_factory(app=app, settings=settings)
    wechat_api.fail(45015, times=1, path="/cgi-bin/message/custom/send")
    chat = Chat(emu, settings, wechat_api, "oUnread", time_scale)
    assert chat.say("lost push").user_saw == [PUSH_WAIT]
    assert emu.wait_idle(timeout=30)
    assert chat.pushed() == []
    app.latency = 0
    told = chat.say("next")
    assert told.user_saw == ["echo: next" + UNREAD]
    assert chat.say("again").user_saw == ["echo: again"]  # told once
    assert chat.say("1").user_saw == ["echo: lost push"]
    assert calls_for(emu, "lost push") == 1
    finish(emu)


def test_fetch_before_a_very_slow_answer_is_ready_says_to_try_again(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any], time_scale: float
) -> None:
    settings = settings_for(default_settings, None, "fetch")
    emu = emulator_factory(app=ScriptedApp.echo(latency=34 * time_scale), settings=settings)
    chat = Chat(emu, settings, None, "oPatient", time_scale)
    assert chat.say("slow").user_saw == [FETCH_WAIT]
    # Asked at once: the answer is still not ready by this message's last delivery.
    early = chat.say("1")
    assert early.user_saw == [FETCH_WAIT]
    assert emu.wait_idle(timeout=30)
    assert chat.say("1").user_saw == ["echo: slow"]
    assert calls_for(emu, "slow") == 1 and calls_for(emu, "1") == 0
    finish(emu)
