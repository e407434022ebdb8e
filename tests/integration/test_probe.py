"""``tools/probe.py`` against the plugin running as Dify runs it (daemon emulator), against
stub servers for what the plugin never does (slow or wrongly encrypted replies), and its
pure URL checks; for Official Accounts and WeCom self-built apps. Every server binds
127.0.0.1 and every wait is bounded."""

from __future__ import annotations

import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from endpoints.wechat.crypto import CryptoError, MessageCrypto, signature_matches
from endpoints.wechat.formatters import text_reply_xml
from endpoints.wechat.parsers import parse_xml_fields
from tests.conftest import EmulatorFactory, make_aes_key
from tools import probe
from tools.probe import StepResult, Verdict, check_url, display_url, make_config, run_probe

pytestmark = pytest.mark.integration

URL, REACH, VERIFY, MESSAGE = range(4)


def plain(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k != "encoding_aes_key"}


def verdicts(results: Sequence[StepResult]) -> list[Verdict]:
    return [r.verdict for r in results]


def fixes(result: StepResult) -> str:
    return " ".join(result.fixes)


def assert_works(results: Sequence[StepResult]) -> None:
    """Everything OK except the URL step, which --allow-local turns into warnings."""
    assert verdicts(results) == [Verdict.WARN, Verdict.OK, Verdict.OK, Verdict.OK], results
    assert probe.exit_code(results) == 0


def assert_no_secret(text: str, *values: str) -> None:
    for value in values:
        if value:
            assert value not in text
    assert re.search(r"\b[0-9a-f]{40}\b", text) is None, "a signature was printed"
    # Encrypt values and WeCom's encrypted echostr (base64, far longer than anything printed)
    assert re.search(r"[A-Za-z0-9+/]{40,}", text) is None, "ciphertext was printed"
    for marker in ("signature=", "echostr=", "msg_signature", "nonce="):
        assert marker not in text


def settings_of(emu: Any) -> dict[str, Any]:
    return dict(emu.settings)


def probe_emulator(emu: Any, token: str | None = None, **kwargs: Any) -> list[StepResult]:
    settings = settings_of(emu)
    return run_probe(
        emu.url("/wechat"),
        token if token is not None else settings["wechat_token"],
        allow_local=True,
        timeout=5.0,
        **kwargs,
    )


# --- against the plugin under the daemon emulator -------------------------------------------


def test_plain_mode_endpoint_passes(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any]
) -> None:
    emu = emulator_factory(settings=plain(default_settings))
    results = probe_emulator(emu)
    assert_works(results)
    assert "明文模式" in results[REACH].detail
    assert "可用指令" in results[MESSAGE].detail and results[MESSAGE].elapsed_ms is not None
    assert "plain mode" in results[MESSAGE].name
    assert emu.app_calls == [], "/help must not reach the Dify app"


@pytest.mark.parametrize("mode", [None, "compatible"])
def test_encrypted_endpoint_passes(
    mode: str | None, emulator_factory: EmulatorFactory, default_settings: dict[str, Any]
) -> None:
    emu = emulator_factory()
    results = probe_emulator(
        emu,
        app_id=default_settings["app_id"],
        aes_key=default_settings["encoding_aes_key"],
        mode=mode,
    )
    assert_works(results)
    assert f"{mode or 'safe'} mode" in results[MESSAGE].name
    assert results[MESSAGE].detail.startswith("encrypted reply: text")
    assert emu.app_calls == []


def test_wrong_token_fails_verification(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any]
) -> None:
    emu = emulator_factory(settings=plain(default_settings))
    results = probe_emulator(emu, token="wrong" + secrets.token_hex(4))
    assert verdicts(results)[REACH:] == [Verdict.OK, Verdict.FAIL, Verdict.SKIP]
    assert "Token mismatch" in fixes(results[VERIFY])
    assert probe.exit_code(results) == 1


def test_wrong_aes_key_fails_the_message(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any]
) -> None:
    emu = emulator_factory()
    results = probe_emulator(emu, app_id=default_settings["app_id"], aes_key=make_aes_key())
    assert verdicts(results)[REACH:] == [Verdict.OK, Verdict.OK, Verdict.FAIL]
    assert results[MESSAGE].detail == "refused (403)"
    assert "EncodingAESKey or AppID mismatch" in fixes(results[MESSAGE])


def test_wrong_app_id_fails_the_message(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any]
) -> None:
    emu = emulator_factory()
    other_app_id = "wx" + secrets.token_hex(8)
    results = probe_emulator(emu, app_id=other_app_id, aes_key=default_settings["encoding_aes_key"])
    assert verdicts(results)[REACH:] == [Verdict.OK, Verdict.OK, Verdict.FAIL]
    assert "AppID" in fixes(results[MESSAGE])


