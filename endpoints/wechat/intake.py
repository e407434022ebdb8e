"""The request pipeline: verify → decrypt → parse → dedupe → handle → format → encrypt.

Endpoint classes are thin adapters around ``handle_get`` and ``handle_post``; everything
here runs without Dify (the runtime is injected), so it is tested directly.
Docs: https://developers.weixin.qq.com/doc/subscription/guide/dev/push/encryption.html
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import log_messages as msgs
from . import timing
from .answering import AnswerKit
from .concurrency import start_background
from .conversations import ConversationStore
from .coordinator import Action, Coordinator, Decision
from .crypto import (
    CryptoError,
    MessageCrypto,
    ReceiverIdMismatchError,
    SignatureError,
    signature_matches,
    timestamp_is_fresh,
)
from .delivery import Router
from .diagnostics import Diagnostics, Journal, key_matches
from .dify_app import AppCaller, DifyApp
from .dify_services import DifyServices
from .formatters import SUCCESS_BODY, image_reply_xml, text_reply_xml, voice_reply_xml
from .handlers.base import HandlerContext
from .models import InboundMessage
from .outbox import Outbox
from .parsers import MAX_BODY_BYTES, XmlRefusedError, message_from_fields_checked, parse_xml_fields
from .parts import PartKind
from .replay_guard import ReplayGuard
from .retry_tracker import RetryTracker
from .senders import TextSender
from .settings import Settings
from .status_page import render_status_page
from .storage import EndpointStore, KeyValueStore
from .worker import Worker, WorkerContext, WorkerRefusal, check_ticket
from .worker_link import (
    HEALTH,
    WorkerHealth,
    WorkerLauncher,
    header,
    load_health,
    worker_key,
    worker_url,
)

logger = logging.getLogger(__name__)

XML = "application/xml; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"

_WECHAT_GET_PARAMS = ("signature", "timestamp", "nonce", "echostr", "msg_signature")


@dataclass(frozen=True)
class HttpRequest:
    method: str
    query: Mapping[str, str]
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: str
    content_type: str = TEXT
    #: Keep the connection open until this clock time before answering (let WeChat retry).
    hold_until: float | None = None
    #: A streamed body (the worker's progress lines); ``body`` is then ignored.
    stream: Iterator[str] | None = None


@dataclass(frozen=True)
class Runtime:
    """What the pipeline needs from Dify, injected by the endpoint (fakes in tests)."""

    storage: KeyValueStore
    endpoint_id: str
    app_caller: AppCaller
    clock: Callable[[], float] = time.time
    #: Start background work in a worker request (False: always answer inline).
    use_worker: bool = True
    #: Customer-service sender override (tests); default: the WeChat API client.
    sender_factory: Callable[[], TextSender] | None = None
    #: Dify besides the app call (file upload, speech models, app parameters).
    services: DifyServices | None = None


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_logged_once: set[str] = set()


def _log_once(scope: str, text: str, *args: object) -> None:
    """Log a configuration warning once per process and endpoint, not per request."""
    key = scope + "\0" + (text % args if args else text)
    if key not in _logged_once:
        _logged_once.add(key)
        logger.warning(text, *args)


# --- GET: URL verification and status page ------------------------------------------------


def handle_get(
    request: HttpRequest,
    settings: Settings,
    endpoint_url: str,
    health: Callable[[], WorkerHealth | None] = lambda: None,
    diagnostics: Callable[[], Diagnostics | None] = lambda: None,
) -> HttpReply:
    if not any(name in request.query for name in _WECHAT_GET_PARAMS):
        try:
            worker_health = health()
        except Exception:
            worker_health = None
        found = _diagnostics(request, settings, diagnostics)
        page = render_status_page(settings, endpoint_url, worker_health, found)
        return HttpReply(200, page, HTML)
    if settings.is_wecom:
        return _verify_wecom_url(request, settings, endpoint_url)
    signature, timestamp, nonce = _signed(request.query, "signature")
    echostr = request.query.get("echostr", "")
    if not settings.token:
        _log_once(endpoint_url, msgs.NOT_CONFIGURED, "the Token is missing")
        return _refuse("GET", 403, "no Token configured")
    if not signature and request.query.get("msg_signature"):
        _log_once(endpoint_url, msgs.LOOKS_LIKE_WECOM)
        return _refuse("GET", 403, "WeCom-style verification on an Official Account endpoint")
    if not (signature and timestamp and nonce and echostr):
        return _refuse("GET", 403, "missing verification parameters")
    if not signature_matches(signature, settings.token, timestamp, nonce):
        return _refuse("GET", 403, "signature mismatch (is the Token the same as in the console?)")
    return HttpReply(200, echostr, TEXT)


def _verify_wecom_url(request: HttpRequest, settings: Settings, endpoint_url: str) -> HttpReply:
    """WeCom's URL check: the ``echostr`` is encrypted; the answer is its plaintext."""
    query = request.query
    msg_signature, timestamp, nonce = _signed(query, "msg_signature")
    echostr = query.get("echostr", "")
    crypto = _wecom_crypto(settings, endpoint_url, "GET")
    if isinstance(crypto, HttpReply):
        return crypto
    if not msg_signature and query.get("signature"):
        _log_once(endpoint_url, msgs.LOOKS_LIKE_OFFICIAL_ACCOUNT)
        return _refuse("GET", 403, "Official Account verification on a WeCom endpoint")
    if not (msg_signature and timestamp and nonce and echostr):
        return _refuse("GET", 403, "missing verification parameters")
    try:
        plaintext = crypto.decrypt_echostr(msg_signature, timestamp, nonce, echostr)
    except CryptoError as exc:
        return _refuse("GET", 403, _crypto_refusal(exc))
    return HttpReply(200, plaintext, TEXT)


