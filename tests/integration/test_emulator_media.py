"""The daemon emulator's media side: file upload, hosted files, speech2text, tts, fetch_app,
app answers with files — and the fake WeChat API's media rules.

Most tests drive the emulator's HTTP endpoints directly, exactly as the SDK does
(``core/runtime.py`` ``_http_backwards_invoke``: a ``session`` message POSTed to
``/backwards-invocation/transaction`` for a live session, then ``requests.post`` to the signed
upload URL like ``invocations/file.py``), against an emulator without plugin processes. One
module runs a tiny throw-away plugin so that the real SDK parses every answer
(``UploadFileResponse``, ``Speech2TextResult``, ``TTSResult``, ``fetch_app``).
"""

from __future__ import annotations

import json
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from tests.emulator import (
    DEFAULT_APP_ID,
    DEFAULT_TRANSCRIPT,
    DEFAULT_TTS_AUDIO,
    FILE_MODEL_IDENTITY,
    AppReply,
    DaemonEmulator,
    ScriptedApp,
    app_parameters,
    default_transcriber,
    file_markdown,
    form_field,
    parse_manifest_permissions,
    parse_multipart,
)
from tests.fake_wechat_api import CUSTOM_SEND, MEDIA_GET, MEDIA_UPLOAD, FakeWeChatAPI

pytestmark = pytest.mark.integration

ALL_PERMISSIONS: dict[str, Any] = {
    "endpoint": {"enabled": True},
    "app": {"enabled": True},
    "storage": {"enabled": True, "size": 1048576},
    "model": {"enabled": True, "speech2text": True, "tts": True},
}
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64" + bytes(400)
AMR = b"#!AMR\n" + bytes(range(200))


# --------------------------------------------------------------------------- helpers


def invoke(
    emu: DaemonEmulator, session_id: str, invoke_type: str, request: dict[str, Any]
) -> tuple[int, list[dict[str, Any]]]:
    """One backwards invocation as the SDK sends it; returns the HTTP status and the
    ``BackwardsInvocationResponseEvent`` dicts (``event``, ``message``, ``data``)."""
    payload = {
        "event": "session",
        "session_id": session_id,
        "data": {
            "type": "invoke",
            "data": {
                "type": invoke_type,
                "backwards_request_id": uuid.uuid4().hex,
                "request": request,
            },
        },
    }
    with requests.post(
        emu.daemon_url + "/backwards-invocation/transaction",
        data=json.dumps(payload) + "\n\n",
        headers={"Dify-Plugin-Session-ID": session_id},
        stream=True,
        timeout=10,
    ) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line.strip()]
        if r.status_code != 200:
            return r.status_code, lines  # a bare event, no session envelope
        assert all(line["session_id"] == session_id for line in lines)
        return 200, [line["data"] for line in lines]


def only_response(answer: tuple[int, list[dict[str, Any]]]) -> Any:
    """The data of an answer that is one ``response`` event (then ``end``)."""
    status, events = answer
    assert status == 200 and [e["event"] for e in events] == ["response", "end"], answer
    return events[0]["data"]


def only_error(answer: tuple[int, list[dict[str, Any]]]) -> str:
    """The message of an answer that is one ``error`` event (then ``end``)."""
    status, events = answer
    assert status == 200 and [e["event"] for e in events] == ["error", "end"], answer
    return str(events[0]["message"])


def upload(url: str, filename: str, content: bytes, mimetype: str) -> requests.Response:
    """What ``dify_plugin`` ``File.upload`` does with the signed URL."""
    return requests.post(url, files={"file": (filename, content, mimetype)}, timeout=10)


def tamper(url: str, **params: str) -> str:
    split = urlsplit(url)
    query = dict(parse_qsl(split.query))
    query.update(params)
    return split._replace(query="&".join(f"{k}={v}" for k, v in query.items())).geturl()


@pytest.fixture(scope="module")
def bare() -> Iterator[DaemonEmulator]:
    """An emulator without plugin processes: tests play the plugin's side themselves."""
    with DaemonEmulator({}, ScriptedApp.echo(), processes=0) as emu:
        yield emu
        assert emu.errors == []


@pytest.fixture
def emu(bare: DaemonEmulator) -> Iterator[DaemonEmulator]:
    """The module's bare emulator with its media knobs reset after each test."""
    bare.permissions = json.loads(json.dumps(ALL_PERMISSIONS))
    bare.app = ScriptedApp.echo()
    yield bare
    bare.upload_limit_bytes = 15 * 1024 * 1024
    bare.files_url = None
    bare.stt_delay = bare.tts_delay = 0.0
    bare.synthesizer = None
    bare.tts_chunks = 3
    bare.tts_audio = DEFAULT_TTS_AUDIO
    bare.transcriber = default_transcriber


