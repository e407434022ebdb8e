"""Voice conversion between WeChat and Dify's speech models.

* **In** (``voice_to_wav``): WeChat voice from ``media/get`` is AMR-NB at 8 kHz (``#!AMR\\n``).
  The 16 kHz copy (``MediaId16K``) is Speex; whether WeChat wraps it in Ogg or sends its own
  bare frames is not documented, so the bytes are sniffed, never the ``Format`` field, and
  both are read. Dify's speech-to-text model plugins recognise wav/flac/ogg/m4a/mp4/webm
  and take anything else for MP3, so AMR must be converted: to WAV, PCM16 mono, 16 kHz by
  default (what Whisper-like models expect).
* **Out** (``speech_to_wechat_voice``): a WeChat voice message must be AMR or MP3, at most
  2 MB and 60 s. Dify's text-to-speech models mostly return MP3 (OpenAI), which passes
  through untouched, and is cut at a frame boundary when too long, all without any
  library. Anything else (WAV, Opus, ...) is re-encoded to MP3, mono 24 kHz, 48 kbit/s.

Decoding and encoding use PyAV (``pip install av``), whose wheels bundle an LGPL FFmpeg
with native AMR-NB, AMR-WB and Speex decoders and the LAME MP3 encoder (PyAV 16 or later:
the FFmpeg 7 of earlier wheels pads every wideband Speex frame to twice its length). It is
optional at runtime: it is imported only when needed, and when it (or a codec) is missing
the caller gets ``AudioUnavailable`` to turn into a friendly reply; bytes that cannot be
decoded give ``AudioInvalid``. Both are ``AudioError``.

CPU: the plugin runs under gevent, where CPU-bound work holds up every other request of
the process. Clips are short (WeChat voice is at most 60 s) and every step is linear in the
clip: on one core, 60 s of AMR-NB become WAV in about 55 ms, 60 s of Speex in about 65 ms,
60 s of 24 kHz WAV become MP3 in about 125 ms, and an MP3 is checked or cut in under 10 ms.
Decoded frames are batched before resampling (resampling each 20 ms frame on its own costs
more than decoding it), and decoding stops at ``max_seconds``, so a long input costs no
more than a minute's worth. A caller that must not block the loop even that long can run
these functions in gevent's thread pool: PyAV releases the GIL while FFmpeg works.
"""

from __future__ import annotations

import io
import struct
import wave
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import av.audio.frame

INSTALL_HINT = "pip install av"
MP3_EXTENSION = ".mp3"
MP3_MIMETYPE = "audio/mpeg"

#: Re-encoded replies: mono MPEG-2 Layer III, plenty for speech and ~360 KB a minute.
MP3_SAMPLE_RATE = 24_000
MP3_BIT_RATE = 48_000
#: Bit rates tried, best first, when a long clip would not fit ``max_bytes`` (MPEG-2 L3).
_MP3_BIT_RATES_TRIED = (MP3_BIT_RATE, 40_000, 32_000, 24_000, 16_000, 8_000)
#: Kept free below ``max_seconds`` when encoding, for the encoder's delay and padding.
_MP3_ADDED_SECONDS = 0.1
#: Decoded audio is handed to the resampler in chunks of this many seconds: resampling
#: each 20 ms codec frame on its own costs more in Python overhead than the decoding.
_CHUNK_SECONDS = 1.0


class AudioError(Exception):
    """Base of the errors below."""


class AudioUnavailable(AudioError):
    """The conversion library, or one of its codecs, is not installed."""


class AudioInvalid(AudioError):
    """The input is empty, not audio, of an unsupported kind, or cannot be decoded."""


# --- sniffing ---------------------------------------------------------------------------