def _wecom_crypto(settings: Settings, scope: str, method: str) -> MessageCrypto | HttpReply:
    """The WeCom app's crypto, or the refusal that says which setting is missing."""
    missing = [
        name
        for name, ok in (
            ("the Token", settings.can_verify),
            ("a valid EncodingAESKey", settings.encrypted_mode_available),
            ("the CorpID (app_id)", bool(settings.app_id)),
        )
        if not ok
    ]
    if missing:
        _log_once(scope, msgs.NOT_CONFIGURED, "WeCom needs " + " and ".join(missing))
        return _refuse(method, 403, "WeCom endpoint not configured")
    return MessageCrypto(settings.token, settings.encoding_aes_key, settings.app_id)


def _crypto_refusal(exc: CryptoError) -> str:
    if isinstance(exc, SignatureError):
        return "msg_signature mismatch (is the Token the same as in the console?)"
    if isinstance(exc, ReceiverIdMismatchError):
        return "encrypted for another CorpID/AppID (check app_id)"
    return f"decryption refused ({type(exc).__name__}; is the EncodingAESKey the console's?)"


def _diagnostics(
    request: HttpRequest, settings: Settings, load: Callable[[], Diagnostics | None]
) -> Diagnostics | None:
    """The diagnostics, only for the right ``?key=``; a wrong key is treated exactly like
    none (nothing is read, nothing is logged, the page is the same)."""
    if not key_matches(request.query.get("key", ""), settings.token):
        return None
    try:
        return load()
    except Exception:
        logger.debug("Loading the diagnostics failed", exc_info=True)
        return None


def _refuse(method: str, status: int, reason: str) -> HttpReply:
    logger.warning(msgs.REFUSED_REQUEST, method, reason)
    return HttpReply(status, "forbidden" if status == 403 else "bad request", TEXT)


# --- POST: message intake -----------------------------------------------------------------


@dataclass(frozen=True)
class _Verified:
    message: InboundMessage
    crypto: MessageCrypto | None  # set when the request was encrypted: reply encrypted too
    nonce: str
    signature: str


