"""Official (Hugging Face hub) ``config.json`` files to and from our ``MolmoConfig``.

The released 7B and 72B configs use HF-style keys, MolmoE's native OLMo-style keys; the official
7B code hard-codes the CLIP-L ViT, so other ViT sizes travel in a ``vision_backbone.json``.
Values our model cannot reproduce are refused by key name, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from molmo.model.config import (
    OFFICIAL_ADDITIONAL_VOCAB,
    ConnectorConfig,
    LLMConfig,
    MolmoConfig,
    VisionConfig,
)
from pixmo.errors import PixmoError

_CLIP_L = VisionConfig()

# The hub repositories whose remote code reads each family's config.json; ``auto_map`` names
# them ("repo--module.Class"), so a written checkpoint needs no code files of its own.
MOLMO_7B_D_REPO = "allenai/Molmo-7B-D-0924"  # Qwen2 LLM, no qk-norm (72B: the same code)
MOLMO_7B_O_REPO = "allenai/Molmo-7B-O-0924"  # OLMo LLM with qk-norm
MOLMOE_REPO = "allenai/MolmoE-1B-0924"  # OLMoE, native OLMo-style keys


def remote_code_map(repo: str, stem: str) -> dict[str, str]:
    """``auto_map`` naming ``repo``'s ``config_{stem}.py`` and ``modeling_{stem}.py``."""
    return {"AutoConfig": f"{repo}--config_{stem}.MolmoConfig",
            "AutoModelForCausalLM": f"{repo}--modeling_{stem}.MolmoForCausalLM"}


def _vision_from_official(vb: dict[str, Any], vit_layers: Any, source: str) -> VisionConfig:
    size = vb.get("image_default_input_size", [_CLIP_L.image_size, _CLIP_L.image_size])
    if vb.get("image_mlp_activations", "quick_gelu") != "quick_gelu":
        raise PixmoError(f"unsupported activation {vb['image_mlp_activations']!r}", file=source,
                         field="image_mlp_activations")
    if vb.get("image_num_key_value_heads", vb.get("image_num_heads")) != vb.get("image_num_heads"):
        raise PixmoError("ViT grouped-query attention is not supported", file=source,
                         field="image_num_key_value_heads")
    return VisionConfig(
        width=vb.get("image_emb_dim", _CLIP_L.width),
        heads=vb.get("image_num_heads", _CLIP_L.heads),
        head_dim=vb.get("image_head_dim", _CLIP_L.head_dim),
        layers=vb.get("image_num_layers", _CLIP_L.layers),
        mlp_hidden=vb.get("image_mlp_dim", _CLIP_L.mlp_hidden),
        patch_size=vb.get("image_patch_size", _CLIP_L.patch_size),
        image_size=int(size[0]),
        norm_eps=vb.get("image_norm_eps", _CLIP_L.norm_eps),
        feature_layers=tuple(vit_layers or _CLIP_L.feature_layers),
    )


def _llm_keys(cfg: dict[str, Any]) -> dict[str, Any]:
    """The family's own keys: native OLMo-style (MolmoE) or HF-style (7B, 72B)."""
    if "d_model" in cfg:  # native OLMo-style keys (MolmoE)
        hidden = cfg.get("mlp_hidden_size") or cfg["mlp_ratio"] * cfg["d_model"]
        moe = cfg.get("block_type") == "moe"
        return {
            "d_model": cfg["d_model"], "layers": cfg["n_layers"], "heads": cfg["n_heads"],
            "kv_heads": cfg.get("n_kv_heads") or cfg["n_heads"], "mlp_hidden": hidden // 2,
            "vocab_size": cfg["vocab_size"], "embedding_size": cfg["embedding_size"],
            "qkv_bias": bool(cfg.get("qkv_bias") or cfg.get("include_bias")),
            "moe_experts": cfg["moe_num_experts"] if moe else 0,
            "moe_top_k": cfg["moe_top_k"] if moe else 0,
            "max_seq_len": cfg.get("max_position_embeddings")
            or cfg.get("max_sequence_length", 4096),
        }
    return {
        "d_model": cfg["hidden_size"], "layers": cfg["num_hidden_layers"],
        "heads": cfg["num_attention_heads"],
        "kv_heads": cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        "mlp_hidden": cfg["intermediate_size"] // 2, "vocab_size": cfg["vocab_size"],
        "embedding_size": cfg.get("embedding_size") or cfg["vocab_size"],
        "qkv_bias": bool(cfg.get("qkv_bias", False)),
        "max_seq_len": cfg.get("max_position_embeddings", 4096),
    }


