"""Tests for endpoints/wechat/crypto.py.

Table-driven over reference/test-vectors.json (a copy lives in tests/fixtures so a clean
checkout does not need ../shared), plus malformed input built here and interop with
wechatpy 1.8.18 in both directions. In wechatpy 1.8.18 the WeCom crypto lives in
``wechatpy.enterprise.crypto`` (``wechatpy.work`` only exists in 2.x).
"""

from __future__ import annotations

import base64
import json
import random
import string
import struct
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import wechatpy.crypto as wx_oa
import wechatpy.crypto.base as wx_base
import wechatpy.enterprise.crypto as wx_work
from Crypto.Cipher import AES
from Crypto.Util.Padding import unpad
from wechatpy.enterprise.exceptions import InvalidCorpIdException
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException

from endpoints.wechat.crypto import (
    CryptoError,
    DecryptError,
    ErrorCode,
    InvalidAESKeyError,
    MessageCrypto,
    ReceiverIdMismatchError,
    SignatureError,
    compute_signature,
    make_nonce,
    signature_matches,
    timestamp_is_fresh,
    validate_encoding_aes_key,
)

# --------------------------------------------------------------------------- fixtures


def _vectors_path() -> Path:
    local = Path(__file__).resolve().parents[1] / "fixtures" / "test-vectors.json"
    if local.is_file():
        return local
    return Path(__file__).resolve().parents[3] / "shared/reference/test-vectors.json"


VECTORS_DOC: dict[str, Any] = json.loads(_vectors_path().read_text(encoding="utf-8"))
VECTORS: list[dict[str, Any]] = VECTORS_DOC["vectors"]
NEGATIVE_CASES: list[dict[str, Any]] = VECTORS_DOC["negative_cases"]
BY_ID: dict[str, dict[str, Any]] = {v["id"]: v for v in VECTORS}
ENVELOPE_TEMPLATE: str = VECTORS_DOC["reply_envelope_template"]


def _select(pred: Callable[[dict[str, Any]], bool]) -> list[Any]:
    return [pytest.param(v, id=v["id"]) for v in VECTORS if pred(v)]


def _has_key(v: dict[str, Any]) -> bool:
    return "encoding_aes_key" in v["inputs"]


def _ciphertext(v: dict[str, Any]) -> str:
    return v["expected"].get("encrypt") or v["expected"]["echostr"]


def _receiver_id(v: dict[str, Any]) -> str:
    return v["inputs"].get("appid") or v["inputs"]["corpid"]


def _fixed_source(prefix: bytes) -> Callable[[int], bytes]:
    def source(n: int) -> bytes:
        assert n == len(prefix) == 16
        return prefix

    return source


def _crypto(v: dict[str, Any], receiver_id: str | None = None) -> MessageCrypto:
    inputs = v["inputs"]
    prefix = inputs.get("random_prefix")
    source = _fixed_source(prefix.encode("utf-8")) if prefix is not None else None
    rid = _receiver_id(v) if receiver_id is None else receiver_id
    if source is None:
        return MessageCrypto(inputs["token"], inputs["encoding_aes_key"], rid)
    return MessageCrypto(inputs["token"], inputs["encoding_aes_key"], rid, random_source=source)


def _aes_key(v: dict[str, Any]) -> bytes:
    return base64.b64decode(v["inputs"]["encoding_aes_key"] + "=")


def _raw_decrypt(key: bytes, encrypted: str) -> bytes:
    return AES.new(key, AES.MODE_CBC, iv=key[:16]).decrypt(base64.b64decode(encrypted))


def _forge(key: bytes, buffer: bytes) -> str:
    """Encrypt ``buffer`` as-is (caller controls padding); length must be a multiple of 16."""
    return base64.b64encode(AES.new(key, AES.MODE_CBC, iv=key[:16]).encrypt(buffer)).decode()


def _pad32(data: bytes) -> bytes:
    n = 32 - len(data) % 32
    return data + bytes([n]) * n


V1A = BY_ID["V1a"]
V1A_KEY = _aes_key(V1A)
V1A_ENCRYPT: str = V1A["expected"]["encrypt"]

# --------------------------------------------------------------------------- signatures


@pytest.mark.parametrize("v", _select(lambda v: "signature" in v["expected"]))
def test_plain_signature(v: dict[str, Any]) -> None:
    i, e = v["inputs"], v["expected"]
    assert compute_signature(i["token"], i["timestamp"], i["nonce"]) == e["signature"]
    assert signature_matches(e["signature"], i["token"], i["timestamp"], i["nonce"])
    assert signature_matches(e["signature"], i["nonce"], i["token"], i["timestamp"])
    assert not signature_matches(e["signature"], i["token"] + "x", i["timestamp"], i["nonce"])


def test_get_oa_sorted_parts_and_echo() -> None:
    v = BY_ID["GET-OA"]
    i, e = v["inputs"], v["expected"]
    assert sorted([i["token"], i["timestamp"], i["nonce"]]) == e["sorted_parts"]
    assert signature_matches(e["signature"], *e["sorted_parts"])
    # OA GET is not encrypted: the endpoint echoes echostr verbatim.
    assert e["response_body"] == i["echostr"]


