"""Small media files made on the spot, for tests: no network, no binary fixtures.

* ``amr_clip`` / ``amr_wb_clip`` — AMR built by hand: the magic line, then frames of a ToC
  byte and a payload of the size the mode prescribes. The payload bits are pseudo-random:
  any bits are valid AMR parameters, so decoders accept the stream (it sounds like noise).
  FFmpeg has AMR decoders but no AMR encoder, so this is the only way without a codec.
* ``wechat_speex_clip`` / ``ogg_speex_clip`` — Speex wideband frames built the same way
  (mode headers set, the rest random), bare as WeChat's 16 kHz copy may be, or in Ogg with
  the standard Speex header and comment packets. FFmpeg has no Speex encoder either.
* ``wav_clip`` — a sine wave, PCM16, with ``wave``. ``mp3_clip`` — that, encoded with
  PyAV (needs ``av``).
* ``png_image`` / ``jpeg_image`` — a colour gradient; PNG with ``zlib`` and ``struct``, JPEG
  with PyAV's MJPEG encoder (needs ``av``; Pillow is not a dependency).

Everything is deterministic (fixed seeds), so a failing test fails the same way again.
"""

from __future__ import annotations

import array
import io
import math
import random
import struct
import wave
import zlib
from fractions import Fraction

#: AMR-NB payload bytes (after the ToC byte) for modes 0-7 (4.75 ... 12.2 kbit/s).
AMR_NB_PAYLOAD = (12, 13, 15, 17, 19, 20, 26, 31)
#: AMR-WB payload bytes for modes 0-8 (6.6 ... 23.85 kbit/s).
AMR_WB_PAYLOAD = (17, 23, 32, 36, 40, 46, 50, 58, 60)
#: Speex bits per frame for narrowband sub-modes 0-8 and wideband-layer sub-modes 0-4,
#: header bits included (the Speex manual's bit-rate tables, times 20 ms).
SPEEX_NB_BITS = (5, 43, 119, 160, 220, 300, 364, 492, 79)
SPEEX_SB_BITS = (4, 36, 112, 192, 352)


def amr_clip(seconds: float = 1.0, *, mode: int = 7, seed: int = 1) -> bytes:
    """AMR-NB (8 kHz, 20 ms frames) of ``seconds``, as WeChat's ``media/get`` returns voice."""
    rng = random.Random(seed)
    out = bytearray(b"#!AMR\n")
    for _ in range(round(seconds * 50)):
        out.append(mode << 3 | 0x04)  # ToC: F=0, frame type, Q=1 (frame is good)
        out += rng.randbytes(AMR_NB_PAYLOAD[mode])
    return bytes(out)


def amr_wb_clip(seconds: float = 1.0, *, mode: int = 8, seed: int = 2) -> bytes:
    """AMR-WB (16 kHz, 20 ms frames) of ``seconds``."""
    rng = random.Random(seed)
    out = bytearray(b"#!AMR-WB\n")
    for _ in range(round(seconds * 50)):
        out.append(mode << 3 | 0x04)
        out += rng.randbytes(AMR_WB_PAYLOAD[mode])
    return bytes(out)


class _Bits:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._bits: list[int] = []

    def put(self, value: int, count: int) -> None:
        self._bits.extend((value >> shift) & 1 for shift in range(count - 1, -1, -1))

    def noise(self, count: int) -> None:
        self._bits.extend(self._rng.getrandbits(1) for _ in range(count))

    def to_bytes(self) -> bytes:
        bits = self._bits + [0] * (-len(self._bits) % 8)
        return bytes(
            sum(bit << (7 - i) for i, bit in enumerate(bits[start : start + 8]))
            for start in range(0, len(bits), 8)
        )


def speex_wb_frame(rng: random.Random, *, nb_mode: int = 6, sb_mode: int = 2) -> bytes:
    """One Speex wideband frame (20 ms at 16 kHz): a narrowband layer (bit 0, 4-bit
    sub-mode, parameters) then the high band (bit 1, 3-bit sub-mode, parameters). The
    defaults are quality 8, 476 bits: 60 bytes, the size Tencent's sample decoder reads."""
    bits = _Bits(rng)
    bits.put(0, 1)
    bits.put(nb_mode, 4)
    bits.noise(SPEEX_NB_BITS[nb_mode] - 5)
    bits.put(1, 1)
    bits.put(sb_mode, 3)
    bits.noise(SPEEX_SB_BITS[sb_mode] - 4)
    return bits.to_bytes()


