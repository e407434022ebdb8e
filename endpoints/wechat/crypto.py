"""Signatures and message encryption for WeChat Official Accounts and WeCom callbacks.

One core serves both platforms; only the receiver id differs (OA: the AppID, third-party
platform: the component AppID, WeCom self-built app: the CorpID).

Implements:

* Plain signature (OA GET verification and every OA POST):
  https://developers.weixin.qq.com/doc/oplatform/Website_App/WeChat_Login/message_push.html
* Safe / compatible mode, ``msg_signature`` and the encrypted reply envelope:
  https://developers.weixin.qq.com/doc/subscription/guide/dev/push/encryption.html
  https://developers.weixin.qq.com/doc/oplatform/Third-party_Platforms/2.0/api/Before_Develop/message_push.html
  https://developers.weixin.qq.com/doc/oplatform/Third-party_Platforms/2.0/api/Before_Develop/Technical_Plan.html
* WeCom callback URL verification (encrypted ``echostr``) and messages:
  https://developer.work.weixin.qq.com/document/path/90930
  https://developer.work.weixin.qq.com/document/path/90238

Scheme (reference/wechat-protocol.md §4)::

    aes_key   = base64decode(EncodingAESKey + "=")          # 32 bytes, AES-256
    iv        = aes_key[:16]                                 # CBC
    plaintext = random(16) || uint32_be(len(msg)) || msg || receiver_id
    padding   = PKCS#7 with K = 32 (pad value 1..32)
    Encrypt   = base64(AES-CBC(plaintext || padding))
    signature = sha1("".join(sorted(parts))) lowercase hex

Error codes follow Tencent's WXBizMsgCrypt samples (``ierror.py``). Differences from those
samples and from wechatpy, on purpose: signatures and receiver ids are compared in constant
time; padding outside 1..32 or with inconsistent pad bytes is rejected (never treated as 0);
the length field is checked against the buffer; the random prefix comes from a CSPRNG.

CBC without a MAC is malleable and padding errors are observable, so ciphertext from the
network must only be decrypted after its ``msg_signature`` matched: use
:meth:`MessageCrypto.decrypt_message` / :meth:`MessageCrypto.decrypt_echostr`.

Pure module: no I/O, no clock (callers pass ``now``), randomness injected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
from collections.abc import Callable
from enum import IntEnum
from typing import Final

from Crypto.Cipher import AES

__all__ = [
    "CryptoError",
    "DecryptError",
    "ErrorCode",
    "InvalidAESKeyError",
    "MessageCrypto",
    "ReceiverIdMismatchError",
    "SignatureError",
    "compute_signature",
    "make_nonce",
    "signature_matches",
    "timestamp_is_fresh",
    "validate_encoding_aes_key",
]

RandomSource = Callable[[int], bytes]

#: PKCS#7 block size used by WeChat (not the AES block size of 16).
PAD_BLOCK: Final = 32
#: Length of the random prefix in front of the length field.
PREFIX_LEN: Final = 16
#: Length of an EncodingAESKey (43 base64 characters without the trailing "=").
ENCODING_AES_KEY_LEN: Final = 43
#: Digits in a nonce made by :func:`make_nonce` (WeChat's own nonces are decimal too).
NONCE_DIGITS: Final = 10

_AES_KEY_LEN: Final = 32
_LEN_FIELD: Final = struct.Struct(">I")
_ENCODING_AES_KEY_RE: Final = re.compile(r"[A-Za-z0-9]{43}")
_TIMESTAMP_RE: Final = re.compile(r"[0-9]{1,15}")
_ENVELOPE_NONCE_RE: Final = re.compile(r"[\x21-\x7e]{1,128}")

_REPLY_ENVELOPE: Final = (
    "<xml>\n"
    "<Encrypt><![CDATA[{encrypt}]]></Encrypt>\n"
    "<MsgSignature><![CDATA[{msg_signature}]]></MsgSignature>\n"
    "<TimeStamp>{timestamp}</TimeStamp>\n"
    "<Nonce><![CDATA[{nonce}]]></Nonce>\n"
    "</xml>"
)


class ErrorCode(IntEnum):
    """Error codes of Tencent's WXBizMsgCrypt samples (``ierror.py``)."""

    VALIDATE_SIGNATURE = -40001
    PARSE_XML = -40002
    COMPUTE_SIGNATURE = -40003
    ILLEGAL_AES_KEY = -40004
    VALIDATE_RECEIVER_ID = -40005
    ENCRYPT_AES = -40006
    DECRYPT_AES = -40007
    ILLEGAL_BUFFER = -40008
    ENCODE_BASE64 = -40009
    DECODE_BASE64 = -40010
    GEN_RETURN_XML = -40011