@pytest.mark.parametrize("v", _select(lambda v: "msg_signature" in v["expected"]))
def test_msg_signature(v: dict[str, Any]) -> None:
    i, e = v["inputs"], v["expected"]
    parts = (i["token"], i["timestamp"], i["nonce"], _ciphertext(v))
    assert compute_signature(*parts) == e["msg_signature"]
    assert signature_matches(e["msg_signature"], *parts)
    _crypto(v).verify_msg_signature(e["msg_signature"], i["timestamp"], i["nonce"], _ciphertext(v))


@pytest.mark.parametrize(
    "expected",
    [
        "",
        None,
        "f464b24fc39322e44b38aa78f5edd27bd144169",  # one char short
        "f464b24fc39322e44b38aa78f5edd27bd14416960",  # one char long
        "f464b24fc39322e44b38aa78f5edd27bd1441697",  # last char wrong
        "F464B24FC39322E44B38AA78F5EDD27BD1441696",  # uppercase: exact compare
        " f464b24fc39322e44b38aa78f5edd27bd1441696",
        "f464b24fc39322e44b38aa78f5edd27bd1441696\n",
        "签名",  # non-ASCII must not raise (compare_digest on str would)
        "0" * 40,
    ],
)
def test_signature_matches_rejects(expected: str | None) -> None:
    i = BY_ID["GET-OA"]["inputs"]
    assert not signature_matches(expected, i["token"], i["timestamp"], i["nonce"])


def test_compute_signature_is_order_independent_lowercase_hex() -> None:
    sig = compute_signature("b", "a", "c")
    assert sig == compute_signature("c", "b", "a") == compute_signature("abc")
    assert len(sig) == 40
    assert set(sig) <= set("0123456789abcdef")
    # UTF-8 parts are allowed.
    assert compute_signature("你好") == compute_signature("你", "好")


# --------------------------------------------------------------------------- vectors


@pytest.mark.parametrize("v", _select(lambda v: "random_prefix" in v["inputs"]))
def test_encrypt_reproduces_vector(v: dict[str, Any]) -> None:
    assert _crypto(v).encrypt(v["inputs"]["plaintext"]) == _ciphertext(v)


@pytest.mark.parametrize("v", _select(_has_key))
def test_decrypt_vector(v: dict[str, Any]) -> None:
    i, e = v["inputs"], v["expected"]
    crypto = _crypto(v)
    assert crypto.decrypt(_ciphertext(v)) == i["plaintext"]
    got = crypto.decrypt_message(e["msg_signature"], i["timestamp"], i["nonce"], _ciphertext(v))
    assert got == i["plaintext"]


@pytest.mark.parametrize("v", _select(_has_key))
def test_vector_layout(v: dict[str, Any]) -> None:
    """Key, IV, pad value and lengths given by the vector match the decrypted buffer."""
    i, e = v["inputs"], v["expected"]
    key = validate_encoding_aes_key(i["encoding_aes_key"])
    if "aes_key_hex" in e:
        assert key.hex() == e["aes_key_hex"]
    if "iv_hex" in e:
        assert key[:16].hex() == e["iv_hex"]
    buf = _raw_decrypt(key, _ciphertext(v))
    pad = buf[-1]
    assert pad == e["padding_bytes"]
    assert buf[-pad:] == bytes([pad]) * pad
    if "ciphertext_len" in e:
        assert len(buf) == e["ciphertext_len"]
    if "fullstr_len" in e:
        assert len(buf) - pad == e["fullstr_len"]
    msg = i["plaintext"].encode("utf-8")
    (msg_len,) = struct.unpack(">I", buf[16:20])
    assert msg_len == len(msg)
    if "msg_len" in e:
        assert msg_len == e["msg_len"]
    assert buf[:16] == i["random_prefix"].encode("utf-8")
    assert buf[20 + msg_len : -pad] == _receiver_id(v).encode()


@pytest.mark.parametrize("v", _select(lambda v: v["kind"] == "reply_encrypted"))
def test_reply_envelope_exact(v: dict[str, Any]) -> None:
    i, e = v["inputs"], v["expected"]
    body = _crypto(v).encrypt_reply(i["plaintext"], i["timestamp"], i["nonce"])
    expected = ENVELOPE_TEMPLATE.format(
        encrypt=e["encrypt"],
        msg_signature=e["msg_signature"],
        timestamp=i["timestamp"],
        nonce=i["nonce"],
    )
    assert body == expected
    assert body.startswith("<xml>\n<Encrypt><![CDATA[") and body.endswith("]]></Nonce>\n</xml>")


