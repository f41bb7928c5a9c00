"""The Whisper backends: one model per process and settings, batched decoding,
load errors that name the model, the thread count as a decoding setting, and
the openai-whisper and transformers backends on the same bundled tiny.en
weights converted to their formats (the conversion itself: test_weights.py).
The other two backends are loaded once per module."""

from __future__ import annotations

from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import pytest

from pixmo.errors import PixmoError
from pixmo.rejects import Reason
from pixmo.speech.audio import SAMPLE_RATE, read_audio
from pixmo.speech.backends import load_backend
from pixmo.speech.config import QCConfig, SpeechConfig
from pixmo.speech.transcribe import Transcriber
from pixmo.speech.transcript import Transcript
from pixmo.speech.weights import export_bundled
from tests.paths import SPEECH
from tests.pixmo.speech.conftest import (
    CLIP_QC,
    MAX_CLIP_WER,
    MAX_CORPUS_WER,
    SCRIPTS,
    reason,
    wer,
)


def test_model_is_loaded_once_per_process(transcriber):
    assert load_backend(SpeechConfig(qc=CLIP_QC)) is transcriber.backend
    assert Transcriber(SpeechConfig(qc=QCConfig())).backend is transcriber.backend
    assert load_backend(SpeechConfig(beam_size=1)) is not transcriber.backend


def test_batched_pipeline_transcribes(transcriber):
    batched = Transcriber(SpeechConfig(batch_size=4, qc=CLIP_QC))
    assert batched.backend.pipeline is not None
    result = batched(read_audio(SPEECH / "kitchen.opus"))
    assert isinstance(result, Transcript), result
    assert wer([SCRIPTS["kitchen.opus"]["text"]], [result.text]) < MAX_CLIP_WER


def test_load_errors_name_the_model(tmp_path):
    with pytest.raises(PixmoError, match="field model: cannot load faster-whisper model"):
        load_backend(SpeechConfig(model=str(tmp_path / "no-such-model")))
    with pytest.raises(PixmoError, match="transformers model must be a local directory"):
        load_backend(SpeechConfig(backend="transformers", model="openai/whisper-tiny"))


def test_thread_count_is_a_recorded_decoding_setting():
    two = Transcriber(SpeechConfig(cpu_threads=2, qc=CLIP_QC))
    result = two(read_audio(SPEECH / "desk.flac"))
    assert isinstance(result, Transcript) and result.cpu_threads == 2
    assert load_backend(SpeechConfig(cpu_threads=2, qc=CLIP_QC)) is two.backend


# ------------------------------------------------- the other two backends


@pytest.fixture(scope="module")
def openai_checkpoint(tmp_path_factory) -> Path:
    return export_bundled("openai", tmp_path_factory.mktemp("openai") / "tiny.en.pt")


@pytest.fixture(scope="module")
def transformers_dir(tmp_path_factory) -> Path:
    return export_bundled("transformers", tmp_path_factory.mktemp("hf") / "tiny.en")


def test_openai_whisper_backend_from_checkpoint(openai_checkpoint, transcript_schema):
    transcriber = Transcriber(SpeechConfig(backend="openai-whisper",
                                           model=str(openai_checkpoint), qc=CLIP_QC))
    result = transcriber(read_audio(SPEECH / "desk.flac"))
    assert isinstance(result, Transcript), result
    assert wer([SCRIPTS["desk.flac"]["text"]], [result.text]) < MAX_CLIP_WER
    record = result.to_record()
    transcript_schema(record)
    assert record["backend"] == "openai-whisper" and record["compute_type"] == "float32"
    assert record["runtime"] == f"torch {version('torch')} cpu" and record["cpu_threads"] == 1
    assert record["model"] == str(openai_checkpoint) and record["language"] == "en"
    assert -0.7 < record["avg_logprob"] < 0 and 0 <= record["no_speech_prob"] < 0.6
    assert len(record["segments"]) >= 2


def test_transformers_backend_from_directory(transformers_dir, transcript_schema):
    assert (transformers_dir / "model.safetensors").is_file()
    transcriber = Transcriber(SpeechConfig(backend="transformers", model=str(transformers_dir),
                                           beam_size=1, qc=CLIP_QC))
    references, hypotheses = [], []
    for name in ("desk.flac", "kitchen.opus"):
        result = transcriber(read_audio(SPEECH / name))
        assert isinstance(result, Transcript), result
        references.append(SCRIPTS[name]["text"])
        hypotheses.append(result.text)
        record = result.to_record()
        transcript_schema(record)
        assert record["backend"] == "transformers" and record["beam_size"] == 1
        assert -0.7 < record["avg_logprob"] < 0 and "no_speech_prob" not in record
        assert record["segments"][0]["start"] == 0.0
    assert wer(references, hypotheses) < MAX_CORPUS_WER
    # the QC sees this backend's confidence too
    assert reason(transcriber(read_audio(SPEECH / "german.opus"))) is Reason.LOW_CONFIDENCE


def test_openai_whisper_detects_language_with_a_multilingual_model(tmp_path):
    """No multilingual Whisper weights can be had offline, so a randomly
    initialised model in openai-whisper's own checkpoint format drives the
    language-detection path; only the mechanics are checked, not the answer."""
    import torch
    import whisper

    torch.manual_seed(0)
    dims = whisper.model.ModelDimensions(
        n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
        n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1)
    model = whisper.model.Whisper(dims)
    # openai-whisper leaves the decoder's positional embedding as torch.empty (real
    # checkpoints overwrite it); uninitialised memory made this test NaN now and then
    torch.nn.init.normal_(model.decoder.positional_embedding, std=0.02)
    path = tmp_path / "random-multilingual.pt"
    torch.save({"dims": asdict(dims), "model_state_dict": model.state_dict()}, path)
    backend = load_backend(SpeechConfig(backend="openai-whisper", model=str(path), beam_size=1))
    assert backend.model.is_multilingual
    decoding = backend.decode(read_audio(SPEECH / "desk.flac").samples[: 3 * SAMPLE_RATE])
    assert decoding.language in whisper.tokenizer.LANGUAGES
    assert 0 < decoding.language_probability <= 1
