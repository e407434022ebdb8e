"""Builds requests the way WeChat signs and encrypts them, using wechatpy (independent of
our crypto module) so the pipeline is checked against another implementation."""

from __future__ import annotations

import time
from typing import Any

import xmltodict
from wechatpy.crypto import WeChatCrypto

from endpoints.wechat.intake import HttpRequest
from tests.emulator.wechat import sign as sha1_signature


class WeChatSigner:
    def __init__(self, token: str, app_id: str, aes_key: str | None = None) -> None:
        self.token = token
        self.app_id = app_id
        self.aes_key = aes_key
        self._nonce = 1000

    def get(self, echostr: str = "echo-123", timestamp: str | None = None) -> HttpRequest:
        ts = timestamp or str(int(time.time()))
        nonce = self.next_nonce()
        query = {
            "signature": sha1_signature(self.token, ts, nonce),
            "timestamp": ts,
            "nonce": nonce,
            "echostr": echostr,
        }
        return HttpRequest("GET", query, b"")

    def next_nonce(self) -> str:
        self._nonce += 1
        return str(self._nonce)

    def post(self, xml: str, mode: str = "plain", timestamp: str | None = None) -> HttpRequest:
        ts = timestamp or str(int(time.time()))
        nonce = self.next_nonce()
        query: dict[str, str] = {
            "signature": sha1_signature(self.token, ts, nonce),
            "timestamp": ts,
            "nonce": nonce,
            "openid": "ignored",
        }
        if mode == "plain":
            return HttpRequest("POST", query, xml.encode())
        assert self.aes_key
        crypto = WeChatCrypto(self.token, self.aes_key, self.app_id)
        envelope = xmltodict.parse(crypto.encrypt_message(xml, nonce, ts))["xml"]
        encrypted = envelope["Encrypt"]
        query["encrypt_type"] = "aes"
        query["msg_signature"] = sha1_signature(self.token, ts, nonce, encrypted)
        if mode == "safe":
            fields = xmltodict.parse(xml)["xml"]
            body = (
                f"<xml><ToUserName><![CDATA[{fields['ToUserName']}]]></ToUserName>"
                f"<Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
            )
        else:  # compatible: plaintext fields and the ciphertext
            body = xml.replace("</xml>", f"<Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>")
        return HttpRequest("POST", query, body.encode())

    def read_reply(self, body: str, encrypted: bool) -> dict[str, Any]:
        """Parse a reply the way WeChat would (verifying the envelope when encrypted)."""
        if encrypted:
            crypto = WeChatCrypto(self.token, self.aes_key, self.app_id)
            envelope = xmltodict.parse(body)["xml"]
            plain = crypto.decrypt_message(
                body, envelope["MsgSignature"], envelope["TimeStamp"], envelope["Nonce"]
            )
            body = plain
        return dict(xmltodict.parse(body)["xml"])