def wechat_speex_clip(
    seconds: float = 1.0, *, length_prefixed: bool = False, seed: int = 3
) -> bytes:
    """Bare Speex wideband frames back to back, or each after a length byte."""
    rng = random.Random(seed)
    frames = [speex_wb_frame(rng) for _ in range(round(seconds * 50))]
    if length_prefixed:
        return b"".join(bytes([len(frame)]) + frame for frame in frames)
    return b"".join(frames)


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = (crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1
        crc &= 0xFFFFFFFF
    return crc


def _ogg_page(packets: list[bytes], *, granule: int, sequence: int, flags: int) -> bytes:
    lacing = bytearray()
    for packet in packets:
        lacing += b"\xff" * (len(packet) // 255) + bytes([len(packet) % 255])
    header = (
        b"OggS\0"
        + bytes([flags])
        + struct.pack("<qIII", granule, 0x5EE7, sequence, 0)
        + bytes([len(lacing)])
        + lacing
    )
    page = header + b"".join(packets)
    return page[:22] + struct.pack("<I", _ogg_crc(page)) + page[26:]


def ogg_speex_clip(seconds: float = 1.0, *, seed: int = 4) -> bytes:
    """Ogg/Speex, wideband 16 kHz, one frame per packet, 50 packets (1 s) per page."""
    rng = random.Random(seed)
    header = b"Speex   " + b"1.2.0".ljust(20, b"\0")
    header += struct.pack("<13i", 1, 80, 16000, 1, 4, 1, -1, 320, 0, 1, 0, 0, 0)
    vendor = b"tests"
    comments = struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)
    pages = [
        _ogg_page([header], granule=0, sequence=0, flags=0x02),  # beginning of stream
        _ogg_page([comments], granule=0, sequence=1, flags=0),
    ]
    frames = [speex_wb_frame(rng) for _ in range(round(seconds * 50))]
    for index in range(0, len(frames), 50):
        chunk = frames[index : index + 50]
        last = index + 50 >= len(frames)
        granule = (index + len(chunk)) * 320
        pages.append(
            _ogg_page(chunk, granule=granule, sequence=len(pages), flags=0x04 if last else 0)
        )
    return b"".join(pages)


def pcm_sine(seconds: float, sample_rate: int, *, frequency: float = 440.0) -> bytes:
    """PCM16 mono samples of a sine wave at half scale. One second is computed and repeated
    (whole cycles per second for integral frequencies), which keeps long clips fast."""
    step = 2 * math.pi * frequency / sample_rate
    second = array.array("h", (round(16000 * math.sin(step * i)) for i in range(sample_rate)))
    whole, part = divmod(round(seconds * sample_rate), sample_rate)
    return second.tobytes() * whole + second[:part].tobytes()


def wav_clip(
    seconds: float = 1.0, *, sample_rate: int = 16000, channels: int = 1, frequency: float = 440.0
) -> bytes:
    """A WAV file (PCM16) of a sine wave, the same in every channel."""
    mono = array.array("h", pcm_sine(seconds, sample_rate, frequency=frequency))
    samples = array.array("h", bytes(len(mono) * 2 * channels))
    for channel in range(channels):
        samples[channel::channels] = mono
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(samples.tobytes())
    return out.getvalue()


def mp3_clip(seconds: float = 1.0, *, sample_rate: int = 24000, bit_rate: int = 48000) -> bytes:
    """An MP3 file (mono, no ID3 tag, with a Xing/Info frame) of a sine wave. Needs PyAV."""
    import av

    pcm = pcm_sine(seconds, sample_rate)
    out = io.BytesIO()
    with av.open(out, "w", format="mp3", options={"id3v2_version": "0"}) as container:
        stream = container.add_stream("libmp3lame", rate=sample_rate, layout="mono")
        assert isinstance(stream, av.audio.stream.AudioStream)
        stream.codec_context.bit_rate = bit_rate
        frame = av.AudioFrame(format="s16p", layout="mono", samples=len(pcm) // 2)
        frame.planes[0].update(pcm)
        frame.sample_rate = sample_rate
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


def _gradient(width: int, height: int) -> list[bytes]:
    """Rows of RGB pixels: red grows left to right, green top to bottom, blue constant."""
    return [
        bytes(
            channel
            for x in range(width)
            for channel in (x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), 96)
        )
        for y in range(height)
    ]


def png_image(width: int = 8, height: int = 8) -> bytes:
    """An RGB PNG, written with zlib and struct only."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    raw = b"".join(b"\0" + row for row in _gradient(width, height))  # filter 0 per row
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def jpeg_image(width: int = 16, height: int = 16, *, quality: int = 5) -> bytes:
    """A baseline JPEG/JFIF of the same gradient, encoded with PyAV's MJPEG encoder. Needs
    PyAV. ``quality`` bounds MJPEG's quantiser (2 best ... 31 worst)."""
    import av

    frame = av.VideoFrame(width, height, "rgb24")
    plane = frame.planes[0]
    plane.update(b"".join(row.ljust(plane.line_size, b"\0") for row in _gradient(width, height)))
    yuv = frame.reformat(format="yuvj420p")
    yuv.pts = 0
    context = av.CodecContext.create("mjpeg", "w")
    assert isinstance(context, av.VideoCodecContext)
    context.width = width
    context.height = height
    context.pix_fmt = "yuvj420p"
    context.time_base = Fraction(1, 25)
    context.options = {"qmin": "2", "qmax": str(max(2, quality))}
    data = b"".join(bytes(packet) for packet in [*context.encode(yuv), *context.encode(None)])
    # FFmpeg writes SOI then a comment; put the JFIF APP0 segment that most readers expect.
    return data[:2] + _JFIF_APP0 + data[2:]


_JFIF_APP0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
