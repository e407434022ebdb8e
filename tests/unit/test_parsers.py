import pytest
import xmltodict

from endpoints.wechat import models
from endpoints.wechat.parsers import (
    MAX_BODY_BYTES,
    XmlRefusedError,
    parse_message,
    parse_xml_fields,
)
from tests import samples


@pytest.mark.parametrize(
    ("xml", "model"),
    [
        (samples.text("hi"), models.TextMessage),
        (samples.of(samples.IMAGE), models.ImageMessage),
        (samples.of(samples.VOICE), models.VoiceMessage),
        (samples.of(samples.VOICE_RECOGNIZED), models.VoiceMessage),
        (samples.of(samples.VIDEO), models.VideoMessage),
        (samples.of(samples.SHORTVIDEO), models.ShortVideoMessage),
        (samples.of(samples.LOCATION), models.LocationMessage),
        (samples.of(samples.LINK), models.LinkMessage),
        (samples.event("subscribe"), models.SubscribeEvent),
        (samples.event("unsubscribe"), models.UnsubscribeEvent),
        (samples.event("SCAN", "123"), models.ScanEvent),
        (samples.event("CLICK", "MENU_1"), models.ClickEvent),
        (samples.event("VIEW", "https://qq.com"), models.ViewEvent),
        (samples.event("LOCATION", extra="<Latitude>23.1</Latitude>"), models.LocationEvent),
        (samples.event("TEMPLATESENDJOBFINISH"), models.TemplateSendJobFinishEvent),
        (samples.event("some_new_event"), models.UnknownEvent),
        (samples.text("x").replace("[text]", "[miniprogrampage]"), models.UnknownMessage),
    ],
)
def test_every_type_parses_to_its_model(xml: str, model: type) -> None:
    message = parse_message(xml)
    assert type(message) is model
    assert message.from_user == samples.USER
    assert message.to_user == samples.TO


def test_fields_of_each_type() -> None:
    text = parse_message(samples.text("你好 ]]]]><![CDATA[> & <b>"))
    assert isinstance(text, models.TextMessage)
    assert text.content == "你好 ]]> & <b>"
    assert text.msg_id == "1234567890123456"
    assert text.create_time == 1348831860

    voice = parse_message(samples.of(samples.VOICE_RECOGNIZED))
    assert isinstance(voice, models.VoiceMessage)
    assert voice.recognition == "腾讯微信团队"

    loc = parse_message(samples.of(samples.LOCATION))
    assert isinstance(loc, models.LocationMessage)
    assert (loc.location_x, loc.location_y, loc.label) == ("23.134521", "113.358803", "位置信息")

    sub = parse_message(samples.event("subscribe", "qrscene_123123", "<Ticket>T</Ticket>"))
    assert isinstance(sub, models.SubscribeEvent)
    assert sub.qr_scene == "123123"
    assert parse_message(samples.event("subscribe")).qr_scene == ""  # type: ignore[attr-defined]


def test_dedupe_keys() -> None:
    assert parse_message(samples.text("a", msg_id=42)).dedupe_key == "m:42"
    event = parse_message(samples.event("CLICK", "K", ts=99))
    assert event.dedupe_key == f"e:{samples.USER}:99:click:K"
    other = parse_message(samples.event("VIEW", "https://x", ts=99))
    assert other.dedupe_key != event.dedupe_key


def test_unknown_fields_are_kept_not_errors() -> None:
    xml = samples.text("hi").replace("</xml>", "<bizmsgmenuid>101</bizmsgmenuid></xml>")
    message = parse_message(xml)
    assert message.model_extra is not None
    assert message.model_extra["bizmsgmenuid"] == "101"


def test_app_inputs_are_strings_with_documented_names() -> None:
    inputs = parse_message(samples.of(samples.LINK)).app_inputs()
    assert inputs["wechat_msg_type"] == "link"
    assert inputs["wechat_openid"] == samples.USER
    assert inputs["wechat_link_url"] == "https://mp.weixin.qq.com"
    assert all(isinstance(v, str) for v in inputs.values())


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not xml",
        b"<xml><a>1</a>",
        b"<other><a>1</a></other>",
        b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY e "x">]><xml><a>&e;</a></xml>',
        b'<!DOCTYPE xml SYSTEM "http://evil/x.dtd"><xml/>',
        b"<xml><a>1</a></xml><xml/>",
    ],
)
def test_refuses_bad_xml(body: bytes) -> None:
    with pytest.raises(XmlRefusedError):
        parse_xml_fields(body)