# --------------------------------------------------------------------------- upload_file


def test_upload_round_trip(emu: DaemonEmulator) -> None:
    sid = emu.open_session()
    url = only_response(
        invoke(emu, sid, "upload_file", {"filename": "a.png", "mimetype": "image/png"})
    )["url"]
    assert url.startswith(emu.daemon_url + "/files/upload/for-plugin?")
    query = dict(parse_qsl(urlsplit(url).query))
    assert set(query) == {"timestamp", "nonce", "sign", "user_id", "tenant_id"}
    assert query["tenant_id"] == emu.tenant_id

    r = upload(url, "a.png", PNG, "image/png")
    assert r.status_code == 201, r.text
    body = r.json()
    assert uuid.UUID(body["id"])
    assert (body["name"], body["size"], body["extension"], body["mime_type"]) == (
        "a.png",
        len(PNG),
        ".png",
        "image/png",
    )
    assert "type" not in body  # the SDK derives it from mime_type
    for key in ("created_by", "created_at", "source_url", "original_url", "conversation_id"):
        assert body[key] is None
    assert body["tenant_id"] == emu.tenant_id and body["user_id"] == emu.dify_user_id

    preview = requests.get(body["preview_url"], timeout=10)
    assert preview.status_code == 200
    assert preview.content == PNG and preview.headers["Content-Type"] == "image/png"
    assert urlsplit(body["preview_url"]).path == f"/files/tools/{body['id']}.png"

    [record] = [u for u in emu.uploads if u["id"] == body["id"]]
    assert record["session_id"] == sid and record["content"] == PNG
    assert (record["filename"], record["mimetype"], record["size"]) == ("a.png", "image/png", 1032)
    assert emu.file_downloads[-1]["file_id"] == body["id"]
    assert emu.file_downloads[-1]["status"] == 200
    assert emu.hosted_file(body["id"]) is not None

    # a name without extension gets the MIME type's; the SDK's mimetype is signed as given
    url2 = only_response(
        invoke(emu, sid, "upload_file", {"filename": "voice", "mimetype": "audio/mpeg"})
    )["url"]
    body2 = upload(url2, "voice", MP3, "audio/mpeg").json()
    assert (body2["name"], body2["extension"]) == ("voice.mp3", ".mp3")
    # the URL outlives the session: Dify only checks its age
    emu.close_session(sid)
    url3 = emu.upload_url("late.png", "image/png")
    assert upload(url3, "late.png", PNG, "image/png").status_code == 201


def test_upload_rejections(emu: DaemonEmulator) -> None:
    url = emu.upload_url("a.png", "image/png")
    r = upload(url, "b.png", PNG, "image/png")  # another filename than signed
    assert r.status_code == 403
    assert r.json() == {"code": "forbidden", "message": "Invalid request.", "status": 403}
    assert upload(url, "a.png", PNG, "image/jpeg").status_code == 403  # another mimetype
    assert upload(tamper(url, sign="AAAA"), "a.png", PNG, "image/png").status_code == 403
    expired = emu.upload_url("a.png", "image/png", age=emu.files_access_timeout + 5)
    assert upload(expired, "a.png", PNG, "image/png").status_code == 403
    assert [a["reason"] for a in emu.upload_attempts[-4:]] == ["bad_signature"] * 3 + ["expired"]

    no_file = requests.post(url, files={"other": ("a.png", PNG, "image/png")}, timeout=10)
    assert no_file.status_code == 400 and no_file.json()["code"] == "no_file_uploaded"

    emu.upload_limit_bytes = 100
    big = upload(url, "a.png", PNG, "image/png")
    assert big.status_code == 413 and big.json()["code"] == "file_too_large"
    emu.upload_limit_bytes = len(PNG)
    assert upload(url, "a.png", PNG, "image/png").status_code == 201  # the limit is inclusive

    emu.fail_uploads(times=2, status=503)
    statuses = [upload(url, "a.png", PNG, "image/png").status_code for _ in range(3)]
    assert statuses == [503, 503, 201]
    assert [a["reason"] for a in emu.upload_attempts[-3:]] == ["scripted", "scripted", "ok"]

    sid = emu.open_session()
    error = only_error(invoke(emu, sid, "upload_file", {"filename": "", "mimetype": "image/png"}))
    assert "filename is required" in error


def test_files_url_setting(emu: DaemonEmulator) -> None:
    emu.files_url = "https://dify.example.com/"
    assert emu.upload_url("a.png", "image/png").startswith(
        "https://dify.example.com/files/upload/for-plugin?"
    )
    emu.files_url = ""  # Dify without FILES_URL: relative URLs the plugin cannot fetch
    assert emu.host_file(PNG, "image/png")["url"].startswith("/files/tools/")


