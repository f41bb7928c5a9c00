"""The transcription stage with real Whisper weights on real (synthesised)
speech: word error rate against the scripts read aloud, every QC rejection on
real audio as the stage returns it, the transcript record against the
``sample`` schema, and what ``pixmo transcribe`` prints.

The faster-whisper model is loaded once per process (``load_backend`` caches
it).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from importlib.metadata import version

import numpy as np
import pytest

from pixmo.rejects import Reason
from pixmo.speech.audio import SAMPLE_RATE, decode_audio, read_audio
from pixmo.speech.config import QCConfig, SpeechConfig
from pixmo.speech.transcribe import Transcriber, transcribe_files
from pixmo.speech.transcript import Transcript
from tests.paths import SPEECH
from tests.pixmo.speech.conftest import (
    CLIP_QC,
    DESCRIPTIONS,
    MAX_CLIP_WER,
    MAX_CORPUS_WER,
    SCRIPTS,
    reason,
    wav_bytes,
    wer,
)


def test_sample_speech_word_error_rate(transcriber, transcript_schema):
    references, hypotheses = [], []
    for name in DESCRIPTIONS:
        result = transcriber(read_audio(SPEECH / name), annotator="espeak",
                             session_id=f"s-{name.split('.')[0]}")
        assert isinstance(result, Transcript), result
        references.append(SCRIPTS[name]["text"])
        hypotheses.append(result.text)
        assert wer([references[-1]], [result.text]) < MAX_CLIP_WER, (name, result.text)

        record = result.to_record()
        transcript_schema(record)
        assert record["backend"] == "faster-whisper" and record["model"] == "tiny.en"
        assert record["compute_type"] == "int8" and record["beam_size"] == 5
        assert record["runtime"] == f"ctranslate2 {version('ctranslate2')} cpu onednn-avx2"
        assert record["cpu_threads"] == 1
        assert record["language"] == "en" and record["language_probability"] == 1.0
        assert -0.7 < record["avg_logprob"] < 0 and 0 <= record["no_speech_prob"] < 0.6
        assert 0.5 < record["compression_ratio"] < 2.4
        assert record["audio_sha256"] == read_audio(SPEECH / name).sha256
        segments = record["segments"]
        assert segments[0]["start"] == 0.0
        assert all(a["end"] <= b["start"] + 1e-6
                   for a, b in zip(segments, segments[1:], strict=False))
        assert abs(segments[-1]["end"] - record["duration_s"]) < 1.5
    assert wer(references, hypotheses) < MAX_CORPUS_WER


def test_reject_silence(transcriber):
    audio = decode_audio(wav_bytes(np.zeros(12 * SAMPLE_RATE, np.float32)), source="silence.wav")
    result = transcriber(audio, session_id="s-1")
    assert reason(result) is Reason.SILENCE
    assert result.detail == "RMS level -120.0 dBFS < silence_dbfs=-50.0"
    assert result.record == "s-1" and result.source == "silence.wav"


def test_reject_noise(transcriber):
    noise = np.random.default_rng(0).standard_normal(12 * SAMPLE_RATE).astype(np.float32) * 0.1
    audio = decode_audio(wav_bytes(noise), source="noise.wav")
    assert audio.rms_dbfs > -25  # loud: the level check lets it through to the model
    result = transcriber(audio)
    assert reason(result) is Reason.SILENCE
    # The model hears no speech; which of its two silence checks fires depends on the CPU and
    # the library build (no words at all, or words with a high no_speech_prob). Not the level
    # check: that would mean the model was never asked.
    assert re.fullmatch(r"no words recognised|no_speech_prob \d\.\d\d > max_no_speech_prob=0\.6",
                        result.detail), result.detail


def test_reject_truncated_file(transcriber, tmp_path):
    flac = (SPEECH / "desk.flac").read_bytes()
    path = tmp_path / "truncated.flac"
    path.write_bytes(flac[: len(flac) // 2])
    audio, result = transcriber.transcribe_path(path, session_id="s-9")
    assert audio is None and reason(result) is Reason.AUDIO_UNREADABLE
    assert result.detail.startswith("not decodable audio") and result.record == "s-9"


def test_reject_two_second_clip(transcriber):
    speech = read_audio(SPEECH / "kitchen.opus").samples[: 2 * SAMPLE_RATE]
    result = transcriber(decode_audio(wav_bytes(speech), source="short.wav"))
    assert reason(result) is Reason.SPEECH_TOO_SHORT
    assert result.detail == "audio lasts 2.0 s < min_speech_s=5.0"


def test_reject_non_audio_renamed_flac(transcriber, tmp_path):
    path = tmp_path / "photo.flac"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40)
    audio, result = transcriber.transcribe_path(path)
    assert audio is None and reason(result) is Reason.AUDIO_UNREADABLE
    assert result.source == str(path)


def test_reject_missing_and_empty_files(transcriber, tmp_path):
    _, result = transcriber.transcribe_path(tmp_path / "nowhere.flac")
    assert reason(result) is Reason.AUDIO_NOT_FOUND
    path = tmp_path / "empty.wav"
    path.write_bytes(wav_bytes(np.zeros(0, np.float32)))
    _, result = transcriber.transcribe_path(path)
    assert reason(result) is Reason.AUDIO_EMPTY


def test_reject_speech_shorter_than_default_minimum():
    # PixMo's rule: 60 s of speech. The 20 s clip is real speech, yet too short.
    result = Transcriber(SpeechConfig())(read_audio(SPEECH / "kitchen.opus"))
    assert reason(result) is Reason.SPEECH_TOO_SHORT
    assert result.detail == "audio lasts 19.7 s < min_speech_s=60.0"


def test_reject_speech_time_measured_from_segments(transcriber):
    # 5 s of speech padded with 10 s of quiet room tone: long enough as audio,
    # too short as speech
    speech = read_audio(SPEECH / "desk.flac").samples[: 5 * SAMPLE_RATE]
    hiss = np.random.default_rng(1).standard_normal(10 * SAMPLE_RATE).astype(np.float32) * 1e-3
    audio = decode_audio(wav_bytes(np.concatenate([speech, hiss])), source="padded.wav")
    qc = replace(CLIP_QC, min_speech_s=8.0, min_words=1)
    result = replace_qc(transcriber, qc)(audio)
    assert reason(result) is Reason.SPEECH_TOO_SHORT
    assert result.detail.startswith("speech covers")
    assert result.detail.endswith("< min_speech_s=8.0")


def replace_qc(transcriber: Transcriber, qc: QCConfig) -> Transcriber:
    """A transcriber with other QC thresholds and the same loaded model."""
    other = Transcriber(replace(transcriber.cfg, qc=qc))
    assert other.backend is transcriber.backend
    return other


def test_reject_low_confidence_for_german_speech(transcriber):
    result = transcriber(read_audio(SPEECH / "german.opus"))
    assert reason(result) is Reason.LOW_CONFIDENCE
    assert result.detail.endswith("< min_avg_logprob=-0.7")


def test_reject_wrong_language_against_the_session(transcriber):
    audio = read_audio(SPEECH / "desk.flac")
    result = transcriber(audio, session_id="s-de", language="de")
    assert reason(result) is Reason.WRONG_LANGUAGE
    assert result.detail == "language 'en' is not one of ['de']"
    assert isinstance(transcriber(audio, language="en"), Transcript)


def test_reject_repetition_loop(transcriber):
    result = transcriber(read_audio(SPEECH / "loop.opus"))
    assert reason(result) is Reason.REPETITION_LOOP
    assert result.detail.endswith("> max_compression_ratio=2.4")


def test_reject_too_few_words(transcriber):
    result = replace_qc(transcriber, replace(CLIP_QC, min_words=30))(
        read_audio(SPEECH / "desk.flac"))
    assert reason(result) is Reason.TOO_FEW_WORDS
    assert result.detail.endswith("words < min_words=30")


def test_transcribe_files_yields_one_json_line_per_file(tmp_path):
    fake = tmp_path / "fake.flac"
    fake.write_text("not audio")
    cfg = SpeechConfig(qc=CLIP_QC)
    rows = list(transcribe_files([SPEECH / "desk.flac", fake, SPEECH / "german.opus"], cfg))
    assert [r["file"] for r in rows] == [str(SPEECH / "desk.flac"), str(fake),
                                        str(SPEECH / "german.opus")]
    assert set(rows[0]) == {"file", "audio", "transcript"}
    assert rows[0]["audio"]["duration_s"] == pytest.approx(7.13, abs=0.01)
    assert rows[0]["audio"]["codec"] == "flac"
    assert rows[1] == {"file": str(fake), "audio": None, "reject": {
        "stage": "transcribe", "reason": "audio_unreadable", "detail": rows[1]["reject"]["detail"],
        "source": str(fake), "record": str(fake)}}
    assert rows[2]["reject"]["reason"] == "low_confidence" and rows[2]["audio"] is not None
    for row in rows:
        assert json.loads(json.dumps(row)) == row