#: What the sniffed kinds are called in messages.
_NAMES = {
    "amr": "AMR-NB",
    "amr-wb": "AMR-WB",
    "ogg": "Ogg",
    "speex-wechat": "Speex",
    "wav": "WAV",
    "mp3": "MP3",
    "aac": "AAC",
    "flac": "FLAC",
    "mp4": "MP4/M4A",
    "webm": "WebM",
    "silk": "SILK",
}
#: FFmpeg demuxer to open each kind with, so that nothing depends on probing a small buffer.
_DEMUXERS = {
    "amr": "amr",
    "amr-wb": "amr",
    "ogg": "ogg",
    "wav": "wav",
    "mp3": "mp3",
    "aac": "aac",
    "flac": "flac",
    "mp4": "mov",
    "webm": "matroska",
}
#: Decoder each kind needs for sure (Ogg, MP4, ... are checked once opened).
_DECODERS = {"amr": "amrnb", "amr-wb": "amrwb", "speex-wechat": "speex", "mp3": "mp3"}


def sniff_format(data: bytes) -> str | None:
    """The kind of audio in ``data`` from its bytes, or None when not recognised.

    One of ``amr`` (AMR-NB, WeChat's voice), ``amr-wb``, ``ogg`` (Speex, Opus, Vorbis...),
    ``speex-wechat`` (bare Speex wideband frames, see ``_wechat_speex_frames``), ``wav``,
    ``mp3``, ``aac`` (ADTS), ``flac``, ``mp4``, ``webm``, or ``silk`` (WeChat's app
    format, which nothing here decodes). Only the first few frames are looked at, except
    for bare Speex, which has no header and is recognised only if every frame parses.
    """
    if data.startswith(b"#!AMR\n"):
        return "amr"
    if data.startswith(b"#!AMR-WB\n"):
        return "amr-wb"
    if data.startswith((b"#!SILK_V3", b"\x02#!SILK_V3")):
        return "silk"
    if data.startswith(b"OggS"):
        return "ogg"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data.startswith(b"fLaC"):
        return "flac"
    if data[4:8] == b"ftyp":
        return "mp4"
    if data.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"
    if _mp3_start(data) is not None:
        return "mp3"
    if len(data) >= 7 and data[0] == 0xFF and data[1] & 0xF6 == 0xF0:
        return "aac"
    if _wechat_speex_frames(data) is not None:
        return "speex-wechat"
    return None


# --- MP3 frames (pure Python: passthrough and trimming need no library) -----------------

_MP3_BIT_RATES = {
    1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),  # MPEG-1
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),  # MPEG-2 and 2.5
}
_MP3_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


@dataclass(frozen=True)
class _Mp3Frame:
    offset: int
    length: int
    samples: int
    sample_rate: int


def _mp3_frame_at(data: bytes, offset: int) -> _Mp3Frame | None:
    """The MPEG Layer III frame whose header is at ``offset``, if there is a valid one."""
    if offset + 4 > len(data):
        return None
    b1, b2, b3 = data[offset + 1], data[offset + 2], data[offset + 3]
    if data[offset] != 0xFF or b1 & 0xE0 != 0xE0:
        return None
    version = (b1 >> 3) & 0x03  # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5, 1: reserved
    layer = (b1 >> 1) & 0x03  # 1: Layer III
    bit_rate_index = b2 >> 4
    rate_index = (b2 >> 2) & 0x03
    if version == 1 or layer != 1 or bit_rate_index in (0, 15) or rate_index == 3 or b3 & 3 == 2:
        return None  # reserved values; free-format bit rate is not supported either
    bit_rate = _MP3_BIT_RATES[1 if version == 3 else 2][bit_rate_index] * 1000
    sample_rate = _MP3_SAMPLE_RATES[version][rate_index]
    padding = (b2 >> 1) & 0x01
    samples = 1152 if version == 3 else 576
    length = samples // 8 * bit_rate // sample_rate + padding
    return _Mp3Frame(offset, length, samples, sample_rate)


def _id3v2_size(data: bytes, offset: int = 0) -> int:
    """Bytes taken by an ID3v2 tag at ``offset`` (0 when there is none)."""
    if data[offset : offset + 3] != b"ID3" or len(data) < offset + 10:
        return 0
    size = 0
    for byte in data[offset + 6 : offset + 10]:
        size = (size << 7) | (byte & 0x7F)
    return 10 + size + (10 if data[offset + 5] & 0x10 else 0)