# --------------------------------------------------------------------------- hosted files


def test_host_file_shape_and_download(emu: DaemonEmulator) -> None:
    f = emu.host_file(PNG, "image/png", "chart.png")
    assert set(f) == {
        "dify_model_identity",
        "id",
        "tenant_id",
        "type",
        "transfer_method",
        "remote_url",
        "related_id",
        "filename",
        "extension",
        "mime_type",
        "size",
        "url",
    }
    assert f["dify_model_identity"] == FILE_MODEL_IDENTITY
    assert (f["type"], f["transfer_method"], f["extension"]) == ("image", "tool_file", ".png")
    assert (f["filename"], f["size"], f["id"], f["remote_url"]) == (
        "chart.png",
        len(PNG),
        None,
        None,
    )
    assert urlsplit(f["url"]).path == f"/files/tools/{f['related_id']}.png"
    got = requests.get(f["url"], timeout=10)
    assert got.status_code == 200 and got.content == PNG
    assert got.headers["Content-Length"] == str(len(PNG))
    assert "Content-Disposition" not in got.headers

    attach = requests.get(emu.file_url(f["related_id"], as_attachment=True), timeout=10)
    assert attach.headers["Content-Disposition"] == "attachment; filename*=UTF-8''chart.png"
    head = requests.head(f["url"], timeout=10)
    assert head.status_code == 200 and head.content == b""

    audio = emu.host_file(MP3, "audio/mpeg")
    assert (audio["type"], audio["extension"]) == ("audio", ".mp3")
    assert audio["filename"].endswith(".mp3")
    assert emu.host_file(b"%PDF", "application/pdf", "r.pdf")["type"] == "document"
    downloads = [d for d in emu.file_downloads if d["file_id"] == f["related_id"]]
    assert [d["status"] for d in downloads] == [200, 200, 200]
    assert [d["as_attachment"] for d in downloads] == [False, True, False]


def test_hosted_file_signature_checks(emu: DaemonEmulator) -> None:
    f = emu.host_file(PNG, "image/png", "x.png")
    fid = f["related_id"]
    assert requests.get(tamper(f["url"], sign="bad"), timeout=10).status_code == 403
    assert requests.get(tamper(f["url"], timestamp="1"), timeout=10).status_code == 403
    old = emu.file_url(fid, age=emu.files_access_timeout + 5)
    assert requests.get(old, timeout=10).status_code == 403
    assert requests.get(emu.file_url(fid, age=emu.files_access_timeout - 5), timeout=10).ok
    missing = requests.get(f["url"].split("?")[0], timeout=10)
    assert missing.status_code == 400
    unknown_id = str(uuid.uuid4())
    unknown = requests.get(emu.file_url(unknown_id), timeout=10)
    assert unknown.status_code == 415 and unknown.json()["code"] == "unsupported_file_type"
    assert requests.get(emu.daemon_url + "/files/tools/nope.png", timeout=10).status_code == 404
    emu.fail_file_downloads(times=1, status=502)
    assert requests.get(f["url"], timeout=10).status_code == 502
    assert requests.get(f["url"], timeout=10).status_code == 200


# --------------------------------------------------------------------------- speech2text / tts


def stt_request(audio: bytes, provider: str = "openai", model: str = "whisper-1") -> dict[str, Any]:
    """What ``Speech2TextInvocation.invoke`` sends (``model_config.model_dump()`` + hex)."""
    return {"provider": provider, "model": model, "model_type": "speech2text", "file": audio.hex()}


def tts_request(text: str, provider: str = "openai", model: str = "tts-1") -> dict[str, Any]:
    return {
        "provider": provider,
        "model": model,
        "model_type": "tts",
        "voice": "alloy",
        "content_text": text,
    }


