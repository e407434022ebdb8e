"""POST /wechat/worker (hidden): background work in a request of its own (DESIGN §3)."""

from collections.abc import Mapping
from typing import Any

from dify_plugin import Endpoint
from werkzeug import Request, Response

from endpoints.wechat.http_adapter import session_runtime, to_http_request, to_response
from endpoints.wechat.intake import HttpReply, handle_worker, log_internal_error
from endpoints.wechat.settings import Platform, load_settings
from endpoints.wechat.worker_link import WorkTicket


class WeChatWorkerEndpoint(Endpoint):
    def _invoke(
        self, r: Request, values: Mapping[str, Any], settings: Mapping[str, Any]
    ) -> Response:
        try:
            runtime = session_runtime(self.session, r)
            request = to_http_request(r)
            # A message that came to /wecom is WeCom's, whatever the platform setting says.
            forced = WorkTicket.platform_in(request.body)
            platform = Platform.WECOM if forced == Platform.WECOM.value else None
            reply = handle_worker(request, load_settings(settings, platform), runtime)
        except Exception:
            log_internal_error("worker")
            reply = HttpReply(500, "internal error")
        return to_response(reply)
