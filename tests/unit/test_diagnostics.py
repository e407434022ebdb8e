"""The diagnostics section of the status page: the key, the journal (bounded, sanitized,
per-day counters, never in the way of a reply) and what the page shows with and without
the key."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import pytest

from endpoints.wechat import delivery, diagnostics, timing
from endpoints.wechat.api import error_for
from endpoints.wechat.delivery import Pusher, Router
from endpoints.wechat.diagnostics import (
    FLUSH_INTERVAL,
    KEEP_DAYS,
    MAX_ERRORS,
    Diagnostics,
    Journal,
    JournalBuffer,
    clean_detail,
    diagnostics_key,
    explain,
    key_matches,
    reported_ip,
)
from endpoints.wechat.intake import (
    HttpReply,
    HttpRequest,
    Runtime,
    handle_get,
    handle_post,
    load_diagnostics,
)
from endpoints.wechat.outbox import Outbox, Route
from endpoints.wechat.parts import PartKind
from endpoints.wechat.retry_tracker import RetryTracker
from endpoints.wechat.settings import Settings, load_settings
from endpoints.wechat.storage import EndpointStore
from tests import samples
from tests.fakes import FakeClock, MemoryStorage, ScriptedCaller
from tests.signing import WeChatSigner

TOKEN = "diagTokenXYZ123"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APP_SECRET = "0123456789abcdef0123456789abcdef"
APP_ID = "wx1234567890abcdef"
OPENID = "oAbCdEfGhIjKlMnOpQrStUvWxYz0"  # 28 characters, like WeChat's
ACCESS_TOKEN = "84_" + "AbCdEf0123456789_-" * 8
DAY = 86400.0


@pytest.fixture(autouse=True)
def fresh_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pending journal entries and the 48001 cache are process-wide: start empty."""
    monkeypatch.setattr(diagnostics, "BUFFER", JournalBuffer())
    monkeypatch.setattr(delivery, "_BLOCKED", delivery._BlockedCache())


def make_settings(**overrides: Any) -> Settings:
    raw: dict[str, Any] = {
        "app": {"app_id": "app-1", "inputs": {}},
        "wechat_token": TOKEN,
        "app_id": APP_ID,
        "encoding_aes_key": AES_KEY,
        "app_secret": APP_SECRET,
    }
    raw.update(overrides)
    return load_settings(raw)


SECRETS = (TOKEN, AES_KEY, APP_SECRET, ACCESS_TOKEN, OPENID)


def journal(
    storage: MemoryStorage | None = None, clock: FakeClock | None = None
) -> tuple[Journal, MemoryStorage, FakeClock]:
    storage = storage if storage is not None else MemoryStorage()
    clock = clock or FakeClock()
    store = EndpointStore(storage, "ep-diag")
    j = Journal(store, clock, redact=(TOKEN, AES_KEY, APP_SECRET), buffer=JournalBuffer())
    return j, storage, clock


def stored_text(storage: MemoryStorage) -> str:
    return "".join(v.decode("utf-8") for k, v in storage.data.items() if "/diag/" in k)


# --- the key ---------------------------------------------------------------------------------


def test_key_is_the_documented_sha256_prefix() -> None:
    expected = hashlib.sha256(b"wechat-dify-bridge/diagnostics/v1:" + TOKEN.encode()).hexdigest()
    assert diagnostics_key(TOKEN) == expected[:16]
    assert len(diagnostics_key(TOKEN)) == 16
    assert diagnostics_key(TOKEN) != diagnostics_key(TOKEN + "x")
    assert TOKEN not in diagnostics_key(TOKEN)


def test_key_matching() -> None:
    key = diagnostics_key(TOKEN)
    assert key_matches(key, TOKEN)
    assert not key_matches(key[:-1], TOKEN)
    assert not key_matches(key.upper(), TOKEN)
    assert not key_matches("", TOKEN)
    assert not key_matches(TOKEN, TOKEN)  # the Token itself is not the key
    assert not key_matches("密钥", TOKEN)  # odd input is a mismatch, not an error
    # Without a Token the key would be public: never opens.
    assert not key_matches(diagnostics_key(""), "")


def test_settings_help_tells_how_to_compute_the_key() -> None:
    yaml = pytest.importorskip("yaml")
    with open("group/wechat.yaml", encoding="utf-8") as f:
        group = yaml.safe_load(f)
    [token] = [s for s in group["settings"] if s["name"] == "wechat_token"]
    for lang in ("en_US", "zh_Hans"):
        text = token["help"][lang]
        assert "?key=" in text and "wechat-dify-bridge/diagnostics/v1:" in text
        assert "hexdigest()[:16]" in text