def test_malformed_app_id_on_the_endpoint_is_named(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any]
) -> None:
    emu = emulator_factory(settings={**default_settings, "app_id": "not-an-appid"})
    results = probe_emulator(
        emu, app_id="wx" + secrets.token_hex(8), aes_key=default_settings["encoding_aes_key"]
    )
    assert results[REACH].verdict is Verdict.WARN and "app_id" in results[REACH].detail
    assert results[MESSAGE].verdict is Verdict.FAIL
    assert fixes(results[MESSAGE]).startswith("AppID mismatch")


def test_plaintext_is_refused_when_the_endpoint_has_a_key(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any]
) -> None:
    emu = emulator_factory()
    results = probe_emulator(emu)  # no --aes-key: plain mode
    assert verdicts(results)[REACH:] == [Verdict.OK, Verdict.OK, Verdict.FAIL]
    assert "plaintext refused because an EncodingAESKey is set" in fixes(results[MESSAGE])
    assert "--aes-key" in fixes(results[MESSAGE])


def test_encrypted_message_is_refused_when_the_endpoint_has_no_key(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any]
) -> None:
    emu = emulator_factory(settings=plain(default_settings))
    results = probe_emulator(
        emu, app_id=default_settings["app_id"], aes_key=default_settings["encoding_aes_key"]
    )
    assert results[MESSAGE].verdict is Verdict.FAIL
    assert "the endpoint has no valid EncodingAESKey" in fixes(results[MESSAGE])


def test_clock_offset_is_reported_and_explains_the_refusal(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any]
) -> None:
    emu = emulator_factory(settings=plain(default_settings))
    results = probe_emulator(emu, clock=lambda: time.time() - 1000)
    assert results[REACH].verdict is Verdict.WARN and "clock" in results[REACH].detail
    assert results[VERIFY].verdict is Verdict.OK  # GET verification has no timestamp check
    assert results[MESSAGE].verdict is Verdict.FAIL
    assert results[MESSAGE].fixes[0].startswith("the clocks differ")


def test_unknown_hook_id_and_disabled_endpoint_are_404(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any]
) -> None:
    emu = emulator_factory(settings=plain(default_settings))
    token = default_settings["wechat_token"]
    wrong_hook = emu.url("/wechat").replace(f"/e/{emu.hook_id}/", "/e/nosuchhook/")
    unknown = run_probe(wrong_hook, token, allow_local=True, timeout=5.0)
    emu.enabled = False  # the daemon answers a disabled endpoint like an unknown one
    disabled = run_probe(emu.url("/wechat"), token, allow_local=True, timeout=5.0)
    for results in (unknown, disabled):
        assert verdicts(results)[REACH:] == [Verdict.FAIL, Verdict.SKIP, Verdict.SKIP]
        assert "404" in results[REACH].detail
        assert "endpoint disabled or wrong URL (hook id)" in fixes(results[REACH])
        assert probe.exit_code(results) == 1


def test_printed_output_holds_no_secret(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = {**default_settings, "app_secret": "APPSECRET" + secrets.token_hex(8)}
    emu = emulator_factory(settings=settings)
    url = emu.url("/wechat") + "?signature=" + "ab" * 20 + "&token=" + settings["wechat_token"]
    token, app_id, key = settings["wechat_token"], settings["app_id"], settings["encoding_aes_key"]
    wrong_token, wrong_key = "wrong" + secrets.token_hex(6), make_aes_key()
    runs = [
        ([url, "--token", token, "--app-id", app_id, "--aes-key", key], 0),
        ([url, "--token", token, "--app-id", app_id, "--aes-key", key, "--mode", "compatible"], 0),
        ([url, "--token", wrong_token, "--app-id", app_id, "--aes-key", key], 1),
        ([url, "--token", token, "--app-id", app_id, "--aes-key", wrong_key], 1),
        ([url, "--token", token], 1),  # plaintext refused
    ]
    for argv, code in runs:
        assert probe.main([*argv, "--allow-local", "--timeout", "5"]) == code
    monkeypatch.setenv(probe.ENV_TOKEN, token)
    monkeypatch.setenv(probe.ENV_APP_ID, app_id)
    monkeypatch.setenv(probe.ENV_AES_KEY, key)
    assert probe.main([emu.url("/wechat"), "--allow-local"]) == 0
    out = capsys.readouterr()
    printed = out.out + out.err
    assert printed.count("[ OK ] test message") == 3 and "?…" in printed
    assert_no_secret(printed, token, key, settings["app_secret"], wrong_token, wrong_key, "ab" * 20)


def test_step_results_hold_no_secret_before_redaction(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any]
) -> None:
    """The printer redacts as a last resort; the messages themselves must be clean too."""
    emu = emulator_factory()
    token, key = default_settings["wechat_token"], default_settings["encoding_aes_key"]
    for kwargs in ({"aes_key": key}, {"aes_key": make_aes_key()}, {}):
        results = probe_emulator(emu, app_id=default_settings["app_id"], **kwargs)
        text = "\n".join(line for r in results for line in r.lines())
        assert_no_secret(text, token, key, kwargs.get("aes_key", ""))


