"""The daemon emulator's own tests, against a tiny throw-away plugin generated per module.

The plugin (written to a temp dir) has endpoints that echo the request, read/write storage,
call the scripted app, touch storage after their request ended, and answer WeChat pushes
(with wechatpy for the encrypted modes) — enough to check that the emulator runs a plugin the
way Dify does and enforces the session lifetime rule (DESIGN §3).
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import EmulatorFactory, make_aes_key
from tests.emulator import (
    DEFAULT_APP_ID,
    WECHAT_FAILURE_TEXT,
    AppInvocationError,
    DaemonEmulator,
    ScriptedApp,
    WeChatSimulator,
    build_raw_request,
    sorted_query,
)

pytestmark = pytest.mark.integration

# --------------------------------------------------------------------------- the plugin

MANIFEST = """\
version: 0.0.1
type: plugin
author: emulator-smoke
name: emulator_smoke
label:
  en_US: Emulator smoke plugin
description:
  en_US: Throw-away plugin for the daemon emulator's own tests.
icon: icon.svg
resource:
  memory: 268435456
  permission:
    endpoint:
      enabled: true
    app:
      enabled: true
    storage:
      enabled: true
      size: 1048576
plugins:
  endpoints:
    - group/smoke.yaml
meta:
  version: 0.0.1
  arch:
    - amd64
    - arm64
  runner:
    language: python
    version: "3.12"
    entrypoint: main
created_at: 2026-01-01T00:00:00Z
"""

MAIN = """\
from dify_plugin import DifyPluginEnv, Plugin

plugin = Plugin(DifyPluginEnv(MAX_REQUEST_TIMEOUT=120))

if __name__ == "__main__":
    plugin.run()
"""

ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 8 8"><rect width="8" height="8"/></svg>'
)

_HEADER = """\
import json
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping

from werkzeug import Request, Response

from dify_plugin import Endpoint


def log(*parts):
    print(*parts, flush=True)