# --- the journal -----------------------------------------------------------------------------


def test_errors_are_a_ring_of_the_last_20_newest_first() -> None:
    j, storage, clock = journal()
    for i in range(MAX_ERRORS + 5):
        clock.advance(1)
        j.record_error("wechat-api", 45015, f"error number {i}")
        if i % 7 == 0:
            j.flush()
    report = j.report()
    assert report is not None
    assert len(report.errors) == MAX_ERRORS
    assert report.errors[0].detail == f"error number {MAX_ERRORS + 4}"
    assert report.errors[-1].detail == "error number 5"
    record = json.loads(storage.data[EndpointStore(storage, "ep-diag").key("diag", "errors")])
    assert len(record["items"]) == MAX_ERRORS


def test_nothing_touches_storage_until_a_flush() -> None:
    j, storage, _ = journal()
    j.record_error("wechat-api", 48001, "api unauthorized")
    j.count("passive")
    assert storage.calls == []
    j.flush(housekeeping=False)
    assert [op for op, _ in storage.calls].count("set") == 2  # errors + today's counters


def test_counters_per_day() -> None:
    j, _, clock = journal()
    for _ in range(3):
        j.count("passive")
    j.count("pushed")
    j.count("not-a-counter")  # ignored
    clock.advance(DAY)
    j.count("fetched")
    j.count("handed_off")
    report = j.report()
    assert report is not None
    assert len(report.days) == KEEP_DAYS
    (today, counts_today), (yesterday, counts_yesterday) = report.days[:2]
    assert counts_today == {"fetched": 1, "handed_off": 1}
    assert counts_yesterday == {"passive": 3, "pushed": 1}
    assert today > yesterday
    assert report.totals() == {
        "passive": 3,
        "pushed": 1,
        "fetched": 1,
        "expired": 0,
        "handed_off": 1,
        "app_error": 0,
    }


def test_counts_add_up_across_flushes_and_processes() -> None:
    storage, clock = MemoryStorage(), FakeClock()
    first, _, _ = journal(storage, clock)
    second, _, _ = journal(storage, clock)  # another process: its own buffer
    first.count("passive")
    first.flush()
    second.count("passive")
    second.count("expired")
    second.flush()
    report = first.report()
    assert report is not None
    assert report.days[0][1] == {"passive": 2, "expired": 1}


def test_old_counter_days_are_deleted_lazily() -> None:
    storage, clock = MemoryStorage(), FakeClock()
    j, _, _ = journal(storage, clock)
    for _ in range(12):  # a counter record for each of the last 12 days
        j.count("passive")
        j.flush(housekeeping=False)
        clock.advance(DAY)
    clock.advance(-DAY)  # back to the newest day
    j.count("passive")
    j.flush()  # housekeeping: once per day
    days = sorted(k for k in storage.data if "/diag/counters-" in k)
    assert len(days) == KEEP_DAYS
    report = j.report()
    assert report is not None
    assert [counts for _, counts in report.days] == [{"passive": 2}] + [{"passive": 1}] * 6


def test_flush_if_due_writes_at_most_once_per_interval() -> None:
    j, storage, clock = journal()

    def sets() -> int:
        return sum(1 for op, _ in storage.calls if op == "set")

    j.count("passive")
    j.flush_if_due()  # the first one is due
    assert sets() == 1
    j.count("passive")
    clock.advance(FLUSH_INTERVAL / 2)
    j.flush_if_due()
    assert sets() == 1  # kept in memory
    clock.advance(FLUSH_INTERVAL / 2)
    j.flush_if_due()
    assert sets() == 2
    j.flush_if_due()  # nothing pending: nothing written, nothing read
    assert sets() == 2
    report = j.report()
    assert report is not None and report.days[0][1] == {"passive": 2}


# --- sanitization ----------------------------------------------------------------------------


