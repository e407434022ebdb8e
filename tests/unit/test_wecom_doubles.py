"""Self-tests of the WeCom test doubles: ``tests/fake_wecom_api.py`` and
``tests/emulator/wecom.py`` (reference ``wechat-protocol.md`` §10).

The fake API is exercised over loopback with ``requests``; the simulator against a tiny stub
callback server started here on 127.0.0.1 that decrypts with wechatpy's WeCom crypto. Every
wait is bounded; nothing leaves the machine.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import requests
import xmltodict
from wechatpy.enterprise.crypto import WeChatCrypto as WeComCrypto

from tests.conftest import make_aes_key
from tests.emulator.wecom import (
    DEFAULT_AGENT_ID,
    WECOM_TAMPER_KINDS,
    WeComSimulator,
    WeComUser,
)
from tests.fake_wecom_api import (
    DEFAULT_UNTRUSTED_IP,
    GETTOKEN,
    MEDIA_GET,
    MEDIA_UPLOAD,
    MESSAGE_SEND,
    FakeWeComAPI,
)

CORP_ID = "ww0123456789abcdef"
TOKEN = "wecomToken123"
USER = "zhangsan"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
AMR = b"#!AMR\n" + b"\x3c" * 64
HINT = r"hint: \[\d+_\d+_[0-9a-f]+\], from ip: [\d.]+, more info at "
MORE_INFO = "https://open.work.weixin.qq.com/devtool/query?e="

# =========================================================================== the fake API


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False  # loopback only, whatever proxies the environment names
        yield session


@pytest.fixture
def wecom() -> Iterator[FakeWeComAPI]:
    with FakeWeComAPI() as fake:
        yield fake


def get_token(http: requests.Session, api: FakeWeComAPI) -> str:
    params = {"corpid": api.corp_id, "corpsecret": api.corp_secret}
    answer = http.get(api.base_url + GETTOKEN, params=params, timeout=5).json()
    assert answer["errcode"] == 0, answer
    return str(answer["access_token"])


def send(
    http: requests.Session, api: FakeWeComAPI, body: dict[str, Any], token: str | None = None
) -> dict[str, Any]:
    token = token or get_token(http, api)
    url = f"{api.base_url}{MESSAGE_SEND}?access_token={token}"
    answer: dict[str, Any] = http.post(url, json=body, timeout=5).json()
    return answer


def text(content: str, touser: str = USER, agentid: Any = DEFAULT_AGENT_ID) -> dict[str, Any]:
    return {"touser": touser, "agentid": agentid, "msgtype": "text", "text": {"content": content}}


def upload(
    http: requests.Session,
    api: FakeWeComAPI,
    kind: str,
    filename: str,
    content: bytes,
    content_type: str = "application/octet-stream",
) -> dict[str, Any]:
    url = f"{api.base_url}{MEDIA_UPLOAD}?access_token={get_token(http, api)}&type={kind}"
    answer: dict[str, Any] = http.post(
        url, files={"media": (filename, content, content_type)}, timeout=10
    ).json()
    return answer


def test_gettoken_checks_corp_and_secret_and_reuses_the_token(
    http: requests.Session, wecom: FakeWeComAPI
) -> None:
    assert wecom.corp_id.startswith("ww") and len(wecom.corp_id) == 18
    url = wecom.base_url + GETTOKEN
    cases = [
        ({"corpid": "wwnot", "corpsecret": wecom.corp_secret}, 40013, "invalid corpid"),
        ({"corpid": wecom.corp_id, "corpsecret": "wrong"}, 40001, "invalid secret"),
        ({"corpsecret": wecom.corp_secret}, 41002, "corpid missing"),
        ({"corpid": wecom.corp_id}, 41004, "corpsecret missing"),
    ]
    for params, errcode, errmsg in cases:
        answer = http.get(url, params=params, timeout=5).json()
        assert answer["errcode"] == errcode
        assert re.fullmatch(
            re.escape(errmsg) + ", " + HINT + re.escape(MORE_INFO) + str(errcode), answer["errmsg"]
        ), answer
    first = http.get(
        url, params={"corpid": wecom.corp_id, "corpsecret": wecom.corp_secret}, timeout=5
    ).json()
    assert first["errcode"] == 0 and first["errmsg"] == "ok" and first["expires_in"] == 7200
    assert get_token(http, wecom) == first["access_token"] == wecom.current_token
    assert wecom.token_fetches == len(cases) + 2


def test_access_token_missing_unknown_expired_revoked(
    http: requests.Session, wecom: FakeWeComAPI
) -> None:
    url = wecom.base_url + MESSAGE_SEND
    assert http.post(url, json=text("x"), timeout=5).json()["errcode"] == 41001
    assert send(http, wecom, text("x"), token="nope")["errcode"] == 40014
    token = get_token(http, wecom)
    wecom.expire_token()
    answer = send(http, wecom, text("x"), token=token)
    assert answer["errcode"] == 42001 and answer["errmsg"].startswith("access_token expired, ")
    fresh = get_token(http, wecom)
    assert fresh != token
    assert send(http, wecom, text("after refresh"), token=fresh)["errcode"] == 0
    wecom.revoke_token()
    assert send(http, wecom, text("x"), token=fresh)["errcode"] == 40014
    assert wecom.texts(USER) == ["after refresh"]
    # the token is kept out of the recorded query
    assert all("access_token" not in c.query for c in wecom.calls(MESSAGE_SEND))


def test_untrusted_ip_gets_60020_everywhere_but_gettoken(
    http: requests.Session, wecom: FakeWeComAPI
) -> None:
    token = get_token(http, wecom)
    wecom.distrust_ip()
    assert get_token(http, wecom) == token  # gettoken still works
    answer = send(http, wecom, text("x"), token=token)
    assert answer["errcode"] == 60020
    assert re.fullmatch(
        r"not allow to access from your ip, hint: \[\d+_\d+_[0-9a-f]+\], "
        rf"from ip: {re.escape(DEFAULT_UNTRUSTED_IP)}, "
        r"more info at https://open\.work\.weixin\.qq\.com/devtool/query\?e=60020",
        answer["errmsg"],
    ), answer["errmsg"]
    media = http.get(
        f"{wecom.base_url}{MEDIA_GET}?access_token={token}&media_id=x", timeout=5
    ).json()
    assert media["errcode"] == 60020
    wecom.distrust_ip("198.51.100.9")
    assert "from ip: 198.51.100.9," in send(http, wecom, text("x"), token=token)["errmsg"]
    wecom.trust_ip()
    assert send(http, wecom, text("trusted again"), token=token)["errcode"] == 0
    assert wecom.texts(USER) == ["trusted again"]


def test_message_send_validation(http: requests.Session, wecom: FakeWeComAPI) -> None:
    token = get_token(http, wecom)
    ok = send(http, wecom, text("int agent"), token)
    assert ok["errcode"] == 0 and ok["invaliduser"] == "" and ok["msgid"]
    assert send(http, wecom, text("str agent", agentid="1000002"), token)["errcode"] == 0
    assert send(http, wecom, text("x", agentid=1000003), token)["errcode"] == 40056
    assert send(http, wecom, text("x", agentid="abc"), token)["errcode"] == 40056
    no_agent = {"touser": USER, "msgtype": "text", "text": {"content": "x"}}
    assert send(http, wecom, no_agent, token)["errcode"] == 41011
    assert send(http, wecom, text(""), token)["errcode"] == 44004
    music = {"touser": USER, "agentid": 1000002, "msgtype": "music", "music": {}}
    assert send(http, wecom, music, token)["errcode"] == 40008
    card = {"touser": USER, "agentid": 1000002, "msgtype": "textcard"}
    card["textcard"] = {"title": "T", "description": "D"}
    assert send(http, wecom, card, token)["errcode"] == 40058
    card["textcard"] = {"title": "T", "description": "D", "url": "https://example.com"}
    assert send(http, wecom, card, token)["errcode"] == 0
    article = {"title": "A", "url": "https://example.com"}
    news = {"touser": USER, "agentid": 1000002, "msgtype": "news"}
    news["news"] = {"articles": [article] * 9}
    assert send(http, wecom, news, token)["errcode"] == 45008
    news["news"] = {"articles": [article] * 8}
    assert send(http, wecom, news, token)["errcode"] == 0
    # JSON without a Content-Type, as wechatpy posts it
    raw = json.dumps(text("no content type"), ensure_ascii=False).encode("utf-8")
    url = f"{wecom.base_url}{MESSAGE_SEND}?access_token={token}"
    assert http.post(url, data=raw, timeout=5).json()["errcode"] == 0
    # other WeChat APIs are not served
    other = http.post(
        f"{wecom.base_url}/cgi-bin/message/custom/send?access_token={token}",
        json=text("x"),
        timeout=5,
    )
    assert other.status_code == 404 and other.json()["errcode"] == 40066
    assert wecom.texts(USER) == ["int agent", "str agent", "no content type"]
    kinds = [kind for kind, _ in wecom.timeline(USER)]
    assert kinds == ["text", "text", "textcard", "news", "text"]
    assert [b["msgtype"] for b in wecom.outbox(USER)] == kinds
    assert wecom.count(MESSAGE_SEND) == 12


def test_long_text_is_truncated_not_refused(http: requests.Session, wecom: FakeWeComAPI) -> None:
    long = "长" * 1000  # 3000 UTF-8 bytes
    assert send(http, wecom, text(long))["errcode"] == 0
    shown = wecom.texts(USER)[0]
    assert shown == "长" * 682 and len(shown.encode("utf-8")) <= 2048
    assert wecom.truncated_texts(USER) == [long]
    assert wecom.outbox(USER)[0]["text"]["content"] == long  # the body as sent


def test_markdown_limit(http: requests.Session, wecom: FakeWeComAPI) -> None:
    def markdown(content: str) -> dict[str, Any]:
        return {
            "touser": USER,
            "agentid": 1000002,
            "msgtype": "markdown",
            "markdown": {"content": content},
        }

    assert send(http, wecom, markdown("**ok**" + "a" * 2042))["errcode"] == 0
    refused = send(http, wecom, markdown("a" * 2049))
    assert refused["errcode"] == 40058
    assert refused["errmsg"].startswith("markdown.content exceed max length 2048, hint: [")
    assert wecom.markdowns(USER) == ["**ok**" + "a" * 2042]
    with FakeWeComAPI(max_markdown_bytes=4096) as roomy:
        assert send(http, roomy, markdown("a" * 4096))["errcode"] == 0
        assert send(http, roomy, markdown("a" * 4097))["errmsg"].startswith(
            "markdown.content exceed max length 4096"
        )


def test_members_and_recipients(http: requests.Session) -> None:
    with FakeWeComAPI(members={"zhangsan", "lisi"}) as api:
        token = get_token(http, api)
        refused = send(http, api, text("x", touser="wangwu"), token)
        assert refused["errcode"] == 81013
        assert refused["errmsg"].startswith("user & party & tag all invalid")
        partial = send(http, api, text("partial", touser="zhangsan|wangwu"), token)
        assert partial["errcode"] == 0 and partial["invaliduser"] == "wangwu"
        assert send(http, api, text("everyone", touser="@all"), token)["errcode"] == 0
        assert api.texts("zhangsan") == ["partial", "everyone"]
        assert api.texts("lisi") == ["everyone"]
        assert api.texts("wangwu") == []
    with FakeWeComAPI() as open_api:
        assert send(http, open_api, text("both", touser="a|b"))["errcode"] == 0
        assert open_api.texts("a") == open_api.texts("b") == ["both"]


def test_media_upload_limits_and_round_trip(http: requests.Session, wecom: FakeWeComAPI) -> None:
    image = upload(http, wecom, "image", "a.png", PNG, "image/png")
    assert image["errcode"] == 0 and image["type"] == "image"
    assert isinstance(image["created_at"], str) and image["created_at"].isdigit()
    assert upload(http, wecom, "image", "a.gif", b"GIF89a" + b"\x00" * 10)["errcode"] == 40005
    assert (
        upload(http, wecom, "image", "big.jpg", b"\xff" * (10 * 1024 * 1024 + 1))["errcode"]
        == 40009
    )
    assert upload(http, wecom, "voice", "a.mp3", b"ID3" + b"\x00" * 10)["errcode"] == 40005
    voice = upload(http, wecom, "voice", "a.amr", AMR)
    video = upload(http, wecom, "video", "a.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 20)
    document = upload(http, wecom, "file", "report.pdf", b"%PDF-1.4 fake")
    assert upload(http, wecom, "thumb", "t.jpg", b"\xff" * 10)["errcode"] == 40004
    assert voice["errcode"] == video["errcode"] == document["errcode"] == 0

    token = get_token(http, wecom)
    got = http.get(
        f"{wecom.base_url}{MEDIA_GET}",
        params={"access_token": token, "media_id": image["media_id"]},
        timeout=5,
    )
    assert got.content == PNG and got.headers["Content-Type"] == "image/png"
    assert 'filename="a.png"' in got.headers["Content-disposition"]
    clip = http.get(
        f"{wecom.base_url}{MEDIA_GET}",
        params={"access_token": token, "media_id": video["media_id"]},
        timeout=5,
    )
    assert clip.content.startswith(b"\x00\x00\x00\x18ftyp")  # bytes, not a video_url
    missing = http.get(
        f"{wecom.base_url}{MEDIA_GET}",
        params={"access_token": token, "media_id": "nope"},
        timeout=5,
    )
    assert missing.status_code == 200 and missing.json()["errcode"] == 40007

    def media_message(kind: str, media_id: str) -> dict[str, Any]:
        return {"touser": USER, "agentid": 1000002, "msgtype": kind, kind: {"media_id": media_id}}

    assert send(http, wecom, media_message("image", "unknown"), token)["errcode"] == 40007
    assert send(http, wecom, media_message("voice", image["media_id"]), token)["errcode"] == 40007
    for kind, answer in (("image", image), ("voice", voice), ("file", document)):
        assert send(http, wecom, media_message(kind, answer["media_id"]), token)["errcode"] == 0
    assert wecom.received_media(USER) == [
        ("image", PNG),
        ("voice", AMR),
        ("file", b"%PDF-1.4 fake"),
    ]
    assert wecom.timeline(USER)[0] == ("image", image["media_id"])


def test_add_media_kinds(http: requests.Session, wecom: FakeWeComAPI) -> None:
    voice = wecom.add_media(AMR, "audio/amr")
    document = wecom.add_media(b"%PDF", "application/pdf", media_id="doc-1")
    stored_voice, stored_doc = wecom.media(voice), wecom.media("doc-1")
    assert stored_voice is not None and stored_voice.kind == "voice"
    assert stored_doc is not None and stored_doc.kind == "file" and document == "doc-1"
    token = get_token(http, wecom)
    got = http.get(f"{wecom.base_url}{MEDIA_GET}?access_token={token}&media_id={voice}", timeout=5)
    assert got.content == AMR and got.headers["Content-Type"] == "audio/amr"


def test_scripted_failures_and_delays(http: requests.Session, wecom: FakeWeComAPI) -> None:
    token = get_token(http, wecom)
    wecom.fail(45009, path=MESSAGE_SEND)
    assert send(http, wecom, text("x"), token)["errcode"] == 45009
    assert send(http, wecom, text("y"), token)["errcode"] == 0
    wecom.fail(-1, path=GETTOKEN)
    params = {"corpid": wecom.corp_id, "corpsecret": wecom.corp_secret}
    assert http.get(wecom.base_url + GETTOKEN, params=params, timeout=5).json()["errcode"] == -1
    wecom.delay(2.0, path=MESSAGE_SEND)
    url = f"{wecom.base_url}{MESSAGE_SEND}?access_token={token}"
    with pytest.raises(requests.exceptions.Timeout):
        http.post(url, json=text("slow"), timeout=0.3)
    assert wecom.wait_until(lambda api: "slow" in api.texts(USER), timeout=5)


def test_wait_until(http: requests.Session, wecom: FakeWeComAPI) -> None:
    token = get_token(http, wecom)
    timer = threading.Timer(0.1, lambda: send(http, wecom, text("later"), token))
    timer.start()
    try:
        assert wecom.wait_until(lambda api: api.texts(USER) == ["later"], timeout=5)
        assert not wecom.wait_until(lambda api: api.markdowns(USER) != [], timeout=0.1)
    finally:
        timer.join(timeout=5)


# =========================================================================== the simulator


class StubCallback:
    """A WeCom callback on 127.0.0.1: verifies, decrypts (wechatpy), answers per ``plan``.

    Behaviours: ``passive`` (encrypted text reply ``echo: <Content>``), ``long`` (a 3000-byte
    text), ``empty``, ``success``, ``slow`` (sleeps ``slow_seconds``, then empty), ``error``
    (HTTP 500), ``wrong_corp``, ``bad_signature``, ``plaintext``, ``swapped``; for GET:
    ``verify`` (the plaintext), ``quoted``, ``newline``, ``slow``.
    """

    def __init__(self, token: str, aes_key: str, corp_id: str) -> None:
        self.token, self.aes_key, self.corp_id = token, aes_key, corp_id
        self.crypto = WeComCrypto(token, aes_key, corp_id)
        self.default = "passive"
        self.plan: list[str] = []
        self.slow_seconds = 1.0
        self.requests: list[tuple[str, str, bytes]] = []  # method, raw target, body
        self.received: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub._serve(self, b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                stub._serve(self, self.rfile.read(length))

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/wecom/callback"

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def _next(self) -> str:
        with self._lock:
            return self.plan.pop(0) if self.plan else self.default

    def _serve(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        with self._lock:
            self.requests.append((handler.command, handler.path, body))
        query = {k: v[-1] for k, v in parse_qs(urlsplit(handler.path).query).items()}
        behaviour = self._next()
        try:
            if handler.command == "GET":
                status, answer = self._verify(query, behaviour)
            else:
                status, answer = self._push(query, body, behaviour)
        except Exception as exc:  # a refused signature / ciphertext / corp id
            status, answer = 403, f"{type(exc).__name__}".encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "text/plain; charset=utf-8")
            handler.send_header("Content-Length", str(len(answer)))
            handler.end_headers()
            handler.wfile.write(answer)
        except OSError:
            pass  # the simulator hung up (timeout tests)

    def _verify(self, query: dict[str, str], behaviour: str) -> tuple[int, bytes]:
        echostr = query["echostr"].replace(" ", "+")
        plain = str(
            self.crypto.check_signature(
                query["msg_signature"], query["timestamp"], query["nonce"], echostr
            )
        ).encode()
        if behaviour == "quoted":
            return 200, b'"' + plain + b'"'
        if behaviour == "newline":
            return 200, plain + b"\n"
        if behaviour == "slow":
            self._stop.wait(self.slow_seconds)
        return 200, plain

    def _push(self, query: dict[str, str], body: bytes, behaviour: str) -> tuple[int, bytes]:
        xml = self.crypto.decrypt_message(
            body.decode(), query["msg_signature"], query["timestamp"], query["nonce"]
        )
        msg = xmltodict.parse(xml)["xml"]
        with self._lock:
            self.received.append(msg)
        if behaviour == "error":
            return 500, b"boom"
        if behaviour == "slow":
            self._stop.wait(self.slow_seconds)
            return 200, b""
        if behaviour == "empty":
            return 200, b""
        if behaviour == "success":
            return 200, b"success"
        content = "长" * 1000 if behaviour == "long" else f"echo: {msg.get('Content') or ''}"
        to, frm = str(msg["FromUserName"]), str(msg["ToUserName"])
        if behaviour == "swapped":
            to, frm = frm, to
        reply = (
            f"<xml><ToUserName><![CDATA[{to}]]></ToUserName>"
            f"<FromUserName><![CDATA[{frm}]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            f"<Content><![CDATA[{content}]]></Content></xml>"
        )
        if behaviour == "plaintext":
            return 200, reply.encode()
        crypto = self.crypto
        if behaviour == "wrong_corp":
            crypto = WeComCrypto(self.token, self.aes_key, "ww0000000000000bad")
        envelope = str(crypto.encrypt_message(reply, query["nonce"]))
        if behaviour == "bad_signature":
            envelope = re.sub(
                r"<MsgSignature><!\[CDATA\[\w+\]\]>",
                "<MsgSignature><![CDATA[" + "0" * 40 + "]]>",
                envelope,
            )
        return 200, envelope.encode()


SCALE = 0.1  # each attempt waits 0.5 s


@pytest.fixture
def aes_key() -> str:
    return make_aes_key()


@pytest.fixture
def stub(aes_key: str) -> Iterator[StubCallback]:
    server = StubCallback(TOKEN, aes_key, CORP_ID)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sim(stub: StubCallback, aes_key: str) -> WeComSimulator:
    return WeComSimulator(stub.url, TOKEN, CORP_ID, aes_key, time_scale=SCALE)


def test_verify_url(sim: WeComSimulator, stub: StubCallback) -> None:
    stub.default = "verify"
    r = sim.verify_url()
    assert r.verified, r.problem
    assert r.status_code == 200 and r.text == r.expected and r.expected.isdigit()
    target = stub.requests[-1][1]
    assert [k.partition("=")[0] for k in urlsplit(target).query.split("&")] == [
        "msg_signature",
        "timestamp",
        "nonce",
        "echostr",
    ]
    raw_echostr = parse_qs(urlsplit(target).query)["echostr"][0]
    assert raw_echostr.endswith("=")  # decoded: base64 padding
    sent = urlsplit(target).query.split("echostr=")[1]
    assert not set("+/=") & set(sent) and unquote(sent) == raw_echostr  # percent-encoded
    assert sim.verify_url(echostr="1616140317555161061").text == "1616140317555161061"


@pytest.mark.parametrize(
    ("behaviour", "problem"),
    [("quoted", "quotes"), ("newline", "newline"), ("slow", "answered after")],
)
def test_verify_url_refusals(
    sim: WeComSimulator, stub: StubCallback, behaviour: str, problem: str
) -> None:
    stub.default = behaviour
    stub.slow_seconds = 0.4
    sim.verify_deadline = 0.2
    r = sim.verify_url(timeout=3.0)
    assert not r.verified and problem in (r.problem or "")


def test_push_is_encrypted_for_the_corp(sim: WeComSimulator, stub: StubCallback) -> None:
    user = sim.user(USER)
    assert isinstance(user, WeComUser) and user.user_id == USER
    assert user.say("你好") == ["echo: 你好"]
    method, target, body = stub.requests[-1]
    assert method == "POST"
    assert sorted(parse_qs(urlsplit(target).query)) == ["msg_signature", "nonce", "timestamp"]
    envelope = xmltodict.parse(body)["xml"]
    assert list(envelope) == ["ToUserName", "Encrypt", "AgentID"]
    assert envelope["ToUserName"] == CORP_ID and envelope["AgentID"] == "1000002"
    assert b"<AgentID><![CDATA[1000002]]></AgentID>" in body
    msg = stub.received[-1]
    assert msg["ToUserName"] == CORP_ID and msg["FromUserName"] == USER
    assert msg["MsgType"] == "text" and msg["Content"] == "你好"
    assert msg["AgentID"] == "1000002" and msg["MsgId"].isdigit()
    delivery = user.last
    assert delivery is not None and delivery.problem is None and delivery.notes == []
    assert delivery.reply is not None and delivery.reply["ToUserName"] == USER
    assert delivery.reply["FromUserName"] == CORP_ID
    answered = delivery.answered_by
    assert answered is not None and answered.index == 0 and len(delivery.attempts) == 1


def test_build_and_decrypt_request(sim: WeComSimulator) -> None:
    xml = sim.text(USER, "round trip", msg_id=42)
    params, body = sim.build_request(xml, timestamp=1700000000, nonce="123")
    assert params["timestamp"] == "1700000000" and params["nonce"] == "123"
    assert sim.decrypt_request(params, body) == xml


@pytest.mark.parametrize("behaviour", ["empty", "success"])
def test_ack_without_reply(sim: WeComSimulator, stub: StubCallback, behaviour: str) -> None:
    stub.default = behaviour
    delivery = sim.deliver(sim.text(USER, "hi"))
    assert delivery.user_saw == [] and delivery.problem is None and delivery.reply is None
    assert len(delivery.attempts) == 1 and len(stub.received) == 1


def test_non_200_is_retried(sim: WeComSimulator, stub: StubCallback) -> None:
    stub.plan = ["error", "passive"]
    xml = sim.text(USER, "again")
    delivery = sim.deliver(xml)
    assert delivery.user_saw == ["echo: again"] and delivery.problem is None
    first, second = delivery.attempts
    assert first.status == 500 and first.error == "HTTP 500" and not first.answered
    answered = delivery.answered_by
    assert answered is second and second.index == 1
    assert second.started >= sim.timeout * 0.9  # the next attempt starts 5 s (scaled) later
    assert stub.received[0] == stub.received[1]  # the same message, same MsgId


def test_every_attempt_failing_shows_nothing(sim: WeComSimulator, stub: StubCallback) -> None:
    stub.default = "error"
    delivery = sim.deliver(sim.text(USER, "x"))
    assert len(delivery.attempts) == 3 and delivery.user_saw == [] and delivery.text is None
    assert delivery.problem == "every attempt failed: HTTP 500, HTTP 500, HTTP 500"


def test_timeouts_and_attempt_count(stub: StubCallback, aes_key: str) -> None:
    stub.default = "slow"
    stub.slow_seconds = 1.0
    sim = WeComSimulator(stub.url, TOKEN, CORP_ID, aes_key, time_scale=SCALE, deliveries=2)
    started = time.monotonic()
    delivery = sim.deliver(sim.event(USER, "enter_agent"))
    assert time.monotonic() - started < 3.0
    assert [a.timed_out for a in delivery.attempts] == [True, True]
    assert delivery.user_saw == [] and "no response" in (delivery.problem or "")


def test_long_text_reply_is_shown_cut(sim: WeComSimulator, stub: StubCallback) -> None:
    stub.default = "long"
    delivery = sim.deliver(sim.text(USER, "long please"))
    assert delivery.user_saw == ["长" * 682] and delivery.problem is None
    assert delivery.notes == ["text reply cut from 3000 to 2048 bytes"]


@pytest.mark.parametrize(
    ("behaviour", "problem"),
    [
        ("wrong_corp", "does not decrypt"),
        ("bad_signature", "MsgSignature does not verify"),
        ("plaintext", "plaintext reply"),
        ("swapped", "swapped"),
    ],
)
def test_bad_replies_show_nothing(
    sim: WeComSimulator, stub: StubCallback, behaviour: str, problem: str
) -> None:
    stub.default = behaviour
    delivery = sim.deliver(sim.text(USER, "x"))
    assert delivery.user_saw == [] and problem in (delivery.problem or ""), delivery.problem
    assert len(delivery.attempts) == 1  # HTTP 200: WeCom does not retry


@pytest.mark.parametrize("tamper", WECOM_TAMPER_KINDS)
def test_tampered_pushes_are_refused_by_the_stub(
    sim: WeComSimulator, stub: StubCallback, tamper: str
) -> None:
    r = sim.post_xml(sim.text(USER, "x"), tamper=tamper)
    assert r.status_code == 403 and stub.received == []
    with pytest.raises(ValueError, match="unknown tamper"):
        sim.build_request(sim.text(USER, "x"), tamper="signature")


def test_message_builders(sim: WeComSimulator) -> None:
    def parse(xml: str) -> dict[str, Any]:
        fields: dict[str, Any] = xmltodict.parse(xml)["xml"]
        assert fields["ToUserName"] == CORP_ID and fields["FromUserName"] == USER
        assert fields["AgentID"] == str(DEFAULT_AGENT_ID) and fields["CreateTime"].isdigit()
        return fields

    image = parse(sim.image(USER, media_id="m1", pic_url="https://p/1.jpg"))
    assert (image["MsgType"], image["MediaId"], image["PicUrl"]) == (
        "image",
        "m1",
        "https://p/1.jpg",
    )
    voice = parse(sim.voice(USER, media_id="v1"))
    assert (voice["MediaId"], voice["Format"]) == ("v1", "amr") and "MsgId" in voice
    video = parse(sim.video(USER, media_id="vid", thumb_media_id="th"))
    assert (video["MediaId"], video["ThumbMediaId"]) == ("vid", "th")
    location = parse(sim.location(USER, 30.5, 114.25, 15, "武汉"))
    assert (location["Location_X"], location["Location_Y"]) == ("30.5", "114.25")
    assert (location["Scale"], location["Label"]) == ("15", "武汉")
    link = parse(sim.link(USER, "T", "D", "https://u", pic_url="https://p"))
    assert [link[k] for k in ("Title", "Description", "Url", "PicUrl")] == [
        "T",
        "D",
        "https://u",
        "https://p",
    ]
    enter = parse(sim.event(USER, "enter_agent"))
    assert enter["Event"] == "enter_agent" and "EventKey" in enter and enter["EventKey"] is None
    assert "MsgId" not in enter
    click = parse(sim.event(USER, "click", "MENU_1"))
    assert (click["Event"], click["EventKey"]) == ("click", "MENU_1")
    where = parse(sim.event(USER, "LOCATION", Latitude=23.1, Longitude=113.3, Precision=10.0))
    assert (where["Latitude"], where["Longitude"], where["Precision"]) == ("23.1", "113.3", "10.0")
    for event in ("subscribe", "unsubscribe", "view"):
        assert "MsgId" not in parse(
            sim.event(USER, event, "https://x" if event == "view" else None)
        )


def test_user_events_reach_the_callback(sim: WeComSimulator, stub: StubCallback) -> None:
    stub.default = "empty"
    user = sim.user(USER)
    assert user.event("subscribe") == []
    assert user.send(sim.image(USER, media_id="m1")) == []
    assert [m["MsgType"] for m in stub.received] == ["event", "image"]
    assert stub.received[0]["Event"] == "subscribe" and "MsgId" not in stub.received[0]
    assert len(sim.history) == 2