def test_speech2text(emu: DaemonEmulator) -> None:
    sid = emu.open_session()
    assert only_response(invoke(emu, sid, "speech2text", stt_request(MP3))) == {
        "result": DEFAULT_TRANSCRIPT
    }
    call = emu.stt_calls[-1]
    assert (call["provider"], call["model"], call["model_type"]) == (
        "openai",
        "whisper-1",
        "speech2text",
    )
    assert call["audio"] == MP3 and call["session_id"] == sid and call["ok"]

    emu.transcriber = lambda audio: f"{len(audio)} bytes"
    full_id = stt_request(AMR, provider="langgenius/openai/openai")
    assert only_response(invoke(emu, sid, "speech2text", full_id))["result"] == "206 bytes"
    emu.transcriber = default_transcriber

    emu.fail_stt("rate limited", times=1)
    error = only_error(invoke(emu, sid, "speech2text", stt_request(MP3)))
    assert error == "invoke speech2text model failed: request failed: rate limited"
    assert emu.stt_calls[-1]["error"] == "rate limited" and not emu.stt_calls[-1]["ok"]
    assert only_response(invoke(emu, sid, "speech2text", stt_request(MP3)))  # once only

    error = only_error(invoke(emu, sid, "speech2text", stt_request(MP3, provider="azure")))
    assert error.endswith("Provider azure does not exist.")
    error = only_error(invoke(emu, sid, "speech2text", stt_request(MP3, model="whisper-9")))
    assert error.endswith("Model whisper-9 credentials is not initialized.")
    emu.models.add(("azure", "whisper", "speech2text"))
    try:
        assert only_response(invoke(emu, sid, "speech2text", stt_request(MP3, "azure", "whisper")))
    finally:
        emu.models.discard(("azure", "whisper", "speech2text"))
    assert "empty" in only_error(invoke(emu, sid, "speech2text", stt_request(b"")))


def test_tts(emu: DaemonEmulator) -> None:
    sid = emu.open_session()
    emu.tts_audio = MP3
    emu.tts_chunks = 4
    status, events = invoke(emu, sid, "tts", tts_request("你好"))
    assert status == 200 and [e["event"] for e in events] == ["response"] * 4 + ["end"]
    audio = b"".join(bytes.fromhex(e["data"]["result"]) for e in events[:-1])
    assert audio == MP3 and set(events[0]["data"]) == {"result"}
    call = emu.tts_calls[-1]
    assert (call["content_text"], call["voice"], call["chunks_sent"], call["ok"]) == (
        "你好",
        "alloy",
        4,
        True,
    )
    assert call["audio"] == MP3 and call["session_id"] == sid

    emu.synthesizer = lambda text: text.encode() * 2
    _, events = invoke(emu, sid, "tts", tts_request("ab"))
    assert b"".join(bytes.fromhex(e["data"]["result"]) for e in events[:-1]) == b"abab"
    emu.synthesizer = None

    emu.fail_tts("quota exceeded", after_chunks=1)
    _, events = invoke(emu, sid, "tts", tts_request("x"))
    assert [e["event"] for e in events] == ["response", "error", "end"]
    assert events[1]["message"] == "read tts model failed: request failed: quota exceeded"
    assert emu.tts_calls[-1]["chunks_sent"] == 1 and not emu.tts_calls[-1]["ok"]

    error = only_error(invoke(emu, sid, "tts", tts_request("x", model="tts-9")))
    assert error.startswith(
        "invoke tts model failed: request failed with status code: 500 and respond with: "
    )
    assert emu.tts_calls[-1]["error"] == "Model tts-9 credentials is not initialized."


def test_session_end_cuts_slow_media_calls(emu: DaemonEmulator) -> None:
    emu.stt_delay = 0.6
    sid = emu.open_session()
    threading_close(emu, sid, after=0.2)
    t0 = time.monotonic()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        invoke(emu, sid, "speech2text", stt_request(MP3))
    assert time.monotonic() - t0 < 0.55
    assert emu.stt_calls[-1]["cut"] and emu.stt_calls[-1]["result"] is None

    emu.tts_delay = 0.9
    sid = emu.open_session()
    threading_close(emu, sid, after=0.45)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        invoke(emu, sid, "tts", tts_request("slow"))
    call = emu.tts_calls[-1]
    assert call["cut"] and 0 < call["chunks_sent"] < 3


def threading_close(emu: DaemonEmulator, session_id: str, after: float) -> None:
    timer = threading.Timer(after, emu.close_session, args=(session_id,))
    timer.daemon = True
    timer.start()


# --------------------------------------------------------------------------- fetch_app


def test_fetch_app_answers_the_bare_parameters(emu: DaemonEmulator) -> None:
    params = app_parameters(
        opening_statement="欢迎！",
        user_input_form=[
            form_field("text-input", "name", required=True),
            form_field("file", "photo", allowed_file_types=["image"]),
            form_field("file-list", "docs", allowed_file_types=["document", "image"], max_length=3),
        ],
        speech_to_text=True,
    )
    emu.app = ScriptedApp("chat", parameters=params)
    sid = emu.open_session()
    got = only_response(invoke(emu, sid, "fetch_app", {"app_id": DEFAULT_APP_ID}))
    assert got == params and "data" not in got
    assert got["user_input_form"][1] == {
        "file": {
            "variable": "photo",
            "label": "photo",
            "type": "file",
            "required": False,
            "allowed_file_types": ["image"],
            "allowed_file_extensions": [],
            "allowed_file_upload_methods": ["local_file", "remote_url"],
        }
    }
    assert got["user_input_form"][2]["file-list"]["max_length"] == 3
    assert got["speech_to_text"] == {"enabled": True}
    assert set(got) >= {"file_upload", "system_parameters", "text_to_speech", "suggested_questions"}
    error = only_error(invoke(emu, sid, "fetch_app", {"app_id": "other-app"}))
    assert error == "fetch app failed: data is nil"
    partial = ScriptedApp("workflow", parameters={"opening_statement": "嗨"}).parameters
    assert partial["opening_statement"] == "嗨" and partial["user_input_form"] == []
    assert set(partial) == set(params)


