"""POST /wechat: message intake from WeChat (plain, compatible and safe mode), or from WeCom
when the platform setting says so."""

from collections.abc import Mapping
from typing import Any

from dify_plugin import Endpoint
from werkzeug import Request, Response

from endpoints.wechat.http_adapter import session_runtime, to_http_request, to_response
from endpoints.wechat.intake import HttpReply, handle_post, log_internal_error
from endpoints.wechat.settings import Platform, load_settings


class WeChatPostEndpoint(Endpoint):
    #: The platform this URL serves; None: the endpoint's ``platform`` setting decides.
    platform: Platform | None = None

    def _invoke(
        self, r: Request, values: Mapping[str, Any], settings: Mapping[str, Any]
    ) -> Response:
        try:
            runtime = session_runtime(self.session, r)
            reply = handle_post(to_http_request(r), load_settings(settings, self.platform), runtime)
        except Exception:  # a user never sees a stack trace; WeChat gets a plain failure
            log_internal_error("POST")
            reply = HttpReply(500, "internal error")
        return to_response(reply)
