"""Starting background work in a request of its own (DESIGN §3).

A Dify session dies with its request, so an app answer that takes longer than one WeChat
delivery is produced by a *worker request*: the first delivery calls the plugin's own
hidden endpoint ``POST …/wechat/worker`` from a background greenlet and keeps that
connection open until the work ends. The worker request has a live session of its own.

* The call carries a *ticket* (what to ask, for whom, which job) signed with an HMAC whose
  key is derived from the endpoint's secrets and id, plus a timestamp; nothing else can
  start work.
* The worker answers with a line stream: ``started`` at once, blank keep-alive lines, the
  settled job as ``done <json>`` when the app has answered, ``end``. The greenlet hands the
  ``done`` job to deliveries waiting in this process (the worker may run in another one).
* Where the worker cannot be reached, the caller answers inside the window instead; the
  reason is logged once and kept for the status page.

The worker URL is derived from the inbound request's ``Dify-Hook-Url`` (the public URL of
this endpoint, set by Dify's nginx) unless the ``worker_base_url`` setting overrides its base.
Without nginx a client could choose that header: the HMAC, not the URL, is what protects
the worker, and the URL must at least point at this endpoint's hook id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from . import timing
from .answering import Question
from .inbound_media import MediaRequest
from .paths import group_base
from .retry_tracker import Job, LocalSignals
from .settings import Settings
from .storage import EndpointStore

logger = logging.getLogger(__name__)

WORKER_PATH_SUFFIX = "/worker"
SIGNATURE_HEADER = "X-Wechat-Bridge-Signature"
TIMESTAMP_HEADER = "X-Wechat-Bridge-Timestamp"
_HEALTH_KIND = "state"
_HEALTH_IDENT = "worker-health"


@dataclass(frozen=True)
class WorkTicket:
    """What the worker needs to run a message's app call. Travels signed, not stored."""

    job: str  # hashed dedupe key
    owner: str  # the claim token the job record carries
    openid: str
    query: str
    inputs: dict[str, str] = field(default_factory=dict)
    arrived_at: float = 0.0
    ref: str = ""  # log-safe message reference
    media: dict[str, str] | None = None  # MediaRequest to prepare before asking
    spoken: bool = False
    page_base: str = ""
    platform: str = ""  # the platform of the URL the message came to ("" = the setting's)

    @classmethod
    def for_question(
        cls, job: str, owner: str, question: Question, arrived_at: float, platform: str = ""
    ) -> WorkTicket:
        return cls(
            job=job,
            owner=owner,
            openid=question.openid,
            query=question.query,
            inputs=dict(question.metadata),
            arrived_at=arrived_at,
            ref=question.ref,
            media=question.media.to_dict() if question.media else None,
            spoken=question.spoken,
            page_base=question.page_base,
            platform=platform,
        )

    @property
    def question(self) -> Question:
        return Question(
            openid=self.openid,
            query=self.query,
            metadata=dict(self.inputs),
            media=MediaRequest.from_dict(self.media),
            spoken=self.spoken,
            page_base=self.page_base,
            ref=self.ref,
        )

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, body: bytes) -> WorkTicket | None:
        try:
            data = json.loads(body)
            return cls(
                job=str(data["job"]),
                owner=str(data["owner"]),
                openid=str(data["openid"]),
                query=str(data["query"]),
                inputs={str(k): str(v) for k, v in dict(data.get("inputs") or {}).items()},
                arrived_at=float(data["arrived_at"]),
                ref=str(data.get("ref", "")),
                media=_media(data.get("media")),
                spoken=bool(data.get("spoken", False)),
                page_base=str(data.get("page_base", "")),
                platform=str(data.get("platform", "")),
            )
        except (KeyError, ValueError, TypeError, AttributeError):
            return None

    @staticmethod
    def platform_in(body: bytes) -> str:
        """The ticket's platform, read before the ticket is checked (the settings the
        check needs depend on it; a forged value only fails the check)."""
        try:
            data = json.loads(body)
        except ValueError:
            return ""
        return str(data.get("platform") or "") if isinstance(data, dict) else ""