# --------------------------------------------------------------------------- rules


def test_permissions_follow_the_manifest(emu: DaemonEmulator) -> None:
    sid = emu.open_session()
    emu.permissions = {"app": {"enabled": True}, "model": {"enabled": True, "tts": True}}
    assert only_error(invoke(emu, sid, "speech2text", stt_request(MP3))) == (
        "permission denied, you need to enable speech2text access in plugin manifest"
    )
    assert only_error(invoke(emu, sid, "storage", {"opt": "get", "key": "k"})) == (
        "permission denied, you need to enable storage access in plugin manifest"
    )
    _, events = invoke(emu, sid, "tts", tts_request("x"))
    assert {e["event"] for e in events} == {"response", "end"}
    assert only_response(invoke(emu, sid, "upload_file", {"filename": "a", "mimetype": "a/b"}))
    emu.permissions = {"model": {"enabled": False, "tts": True, "speech2text": True}}
    assert "enable tts access" in only_error(invoke(emu, sid, "tts", tts_request("x")))
    assert "enable app access" in only_error(invoke(emu, sid, "fetch_app", {"app_id": "x"}))
    manifest = textwrap.dedent(
        """\
        resource:
          memory: 1
          permission:
            model:
              enabled: true   # comment
              tts: false
              speech2text: true
            storage:
              enabled: true
              size: 1024
        plugins:
          endpoints:
            - group/x.yaml
        """
    )
    assert parse_manifest_permissions(manifest) == {
        "model": {"enabled": True, "tts": False, "speech2text": True},
        "storage": {"enabled": True, "size": 1024},
    }


def test_closed_session_is_refused(emu: DaemonEmulator) -> None:
    sid = emu.open_session()
    emu.close_session(sid)
    for invoke_type, request in [
        ("upload_file", {"filename": "a.png", "mimetype": "image/png"}),
        ("speech2text", stt_request(MP3)),
        ("tts", tts_request("x")),
    ]:
        status, [event] = invoke(emu, sid, invoke_type, request)
        assert status == 400 and event["message"] == "failed to get session info from cache"
    late = [c for c in emu.late_calls if c["session_id"] == sid]
    assert [c["type"] for c in late] == ["upload_file", "speech2text", "tts"]
    assert all(c["reason"] == "session_closed" for c in late)
    status, _ = invoke(emu, "never-opened", "tts", tts_request("x"))
    assert status == 400 and emu.late_calls[-1]["reason"] == "unknown_session"


def test_parse_multipart() -> None:
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a \\"b\\".png"\r\n'
        b"Content-Type: image/png; charset=x\r\n\r\n\x00\r\n\x01\r\n--XyZ\r\n"
        b"Content-Disposition: form-data; name=\"n\"; filename*=UTF-8''%E4%BD%A0.txt\r\n\r\n"
        b"hi\r\n--XyZ--\r\n"
    )
    fields = parse_multipart("multipart/form-data; boundary=XyZ", body)
    assert fields["file"] == ('a "b".png', "image/png", b"\x00\r\n\x01")
    assert fields["n"] == ("你.txt", "application/octet-stream", b"hi")
    assert parse_multipart("application/json", body) == {}


# --------------------------------------------------------------------------- apps with files


def _plan(app: ScriptedApp, mode_query: str | None = "hi", streaming: bool = True) -> Any:
    return app.plan(
        {
            "app_id": DEFAULT_APP_ID,
            "query": mode_query,
            "inputs": {},
            "response_mode": "streaming" if streaming else "blocking",
        }
    )