def test_details_carry_no_secrets_urls_openids_or_tokens() -> None:
    j, storage, _ = journal()
    errmsg = (
        f"invalid credential, access_token={ACCESS_TOKEN} for {OPENID}; "
        f"see https://api.weixin.qq.com/cgi-bin/message/custom/send?access_token={ACCESS_TOKEN}"
        f"&x=1 token {TOKEN} key {AES_KEY} secret: {APP_SECRET} rid: 6543a1b2-3c4d5e6f"
    )
    j.record_error("wechat-api", 40001, errmsg)
    j.record_error("dify-app", "app", f"workflow failed: {OPENID} {TOKEN}")
    j.flush()
    text = stored_text(storage)
    for secret in SECRETS:
        assert secret not in text
    assert "/cgi-bin/" not in text and "x=1" not in text and "?" not in text
    assert "api.weixin.qq.com" in text  # the host is enough to know which API
    assert "rid: 6543a1b2-3c4d5e6f" in text  # short ids WeChat support asks for stay
    report = j.report()
    assert report is not None
    page = page_with(report)
    for secret in SECRETS:
        assert secret not in page


def test_clean_detail_is_one_short_line() -> None:
    cleaned = clean_detail("line one\nline two\x00" + "x " * 500)
    assert "\n" not in cleaned and "\x00" not in cleaned
    assert len(cleaned) <= 201


@pytest.mark.parametrize(
    ("errmsg", "ip"),
    [
        (
            "invalid ip 203.0.113.7 ipv6 ::ffff:203.0.113.7, not in whitelist rid: 1-2",
            "203.0.113.7",
        ),
        ("invalid ip 2001:db8::1, not in whitelist", "2001:db8::1"),
        (
            "not allow to access from your ip, hint: [x], from ip: 198.51.100.9, more info",
            "198.51.100.9",
        ),
        ("invalid ip 999.1.1.1, not in whitelist", ""),
        ("api unauthorized", ""),
    ],
)
def test_the_ip_wechat_reported_is_extracted(errmsg: str, ip: str) -> None:
    assert reported_ip(errmsg) == ip


def test_a_40164_keeps_the_ip_and_the_explanation_names_it() -> None:
    j, _, _ = journal()
    exc = error_for(40164, "invalid ip 203.0.113.7 ipv6 ::ffff:203.0.113.7, not in whitelist")
    j.record_wechat(exc)
    report = j.report()
    assert report is not None
    [entry] = report.errors
    assert (entry.source, entry.code, entry.ip) == ("wechat-api", 40164, "203.0.113.7")
    en, zh = explain(entry.code, entry.ip)
    assert "203.0.113.7" in en and "203.0.113.7" in zh and "IP白名单" in en


@pytest.mark.parametrize(
    ("code", "en_word", "zh_word"),
    [
        (48001, "customer-service", "客服消息"),
        (45015, "48 hours", "48 小时"),
        (45047, "5 customer-service", "5 条"),
        (60020, "trusted IPs", "企业可信IP"),
        (40001, "access token", "access_token"),
        (42001, "access token", "access_token"),
        ("app", "Dify app failed: model quota", "model quota"),
        ("network", "could not be reached", "网络"),
        ("unreachable", "background worker", "后台任务"),
        (40013, "AppID", "40013"),  # known to the API client: its hint
        (99999, "99999", "99999"),
        ("KeyError", "KeyError", "KeyError"),
    ],
)
def test_explanations(code: int | str, en_word: str, zh_word: str) -> None:
    en, zh = explain(code, detail="model quota")
    assert en_word in en and zh_word in zh


def test_non_wechat_exceptions_are_left_to_the_log() -> None:
    j, _, _ = journal()
    j.record_wechat(OSError("download failed"))
    j.record_wechat(error_for(45047, "out of response count limit"))
    report = j.report()
    assert report is not None and [e.code for e in report.errors] == [45047]


# --- failures never matter -------------------------------------------------------------------


class BrokenStorage(MemoryStorage):
    """Storage that fails for the journal's records (or for everything)."""

    def __init__(self, everything: bool = False) -> None:
        super().__init__()
        self.everything = everything

    def _check(self, key: str) -> None:
        if self.everything or "/diag/" in key:
            raise RuntimeError("storage down")

    def get(self, key: str) -> bytes:
        self._check(key)
        return super().get(key)

    def set(self, key: str, val: bytes) -> None:
        self._check(key)
        super().set(key, val)

    def delete(self, key: str) -> None:
        self._check(key)
        super().delete(key)

    def exist(self, key: str) -> bool:
        self._check(key)
        return super().exist(key)