class CryptoError(Exception):
    """Base of every error raised here; ``code`` is the WXBizMsgCrypt error code.

    Messages never contain keys, tokens or message content.
    """

    code: int

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class SignatureError(CryptoError):
    """``signature`` / ``msg_signature`` does not match (-40001)."""

    def __init__(
        self, message: str = "signature mismatch", code: int = ErrorCode.VALIDATE_SIGNATURE
    ) -> None:
        super().__init__(message, code)


class InvalidAESKeyError(CryptoError):
    """EncodingAESKey is not 43 characters of ``[A-Za-z0-9]`` (-40004)."""

    def __init__(
        self, message: str = "invalid EncodingAESKey", code: int = ErrorCode.ILLEGAL_AES_KEY
    ) -> None:
        super().__init__(message, code)


class DecryptError(CryptoError):
    """Ciphertext cannot be decrypted.

    ``code`` is -40007 when base64 decoding or AES fails and -40008 when the decrypted
    buffer is malformed (bad padding, length field, UTF-8).
    """

    def __init__(
        self, message: str = "decryption failed", code: int = ErrorCode.DECRYPT_AES
    ) -> None:
        super().__init__(message, code)


class ReceiverIdMismatchError(CryptoError):
    """The decrypted receiver id is not our AppID / CorpID (-40005)."""

    def __init__(
        self, message: str = "receiver id mismatch", code: int = ErrorCode.VALIDATE_RECEIVER_ID
    ) -> None:
        super().__init__(message, code)


def compute_signature(*parts: str) -> str:
    """``sha1("".join(sorted(parts)))`` as lowercase hex.

    With ``(token, timestamp, nonce)`` this is the OA ``signature``; with the ``Encrypt`` value
    or ``echostr`` added it is ``msg_signature``.
    """
    joined = "".join(sorted(parts)).encode("utf-8")
    # SHA-1 is what the WeChat protocol mandates; it is not our choice.
    return hashlib.sha1(joined).hexdigest()  # noqa: S324


def signature_matches(expected: str | None, *parts: str) -> bool:
    """Whether ``expected`` equals :func:`compute_signature` of ``parts``, in constant time.

    An empty or missing ``expected`` never matches. The comparison is exact (WeChat sends
    lowercase hex).
    """
    if not expected or not isinstance(expected, str):
        return False
    actual = compute_signature(*parts)
    return hmac.compare_digest(expected.encode("utf-8"), actual.encode("ascii"))


def validate_encoding_aes_key(key: str) -> bytes:
    """Turn a 43-character EncodingAESKey into the 32-byte AES key.

    The 43 characters carry 258 bits; the low 2 bits of the last character are dropped, so
    keys that differ only there (e.g. ending in ``G`` and ``E``) give the same AES key and
    are accepted, as WeChat's own decoder does. Raises :class:`InvalidAESKeyError` for any
    other length or any character outside ``[A-Za-z0-9]`` (no stripping is done here).
    """
    if not isinstance(key, str) or _ENCODING_AES_KEY_RE.fullmatch(key) is None:
        raise InvalidAESKeyError("EncodingAESKey must be 43 characters of [A-Za-z0-9]")
    try:
        raw = base64.b64decode(key + "=", validate=True)
    except (binascii.Error, ValueError):  # pragma: no cover - excluded by the regex
        raise InvalidAESKeyError("EncodingAESKey is not valid base64") from None
    if len(raw) != _AES_KEY_LEN:  # pragma: no cover - excluded by the regex
        raise InvalidAESKeyError("EncodingAESKey does not decode to 32 bytes")
    return raw