# --- WeCom under the daemon emulator ----------------------------------------------------------


@pytest.fixture
def wecom_settings(default_settings: dict[str, Any]) -> dict[str, Any]:
    """A WeCom self-built app's endpoint: CorpID in app_id, its AgentId, always a key."""
    return {
        **default_settings,
        "platform": "wecom",
        "app_id": "ww" + secrets.token_hex(8),
        "agent_id": "1000002",
    }


def probe_wecom(emu: Any, path: str = "/wecom", **kwargs: Any) -> list[StepResult]:
    """The probe with the endpoint's own values, any of them overridden by ``kwargs``."""
    settings = settings_of(emu)
    args: dict[str, Any] = {
        "token": settings["wechat_token"],
        "app_id": settings["app_id"],
        "aes_key": settings.get("encoding_aes_key", ""),
        "agent_id": settings.get("agent_id", ""),
        "allow_local": True,
        "timeout": 5.0,
    }
    args.update(kwargs)
    return run_probe(emu.url(path), args.pop("token"), **args)


@pytest.mark.parametrize(("path", "platform"), [("/wecom", None), ("/wechat", "wecom")])
def test_wecom_endpoint_passes(
    path: str,
    platform: str | None,
    emulator_factory: EmulatorFactory,
    wecom_settings: dict[str, Any],
) -> None:
    # /wecom is inferred; /wechat serves WeCom too when the platform setting says so.
    emu = emulator_factory(settings=wecom_settings)
    results = probe_wecom(emu, path, platform=platform)
    assert_works(results)
    assert "WeCom self-built app" in results[REACH].detail
    assert results[VERIFY].name == "signed verification (GET, encrypted echostr)"
    assert results[VERIFY].detail == "echostr decrypted, plaintext returned"
    assert results[MESSAGE].name == "test message (POST /help, WeCom)"
    assert results[MESSAGE].detail.startswith("encrypted reply: text “可用指令")
    assert "agent" not in results[MESSAGE].detail.lower()
    assert emu.app_calls == [], "/help must not reach the Dify app"


def test_wecom_without_agent_id_passes_and_says_it_was_not_checked(
    emulator_factory: EmulatorFactory, wecom_settings: dict[str, Any]
) -> None:
    emu = emulator_factory(settings=wecom_settings)
    results = probe_wecom(emu, agent_id="")
    assert_works(results)
    assert "AgentID not sent, not checked" in results[MESSAGE].detail


@pytest.mark.parametrize(
    "wrong",
    [
        {"token": "wrong" + secrets.token_hex(4)},
        {"aes_key": make_aes_key()},
        {"app_id": "ww" + secrets.token_hex(8)},
    ],
    ids=["token", "aes_key", "corp_id"],
)
def test_wecom_wrong_token_key_or_corp_id_fails_verification(
    wrong: dict[str, str], emulator_factory: EmulatorFactory, wecom_settings: dict[str, Any]
) -> None:
    emu = emulator_factory(settings=wecom_settings)
    results = probe_wecom(emu, **wrong)
    assert verdicts(results)[REACH:] == [Verdict.OK, Verdict.FAIL, Verdict.SKIP]
    assert results[VERIFY].detail == "refused (403)"
    assert results[VERIFY].fixes == (probe.FIX_WECOM_KEYS, probe.FIX_WECOM_LOG)
    assert "fix the verification first" in results[MESSAGE].detail
    assert probe.exit_code(results) == 1


def test_wecom_agent_id_mismatch_fails_the_message(
    emulator_factory: EmulatorFactory, wecom_settings: dict[str, Any]
) -> None:
    emu = emulator_factory(settings=wecom_settings)
    results = probe_wecom(emu, agent_id="1000003")
    assert verdicts(results)[REACH:] == [Verdict.OK, Verdict.OK, Verdict.FAIL]
    assert results[MESSAGE].detail == "refused (403)"
    assert fixes(results[MESSAGE]).startswith("AgentID mismatch")
    assert emu.app_calls == []


