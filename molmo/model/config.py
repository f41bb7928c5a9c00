"""Model configuration: one dataclass per component, named presets, official config.json I/O.

Every architectural difference between the released Molmo models is a field here (``qkv_bias``,
``qk_norm``, ``norm_after``, ``moe_experts``...); nothing in the model code looks at a model name.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixmo.errors import PixmoError

#: Vocabulary rows the official code appends as ``wte.new_embedding`` (hard-coded there).
OFFICIAL_ADDITIONAL_VOCAB = 128


def _positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or value <= 0:
            raise PixmoError(f"must be a positive integer, got {value!r}", field=name)


@dataclass
class VisionConfig:
    """CLIP ViT layout (pre-LN, CLS token, learned positions, quick_gelu MLP)."""

    width: int = 1024
    heads: int = 16
    head_dim: int = 64
    layers: int = 23
    mlp_hidden: int = 4096
    patch_size: int = 14
    image_size: int = 336
    norm_eps: float = 1e-5
    feature_layers: tuple[int, ...] = (-2, -9)

    def __post_init__(self) -> None:
        _positive(self, "width", "heads", "head_dim", "layers", "mlp_hidden", "patch_size",
                  "image_size")
        self.feature_layers = tuple(self.feature_layers)
        if self.heads * self.head_dim != self.width:
            raise PixmoError(f"heads*head_dim = {self.heads * self.head_dim} must equal width "
                             f"{self.width}", field="head_dim")
        if self.image_size % self.patch_size:
            raise PixmoError(f"image_size {self.image_size} is not a multiple of patch_size "
                             f"{self.patch_size}", field="image_size")
        if not self.feature_layers:
            raise PixmoError("needs at least one layer", field="feature_layers")
        for layer in self.feature_layers:
            if not -self.layers <= layer < self.layers:
                raise PixmoError(f"layer {layer} outside a {self.layers}-layer ViT",
                                 field="feature_layers")

    @property
    def grid(self) -> int:
        """Patches per side of one crop (24 for 336/14)."""
        return self.image_size // self.patch_size

    @property
    def patch_dim(self) -> int:
        """Values in one flattened patch (14*14*3 = 588)."""
        return self.patch_size * self.patch_size * 3

    @property
    def feature_dim(self) -> int:
        """Width of the concatenated multi-layer features the connector receives."""
        return self.width * len(self.feature_layers)


@dataclass
class ConnectorConfig:
    """2x2 attention pooling (mean query) followed by a SwiGLU projector into the LLM width."""

    pool_size: int = 2
    pool_heads: int = 16
    pool_head_dim: int = 64
    projector_hidden: int = 18944
    pad_embed: bool = True  # official "pad_and_partial_pad"

    def __post_init__(self) -> None:
        _positive(self, "pool_size", "pool_heads", "pool_head_dim", "projector_hidden")

    @property
    def pool_dim(self) -> int:
        return self.pool_heads * self.pool_head_dim


@dataclass
class LLMConfig:
    """One decoder for Qwen2 (pre-norm, qkv bias), OLMo-1024 (post-norm, QK-norm) and OLMoE."""

    d_model: int = 3584
    layers: int = 28
    heads: int = 28
    kv_heads: int = 4
    mlp_hidden: int = 18944  # per SwiGLU half; official intermediate_size is twice this
    vocab_size: int = 152064  # tokenizer vocabulary (recorded; ids beyond it are Molmo tokens)
    embedding_size: int = 152064  # rows of the base embedding and columns of the logits
    additional_vocab_size: int = OFFICIAL_ADDITIONAL_VOCAB
    rope_theta: float = 1e6
    norm_eps: float = 1e-6
    qkv_bias: bool = True
    qk_norm: bool = False
    norm_after: bool = False
    moe_experts: int = 0  # 0 = dense SwiGLU MLP
    moe_top_k: int = 0
    max_seq_len: int = 4096
    dense_attention_mask: bool = False  # official-style float mask everywhere (benchmark baseline)

    def __post_init__(self) -> None:
        _positive(self, "d_model", "layers", "heads", "kv_heads", "mlp_hidden", "vocab_size",
                  "embedding_size", "max_seq_len")
        if self.d_model % self.heads:
            raise PixmoError(f"d_model {self.d_model} not divisible by heads {self.heads}",
                             field="heads")
        if self.heads % self.kv_heads:
            raise PixmoError(f"heads {self.heads} not divisible by kv_heads {self.kv_heads}",
                             field="kv_heads")
        if self.head_dim % 2:
            raise PixmoError(f"head_dim {self.head_dim} must be even for RoPE", field="heads")
        if self.additional_vocab_size < 0:
            raise PixmoError("must be >= 0", field="additional_vocab_size")
        if self.moe_experts < 0:
            raise PixmoError("must be >= 0", field="moe_experts")
        if self.moe_experts and not 0 < self.moe_top_k <= self.moe_experts:
            raise PixmoError(f"moe_top_k {self.moe_top_k} must be in 1..moe_experts "
                             f"({self.moe_experts})", field="moe_top_k")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads


@dataclass
class MolmoConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)

    def __post_init__(self) -> None:
        if self.vision.grid % self.connector.pool_size:
            raise PixmoError(f"ViT grid {self.vision.grid} not divisible by pool_size "
                             f"{self.connector.pool_size}", field="connector.pool_size")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> MolmoConfig:
        """Build from ``to_dict`` output; unknown keys are an error, not silently ignored."""
        parts = {"vision": VisionConfig, "connector": ConnectorConfig, "llm": LLMConfig}
        unknown = set(data) - set(parts)
        if unknown:
            raise PixmoError(f"unknown keys {sorted(unknown)}", file=source)
        kwargs = {}
        for name, klass in parts.items():
            sub = dict(data.get(name, {}))
            names = {f.name for f in dataclasses.fields(klass)}
            bad = set(sub) - names
            if bad:
                raise PixmoError(f"unknown keys {sorted(bad)}", file=source, field=name)
            kwargs[name] = klass(**sub)
        return cls(**kwargs)


def _tiny() -> MolmoConfig:
    # Same sizes as tests/data/molmo_official_tiny (official code, shrunk ViT).
    return MolmoConfig(
        vision=VisionConfig(width=48, heads=4, head_dim=12, layers=10, mlp_hidden=112),
        connector=ConnectorConfig(pool_heads=4, pool_head_dim=12, projector_hidden=96),
        llm=LLMConfig(d_model=64, layers=2, heads=4, kv_heads=2, mlp_hidden=96, vocab_size=512,
                      embedding_size=512, rope_theta=1e6, norm_eps=1e-6),
    )


def _released(d_model: int, layers: int, heads: int, kv_heads: int, mlp_hidden: int,
              vocab: int, embedding: int, theta: float, eps: float, **llm: Any) -> MolmoConfig:
    return MolmoConfig(
        connector=ConnectorConfig(projector_hidden=mlp_hidden),
        llm=LLMConfig(d_model=d_model, layers=layers, heads=heads, kv_heads=kv_heads,
                      mlp_hidden=mlp_hidden, vocab_size=vocab, embedding_size=embedding,
                      rope_theta=theta, norm_eps=eps, **llm),
    )


PRESETS: dict[str, Callable[[], MolmoConfig]] = {
    # Released models (reference/molmo.md sections 4, 4.2 and 5).
    "molmo-7b-d": lambda: _released(3584, 28, 28, 4, 18944, 152064, 152064, 1e6, 1e-6),
    "molmo-7b-o": lambda: _released(4096, 32, 32, 32, 11008, 100278, 100352, 5e5, 1e-6,
                                    qkv_bias=False, qk_norm=True, norm_after=True),
    "molmoe-1b": lambda: _released(2048, 16, 16, 16, 1024, 50280, 50304, 1e4, 1e-5,
                                   qkv_bias=False, qk_norm=True, moe_experts=64, moe_top_k=8,
                                   max_seq_len=32768),
    "molmo-72b": lambda: _released(8192, 80, 64, 8, 29568, 152064, 152064, 1e6, 1e-5),
    # Small models for tests, the demo and benchmarks (random init).
    "tiny": _tiny,
    "tiny-olmo": lambda: dataclasses.replace(
        _tiny(), llm=dataclasses.replace(_tiny().llm, qkv_bias=False, qk_norm=True,
                                         norm_after=True)),
    "tiny-moe": lambda: dataclasses.replace(
        _tiny(), connector=dataclasses.replace(_tiny().connector, projector_hidden=32),
        llm=dataclasses.replace(_tiny().llm, qkv_bias=False, qk_norm=True, moe_experts=8,
                                moe_top_k=2, mlp_hidden=32)),
    # `make demo`: trains from scratch on 2 CPU processes in a few minutes; 112-pixel crops
    # (8x8 patches, 16 pooled tokens) make a step about 6x cheaper than 336.
    "demo": lambda: MolmoConfig(
        vision=VisionConfig(width=64, heads=4, head_dim=16, layers=4, mlp_hidden=256,
                            image_size=112, feature_layers=(-1, -3)),
        connector=ConnectorConfig(pool_heads=4, pool_head_dim=16, projector_hidden=256),
        llm=LLMConfig(d_model=128, layers=4, heads=4, kv_heads=2, mlp_hidden=256,
                      vocab_size=512, embedding_size=512)),
    "small": lambda: MolmoConfig(
        vision=VisionConfig(width=192, heads=3, head_dim=64, layers=4, mlp_hidden=768,
                            feature_layers=(-2, -4)),
        connector=ConnectorConfig(pool_heads=3, pool_head_dim=64, projector_hidden=512),
        llm=LLMConfig(d_model=256, layers=4, heads=4, kv_heads=2, mlp_hidden=512,
                      vocab_size=4096, embedding_size=4096)),
    # ~1.3B total (1.0B LLM + CLIP-L ViT): GPU throughput / MFU benchmark.
    "dense-1b": lambda: _released(2048, 16, 16, 16, 5632, 50280, 50304, 1e4, 1e-5,
                                  qkv_bias=False),
}


def preset(name: str) -> MolmoConfig:
    """A fresh config for a named preset (``molmo-7b-d``, ``tiny``...)."""
    if name not in PRESETS:
        raise PixmoError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}", field="preset")
    return PRESETS[name]()


# ---- official (Hugging Face hub) config.json ------------------------------------------------

_CLIP_L = VisionConfig()


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

    if cfg.get("layer_norm_type", "rms") != "rms":
        raise PixmoError("only RMSNorm is supported", file=src, field="layer_norm_type")
    if cfg.get("clip_qkv") is not None:
        raise PixmoError("clip_qkv is not supported", file=src, field="clip_qkv")
    if cfg.get("weight_tying") or cfg.get("tie_word_embeddings"):
        raise PixmoError("tied embeddings are not supported", file=src, field="weight_tying")

    try:
        if "d_model" in cfg:  # native OLMo-style keys (MolmoE)
            hidden = cfg.get("mlp_hidden_size") or cfg["mlp_ratio"] * cfg["d_model"]
            moe = cfg.get("block_type") == "moe"
            llm = LLMConfig(
                d_model=cfg["d_model"], layers=cfg["n_layers"], heads=cfg["n_heads"],
                kv_heads=cfg.get("n_kv_heads") or cfg["n_heads"], mlp_hidden=hidden // 2,
                vocab_size=cfg["vocab_size"], embedding_size=cfg["embedding_size"],
                additional_vocab_size=cfg.get("additional_vocab_size",
                                              OFFICIAL_ADDITIONAL_VOCAB),
                rope_theta=cfg["rope_theta"], norm_eps=cfg["layer_norm_eps"],
                qkv_bias=bool(cfg.get("qkv_bias") or cfg.get("include_bias")),
                qk_norm=bool(cfg.get("attention_layer_norm", False)),
                norm_after=bool(cfg.get("norm_after", False)),
                moe_experts=cfg["moe_num_experts"] if moe else 0,
                moe_top_k=cfg["moe_top_k"] if moe else 0,
                max_seq_len=cfg.get("max_position_embeddings")
                or cfg.get("max_sequence_length", 4096),
            )
        else:  # HF-style keys (7B-D, 7B-O, 72B)
            llm = LLMConfig(
                d_model=cfg["hidden_size"], layers=cfg["num_hidden_layers"],
                heads=cfg["num_attention_heads"],
                kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
                mlp_hidden=cfg["intermediate_size"] // 2, vocab_size=cfg["vocab_size"],
                embedding_size=cfg.get("embedding_size") or cfg["vocab_size"],
                additional_vocab_size=cfg.get("additional_vocab_size",
                                              OFFICIAL_ADDITIONAL_VOCAB),
                rope_theta=cfg["rope_theta"], norm_eps=cfg["layer_norm_eps"],
                qkv_bias=bool(cfg.get("qkv_bias", False)),
                qk_norm=bool(cfg.get("attention_layer_norm", False)),
                norm_after=bool(cfg.get("norm_after", False)),
                max_seq_len=cfg.get("max_position_embeddings", 4096),
            )
    except KeyError as err:
        raise PixmoError("missing key", file=src, field=str(err.args[0])) from None
    for key, supported in (("image_pooling_2d", "attention-meanq"), ("image_projector", "mlp")):
        if cfg.get(key, supported) != supported:
            raise PixmoError(f"only {supported!r} is supported", file=src, field=key)
    padding = cfg.get("image_padding_embed", "pad_and_partial_pad")
    if padding not in ("pad_and_partial_pad", None):
        raise PixmoError(f"unsupported value {padding!r}", file=src, field="image_padding_embed")
    connector = ConnectorConfig(pool_heads=vision.heads, pool_head_dim=vision.head_dim,
                                projector_hidden=llm.mlp_hidden, pad_embed=padding is not None)
    return MolmoConfig(vision=vision, connector=connector, llm=llm)


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
    if llm.moe_experts:
        out: dict[str, Any] = {
            "architectures": ["OLMoForCausalLM"], "model_type": "molmo",
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
    else:
        out = {
            "architectures": ["MolmoForCausalLM"], "model_type": "molmo",
            "auto_map": {"AutoConfig": "config_molmo.MolmoConfig",
                         "AutoModelForCausalLM": "modeling_molmo.MolmoForCausalLM"},
            "hidden_size": llm.d_model, "num_hidden_layers": llm.layers,
            "num_attention_heads": llm.heads, "num_key_value_heads": llm.kv_heads,
            "intermediate_size": 2 * llm.mlp_hidden, "vocab_size": llm.vocab_size,
            "embedding_size": llm.embedding_size, "max_position_embeddings": llm.max_seq_len,
            "rope_theta": llm.rope_theta, "layer_norm_eps": llm.norm_eps,
            "layer_norm_type": "rms", "qkv_bias": llm.qkv_bias, "clip_qkv": None,
            "attention_layer_norm": llm.qk_norm, "norm_after": llm.norm_after,
            "weight_tying": False, "tie_word_embeddings": False, "use_position_ids": True,
            "torch_dtype": "float32",
        }
        if llm.additional_vocab_size != OFFICIAL_ADDITIONAL_VOCAB:
            out["additional_vocab_size"] = llm.additional_vocab_size
    vb = {
        "image_emb_dim": vision.width, "image_num_heads": vision.heads,
        "image_num_key_value_heads": vision.heads, "image_head_dim": vision.head_dim,
        "image_num_layers": vision.layers, "image_mlp_dim": vision.mlp_hidden,
        "image_patch_size": vision.patch_size,
        "image_default_input_size": [vision.image_size, vision.image_size],
        "image_norm_eps": vision.norm_eps, "image_mlp_activations": "quick_gelu",
        "image_num_pos": vision.grid**2 + 1,
    }
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
