"""Voice conversion (endpoints/wechat/audio.py) on clips made by tests/media_samples.py.

Tests that decode or encode need PyAV and are skipped, with the reason, where it is not
installed; sniffing, MP3 passthrough and trimming, and the missing-library errors are pure
Python and always run.
"""

from __future__ import annotations

import io
import struct
import sys
import wave
import zlib

import pytest

from endpoints.wechat import audio
from tests import media_samples as samples

HAVE_AV = audio.available()
needs_av = pytest.mark.skipif(not HAVE_AV, reason="PyAV (pip install av) is not installed")


def _has_decoder(name: str) -> bool:
    return HAVE_AV and audio._has_codec(name, "r")


needs_speex = pytest.mark.skipif(
    not _has_decoder("speex"), reason="this FFmpeg has no native Speex decoder"
)


def wav_info(data: bytes) -> tuple[int, int, int, float]:
    """(channels, sample width, rate, seconds) of a WAV file, checking its RIFF header."""
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt "
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    assert struct.unpack("<H", data[20:22])[0] == 1  # PCM
    with wave.open(io.BytesIO(data)) as wav:
        return (
            wav.getnchannels(),
            wav.getsampwidth(),
            wav.getframerate(),
            wav.getnframes() / wav.getframerate(),
        )


def decoded_seconds(data: bytes) -> float:
    import av

    seconds = 0.0
    with av.open(io.BytesIO(data), "r") as container:
        for frame in container.decode(audio=0):
            seconds += frame.samples / frame.sample_rate
    return seconds


@pytest.fixture(scope="module")
def mp3_10s() -> bytes:
    if not HAVE_AV:
        pytest.skip("PyAV (pip install av) is not installed")
    return samples.mp3_clip(10)


@pytest.fixture(scope="module")
def mp3_70s() -> bytes:
    if not HAVE_AV:
        pytest.skip("PyAV (pip install av) is not installed")
    return samples.mp3_clip(70)


# --- sniffing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (samples.amr_clip(0.2), "amr"),
        (samples.amr_wb_clip(0.2), "amr-wb"),
        (samples.ogg_speex_clip(0.2), "ogg"),
        (samples.wechat_speex_clip(0.2), "speex-wechat"),
        (samples.wechat_speex_clip(0.2, length_prefixed=True), "speex-wechat"),
        (samples.wav_clip(0.1), "wav"),
        (b"#!SILK_V3" + bytes(50), "silk"),
        (b"\x02#!SILK_V3" + bytes(50), "silk"),
        (b"fLaC\0\0\0\x22" + bytes(40), "flac"),
        (b"\0\0\0\x20ftypM4A " + bytes(40), "mp4"),
        (b"\x1a\x45\xdf\xa3" + bytes(40), "webm"),
        (b"\xff\xf1\x50\x80\x02\x1f\xfc" + bytes(20), "aac"),
        (b"", None),
        (b"hello, this is not audio at all" * 10, None),
        (bytes(range(256)) * 4, None),
        (samples.wechat_speex_clip(0.04), None),  # 2 frames: too few to be sure
    ],
)
def test_sniff_format(data: bytes, kind: str | None) -> None:
    assert audio.sniff_format(data) == kind


@needs_av
def test_sniff_mp3_with_and_without_id3(mp3_10s: bytes) -> None:
    assert audio.sniff_format(mp3_10s) == "mp3"
    tag = b"ID3\x04\0\0\0\0\0\x0a" + bytes(10)  # a 10-byte (empty) tag body
    assert audio.sniff_format(tag + mp3_10s) == "mp3"
    assert audio.sniff_format(tag + bytes(100) + mp3_10s) == "mp3"  # padding after the tag
    assert audio.sniff_format(b"\0" + mp3_10s) is None  # no tag: the first frame starts at 0


def test_sniff_speex_needs_every_frame_to_parse() -> None:
    clip = bytearray(samples.wechat_speex_clip(0.2))
    clip[60] |= 0x80  # frame 2 no longer starts with a narrowband layer
    assert audio.sniff_format(bytes(clip)) is None


# --- voice_to_wav -------------------------------------------------------------------------


@needs_av
def test_amr_to_wav_is_16khz_mono_pcm16_of_the_same_length() -> None:
    wav = audio.voice_to_wav(samples.amr_clip(2.0))
    channels, width, rate, seconds = wav_info(wav)
    assert (channels, width, rate) == (1, 2, 16000)
    assert seconds == pytest.approx(2.0, abs=0.03)
    assert any(wav[44:])  # not silence: the random parameters decode to noise


@needs_av
def test_amr_to_wav_at_another_rate() -> None:
    _, _, rate, seconds = wav_info(audio.voice_to_wav(samples.amr_clip(1.0), sample_rate=8000))
    assert rate == 8000
    assert seconds == pytest.approx(1.0, abs=0.03)


