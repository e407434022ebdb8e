"""GET /wechat: the server-URL verification (Official Account, or WeCom when the platform
setting says so), or a status page for a browser."""

from collections.abc import Mapping
from typing import Any

from dify_plugin import Endpoint
from werkzeug import Request, Response

from endpoints.wechat.http_adapter import to_http_request, to_response
from endpoints.wechat.intake import (
    HttpReply,
    handle_get,
    load_diagnostics,
    load_worker_health,
    log_internal_error,
)
from endpoints.wechat.settings import Platform, load_settings


class WeChatGetEndpoint(Endpoint):
    #: The platform this URL serves; None: the endpoint's ``platform`` setting decides.
    platform: Platform | None = None

    def _invoke(
        self, r: Request, values: Mapping[str, Any], settings: Mapping[str, Any]
    ) -> Response:
        try:
            endpoint_id = self.session.endpoint_id or r.headers.get("Dify-Hook-Id", "")
            loaded = load_settings(settings, self.platform)
            reply = handle_get(
                to_http_request(r),
                loaded,
                r.headers.get("Dify-Hook-Url", ""),
                lambda: load_worker_health(self.session.storage, endpoint_id),
                lambda: load_diagnostics(self.session.storage, endpoint_id, loaded),
            )
        except Exception:  # never let the SDK turn an exception into a 404/500 with its text
            log_internal_error("GET")
            reply = HttpReply(500, "internal error")
        return to_response(reply)