def test_wecom_endpoint_without_key_is_named(
    emulator_factory: EmulatorFactory, wecom_settings: dict[str, Any]
) -> None:
    emu = emulator_factory(settings=plain(wecom_settings))
    results = probe_wecom(emu, aes_key=make_aes_key())
    assert results[REACH].verdict is Verdict.WARN and "encoding_aes_key" in results[REACH].detail
    assert results[VERIFY].verdict is Verdict.FAIL
    assert fixes(results[VERIFY]).startswith("the endpoint's EncodingAESKey (encoding_aes_key)")


def test_wecom_probe_of_an_official_account_endpoint_names_the_platform_setting(
    emulator_factory: EmulatorFactory, default_settings: dict[str, Any]
) -> None:
    emu = emulator_factory()  # platform official_account: /wechat answers as an OA
    results = probe_wecom(emu, "/wechat", platform="wecom", agent_id="")
    assert results[REACH].verdict is Verdict.WARN and "Official Account" in results[REACH].detail
    assert verdicts(results)[VERIFY:] == [Verdict.FAIL, Verdict.SKIP]
    assert results[VERIFY].fixes == (probe.FIX_WECOM_ON_OFFICIAL_ACCOUNT,)


def test_wecom_clock_offset_explains_the_refused_message(
    emulator_factory: EmulatorFactory, wecom_settings: dict[str, Any]
) -> None:
    emu = emulator_factory(settings=wecom_settings)
    results = probe_wecom(emu, clock=lambda: time.time() - 1000)
    assert results[REACH].verdict is Verdict.WARN and "clock" in results[REACH].detail
    assert results[VERIFY].verdict is Verdict.OK  # WeCom's GET has no timestamp check either
    assert results[MESSAGE].verdict is Verdict.FAIL
    assert results[MESSAGE].fixes[0].startswith("the clocks differ")


