"""GET /wecom: WeCom's callback-URL verification (encrypted echostr), or the status page."""

# The module, not the class: Dify loads the one Endpoint subclass found in this file.
from endpoints import wechat_get
from endpoints.wechat.settings import Platform


class WeComGetEndpoint(wechat_get.WeChatGetEndpoint):
    platform = Platform.WECOM