def _media(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError("media")
    return {str(k): str(v) for k, v in value.items()}


# --- signing -----------------------------------------------------------------------------


def worker_key(settings: Settings, endpoint_id: str) -> bytes:
    """A per-endpoint key nobody without the endpoint's secrets can compute."""
    return settings.derived_key("wechat-dify-bridge/worker/v1", endpoint_id)


def sign(key: bytes, timestamp: str, body: bytes) -> str:
    return hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_valid(
    key: bytes, headers: Mapping[str, str], body: bytes, now: float, ttl: float
) -> bool:
    timestamp = header(headers, TIMESTAMP_HEADER)
    signature = header(headers, SIGNATURE_HEADER)
    if not (timestamp and signature):
        return False
    try:
        age = now - int(timestamp)
    except ValueError:
        return False
    if abs(age) > ttl:
        return False
    # Header values may hold any latin-1 text; compare bytes so odd input is a mismatch.
    return hmac.compare_digest(
        sign(key, timestamp, body).encode(), signature.encode("utf-8", "replace")
    )


def header(headers: Mapping[str, str], name: str) -> str:
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), "")


# --- where the worker is ----------------------------------------------------------------


def worker_url(headers: Mapping[str, str], settings: Settings) -> str | None:
    """The worker endpoint's URL for a request to ``…/wechat`` (or ``…/wecom``), or None if
    unknown."""
    hook_id = header(headers, "Dify-Hook-Id")
    hook_url = header(headers, "Dify-Hook-Url")
    if settings.worker_base_url:
        if not hook_id:
            return None
        return f"{settings.worker_base_url}/e/{hook_id}/wechat{WORKER_PATH_SUFFIX}"
    if hook_url:
        parts = urlsplit(hook_url)
        path = group_base(parts.path)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return None
        if path is None or (hook_id and f"/e/{hook_id}/" not in path + "/"):
            return None
        return urlunsplit((parts.scheme, parts.netloc, path + WORKER_PATH_SUFFIX, "", ""))
    host = header(headers, "Host")
    if hook_id and host:  # the daemon reached directly, without Dify's nginx
        return f"http://{host}/e/{hook_id}/wechat{WORKER_PATH_SUFFIX}"
    return None


def describe_url(url: str) -> str:
    """Scheme and host only: enough to fix a set-up, nothing that opens the endpoint."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


# --- health -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerHealth:
    ok: bool
    reason: str
    at: float
    target: str = ""


class HealthBook:
    """Whether the worker could be reached lately: per process (to skip it for a while
    after a failure) and in storage (for the status page).

    A failure shortly after the worker was reached does not pause it: the URL is proven,
    so the failure says more about the moment (a burst of messages keeping the process or
    the network busy, a call timing out) than about the set-up, and pausing would answer
    every message of the next minute inside WeChat's window only — for a slow app, not at
    all. That message falls back to answering inline; the next one tries the worker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[str, WorkerHealth] = {}
        self._written_ok: set[str] = set()
        self._logged: set[tuple[str, str]] = set()
        self._reached_at: dict[str, float] = {}

    def recently_failed(self, scope: str, now: float) -> WorkerHealth | None:
        with self._lock:
            failure = self._failures.get(scope)
        if failure is not None and now - failure.at < timing.WORKER_RETRY_AFTER:
            return failure
        return None

    def failed(self, scope: str, store: EndpointStore, health: WorkerHealth) -> None:
        with self._lock:
            reached_at = self._reached_at.get(scope)
            # A refusal (HTTP 4xx: endpoint disabled, settings changed) is never transient.
            refused = health.reason.startswith("HTTP 4")
            recent = reached_at is not None and health.at - reached_at < timing.WORKER_RETRY_AFTER
            if recent and not refused:
                first = (scope, "transient " + health.reason) not in self._logged
                self._logged.add((scope, "transient " + health.reason))
                if first:
                    logger.info(
                        "A worker call failed (%s) shortly after the worker was reached; "
                        "that message is answered inside WeChat's window, the next one "
                        "tries the worker again",
                        health.reason,
                    )
                return
            self._failures[scope] = health
            self._written_ok.discard(scope)
            first = (scope, health.reason) not in self._logged
            self._logged.add((scope, health.reason))
        if first:
            logger.warning(
                "The background worker at %s could not be reached (%s): answers are given "
                "inside WeChat's 5-second window only. Check that Dify's public URL reaches "
                "this plugin, or set worker_base_url. See the endpoint's status page.",
                health.target or "(unknown URL)",
                health.reason,
            )
        store.save(_HEALTH_KIND, _HEALTH_IDENT, asdict(health))

    def succeeded(self, scope: str, store: EndpointStore, now: float, target: str) -> None:
        with self._lock:
            self._reached_at[scope] = max(now, self._reached_at.get(scope, now))
            self._failures.pop(scope, None)
            if scope in self._written_ok:
                return
            self._written_ok.add(scope)
        store.save(_HEALTH_KIND, _HEALTH_IDENT, asdict(WorkerHealth(True, "", now, target)))


HEALTH = HealthBook()