def _llm_from_official(cfg: dict[str, Any]) -> LLMConfig:
    """The LLM of a hub config; the keys both families spell the same way are read once."""
    return LLMConfig(
        **_llm_keys(cfg), rope_theta=cfg["rope_theta"], norm_eps=cfg["layer_norm_eps"],
        additional_vocab_size=cfg.get("additional_vocab_size", OFFICIAL_ADDITIONAL_VOCAB),
        qk_norm=bool(cfg.get("attention_layer_norm", False)),
        norm_after=bool(cfg.get("norm_after", False)),
    )


def _refuse_unsupported(cfg: dict[str, Any], src: str) -> None:
    """Hub config values our model cannot reproduce, named by their key."""
    if cfg.get("layer_norm_type", "rms") != "rms":
        raise PixmoError("only RMSNorm is supported", file=src, field="layer_norm_type")
    if cfg.get("clip_qkv") is not None:
        raise PixmoError("clip_qkv is not supported", file=src, field="clip_qkv")
    if cfg.get("weight_tying") or cfg.get("tie_word_embeddings"):
        raise PixmoError("tied embeddings are not supported", file=src, field="weight_tying")
    for key, supported in (("image_pooling_2d", "attention-meanq"), ("image_projector", "mlp")):
        if cfg.get(key, supported) != supported:
            raise PixmoError(f"only {supported!r} is supported", file=src, field=key)
    padding = cfg.get("image_padding_embed", "pad_and_partial_pad")
    if padding not in ("pad_and_partial_pad", None):
        raise PixmoError(f"unsupported value {padding!r}", file=src, field="image_padding_embed")


def from_official_config(path: str | Path) -> MolmoConfig:
    """Read a hub ``config.json`` (HF-style keys for 7B-D/7B-O/72B, native keys for MolmoE).

    The official 7B code hard-codes the CLIP-L ViT; a ``vision_backbone.json`` next to the config
    (or a ``vision_backbone`` block inside it, as in MolmoE) overrides those sizes.
    """
    path = Path(path)
    src = str(path)
    cfg = json.loads(path.read_text())
    vb_file = path.with_name("vision_backbone.json")
    vb: dict[str, Any] = cfg.get("vision_backbone") or {}
    if vb_file.exists():
        vb = json.loads(vb_file.read_text()).get("vision_backbone", {})
    vision = _vision_from_official(vb, cfg.get("vit_layers"), src)
    _refuse_unsupported(cfg, src)
    try:
        llm = _llm_from_official(cfg)
    except KeyError as err:
        raise PixmoError("missing key", file=src, field=str(err.args[0])) from None
    connector = ConnectorConfig(pool_heads=vision.heads, pool_head_dim=vision.head_dim,
                                projector_hidden=llm.mlp_hidden,
                                pad_embed=cfg.get("image_padding_embed", "") is not None)
    return MolmoConfig(vision=vision, connector=connector, llm=llm)