@needs_av
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(samples.amr_wb_clip(1.5), id="amr-wb"),
        pytest.param(samples.wav_clip(1.5, sample_rate=44100, channels=2), id="wav-44k-stereo"),
        pytest.param(samples.wav_clip(1.5, sample_rate=8000), id="wav-8k"),
    ],
)
def test_other_inputs_to_wav(data: bytes) -> None:
    channels, _, rate, seconds = wav_info(audio.voice_to_wav(data))
    assert (channels, rate) == (1, 16000)
    assert seconds == pytest.approx(1.5, abs=0.03)


@needs_av
def test_mp3_to_wav(mp3_10s: bytes) -> None:
    _, _, rate, seconds = wav_info(audio.voice_to_wav(mp3_10s))
    assert rate == 16000
    assert seconds == pytest.approx(10.0, abs=0.05)


@needs_speex
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(samples.ogg_speex_clip(1.5), id="ogg"),
        pytest.param(samples.wechat_speex_clip(1.5), id="bare-60-byte-frames"),
        pytest.param(samples.wechat_speex_clip(1.5, length_prefixed=True), id="length-prefixed"),
    ],
)
def test_speex_to_wav(data: bytes) -> None:
    channels, _, rate, seconds = wav_info(audio.voice_to_wav(data))
    assert (channels, rate) == (1, 16000)
    assert seconds == pytest.approx(1.5, abs=0.03)


@needs_av
def test_long_voice_is_cut_at_max_seconds() -> None:
    assert wav_info(audio.voice_to_wav(samples.amr_clip(75)))[3] == 60.0
    assert wav_info(audio.voice_to_wav(samples.amr_clip(10), max_seconds=2.5))[3] == 2.5


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00\x01garbage" * 100, id="garbage"),
        pytest.param(b"#!SILK_V3" + bytes(200), id="silk"),
    ],
)
def test_unusable_input_is_invalid_even_without_pyav(data: bytes) -> None:
    with pytest.raises(audio.AudioInvalid):
        audio.voice_to_wav(data)


@needs_av
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"#!AMR\n", id="amr-without-frames"),
        pytest.param(b"RIFF\x24\0\0\0WAVEjunkjunkjunk", id="broken-wav"),
        pytest.param(b"OggS" + bytes(100), id="broken-ogg"),
        pytest.param(b"\0\0\0\x20ftypisom" + bytes(100), id="broken-mp4"),
    ],
)
def test_undecodable_input_is_invalid(data: bytes) -> None:
    with pytest.raises(audio.AudioInvalid):
        audio.voice_to_wav(data)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        audio.voice_to_wav(samples.amr_clip(0.2), sample_rate=1000)
    with pytest.raises(ValueError):
        audio.speech_to_wechat_voice(samples.wav_clip(0.2), max_seconds=0)


# --- speech_to_wechat_voice ---------------------------------------------------------------


def assert_mp3(content: bytes, extension: str, mimetype: str) -> float:
    """Checks an MP3 result and returns the length its frames add up to."""
    assert (extension, mimetype) == (".mp3", "audio/mpeg")
    assert content[0] == 0xFF and content[1] & 0xE0 == 0xE0  # frame sync at byte 0
    assert audio.sniff_format(content) == "mp3"
    return audio._mp3_duration(audio._mp3_frames(content))


@needs_av
def test_wav_becomes_mono_mp3() -> None:
    content, extension, mimetype = audio.speech_to_wechat_voice(samples.wav_clip(3.0))
    assert assert_mp3(content, extension, mimetype) == pytest.approx(3.0, abs=0.1)
    assert decoded_seconds(content) == pytest.approx(3.0, abs=0.1)
    import av

    with av.open(io.BytesIO(content)) as container:
        stream = container.streams.audio[0]
        assert (stream.channels, stream.sample_rate) == (1, audio.MP3_SAMPLE_RATE)


@needs_av
def test_other_speech_formats_become_mp3() -> None:
    for data in (samples.amr_clip(1.0), samples.ogg_speex_clip(1.0)):
        content, extension, mimetype = audio.speech_to_wechat_voice(data)
        assert assert_mp3(content, extension, mimetype) == pytest.approx(1.0, abs=0.1)


@needs_av
def test_mp3_within_limits_passes_through(mp3_10s: bytes) -> None:
    content, extension, mimetype = audio.speech_to_wechat_voice(mp3_10s)
    assert content is mp3_10s
    assert (extension, mimetype) == (".mp3", "audio/mpeg")
    tagged = b"ID3\x04\0\0\0\0\0\x0a" + bytes(10) + mp3_10s
    assert audio.speech_to_wechat_voice(tagged)[0] is tagged


@needs_av
def test_long_mp3_is_cut_between_frames(mp3_70s: bytes) -> None:
    content, extension, mimetype = audio.speech_to_wechat_voice(mp3_70s)
    assert 59.9 < assert_mp3(content, extension, mimetype) <= 60.0
    assert content in mp3_70s  # frames copied, not re-encoded
    assert b"Xing" not in content[:64] and b"Info" not in content[:64]  # old frame count
    assert decoded_seconds(content) == pytest.approx(60.0, abs=0.1)


