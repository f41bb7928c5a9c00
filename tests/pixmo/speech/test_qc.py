"""QC of spoken captions: each threshold's rejection with its reason and
detail, before transcription (the audio) and after it (the transcript)."""

from __future__ import annotations

import numpy as np
import pytest

from pixmo.rejects import Reason, Reject
from pixmo.speech.audio import SAMPLE_RATE, decode_audio
from pixmo.speech.config import QCConfig
from pixmo.speech.qc import check_audio, check_transcript
from pixmo.speech.transcript import Segment
from tests.pixmo.speech.conftest import make_transcript, wav_bytes


@pytest.mark.parametrize(
    "fields,expected,detail",
    [
        ({}, None, None),
        ({"text": ""}, Reason.SILENCE, "no words recognised"),
        ({"no_speech_prob": 0.8}, Reason.SILENCE, "no_speech_prob 0.80 > max_no_speech_prob=0.6"),
        ({"language": "fr"}, Reason.WRONG_LANGUAGE, "language 'fr' is not one of ['en']"),
        ({"language_probability": 0.3}, Reason.WRONG_LANGUAGE,
         "language 'en' detected with probability 0.30 < min_language_probability=0.5"),
        ({"compression_ratio": 3.1}, Reason.REPETITION_LOOP,
         "compression ratio 3.10 > max_compression_ratio=2.4"),
        ({"avg_logprob": -1.2}, Reason.LOW_CONFIDENCE, "avg_logprob -1.20 < min_avg_logprob=-0.7"),
        ({"segments": [Segment(0.0, 30.0, "a red car", -0.3, 0.1, 1.0)]},
         Reason.SPEECH_TOO_SHORT, "speech covers 30.0 s < min_speech_s=60.0"),
        ({"text": "a red car"}, Reason.TOO_FEW_WORDS, "3 words < min_words=20"),
    ],
)
def test_check_transcript_thresholds(fields, expected, detail):
    result = check_transcript(make_transcript(**fields), QCConfig(), "a.flac", "s-1")
    if expected is None:
        assert result is None
    else:
        assert result == Reject("transcribe", expected, detail, "a.flac", "s-1")


def test_check_transcript_session_language_overrides_accepted_list():
    t = make_transcript(language="de")
    assert check_transcript(t, QCConfig(), "a.flac", "s-1", language="de") is None
    assert check_transcript(t, QCConfig(languages=()), "a.flac", "s-1") is None



def test_check_audio_spares_the_model_empty_silent_and_short_clips():
    qc = QCConfig(min_speech_s=5.0)

    def check(samples: np.ndarray) -> Reject | None:
        return check_audio(decode_audio(wav_bytes(samples), source="a.wav"), qc, "a.wav", "s-1")

    tone = 0.1 * np.sin(np.arange(6 * SAMPLE_RATE, dtype=np.float32) * 0.05)
    assert check(tone) is None
    assert check(np.zeros(0, np.float32)).reason is Reason.AUDIO_EMPTY
    assert check(np.zeros(6 * SAMPLE_RATE, np.float32)) == Reject(
        "transcribe", Reason.SILENCE, "RMS level -120.0 dBFS < silence_dbfs=-50.0", "a.wav", "s-1")
    assert check(tone[: 2 * SAMPLE_RATE]).detail == "audio lasts 2.0 s < min_speech_s=5.0"
