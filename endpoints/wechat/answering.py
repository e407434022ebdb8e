"""From a question to the parts WeChat gets: prepare media, ask the app, shape the answer.

Used by whichever request asks the app — the worker, or the first delivery when there is
no worker — so both produce the same parts:

1. media the user sent becomes a file input or a transcript (:mod:`.inbound_media`);
2. the app is asked (:mod:`.dify_app`);
3. the answer becomes WeChat text parts (markdown rendered, split at natural boundaries),
   images become WeChat image parts (:mod:`.outbound_media`), a voice reply may follow;
4. an answer too long for WeChat, or with tables or pictures text cannot show, gets a
   "阅读全文" link to a page the plugin serves (:mod:`.answer_pages`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from . import log_messages as msgs
from .answer_pages import AnswerPages, make_token, page_key, page_url
from .diagnostics import APP_ERROR, Journal
from .dify_app import AnswerFile, AppAnswer, AppCancelled, AppError, DifyApp
from .dify_services import DifyServices
from .formatters import (
    TEXT_BUDGET_BYTES,
    has_tables_or_images,
    markdown_to_wechat_text,
    markdown_to_wecom_markdown,
    render_wechat_text,
    split_text,
    utf8_len,
)
from .inbound_media import MediaPreparer, MediaProblem, MediaRequest, Prepared
from .outbound_media import MediaPublisher, hosted_images, remove_images
from .parts import markdown_part
from .retry_tracker import Job, JobState
from .settings import Settings
from .storage import EndpointStore
from .texts import (
    EMPTY_ANSWER,
    FULL_ANSWER_LINK,
    FULL_ANSWER_MARKDOWN_LINK,
    MORE_HINT,
    PUSH_MORE_HINT,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Question:
    """One message's question for the app; travels in the worker ticket."""

    openid: str
    query: str
    metadata: dict[str, str] = field(default_factory=dict)
    media: MediaRequest | None = None
    spoken: bool = False  # asked by voice: a voice reply may follow
    page_base: str = ""  # public URL of this endpoint (Dify-Hook-Url): full-answer links
    ref: str = ""  # log-safe message reference


def paginate(text: str, keyword: str, extra_reserve: int = 0) -> list[str]:
    """Split a reply into WeChat-sized parts, each leaving room for a "more" hint."""
    return split_text(text, _budget(keyword, extra_reserve)) or [EMPTY_ANSWER]


#: How often a markdown split is retried smaller when a part's text rendering is too long.
_MARKDOWN_SHRINK_STEPS = 5


def paginate_markdown(markdown: str, keyword: str, extra_reserve: int = 0) -> list[str]:
    """Split WeCom markdown into markdown parts that fit a message both as markdown and as
    the text a passive reply shows (rendering can lengthen a part: "# T" → "【T】")."""
    budget = _budget(keyword, extra_reserve)
    limit = budget
    pieces = split_text(markdown, budget)
    for _ in range(_MARKDOWN_SHRINK_STEPS):
        if all(utf8_len(markdown_to_wechat_text(p)) <= limit for p in pieces):
            return [markdown_part(p) for p in pieces] or [EMPTY_ANSWER]
        budget = budget * 9 // 10
        pieces = split_text(markdown, budget)
    # Pathological markup (thousands of one-letter headings): plain text parts always fit.
    return paginate(markdown_to_wechat_text(markdown), keyword, extra_reserve)


def _budget(keyword: str, extra_reserve: int) -> int:
    reserve = max(utf8_len(MORE_HINT.format(keyword=keyword)), utf8_len(PUSH_MORE_HINT))
    return TEXT_BUDGET_BYTES - reserve - extra_reserve