def test_app_reply_files_per_mode(emu: DaemonEmulator) -> None:
    image = emu.host_file(PNG, "image/png", "cat.png")
    doc = emu.host_file(b"%PDF-1.4", "application/pdf", "r.pdf")
    reply = AppReply(text="看图", files=[image, doc])

    chat = _plan(ScriptedApp("chat", reply, latency=0.2))
    events = [c["event"] for _, c in chat.events]
    assert events == ["message", "message", "message_file", "message_file", "message_end"]
    files = [c for _, c in chat.events if c["event"] == "message_file"]
    assert [(f["type"], f["belongs_to"], f["url"]) for f in files] == [
        ("image", "assistant", image["url"]),
        ("document", "assistant", doc["url"]),
    ]
    assert all(f["conversation_id"] == chat.conversation_id for f in files)
    assert all(f["id"] != f["message_id"] for f in files)
    assert chat.answer == "看图" and chat.files == [image, doc]

    agent = _plan(ScriptedApp("agent-chat", reply, latency=0.2))
    kinds = [c["event"] for _, c in agent.events]
    assert kinds[:3] == ["agent_thought", "message_file", "message_file"]
    assert kinds[-2:] == ["agent_thought", "message_end"]
    final = agent.events[-2][1]
    assert final["message_files"] == [
        c["id"] for _, c in agent.events if c["event"] == "message_file"
    ]

    adv = _plan(ScriptedApp("advanced-chat", reply))
    assert "message_file" not in [c["event"] for _, c in adv.events]
    end = adv.events[-1][1]
    assert end["event"] == "message_end" and end["files"] == [image, doc]
    finished = next(c for _, c in adv.events if c["event"] == "workflow_finished")
    assert finished["data"]["outputs"] == {"answer": "看图", "files": [image, doc]}

    wf = _plan(ScriptedApp("workflow", reply, files_output_key="images"), None)
    finished = wf.events[-1][1]
    assert finished["data"]["outputs"] == {"text": "看图", "images": [image, doc]}
    assert finished["data"]["files"] == [image, doc]
    blocking = _plan(ScriptedApp("workflow", reply), None, streaming=False)
    assert blocking.blocking_result["data"]["outputs"]["files"] == [image, doc]

    md = _plan(ScriptedApp("advanced-chat", AppReply("看", files=[image], markdown=True)))
    text = "".join(c.get("answer", "") for _, c in md.events if c["event"] == "message")
    assert text == f"看\n\n![cat.png]({image['url']})" == f"看\n\n{file_markdown(image)}"
    assert file_markdown(doc) == f"[r.pdf]({doc['url']})"

    extra = _plan(
        ScriptedApp("chat", AppReply("x", events=[{"event": "message_replace", "answer": "y"}]))
    )
    replace = extra.events[-2][1]
    assert replace["event"] == "message_replace" and replace["answer"] == "y"
    assert replace["conversation_id"] == extra.conversation_id

    # str answers are unchanged
    plain = _plan(ScriptedApp("chat", "ok", chunks=1))
    assert [c["event"] for _, c in plain.events] == ["message", "message_end"]
    assert plain.events[-1][1]["files"] == []


def test_app_streams_files_through_the_emulator(emu: DaemonEmulator) -> None:
    image = emu.host_file(PNG, "image/png", "cat.png")
    emu.app = ScriptedApp("chat", lambda req: AppReply(f"echo: {req.query}", files=[image]))
    sid = emu.open_session()
    request = {"app_id": DEFAULT_APP_ID, "query": "q", "inputs": {}, "response_mode": "streaming"}
    _, events = invoke(emu, sid, "app", request)
    chunks = [e["data"] for e in events if e["event"] == "response"]
    assert [c["event"] for c in chunks][-2:] == ["message_file", "message_end"]
    got = requests.get(chunks[-2]["url"], timeout=10)
    assert got.content == PNG
    assert emu.app_calls[-1]["files"] == [image]


# --------------------------------------------------------------------------- the real SDK

SDK_MANIFEST = """\
version: 0.0.1
type: plugin
author: emulator-media
name: emulator_media
label:
  en_US: Emulator media plugin
description:
  en_US: Throw-away plugin for the daemon emulator's media tests.
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
    model:
      enabled: true
      tts: true
      speech2text: true
plugins:
  endpoints:
    - group/media.yaml
meta:
  version: 0.0.1
  arch:
    - amd64
  runner:
    language: python
    version: "3.12"
    entrypoint: main
created_at: 2026-01-01T00:00:00Z
"""

SDK_ENDPOINT = """\
import io
import json
from collections.abc import Mapping

import requests
from werkzeug import Request, Response

from dify_plugin import Endpoint
from dify_plugin.entities.model.speech2text import Speech2TextModelConfig
from dify_plugin.entities.model.tts import TTSModelConfig


class Media(Endpoint):
    def _invoke(self, r: Request, values: Mapping, settings: Mapping) -> Response:
        op = r.args["op"]
        body = r.get_data()
        out = {}
        try:
            if op == "upload":
                up = self.session.file.upload(r.args["name"], body, r.args["mime"])
                out = {"file": up.model_dump(mode="json"), "param": up.to_app_parameter()}
                got = requests.get(up.preview_url, timeout=10)
                out["preview_status"] = got.status_code
                out["preview_len"] = len(got.content)
            elif op == "stt":
                config = Speech2TextModelConfig(provider="openai", model=r.args["model"])
                out["text"] = self.session.model.speech2text.invoke(config, io.BytesIO(body))
            elif op == "tts":
                config = TTSModelConfig(provider="openai", model="tts-1", voice="alloy")
                audio = b"".join(self.session.model.tts.invoke(config, body.decode()))
                out["audio"] = audio.hex()
            elif op == "fetch":
                out["params"] = self.session.app.fetch_app(r.args["app_id"])
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"
        return Response(json.dumps(out), status=200, content_type="application/json")
"""