def handle_post(request: HttpRequest, settings: Settings, runtime: Runtime) -> HttpReply:
    arrived_at = runtime.clock()
    try:
        verified = _verify_and_parse(request, settings, arrived_at, runtime.endpoint_id)
    except Refused as refusal:
        return _refuse("POST", refusal.status, refusal.reason)

    message = verified.message
    logger.debug(msgs.MESSAGE_RECEIVED, message.msg_type, message.dedupe_key)
    store = EndpointStore(runtime.storage, runtime.endpoint_id)
    journal = _journal(store, settings, runtime.clock)
    try:
        # In encrypted modes msg_signature covers the body, so a replay carries the same
        # message and is caught by deduplication; only plain mode needs the replay guard.
        if verified.crypto is None:
            guard = ReplayGuard(store, settings.timestamp_tolerance, runtime.clock)
            if not guard.admit(verified.signature, message.dedupe_key):
                return _refuse("POST", 403, "replayed signature with a different message")
        tracker, outbox, app = _state(store, settings, runtime)
        ctx = HandlerContext(settings, app.conversations, outbox, runtime.services)
        launcher = None
        if runtime.use_worker:
            launcher = WorkerLauncher(
                worker_url(request.headers, settings),
                worker_key(settings, runtime.endpoint_id),
                store,
                runtime.endpoint_id,
                tracker.signals,
                start_background,
            )
        router = Router(settings, store, runtime.endpoint_id, runtime.clock)
        coordinator = Coordinator(
            ctx,
            tracker,
            app,
            runtime.clock,
            worker=launcher,
            router=router,
            kit=_answer_kit(store, settings, runtime, journal),
            page_base=header(request.headers, "Dify-Hook-Url"),
            journal=journal,
        )
        decision = coordinator.process(message, arrived_at)
    except Exception:
        # Storage down or full, or a bug: the user gets the friendly text, not WeChat's
        # "该公众号暂时无法提供服务"; the log gets the trace (no content, no secrets).
        logger.exception(msgs.HANDLER_FAILED, message.msg_type)
        decision = Decision(Action.REPLY, settings.error_message)
    # The reply is decided: write the journal now if it is due and time is to spare (never
    # for RETRY, which returns at the deadline, nor for a late hand-off).
    if decision.action is not Action.RETRY and (
        runtime.clock() - arrived_at < timing.DELIVERY_DEADLINE / 2
    ):
        journal.flush_if_due()
    return _render(decision, verified, settings, runtime.clock, arrived_at)


def _state(
    store: EndpointStore, settings: Settings, runtime: Runtime
) -> tuple[RetryTracker, Outbox, DifyApp]:
    tracker = RetryTracker(store, runtime.clock)
    conversations = ConversationStore(store, runtime.clock)
    # Job records double as replay markers in encrypted mode: keep them for the whole
    # window in which a captured request's timestamp would still be accepted.
    outbox = Outbox(
        store,
        tracker,
        runtime.clock,
        retention=settings.answer_retention_seconds,
        job_retention=2 * settings.timestamp_tolerance,
    )
    app = DifyApp(runtime.app_caller, settings.dify_app_id, settings.dify_app_inputs, conversations)
    return tracker, outbox, app


def _answer_kit(
    store: EndpointStore, settings: Settings, runtime: Runtime, journal: Journal | None = None
) -> AnswerKit:
    return AnswerKit(
        settings, store, runtime.endpoint_id, runtime.services, runtime.clock, journal=journal
    )


def _journal(
    store: EndpointStore, settings: Settings, clock: Callable[[], float] = time.time
) -> Journal:
    """The request's journal; the endpoint's secrets are masked in whatever it keeps."""
    secrets = (settings.token, settings.encoding_aes_key, settings.app_secret)
    return Journal(store, clock, redact=secrets)


# --- POST /wechat/worker: background work ----------------------------------------------------


