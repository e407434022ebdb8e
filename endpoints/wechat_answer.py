"""GET /wechat/answer/<token>: the "阅读全文" page of an answer too long or too rich for WeChat."""

import logging
import time
from collections.abc import Mapping
from typing import Any

from dify_plugin import Endpoint
from werkzeug import Request, Response

from endpoints.wechat import log_messages as msgs
from endpoints.wechat.answer_pages import PageReply, serve_answer_page, unavailable_reply
from endpoints.wechat.settings import load_settings
from endpoints.wechat.storage import EndpointStore

logger = logging.getLogger(__name__)


class WeChatAnswerEndpoint(Endpoint):
    def _invoke(
        self, r: Request, values: Mapping[str, Any], settings: Mapping[str, Any]
    ) -> Response:
        try:
            endpoint_id = self.session.endpoint_id or r.headers.get("Dify-Hook-Id", "")
            reply = serve_answer_page(
                str(values.get("token", "")),
                load_settings(settings),
                EndpointStore(self.session.storage, endpoint_id),
                endpoint_id,
                time.time(),
            )
        except Exception:  # never let the SDK turn an exception into a 404/500 with its text
            logger.exception(msgs.INTERNAL_ERROR, "answer page")
            reply = unavailable_reply()
        return to_page_response(reply)


def to_page_response(reply: PageReply) -> Response:
    """``http_adapter.to_response`` knows no headers; the page needs its security headers."""
    return Response(
        reply.body,
        status=reply.status,
        content_type=reply.content_type,
        headers=dict(reply.headers),
    )