@pytest.mark.parametrize("v", _select(lambda v: v["kind"] == "get_verification_encrypted"))
def test_wecom_echostr(v: dict[str, Any]) -> None:
    i, e = v["inputs"], v["expected"]
    crypto = _crypto(v)
    echostr = e["echostr"]
    ts, nonce, sig = i["timestamp"], i["nonce"], e["msg_signature"]
    assert crypto.decrypt_echostr(sig, ts, nonce, echostr) == e["response_body"]
    assert e["response_body"] == i["plaintext"]
    # '+' turned into ' ' by form-style query decoding is repaired.
    assert "+" in echostr
    mangled = echostr.replace("+", " ")
    assert crypto.decrypt_echostr(sig, ts, nonce, mangled) == e["response_body"]
    # Bad signature: rejected before decryption.
    with pytest.raises(SignatureError):
        crypto.decrypt_echostr("0" * 40, ts, nonce, echostr)
    with pytest.raises(SignatureError):
        crypto.decrypt_echostr(sig, str(int(ts) + 1), nonce, echostr)


@pytest.mark.parametrize("v", _select(lambda v: "request_query" in v["expected"]))
def test_request_query(v: dict[str, Any]) -> None:
    i, e = v["inputs"], v["expected"]
    q = {k: vals[0] for k, vals in parse_qs(e["request_query"], strict_parsing=True).items()}
    assert q["timestamp"] == i["timestamp"] and q["nonce"] == i["nonce"]
    if "signature" in q:
        assert signature_matches(q["signature"], i["token"], q["timestamp"], q["nonce"])
    if "msg_signature" in q:
        assert signature_matches(
            q["msg_signature"], i["token"], q["timestamp"], q["nonce"], _ciphertext(v)
        )
    if "echostr" in q:
        crypto = _crypto(v)
        assert q["echostr"] == e["echostr"]
        got = crypto.decrypt_echostr(q["msg_signature"], q["timestamp"], q["nonce"], q["echostr"])
        assert got == e["response_body"]
        # The same query with the echostr NOT percent-encoded: parse_qs turns '+' into ' '.
        raw_query = e["request_query"].split("&echostr=")[0] + "&echostr=" + e["echostr"]
        raw = {k: vals[0] for k, vals in parse_qs(raw_query).items()}
        assert raw["echostr"] != e["echostr"]
        got = crypto.decrypt_echostr(
            raw["msg_signature"], i["timestamp"], i["nonce"], raw["echostr"]
        )
        assert got == e["response_body"]


@pytest.mark.parametrize("v", _select(lambda v: "request_body_template" in v["expected"]))
def test_request_body(v: dict[str, Any]) -> None:
    i, e = v["inputs"], v["expected"]
    body = e["request_body_template"].replace("{encrypt}", e["encrypt"])
    encrypt = ET.fromstring(body).findtext("Encrypt") or ""
    assert encrypt == e["encrypt"]
    got = _crypto(v).decrypt_message(e["msg_signature"], i["timestamp"], i["nonce"], encrypt)
    assert got == i["plaintext"]


def test_key_with_dropped_low_bits_v3() -> None:
    key = BY_ID["V3"]["inputs"]["encoding_aes_key"]
    assert key.endswith("G")
    assert validate_encoding_aes_key(key) == validate_encoding_aes_key(key[:-1] + "E")
    # The four characters that share the upper 4 bits of the last sextet give one key.
    same = {validate_encoding_aes_key(key[:-1] + c) for c in "EFGH"}
    assert len(same) == 1
    assert validate_encoding_aes_key(key[:-1] + "I") != validate_encoding_aes_key(key)


# --------------------------------------------------------------------------- negative cases


def _neg_receiveid(case: dict[str, Any]) -> None:
    v = BY_ID[case["based_on"]]
    wrong = "ww1234567890abcdef" if case["id"].endswith("-oa") else "wx1234567890abcdef"
    assert wrong != _receiver_id(v)
    assert wrong in case["case"]
    crypto = _crypto(v, receiver_id=wrong)
    with pytest.raises(ReceiverIdMismatchError) as info:
        crypto.decrypt(_ciphertext(v))
    assert info.value.code == -40005
    i = v["inputs"]
    with pytest.raises(ReceiverIdMismatchError):
        crypto.decrypt_message(
            v["expected"]["msg_signature"], i["timestamp"], i["nonce"], _ciphertext(v)
        )


def _neg_msg_signature(case: dict[str, Any]) -> None:
    v = BY_ID[case["based_on"]]
    i = v["inputs"]
    crypto = _crypto(v)
    with pytest.raises(SignatureError) as info:
        crypto.decrypt_message("0" * 40, i["timestamp"], i["nonce"], _ciphertext(v))
    assert info.value.code == -40001
    with pytest.raises(SignatureError):
        crypto.verify_msg_signature("0" * 40, i["timestamp"], i["nonce"], _ciphertext(v))


def _neg_pkcs7_16(case: dict[str, Any]) -> None:
    v = BY_ID[case["based_on"]]
    buf = _raw_decrypt(_aes_key(v), _ciphertext(v))
    with pytest.raises(ValueError, match="Padding is incorrect"):
        unpad(buf, 16)
    # K = 32 is what we use, so the same buffer decrypts fine.
    assert _crypto(v).decrypt(_ciphertext(v)) == v["inputs"]["plaintext"]