def handle_worker(request: HttpRequest, settings: Settings, runtime: Runtime) -> HttpReply:
    store = EndpointStore(runtime.storage, runtime.endpoint_id)
    tracker, outbox, app = _state(store, settings, runtime)
    journal = _journal(store, settings, runtime.clock)
    ctx = WorkerContext(
        settings=settings,
        endpoint_id=runtime.endpoint_id,
        store=store,
        tracker=tracker,
        outbox=outbox,
        app=app,
        router=Router(settings, store, runtime.endpoint_id, runtime.clock),
        clock=runtime.clock,
        sender_factory=runtime.sender_factory,
        kit=_answer_kit(store, settings, runtime, journal),
        journal=journal,
    )
    checked = check_ticket(dict(request.headers), request.body, ctx)
    if isinstance(checked, WorkerRefusal):
        logger.warning(msgs.REFUSED_WORKER, checked.reason)
        return HttpReply(checked.status, f"refused: {checked.reason}\n", TEXT)
    ticket, job = checked
    return HttpReply(200, "", TEXT, stream=Worker(ctx, ticket, job).run())


def load_worker_health(storage: KeyValueStore, endpoint_id: str) -> WorkerHealth | None:
    """What the status page says about the worker: this process's memory first."""
    recent = HEALTH.recently_failed(endpoint_id, time.time())
    return recent or load_health(EndpointStore(storage, endpoint_id))


def load_diagnostics(
    storage: KeyValueStore, endpoint_id: str, settings: Settings
) -> Diagnostics | None:
    """The diagnostics section's data (only called for the right key): this process's
    pending entries are written first, so the page includes them."""
    return _journal(EndpointStore(storage, endpoint_id), settings).report()


def _verify_and_parse(
    request: HttpRequest, settings: Settings, now: float, scope: str = ""
) -> _Verified:
    if settings.is_wecom:
        return _verify_wecom(request, settings, now, scope)
    if not settings.can_verify:
        _log_once(scope, msgs.NOT_CONFIGURED, "the Token is missing")
        raise Refused(403, "no Token configured")
    if len(request.body) > MAX_BODY_BYTES:
        raise Refused(413, "body too large")
    query = request.query
    signature, timestamp, nonce = _signed(query, "signature")
    if not signature and query.get("msg_signature") and not query.get("encrypt_type"):
        _log_once(scope, msgs.LOOKS_LIKE_WECOM)
        raise Refused(403, "WeCom-style request on an Official Account endpoint")
    if not (signature and timestamp and nonce):
        raise Refused(403, "missing signature parameters")
    _check_timestamp(timestamp, now, settings)
    if not signature_matches(signature, settings.token, timestamp, nonce):
        raise Refused(403, "signature mismatch (is the Token the same as in the console?)")

    fields = _xml_fields(request.body)
    encrypt_type = query.get("encrypt_type", "").lower()
    crypto: MessageCrypto | None = None
    replay_signature = signature
    if encrypt_type == "aes":
        if not settings.encrypted_mode_available:
            _log_once(scope, msgs.ENCRYPTED_WITHOUT_KEY)
            raise Refused(403, "encrypted message but no valid EncodingAESKey configured")
        msg_signature = query.get("msg_signature", "")
        if not msg_signature:
            raise Refused(403, "missing msg_signature")
        crypto = MessageCrypto(settings.token, settings.encoding_aes_key, settings.app_id)
        fields = _decrypted_fields(crypto, fields, msg_signature, timestamp, nonce)
        replay_signature = msg_signature
    elif encrypt_type not in ("", "raw"):
        raise Refused(400, "unknown encrypt_type")
    elif settings.encoding_aes_key:
        # A key is configured, so the account runs in compatible or safe mode: a plaintext
        # request here would silently switch encryption off.
        _log_once(scope, msgs.PLAINTEXT_WITH_KEY)
        raise Refused(403, "plaintext message while an EncodingAESKey is configured")
    return _Verified(_message(fields), crypto, nonce, replay_signature)