"""

# name -> (method, path, class body)
ENDPOINTS: dict[str, tuple[str, str, str]] = {
    "echo": (
        "POST",
        "/echo",
        """
        class Echo(Endpoint):
            def _invoke(self, r: Request, values: Mapping, settings: Mapping) -> Response:
                info = {
                    "method": r.method,
                    "path": r.path,
                    "query": r.query_string.decode(),
                    "headers": dict(r.headers.items()),
                    "body": r.get_data(as_text=True),
                    "greeting": settings.get("greeting"),
                    "endpoint_id": self.session.endpoint_id,
                    "session_id": self.session.session_id,
                }
                return Response(json.dumps(info), status=201, content_type="application/json")
        """,
    ),
    "kv_get": (
        "GET",
        "/kv/<key>",
        """
        class KvGet(Endpoint):
            def _invoke(self, r: Request, values: Mapping, settings: Mapping) -> Response:
                try:
                    return Response(self.session.storage.get(values["key"]), status=200)
                except Exception as exc:
                    return Response(f"{type(exc).__name__}: {exc}", status=404)
        """,
    ),
    "kv_set": (
        "POST",
        "/kv/<key>",
        """
        class KvSet(Endpoint):
            def _invoke(self, r: Request, values: Mapping, settings: Mapping) -> Response:
                try:
                    self.session.storage.set(values["key"], r.get_data())
                    return Response("stored", status=200)
                except Exception as exc:
                    return Response(f"{type(exc).__name__}: {exc}", status=400)
        """,
    ),
    "chat": (
        "POST",
        "/chat",
        """
        class Chat(Endpoint):
            def _invoke(self, r: Request, values: Mapping, settings: Mapping) -> Response:
                mode = r.args.get("mode", "streaming")
                app_id = settings["app"]["app_id"]
                query = r.get_data(as_text=True)
                cid = r.args.get("conversation_id") or None
                events, answer, out_cid = [], "", None
                try:
                    if r.args.get("kind") == "workflow":
                        res = self.session.app.workflow.invoke(app_id, {"query": query}, mode)
                    else:
                        res = self.session.app.chat.invoke(
                            app_id, query, {}, mode, conversation_id=cid
                        )
                    if mode == "blocking":
                        return Response(json.dumps({"blocking": res}), status=200)
                    for chunk in res:
                        events.append(chunk.get("event"))
                        answer += chunk.get("answer") or (chunk.get("data") or {}).get("text") or ""
                        out_cid = chunk.get("conversation_id") or out_cid
                    log("APP_DONE", self.session.session_id, events[-1] if events else None)
                    body = {"events": events, "answer": answer, "conversation_id": out_cid}
                    return Response(json.dumps(body), status=200)
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    log("APP_FAILED", self.session.session_id, error)
                    try:
                        self.session.storage.set("after-app-failure", b"x")
                        log("AFTER_FAILURE_STORAGE ok")
                    except Exception as exc2:
                        log("AFTER_FAILURE_STORAGE", type(exc2).__name__, exc2)
                    return Response(json.dumps({"events": events, "error": error}), status=200)
        """,
    ),
    "late": (
        "POST",
        "/late",
        """
        class Late(Endpoint):
            def _invoke(self, r: Request, values: Mapping, settings: Mapping) -> Response:
                session = self.session

                def later():
                    time.sleep(0.3)
                    t0 = time.monotonic()
                    try:
                        session.storage.set("late-key", b"late")
                        log("LATE_RESULT ok")
                    except Exception as exc:
                        took = time.monotonic() - t0
                        log("LATE_RESULT", type(exc).__name__, repr(exc), f"after={took:.2f}s")

                threading.Thread(target=later, daemon=True).start()
                return Response("ok", status=200)
        """,
    ),
    "wx": (
        "POST",
        "/wx",
        """
        from wechatpy.crypto import WeChatCrypto


        class Wx(Endpoint):
            def _invoke(self, r: Request, values: Mapping, settings: Mapping) -> Response:
                a = r.args
                body = r.get_data(as_text=True)
                crypto = None
                if a.get("encrypt_type") == "aes":
                    crypto = WeChatCrypto(
                        settings["wechat_token"], settings["encoding_aes_key"], settings["app_id"]
                    )
                    body = crypto.decrypt_message(
                        body, a["msg_signature"], a["timestamp"], a["nonce"]
                    )
                msg = {child.tag: child.text for child in ET.fromstring(body)}
                key = "count-" + (msg.get("MsgId") or msg["FromUserName"] + msg["CreateTime"])
                storage = self.session.storage
                n = 1 + (int(storage.get(key)) if storage.exist(key) else 0)
                storage.set(key, str(n).encode())
                slow_first = float(a.get("slow_first") or 0)
                sleep = float(a.get("sleep") or 0) or (slow_first if n == 1 else 0)
                if sleep:
                    time.sleep(sleep)
                if msg.get("MsgType") != "text":
                    return Response("success", status=200)
                reply = (
                    "<xml><ToUserName><![CDATA[{to}]]></ToUserName>"
                    "<FromUserName><![CDATA[{fr}]]></FromUserName>"
                    "<CreateTime>{ts}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
                    "<Content><![CDATA[{text}]]></Content></xml>"
                ).format(
                    to=msg["FromUserName"],
                    fr=msg["ToUserName"],
                    ts=int(time.time()),
                    text=f"got: {msg['Content']} (delivery {n})".replace("]]>", "]]]]><![CDATA[>"),
                )
                if crypto is not None:
                    reply = crypto.encrypt_message(reply, a["nonce"])
                return Response(reply, status=200, content_type="application/xml")
        """,
    ),
    "boom": (
        "POST",
        "/boom",
        """
        class Boom(Endpoint):
            def _invoke(self, r: Request, values: Mapping, settings: Mapping) -> Response:
                def gen():
                    yield b"part1;"
                    raise RuntimeError("kaboom")

                return Response(gen(), status=200, content_type="text/plain")
        """,
    ),
}


def write_plugin(root: Path) -> Path:
    """Write the throw-away plugin into ``root`` and return it."""
    (root / "_assets").mkdir(parents=True)
    (root / "group").mkdir()
    (root / "endpoints").mkdir()
    (root / "manifest.yaml").write_text(MANIFEST)
    (root / "main.py").write_text(MAIN)
    (root / "_assets" / "icon.svg").write_text(ICON)
    group = [
        "settings:",
        "  - name: greeting",
        "    type: text-input",
        "    required: false",
        "    label:",
        "      en_US: Greeting",
        "endpoints:",
    ]
    for name, (method, path, body) in ENDPOINTS.items():
        group.append(f"  - endpoints/{name}.yaml")
        (root / "endpoints" / f"{name}.yaml").write_text(
            f'path: "{path}"\nmethod: "{method}"\nextra:\n  python:\n'
            f'    source: "endpoints/{name}.py"\n'
        )
        (root / "endpoints" / f"{name}.py").write_text(_HEADER + textwrap.dedent(body))
    (root / "group" / "smoke.yaml").write_text("\n".join(group) + "\n")
    return root


SETTINGS: dict[str, Any] = {
    "app": {"app_id": DEFAULT_APP_ID, "inputs": {}, "files": []},
    "greeting": "hello",
    "wechat_token": "smoketoken123",
    "app_id": "wx1234567890abcdef",
    "encoding_aes_key": make_aes_key(),
}

SCALE = 0.2  # WeChat's 5 s → 1 s in these tests


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_plugin(tmp_path_factory.mktemp("smoke-plugin"))


@pytest.fixture(scope="module")
def emu(plugin_dir: Path) -> Iterator[DaemonEmulator]:
    """Two plugin processes sharing one storage (round-robin dispatch)."""
    with DaemonEmulator(SETTINGS, ScriptedApp.echo(), processes=2, plugin_dir=plugin_dir) as e:
        yield e
        assert e.errors == []


@pytest.fixture(autouse=True)
def _fresh_app(request: pytest.FixtureRequest) -> None:
    if "emu" in request.fixturenames:
        emulator: DaemonEmulator = request.getfixturevalue("emu")
        emulator.wait_idle(10)
        emulator.app = ScriptedApp.echo()


def _sim(emu: DaemonEmulator, mode: str = "plain", **kwargs: Any) -> WeChatSimulator:
    return WeChatSimulator(
        emu.url("/wx"),
        SETTINGS["wechat_token"],
        SETTINGS["app_id"],
        SETTINGS["encoding_aes_key"],
        mode=mode,  # type: ignore[arg-type]
        time_scale=SCALE,
        **kwargs,
    )


# --------------------------------------------------------------------------- pure units


def test_sorted_query_and_raw_request() -> None:
    assert sorted_query("nonce=2&b=x+y&a=1&a=0&empty=") == "a=1&a=0&b=x+y&empty=&nonce=2"
    raw = build_raw_request(
        "POST",
        "/wechat",
        "a=1",
        [
            ("Content-Type", "text/xml"),
            ("X-Forwarded-For", "1.2.3.4"),
            ("x_under", "dropped"),
            ("Dify-Hook-Url", "http://evil/"),
        ],
        b"<xml/>",
        hook_id="h1",
        hook_url="http://127.0.0.1:1/e/h1/wechat?a=1",
        host="example.com",
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /wechat?a=1 HTTP/1.1"
    assert lines[1:4] == [
        "Host: example.com",
        "User-Agent: Go-http-client/1.1",
        "Content-Length: 6",
    ]
    assert "Dify-Hook-Url: http://127.0.0.1:1/e/h1/wechat?a=1" in lines
    assert "Dify-Hook-Id: h1" in lines
    assert not any(x.lower().startswith(("x-forwarded-for", "x_under")) for x in lines)
    assert body == b"<xml/>"


@pytest.mark.parametrize("mode", ["chat", "advanced-chat", "agent-chat", "workflow", "completion"])
def test_scripted_app_event_shapes(mode: str) -> None:
    app = ScriptedApp.echo(mode, latency=0.3)  # type: ignore[arg-type]
    plan = app.plan(
        {
            "app_id": DEFAULT_APP_ID,
            "query": "hi",
            "inputs": {"query": "hi"},
            "response_mode": "streaming",
        }
    )
    events = [c["event"] for _, c in plan.events]
    times = [t for t, _ in plan.events]
    assert times == sorted(times) and times[-1] == pytest.approx(0.3)
    if mode == "workflow":
        assert events[0] == "workflow_started" and events[-1] == "workflow_finished"
        text = "".join(c["data"]["text"] for _, c in plan.events if c["event"] == "text_chunk")
        assert plan.events[-1][1]["data"]["outputs"] == {"text": "echo: hi"}
        assert plan.events[-1][1]["data"]["status"] == "succeeded"
        assert plan.conversation_id is None
    else:
        delta = "agent_message" if mode == "agent-chat" else "message"
        text = "".join(c["answer"] for _, c in plan.events if c["event"] == delta)
        assert events[-1] == "message_end"
        cids = {c.get("conversation_id") for _, c in plan.events}
        if mode == "completion":
            assert cids == {None}
        else:
            assert cids == {plan.conversation_id} and plan.conversation_id
    assert text == "echo: hi"


def test_scripted_app_rules_and_conversations() -> None:
    chat = ScriptedApp.echo("chat")
    base = {"app_id": DEFAULT_APP_ID, "inputs": {}, "response_mode": "blocking"}
    with pytest.raises(AppInvocationError, match="missing query"):
        chat.plan({**base, "query": ""})
    with pytest.raises(AppInvocationError, match="Conversation Not Exists"):
        chat.plan({**base, "query": "x", "conversation_id": "nope"})
    with pytest.raises(AppInvocationError, match="app not found"):
        chat.plan({**base, "query": "x", "app_id": "other"})
    with pytest.raises(AppInvocationError, match="does not support blocking"):
        ScriptedApp.echo("agent-chat").plan({**base, "query": "x"})
    first = chat.plan({**base, "query": "one"})
    assert first.blocking_result is not None and first.blocking_result["answer"] == "echo: one"
    cid = first.conversation_id
    assert cid is not None
    chat.plan({**base, "query": "two", "conversation_id": cid})
    assert chat.history(cid) == [("one", "echo: one"), ("two", "echo: two")]
    wf = ScriptedApp.echo("workflow").plan({**base, "inputs": {"query": "q"}, "query": None})
    assert wf.blocking_result is not None
    assert wf.blocking_result["data"]["outputs"] == {"text": "echo: q"}

    failing = ScriptedApp(
        "chat", "partial answer", latency=1.0, error_after=0.5, error_message="boom"
    )
    plan = failing.plan({**base, "query": "x", "response_mode": "streaming"})
    assert plan.events[-1][0] == 0.5
    assert plan.events[-1][1]["event"] == "error" and plan.events[-1][1]["message"] == "boom"
    assert all(c["event"] != "message_end" for _, c in plan.events)
    assert plan.blocking_error == "boom"


# --------------------------------------------------------------------------- under the plugin


def test_request_round_trip(emu: DaemonEmulator) -> None:
    r = requests.post(
        emu.url("/echo") + "?z=2&a=1&a=0",
        data="body ✓".encode(),
        headers={"X-Forwarded-For": "9.9.9.9", "Content-Type": "text/plain"},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["method"] == "POST"
    assert info["path"] == "/echo"
    assert info["query"] == "a=1&a=0&z=2"  # re-encoded with sorted keys
    assert info["body"] == "body ✓"
    assert info["greeting"] == "hello"
    assert info["endpoint_id"] == emu.endpoint_id
    headers = {k.lower(): v for k, v in info["headers"].items()}
    assert "x-forwarded-for" not in headers
    assert headers["dify-hook-id"] == emu.hook_id
    assert headers["dify-hook-url"] == emu.url("/echo") + "?z=2&a=1&a=0"
    assert emu.wait_idle(2)  # the session closes just after the response is finished
    sessions = {s["session_id"]: s for s in emu.sessions}
    assert sessions[info["session_id"]]["end_reason"] == "response"

    missing = requests.get(emu.url("/nope"), timeout=10)
    assert missing.status_code == 404 and "Failed to dispatch" in missing.text
    wrong_hook = requests.get(emu.daemon_url + "/e/other/echo", timeout=10)
    assert wrong_hook.status_code == 404
    assert emu.late_calls == []


def test_storage_shared_between_processes(emu: DaemonEmulator) -> None:
    before = len(emu.sessions)
    assert requests.post(emu.url("/kv/shared"), data=b"\x00\xffv1", timeout=10).text == "stored"
    got = requests.get(emu.url("/kv/shared"), timeout=10)
    assert got.status_code == 200 and got.content == b"\x00\xffv1"
    procs = [s["process"] for s in emu.sessions[before:]]
    assert sorted(procs) == [0, 1]  # set on one process, read on the other
    assert emu.storage["shared"] == b"\x00\xffv1"

    missing = requests.get(emu.url("/kv/never-set"), timeout=10)
    assert missing.status_code == 404 and "load data failed" in missing.text
    bad = requests.post(emu.url("/kv/a..b"), data=b"x", timeout=10)
    assert bad.status_code == 400 and "path traversal" in bad.text


def test_app_calls_through_the_plugin(emu: DaemonEmulator) -> None:
    r = requests.post(emu.url("/chat"), data="hi", timeout=10).json()
    assert r["answer"] == "echo: hi" and r["events"][-1] == "message_end"
    cid = r["conversation_id"]
    r2 = requests.post(emu.url("/chat") + f"?conversation_id={cid}", data="again", timeout=10)
    assert r2.json()["conversation_id"] == cid
    assert emu.app.history(cid) == [("hi", "echo: hi"), ("again", "echo: again")]

    blocking = requests.post(emu.url("/chat") + "?mode=blocking", data="b", timeout=10).json()
    assert blocking["blocking"]["answer"] == "echo: b"

    stale = requests.post(emu.url("/chat") + "?conversation_id=gone", data="x", timeout=10)
    assert "Conversation Not Exists." in stale.json()["error"]

    emu.app = ScriptedApp.echo("workflow")
    wf = requests.post(emu.url("/chat") + "?kind=workflow", data="w", timeout=10).json()
    assert wf["answer"] == "echo: w" and wf["events"][-1] == "workflow_finished"
    emu.app = ScriptedApp.echo("agent-chat")
    agent = requests.post(emu.url("/chat") + "?mode=blocking", data="x", timeout=10).json()
    assert "does not support blocking mode" in agent["error"]

    calls = emu.app_calls[-6:]
    assert [c["query"] for c in calls[:4]] == ["hi", "again", "b", "x"]
    assert all(not c["cut"] for c in calls)


def test_session_cut_stops_app_stream_and_late_calls_fail_fast(emu: DaemonEmulator) -> None:
    emu.app = ScriptedApp.echo("chat", latency=3.0, chunks=6)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(emu.url("/chat"), data="slow", timeout=0.6)
    assert emu.wait_for(lambda: bool(emu.app_calls) and emu.app_calls[-1]["cut"], timeout=3)
    call = emu.app_calls[-1]
    assert call["query"] == "slow"
    assert 0 < call["chunks_sent"] < 8
    assert call["ended"] - call["started"] < 1.5
    session = next(s for s in emu.sessions if s["session_id"] == call["session_id"])
    assert session["end_reason"] == "client_disconnect"
    # the plugin saw the cut stream fail, then its storage call for the dead session failed fast
    assert emu.wait_for(lambda: "AFTER_FAILURE_STORAGE KeyError" in emu.plugin_logs(), 5)
    late = [c for c in emu.late_calls if c["session_id"] == call["session_id"]]
    assert late and late[0]["type"] == "storage" and late[0]["reason"] == "session_closed"

    # a thread that outlives its request: its storage call lands in late_calls, fails at once
    t0 = time.monotonic()
    r = requests.post(emu.url("/late"), timeout=10)
    assert r.text == "ok"
    assert emu.wait_for(lambda: any(c["request"].get("key") == "late-key" for c in emu.late_calls))
    assert time.monotonic() - t0 < 3
    assert emu.wait_for(lambda: "LATE_RESULT KeyError" in emu.plugin_logs(), 5)
    assert "late-key" not in emu.storage


def test_cut_mode_end_truncates_the_stream_cleanly(emu: DaemonEmulator) -> None:
    emu.app = ScriptedApp.echo("chat", latency=2.0, chunks=4)
    emu.cut_mode = "end"
    try:
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.post(emu.url("/chat"), data="slow", timeout=0.7)
        assert emu.wait_for(lambda: bool(emu.app_calls) and emu.app_calls[-1]["cut"], timeout=3)
        sid = emu.app_calls[-1]["session_id"]
        # the plugin's generator just ended: last event a delta, never message_end
        assert emu.wait_for(lambda: f"APP_DONE {sid} message\n" in emu.plugin_logs(), 5)
    finally:
        emu.cut_mode = "abort"


def test_wechat_timing_all_attempts_time_out(emu: DaemonEmulator) -> None:
    sim = _sim(emu)
    sim.url = emu.url("/wx") + "?sleep=1.6"
    before = len(emu.sessions)
    d = sim.deliver(sim.text("o_user", "hello"))
    assert d.user_saw == [WECHAT_FAILURE_TEXT]
    assert [a.timed_out for a in d.attempts] == [True, True, True]
    starts = [a.started for a in d.attempts]
    for i, s in enumerate(starts):
        assert s == pytest.approx(i * 5 * SCALE, abs=0.15)
    assert all(a.elapsed == pytest.approx(5 * SCALE, abs=0.15) for a in d.attempts)
    # WeChat hung up → each delivery's session ended at its deadline, not when the plugin returned
    assert emu.wait_idle(2)
    ends = [s for s in emu.sessions[before:] if s["path"] == "/wx"]
    assert len(ends) == 3, ends
    assert all(s["end_reason"] == "client_disconnect" for s in ends), ends
    assert all(s["ended"] - s["started"] < 5 * SCALE + 0.2 for s in ends)


@pytest.mark.parametrize("mode", ["plain", "compatible", "safe"])
def test_wechat_retry_then_reply(emu: DaemonEmulator, mode: str) -> None:
    sim = _sim(emu, mode)
    sim.url = emu.url("/wx") + "?slow_first=1.3"
    user = sim.user("o_retry")
    seen = user.say("ping ]]> <b>")
    assert seen == ["got: ping ]]> <b> (delivery 2)"]
    assert user.last is not None
    attempts = user.last.attempts
    assert [a.timed_out for a in attempts] == [True, False]
    assert attempts[1].started == pytest.approx(5 * SCALE, abs=0.15)
    if mode != "plain":
        assert b"<Encrypt>" in attempts[1].body and b"MsgSignature" in attempts[1].body


def test_wechat_judges_replies(emu: DaemonEmulator) -> None:
    sim = _sim(emu, "safe")
    d = sim.deliver(sim.event("o_evt", "subscribe"))
    assert d.user_saw == [] and len(d.attempts) == 1  # "success": nothing shown, no retry
    body = sim.post_xml(sim.text("o_x", "hi")).content
    assert sim.open_reply(body)[0]["Content"] == "got: hi (delivery 1)"
    other = WeChatSimulator(
        sim.url, "another-token", SETTINGS["app_id"], SETTINGS["encoding_aes_key"], mode="safe"
    )
    with pytest.raises(ValueError, match="MsgSignature"):
        other.open_reply(body)
    plain = _sim(emu, "plain")
    plain.url = emu.url("/kv/not-xml")  # answers 200 "stored": not XML → WeChat's error text
    d = plain.deliver(plain.text("o_x", "hi"))
    assert d.user_saw == [WECHAT_FAILURE_TEXT] and "not XML" in (d.problem or "")
    assert len(d.attempts) == 1
    assert sim.verify_url().status_code == 404  # no GET /wx: the SDK maps 405 to 404


def test_restart_keeps_storage(emulator_factory: EmulatorFactory, plugin_dir: Path) -> None:
    emu = emulator_factory(settings=SETTINGS, plugin_dir=plugin_dir, env={"SMOKE_MARK": "1"})
    assert requests.post(emu.url("/kv/k"), data=b"v", timeout=10).status_code == 200
    old_pid = emu.processes[0].pid
    emu.restart_plugins()
    assert emu.processes[0].pid != old_pid
    assert requests.get(emu.url("/kv/k"), timeout=10).content == b"v"
    assert "smoketoken123" not in emu.plugin_logs()
    assert "POST /invoke" in emu.plugin_logs()


def test_plugin_errors(emu: DaemonEmulator) -> None:
    # an error after the stream started: status kept, the daemon appends the error text
    r = requests.post(emu.url("/boom"), timeout=10)
    assert r.status_code == 200
    assert r.text.startswith("part1;PluginInvokeError:") and "kaboom" in r.text
    # an underscore header never reaches the SDK (nginx drops it; h11 would reject it)
    r = requests.post(emu.url("/echo"), headers={"x_bad": "1"}, data=b"x", timeout=10)
    assert r.status_code == 201 and "x_bad" not in r.text
    r = requests.post(emu.url("/kv/" + "k" * 300), data=b"x", timeout=10)
    assert r.status_code == 400 and "less than 256" in r.text