def write_media_plugin(root: Path) -> Path:
    (root / "_assets").mkdir(parents=True)
    (root / "group").mkdir()
    (root / "endpoints").mkdir()
    (root / "manifest.yaml").write_text(SDK_MANIFEST)
    (root / "main.py").write_text(
        "from dify_plugin import DifyPluginEnv, Plugin\n\n"
        "plugin = Plugin(DifyPluginEnv(MAX_REQUEST_TIMEOUT=120))\n\n"
        'if __name__ == "__main__":\n    plugin.run()\n'
    )
    (root / "_assets" / "icon.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 8 8">'
        '<rect width="8" height="8"/></svg>'
    )
    (root / "group" / "media.yaml").write_text(
        "settings: []\nendpoints:\n  - endpoints/media.yaml\n"
    )
    (root / "endpoints" / "media.yaml").write_text(
        'path: "/media"\nmethod: "POST"\nextra:\n  python:\n    source: "endpoints/media.py"\n'
    )
    (root / "endpoints" / "media.py").write_text(SDK_ENDPOINT)
    return root


@pytest.fixture(scope="module")
def sdk_emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonEmulator]:
    plugin = write_media_plugin(tmp_path_factory.mktemp("media-plugin"))
    params = app_parameters(user_input_form=[form_field("file", "photo")])
    app = ScriptedApp("chat", parameters=params)
    with DaemonEmulator({}, app, processes=1, plugin_dir=plugin) as emu:
        yield emu
        assert emu.errors == []


def call(emu: DaemonEmulator, body: bytes, **query: str) -> dict[str, Any]:
    r = requests.post(emu.url("/media"), params=query, data=body, timeout=20)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_sdk_upload_file(sdk_emu: DaemonEmulator) -> None:
    assert sdk_emu.permissions is not None and sdk_emu.permissions["model"]["tts"] is True
    out = call(sdk_emu, PNG, op="upload", name="照片.png", mime="image/png")
    assert "error" not in out, out
    file = out["file"]
    assert (file["name"], file["extension"], file["mime_type"], file["type"]) == (
        "照片.png",
        ".png",
        "image/png",
        "image",
    )
    assert out["param"] == {
        "tool_file_id": file["id"],
        "transfer_method": "tool_file",
        "type": "image",
    }
    assert (out["preview_status"], out["preview_len"]) == (200, len(PNG))
    [record] = [u for u in sdk_emu.uploads if u["id"] == file["id"]]
    assert record["content"] == PNG and record["filename"] == "照片.png"
    session = next(s for s in sdk_emu.sessions if s["session_id"] == record["session_id"])
    assert session["path"] == "/media"

    sdk_emu.fail_uploads(times=1, status=500)
    out = call(sdk_emu, PNG, op="upload", name="a.png", mime="image/png")
    assert out["error"].startswith("Exception: upload file failed, status code: 500")


def test_sdk_speech2text_tts_and_fetch_app(sdk_emu: DaemonEmulator) -> None:
    assert call(sdk_emu, AMR, op="stt", model="whisper-1") == {"text": DEFAULT_TRANSCRIPT}
    assert sdk_emu.stt_calls[-1]["audio"] == AMR
    out = call(sdk_emu, AMR, op="stt", model="nope")
    assert out["error"] == (
        "Exception: invoke speech2text model failed: request failed: "
        "Model nope credentials is not initialized."
    )
    sdk_emu.tts_audio = MP3
    assert bytes.fromhex(call(sdk_emu, "你好".encode(), op="tts")["audio"]) == MP3
    assert sdk_emu.tts_calls[-1]["content_text"] == "你好"
    sdk_emu.fail_tts("boom", after_chunks=1)
    assert (
        call(sdk_emu, b"x", op="tts")["error"]
        == "Exception: read tts model failed: request failed: boom"
    )

    params = call(sdk_emu, b"", op="fetch", app_id=DEFAULT_APP_ID)["params"]
    assert params == sdk_emu.app.parameters
    assert params["user_input_form"][0]["file"]["variable"] == "photo"
    assert "data is nil" in call(sdk_emu, b"", op="fetch", app_id="other")["error"]


