"""POST /wechat/worker (hidden): background work in a request of its own (DESIGN §3)."""

from collections.abc import Mapping
from typing import Any

from dify_plugin import Endpoint
from werkzeug import Request, Response

from endpoints.wechat.http_adapter import session_runtime, to_http_request, to_response
from endpoints.wechat.intake import HttpReply, handle_worker, log_internal_error
from endpoints.wechat.settings import load_settings


class WeChatWorkerEndpoint(Endpoint):
    def _invoke(
        self, r: Request, values: Mapping[str, Any], settings: Mapping[str, Any]
    ) -> Response:
        try:
            runtime = session_runtime(self.session, r)
            reply = handle_worker(to_http_request(r), load_settings(settings), runtime)
        except Exception:
            log_internal_error("worker")
            reply = HttpReply(500, "internal error")
        return to_response(reply)
