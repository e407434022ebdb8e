from __future__ import annotations

import logging

from ..inbound_media import MediaRequest, voice_ready
from ..models import InboundMessage, VoiceMessage
from .base import AskApp, HandlerContext, Outcome, Reply, TypeHandler

logger = logging.getLogger(__name__)


class VoiceHandler(TypeHandler):
    """WeChat's own transcript (``Recognition``, when 接收语音识别结果 is on) is the query;
    it needs no AppSecret. Otherwise the voice is transcribed with the chosen Dify model
    (AppSecret needed to download it); without either the user is told what is missing."""

    handles = (VoiceMessage,)

    def handle(self, message: InboundMessage, ctx: HandlerContext) -> Outcome:
        assert isinstance(message, VoiceMessage)
        transcript = message.recognition.strip()
        if transcript:
            return AskApp(transcript, metadata={"wechat_voice_transcript": transcript}, spoken=True)
        if voice_ready(ctx.settings) and message.media_id:
            return AskApp("[语音]", media=MediaRequest("voice", message.media_id), spoken=True)
        logger.info(
            "A voice message came without WeChat's recognition and cannot be transcribed "
            "here: turn on 接收语音识别结果, or set the AppSecret and a speech-to-text model"
        )
        return Reply(ctx.settings.voice_unavailable_message)