# --------------------------------------------------------------------------- fake WeChat media


@pytest.fixture
def wechat() -> Iterator[FakeWeChatAPI]:
    with FakeWeChatAPI() as fake:
        yield fake


def _token(wechat: FakeWeChatAPI) -> str:
    r = requests.post(
        wechat.base_url + "/cgi-bin/stable_token",
        json={
            "grant_type": "client_credential",
            "appid": wechat.app_id,
            "secret": wechat.app_secret,
        },
        timeout=10,
    )
    return str(r.json()["access_token"])


def test_fake_wechat_media_rules(wechat: FakeWeChatAPI) -> None:
    token = _token(wechat)

    def up(kind: str, name: str, content: bytes, mime: str) -> dict[str, Any]:
        r = requests.post(
            f"{wechat.base_url}{MEDIA_UPLOAD}",
            params={"access_token": token, "type": kind},
            files={"media": (name, content, mime)},
            timeout=10,
        )
        return dict(r.json())

    image = up("image", "a.jpg", b"\xff\xd8jpeg", "image/jpeg")
    assert image["type"] == "image" and image["media_id"]
    voice = up("voice", "v.amr", AMR, "audio/amr")
    assert voice["type"] == "voice"
    assert up("voice", "v.mp3", MP3, "audio/mpeg")["type"] == "voice"
    assert up("image", "a.txt", b"text", "text/plain")["errcode"] == 40005
    assert up("voice", "v.wav", b"RIFF", "audio/wav")["errcode"] == 40005
    assert up("video", "v.mov", b"moov", "video/quicktime")["errcode"] == 40005
    assert up("image", "big.png", b"x" * (2 * 1024 * 1024 + 1), "image/png")["errcode"] == 40009
    assert up("voice", "big.amr", b"x" * (2 * 1024 * 1024 + 1), "audio/amr")["errcode"] == 40010
    assert up("thumb", "t.jpg", b"x" * (64 * 1024 + 1), "image/jpeg")["errcode"] == 40006
    assert up("image", "ok.gif", b"x" * (2 * 1024 * 1024), "image/gif")["type"] == "image"
    wechat.fail(45009, path=MEDIA_UPLOAD)
    assert up("image", "a.png", PNG, "image/png")["errcode"] == 45009

    def send(body: dict[str, Any]) -> int:
        r = requests.post(
            f"{wechat.base_url}{CUSTOM_SEND}",
            params={"access_token": token},
            data=json.dumps(body),
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        return int(r.json()["errcode"])

    user = "o_media"
    assert send({"touser": user, "msgtype": "image", "image": {"media_id": image["media_id"]}}) == 0
    assert send({"touser": user, "msgtype": "voice", "voice": {"media_id": voice["media_id"]}}) == 0
    assert (
        send({"touser": user, "msgtype": "voice", "voice": {"media_id": image["media_id"]}})
        == 40007
    )
    assert send({"touser": user, "msgtype": "image", "image": {"media_id": "unknown"}}) == 40007
    assert wechat.timeline(user) == [("image", image["media_id"]), ("voice", voice["media_id"])]
    assert wechat.received_media(user) == [("image", b"\xff\xd8jpeg"), ("voice", AMR)]


def test_fake_wechat_media_downloads(wechat: FakeWeChatAPI) -> None:
    token = _token(wechat)
    voice_id = wechat.add_media(AMR, "audio/amr", media_id="MEDIA_VOICE_1")
    assert voice_id == "MEDIA_VOICE_1" and wechat.media(voice_id).kind == "voice"  # type: ignore[union-attr]
    got = requests.get(
        f"{wechat.base_url}{MEDIA_GET}",
        params={"access_token": token, "media_id": voice_id},
        timeout=10,
    )
    assert got.content == AMR and got.headers["Content-Type"] == "audio/amr"
    assert 'filename="MEDIA_VOICE_1.amr"' in got.headers["Content-disposition"]
    jpg = wechat.add_media(b"\xff\xd8jpeg", "image/jpeg")
    assert wechat.media(jpg).filename.endswith(".jpg")  # type: ignore[union-attr]

    video_id = wechat.add_media(b"\x00\x00\x00\x18ftypmp4", "video/mp4")
    answer = requests.get(
        f"{wechat.base_url}{MEDIA_GET}",
        params={"access_token": token, "media_id": video_id},
        timeout=10,
    ).json()
    video = requests.get(answer["video_url"], timeout=10)  # no access token needed
    assert video.content == b"\x00\x00\x00\x18ftypmp4"
    assert video.headers["Content-Type"] == "video/mp4"
