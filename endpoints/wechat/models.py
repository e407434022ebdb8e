"""Inbound WeChat messages: one frozen pydantic model per MsgType / Event.

Field aliases are WeChat's XML element names. Unknown elements are kept (``extra``),
unknown message types and events become ``UnknownMessage`` / ``UnknownEvent``: a new
WeChat field or type is data, never an error.
Docs: https://developers.weixin.qq.com/doc/offiaccount/Message_Management/Receiving_standard_messages.html
and .../Receiving_event_pushes.html
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field


class InboundMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    #: MsgType this model stands for ("" = any, used by the unknown fallback).
    msg_type_value: ClassVar[str] = ""

    to_user: str = Field(alias="ToUserName")
    from_user: str = Field(alias="FromUserName")
    create_time: int = Field(alias="CreateTime")
    msg_type: str = Field(alias="MsgType")
    msg_id: str | None = Field(default=None, alias="MsgId")
    #: WeCom only: the app the message was sent to.
    agent_id: str = Field(default="", alias="AgentID")

    @property
    def dedupe_key(self) -> str:
        """WeChat's dedupe rule: MsgId, or FromUserName + CreateTime for events. Events also
        carry their name and key, so two different taps within one second stay apart while
        WeChat's retries (identical XML) still match."""
        if self.msg_id:
            return f"m:{self.msg_id}"
        event = str(getattr(self, "event", "")).lower()
        key = str(getattr(self, "event_key", ""))
        return f"e:{self.from_user}:{self.create_time}:{event}:{key}"

    def app_inputs(self) -> dict[str, str]:
        """Metadata handed to the Dify app in ``inputs`` (names documented in the README)."""
        inputs = {
            "wechat_msg_type": self.msg_type,
            "wechat_openid": self.from_user,
            "wechat_account": self.to_user,
            "wechat_msg_id": self.msg_id or "",
            "wechat_create_time": str(self.create_time),
        }
        if self.agent_id:
            inputs["wechat_agent_id"] = self.agent_id
        inputs.update(self._type_inputs())
        return inputs

    def _type_inputs(self) -> dict[str, str]:
        return {}


class TextMessage(InboundMessage):
    msg_type_value: ClassVar[str] = "text"
    content: str = Field(default="", alias="Content")

    def _type_inputs(self) -> dict[str, str]:
        return {"wechat_content": self.content}


class ImageMessage(InboundMessage):
    msg_type_value: ClassVar[str] = "image"
    pic_url: str = Field(default="", alias="PicUrl")
    media_id: str = Field(default="", alias="MediaId")

    def _type_inputs(self) -> dict[str, str]:
        return {"wechat_pic_url": self.pic_url, "wechat_media_id": self.media_id}


class VoiceMessage(InboundMessage):
    msg_type_value: ClassVar[str] = "voice"
    media_id: str = Field(default="", alias="MediaId")
    format: str = Field(default="", alias="Format")
    recognition: str = Field(default="", alias="Recognition")
    media_id_16k: str = Field(default="", alias="MediaId16K")

    def _type_inputs(self) -> dict[str, str]:
        return {
            "wechat_media_id": self.media_id,
            "wechat_voice_format": self.format,
            "wechat_recognition": self.recognition,
        }


class VideoMessage(InboundMessage):
    msg_type_value: ClassVar[str] = "video"
    media_id: str = Field(default="", alias="MediaId")
    thumb_media_id: str = Field(default="", alias="ThumbMediaId")

    def _type_inputs(self) -> dict[str, str]:
        return {"wechat_media_id": self.media_id, "wechat_thumb_media_id": self.thumb_media_id}


class ShortVideoMessage(VideoMessage):
    msg_type_value: ClassVar[str] = "shortvideo"


class LocationMessage(InboundMessage):
    msg_type_value: ClassVar[str] = "location"
    location_x: str = Field(default="", alias="Location_X")
    location_y: str = Field(default="", alias="Location_Y")
    scale: str = Field(default="", alias="Scale")
    label: str = Field(default="", alias="Label")

    def _type_inputs(self) -> dict[str, str]:
        # "lat,lng" is what reverse-geocoding APIs take (Tencent/Baidu order; AMap wants
        # "lng,lat", hence both); the map link opens the point in any browser.
        lat, lng = self.location_x, self.location_y
        return {
            "wechat_latitude": lat,
            "wechat_longitude": lng,
            "wechat_location_scale": self.scale,
            "wechat_location_label": self.label,
            "wechat_location": f"{lat},{lng}" if lat and lng else "",
            "wechat_location_lnglat": f"{lng},{lat}" if lat and lng else "",
            "wechat_map_url": (
                f"https://apis.map.qq.com/uri/v1/marker?marker=coord:{lat},{lng}"
                if lat and lng
                else ""
            ),
        }