def _neg_key_length(case: dict[str, Any]) -> None:
    v = BY_ID[case["based_on"]]
    key = v["inputs"]["encoding_aes_key"]
    for bad in (key[:42], key + "A"):
        with pytest.raises(InvalidAESKeyError) as info:
            validate_encoding_aes_key(bad)
        assert info.value.code == -40004
        with pytest.raises(InvalidAESKeyError):
            MessageCrypto(v["inputs"]["token"], bad, _receiver_id(v))


NEGATIVE_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "NEG-receiveid-oa": _neg_receiveid,
    "NEG-receiveid-wecom": _neg_receiveid,
    "NEG-msg-signature": _neg_msg_signature,
    "NEG-pkcs7-16": _neg_pkcs7_16,
    "NEG-key-length": _neg_key_length,
}


@pytest.mark.parametrize("case", [pytest.param(c, id=c["id"]) for c in NEGATIVE_CASES])
def test_negative_case(case: dict[str, Any]) -> None:
    # A new negative case in the JSON fails here until a check is written for it.
    NEGATIVE_CHECKS[case["id"]](case)


def test_bad_signature_never_decrypts(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: MessageCrypto, encrypted: str) -> str:
        raise AssertionError("decrypt called before the signature matched")

    monkeypatch.setattr(MessageCrypto, "decrypt", boom)
    i = V1A["inputs"]
    crypto = _crypto(V1A)
    with pytest.raises(SignatureError):
        crypto.decrypt_message("0" * 40, i["timestamp"], i["nonce"], V1A_ENCRYPT)
    with pytest.raises(SignatureError):
        crypto.decrypt_message("", i["timestamp"], i["nonce"], V1A_ENCRYPT)
    with pytest.raises(SignatureError):
        crypto.decrypt_echostr("0" * 40, i["timestamp"], i["nonce"], V1A_ENCRYPT)


# --------------------------------------------------------------------------- malformed input


def _v1a_blocks() -> tuple[bytes, bytes, bytes, bytes]:
    i = V1A["inputs"]
    return (
        i["random_prefix"].encode(),
        i["plaintext"].encode("utf-8"),
        i["appid"].encode(),
        _raw_decrypt(V1A_KEY, V1A_ENCRYPT),
    )


def test_forge_helper_roundtrip() -> None:
    prefix, msg, rid, padded = _v1a_blocks()
    assert _pad32(prefix + struct.pack(">I", len(msg)) + msg + rid) == padded
    assert _forge(V1A_KEY, padded) == V1A_ENCRYPT


def _with_last(buf: bytes, value: int) -> bytes:
    return buf[:-1] + bytes([value])


def _bad_padding_buffers() -> Iterator[Any]:
    prefix, _, _, padded = _v1a_blocks()
    pad = padded[-1]
    assert pad == 22
    yield pytest.param(_with_last(padded, 0), id="pad-0")
    yield pytest.param(_with_last(padded, 33), id="pad-33")
    yield pytest.param(_with_last(padded, 255), id="pad-255")
    yield pytest.param(_with_last(padded, 23), id="pad-claims-one-more")
    yield pytest.param(_with_last(padded, 32), id="pad-32-not-full-block")
    yield pytest.param(padded[:-2] + b"\x00" + padded[-1:], id="pad-inconsistent-second-last")
    yield pytest.param(
        padded[:-pad] + b"\x21" + padded[-pad + 1 :], id="pad-inconsistent-first-pad-byte"
    )
    head = prefix + struct.pack(">I", 12) + b"x" * 12  # 32 bytes: a full pad block follows
    assert len(head) == 32
    yield pytest.param(head + bytes([32]) * 31 + b"\x1f", id="pad-31-preceded-by-32s")
    yield pytest.param(head + bytes([32]) * 30 + b"\x00\x20", id="full-block-one-wrong")


@pytest.mark.parametrize("buffer", list(_bad_padding_buffers()))
def test_bad_padding_rejected(buffer: bytes) -> None:
    crypto = _crypto(V1A)
    with pytest.raises(DecryptError) as info:
        crypto.decrypt(_forge(V1A_KEY, buffer))
    assert info.value.code == ErrorCode.ILLEGAL_BUFFER == -40008


def test_full_pad_block_accepted() -> None:
    prefix, _, rid, _ = _v1a_blocks()
    m = (-(16 + 4 + len(rid))) % 32
    head = prefix + struct.pack(">I", m) + b"x" * m + rid
    assert len(head) % 32 == 0
    assert _crypto(V1A).decrypt(_forge(V1A_KEY, head + bytes([32]) * 32)) == "x" * m