def _mp3_confirmed(data: bytes, offset: int) -> _Mp3Frame | None:
    """The frame at ``offset`` if the next one (or the end of the data) follows it exactly:
    a single valid-looking header is too easily found by chance."""
    frame = _mp3_frame_at(data, offset)
    if frame is None:
        return None
    following = offset + frame.length
    if following == len(data) or _mp3_frame_at(data, following) is not None:
        return frame
    return None


def _mp3_sync(data: bytes, begin: int, end: int) -> int | None:
    """Offset of the first confirmed frame in ``data[begin:end]``."""
    offset = data.find(b"\xff", begin, end)
    while offset != -1:
        if _mp3_confirmed(data, offset) is not None:
            return offset
        offset = data.find(b"\xff", offset + 1, end)
    return None


def _mp3_start(data: bytes) -> int | None:
    """Offset of the first MP3 frame: at the start, or after an ID3v2 tag and the little
    padding some taggers leave behind it (the first 4 KiB are searched)."""
    begin = _id3v2_size(data)
    if not begin:
        return 0 if _mp3_confirmed(data, 0) is not None else None
    return _mp3_sync(data, begin, min(len(data), begin + 4096))


def _mp3_frames(data: bytes) -> list[_Mp3Frame]:
    """Every complete audio frame, in order, stepping over whatever lies between frames.

    Text-to-speech output is sometimes several MP3 files end to end (one per sentence),
    with their own ID3 tags; broken bytes are skipped up to the next confirmed frame, as
    decoders do. A leading Xing/Info/VBRI frame is metadata (frame count, encoder delay),
    not audio, and is left out: a trimmed file must not carry the old frame count.
    """
    start = _mp3_start(data)
    if start is None:
        return []
    frames: list[_Mp3Frame] = []
    offset: int | None = start
    while offset is not None and offset < len(data):
        frame = _mp3_frame_at(data, offset)
        if frame is not None and offset + frame.length <= len(data):
            frames.append(frame)
            offset += frame.length
        else:
            offset = _mp3_sync(data, offset + max(1, _id3v2_size(data, offset)), len(data))
    if frames and any(tag in data[start : start + 64] for tag in (b"Xing", b"Info", b"VBRI")):
        frames.pop(0)
    return frames


def _mp3_duration(frames: list[_Mp3Frame]) -> float:
    return sum(frame.samples / frame.sample_rate for frame in frames)


def _mp3_trimmed(data: bytes, frames: list[_Mp3Frame], max_seconds: float) -> bytes:
    """The first ``max_seconds`` of an MP3, cut between frames (no re-encoding).

    Cutting off the end is safe for Layer III: a frame's bit reservoir only refers back.
    """
    kept: list[bytes] = []
    seconds = 0.0
    for frame in frames:
        seconds += frame.samples / frame.sample_rate
        if seconds > max_seconds:
            break
        kept.append(data[frame.offset : frame.offset + frame.length])
    return b"".join(kept)


# --- WeChat's bare Speex ------------------------------------------------------------------

#: Bits of a Speex frame per narrowband sub-mode (0-8) and per wideband layer sub-mode
#: (0-4), header bits included: the frame size follows from the headers alone.
_SPEEX_NB_BITS = (5, 43, 119, 160, 220, 300, 364, 492, 79)
_SPEEX_SB_BITS = (4, 36, 112, 192, 352)
#: Fewer frames than this (60 ms) are not taken for Speex: the test is statistical.
_SPEEX_MIN_FRAMES = 3


