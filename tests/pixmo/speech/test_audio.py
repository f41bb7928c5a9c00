"""Audio decoding: every container the issue names, mono mix, resampling,
levels and provenance hash, and the errors for files that are not audio."""

from __future__ import annotations

import hashlib
import io

import av
import numpy as np
import pytest
import soundfile as sf

from pixmo.errors import PixmoError
from pixmo.speech.audio import (
    FLOOR_DBFS,
    SAMPLE_RATE,
    AudioConfig,
    AudioTooLong,
    decode_audio,
    read_audio,
)
from tests.paths import SPEECH


def encode(samples: np.ndarray, rate: int, container: str, codec: str) -> bytes:
    """Encode float samples (channels, n) with PyAV, as a recorder app would."""
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, np.float32), format="fltp", layout=layout
        )
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


def sine(rate: int, seconds: float, hz: float = 1000.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """Real speech (the kitchen clip), 16 kHz mono."""
    return read_audio(SPEECH / "kitchen.opus").samples


@pytest.mark.parametrize(
    "container,codec,suffix",
    [
        ("wav", "pcm_s16le", "wav"),
        ("flac", "flac", "flac"),
        ("ogg", "libopus", "opus"),
        ("mp3", "libmp3lame", "mp3"),
        ("ipod", "aac", "m4a"),
        ("webm", "libopus", "webm"),
    ],
)
def test_every_format_decodes_to_16k_mono(tmp_path, speech, container, codec, suffix):
    rate = 48_000 if codec == "libopus" else 44_100
    # the speech clip at the container's native rate, in stereo
    upsampled = np.interp(np.arange(0, len(speech), SAMPLE_RATE / rate),
                          np.arange(len(speech)), speech).astype(np.float32)
    path = tmp_path / f"clip.{suffix}"
    path.write_bytes(encode(np.stack([upsampled, upsampled]), rate, container, codec))

    audio = read_audio(path)

    assert audio.sample_rate == SAMPLE_RATE
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert audio.source_sample_rate == rate and audio.source_channels == 2
    # lossy codecs add encoder delay and padding: at most a frame or two
    assert abs(audio.duration_s - len(speech) / SAMPLE_RATE) < 0.08
    reference = read_audio(SPEECH / "kitchen.opus")
    assert abs(audio.rms_dbfs - reference.rms_dbfs) < 1.0
    assert audio.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_stereo_is_averaged_and_levels_are_reported():
    left = sine(44_100, 2.0)  # amplitude 0.5
    for right, peak, rms in [
        (left, -6.02, -9.03),  # same signal both sides: unchanged, no +3 dB
        (np.zeros_like(left), -12.04, -15.05),  # one side silent: half the amplitude
    ]:
        buf = io.BytesIO()
        sf.write(buf, np.stack([left, right], axis=1), 44_100, format="WAV", subtype="FLOAT")
        audio = decode_audio(buf.getvalue())
        assert audio.source_channels == 2
        assert audio.peak_dbfs == pytest.approx(peak, abs=0.1)
        assert audio.rms_dbfs == pytest.approx(rms, abs=0.1)


def test_resampling_keeps_pitch_and_duration():
    buf = io.BytesIO()
    sf.write(buf, sine(44_100, 3.0, hz=1234.0), 44_100, format="FLAC")
    audio = decode_audio(buf.getvalue(), source="tone.flac")
    assert audio.duration_s == pytest.approx(3.0, abs=1e-3)
    spectrum = np.abs(np.fft.rfft(audio.samples))
    assert np.argmax(spectrum) * SAMPLE_RATE / len(audio.samples) == pytest.approx(1234.0, abs=1)
    assert audio.summary() == {
        "audio_sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
        "duration_s": 3.0,
        "peak_dbfs": pytest.approx(-6.02, abs=0.05),
        "rms_dbfs": pytest.approx(-9.03, abs=0.05),
        "codec": "flac",
        "source_sample_rate": 44_100,
        "source_channels": 1,
    }


def test_silence_and_empty_audio_levels():
    buf = io.BytesIO()
    sf.write(buf, np.zeros(16_000, np.float32), 16_000, format="WAV")
    silent = decode_audio(buf.getvalue())
    assert silent.duration_s == 1.0 and silent.rms_dbfs == FLOOR_DBFS
    buf = io.BytesIO()
    sf.write(buf, np.zeros(0, np.float32), 16_000, format="WAV")
    empty = decode_audio(buf.getvalue())
    assert len(empty.samples) == 0 and empty.duration_s == 0.0 and empty.peak_dbfs == FLOOR_DBFS


def test_non_audio_truncated_and_missing_files_raise_naming_the_file(tmp_path):
    fake = tmp_path / "notes.flac"
    fake.write_text("this is a text file renamed to .flac\n" * 20)
    with pytest.raises(PixmoError, match=r"notes\.flac: not decodable audio"):
        read_audio(fake)

    flac = (SPEECH / "desk.flac").read_bytes()
    truncated = tmp_path / "truncated.flac"
    truncated.write_bytes(flac[: len(flac) // 2])
    with pytest.raises(PixmoError, match=r"truncated\.flac: not decodable audio"):
        read_audio(truncated)

    with pytest.raises(PixmoError, match=r"missing\.wav: cannot read audio"):
        read_audio(tmp_path / "missing.wav")


def test_limits_bound_duration_and_size(tmp_path):
    path = SPEECH / "desk.flac"
    with pytest.raises(AudioTooLong, match=r"longer than max_duration_s=2\.0"):
        read_audio(path, AudioConfig(max_duration_s=2.0))  # a limit passed (a PixmoError)
    with pytest.raises(PixmoError, match=r"more than max_bytes=1000") as err:
        read_audio(path, AudioConfig(max_bytes=1000))
    assert not isinstance(err.value, AudioTooLong)
    with pytest.raises(ValueError, match="AudioConfig.sample_rate must be > 0, got 0"):
        AudioConfig(sample_rate=0)