def timestamp_is_fresh(timestamp: str, now: float, tolerance_seconds: float) -> bool:
    """Whether the request ``timestamp`` (Unix seconds) is within ``tolerance_seconds`` of ``now``.

    Past and future are treated alike. Anything but plain ASCII digits (signs, spaces,
    fractions, exponents, underscores, non-ASCII digits) is not fresh.
    """
    if not isinstance(timestamp, str) or _TIMESTAMP_RE.fullmatch(timestamp) is None:
        return False
    return abs(now - int(timestamp)) <= tolerance_seconds


def make_nonce(random_source: RandomSource = secrets.token_bytes) -> str:
    """A decimal nonce of :data:`NONCE_DIGITS` digits from ``random_source`` (a CSPRNG).

    Reduces 64 random bits modulo 10**10; the bias (< 1e-9) is irrelevant for a nonce.
    """
    raw = random_source(8)
    if len(raw) != 8:
        raise ValueError("random_source returned the wrong number of bytes")
    value = int.from_bytes(raw, "big") % 10**NONCE_DIGITS
    return f"{value:0{NONCE_DIGITS}d}"


def _pad(data: bytes) -> bytes:
    count = PAD_BLOCK - len(data) % PAD_BLOCK
    return data + bytes([count]) * count


def _unpad(data: bytes) -> bytes:
    """Strict PKCS#7 (K = 32) removal; ``data`` is a non-empty multiple of 32 bytes."""
    count = data[-1]
    if not 1 <= count <= PAD_BLOCK:
        raise DecryptError("invalid padding", ErrorCode.ILLEGAL_BUFFER)
    if not hmac.compare_digest(data[-count:], bytes([count]) * count):
        raise DecryptError("invalid padding", ErrorCode.ILLEGAL_BUFFER)
    return data[:-count]