def test_wecom_missing_aes_key_or_corp_id_is_a_usage_error(
    wecom_settings: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    url, token = "https://dify.example.com/e/abc/wecom", wecom_settings["wechat_token"]
    corp_id = wecom_settings["app_id"]
    with pytest.raises(probe.ProbeUsageError, match="WeCom needs --aes-key") as info:
        make_config(url, token, app_id=corp_id)
    assert "inferred from the /wecom path" in str(info.value)
    with pytest.raises(probe.ProbeUsageError, match="WeCom needs --corp-id"):
        make_config(url, token, aes_key=wecom_settings["encoding_aes_key"])
    with pytest.raises(SystemExit) as exited:
        probe.main([url, "--token", token, "--corp-id", corp_id])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "WeCom needs --aes-key" in err and token not in err


def test_wecom_printed_output_holds_no_secret(
    emulator_factory: EmulatorFactory,
    wecom_settings: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = {**wecom_settings, "app_secret": "SECRET" + secrets.token_hex(8)}
    emu = emulator_factory(settings=settings)
    url = emu.url("/wecom") + "?msg_signature=" + "ab" * 20 + "&token=" + settings["wechat_token"]
    token, corp_id, key = settings["wechat_token"], settings["app_id"], settings["encoding_aes_key"]
    wrong_token, wrong_key = "wrong" + secrets.token_hex(6), make_aes_key()
    agent = ["--agent-id", settings["agent_id"]]
    runs = [
        ([url, "--token", token, "--corp-id", corp_id, "--aes-key", key, *agent], 0),
        ([url, "--token", token, "--app-id", corp_id, "--aes-key", key], 0),  # no AgentID
        ([url, "--token", wrong_token, "--corp-id", corp_id, "--aes-key", key, *agent], 1),
        ([url, "--token", token, "--corp-id", corp_id, "--aes-key", wrong_key, *agent], 1),
        ([url, "--token", token, "--corp-id", corp_id, "--aes-key", key, "--agent-id", "7"], 1),
    ]
    for argv, code in runs:
        assert probe.main([*argv, "--allow-local", "--timeout", "5"]) == code
    monkeypatch.setenv(probe.ENV_TOKEN, token)
    monkeypatch.setenv(probe.ENV_APP_ID, corp_id)
    monkeypatch.setenv(probe.ENV_AES_KEY, key)
    monkeypatch.setenv(probe.ENV_AGENT_ID, settings["agent_id"])
    monkeypatch.setenv(probe.ENV_PLATFORM, "wecom")
    assert probe.main([emu.url("/wechat"), "--allow-local"]) == 0
    out = capsys.readouterr()
    printed = out.out + out.err
    assert printed.count("[ OK ] test message (POST /help, WeCom)") == 3 and "?…" in printed
    assert printed.count("as WeCom would") == 6
    assert printed.count("platform wecom inferred from the /wecom path") == 5
    assert printed.count("the endpoint works for WeCom.") == 3
    assert_no_secret(printed, token, key, settings["app_secret"], wrong_token, wrong_key, "ab" * 20)


def test_wecom_step_results_hold_no_secret_before_redaction(
    emulator_factory: EmulatorFactory, wecom_settings: dict[str, Any]
) -> None:
    emu = emulator_factory(settings=wecom_settings)
    token, key = wecom_settings["wechat_token"], wecom_settings["encoding_aes_key"]
    for kwargs in ({}, {"aes_key": make_aes_key()}, {"agent_id": "7"}):
        results = probe_wecom(emu, **kwargs)
        text = "\n".join(line for r in results for line in r.lines())
        assert_no_secret(text, token, key, kwargs.get("aes_key", ""))


# --- against stub servers -------------------------------------------------------------------

STUB_TOKEN = "stubtoken123"
STUB_APP_ID = "wx0123456789abcdef"
STUB_CORP_ID = "ww0123456789abcdef"
STUB_AGENT_ID = "1000002"


@dataclass
class StubPlugin:
    """Answers like the plugin, with knobs for what the plugin itself never does."""

    aes_key: str
    post_delay: float = 0.0
    reply_key: str | None = None  # encrypt the reply with another key
    reply_app_id: str | None = None  # encrypt the reply for another AppID (WeCom: CorpID)
    plaintext_reply: bool = False  # answer an encrypted message in plaintext
    wecom: bool = False  # a WeCom callback (/wecom): encrypted echostr, msg_signature only
    get_delay: float = 0.0  # before answering a verification GET
    echo: str = "plaintext"  # WeCom: plaintext | newline | bom | encrypted (echostr as sent)

    @property
    def path(self) -> str:
        return "/wecom" if self.wecom else "/wechat"

    def answer(self, method: str, query: dict[str, str], body: bytes) -> tuple[int, bytes]:
        if self.wecom:
            return self._wecom_answer(method, query, body)
        if "signature" not in query:
            return 200, b"<html><title>some other page</title></html>"
        if not signature_matches(
            query["signature"], STUB_TOKEN, query["timestamp"], query["nonce"]
        ):
            return 403, b"forbidden"
        if method == "GET":
            return 200, query["echostr"].encode()
        return 200, self._reply(query, body).encode()

    def _reply(self, query: dict[str, str], body: bytes) -> str:
        fields = parse_xml_fields(body)
        encrypted = query.get("encrypt_type") == "aes"
        if encrypted:
            crypto = MessageCrypto(STUB_TOKEN, self.aes_key, STUB_APP_ID)
            inner = crypto.decrypt_message(
                query["msg_signature"], query["timestamp"], query["nonce"], fields["Encrypt"]
            )
            fields = parse_xml_fields(inner)
        xml = text_reply_xml(fields["FromUserName"], fields["ToUserName"], "ok", int(time.time()))
        if not encrypted or self.plaintext_reply:
            return xml
        out = MessageCrypto(
            STUB_TOKEN, self.reply_key or self.aes_key, self.reply_app_id or STUB_APP_ID
        )
        return out.encrypt_reply(xml, str(int(time.time())), query["nonce"])

    def _wecom_answer(self, method: str, query: dict[str, str], body: bytes) -> tuple[int, bytes]:
        if "msg_signature" not in query:
            return 200, b"<html><title>some other page</title></html>"
        crypto = MessageCrypto(STUB_TOKEN, self.aes_key, STUB_CORP_ID)
        signed = (query["msg_signature"], query["timestamp"], query["nonce"])
        try:
            if method == "GET":
                plaintext = crypto.decrypt_echostr(*signed, query["echostr"])
                return 200, {
                    "plaintext": plaintext,
                    "newline": plaintext + "\n",
                    "bom": "\ufeff" + plaintext,
                    "encrypted": query["echostr"],
                }[self.echo].encode()
            inner = parse_xml_fields(
                crypto.decrypt_message(*signed, parse_xml_fields(body)["Encrypt"])
            )
        except CryptoError:
            return 403, b"forbidden"
        now = int(time.time())
        xml = text_reply_xml(inner["FromUserName"], inner["ToUserName"], "ok", now)
        if self.plaintext_reply:
            return 200, xml.encode()
        out = MessageCrypto(
            STUB_TOKEN, self.reply_key or self.aes_key, self.reply_app_id or STUB_CORP_ID
        )
        return 200, out.encrypt_reply(xml, str(now), query["nonce"]).encode()


class _StubServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    plugin: StubPlugin
    stop: threading.Event

    def handle_error(self, request: Any, client_address: Any) -> None:
        """The probe hangs up on slow answers; a broken pipe is expected then."""


class _StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10
    server: _StubServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.command == "POST":
            self.server.stop.wait(self.server.plugin.post_delay)
        elif "echostr" in query:
            self.server.stop.wait(self.server.plugin.get_delay)
        status, payload = self.server.plugin.answer(self.command, query, body)
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _serve


@pytest.fixture
def stub() -> Iterator[Callable[[StubPlugin], str]]:
    """``start(plugin) -> endpoint URL`` of a stub server on 127.0.0.1 (stopped at teardown)."""
    servers: list[_StubServer] = []

    def start(plugin: StubPlugin) -> str:
        server = _StubServer(("127.0.0.1", 0), _StubHandler)
        server.plugin, server.stop = plugin, threading.Event()
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/e/stubhook{plugin.path}"

    yield start
    for server in servers:
        server.stop.set()
        server.shutdown()
        server.server_close()


def probe_stub(url: str, key: str, deadline: float = probe.WECHAT_DEADLINE) -> list[StepResult]:
    return run_probe(
        url,
        STUB_TOKEN,
        app_id=STUB_APP_ID,
        aes_key=key,
        allow_local=True,
        timeout=5.0,
        deadline=deadline,
    )


def test_stub_that_answers_correctly_passes(stub: Callable[[StubPlugin], str]) -> None:
    key = make_aes_key()
    results = probe_stub(stub(StubPlugin(key)), key)
    assert results[REACH].verdict is Verdict.WARN  # 200, but not this plugin's status page
    assert verdicts(results)[VERIFY:] == [Verdict.OK, Verdict.OK]


def test_slow_reply_fails(stub: Callable[[StubPlugin], str]) -> None:
    key = make_aes_key()
    results = probe_stub(stub(StubPlugin(key, post_delay=0.6)), key, deadline=0.3)
    message = results[MESSAGE]
    assert message.verdict is Verdict.FAIL and "after 300 ms" in message.detail
    assert message.elapsed_ms is not None and message.elapsed_ms >= 600
    assert fixes(message).startswith("slow reply")


def test_no_reply_within_the_deadline_fails(stub: Callable[[StubPlugin], str]) -> None:
    key = make_aes_key()
    started = time.monotonic()
    results = probe_stub(stub(StubPlugin(key, post_delay=5.0)), key, deadline=0.3)
    assert time.monotonic() - started < 4.0, "the probe must stop waiting"
    message = results[MESSAGE]
    assert message.verdict is Verdict.FAIL and message.detail.startswith("no reply within 1.3 s")
    assert fixes(message).startswith("slow reply")


@pytest.mark.parametrize(
    ("plugin_kwargs", "expected"),
    [
        ({"reply_key": make_aes_key()}, "EncodingAESKey mismatch"),
        ({"reply_app_id": "wx" + "f" * 16}, "AppID mismatch"),
        ({"plaintext_reply": True}, "must encrypt replies in safe mode"),
    ],
)
def test_replies_wechat_would_reject_fail(
    plugin_kwargs: dict[str, Any], expected: str, stub: Callable[[StubPlugin], str]
) -> None:
    key = make_aes_key()
    results = probe_stub(stub(StubPlugin(key, **plugin_kwargs)), key)
    assert results[VERIFY].verdict is Verdict.OK
    assert results[MESSAGE].verdict is Verdict.FAIL
    assert expected in fixes(results[MESSAGE])


def probe_wecom_stub(
    url: str,
    key: str,
    deadline: float = probe.WECHAT_DEADLINE,
    verify_deadline: float = probe.WECOM_VERIFY_DEADLINE,
) -> list[StepResult]:
    return run_probe(
        url,
        STUB_TOKEN,
        app_id=STUB_CORP_ID,
        aes_key=key,
        agent_id=STUB_AGENT_ID,
        allow_local=True,
        timeout=5.0,
        deadline=deadline,
        verify_deadline=verify_deadline,
    )


def test_wecom_stub_that_answers_correctly_passes(stub: Callable[[StubPlugin], str]) -> None:
    key = make_aes_key()
    results = probe_wecom_stub(stub(StubPlugin(key, wecom=True)), key)
    assert results[REACH].verdict is Verdict.WARN  # 200, but not this plugin's status page
    assert verdicts(results)[VERIFY:] == [Verdict.OK, Verdict.OK]


def test_wecom_slow_verification_fails(stub: Callable[[StubPlugin], str]) -> None:
    key = make_aes_key()
    results = probe_wecom_stub(
        stub(StubPlugin(key, wecom=True, get_delay=0.5)), key, verify_deadline=0.3
    )
    verification = results[VERIFY]
    assert verification.verdict is Verdict.FAIL
    assert verification.detail == "echostr decrypted, but after WeCom's 300 ms limit"
    assert verification.elapsed_ms is not None and verification.elapsed_ms >= 500
    assert fixes(verification).startswith("slow answer: WeCom wants it within 1 s")
    assert results[MESSAGE].verdict is Verdict.OK  # not refused: the message is still tried


@pytest.mark.parametrize(
    ("echo", "expected"),
    [
        ("newline", "extra whitespace/quotes"),
        ("bom", "behind a BOM"),
        ("encrypted", "still encrypted"),
    ],
)
def test_wecom_wrong_verification_body_fails(
    echo: str, expected: str, stub: Callable[[StubPlugin], str]
) -> None:
    key = make_aes_key()
    results = probe_wecom_stub(stub(StubPlugin(key, wecom=True, echo=echo)), key)
    assert results[VERIFY].verdict is Verdict.FAIL and expected in results[VERIFY].detail
    assert results[MESSAGE].verdict is Verdict.OK


@pytest.mark.parametrize(
    ("plugin_kwargs", "expected"),
    [
        ({"reply_key": make_aes_key()}, "EncodingAESKey mismatch"),
        ({"reply_app_id": "ww" + "f" * 16}, "CorpID mismatch: set app_id"),
        ({"plaintext_reply": True}, "must encrypt replies to WeCom"),
    ],
)
def test_wecom_replies_wecom_would_reject_fail(
    plugin_kwargs: dict[str, Any], expected: str, stub: Callable[[StubPlugin], str]
) -> None:
    key = make_aes_key()
    results = probe_wecom_stub(stub(StubPlugin(key, wecom=True, **plugin_kwargs)), key)
    assert results[VERIFY].verdict is Verdict.OK
    assert results[MESSAGE].verdict is Verdict.FAIL
    assert expected in fixes(results[MESSAGE])


def test_wecom_slow_or_missing_reply_fails(stub: Callable[[StubPlugin], str]) -> None:
    key = make_aes_key()
    slow = probe_wecom_stub(stub(StubPlugin(key, wecom=True, post_delay=0.6)), key, deadline=0.3)
    assert slow[MESSAGE].verdict is Verdict.FAIL and "after 300 ms" in slow[MESSAGE].detail
    assert fixes(slow[MESSAGE]).startswith("slow reply: WeCom waits 5 s")
    started = time.monotonic()
    silent = probe_wecom_stub(stub(StubPlugin(key, wecom=True, post_delay=5.0)), key, deadline=0.3)
    assert time.monotonic() - started < 4.0, "the probe must stop waiting"
    assert silent[MESSAGE].detail.startswith("no reply within 1.3 s")
    assert fixes(silent[MESSAGE]).startswith("slow reply: WeCom")


def test_connection_refused_is_explained_and_later_steps_skipped() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    results = run_probe(f"http://127.0.0.1:{port}/e/x/wechat", "token123", allow_local=True)
    assert results[REACH].verdict is Verdict.FAIL
    assert "connection refused" in results[REACH].detail
    assert verdicts(results)[VERIFY:] == [Verdict.SKIP, Verdict.SKIP]


# --- pure checks (no network) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "verdict", "fix_part"),
    [
        ("https://dify.example.com/e/abc/wechat", Verdict.OK, ""),
        ("https://dify.example.com:443/e/abc/wechat", Verdict.OK, ""),
        ("http://dify.example.com/e/abc/wechat", Verdict.WARN, "https"),
        ("https://dify.example.com:8443/e/abc/wechat", Verdict.FAIL, "ports 80 and 443"),
        ("http://localhost/e/abc/wechat", Verdict.FAIL, "ENDPOINT_URL_TEMPLATE"),
        ("https://127.0.0.1/e/abc/wechat", Verdict.FAIL, "ENDPOINT_URL_TEMPLATE"),
        ("https://192.168.1.20/e/abc/wechat", Verdict.FAIL, "ENDPOINT_URL_TEMPLATE"),
        ("https://[::1]/e/abc/wechat", Verdict.FAIL, "ENDPOINT_URL_TEMPLATE"),
        ("https://api/e/abc/wechat", Verdict.FAIL, "ENDPOINT_URL_TEMPLATE"),
        ("https://dify.example.com/e/abc", Verdict.FAIL, "/wechat"),
        ("https://dify.example.com/e/abc/wechat?x=1", Verdict.WARN, "without anything"),
        ("ftp://dify.example.com/e/abc/wechat", Verdict.FAIL, "https://"),
    ],
)
def test_url_check(url: str, verdict: Verdict, fix_part: str) -> None:
    result = check_url(url)
    assert result.verdict is verdict, result
    assert fix_part in fixes(result)


def test_allow_local_turns_port_host_and_http_into_warnings() -> None:
    url = "http://127.0.0.1:5002/e/abc/wechat"
    assert check_url(url).verdict is Verdict.FAIL
    local = check_url(url, allow_local=True)
    assert local.verdict is Verdict.WARN
    assert "ENDPOINT_URL_TEMPLATE" in fixes(local) and "ports 80 and 443" in fixes(local)
    assert check_url("http://127.0.0.1:5002/e/abc", allow_local=True).verdict is Verdict.FAIL


@pytest.mark.parametrize(
    ("url", "verdict", "fix_part"),
    [
        ("https://dify.example.com/e/abc/wecom", Verdict.OK, ""),
        ("https://dify.example.com:8443/e/abc/wecom", Verdict.OK, ""),  # no port rule (§10.1)
        ("https://dify.example.com/e/abc/wechat", Verdict.OK, ""),  # with platform wecom
        ("http://dify.example.com/e/abc/wecom", Verdict.WARN, "https"),
        ("https://1.2.3.4/e/abc/wecom", Verdict.WARN, "ICP-filed"),
        ("http://localhost/e/abc/wecom", Verdict.FAIL, "ENDPOINT_URL_TEMPLATE"),
        ("https://dify.example.com/e/abc", Verdict.FAIL, "/e/<hook_id>/wecom"),
        ("ftp://dify.example.com/e/abc/wecom", Verdict.FAIL, "/e/<hook_id>/wecom"),
    ],
)
def test_wecom_url_check(url: str, verdict: Verdict, fix_part: str) -> None:
    result = check_url(url, platform=probe.Platform.WECOM)
    assert result.verdict is verdict, result
    assert fix_part in fixes(result)
    assert "WeChat" not in result.detail + fixes(result)


def test_display_url_masks_query_and_credentials() -> None:
    shown = display_url("https://user:pw@dify.example.com:8443/e/abc/wechat?signature=abc#x")
    assert shown == "https://dify.example.com:8443/e/abc/wechat?…"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"token": ""}, "Token is required"),
        ({"mode": "safe"}, "needs --aes-key"),
        ({"aes_key": "short"}, "43 letters"),
        ({"aes_key": make_aes_key()}, "needs --app-id"),
        ({"mode": "loud"}, "--mode must be"),
    ],
)
def test_usage_errors_never_echo_values(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"url": "https://dify.example.com/e/abc/wechat", "token": "tok123"}
    args.update(kwargs)
    with pytest.raises(probe.ProbeUsageError, match=message) as info:
        make_config(**args)
    for value in kwargs.values():
        if value and value not in ("safe", "loud"):
            assert value not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"aes_key": ""}, "WeCom needs --aes-key"),
        ({"aes_key": "short"}, "43 letters"),
        ({"app_id": ""}, "WeCom needs --corp-id"),
        ({"app_id": "ww01]]>x"}, "letters and digits"),
        ({"app_id": "1000002"}, "not the AgentId"),
        ({"agent_id": "app7"}, "--agent-id must be a number"),
        ({"mode": "plain"}, "--mode does not apply to WeCom"),
        ({"platform": "qq"}, "--platform must be one of"),
        (
            {
                "url": "https://dify.example.com/e/abc/wechat",
                "platform": "official_account",
                "agent_id": "1000002",
            },
            "--agent-id is for WeCom only",
        ),
    ],
)
def test_wecom_usage_errors_never_echo_values(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "url": "https://dify.example.com/e/abc/wecom",
        "token": "tok123",
        "app_id": STUB_CORP_ID,
        "aes_key": make_aes_key(),
    }
    args.update(kwargs)
    with pytest.raises(probe.ProbeUsageError, match=message) as info:
        make_config(**args)
    for name in ("aes_key", "app_id", "agent_id"):
        if kwargs.get(name):
            assert kwargs[name] not in str(info.value)


def test_platform_is_inferred_from_the_path_or_chosen() -> None:
    key = make_aes_key()
    inferred = make_config("https://h.example/e/a/wecom", "tok", app_id=STUB_CORP_ID, aes_key=key)
    assert inferred.wecom and inferred.platform_inferred and inferred.mode == "safe"
    assert "inferred from the /wecom path" in probe.report_header(inferred)
    chosen = make_config(
        "https://h.example/e/a/wechat", "tok", app_id=STUB_CORP_ID, aes_key=key, platform="wecom"
    )
    assert chosen.wecom and not chosen.platform_inferred
    assert "inferred" not in probe.report_header(chosen)
    assert not make_config("https://h.example/e/a/wechat", "tok").wecom
    forced = make_config("https://h.example/e/a/wecom", "tok", platform="official_account")
    assert not forced.wecom


def test_mode_defaults_to_safe_with_a_key() -> None:
    key = make_aes_key()
    assert make_config("https://h.example/e/a/wechat", "tok", app_id="wx1", aes_key=key).mode == (
        "safe"
    )
    assert make_config("https://h.example/e/a/wechat", "tok").mode == "plain"