def _bad_buffers() -> Iterator[Any]:
    prefix, msg, rid, _ = _v1a_blocks()

    def build(length: int, body: bytes) -> bytes:
        return _pad32(prefix + struct.pack(">I", length) + body)

    yield pytest.param(build(len(msg) + len(rid) + 1, msg + rid), id="len-one-past-buffer")
    yield pytest.param(build(0xFFFFFFFF, msg + rid), id="len-max-uint32")
    yield pytest.param(build(2**31, msg + rid), id="len-2^31")
    yield pytest.param(_pad32(prefix + b"\x00\x00"), id="no-room-for-length-field")
    yield pytest.param(_pad32(prefix), id="prefix-only")
    yield pytest.param(bytes([32]) * 32, id="all-padding")
    bad_utf8 = b"\xff\xfe<xml/>"
    yield pytest.param(build(len(bad_utf8), bad_utf8 + rid), id="message-not-utf8")


@pytest.mark.parametrize("buffer", list(_bad_buffers()))
def test_malformed_buffer_rejected(buffer: bytes) -> None:
    with pytest.raises(DecryptError) as info:
        _crypto(V1A).decrypt(_forge(V1A_KEY, buffer))
    assert info.value.code == -40008


def test_length_field_shorter_than_message_fails_receiver_check() -> None:
    prefix, msg, rid, _ = _v1a_blocks()
    buf = _pad32(prefix + struct.pack(">I", len(msg) - 1) + msg + rid)
    with pytest.raises(ReceiverIdMismatchError):
        _crypto(V1A).decrypt(_forge(V1A_KEY, buf))


@pytest.mark.parametrize(
    "stored_rid",
    [b"", b"wx1234567890abcde", b"wx1234567890abcdef0", b"WX1234567890ABCDEF", b"x" * 64],
)
def test_receiver_id_must_match_exactly(stored_rid: bytes) -> None:
    prefix, msg, _, _ = _v1a_blocks()
    buf = _pad32(prefix + struct.pack(">I", len(msg)) + msg + stored_rid)
    with pytest.raises(ReceiverIdMismatchError) as info:
        _crypto(V1A).decrypt(_forge(V1A_KEY, buf))
    assert info.value.code == -40005


def test_empty_receiver_id_supported() -> None:
    """WeCom AI bot is said to use an empty receive id; the core handles it."""
    crypto = MessageCrypto("tok", V1A["inputs"]["encoding_aes_key"], "")
    assert crypto.decrypt(crypto.encrypt("hi")) == "hi"
    with pytest.raises(ReceiverIdMismatchError):
        _crypto(V1A).decrypt(crypto.encrypt("hi"))


def _truncations() -> Iterator[Any]:
    raw = base64.b64decode(V1A_ENCRYPT)
    enc = base64.b64encode
    yield pytest.param(V1A_ENCRYPT[:-1], -40007, id="b64-minus-one-char")
    yield pytest.param(V1A_ENCRYPT[:-4], -40007, id="b64-minus-four-chars")
    yield pytest.param(enc(raw[:-1]).decode(), -40007, id="minus-one-byte")
    yield pytest.param(enc(raw[:-16]).decode(), -40008, id="minus-aes-block")
    yield pytest.param(enc(raw[:-32]).decode(), -40008, id="minus-pad-block")
    yield pytest.param(enc(raw[:32]).decode(), -40008, id="first-32-bytes")
    yield pytest.param(enc(raw[:16]).decode(), -40008, id="first-16-bytes")
    yield pytest.param(enc(raw[:15]).decode(), -40007, id="first-15-bytes")
    yield pytest.param("", -40007, id="empty")


@pytest.mark.parametrize(("encrypted", "code"), list(_truncations()))
def test_truncated_ciphertext(encrypted: str, code: int) -> None:
    with pytest.raises(DecryptError) as info:
        _crypto(V1A).decrypt(encrypted)
    assert info.value.code == code


@pytest.mark.parametrize(
    "encrypted",
    [
        "!!!!",
        "not base64 at all",
        "中文中文",
        "YQ",
        "====",
        V1A_ENCRYPT + "\n",
        " " + V1A_ENCRYPT,
        V1A_ENCRYPT[:40] + " " + V1A_ENCRYPT[40:],
        V1A_ENCRYPT.replace("+", "-").replace("/", "_"),  # urlsafe alphabet
        V1A_ENCRYPT.replace("+", " "),  # only decrypt_echostr repairs this
        V1A_ENCRYPT.replace("=", "%3D"),  # not percent-decoded
    ],
)
def test_non_base64_rejected(encrypted: str) -> None:
    with pytest.raises(DecryptError) as info:
        _crypto(V1A).decrypt(encrypted)
    assert info.value.code == -40007


def _flip(encrypted: str, index: int, mask: int = 0x01) -> str:
    raw = bytearray(base64.b64decode(encrypted))
    raw[index] ^= mask
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize("index", [0, 15, 16, 100, -33, -17, -1])
def test_tampered_ciphertext_fails_signature(index: int) -> None:
    i, e = V1A["inputs"], V1A["expected"]
    tampered = _flip(V1A_ENCRYPT, index)
    with pytest.raises(SignatureError):
        _crypto(V1A).decrypt_message(e["msg_signature"], i["timestamp"], i["nonce"], tampered)