class MessageCrypto:
    """Encrypt / decrypt / sign messages for one account.

    ``receiver_id`` is the OA AppID or the WeCom CorpID. ``random_source(n)`` returns ``n``
    random bytes; it makes the 16-byte prefix and is only replaced in tests.

    For EncodingAESKey rotation keep one instance per key (current, previous), try the
    previous one when decryption fails, and encrypt the reply with the one that worked.
    """

    __slots__ = ("_key", "_random_source", "_receiver_id", "_receiver_id_bytes", "_token")

    def __init__(
        self,
        token: str,
        encoding_aes_key: str,
        receiver_id: str,
        random_source: RandomSource = secrets.token_bytes,
    ) -> None:
        if not token:
            # With an empty token anyone can compute every signature.
            raise ValueError("token must not be empty")
        self._key = validate_encoding_aes_key(encoding_aes_key)
        self._token = token
        self._receiver_id = receiver_id
        self._receiver_id_bytes = receiver_id.encode("utf-8")
        self._random_source = random_source

    def __repr__(self) -> str:
        # Never show the token or the key.
        return f"{type(self).__name__}(receiver_id={self._receiver_id!r})"

    @property
    def receiver_id(self) -> str:
        """The AppID / CorpID this instance encrypts for and accepts."""
        return self._receiver_id

    def encrypt(self, plaintext: str) -> str:
        """Encrypt ``plaintext`` into the base64 ``Encrypt`` value (standard alphabet)."""
        prefix = self._random_source(PREFIX_LEN)
        if not isinstance(prefix, bytes) or len(prefix) != PREFIX_LEN:
            raise CryptoError("random_source must return 16 bytes", ErrorCode.ENCRYPT_AES)
        message = plaintext.encode("utf-8")
        buffer = _pad(
            b"".join((prefix, _LEN_FIELD.pack(len(message)), message, self._receiver_id_bytes))
        )
        cipher = AES.new(self._key, AES.MODE_CBC, iv=self._key[:16])
        return base64.b64encode(cipher.encrypt(buffer)).decode("ascii")

    def decrypt(self, encrypted: str) -> str:
        """Decrypt an ``Encrypt`` / ``echostr`` value and return the message text.

        Only call this on input whose signature was checked (see the module docstring).
        Raises :class:`DecryptError` (-40007 base64/AES, -40008 padding/length/UTF-8) or
        :class:`ReceiverIdMismatchError` (-40005).
        """
        try:
            ciphertext = base64.b64decode(encrypted, validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise DecryptError("ciphertext is not valid base64", ErrorCode.DECRYPT_AES) from None
        if not ciphertext or len(ciphertext) % AES.block_size:
            raise DecryptError("ciphertext length is not a multiple of 16", ErrorCode.DECRYPT_AES)
        if len(ciphertext) % PAD_BLOCK:
            raise DecryptError(
                "ciphertext length is not a multiple of 32", ErrorCode.ILLEGAL_BUFFER
            )
        cipher = AES.new(self._key, AES.MODE_CBC, iv=self._key[:16])
        content = _unpad(cipher.decrypt(ciphertext))[PREFIX_LEN:]
        if len(content) < _LEN_FIELD.size:
            raise DecryptError("decrypted buffer too short", ErrorCode.ILLEGAL_BUFFER)
        (msg_len,) = _LEN_FIELD.unpack_from(content)
        end = _LEN_FIELD.size + msg_len
        if end > len(content):
            raise DecryptError("length field exceeds the buffer", ErrorCode.ILLEGAL_BUFFER)
        if not hmac.compare_digest(content[end:], self._receiver_id_bytes):
            raise ReceiverIdMismatchError()
        try:
            return content[_LEN_FIELD.size : end].decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptError("message is not valid UTF-8", ErrorCode.ILLEGAL_BUFFER) from None

    def verify_msg_signature(
        self, msg_signature: str, timestamp: str, nonce: str, encrypted: str
    ) -> None:
        """Raise :class:`SignatureError` unless ``msg_signature`` signs ``encrypted``."""
        if not signature_matches(msg_signature, self._token, timestamp, nonce, encrypted):
            raise SignatureError("msg_signature mismatch")

    def decrypt_message(
        self, msg_signature: str, timestamp: str, nonce: str, encrypted: str
    ) -> str:
        """Verify ``msg_signature`` over the ``Encrypt`` value, then decrypt it."""
        self.verify_msg_signature(msg_signature, timestamp, nonce, encrypted)
        return self.decrypt(encrypted)

    def encrypt_reply(self, reply_xml: str, timestamp: str, nonce: str) -> str:
        """Encrypt a passive reply and wrap it in the signed envelope WeChat expects.

        ``timestamp`` and ``nonce`` are the values written into (and signed in) the
        envelope: ``timestamp`` must be decimal digits, ``nonce`` printable ASCII without
        ``]]>``; otherwise :class:`CryptoError` (-40011) is raised.
        """
        if not isinstance(timestamp, str) or _TIMESTAMP_RE.fullmatch(timestamp) is None:
            raise CryptoError("reply timestamp must be decimal digits", ErrorCode.GEN_RETURN_XML)
        if (
            not isinstance(nonce, str)
            or _ENVELOPE_NONCE_RE.fullmatch(nonce) is None
            or "]]>" in nonce
        ):
            raise CryptoError("reply nonce is not CDATA-safe", ErrorCode.GEN_RETURN_XML)
        encrypted = self.encrypt(reply_xml)
        signature = compute_signature(self._token, timestamp, nonce, encrypted)
        return _REPLY_ENVELOPE.format(
            encrypt=encrypted, msg_signature=signature, timestamp=timestamp, nonce=nonce
        )

    def decrypt_echostr(self, msg_signature: str, timestamp: str, nonce: str, echostr: str) -> str:
        """WeCom URL verification: verify ``msg_signature`` over ``echostr``, then decrypt it.

        A query decoder that treats ``+`` as a space (``application/x-www-form-urlencoded``
        rules) damages an unencoded ``+``; spaces never occur in base64, so they are turned
        back into ``+`` before verifying.
        """
        repaired = echostr.replace(" ", "+")
        return self.decrypt_message(msg_signature, timestamp, nonce, repaired)
