"""werkzeug ⇄ pipeline types; shared by the endpoint classes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from werkzeug import Request, Response

from .dify_app import session_app_caller
from .dify_services import SessionServices
from .intake import HttpReply, HttpRequest, Runtime
from .parsers import MAX_BODY_BYTES


def to_http_request(request: Request) -> HttpRequest:
    # Read one byte past the limit so an oversize body is recognised, not truncated.
    body = request.stream.read(MAX_BODY_BYTES + 1) if request.method == "POST" else b""
    return HttpRequest(
        method=request.method,
        query={key: request.args.get(key, "") for key in request.args},
        body=body,
        headers={key: value for key, value in request.headers.items()},
    )


def session_runtime(session: Any, request: Request) -> Runtime:
    """What the pipeline needs from this request's Dify session."""
    return Runtime(
        storage=session.storage,
        endpoint_id=session.endpoint_id or request.headers.get("Dify-Hook-Id", ""),
        app_caller=session_app_caller(session),
        services=SessionServices(session),
    )


def to_response(
    reply: HttpReply,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Response:
    if reply.hold_until is not None:
        sleep(max(0.0, reply.hold_until - clock()))
    if reply.stream is not None:
        return Response(reply.stream, status=reply.status, content_type=reply.content_type)
    return Response(reply.body, status=reply.status, content_type=reply.content_type)
