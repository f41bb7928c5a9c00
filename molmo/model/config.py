"""Model configuration: one dataclass per component (vision, connector, LLM) and named presets.

Every architectural difference between the released Molmo models is a field here (``qkv_bias``,
``qk_norm``, ``norm_after``, ``moe_experts``...); nothing in the model code looks at a model name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pixmo.config import above, at_least, check_fields, from_mapping
from pixmo.errors import ConfigError, PixmoError

#: Vocabulary rows the official code appends as ``wte.new_embedding`` (hard-coded there).
OFFICIAL_ADDITIONAL_VOCAB = 128
POSITIVE = above(0)  # every size of a layer


@dataclass
class VisionConfig:
    """CLIP ViT layout (pre-LN, CLS token, learned positions, quick_gelu MLP)."""

    width: int = 1024  # = heads x head_dim
    heads: int = 16
    head_dim: int = 64
    layers: int = 23  # CLIP ViT-L/14-336 has 24; the official Molmo ViT keeps 23
    mlp_hidden: int = 4096
    patch_size: int = 14
    image_size: int = 336
    norm_eps: float = 1e-5
    feature_layers: tuple[int, ...] = (-2, -9)

    def __post_init__(self) -> None:
        check_fields(self, width=POSITIVE, heads=POSITIVE, head_dim=POSITIVE, layers=POSITIVE,
                     mlp_hidden=POSITIVE, patch_size=POSITIVE, image_size=POSITIVE)
        self.feature_layers = tuple(self.feature_layers)
        if self.heads * self.head_dim != self.width:
            raise ConfigError(f"x heads must equal width {self.width}, got {self.head_dim} x "
                              f"{self.heads}", field="VisionConfig.head_dim")
        if self.image_size % self.patch_size:
            raise ConfigError(f"must be a multiple of patch_size {self.patch_size}, got "
                              f"{self.image_size}", field="VisionConfig.image_size")
        if not self.feature_layers:
            raise ConfigError("needs at least one layer", field="VisionConfig.feature_layers")
        for layer in self.feature_layers:
            if not -self.layers <= layer < self.layers:
                raise ConfigError(f"has layer {layer}, outside a {self.layers}-layer ViT",
                                  field="VisionConfig.feature_layers")

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

    pool_size: int = 2  # pooled tokens cover pool_size x pool_size patches
    pool_heads: int = 16  # the official format ties pool_heads and pool_head_dim to the ViT's
    pool_head_dim: int = 64
    projector_hidden: int = 18944  # ... and projector_hidden to the LLM's mlp_hidden
    pad_embed: bool = True  # official "pad_and_partial_pad"

    def __post_init__(self) -> None:
        check_fields(self, pool_size=POSITIVE, pool_heads=POSITIVE, pool_head_dim=POSITIVE,
                     projector_hidden=POSITIVE)

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
        check_fields(self, d_model=POSITIVE, layers=POSITIVE, heads=POSITIVE, kv_heads=POSITIVE,
                     mlp_hidden=POSITIVE, vocab_size=POSITIVE, embedding_size=POSITIVE,
                     max_seq_len=POSITIVE, additional_vocab_size=at_least(0),
                     moe_experts=at_least(0))
        if self.d_model % self.heads:
            raise ConfigError(f"must divide d_model {self.d_model}, got {self.heads}",
                              field="LLMConfig.heads")
        if self.heads % self.kv_heads:
            raise ConfigError(f"must divide heads {self.heads}, got {self.kv_heads}",
                              field="LLMConfig.kv_heads")
        if self.head_dim % 2:
            raise ConfigError(f"must leave an even head_dim for RoPE, got head_dim "
                              f"{self.head_dim}", field="LLMConfig.heads")
        if self.moe_experts and not 0 < self.moe_top_k <= self.moe_experts:
            raise ConfigError(f"must be in 1..moe_experts ({self.moe_experts}), got "
                              f"{self.moe_top_k}", field="LLMConfig.moe_top_k")

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
            raise ConfigError(f"must divide the ViT grid {self.vision.grid}, got "
                              f"{self.connector.pool_size}", field="ConnectorConfig.pool_size")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None,
                  where: str = "model") -> MolmoConfig:
        """Build from ``to_dict`` output, typed and checked like any config mapping: unknown
        keys are an error, not silently ignored. ``source`` is the file, ``where`` the key."""
        try:
            return from_mapping(cls, data, where)
        except PixmoError as exc:
            if source is None:
                raise
            raise exc.located(file=source) from exc


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