def test_refuses_oversize_and_missing_fields() -> None:
    with pytest.raises(XmlRefusedError, match="too large"):
        parse_xml_fields(b"<xml><a>" + b"x" * MAX_BODY_BYTES + b"</a></xml>")
    with pytest.raises(XmlRefusedError, match="missing"):
        parse_message("<xml><ToUserName>a</ToUserName></xml>")
    with pytest.raises(XmlRefusedError, match="invalid"):
        parse_message(samples.text("x").replace("1348831860", "yesterday"))


def test_empty_cdata_becomes_empty_string() -> None:
    message = parse_message(samples.text(""))
    assert isinstance(message, models.TextMessage)
    assert message.content == ""


def _xmltodict_fields(body: str) -> object:
    """What the parser replaced (xmltodict, entities disabled) gives, normalised as WeChat
    fields are: empty elements "", text stripped."""

    def normalise(value: object) -> object:
        if value is None:
            return ""
        if isinstance(value, str):
            return value.strip()
        if isinstance(value, dict):
            return {k: normalise(v) for k, v in value.items()}
        if isinstance(value, list):
            return [normalise(v) for v in value]
        return value

    return normalise(xmltodict.parse(body, disable_entities=True)["xml"])


NESTED_EVENTS = [
    samples.event(
        "pic_photo_or_album",
        "rselfmenu_1",
        "<SendPicsInfo><Count>2</Count><PicList>"
        "<item><PicMd5Sum><![CDATA[1b5f7c23b5bf75682a53e7b6d163e185]]></PicMd5Sum></item>"
        "<item><PicMd5Sum><![CDATA[9a3c2b1e5bf75682a53e7b6d163e1851]]></PicMd5Sum></item>"
        "</PicList></SendPicsInfo>",
    ),
    samples.event(
        "scancode_waitmsg",
        "rselfmenu_0_0",
        "<ScanCodeInfo><ScanType><![CDATA[qrcode]]></ScanType>"
        "<ScanResult><![CDATA[1]]></ScanResult></ScanCodeInfo>",
    ),
    samples.event(
        "location_select",
        "rselfmenu_2",
        "<SendLocationInfo><Location_X>23</Location_X><Location_Y>113</Location_Y>"
        "<Scale>15</Scale><Label><![CDATA[ 广州市 ]]></Label><Poiname></Poiname>"
        "</SendLocationInfo>",
    ),
]


@pytest.mark.parametrize(
    "xml",
    [
        samples.text("  hi  "),
        samples.text("a ]]]]><![CDATA[> b &amp; <c>".replace("<c>", "&lt;c&gt;")),
        samples.text(""),
        samples.of(samples.IMAGE),
        samples.of(samples.VOICE_RECOGNIZED),
        samples.of(samples.LOCATION),
        samples.of(samples.LINK),
        samples.event("subscribe", "qrscene_123"),
        "<xml>\n  <ToUserName><![CDATA[gh_1]]></ToUserName>\n  <Empty/>\n  <Spaces>   </Spaces>\n"
        "  <Repeated>1</Repeated><Repeated>2</Repeated><Repeated>3</Repeated>\n</xml>",
        *NESTED_EVENTS,
    ],
)
def test_fields_are_what_xmltodict_gives(xml: str) -> None:
    assert parse_xml_fields(xml) == _xmltodict_fields(xml)
    assert parse_xml_fields(xml.encode("utf-8")) == _xmltodict_fields(xml)


def test_nested_events_keep_their_structure() -> None:
    fields = parse_xml_fields(NESTED_EVENTS[0])
    items = fields["SendPicsInfo"]["PicList"]["item"]
    assert fields["SendPicsInfo"]["Count"] == "2"
    assert [i["PicMd5Sum"][:4] for i in items] == ["1b5f", "9a3c"]