@pytest.mark.parametrize("index", [-1, -16, -17, -32])
def test_tampered_tail_fails_decrypt(index: int) -> None:
    with pytest.raises(CryptoError):
        _crypto(V1A).decrypt(_flip(V1A_ENCRYPT, index))


def test_cbc_is_malleable_so_signature_comes_first() -> None:
    """Flipping a bit in ciphertext block 1 flips the same bit of plaintext block 2.

    decrypt() alone then returns a modified message; only the signature check stops it.
    """
    i, e = V1A["inputs"], V1A["expected"]
    # Plaintext block 1 (bytes 16..31) = AES-1(C1) XOR C0, so flipping ciphertext byte 4
    # flips plaintext byte 20: the first message byte '<' becomes '='. Block 0 (the random
    # prefix) is garbled, and nobody looks at it.
    tampered = _flip(V1A_ENCRYPT, 4, 0x01)
    crypto = _crypto(V1A)
    got = crypto.decrypt(tampered)
    assert got != i["plaintext"] and got[1:] == i["plaintext"][1:] and got[0] == "="
    with pytest.raises(SignatureError):
        crypto.decrypt_message(e["msg_signature"], i["timestamp"], i["nonce"], tampered)


# --------------------------------------------------------------------------- keys, times, nonces


@pytest.mark.parametrize(
    "key",
    [
        "",
        "A" * 42,
        "A" * 44,
        "A" * 42 + "+",
        "A" * 42 + "/",
        "A" * 42 + "=",
        "A" * 42 + "-",
        "A" * 42 + "_",
        "A" * 42 + " ",
        " " + "A" * 42,
        "A" * 43 + "\n",
        "A" * 42 + "é",
        "A" * 42 + "１",  # fullwidth digit
        "A" * 42 + "\u0661",  # Arabic-Indic digit
    ],
)
def test_invalid_aes_keys(key: str) -> None:
    with pytest.raises(InvalidAESKeyError) as info:
        validate_encoding_aes_key(key)
    assert info.value.code == -40004


def test_invalid_aes_key_non_str() -> None:
    with pytest.raises(InvalidAESKeyError):
        validate_encoding_aes_key(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidAESKeyError):
        validate_encoding_aes_key(b"A" * 43)  # type: ignore[arg-type]


@pytest.mark.parametrize("v", _select(_has_key))
def test_valid_aes_keys(v: dict[str, Any]) -> None:
    key = validate_encoding_aes_key(v["inputs"]["encoding_aes_key"])
    assert isinstance(key, bytes) and len(key) == 32


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("timestamp", "fresh"),
    [
        ("1700000000", True),
        ("1699999701", True),
        ("1699999700", True),  # exactly at the tolerance
        ("1699999699", False),  # stale by one second
        ("1700000300", True),
        ("1700000301", False),  # from the future
        ("1600000000", False),
        ("0", False),
        ("99999999999", False),
        ("", False),
        ("abc", False),
        ("1700000000.5", False),
        ("1.7e9", False),
        (" 1700000000", False),
        ("1700000000 ", False),
        ("1700000000\n", False),
        ("+1700000000", False),
        ("-1700000000", False),
        ("1_700_000_000", False),
        ("\u0661\u0667\u0660\u0660", False),  # non-ASCII digits int() would accept
        ("9" * 5000, False),
    ],
)
def test_timestamp_is_fresh(timestamp: str, fresh: bool) -> None:
    assert timestamp_is_fresh(timestamp, NOW, 300) is fresh


def test_timestamp_is_fresh_edge_arguments() -> None:
    assert not timestamp_is_fresh(None, NOW, 300)  # type: ignore[arg-type]
    assert not timestamp_is_fresh("1700000000", NOW, -1)
    assert not timestamp_is_fresh("1700000000", float("nan"), 300)
    assert timestamp_is_fresh("1700000000", NOW + 0.5, 0.5)


def test_make_nonce_default() -> None:
    nonces = {make_nonce() for _ in range(50)}
    assert len(nonces) == 50
    for n in nonces:
        assert len(n) == 10 and n.isascii() and n.isdigit()


def test_make_nonce_uses_source() -> None:
    assert make_nonce(lambda n: b"\x00" * n) == "0000000000"
    assert make_nonce(lambda n: b"\xff" * n) == f"{(2**64 - 1) % 10**10:010d}"
    with pytest.raises(ValueError):
        make_nonce(lambda n: b"\x00" * (n - 1))


# --------------------------------------------------------------------------- object behaviour


def test_error_hierarchy_and_codes() -> None:
    assert SignatureError().code == -40001
    assert InvalidAESKeyError().code == -40004
    assert ReceiverIdMismatchError().code == -40005
    assert DecryptError().code == -40007
    assert DecryptError("x", ErrorCode.ILLEGAL_BUFFER).code == -40008
    for cls in (SignatureError, InvalidAESKeyError, ReceiverIdMismatchError, DecryptError):
        assert issubclass(cls, CryptoError)
    assert CryptoError("x", -40011).code == -40011


