"""The endpoint group's paths: messages come to ``…/wechat`` (Official Account, or the
platform setting) or ``…/wecom`` (WeCom); the worker and the answer pages live beside them
under ``…/wechat/…`` for both."""

from __future__ import annotations

MESSAGE_PATHS = ("/wechat", "/wecom")


def group_base(path: str) -> str | None:
    """``…/wechat`` for the path of either message endpoint, else None."""
    path = path.rstrip("/")
    for suffix in MESSAGE_PATHS:
        if path.endswith(suffix):
            return path[: -len(suffix)] + "/wechat"
    return None
