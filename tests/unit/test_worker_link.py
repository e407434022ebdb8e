"""The link to the worker request: signed tickets, the worker URL, the line stream that
hands the outcome back, and the per-process memory of an unreachable worker."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from endpoints.wechat import timing, worker_link
from endpoints.wechat.retry_tracker import Job, JobState, LocalSignals
from endpoints.wechat.settings import Settings, load_settings
from endpoints.wechat.storage import EndpointStore
from endpoints.wechat.worker_link import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    HealthBook,
    WorkerCall,
    WorkerHealth,
    WorkerLauncher,
    WorkTicket,
    _take_line,
    describe_url,
    launch,
    load_health,
    sign,
    signature_valid,
    worker_key,
    worker_url,
)
from tests.fakes import FakeClock, MemoryStorage

TOKEN = "token123"
APP_ID = "wx1234567890abcdef"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
HOOK_ID = "3f1c9a2e-0000-4000-8000-1234567890ab"
HOOK_URL = f"https://dify.example.com/e/{HOOK_ID}/wechat"
TTL = 60.0


def settings(**overrides: Any) -> Settings:
    raw: dict[str, Any] = {
        "app": {"app_id": "app-1", "inputs": {}},
        "wechat_token": TOKEN,
        "app_id": APP_ID,
        "encoding_aes_key": AES_KEY,
        "app_secret": "appsecret",
    }
    raw.update(overrides)
    return load_settings(raw)


def ticket(job: str = "a" * 32, **overrides: Any) -> WorkTicket:
    fields: dict[str, Any] = {
        "job": job,
        "owner": "owner-1",
        "openid": "oUSER123",
        "query": '你好 "quoted" \n newline',
        "inputs": {"wechat_msg_type": "text", "wechat_msg_id": "42"},
        "arrived_at": 1_700_000_000.5,
        "ref": "abc123",
    }
    fields.update(overrides)
    return WorkTicket(**fields)


def signed_headers(key: bytes, body: bytes, timestamp: int) -> dict[str, str]:
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(key, str(timestamp), body)}


# --- tickets --------------------------------------------------------------------------------


def test_ticket_round_trip() -> None:
    original = ticket()
    body = original.to_bytes()
    assert WorkTicket.from_bytes(body) == original
    assert "你好".encode() in body  # compact UTF-8, not \u escapes


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"null",
        b"[]",
        b'"a string"',
        b"42",
        b"{}",
        b'{"job":"j","owner":"o","openid":"u","query":"q"}',  # no arrived_at
        b'{"owner":"o","openid":"u","query":"q","arrived_at":1}',  # no job
        b'{"job":"j","owner":"o","openid":"u","query":"q","arrived_at":"soon"}',
        b'{"job":"j","owner":"o","openid":"u","query":"q","arrived_at":[]}',
        b'{"job":"j","owner":"o","openid":"u","query":"q","arrived_at":1,"inputs":5}',
        b'{"job":"j","owner":"o","openid":"u","query":"q","arrived_at":1,"inputs":"x"}',
    ],
)
def test_malformed_ticket_bodies_read_as_none(body: bytes) -> None:
    assert WorkTicket.from_bytes(body) is None


def test_ticket_defaults_for_optional_fields() -> None:
    body = b'{"job":"j","owner":"o","openid":"u","query":"q","arrived_at":1,"inputs":null}'
    read = WorkTicket.from_bytes(body)
    assert read is not None
    assert read.inputs == {} and read.ref == "" and read.arrived_at == 1.0


# --- signing --------------------------------------------------------------------------------


def test_worker_key_depends_on_the_endpoint_and_every_secret() -> None:
    base = worker_key(settings(), "ep-1")
    assert len(base) == 32
    assert worker_key(settings(), "ep-1") == base
    others = [
        worker_key(settings(), "ep-2"),
        worker_key(settings(wechat_token="othertoken"), "ep-1"),
        worker_key(settings(encoding_aes_key="B" * 43), "ep-1"),
        worker_key(settings(app_secret="other"), "ep-1"),
    ]
    assert len({base, *others}) == 5


def test_a_signature_made_with_the_key_is_valid() -> None:
    key = worker_key(settings(), "ep-1")
    body = ticket().to_bytes()
    now = time.time()
    assert signature_valid(key, signed_headers(key, body, int(now)), body, now, TTL)


def test_a_signature_with_another_key_is_refused() -> None:
    key = worker_key(settings(), "ep-1")
    other = worker_key(settings(), "ep-2")
    body = ticket().to_bytes()
    now = time.time()
    assert not signature_valid(key, signed_headers(other, body, int(now)), body, now, TTL)


def test_a_tampered_body_or_timestamp_is_refused() -> None:
    key = worker_key(settings(), "ep-1")
    body = ticket().to_bytes()
    now = int(time.time())
    headers = signed_headers(key, body, now)
    tampered = body.replace(b"owner-1", b"owner-2")
    assert not signature_valid(key, headers, tampered, now, TTL)
    moved = {**headers, TIMESTAMP_HEADER: str(now - 1)}  # signature of another timestamp
    assert not signature_valid(key, moved, body, now, TTL)


@pytest.mark.parametrize(("offset", "valid"), [(-61, False), (-60, True), (60, True), (61, False)])
def test_signature_age_is_limited_both_ways(offset: int, valid: bool) -> None:
    key = worker_key(settings(), "ep-1")
    body = ticket().to_bytes()
    now = 1_700_000_000
    headers = signed_headers(key, body, now + offset)
    assert signature_valid(key, headers, body, float(now), TTL) is valid


@pytest.mark.parametrize(
    "drop", [TIMESTAMP_HEADER, SIGNATURE_HEADER, "both"], ids=["no-ts", "no-sig", "none"]
)
def test_missing_headers_are_refused(drop: str) -> None:
    key = worker_key(settings(), "ep-1")
    body = ticket().to_bytes()
    now = int(time.time())
    headers = signed_headers(key, body, now)
    for name in (TIMESTAMP_HEADER, SIGNATURE_HEADER) if drop == "both" else (drop,):
        headers[name] = ""
    assert not signature_valid(key, headers, body, now, TTL)
    assert not signature_valid(key, {}, body, now, TTL)


@pytest.mark.parametrize("timestamp", ["soon", "1.7e9", "17000000000.5", "0x10"])
def test_non_numeric_timestamps_are_refused(timestamp: str) -> None:
    key = worker_key(settings(), "ep-1")
    body = ticket().to_bytes()
    headers = {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(key, timestamp, body)}
    assert not signature_valid(key, headers, body, time.time(), TTL)


def test_header_names_are_case_insensitive() -> None:
    key = worker_key(settings(), "ep-1")
    body = ticket().to_bytes()
    now = int(time.time())
    headers = {k.lower(): v for k, v in signed_headers(key, body, now).items()}
    assert signature_valid(key, headers, body, now, TTL)
    upper = {k.upper(): v for k, v in signed_headers(key, body, now).items()}
    assert signature_valid(key, upper, body, now, TTL)
    assert worker_link.header({"dify-hook-id": "x"}, "Dify-Hook-Id") == "x"
    assert worker_link.header({}, "Dify-Hook-Id") == ""


def test_a_non_ascii_signature_is_refused_not_an_error() -> None:
    key = worker_key(settings(), "ep-1")
    body = ticket().to_bytes()
    now = int(time.time())
    headers = {TIMESTAMP_HEADER: str(now), SIGNATURE_HEADER: "é" * 64}
    assert signature_valid(key, headers, body, now, TTL) is False


# --- the worker URL -------------------------------------------------------------------------


def hook_headers(url: str | None = HOOK_URL, hook_id: str | None = HOOK_ID) -> dict[str, str]:
    headers = {"Host": "127.0.0.1:5002"}
    if url is not None:
        headers["Dify-Hook-Url"] = url
    if hook_id is not None:
        headers["Dify-Hook-Id"] = hook_id
    return headers


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (HOOK_URL, f"{HOOK_URL}/worker"),
        (f"{HOOK_URL}/", f"{HOOK_URL}/worker"),
        (f"{HOOK_URL}?token=secret&x=1", f"{HOOK_URL}/worker"),
        (f"{HOOK_URL}#frag", f"{HOOK_URL}/worker"),
        (
            f"http://10.0.0.5:8080/prefix/e/{HOOK_ID}/wechat",
            f"http://10.0.0.5:8080/prefix/e/{HOOK_ID}/wechat/worker",
        ),
    ],
)
def test_worker_url_from_the_hook_url(url: str, expected: str) -> None:
    assert worker_url(hook_headers(url), settings()) == expected


def test_worker_url_header_names_are_case_insensitive() -> None:
    headers = {"dify-hook-url": HOOK_URL, "DIFY-HOOK-ID": HOOK_ID}
    assert worker_url(headers, settings()) == f"{HOOK_URL}/worker"


@pytest.mark.parametrize(
    "url",
    [
        f"https://dify.example.com/e/{HOOK_ID}/other",  # not …/wechat
        f"https://dify.example.com/e/{HOOK_ID}/wechat/worker",
        f"https://dify.example.com/e/{HOOK_ID}/wechatx",
        "https://dify.example.com/e/another-hook/wechat",  # not this endpoint
        f"https://dify.example.com/x{HOOK_ID}/wechat",
        f"https://dify.example.com/e/{HOOK_ID}x/wechat",
        f"ftp://dify.example.com/e/{HOOK_ID}/wechat",
        f"file:///e/{HOOK_ID}/wechat",
        f"javascript://dify.example.com/e/{HOOK_ID}/wechat",
        f"/e/{HOOK_ID}/wechat",  # no scheme, no host
        f"https:///e/{HOOK_ID}/wechat",
    ],
)
def test_worker_url_refuses_a_hook_url_that_is_not_this_endpoint(url: str) -> None:
    # …and does not fall back to Host: a hook URL was given and it is wrong.
    assert worker_url(hook_headers(url), settings()) is None


def test_worker_url_without_hook_id_only_checks_the_path() -> None:
    url = "https://dify.example.com/e/whatever/wechat"
    assert worker_url(hook_headers(url, hook_id=None), settings()) == f"{url}/worker"
    bad = "https://dify.example.com/e/whatever/other"
    assert worker_url(hook_headers(bad, hook_id=None), settings()) is None


def test_worker_base_url_overrides_the_hook_url() -> None:
    s = settings(worker_base_url="http://plugin-daemon:5002/")
    assert s.worker_base_url == "http://plugin-daemon:5002"
    expected = f"http://plugin-daemon:5002/e/{HOOK_ID}/wechat/worker"
    assert worker_url(hook_headers(), s) == expected
    assert worker_url(hook_headers(url="ftp://elsewhere/x"), s) == expected
    assert worker_url(hook_headers(hook_id=None), s) is None  # needs the hook id
    assert worker_url({}, s) is None


def test_host_fallback_needs_the_hook_id() -> None:
    assert (
        worker_url(hook_headers(url=None), settings())
        == f"http://127.0.0.1:5002/e/{HOOK_ID}/wechat/worker"
    )
    assert worker_url(hook_headers(url=None, hook_id=None), settings()) is None
    assert worker_url({"Dify-Hook-Id": HOOK_ID}, settings()) is None  # no Host either
    assert worker_url({}, settings()) is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"{HOOK_URL}/worker?sig=abc", "https://dify.example.com"),
        (f"http://10.0.0.5:8080/e/{HOOK_ID}/wechat/worker", "http://10.0.0.5:8080"),
        ("https://dify.example.com", "https://dify.example.com"),
    ],
)
def test_describe_url_keeps_scheme_and_host_only(url: str, expected: str) -> None:
    described = describe_url(url)
    assert described == expected
    assert HOOK_ID not in described and "?" not in described and "sig" not in described


def test_describe_url_drops_credentials() -> None:
    assert describe_url(f"https://user:pw@dify.example.com/e/{HOOK_ID}/wechat") == (
        "https://dify.example.com"
    )


# --- launch and the line stream -------------------------------------------------------------


class FakeResponse:
    def __init__(
        self,
        status_code: int = 200,
        chunks: list[bytes] | None = None,
        error: Exception | None = None,
        on_chunk: Callable[[], None] = lambda: None,
    ) -> None:
        self.status_code = status_code
        self._chunks = chunks or []
        self._error = error
        self._on_chunk = on_chunk
        self.closed = False
        self.read = False

    def iter_content(self, chunk_size: int | None = 1) -> Iterator[bytes]:
        assert chunk_size is None  # whatever arrived, not fixed-size blocks
        self.read = True
        for chunk in self._chunks:
            self._on_chunk()
            yield chunk
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self.closed = True


class FakePost:
    def __init__(self, response: FakeResponse | None = None, error: Exception | None = None):
        self.response = response
        self.error = error
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, url: str, **kwargs: Any) -> FakeResponse:
        self.calls.append((url, kwargs))
        if self.error is not None:
            raise self.error
        assert self.response is not None
        return self.response


def run_now(task: Callable[[], None]) -> None:
    task()


def settled_job(key: str, parts: list[str]) -> Job:
    return Job(
        key=key,
        state=JobState.DONE,
        owner="owner-1",
        created_at=1_700_000_000.0,
        lease_until=1_700_000_030.0,
        user="u" * 32,
        parts=parts,
        worker=True,
    )


def done_line(job: Job) -> bytes:
    return b"done " + json.dumps(job.to_record(), ensure_ascii=False).encode() + b"\n"


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_launch_posts_a_signed_ticket_without_following_redirects() -> None:
    key = worker_key(settings(), "ep-1")
    t = ticket()
    post = FakePost(FakeResponse(chunks=[b"started\n", b"end\n"]))
    call = launch(f"{HOOK_URL}/worker", key, t, LocalSignals(), run_now, post)
    assert call.started and call.failure is None and call.settled.is_set()
    [(url, kwargs)] = post.calls
    assert url == f"{HOOK_URL}/worker"
    assert kwargs["data"] == t.to_bytes()
    assert kwargs["stream"] is True and kwargs["allow_redirects"] is False
    assert kwargs["timeout"]
    assert signature_valid(key, kwargs["headers"], kwargs["data"], time.time(), TTL)


def test_stream_split_anywhere_hands_the_settled_job_over() -> None:
    key = worker_key(settings(), "ep-1")
    t = ticket()
    signals = LocalSignals()
    slot = signals.watch(t.job)
    job = settled_job(t.job, ["第一部分：你好\n世界", "第二部分"])
    stream = b"sta" + b"rted\n" + b"\n\n" + done_line(job) + b"end\n"
    carried: list[bool] = []
    response = FakeResponse(
        chunks=split_every(stream, 7),  # splits lines and multi-byte characters
        on_chunk=lambda: carried.append(signals.carried(t.job)),
    )
    call = launch(HOOK_URL + "/worker", key, t, signals, run_now, FakePost(response))
    assert call.started and call.failure is None
    assert slot.event.is_set() and slot.job == job
    assert carried and all(carried)  # carried while the connection is followed
    assert not signals.carried(t.job)  # and no longer after
    assert response.closed


def test_a_done_line_for_an_unwatched_key_or_garbage_fires_nothing() -> None:
    signals = LocalSignals()
    slot = signals.watch("watched")
    call = WorkerCall()
    assert not _take_line(done_line(settled_job("other", ["x"])).strip(), call, signals)
    for garbage in (b"done ", b"done {", b"done []", b'done "x"', b'done {"key":"watched"}'):
        assert not _take_line(garbage, call, signals)
    assert not slot.event.is_set() and slot.job is None
    assert not call.settled.is_set()
    assert not _take_line(b"", call, signals)  # keep-alive
    assert _take_line(b"end", call, signals)


def test_a_refused_line_is_a_failure() -> None:
    response = FakeResponse(chunks=[b"refused: the job is not waiting\n", b"started\n"])
    t = ticket()
    call = launch(HOOK_URL, b"k", t, LocalSignals(), run_now, FakePost(response))
    assert not call.started
    assert call.failure is not None and call.failure.startswith("refused")


def test_a_stream_ending_without_started_is_a_failure() -> None:
    response = FakeResponse(chunks=[b"\n", b"started"])  # no newline: never a whole line
    call = launch(HOOK_URL, b"k", ticket(), LocalSignals(), run_now, FakePost(response))
    assert not call.started
    assert call.failure == "the worker answered without starting"
    assert response.closed


@pytest.mark.parametrize("status", [404, 302, 500, 403])
def test_non_200_is_a_failure_without_reading_the_body(status: int) -> None:
    response = FakeResponse(status, chunks=[b"started\n"])
    signals = LocalSignals()
    t = ticket()
    call = launch(HOOK_URL, b"k", t, signals, run_now, FakePost(response))
    assert call.failure == f"HTTP {status}" and not call.started
    assert call.settled.is_set()
    assert not response.read and response.closed
    assert not signals.carried(t.job)


@pytest.mark.parametrize(
    "error",
    [
        requests.ConnectionError(
            f"HTTPSConnectionPool(host='dify.example.com', port=443): Max retries exceeded "
            f"with url: /e/{HOOK_ID}/wechat/worker"
        ),
        requests.ConnectTimeout(f"{HOOK_URL}/worker timed out"),
        requests.TooManyRedirects(f"{HOOK_URL}/worker"),
    ],
)
def test_request_errors_report_the_type_only(error: requests.RequestException) -> None:
    signals = LocalSignals()
    t = ticket()
    call = launch(f"{HOOK_URL}/worker", b"k", t, signals, run_now, FakePost(error=error))
    assert call.failure == type(error).__name__
    assert HOOK_ID not in call.failure and "dify.example.com" not in call.failure
    assert not call.started and call.settled.is_set()
    assert not signals.carried(t.job)


def test_unexpected_errors_are_failures_and_close_the_response() -> None:
    response = FakeResponse(chunks=[b"\n"], error=RuntimeError(f"boom at {HOOK_URL}"))
    signals = LocalSignals()
    t = ticket()
    call = launch(HOOK_URL, b"k", t, signals, run_now, FakePost(response))
    assert call.failure == "RuntimeError"
    assert response.closed and not signals.carried(t.job)


def test_the_connection_is_carried_until_it_ends() -> None:
    signals = LocalSignals()
    t = ticket()
    spawned: list[Callable[[], None]] = []
    post = FakePost(FakeResponse(chunks=[b"started\n", b"end\n"]))
    call = launch(HOOK_URL, b"k", t, signals, spawned.append, post)
    # spawned, not yet run: a delivery in this process already knows a hand-over is coming
    assert signals.carried(t.job) and not call.settled.is_set() and post.calls == []
    spawned[0]()
    assert call.started and not signals.carried(t.job)


def test_worker_call_wait_tolerates_a_negative_timeout() -> None:
    call = WorkerCall()
    started = time.monotonic()
    call.wait(-5)
    assert time.monotonic() - started < 0.5 and not call.settled.is_set()


# --- health and the launcher ------------------------------------------------------------------


@pytest.fixture
def health(monkeypatch: pytest.MonkeyPatch) -> HealthBook:
    book = HealthBook()
    monkeypatch.setattr(worker_link, "HEALTH", book)
    return book


def launcher(
    url: str | None,
    storage: MemoryStorage,
    clock: FakeClock,
    scope: str = "ep-1",
    post: FakePost | None = None,
) -> WorkerLauncher:
    return WorkerLauncher(
        url,
        b"key",
        EndpointStore(storage, scope),
        scope,
        LocalSignals(),
        run_now,
        clock,
        post or FakePost(FakeResponse(chunks=[b"started\n", b"end\n"])),
    )


def test_no_url_is_unavailable_and_says_why(health: HealthBook) -> None:
    storage = MemoryStorage()
    clock = FakeClock()
    subject = launcher(None, storage, clock)
    assert subject.target == ""
    assert not subject.available()
    stored = load_health(EndpointStore(storage, "ep-1"))
    assert stored is not None and not stored.ok
    assert "no worker URL" in stored.reason and stored.at == clock.now


def test_a_failure_pauses_the_worker_for_a_while(
    health: HealthBook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(timing, "WORKER_RETRY_AFTER", 30.0)
    storage = MemoryStorage()
    clock = FakeClock()
    failed_at = clock.now
    subject = launcher(f"{HOOK_URL}/worker?x=1", storage, clock)
    other_endpoint = launcher(f"{HOOK_URL}/worker", storage, clock, scope="ep-2")
    assert subject.available()
    subject.failed("HTTP 502")
    assert not subject.available()
    assert other_endpoint.available()  # per endpoint
    clock.advance(29.9)
    assert not subject.available()
    clock.advance(0.2)
    assert subject.available()
    stored = load_health(EndpointStore(storage, "ep-1"))
    assert stored == WorkerHealth(False, "HTTP 502", failed_at, "https://dify.example.com")


def test_reaching_the_worker_ends_the_pause_and_is_stored_once(health: HealthBook) -> None:
    storage = MemoryStorage()
    clock = FakeClock()
    subject = launcher(f"{HOOK_URL}/worker", storage, clock)
    subject.failed("ConnectionError")
    assert not subject.available()
    subject.reached()
    assert subject.available()
    store = EndpointStore(storage, "ep-1")
    assert load_health(store) == WorkerHealth(True, "", clock.now, "https://dify.example.com")
    writes = len(storage.writes)
    subject.reached()
    subject.reached()
    assert len(storage.writes) == writes  # success is written once, not per message
    clock.advance(timing.WORKER_RETRY_AFTER + 1)  # long after: a failure pauses again
    subject.failed("ConnectionError")
    subject.reached()
    assert len(storage.writes) == writes + 2
    assert all(HOOK_ID not in v.decode() for v in storage.data.values())


def test_a_failure_soon_after_the_worker_was_reached_does_not_pause_it(
    health: HealthBook, caplog: pytest.LogCaptureFixture
) -> None:
    # Under a burst a worker call can time out although the worker is fine; pausing it
    # would leave every message of the next minute to be answered inline.
    storage = MemoryStorage()
    clock = FakeClock()
    subject = launcher(f"{HOOK_URL}/worker", storage, clock)
    subject.reached()
    writes = len(storage.writes)
    clock.advance(timing.WORKER_RETRY_AFTER - 1)
    with caplog.at_level(logging.INFO, logger=worker_link.__name__):
        subject.failed("ConnectTimeout")
        subject.failed("ConnectTimeout")
    assert subject.available()
    assert len(storage.writes) == writes  # the status page still says it was reached
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1 and "ConnectTimeout" in infos[0].getMessage()
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)
    clock.advance(2)  # a minute without reaching it: a failure pauses it again
    subject.failed("ConnectTimeout")
    assert not subject.available()


def test_a_refusal_pauses_the_worker_even_right_after_it_was_reached(
    health: HealthBook,
) -> None:
    # 403/404 (endpoint disabled, key changed) will not go away by trying again.
    subject = launcher(f"{HOOK_URL}/worker", MemoryStorage(), FakeClock())
    subject.reached()
    subject.failed("HTTP 404")
    assert not subject.available()


def test_failures_are_logged_once_per_reason(
    health: HealthBook, caplog: pytest.LogCaptureFixture
) -> None:
    storage = MemoryStorage()
    clock = FakeClock()
    subject = launcher(f"{HOOK_URL}/worker", storage, clock)
    with caplog.at_level(logging.WARNING, logger=worker_link.__name__):
        subject.failed("HTTP 404")
        subject.failed("HTTP 404")
        subject.reached()
        clock.advance(timing.WORKER_RETRY_AFTER + 1)
        subject.failed("HTTP 404")
        subject.failed("ConnectionError")
        launcher(f"{HOOK_URL}/worker", storage, clock, scope="ep-2").failed("HTTP 404")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert "HTTP 404" in warnings[0] and "https://dify.example.com" in warnings[0]
    assert "ConnectionError" in warnings[1]
    assert all(HOOK_ID not in w for w in warnings)
    # …but the stored health always has the latest failure
    assert load_health(EndpointStore(storage, "ep-1")) == WorkerHealth(
        False, "ConnectionError", clock.now, "https://dify.example.com"
    )


def test_launcher_start_uses_its_url_key_and_post(health: HealthBook) -> None:
    post = FakePost(FakeResponse(chunks=[b"started\n", b"end\n"]))
    subject = launcher(f"{HOOK_URL}/worker", MemoryStorage(), FakeClock(), post=post)
    call = subject.start(ticket())
    assert call.started
    [(url, kwargs)] = post.calls
    assert url == f"{HOOK_URL}/worker"
    assert signature_valid(b"key", kwargs["headers"], kwargs["data"], time.time(), TTL)


@pytest.mark.parametrize(
    "record",
    [None, {"ok": True}, {"at": 1}, {"ok": True, "at": "yesterday"}],
)
def test_load_health_tolerates_missing_and_bad_records(record: dict[str, Any] | None) -> None:
    store = EndpointStore(MemoryStorage(), "ep-1")
    if record is not None:
        store.save("state", "worker-health", record)
    assert load_health(store) is None
