"""Inbound XML samples as WeChat documents them (reference/wechat-protocol.md §5)."""

TO = "gh_97417a04a28d"
USER = "oUSER123"

TEXT = (
    "<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[{user}]]>"
    "</FromUserName><CreateTime>{ts}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
    "<Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId>"
    "<MsgDataId>xxxx</MsgDataId><Idx>xxxx</Idx></xml>"
)
IMAGE = (
    "<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[{user}]]>"
    "</FromUserName><CreateTime>{ts}</CreateTime><MsgType><![CDATA[image]]></MsgType>"
    "<PicUrl><![CDATA[http://mmbiz.qpic.cn/pic.jpg]]></PicUrl><MediaId><![CDATA[media_id]]>"
    "</MediaId><MsgId>{msg_id}</MsgId></xml>"
)
VOICE = (
    "<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[{user}]]>"
    "</FromUserName><CreateTime>{ts}</CreateTime><MsgType><![CDATA[voice]]></MsgType>"
    "<MediaId><![CDATA[media_id]]></MediaId><Format><![CDATA[amr]]></Format>"
    "<MsgId>{msg_id}</MsgId><MediaId16K><![CDATA[media_id_16k]]></MediaId16K></xml>"
)
VOICE_RECOGNIZED = (
    "<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[{user}]]>"
    "</FromUserName><CreateTime>{ts}</CreateTime><MsgType><![CDATA[voice]]></MsgType>"
    "<MediaId><![CDATA[media_id]]></MediaId><Format><![CDATA[amr]]></Format>"
    "<Recognition><![CDATA[腾讯微信团队]]></Recognition><MsgId>{msg_id}</MsgId></xml>"
)
VIDEO = (
    "<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[{user}]]>"
    "</FromUserName><CreateTime>{ts}</CreateTime><MsgType><![CDATA[video]]></MsgType>"
    "<MediaId><![CDATA[media_id]]></MediaId><ThumbMediaId><![CDATA[thumb_media_id]]>"
    "</ThumbMediaId><MsgId>{msg_id}</MsgId></xml>"
)
SHORTVIDEO = VIDEO.replace("[video]", "[shortvideo]")
LOCATION = (
    "<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[{user}]]>"
    "</FromUserName><CreateTime>{ts}</CreateTime><MsgType><![CDATA[location]]></MsgType>"
    "<Location_X>23.134521</Location_X><Location_Y>113.358803</Location_Y><Scale>20</Scale>"
    "<Label><![CDATA[位置信息]]></Label><MsgId>{msg_id}</MsgId></xml>"
)
LINK = (
    "<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[{user}]]>"
    "</FromUserName><CreateTime>{ts}</CreateTime><MsgType><![CDATA[link]]></MsgType>"
    "<Title><![CDATA[公众平台官网链接]]></Title><Description><![CDATA[公众平台官网链接描述]]>"
    "</Description><Url><![CDATA[https://mp.weixin.qq.com]]></Url><MsgId>{msg_id}</MsgId></xml>"
)
EVENT = (
    "<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[{user}]]>"
    "</FromUserName><CreateTime>{ts}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
    "<Event><![CDATA[{event}]]></Event><EventKey><![CDATA[{key}]]></EventKey>{extra}</xml>"
)


def text(content: str, msg_id: int = 1234567890123456, ts: int = 1348831860, user: str = USER):
    return TEXT.format(to=TO, user=user, ts=ts, content=content, msg_id=msg_id)


def of(template: str, msg_id: int = 1234567890123456, ts: int = 1348831860, user: str = USER):
    return template.format(to=TO, user=user, ts=ts, msg_id=msg_id)


def event(name: str, key: str = "", extra: str = "", ts: int = 123456789, user: str = USER):
    return EVENT.format(to=TO, user=user, ts=ts, event=name, key=key, extra=extra)
