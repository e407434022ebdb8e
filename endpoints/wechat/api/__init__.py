"""WeChat server APIs: the Official Account's (access token, customer-service messages, typing,
media) and WeCom's (token, app messages, media), over one request core.

Pure Python (``requests``), no Dify imports. Usage::

    client = WeChatClient(settings.api_base_url, settings.app_id, settings.app_secret, store)
    client.custom_message.send_text(openid, "…", timeout=remaining)
    client.typing.start(openid)
    media = client.media.download(media_id)

Errors: see :mod:`.errors` (tree at the top). Token sharing: see :mod:`.token_cache`.
"""

from .client import DEFAULT_TIMEOUT, Response, ServerAPIClient, Transport, WeChatClient
from .errors import (
    AccessTokenInvalid,
    ContentRejected,
    ContentTooLong,
    CredentialError,
    IPNotTrusted,
    IPNotWhitelisted,
    OutOfWindow,
    QuotaExceeded,
    RateLimited,
    TransportError,
    Unauthorized,
    UserUnavailable,
    WeChatAPIError,
    WeChatError,
    error_for,
    wecom_error_for,
)
from .media import MediaFile, MediaKind, UploadedMedia
from .token_cache import AccessTokenCache
from .wecom import WeComClient

__all__ = [
    "DEFAULT_TIMEOUT",
    "AccessTokenCache",
    "AccessTokenInvalid",
    "ContentRejected",
    "ContentTooLong",
    "CredentialError",
    "IPNotTrusted",
    "IPNotWhitelisted",
    "MediaFile",
    "MediaKind",
    "OutOfWindow",
    "QuotaExceeded",
    "RateLimited",
    "Response",
    "ServerAPIClient",
    "Transport",
    "TransportError",
    "Unauthorized",
    "UploadedMedia",
    "UserUnavailable",
    "WeChatAPIError",
    "WeChatClient",
    "WeChatError",
    "WeComClient",
    "error_for",
    "wecom_error_for",
]
