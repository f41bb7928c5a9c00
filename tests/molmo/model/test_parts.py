"""molmo/model/parts.py: a Molmo from tiny random transformers models (Qwen2, Olmo2, OLMoE;
CLIPModel and CLIPVisionModel) gives their logits and hidden states, the fresh parts follow the
official init, a training config builds it, and what we cannot represent is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from molmo.model.parts import INIT_STD, from_parts
from molmo.preprocess.crops import patchify
from molmo.train.config import TrainConfig
from molmo.train.loop import build_model
from pixmo.errors import PixmoError

VOCAB = 96
LLM = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
# 10 blocks, so the official feature layers (-2, -9) of the 9 kept blocks exist.
VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=10, num_attention_heads=4,
           image_size=56, patch_size=14)
THETA = 5e5


def _rope(theta: float) -> dict[str, Any]:
    return {"rope_parameters": {"rope_type": "default", "rope_theta": theta}}


LLMS = {  # name: (model class, config, save_pretrained arguments)
    "qwen2-sharded": (transformers.Qwen2ForCausalLM,
                      transformers.Qwen2Config(**LLM, **_rope(THETA)), {"max_shard_size": "20KB"}),
    "qwen2-tied": (transformers.Qwen2ForCausalLM,
                   transformers.Qwen2Config(**LLM, **_rope(THETA), tie_word_embeddings=True), {}),
    "olmo2": (transformers.Olmo2ForCausalLM, transformers.Olmo2Config(**LLM, **_rope(THETA)), {}),
    "olmoe": (transformers.OlmoeForCausalLM,
              transformers.OlmoeConfig(**{**LLM, "intermediate_size": 16}, **_rope(THETA),
                                       num_experts=4, num_experts_per_tok=2), {}),
}
CLIPS = {
    "clip": (transformers.CLIPModel, transformers.CLIPConfig(
        vision_config=VIT, projection_dim=8,
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, vocab_size=50))),
    "clip-vision": (transformers.CLIPVisionModel, transformers.CLIPVisionConfig(**VIT)),
}


@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every tensor random (biases too, so a misplaced one shows): norms around 1."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen) * 0.2
        p.copy_(noise + 1 if "norm" in name and name.endswith("weight") else noise)
    return model.eval()


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    """Each tiny model saved by transformers, with the model itself."""
    root = tmp_path_factory.mktemp("parts")
    out = {}
    for seed, (name, (cls, cfg, *save)) in enumerate({**LLMS, **CLIPS}.items()):
        model = _randomize(cls(cfg), seed)
        model.save_pretrained(root / name, **(save[0] if save else {}))
        out[name] = (root / name, model)
    return out


@pytest.mark.parametrize("name", LLMS)
def test_logits_are_the_llms_own(parts, name):
    directory, hf = parts[name]
    model = from_parts(directory, parts["clip-vision"][0])
    llm = model.cfg.llm
    assert (llm.d_model, llm.layers, llm.heads, llm.kv_heads, llm.rope_theta) == (
        32, 2, 4, 2, THETA)
    assert llm.vocab_size == llm.embedding_size == VOCAB and llm.additional_vocab_size == 128
    assert llm.moe_experts == (4 if name == "olmoe" else 0)
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(input_ids=ids)[..., :VOCAB]
        theirs = hf(input_ids=ids).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_a_sharded_llm_is_read_from_its_index(parts):
    directory = parts["qwen2-sharded"][0]
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1


@pytest.mark.parametrize("name", CLIPS)
def test_vision_gives_clips_hidden_states_at_the_feature_layers(parts, name):
    directory, clip = parts[name]
    model = from_parts(parts["olmo2"][0], directory)
    # The official recipe: all blocks but the last, features from blocks -2 and -9 of those.
    assert model.cfg.vision.layers == 9 and model.cfg.vision.feature_layers == (-2, -9)
    assert model.vision.feature_blocks == [7, 0]
    images = torch.randn(3, 56, 56, 3, generator=torch.Generator().manual_seed(2))  # normalised
    patches = torch.from_numpy(patchify(images.numpy(), 14))  # the preprocessor's layout
    tower = clip.vision_model if name == "clip" else clip
    with torch.no_grad():
        hidden = tower(pixel_values=images.permute(0, 3, 1, 2),
                       output_hidden_states=True).hidden_states  # [embeddings, block 0, ...]
        ours = model.vision(patches)
    expected = torch.cat([hidden[b + 1][:, 1:] for b in (7, 0)], dim=-1)
    assert ours.shape == expected.shape == (3, 16, 64)
    assert (ours - expected).abs().max().item() <= 1e-4


def test_overrides_choose_blocks_and_feature_layers(parts):
    model = from_parts(parts["olmo2"][0], parts["clip"][0], vision_layers=10,
                       vision_feature_layers=(-1,), llm_max_seq_len=64)
    assert model.cfg.vision.layers == 10 and model.vision.feature_blocks == [9]
    assert model.cfg.llm.max_seq_len == 64


def test_fresh_parts_follow_the_official_init_and_the_seed(parts):
    llm, clip = parts["qwen2-sharded"][0], parts["clip"][0]
    torch.manual_seed(3)
    model = from_parts(llm, clip)
    weights = torch.cat([m.weight.flatten() for m in model.connector.modules()
                         if isinstance(m, torch.nn.Linear)])
    biases = [m.bias for m in model.connector.modules()
              if isinstance(m, torch.nn.Linear) and m.bias is not None]
    assert abs(weights.std().item() / INIT_STD - 1) < 0.05 and abs(weights.mean()) < 1e-3
    assert biases and all(bool((b == 0).all()) for b in biases)
    assert bool((model.connector.pad_embed == 0).all())
    extra = model.llm.embed.extra
    assert extra.shape == (128, 32) and abs(extra.std().item() / INIT_STD - 1) < 0.1
    torch.manual_seed(3)
    again = from_parts(llm, clip, dtype=torch.bfloat16)
    assert {p.dtype for p in again.parameters()} == {torch.bfloat16}
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(),
                            strict=True):
        assert torch.equal(a.to(torch.bfloat16), b), name


def test_a_training_config_with_parts_builds_the_model(parts):
    llm, clip = parts["olmoe"][0], parts["clip-vision"][0]
    cfg = TrainConfig.from_dict({
        "run_dir": "r", "data": {"datasets": [{"name": "d", "source": "shards"}]},
        "model": {"llm": str(llm), "vision": str(clip),
                  "overrides": {"vision": {"feature_layers": [-1, -3]}}}})
    assert cfg.model.preset is None and cfg.model.tokenizer_dir == str(llm)
    model = build_model(cfg.model)
    assert model.cfg.vision.feature_layers == (-1, -3) and model.cfg.llm.moe_experts == 4
    torch.testing.assert_close(model.llm.embed.base, parts["olmoe"][1].model.embed_tokens.weight)
    # One image crop through the connector into the LLM: 16 patches pool to 4 tokens.
    images = torch.randn(1, 1, 16, 588)
    ids = torch.arange(8)[None]
    logits = model(ids, images, torch.ones(1, 1, 16), torch.arange(1, 5).view(1, 1, 4))
    assert logits.shape == (1, 8, VOCAB) and bool(torch.isfinite(logits).all())


def _edited(src: Path, dst: Path, change: dict[str, Any], sub: str | None = None) -> Path:
    """A copy of a saved model whose config.json has ``change`` (in ``sub`` if given)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    (cfg[sub] if sub else cfg).update(change)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("part, change, sub, field, message", [
    ("olmo2", {"architectures": ["LlamaForCausalLM"]}, None, "architectures",
     "'LlamaForCausalLM' is not supported; supported: Qwen2ForCausalLM, Olmo2ForCausalLM"),
    ("qwen2-tied", {"use_sliding_window": True}, None, "use_sliding_window",
     "True is not supported"),
    ("olmo2", {"hidden_act": "gelu"}, None, "hidden_act", "'gelu' is not supported"),
    ("olmo2", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, None,
     "rope_parameters", "rope_type 'yarn' is not supported"),
    ("olmoe", {"norm_topk_prob": True}, None, "norm_topk_prob", "True is not supported"),
    ("olmoe", {"clip_qkv": 8.0}, None, "clip_qkv", "8.0 is not supported"),
    ("clip", {"hidden_act": "gelu"}, "vision_config", "hidden_act", "'gelu' is not supported"),
    ("clip-vision", {"model_type": "siglip_vision_model"}, None, "model_type",
     "is not a CLIP model"),
    ("olmo2", {"num_hidden_layers": 3}, None, None, "tensors missing, e.g. ['llm.blocks.2."),
    ("olmo2", {"num_hidden_layers": 1}, None, "model.layers.1.",
     "does not exist in this config"),
])
def test_what_we_cannot_represent_is_one_line(parts, tmp_path, part, change, sub, field,
                                              message):
    edited = _edited(parts[part][0], tmp_path / part, change, sub)
    llm, vision = ((parts["olmo2"][0], edited) if part.startswith("clip")
                   else (edited, parts["clip"][0]))
    with pytest.raises(PixmoError) as err:
        from_parts(llm, vision)
    text = str(err.value)
    assert "\n" not in text and message in text and str(edited) in text
    assert err.value.field is None if field is None else err.value.field.startswith(field)


@pytest.mark.parametrize("overrides, message", [
    ({"llm_d_model": 64}, "field llm.d_model: comes from "),
    ({"vision_width": 64}, "field vision.width: comes from "),
    ({"vision_layers": 11}, "11 ViT blocks asked for, the CLIP model has 10"),
    ({"vision_feature_layers": (-12,)}, "model.vision.feature_layers has layer -12, outside a "
                                        "9-layer ViT"),
    ({"bogus": 1}, "unknown override 'bogus'"),
])
def test_overrides_the_parts_fix_are_refused(parts, overrides, message):
    with pytest.raises(PixmoError) as err:
        from_parts(parts["olmo2"][0], parts["clip"][0], **overrides)
    assert message in str(err.value) and "\n" not in str(err.value)