def test_journal_methods_swallow_storage_failures() -> None:
    j, _, _ = journal(BrokenStorage(everything=True))
    j.record_error("wechat-api", 48001, "api unauthorized")
    j.record_wechat(error_for(45015, "response out of time limit"))
    j.count("pushed")
    j.flush_if_due()
    j.flush()
    report = j.report()
    assert report is not None and report.errors == []


def test_a_disabled_journal_does_nothing() -> None:
    j = Journal(None)
    j.record_error("wechat-api", 48001, "x")
    j.count("passive")
    j.flush()
    assert j.report() is None


# --- hooks -------------------------------------------------------------------------------------


class Sender:
    def __init__(self, failures: dict[int, Exception]) -> None:
        self.sent: list[str] = []
        self.attempts = 0
        self.failures = failures

    def send_text(self, openid: str, content: str) -> None:
        attempt, self.attempts = self.attempts, self.attempts + 1
        if attempt in self.failures:
            raise self.failures[attempt]
        self.sent.append(content)

    def send_media(self, openid: str, kind: PartKind, media_id: str) -> None:
        self.send_text(openid, media_id)

    def start_typing(self, openid: str) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("errcode", "errmsg"),
    [(48001, "api unauthorized"), (40164, "invalid ip 203.0.113.7, not in whitelist")],
)
def test_pusher_records_failures_and_counts_pushed_parts(errcode: int, errmsg: str) -> None:
    storage, clock = MemoryStorage(), FakeClock()
    store = EndpointStore(storage, "ep-diag")
    s = make_settings()
    outbox = Outbox(store, RetryTracker(store, clock), clock)
    j = Journal(store, clock, buffer=JournalBuffer())
    sender = Sender({1: error_for(errcode, errmsg)})
    pusher = Pusher(s, outbox, Router(s, store, "ep-diag", clock), sender, lambda _: None, j)
    opened = outbox.open(OPENID, "a" * 32, Route.PUSH, sent=0)
    pusher.push(opened, ["one", "two", "three"], OPENID, "ref")
    report = j.report()
    assert report is not None
    assert [(e.source, e.code) for e in report.errors] == [("wechat-api", errcode)]
    assert report.days[0][1] == {"pushed": 1}


# --- the pipeline and the page -------------------------------------------------------------


@pytest.fixture
def short_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timing, "DELIVERY_DEADLINE", 0.4)
    monkeypatch.setattr(timing, "STORE_GUARD", 0.6)
    monkeypatch.setattr(timing, "HOLD_UNTIL", 0.7)
    monkeypatch.setattr(timing, "POLL_INTERVAL", 0.05)


class Endpoint:
    """handle_post / handle_get over one in-memory storage (plain mode, no worker)."""

    def __init__(self, storage: MemoryStorage | None = None, **overrides: Any) -> None:
        self.settings = make_settings(encoding_aes_key="", **overrides)
        self.storage = storage if storage is not None else MemoryStorage()
        self.endpoint_id = str(uuid.uuid4())
        self.caller = ScriptedCaller()
        self.runtime = Runtime(self.storage, self.endpoint_id, self.caller, use_worker=False)
        self.signer = WeChatSigner(TOKEN, APP_ID)

    def say(self, text: str, msg_id: int) -> HttpReply:
        request = self.signer.post(samples.text(text, msg_id=msg_id, user=OPENID))
        return handle_post(request, self.settings, self.runtime)

    def page(self, **query: str) -> HttpReply:
        return handle_get(
            HttpRequest("GET", query, b""),
            self.settings,
            "https://dify.example.com/e/hook/wechat",
            lambda: None,
            lambda: load_diagnostics(self.storage, self.endpoint_id, self.settings),
        )


def page_with(report: Diagnostics) -> str:
    reply = handle_get(
        HttpRequest("GET", {"key": diagnostics_key(TOKEN)}, b""),
        make_settings(),
        "https://dify.example.com/e/hook/wechat",
        lambda: None,
        lambda: report,
    )
    return reply.body


@pytest.mark.usefixtures("short_deadlines")
def test_a_passive_answer_is_counted() -> None:
    ep = Endpoint()
    reply = ep.say("hello", 1)
    assert reply.status == 200 and "echo: hello" in reply.body
    report = load_diagnostics(ep.storage, ep.endpoint_id, ep.settings)
    assert report is not None and report.days[0][1] == {"passive": 1}