class AnswerKit:
    """What turning a question into parts needs besides the app call."""

    def __init__(
        self,
        settings: Settings,
        store: EndpointStore,
        endpoint_id: str,
        services: DifyServices | None,
        clock: Callable[[], float],
        preparer: MediaPreparer | None = None,
        publisher: MediaPublisher | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.settings = settings
        self._store = store
        self._endpoint_id = endpoint_id
        self._services = services
        self._clock = clock
        #: Where failures and app errors are noted for the status page (no-op without).
        self.journal = journal or Journal(None)
        self._preparer = preparer or (
            MediaPreparer(settings, store, services, journal=self.journal)
            if services is not None
            else None
        )
        self._publisher = publisher or MediaPublisher(settings, store, journal=self.journal)

    def prepare(self, question: Question) -> Prepared:
        if question.media is None or self._preparer is None:
            return Prepared(question.query)
        return self._preparer.prepare(question.query, question.media, question.ref)

    def compose(
        self, question: Question, query: str, answer: AppAnswer, should_stop: Callable[[], bool]
    ) -> list[str]:
        settings = self.settings
        source = answer.text
        files = {f.url: f for f in answer.files}
        # Markdown images are fetched only from hosts that serve Dify's files: the hosts of
        # the files the app returned, and Dify's own public host. An answer (prompt
        # injection included) cannot make the plugin fetch from anywhere else.
        trusted = {urlsplit(u).hostname or "" for u in [*files, question.page_base]} - {""}
        for image in hosted_images(source, trusted):
            files.setdefault(image.url, image)
        published = self._publisher.images(list(files.values()), question.ref, should_stop)
        source = remove_images(source, published.sent_urls)
        for file in published.links:  # files outside the text stay visible as links
            if file.url not in source:
                source += "\n\n" + _markdown_link(file)
        shape = _Shape(source, settings)
        parts = shape.parts()
        if parts and self._wants_page(shape, parts):
            # The page shows the answer as the app wrote it, pictures and files included.
            page = answer.text + "".join(
                "\n\n" + _markdown_link(f) for f in files.values() if f.url not in answer.text
            )
            url = self._page_url(question, query, page)
            link = shape.link(url) if url else ""
            if link:  # the parts make room for it
                parts = shape.parts(utf8_len(link))
                if len(parts) > settings.push_quota:
                    parts = [parts[0] + link]  # the page holds the rest
                else:
                    parts[-1] += link
        speak = question.spoken and settings.can_speak and not should_stop()
        if speak and shape.text and self._services is not None:
            voice = self._publisher.voice(self._services, shape.text, question.ref)
            if voice:
                parts.append(voice)
        parts += published.parts
        return parts or [EMPTY_ANSWER]

    def _wants_page(self, shape: _Shape, parts: list[str]) -> bool:
        if not self.settings.full_answer_link:
            return False
        return len(parts) > self.settings.push_quota or shape.rich

    def _page_url(self, question: Question, query: str, source: str) -> str:
        if not question.page_base or page_url(question.page_base, "-") is None:
            return ""
        expires_at = self._clock() + self.settings.full_answer_seconds
        try:
            page_id = AnswerPages(self._store, self._clock).save(
                source, title=_title(query), expires_at=expires_at
            )
        except Exception:
            logger.warning(msgs.BOOKKEEPING_FAILED, exc_info=True)
            return ""
        token = make_token(page_key(self.settings, self._endpoint_id), page_id, int(expires_at))
        return page_url(question.page_base, token) or ""


class _Shape:
    """An answer's markdown as the platform shows it: WeChat text, or WeCom markdown for
    answers that go out as app messages (``Settings.sends_markdown``)."""

    def __init__(self, source: str, settings: Settings) -> None:
        self._keyword = settings.fetch_keyword
        self._markdown = settings.sends_markdown
        self.text = self._wecom = ""
        #: Tables or images, which the parts show only roughly.
        self.rich = False
        if not source.strip():
            return
        if self._markdown:
            self._wecom = markdown_to_wecom_markdown(source)
            self.rich = has_tables_or_images(source)
        else:
            rendered = render_wechat_text(source)  # one parse for the text and the check
            self.text, self.rich = rendered.text, rendered.rich

    def link(self, url: str) -> str:
        """The 阅读全文 line after the last part: an HTML link in WeChat text, a markdown
        link in WeCom markdown (which has no HTML; as text it reads "阅读全文 (url)")."""
        if self._markdown:
            return FULL_ANSWER_MARKDOWN_LINK.format(url=url)
        return FULL_ANSWER_LINK.format(url=url)

    def parts(self, extra_reserve: int = 0) -> list[str]:
        if self._markdown:
            return (
                paginate_markdown(self._wecom, self._keyword, extra_reserve) if self._wecom else []
            )
        return paginate(self.text, self._keyword, extra_reserve) if self.text else []


def _markdown_link(file: AnswerFile) -> str:
    if file.kind == "image" or file.mimetype.startswith("image/"):
        return f"![{file.name or '图片'}]({file.url})"
    return f"[{file.name or '文件'}]({file.url})"


def _title(query: str) -> str:
    title = " ".join(query.split())
    return title[:40] + "…" if len(title) > 40 else title


def finish_answer(
    job: Job,
    question: Question,
    app: DifyApp,
    kit: AnswerKit,
    should_stop: Callable[[], bool] = lambda: False,
    on_started: Callable[[], None] = lambda: None,
) -> tuple[Job, AppAnswer | None]:
    """Prepare, ask the app and turn its answer (or failure) into the job's settled outcome.
    Raises AppCancelled when ``should_stop`` said so."""
    ref = job.key[:12]
    settings = kit.settings
    try:
        prepared = kit.prepare(question)
    except MediaProblem as problem:
        logger.info("Message %s not sent to the app: %s", ref, problem.reason)
        parts = paginate(problem.text, settings.fetch_keyword)
        return replace(job, state=JobState.DONE, parts=parts, reason=problem.reason), None
    except Exception as exc:
        logger.exception(msgs.HANDLER_FAILED, ref)
        return _failed(job, kit, type(exc).__name__), None
    metadata: dict[str, Any] = {**question.metadata, **prepared.metadata}
    try:
        answer = app.ask(
            prepared.query, question.openid, metadata, should_stop, on_started, prepared.files
        )
    except AppCancelled:
        raise
    except AppError as exc:
        logger.warning(msgs.APP_FAILED, ref, "app", exc.reason)
        return _failed(job, kit, exc.reason, APP_ERROR), None
    except Exception as exc:
        logger.exception(msgs.HANDLER_FAILED, ref)
        return _failed(job, kit, type(exc).__name__), None
    try:
        parts = kit.compose(question, prepared.query, answer, should_stop)
    except Exception as exc:
        logger.exception(msgs.HANDLER_FAILED, ref)
        return _failed(job, kit, type(exc).__name__), answer
    return replace(job, state=JobState.DONE, parts=parts), answer


def _failed(job: Job, kit: AnswerKit, reason: str, code: str = "") -> Job:
    """The user gets the error message; the journal notes why (an app error's reason, or
    the exception's type as the code — never content)."""
    kit.journal.record_error("dify-app", code or reason, reason if code else "")
    kit.journal.count("app_error")
    settings = kit.settings
    return replace(job, state=JobState.FAILED, parts=[settings.error_message], reason=reason)