@needs_av
def test_long_speech_is_cut_to_max_seconds() -> None:
    content, extension, mimetype = audio.speech_to_wechat_voice(samples.wav_clip(70))
    assert 59.8 < assert_mp3(content, extension, mimetype) <= 60.0
    assert len(content) < 2 * 1024 * 1024
    short = audio.speech_to_wechat_voice(samples.wav_clip(10), max_seconds=5)[0]
    assert 4.8 < assert_mp3(short, ".mp3", "audio/mpeg") <= 5.0


@needs_av
def test_concatenated_mp3_files_count_whole(mp3_10s: bytes) -> None:
    tag = b"ID3\x04\0\0\0\0\0\x0a" + bytes(10)
    joined = mp3_10s + tag + mp3_10s + b"TAG" + bytes(125)  # + an ID3v1 tag at the end
    # each file adds its encoder delay and padding (~50 ms), the second its Info frame
    assert audio._mp3_duration(audio._mp3_frames(joined)) == pytest.approx(20.1, abs=0.05)
    content = audio.speech_to_wechat_voice(joined, max_seconds=15)[0]
    assert 14.9 < assert_mp3(content, ".mp3", "audio/mpeg") <= 15.0


@needs_av
def test_too_large_mp3_is_reencoded_smaller() -> None:
    big = samples.mp3_clip(10, bit_rate=160_000)
    content, _, _ = audio.speech_to_wechat_voice(big, max_bytes=100_000)
    assert len(content) <= 100_000 < len(big)
    assert decoded_seconds(content) == pytest.approx(10.0, abs=0.1)


@needs_av
def test_bit_rate_drops_to_fit_max_bytes() -> None:
    content, _, _ = audio.speech_to_wechat_voice(samples.wav_clip(20), max_bytes=60_000)
    assert len(content) <= 60_000
    assert decoded_seconds(content) == pytest.approx(20.0, abs=0.1)
    with pytest.raises(audio.AudioInvalid):
        audio.speech_to_wechat_voice(samples.wav_clip(20), max_bytes=5_000)


def test_speech_that_is_not_audio_is_invalid() -> None:
    for data in (b"", b"<html>error</html>" * 10):
        with pytest.raises(audio.AudioInvalid):
            audio.speech_to_wechat_voice(data)


# --- the library is optional --------------------------------------------------------------


@pytest.fixture
def without_pyav(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if PyAV were not installed: ``import av`` raises ImportError."""
    for name in [name for name in sys.modules if name == "av" or name.startswith("av.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "av", None)


def test_missing_pyav_is_unavailable(without_pyav: None) -> None:
    assert audio.available() is False
    assert "not installed" in audio.describe()
    with pytest.raises(audio.AudioUnavailable, match="pip install av"):
        audio.voice_to_wav(samples.amr_clip(1.0))
    with pytest.raises(audio.AudioUnavailable, match="pip install av"):
        audio.speech_to_wechat_voice(samples.wav_clip(1.0))


@needs_av
def test_mp3_replies_need_no_pyav(
    mp3_10s: bytes, mp3_70s: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "av", None)
    assert audio.speech_to_wechat_voice(mp3_10s)[0] is mp3_10s
    assert 59.9 < assert_mp3(*audio.speech_to_wechat_voice(mp3_70s)) <= 60.0


@needs_av
def test_missing_codecs_are_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    real = audio._has_codec
    monkeypatch.setattr(
        audio,
        "_has_codec",
        lambda name, mode: name not in {"amrnb", "libmp3lame", "mp3"} and real(name, mode),
    )
    assert audio.available() is False
    assert "no MP3 encoder" in audio.describe()
    with pytest.raises(audio.AudioUnavailable, match="AMR-NB"):
        audio.voice_to_wav(samples.amr_clip(1.0))
    with pytest.raises(audio.AudioUnavailable, match="MP3 encoder"):
        audio.speech_to_wechat_voice(samples.wav_clip(1.0))


@needs_av
def test_available_and_describe() -> None:
    assert audio.available() is True
    description = audio.describe()
    assert description.startswith("PyAV ")
    assert "AMR-NB" in description and "MP3 encoder" in description


# --- the image samples other tests use ----------------------------------------------------


def test_png_image_is_a_valid_png() -> None:
    data = samples.png_image(5, 3)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    offset, chunks = 8, {}
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = body
        offset += 12 + length
    assert struct.unpack(">II", chunks[b"IHDR"][:8]) == (5, 3)
    assert len(zlib.decompress(chunks[b"IDAT"])) == 3 * (1 + 5 * 3)
    assert b"IEND" in chunks


@needs_av
def test_jpeg_image_is_a_valid_jpeg() -> None:
    import av

    data = samples.jpeg_image(32, 16)
    assert data.startswith(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00") and data.endswith(b"\xff\xd9")
    with av.open(io.BytesIO(data), "r", format="mjpeg") as container:
        frame = next(container.decode(video=0))
        assert (frame.width, frame.height) == (32, 16)