def load_health(store: EndpointStore) -> WorkerHealth | None:
    record = store.load(_HEALTH_KIND, _HEALTH_IDENT)
    if not record:
        return None
    try:
        return WorkerHealth(
            ok=bool(record["ok"]),
            reason=str(record.get("reason", "")),
            at=float(record["at"]),
            target=str(record.get("target", "")),
        )
    except (KeyError, ValueError, TypeError):
        return None


# --- the call ---------------------------------------------------------------------------


class WorkerCall:
    """One worker request, followed from a background greenlet of this process."""

    def __init__(self) -> None:
        self.settled = threading.Event()  # started or failed
        self.started = False
        self.failure: str | None = None
        #: The worker refused the ticket as not waiting for it (another claim won).
        self.conflict = False

    def _start(self) -> None:
        self.started = True
        self.settled.set()

    def _fail(self, reason: str) -> None:
        # Once started, the worker owns the job: a broken connection later is no failure
        # to fall back from (that would be a second app call).
        if not self.started:
            self.failure = reason
        self.settled.set()

    def wait(self, timeout: float) -> None:
        self.settled.wait(timeout=max(0.0, timeout))


Poster = Callable[..., Any]


def launch(
    url: str,
    key: bytes,
    ticket: WorkTicket,
    signals: LocalSignals,
    spawn: Callable[[Callable[[], None]], None],
    post: Poster = requests.post,
) -> WorkerCall:
    """Start the worker request; its outcome is handed to this process's waiters."""
    call = WorkerCall()
    body = ticket.to_bytes()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(key, timestamp, body),
    }

    def follow() -> None:
        response = None
        try:
            response = post(
                url,
                data=body,
                headers=headers,
                stream=True,
                allow_redirects=False,
                timeout=(timing.WORKER_START_TIMEOUT * 2, timing.LEASE + 5.0),
            )
            if response.status_code == 409:
                call.conflict = True
                call.settled.set()
                return
            if response.status_code != 200:
                call._fail(f"HTTP {response.status_code}")
                return
            buffer = b""
            for chunk in response.iter_content(chunk_size=None):
                buffer += chunk
                while b"\n" in buffer:
                    line, _, buffer = buffer.partition(b"\n")
                    if _take_line(line.strip(), call, signals):
                        return
            if not call.started:
                call._fail("the worker answered without starting")
        except requests.RequestException as exc:
            # The exception text would carry the URL: keep the type only.
            call._fail(type(exc).__name__)
        except Exception as exc:
            logger.exception("Following the worker request failed")
            call._fail(type(exc).__name__)
        finally:
            signals.drop(ticket.job)
            if response is not None:
                response.close()

    signals.carry(ticket.job)
    try:
        spawn(follow)
    except Exception:
        signals.drop(ticket.job)
        raise
    return call


def _take_line(line: bytes, call: WorkerCall, signals: LocalSignals) -> bool:
    """Act on one line of the worker's stream; True when the stream is over."""
    if line == b"started":
        call._start()
    elif line.startswith(b"done "):
        try:
            job = Job.from_record(json.loads(line[5:]))
        except ValueError:
            job = None
        if job is not None:
            signals.fire(job)
    elif line.startswith(b"refused"):
        call._fail(line.decode("utf-8", "replace")[:100])
        return True
    elif line == b"end":
        return True
    return False


class WorkerLauncher:
    """Starts worker requests for one endpoint, remembering when it cannot be reached."""

    def __init__(
        self,
        url: str | None,
        key: bytes,
        store: EndpointStore,
        scope: str,
        signals: LocalSignals,
        spawn: Callable[[Callable[[], None]], None],
        clock: Callable[[], float] = time.time,
        post: Poster = requests.post,
    ) -> None:
        self._url = url
        self._key = key
        self._store = store
        self._scope = scope
        self._signals = signals
        self._spawn = spawn
        self._clock = clock
        self._post = post

    @property
    def target(self) -> str:
        return describe_url(self._url) if self._url else ""

    def available(self) -> bool:
        """Worth trying: the URL is known and it did not fail lately in this process."""
        if self._url is None:
            self.failed("no worker URL: the request carried no Dify-Hook-Url; set worker_base_url")
            return False
        return HEALTH.recently_failed(self._scope, self._clock()) is None

    def start(self, ticket: WorkTicket) -> WorkerCall:
        assert self._url is not None
        return launch(self._url, self._key, ticket, self._signals, self._spawn, self._post)

    def reached(self) -> None:
        HEALTH.succeeded(self._scope, self._store, self._clock(), self.target)

    def failed(self, reason: str) -> None:
        health = WorkerHealth(False, reason, self._clock(), self.target)
        HEALTH.failed(self._scope, self._store, health)
