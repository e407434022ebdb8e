from __future__ import annotations

from ..models import InboundMessage, VoiceMessage
from .base import AskApp, HandlerContext, Outcome, Reply, TypeHandler


class VoiceHandler(TypeHandler):
    """WeChat's own transcript (``Recognition``, when 接收语音识别结果 is on) is the query;
    it needs no AppSecret. Without one the user gets a friendly reply."""

    handles = (VoiceMessage,)

    def handle(self, message: InboundMessage, ctx: HandlerContext) -> Outcome:
        assert isinstance(message, VoiceMessage)
        transcript = message.recognition.strip()
        if transcript:
            return AskApp(transcript)
        return Reply(ctx.settings.voice_fallback_message)