def test_random_source_is_used_per_encryption() -> None:
    calls: list[int] = []

    def source(n: int) -> bytes:
        calls.append(n)
        return bytes([len(calls)]) * n

    crypto = MessageCrypto("tok", V1A["inputs"]["encoding_aes_key"], "wxid", random_source=source)
    a, b = crypto.encrypt("same"), crypto.encrypt("same")
    assert a != b and calls == [16, 16]
    assert _raw_decrypt(V1A_KEY, a)[:16] == b"\x01" * 16


def test_default_random_source_varies() -> None:
    crypto = MessageCrypto("tok", V1A["inputs"]["encoding_aes_key"], "wxid")
    assert crypto.encrypt("same") != crypto.encrypt("same")


@pytest.mark.parametrize("bad", [b"", b"x" * 15, b"x" * 17])
def test_random_source_wrong_length(bad: bytes) -> None:
    crypto = MessageCrypto(
        "tok", V1A["inputs"]["encoding_aes_key"], "wx", random_source=lambda n: bad
    )
    with pytest.raises(CryptoError) as info:
        crypto.encrypt("hi")
    assert info.value.code == ErrorCode.ENCRYPT_AES


def test_empty_token_refused() -> None:
    with pytest.raises(ValueError):
        MessageCrypto("", V1A["inputs"]["encoding_aes_key"], "wx")


def test_repr_hides_secrets() -> None:
    i = V1A["inputs"]
    text = repr(_crypto(V1A))
    assert i["token"] not in text and i["encoding_aes_key"] not in text
    assert i["appid"] in text
    assert _crypto(V1A).receiver_id == i["appid"]


@pytest.mark.parametrize(
    ("timestamp", "nonce"),
    [
        ("", "123"),
        ("17000000a0", "123"),
        ("1700000000<", "123"),
        ("1700000000", ""),
        ("1700000000", "a]]>b"),
        ("1700000000", "a b"),
        ("1700000000", "x\n"),
        ("1700000000", "随机"),
    ],
)
def test_encrypt_reply_rejects_unsafe_envelope_values(timestamp: str, nonce: str) -> None:
    with pytest.raises(CryptoError) as info:
        _crypto(V1A).encrypt_reply("<xml/>", timestamp, nonce)
    assert info.value.code == ErrorCode.GEN_RETURN_XML


def test_encrypt_reply_roundtrip_with_own_nonce() -> None:
    crypto = MessageCrypto("tok", V1A["inputs"]["encoding_aes_key"], "wxid")
    nonce = make_nonce()
    body = crypto.encrypt_reply("<xml>]]></xml>", "1700000123", nonce)
    root = ET.fromstring(body)
    assert root.findtext("TimeStamp") == "1700000123" and root.findtext("Nonce") == nonce
    got = crypto.decrypt_message(
        root.findtext("MsgSignature") or "", "1700000123", nonce, root.findtext("Encrypt") or ""
    )
    assert got == "<xml>]]></xml>"


# --------------------------------------------------------------------------- wechatpy interop

RNG = random.Random(0x5EC0DE)  # reproducible "random" test keys; never used by the module
ALNUM = string.ascii_letters + string.digits


def _random_key() -> str:
    return "".join(RNG.choice(ALNUM) for _ in range(43))


def _random_id(prefix: str) -> str:
    return prefix + "".join(RNG.choice("0123456789abcdef") for _ in range(16))


SAMPLE_TEXTS = [
    "",
    "hello",
    "你好，世界！",
    "emoji 😀🎉👍🏽 and 中文",
    "]]>",
    "<xml><Content><![CDATA[a]]]]><![CDATA[>b]]></Content></xml>",
    "line1\nline2\r\n\ttab",
    "x" * 5000,
    "长" * 2048,
]


def _texts_for_every_pad(receiver_id: str) -> list[tuple[int, str]]:
    """(pad, text) pairs: one text per pad value 1..32, alternating ASCII and multibyte."""
    overhead = 16 + 4 + len(receiver_id.encode())
    out = []
    for pad in range(1, 33):
        n_bytes = (-(overhead + pad)) % 32 + 32 * (pad % 3)
        if pad % 2 and n_bytes >= 3:
            text = "中" * (n_bytes // 3) + "a" * (n_bytes % 3)
        else:
            text = "a" * n_bytes
        assert (overhead + len(text.encode()) + pad) % 32 == 0
        out.append((pad, text))
    return out


# (name, wechatpy class, receiver id prefix, wechatpy's receiver-id exception)
PLATFORM_SPECS: list[tuple[str, Any, str, type[Exception]]] = [
    ("oa", wx_oa.WeChatCrypto, "wx", InvalidAppIdException),
    ("wecom", wx_work.WeChatCrypto, "ww", InvalidCorpIdException),
]
PLATFORMS = [pytest.param(*spec[1:], id=spec[0]) for spec in PLATFORM_SPECS]


def _interop_cases() -> Iterator[Any]:
    for name, wx_cls, id_prefix, _ in PLATFORM_SPECS:
        for k in range(3):
            token = "".join(RNG.choice(ALNUM) for _ in range(RNG.randint(3, 32)))
            key, rid = _random_key(), _random_id(id_prefix)
            texts = [(None, t) for t in SAMPLE_TEXTS] + list(_texts_for_every_pad(rid))
            yield pytest.param(wx_cls, token, key, rid, texts, id=f"{name}-{k}")


INTEROP_CASES = list(_interop_cases())


def _envelope_fields(body: str) -> dict[str, str]:
    root = ET.fromstring(body)
    return {child.tag: child.text or "" for child in root}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("wx_cls", "token", "key", "rid", "texts"), INTEROP_CASES)