@pytest.mark.usefixtures("short_deadlines")
def test_an_app_error_is_recorded_with_its_reason_and_counted() -> None:
    ep = Endpoint()
    ep.caller = ScriptedCaller(
        lambda call: [{"event": "error", "code": "quota", "message": f"model quota {OPENID}"}]
    )
    ep.runtime = Runtime(ep.storage, ep.endpoint_id, ep.caller, use_worker=False)
    reply = ep.say("hello", 2)
    assert reply.status == 200 and "echo" not in reply.body
    body = ep.page(key=diagnostics_key(TOKEN)).body
    assert "Dify app failed: quota: model quota ***" in body
    assert OPENID not in body and "hello" not in body
    report = load_diagnostics(ep.storage, ep.endpoint_id, ep.settings)
    assert report is not None and report.days[0][1].get("app_error") == 1


@pytest.mark.usefixtures("short_deadlines")
def test_a_failing_journal_never_breaks_a_reply() -> None:
    ep = Endpoint(BrokenStorage())
    reply = ep.say("hello", 3)
    assert reply.status == 200 and "echo: hello" in reply.body
    assert ep.page(key=diagnostics_key(TOKEN)).status == 200


def test_page_without_or_with_a_wrong_key_is_the_plain_page() -> None:
    ep = Endpoint()
    j = Journal(EndpointStore(ep.storage, ep.endpoint_id))
    j.record_error("wechat-api", 48001, "api unauthorized")
    j.flush()
    loads: list[int] = []

    def load() -> Diagnostics | None:
        loads.append(1)
        return load_diagnostics(ep.storage, ep.endpoint_id, ep.settings)

    def get(**query: str) -> str:
        reply = handle_get(
            HttpRequest("GET", query, b""),
            ep.settings,
            "https://dify.example.com/e/hook/wechat",
            lambda: None,
            load,
        )
        assert reply.status == 200
        return reply.body

    plain = get()
    for query in (
        {"key": "0" * 16},
        {"key": diagnostics_key(TOKEN)[:-1]},
        {"key": TOKEN},
        {"key": ""},
        {"key": diagnostics_key(TOKEN + "x")},
    ):
        assert get(**query) == plain, query
    assert loads == []  # a wrong key reads nothing
    assert "Diagnostics" not in plain and "48001" not in plain
    keyed = get(key=diagnostics_key(TOKEN))
    assert loads == [1]
    assert "Diagnostics / 诊断" in keyed and "48001" in keyed
    assert "customer-service messages" in keyed
    assert keyed.startswith(plain.split("</body>")[0])  # the same page, plus the section
    for body in (plain, keyed):
        for secret in (TOKEN, APP_SECRET, diagnostics_key(TOKEN)):
            assert secret not in body


def test_without_a_token_no_key_opens_the_section() -> None:
    ep = Endpoint(wechat_token="")
    assert "Diagnostics" not in ep.page(key=diagnostics_key("")).body


def test_the_key_is_no_wechat_verification_parameter() -> None:
    ep = Endpoint()
    reply = ep.page(key=diagnostics_key(TOKEN))
    assert reply.status == 200 and reply.content_type.startswith("text/html")


def test_the_section_shows_counters_errors_and_the_worker() -> None:
    from endpoints.wechat.worker_link import WorkerHealth

    j, _, clock = journal()
    j.record_error("worker", "unreachable", "HTTP 404")
    clock.advance(5)
    j.record_wechat(error_for(40164, "invalid ip 203.0.113.7 ipv6 ::ffff:203.0.113.7, not in"))
    j.record_error("dify-app", "app", "workflow failed: <script>alert(1)</script>")
    for name in ("passive", "passive", "pushed", "fetched", "expired", "handed_off"):
        j.count(name)
    report = j.report()
    assert report is not None
    reply = handle_get(
        HttpRequest("GET", {"key": diagnostics_key(TOKEN)}, b""),
        make_settings(),
        "https://dify.example.com/e/hook/wechat",
        lambda: WorkerHealth(True, "", clock(), "https://dify.example.com"),
        lambda: report,
    )
    body = reply.body
    section = body.split("Diagnostics / 诊断", 1)[1]
    assert "<script>" not in body and "&lt;script&gt;" in section
    assert "add it to the IP whitelist" in section
    assert "203.0.113.7" in section
    assert "Last failure" in section and "HTTP 404" in section
    for name in ("passive", "pushed", "fetched", "expired", "handed_off", "app_error"):
        assert f"<th>{name}</th>" in section
    assert "<td>2</td>" in section  # two passive replies today
