"""WeChat Official Account server API: access token, customer-service messages, typing, media.

Pure Python (``requests``), no Dify imports. Usage::

    client = WeChatClient(settings.api_base_url, settings.app_id, settings.app_secret, store)
    client.custom_message.send_text(openid, "…", timeout=remaining)
    client.typing.start(openid)
    media = client.media.download(media_id)

Errors: see :mod:`.errors` (tree at the top). Token sharing: see :mod:`.token_cache`.
"""

from .client import DEFAULT_TIMEOUT, Response, Transport, WeChatClient
from .errors import (
    AccessTokenInvalid,
    ContentTooLong,
    CredentialError,
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
)
from .media import MediaFile, MediaKind, UploadedMedia
from .token_cache import AccessTokenCache

__all__ = [
    "DEFAULT_TIMEOUT",
    "AccessTokenCache",
    "AccessTokenInvalid",
    "ContentTooLong",
    "CredentialError",
    "IPNotWhitelisted",
    "MediaFile",
    "MediaKind",
    "OutOfWindow",
    "QuotaExceeded",
    "RateLimited",
    "Response",
    "Transport",
    "TransportError",
    "Unauthorized",
    "UploadedMedia",
    "UserUnavailable",
    "WeChatAPIError",
    "WeChatClient",
    "WeChatError",
    "error_for",
]
