"""Model configs: presets, the dict round trip of our checkpoints, and checks that name the
field (``Class.field`` in Python, the key path when read from a mapping)."""

from __future__ import annotations

import pytest

from molmo.model.config import (
    PRESETS,
    ConnectorConfig,
    LLMConfig,
    MolmoConfig,
    VisionConfig,
    preset,
)
from pixmo.errors import ConfigError, PixmoError


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_round_trips_through_its_dict(name: str) -> None:
    cfg = preset(name)
    assert MolmoConfig.from_dict(cfg.to_dict()) == cfg
    assert preset(name) is not cfg  # a fresh config each time: callers may change it


def test_derived_sizes_of_the_released_7b() -> None:
    cfg = preset("molmo-7b-d")
    assert (cfg.vision.grid, cfg.vision.patch_dim, cfg.vision.feature_dim) == (24, 588, 2048)
    assert (cfg.connector.pool_dim, cfg.llm.head_dim) == (1024, 128)


@pytest.mark.parametrize(("build", "message"), [
    (lambda: LLMConfig(heads=28, kv_heads=5), "LLMConfig.kv_heads must divide heads 28, got 5"),
    (lambda: LLMConfig(d_model=100, heads=28), "LLMConfig.heads must divide d_model 100"),
    (lambda: LLMConfig(moe_experts=4, moe_top_k=5),
     "LLMConfig.moe_top_k must be in 1..moe_experts (4), got 5"),
    (lambda: LLMConfig(layers=0), "LLMConfig.layers must be > 0, got 0"),
    (lambda: LLMConfig(moe_experts=-1), "LLMConfig.moe_experts must be >= 0, got -1"),
    (lambda: VisionConfig(layers=4), "VisionConfig.feature_layers has layer -9, outside a "
                                     "4-layer ViT"),
    (lambda: VisionConfig(head_dim=32), "VisionConfig.head_dim x heads must equal width 1024"),
    (lambda: VisionConfig(image_size=300), "VisionConfig.image_size must be a multiple of "
                                           "patch_size 14, got 300"),
    (lambda: ConnectorConfig(pool_heads=0), "ConnectorConfig.pool_heads must be > 0, got 0"),
    (lambda: MolmoConfig(connector=ConnectorConfig(pool_size=5)),
     "ConnectorConfig.pool_size must divide the ViT grid 24, got 5"),
])
def test_checks_name_the_field(build, message) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    assert message in str(info.value)


def test_from_dict_names_the_key_and_the_file() -> None:
    with pytest.raises(PixmoError, match=r"^x.json, field model.llm: unknown keys \['layer'\]$"):
        MolmoConfig.from_dict({"llm": {"layer": 2}}, source="x.json")
    with pytest.raises(ConfigError, match=r"^model.overrides.llm.kv_heads must be int, got 0.5$"):
        MolmoConfig.from_dict({"llm": {"kv_heads": 0.5}}, where="model.overrides")
    with pytest.raises(ConfigError, match="^model.vision.width must be > 0, got 0$"):
        MolmoConfig.from_dict({"vision": {"width": 0}})
    with pytest.raises(PixmoError, match="field preset: unknown preset 'molmo-13b'"):
        preset("molmo-13b")
