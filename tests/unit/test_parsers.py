import pytest

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