class LinkMessage(InboundMessage):
    msg_type_value: ClassVar[str] = "link"
    title: str = Field(default="", alias="Title")
    description: str = Field(default="", alias="Description")
    url: str = Field(default="", alias="Url")

    def _type_inputs(self) -> dict[str, str]:
        return {
            "wechat_link_title": self.title,
            "wechat_link_description": self.description,
            "wechat_link_url": self.url,
            "wechat_link_host": urlsplit(self.url).hostname or "",
        }


class UnknownMessage(InboundMessage):
    """A MsgType this plugin does not know (yet)."""


# --- events -----------------------------------------------------------------------------


class EventMessage(InboundMessage):
    msg_type_value: ClassVar[str] = "event"
    #: Event name this model stands for, lower-cased ("" = unknown event fallback).
    event_value: ClassVar[str] = ""

    event: str = Field(default="", alias="Event")
    event_key: str = Field(default="", alias="EventKey")

    def _type_inputs(self) -> dict[str, str]:
        return {"wechat_event": self.event, "wechat_event_key": self.event_key}


class SubscribeEvent(EventMessage):
    event_value: ClassVar[str] = "subscribe"
    ticket: str = Field(default="", alias="Ticket")

    @property
    def qr_scene(self) -> str:
        """Scene of a parametric QR code the user scanned to follow ("" if none)."""
        key = self.event_key
        return key[len("qrscene_") :] if key.startswith("qrscene_") else ""

    def _type_inputs(self) -> dict[str, str]:
        return {**super()._type_inputs(), "wechat_qr_scene": self.qr_scene}


class UnsubscribeEvent(EventMessage):
    event_value: ClassVar[str] = "unsubscribe"


class ScanEvent(EventMessage):
    event_value: ClassVar[str] = "scan"
    ticket: str = Field(default="", alias="Ticket")


class ClickEvent(EventMessage):
    event_value: ClassVar[str] = "click"


class ViewEvent(EventMessage):
    event_value: ClassVar[str] = "view"


class LocationEvent(EventMessage):
    event_value: ClassVar[str] = "location"
    latitude: str = Field(default="", alias="Latitude")
    longitude: str = Field(default="", alias="Longitude")
    precision: str = Field(default="", alias="Precision")


class EnterAgentEvent(EventMessage):
    """WeCom: a member opened the app (sent when 上报进入应用事件 is on)."""

    event_value: ClassVar[str] = "enter_agent"


class TemplateSendJobFinishEvent(EventMessage):
    event_value: ClassVar[str] = "templatesendjobfinish"


class UnknownEvent(EventMessage):
    """An event this plugin does not act on; acknowledged silently."""


MESSAGE_TYPES: tuple[type[InboundMessage], ...] = (
    TextMessage,
    ImageMessage,
    VoiceMessage,
    VideoMessage,
    ShortVideoMessage,
    LocationMessage,
    LinkMessage,
)

EVENT_TYPES: tuple[type[EventMessage], ...] = (
    SubscribeEvent,
    UnsubscribeEvent,
    ScanEvent,
    ClickEvent,
    ViewEvent,
    LocationEvent,
    EnterAgentEvent,
    TemplateSendJobFinishEvent,
)


def message_from_fields(fields: dict[str, Any]) -> InboundMessage:
    """Pick the model for a parsed ``<xml>`` dict and validate it."""
    msg_type = str(fields.get("MsgType") or "").strip().lower()
    if msg_type == "event":
        event = str(fields.get("Event") or "").strip().lower()
        event_cls: type[EventMessage] = next(
            (cls for cls in EVENT_TYPES if cls.event_value == event), UnknownEvent
        )
        return event_cls.model_validate(fields)
    message_cls: type[InboundMessage] = next(
        (cls for cls in MESSAGE_TYPES if cls.msg_type_value == msg_type), UnknownMessage
    )
    return message_cls.model_validate(fields)