def _speex_frame_size(frame: bytes) -> int | None:
    """Bytes of the wideband Speex frame at the start of ``frame``, from its mode headers."""
    if not frame:
        return None
    first = frame[0]
    if first & 0x80:
        return None  # a frame starts with its narrowband layer, whose first bit is 0
    submode = (first >> 3) & 0x0F
    if submode >= len(_SPEEX_NB_BITS):
        return None
    bits = _SPEEX_NB_BITS[submode]
    if bits + 4 <= len(frame) * 8:
        header = int.from_bytes(frame[bits // 8 : bits // 8 + 2].ljust(2, b"\0"), "big")
        layer = (header >> (12 - bits % 8)) & 0x0F  # wideband bit + 3-bit sub-mode
        if layer & 0x08:
            if layer & 0x07 >= len(_SPEEX_SB_BITS):
                return None
            bits += _SPEEX_SB_BITS[layer & 0x07]
    return (bits + 7) // 8


def _wechat_speex_frames(data: bytes) -> list[bytes] | None:
    """The frames of bare Speex wideband audio, or None when ``data`` is not that.

    Two framings are accepted, since WeChat's is not documented: fixed-size frames back to
    back (Tencent's sample decoder reads 60-byte frames, wideband quality 8), and frames
    each preceded by a length byte. Every frame's mode headers must give its size.
    """
    fixed = _speex_frame_size(data)
    if fixed is not None and len(data) >= fixed * _SPEEX_MIN_FRAMES:
        whole = len(data) - len(data) % fixed  # Tencent's decoder ignores a partial tail
        frames = [data[offset : offset + fixed] for offset in range(0, whole, fixed)]
        if all(_speex_frame_size(frame) == fixed for frame in frames):
            return frames
    frames = []
    offset = 0
    while offset < len(data):
        length = data[offset]
        frame = data[offset + 1 : offset + 1 + length]
        if length == 0 or len(frame) < length or _speex_frame_size(frame) != length:
            return None
        frames.append(frame)
        offset += 1 + length
    return frames if len(frames) >= _SPEEX_MIN_FRAMES else None


def _speex_header(sample_rate: int = 16_000, mode: int = 1) -> bytes:
    """An 80-byte Speex header (as in Ogg): FFmpeg's decoder reads mode and framing from it.

    One frame per packet, so that padding bits at a frame's end are not taken for another.
    """
    frame_size = 320 if mode else 160
    fields = (1, 80, sample_rate, mode, 4, 1, -1, frame_size, 0, 1, 0, 0, 0)
    return b"Speex   " + b"1.2.0".ljust(20, b"\0") + struct.pack("<13i", *fields)


# --- PyAV -------------------------------------------------------------------------------


def _require_av() -> None:
    """Import PyAV, or raise ``AudioUnavailable`` saying what to install."""
    try:
        import av  # noqa: F401
    except ImportError as exc:
        raise AudioUnavailable(
            f"voice conversion needs PyAV, which is not installed ({INSTALL_HINT})"
        ) from exc


def _has_codec(name: str, mode: Literal["r", "w"]) -> bool:
    import av

    try:
        av.Codec(name, mode)
    except (ValueError, av.FFmpegError):  # UnknownCodecError is a ValueError
        return False
    return True


def _require_decoder(name: str, kind: str) -> None:
    if not _has_codec(name, "r"):
        raise AudioUnavailable(
            f"this PyAV's FFmpeg cannot decode {kind} (no '{name}' decoder); "
            f"install PyAV's own wheel ({INSTALL_HINT})"
        )


def _mp3_encoder() -> str:
    for name in ("libmp3lame", "mp3"):
        if _has_codec(name, "w"):
            return name
    raise AudioUnavailable(
        f"this PyAV's FFmpeg has no MP3 encoder; install PyAV's own wheel ({INSTALL_HINT})"
    )


def available() -> bool:
    """Whether WeChat voice (AMR-NB) can be converted for speech-to-text here.

    MP3 replies pass through without PyAV; re-encoding other replies also needs its MP3
    encoder, which ``describe`` reports.
    """
    try:
        _require_av()
    except AudioUnavailable:
        return False
    return _has_codec("amrnb", "r")


def describe() -> str:
    """One line for a status page: the library, its FFmpeg, and what it can do here."""
    try:
        _require_av()
    except AudioUnavailable:
        return f"PyAV not installed ({INSTALL_HINT})"
    import av

    decoders = [
        kind
        for name, kind in (("amrnb", "AMR-NB"), ("amrwb", "AMR-WB"), ("speex", "Speex"))
        if _has_codec(name, "r")
    ]
    parts = [f"decodes {', '.join(decoders)}" if decoders else "no AMR/Speex decoder"]
    try:
        parts.append(f"MP3 encoder {_mp3_encoder()}")
    except AudioUnavailable:
        parts.append("no MP3 encoder")
    ffmpeg = getattr(av, "ffmpeg_version_info", "?")
    return f"PyAV {av.__version__} (FFmpeg {ffmpeg}): {'; '.join(parts)}"


def _decoded_frames(data: bytes, kind: str) -> Generator[av.audio.frame.AudioFrame]:
    """Decoded audio frames of ``data``. Damaged packets are skipped; a stream that cannot
    be opened raises ``AudioInvalid``, a missing decoder ``AudioUnavailable``."""
    import av

    if kind == "speex-wechat":
        frames = _wechat_speex_frames(data) or []
        context = av.CodecContext.create("speex", "r")
        assert isinstance(context, av.AudioCodecContext)
        context.sample_rate = 16_000
        context.layout = "mono"
        context.extradata = _speex_header()
        for frame in frames:
            try:
                yield from context.decode(av.Packet(frame))
            except av.FFmpegError:
                continue
        return

    try:
        container = av.open(io.BytesIO(data), "r", format=_DEMUXERS.get(kind))
    except av.FFmpegError as exc:
        raise AudioInvalid(f"{_NAMES[kind]} data cannot be opened ({type(exc).__name__})") from None
    with container:
        if not container.streams.audio:
            raise AudioInvalid(f"{_NAMES[kind]} data has no audio stream")
        stream = container.streams.audio[0]
        codec = stream.codec_context
        if codec is None or not _has_codec(codec.name, "r"):
            name = codec.name if codec is not None else "its"
            raise AudioUnavailable(f"this PyAV's FFmpeg has no {name} decoder ({INSTALL_HINT})")
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError:
                return  # a damaged container: keep what was decoded so far
            try:
                yield from packet.decode()
            except av.FFmpegError:
                continue


def _pcm16_mono(data: bytes, kind: str, sample_rate: int, max_seconds: float) -> bytes:
    """``data`` decoded, as PCM16 mono at ``sample_rate``, cut at ``max_seconds``."""
    import av

    limit = int(max_seconds * sample_rate) * 2
    resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
    fifo = av.AudioFifo()
    chunks: list[bytes] = []
    size = 0

    def resample(frame: av.audio.frame.AudioFrame | None) -> None:
        nonlocal size
        for out in resampler.resample(frame):
            chunk = bytes(out.planes[0])[: out.samples * 2]  # planes may be padded
            chunks.append(chunk)
            size += len(chunk)

    decoded = _decoded_frames(data, kind)
    try:
        for frame in decoded:
            frame.pts = None  # the FIFO checks timestamps for gaps; they do not matter here
            fifo.write(frame)
            if fifo.samples >= frame.sample_rate * _CHUNK_SECONDS:
                resample(fifo.read())
                if size >= limit:
                    break
        else:
            if fifo.samples:
                resample(fifo.read())
        resample(None)
    except (ValueError, av.FFmpegError) as exc:  # e.g. the stream changed format midway
        if not size:
            raise AudioInvalid(
                f"{_NAMES[kind]} data cannot be decoded ({type(exc).__name__})"
            ) from None
    finally:
        decoded.close()  # closes the container now, not when garbage-collected
    pcm = b"".join(chunks)[:limit]
    if not pcm:
        raise AudioInvalid(f"{_NAMES[kind]} data holds no audio")
    return pcm


def _decode(data: bytes, sample_rate: int, max_seconds: float) -> bytes:
    if not data:
        raise AudioInvalid("no audio data")
    if max_seconds <= 0 or not 8_000 <= sample_rate <= 48_000:
        raise ValueError("max_seconds must be positive and sample_rate 8000-48000")
    kind = sniff_format(data)
    if kind is None:
        raise AudioInvalid("not a recognised audio format")
    if kind == "silk":
        raise AudioInvalid("SILK voice (WeChat's app format) is not supported")
    _require_av()
    if kind in _DECODERS:
        _require_decoder(_DECODERS[kind], _NAMES[kind])
    return _pcm16_mono(data, kind, sample_rate, max_seconds)


# --- public conversions -------------------------------------------------------------------


def voice_to_wav(data: bytes, *, max_seconds: float = 60.0, sample_rate: int = 16000) -> bytes:
    """WeChat voice (AMR-NB, AMR-WB, Ogg or bare Speex, MP3, WAV...) as a WAV file for
    speech-to-text: 16-bit PCM, mono, ``sample_rate`` Hz.

    Audio beyond ``max_seconds`` is dropped, not refused: WeChat's own limit is 60 s, and
    decoding stops there, so an odd long input costs no more than a minute's worth.
    Raises ``AudioInvalid`` (empty, unknown, undecodable) or ``AudioUnavailable``.
    """
    pcm = _decode(data, sample_rate, max_seconds)
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm)
    return out.getvalue()


def speech_to_wechat_voice(
    data: bytes, *, max_seconds: float = 60.0, max_bytes: int = 2 * 1024 * 1024
) -> tuple[bytes, str, str]:
    """Text-to-speech output as a WeChat voice message: ``(content, ".mp3", "audio/mpeg")``.

    MP3 within both limits is returned as it is; MP3 that is too long is cut between frames
    at ``max_seconds`` (no library needed for either). Anything else, or MP3 still over
    ``max_bytes``, is re-encoded (needs PyAV): mono 24 kHz MP3, cut at ``max_seconds``, at
    48 kbit/s or less if that is what fits ``max_bytes``. Raises ``AudioInvalid`` or
    ``AudioUnavailable``.
    """
    if not data:
        raise AudioInvalid("no audio data")
    if max_seconds <= 0 or max_bytes <= 0:
        raise ValueError("max_seconds and max_bytes must be positive")
    frames = _mp3_frames(data) if sniff_format(data) == "mp3" else []
    if frames:
        if _mp3_duration(frames) > max_seconds:
            content = _mp3_trimmed(data, frames, max_seconds)
        elif len(data) > max_bytes:  # without tags, in case that is enough
            content = b"".join(data[f.offset : f.offset + f.length] for f in frames)
        else:
            content = data
        if content and len(content) <= max_bytes:
            return content, MP3_EXTENSION, MP3_MIMETYPE
    # The encoder adds ~70 ms (its delay and the last frame's padding) to the frames' total.
    pcm = _decode(data, MP3_SAMPLE_RATE, max(max_seconds - _MP3_ADDED_SECONDS, max_seconds / 2))
    seconds = len(pcm) / 2 / MP3_SAMPLE_RATE
    encoder = _mp3_encoder()
    for bit_rate in _MP3_BIT_RATES_TRIED:
        if bit_rate / 8 * seconds > max_bytes * 0.97:
            continue  # 3 % for frame headers and the Xing frame
        content = _encode_mp3(pcm, encoder, bit_rate)
        if len(content) <= max_bytes:
            return content, MP3_EXTENSION, MP3_MIMETYPE
    raise AudioInvalid(f"{seconds:.0f} s of speech do not fit in {max_bytes} bytes as MP3")


def _encode_mp3(pcm: bytes, encoder: str, bit_rate: int) -> bytes:
    """PCM16 mono at ``MP3_SAMPLE_RATE`` as an MP3 file (no ID3 tag; a Xing frame with the
    length and the encoder delay, so that players show the right duration)."""
    import av

    out = io.BytesIO()
    chunk = int(MP3_SAMPLE_RATE * _CHUNK_SECONDS) * 2
    try:
        with av.open(out, "w", format="mp3", options={"id3v2_version": "0"}) as container:
            stream = container.add_stream(encoder, rate=MP3_SAMPLE_RATE, layout="mono")
            assert isinstance(stream, av.audio.stream.AudioStream)
            stream.codec_context.bit_rate = bit_rate
            if "s16p" in [f.name for f in stream.codec_context.codec.audio_formats or ()]:
                stream.codec_context.format = "s16p"
            pts = 0
            for start in range(0, len(pcm), chunk):
                piece = pcm[start : start + chunk]
                frame = av.AudioFrame(format="s16p", layout="mono", samples=len(piece) // 2)
                frame.planes[0].update(piece)
                frame.sample_rate = MP3_SAMPLE_RATE
                frame.pts = pts
                pts += frame.samples
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    except av.FFmpegError as exc:
        raise AudioInvalid(f"MP3 encoding failed ({type(exc).__name__})") from None
    return out.getvalue()
