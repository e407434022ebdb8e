"""POST /wecom: message intake from a WeCom (企业微信) self-built app."""

# The module, not the class: Dify loads the one Endpoint subclass found in this file.
from endpoints import wechat_post
from endpoints.wechat.settings import Platform


class WeComPostEndpoint(wechat_post.WeChatPostEndpoint):
    platform = Platform.WECOM
