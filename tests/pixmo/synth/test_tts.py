"""Speech synthesis with eSpeak NG: real audio that the project's Whisper
transcribes back to the text it was made from."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import soundfile as sf

from pixmo.errors import PixmoError
from pixmo.speech.audio import read_audio
from pixmo.speech.config import QCConfig, SpeechConfig
from pixmo.speech.transcribe import Transcriber
from pixmo.synth import tts

TEXT = ("In this picture I can see two red circles near the top left and a large blue "
        "square in the middle. A green star sits at the bottom right, next to a small "
        "yellow triangle. The background is a smooth gradient from pale orange to pale blue.")


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def test_speech_is_transcribed_back(tmp_path):
    import jiwer

    path = tts.synthesize_speech(TEXT, tmp_path / "clip.flac", voice="en-us",
                                 words_per_minute=160, pad_seconds=0.5)
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
    assert 10.0 < info.duration < 25.0
    transcriber = Transcriber(SpeechConfig(device="cpu", qc=QCConfig(min_speech_s=5,
                                                                      min_words=5)))
    transcript = transcriber(read_audio(path))
    assert not hasattr(transcript, "reason"), transcript
    wer = jiwer.wer(" ".join(_words(TEXT)), " ".join(_words(transcript.text)))
    assert wer < 0.5, (wer, transcript.text)


def test_padding_cutting_and_formats(tmp_path):
    padded = tts.synthesize_speech("A red circle.", tmp_path / "a.wav", pad_seconds=0.5)
    samples, rate = sf.read(str(padded))
    assert rate == 16000
    assert np.all(samples[:8000] == 0) and np.all(samples[-8000:] == 0)
    assert np.abs(samples[8000:-8000]).max() > 0.05  # speech between the pauses
    cut = tts.synthesize_speech(TEXT, tmp_path / "b.flac", max_seconds=2.0, sample_rate=22050)
    info = sf.info(str(cut))
    assert (info.samplerate, info.frames) == (22050, 2 * 22050)
    opus = tts.synthesize_speech("A blue square.", tmp_path / "c.opus")
    assert sf.info(str(opus)).format == "OGG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "b.flac", "c.opus"]


def test_fresh_process_gives_identical_bytes(tmp_path):
    """eSpeak NG carries state between utterances in one process; a fresh
    process per clip makes the bytes a function of the text and voice."""
    options = {"voice": "en+m3", "words_per_minute": 170, "pitch": 40}
    a = tts.synthesize_in_fresh_process(TEXT, tmp_path / "a.flac", **options)
    b = tts.synthesize_in_fresh_process(TEXT, tmp_path / "b.flac", **options)
    assert a.read_bytes() == b.read_bytes()
    with pytest.raises(PixmoError, match="speech synthesis failed: .*unknown eSpeak NG voice"):
        tts.synthesize_in_fresh_process(TEXT, tmp_path / "c.flac", voice="xx-nope")
    assert not (tmp_path / "c.flac").exists()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"text": "  "}, "text is empty"),
    ({"voice": "xx-nope"}, "unknown eSpeak NG voice 'xx-nope'"),
    ({"words_per_minute": 20}, "words_per_minute must be 80-450, got 20"),
    ({"pitch": 120}, "pitch must be 0-99, got 120"),
    ({"out": "clip.mp3"}, r"cannot write audio as '.mp3'"),
    ({"pad_seconds": -1.0}, "pad_seconds must be >= 0"),
])
def test_refuses_bad_arguments(tmp_path, kwargs, message):
    text = kwargs.pop("text", "Hello.")
    out = tmp_path / kwargs.pop("out", "clip.flac")
    with pytest.raises(PixmoError, match=message):
        tts.synthesize_speech(text, out, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_missing_espeakng_loader_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import now fails
    monkeypatch.setattr(tts, "_speaker", None)
    with pytest.raises(PixmoError, match=r"pip install 'pixmo-toolkit\[synth\]'"):
        tts.synthesize_speech("Hello.", tmp_path / "clip.flac")


def test_resample_keeps_a_tone():
    t = np.arange(22050) / 22050
    tone = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    out = tts.resample(tone, 22050, 16000)
    assert out.dtype == np.float32 and len(out) == 16000
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert np.abs(out - expected)[200:-200].max() < 2e-3