def test_ours_to_wechatpy(
    wx_cls: Any, token: str, key: str, rid: str, texts: list[tuple[int | None, str]]
) -> None:
    ours = MessageCrypto(token, key, rid)
    theirs = wx_cls(token, key, rid)
    raw_key = validate_encoding_aes_key(key)
    for pad, text in texts:
        ts, nonce = "1700000000", make_nonce()
        body = ours.encrypt_reply(text, ts, nonce)
        fields = _envelope_fields(body)
        if pad is not None:
            assert _raw_decrypt(raw_key, fields["Encrypt"])[-1] == pad
        assert theirs.decrypt_message(body, fields["MsgSignature"], ts, nonce) == text
        # Bare Encrypt value too (WeCom echostr path goes through check_signature).
        enc = ours.encrypt(text)
        sig = compute_signature(token, ts, nonce, enc)
        assert theirs.decrypt_message({"Encrypt": enc}, sig, ts, nonce) == text
        if wx_cls is wx_work.WeChatCrypto:
            assert theirs.check_signature(sig, ts, nonce, enc) == text


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("wx_cls", "token", "key", "rid", "texts"), INTEROP_CASES)
def test_wechatpy_to_ours(
    wx_cls: Any, token: str, key: str, rid: str, texts: list[tuple[int | None, str]]
) -> None:
    ours = MessageCrypto(token, key, rid)
    theirs = wx_cls(token, key, rid)
    raw_key = validate_encoding_aes_key(key)
    for pad, text in texts:
        ts, nonce = "1700000000", "1234567890"
        fields = _envelope_fields(theirs.encrypt_message(text, nonce, ts))
        assert fields["TimeStamp"] == ts and fields["Nonce"] == nonce
        if pad is not None:
            assert _raw_decrypt(raw_key, fields["Encrypt"])[-1] == pad
        assert ours.decrypt_message(fields["MsgSignature"], ts, nonce, fields["Encrypt"]) == text
        if wx_cls is wx_work.WeChatCrypto:
            echo = fields["Encrypt"]
            assert ours.decrypt_echostr(fields["MsgSignature"], ts, nonce, echo) == text


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("wx_cls", "id_prefix", "wx_exc"), PLATFORMS)
def test_interop_rejections(wx_cls: Any, id_prefix: str, wx_exc: type[Exception]) -> None:
    key, rid, other = _random_key(), _random_id(id_prefix), _random_id(id_prefix)
    ours = MessageCrypto("token", key, rid)
    # Our ciphertext for another receiver: wechatpy refuses it.
    enc = MessageCrypto("token", key, other).encrypt("hi")
    sig = compute_signature("token", "1", "2", enc)
    with pytest.raises(wx_exc):
        wx_cls("token", key, rid).decrypt_message({"Encrypt": enc}, sig, "1", "2")
    # wechatpy's ciphertext for another receiver: we refuse it.
    fields = _envelope_fields(wx_cls("token", key, other).encrypt_message("hi", "2", "1"))
    with pytest.raises(ReceiverIdMismatchError):
        ours.decrypt_message(fields["MsgSignature"], "1", "2", fields["Encrypt"])
    # Signed with another token: both refuse.
    fields = _envelope_fields(wx_cls("other", key, rid).encrypt_message("hi", "2", "1"))
    with pytest.raises(SignatureError):
        ours.decrypt_message(fields["MsgSignature"], "1", "2", fields["Encrypt"])
    body = MessageCrypto("other", key, rid).encrypt_reply("hi", "1", "2")
    with pytest.raises(InvalidSignatureException):
        wx_cls("token", key, rid).decrypt_message(
            body, _envelope_fields(body)["MsgSignature"], "1", "2"
        )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("v", _select(lambda v: "random_prefix" in v["inputs"]))
def test_same_envelope_as_wechatpy_with_pinned_prefix(
    v: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    i = v["inputs"]
    monkeypatch.setattr(wx_base.BasePrpCrypto, "get_random_string", lambda self: i["random_prefix"])
    wx_cls = wx_oa.WeChatCrypto if v["platform"] == "oa" else wx_work.WeChatCrypto
    theirs = wx_cls(i["token"], i["encoding_aes_key"], _receiver_id(v))
    expected = theirs.encrypt_message(i["plaintext"], i["nonce"], i["timestamp"])
    assert _crypto(v).encrypt_reply(i["plaintext"], i["timestamp"], i["nonce"]) == expected