def _native_llm_keys(llm: LLMConfig, vision: VisionConfig) -> dict[str, Any]:
    """The LLM in native OLMo-style keys, as MolmoE's config.json has them."""
    return {
        "architectures": ["OLMoForCausalLM"], "model_type": "molmo",
        "auto_map": remote_code_map(MOLMOE_REPO, "molmoe"),
        "d_model": llm.d_model, "n_heads": llm.heads,
        "n_kv_heads": None if llm.kv_heads == llm.heads else llm.kv_heads,
        "n_layers": llm.layers, "mlp_ratio": 1, "mlp_hidden_size": 2 * llm.mlp_hidden,
        "block_type": "moe", "moe_num_experts": llm.moe_experts, "moe_top_k": llm.moe_top_k,
        "vocab_size": llm.vocab_size, "embedding_size": llm.embedding_size,
        "additional_vocab_size": llm.additional_vocab_size, "rope_theta": llm.rope_theta,
        "layer_norm_eps": llm.norm_eps, "layer_norm_type": "rms",
        "attention_layer_norm": llm.qk_norm, "norm_after": llm.norm_after,
        "include_bias": False, "qkv_bias": llm.qkv_bias, "weight_tying": False,
        "max_position_embeddings": llm.max_seq_len, "vit_layers": list(vision.feature_layers),
    }


def _hf_llm_keys(llm: LLMConfig) -> dict[str, Any]:
    """The LLM in HF-style keys, as the 7B and 72B config.json files have them."""
    out = {
        "architectures": ["MolmoForCausalLM"], "model_type": "molmo",
        "auto_map": remote_code_map(MOLMO_7B_O_REPO if llm.qk_norm else MOLMO_7B_D_REPO, "molmo"),
        "hidden_size": llm.d_model, "num_hidden_layers": llm.layers,
        "num_attention_heads": llm.heads, "num_key_value_heads": llm.kv_heads,
        "intermediate_size": 2 * llm.mlp_hidden, "vocab_size": llm.vocab_size,
        "embedding_size": llm.embedding_size, "max_position_embeddings": llm.max_seq_len,
        "rope_theta": llm.rope_theta, "layer_norm_eps": llm.norm_eps,
        "layer_norm_type": "rms", "qkv_bias": llm.qkv_bias, "clip_qkv": None,
        "attention_layer_norm": llm.qk_norm, "norm_after": llm.norm_after,
        "weight_tying": False, "tie_word_embeddings": False, "use_position_ids": True,
        "torch_dtype": "float32", "use_cache": True, "initializer_range": 0.02,
    }
    if llm.additional_vocab_size != OFFICIAL_ADDITIONAL_VOCAB:
        out["additional_vocab_size"] = llm.additional_vocab_size
    return out


def _vision_backbone_keys(vision: VisionConfig) -> dict[str, Any]:
    return {
        "image_emb_dim": vision.width, "image_num_heads": vision.heads,
        "image_num_key_value_heads": vision.heads, "image_head_dim": vision.head_dim,
        "image_num_layers": vision.layers, "image_mlp_dim": vision.mlp_hidden,
        "image_patch_size": vision.patch_size,
        "image_default_input_size": [vision.image_size, vision.image_size],
        "image_norm_eps": vision.norm_eps, "image_mlp_activations": "quick_gelu",
        "image_num_pos": vision.grid**2 + 1,
    }


def to_official_config(cfg: MolmoConfig) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Hub ``config.json`` contents, plus ``vision_backbone.json`` contents when the ViT is not
    the CLIP-L that the official code hard-codes (None otherwise)."""
    llm, vision = cfg.llm, cfg.vision
    # The official configs derive these from the LLM and ViT sizes; other values cannot be stored.
    derived = {"projector_hidden": llm.mlp_hidden, "pool_heads": vision.heads,
               "pool_head_dim": vision.head_dim, "pool_size": 2}
    for name, value in derived.items():
        if getattr(cfg.connector, name) != value:
            raise PixmoError(f"the official format requires {value}, got "
                             f"{getattr(cfg.connector, name)}", field=f"connector.{name}")
    out = _native_llm_keys(llm, vision) if llm.moe_experts else _hf_llm_keys(llm)
    vb = _vision_backbone_keys(vision)
    if not cfg.connector.pad_embed:
        out["image_padding_embed"] = None
    if llm.moe_experts:
        out["vision_backbone"] = vb
        return out, None
    clip_l = dataclasses.replace(_CLIP_L, feature_layers=vision.feature_layers)
    if vision == clip_l and vision.feature_layers == _CLIP_L.feature_layers:
        return out, None
    out["vit_layers"] = list(vision.feature_layers)
    return out, {"vision_backbone": vb}