def _verify_wecom(request: HttpRequest, settings: Settings, now: float, scope: str) -> _Verified:
    """A WeCom callback: always encrypted, signed only by ``msg_signature``."""
    crypto = _wecom_crypto(settings, scope, "POST")
    if isinstance(crypto, HttpReply):
        raise Refused(403, "WeCom endpoint not configured")
    if len(request.body) > MAX_BODY_BYTES:
        raise Refused(413, "body too large")
    query = request.query
    msg_signature, timestamp, nonce = _signed(query, "msg_signature")
    if not msg_signature and query.get("signature"):
        _log_once(scope, msgs.LOOKS_LIKE_OFFICIAL_ACCOUNT)
        raise Refused(403, "Official Account request on a WeCom endpoint")
    if not (msg_signature and timestamp and nonce):
        raise Refused(403, "missing signature parameters")
    _check_timestamp(timestamp, now, settings)
    envelope = _xml_fields(request.body)
    fields = _decrypted_fields(crypto, envelope, msg_signature, timestamp, nonce)
    message = _message(fields)
    agent = str(fields.get("AgentID") or envelope.get("AgentID") or "")
    if settings.agent_id and agent and agent != settings.agent_id:
        _log_once(scope, msgs.WRONG_AGENT)
        raise Refused(403, "message for another WeCom app (AgentID differs from agent_id)")
    return _Verified(message, crypto, nonce, msg_signature)


def _signed(query: Mapping[str, str], signature: str) -> tuple[str, str, str]:
    """The signature named ``signature``, the timestamp and the nonce of a request."""
    return query.get(signature, ""), query.get("timestamp", ""), query.get("nonce", "")


def _check_timestamp(timestamp: str, now: float, settings: Settings) -> None:
    if not timestamp_is_fresh(timestamp, now, settings.timestamp_tolerance):
        raise Refused(403, "timestamp outside the accepted window (check the server clock)")


def _xml_fields(body: bytes) -> dict[str, Any]:
    try:
        return parse_xml_fields(body)
    except XmlRefusedError as exc:
        raise Refused(400, exc.reason) from exc  # size was checked before


def _decrypted_fields(
    crypto: MessageCrypto,
    envelope: Mapping[str, Any],
    msg_signature: str,
    timestamp: str,
    nonce: str,
) -> dict[str, Any]:
    encrypted = envelope.get("Encrypt")
    if not isinstance(encrypted, str) or not encrypted:
        raise Refused(400, "encrypted message without an Encrypt element")
    try:
        plaintext = crypto.decrypt_message(msg_signature, timestamp, nonce, encrypted)
    except CryptoError as exc:
        raise Refused(403, _crypto_refusal(exc)) from exc
    try:
        return parse_xml_fields(plaintext)
    except XmlRefusedError as exc:
        raise Refused(400, f"decrypted body: {exc.reason}") from exc


def _message(fields: dict[str, Any]) -> InboundMessage:
    try:
        return message_from_fields_checked(fields)
    except XmlRefusedError as exc:
        raise Refused(400, exc.reason) from exc


def _render(
    decision: Decision,
    verified: _Verified,
    settings: Settings,
    clock: Callable[[], float],
    arrived_at: float,
) -> HttpReply:
    if decision.action is Action.RETRY:
        # Only "no response within 5 s" is a documented retry trigger: say nothing and keep
        # the connection until WeChat has hung up.
        return HttpReply(503, "", TEXT, hold_until=arrived_at + timing.HOLD_UNTIL)
    if decision.action is Action.ACK:
        # Never encrypted. WeCom wants an empty 200; the Official Account "success".
        return HttpReply(200, "" if settings.is_wecom else SUCCESS_BODY, TEXT)
    message = verified.message
    now = int(clock())
    media = decision.media
    if media is not None and media.kind is PartKind.IMAGE:
        xml = image_reply_xml(message.from_user, message.to_user, media.value, now)
    elif media is not None:
        xml = voice_reply_xml(message.from_user, message.to_user, media.value, now)
    else:
        xml = text_reply_xml(message.from_user, message.to_user, decision.text, now)
    if verified.crypto is not None:
        xml = verified.crypto.encrypt_reply(xml, str(now), verified.nonce)
    return HttpReply(200, xml, XML)


def log_internal_error(method: str) -> None:
    logger.exception(msgs.INTERNAL_ERROR, method)
