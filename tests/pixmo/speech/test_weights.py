"""The bundled CTranslate2 tiny.en converted to openai-whisper and
transformers: strict tensor tables, and both conversions compute the same
logits on real speech."""

from __future__ import annotations

import struct

import pytest
import torch

from pixmo.errors import PixmoError
from pixmo.speech.audio import SAMPLE_RATE, read_audio
from pixmo.speech.weights import (
    bundled_model_dir,
    bundled_openai_model,
    bundled_transformers_model,
    ct2_to_openai,
    export_bundled,
    read_ct2_variables,
)
from tests.paths import SPEECH


@pytest.fixture(scope="module")
def variables():
    return read_ct2_variables(bundled_model_dir() / "model.bin")


def test_reads_the_bundled_tiny_en(variables):
    assert variables["decoder/embeddings/weight"].shape == (51864, 384)
    assert variables["encoder/layer_3/self_attention/linear_0/weight"].shape == (1152, 384)
    # the output projection is an alias of the embeddings
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]


def test_openai_tables_name_every_tensor(variables):
    import whisper

    dims, state_dict = ct2_to_openai(variables)
    assert dims == {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 384, "n_audio_head": 6,
                    "n_audio_layer": 4, "n_vocab": 51864, "n_text_ctx": 448, "n_text_state": 384,
                    "n_text_head": 6, "n_text_layer": 4}
    expected = whisper.model.Whisper(whisper.model.ModelDimensions(**dims)).state_dict()
    assert sorted(state_dict) == sorted(expected)
    assert all(state_dict[k].shape == expected[k].shape for k in expected)
    # fused q|k|v split back: the key projection of Whisper has no bias
    _, k, v = variables["encoder/layer_0/self_attention/linear_0/bias"].reshape(3, 384)
    assert not k.any()
    value_bias = torch.from_numpy(v.astype("float32"))
    assert torch.equal(state_dict["encoder.blocks.0.attn.value.bias"], value_bias)


def test_both_conversions_compute_the_same_logits():
    import whisper

    openai_model = bundled_openai_model()
    hf_model, processor = bundled_transformers_model()
    samples = read_audio(SPEECH / "desk.flac").samples
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(samples))[None]
    tokens = torch.tensor([[50257, 50362, 317, 13224]])  # sot, notimestamps, " A", " laptop"
    with torch.inference_mode():
        ours = openai_model(mel, tokens)
        features = processor(samples, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        theirs = hf_model(features.input_features, decoder_input_ids=tokens).logits
    assert torch.allclose(features.input_features, mel, atol=1e-4)
    assert torch.allclose(ours, theirs, atol=2e-3), (ours - theirs).abs().max()
    # and the model hears the speech ("A laptop ..."): its first word starts with "A"
    assert int(ours[0, 1].argmax()) in (317, 1629)  # " A", " At"


def test_rejects_other_files(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(struct.pack("I", 2) + b"\0" * 16)
    with pytest.raises(PixmoError, match="CTranslate2 binary version 2 is not one of"):
        read_ct2_variables(bad)
    name = b"TransformerSpec"
    bad.write_bytes(struct.pack("I", 6) + struct.pack("H", len(name) + 1) + name + b"\0")
    with pytest.raises(PixmoError, match="expected a WhisperSpec model, found TransformerSpec"):
        read_ct2_variables(bad)
    with pytest.raises(PixmoError, match="unknown export format 'onnx'"):
        export_bundled("onnx", tmp_path / "x")
