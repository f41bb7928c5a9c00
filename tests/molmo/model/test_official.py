"""Official hub config.json files: the four released models read as our presets, our writer
round-trips them, the ViT sizes travel in vision_backbone.json, and errors name the key."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from molmo.model.config import preset
from molmo.model.official import from_official_config, to_official_config
from pixmo.errors import PixmoError

HUB_7B_D = {  # reference/molmo.md section 5 keys, 7B-D values from the section 4 table
    "architectures": ["MolmoForCausalLM"], "model_type": "molmo", "hidden_size": 3584,
    "intermediate_size": 37888, "num_hidden_layers": 28, "num_attention_heads": 28,
    "num_key_value_heads": 4, "vocab_size": 152064, "embedding_size": 152064,
    "max_position_embeddings": 4096, "rope_theta": 1000000.0, "layer_norm_eps": 1e-06,
    "layer_norm_type": "rms", "qkv_bias": True, "clip_qkv": None, "attention_layer_norm": False,
    "norm_after": False, "weight_tying": False, "tie_word_embeddings": False,
    "use_position_ids": True, "torch_dtype": "float32",
}
HUB_7B_O = {**HUB_7B_D, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": None, "vocab_size": 100278,
            "embedding_size": 100352, "rope_theta": 500000.0, "qkv_bias": False,
            "attention_layer_norm": True, "norm_after": True}
HUB_72B = {**HUB_7B_D, "hidden_size": 8192, "intermediate_size": 59136, "num_hidden_layers": 80,
           "num_attention_heads": 64, "num_key_value_heads": 8, "layer_norm_eps": 1e-05}
HUB_MOLMOE = {  # reference/molmo.md section 4.2 (native-style keys)
    "architectures": ["OLMoForCausalLM"], "d_model": 2048, "n_heads": 16, "n_kv_heads": None,
    "n_layers": 16, "mlp_ratio": 1, "mlp_hidden_size": None, "block_type": "moe",
    "moe_num_experts": 64, "moe_top_k": 8, "moe_dropless": True, "vocab_size": 50280,
    "embedding_size": 50304, "additional_vocab_size": 128, "rope_theta": 10000.0,
    "layer_norm_eps": 1e-05, "max_position_embeddings": 32768, "attention_layer_norm": True,
    "vit_layers": [-2, -9], "image_pooling_2d": "attention-meanq",
    "image_padding_embed": "pad_and_partial_pad",
    "vision_backbone": {"image_emb_dim": 1024, "image_num_heads": 16, "image_head_dim": 64,
                        "image_num_layers": 23, "image_mlp_dim": 4096,
                        "image_default_input_size": [336, 336], "image_patch_size": 14},
}


@pytest.mark.parametrize(("hub", "name"), [(HUB_7B_D, "molmo-7b-d"), (HUB_7B_O, "molmo-7b-o"),
                                           (HUB_72B, "molmo-72b"), (HUB_MOLMOE, "molmoe-1b")])
def test_hub_config_reads_as_preset(tmp_path: Path, hub: dict, name: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps(hub))
    assert from_official_config(tmp_path / "config.json") == preset(name)
    # ...and our writer gives back a config that reads the same (no vision_backbone.json needed).
    written, vision = to_official_config(preset(name))
    assert vision is None
    (tmp_path / "config.json").write_text(json.dumps(written))
    assert from_official_config(tmp_path / "config.json") == preset(name)


def test_hub_config_errors_name_the_field(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({**HUB_7B_D, "layer_norm_type": "default"}))
    with pytest.raises(PixmoError, match="field layer_norm_type"):
        from_official_config(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(PixmoError, match="field num_hidden_layers"):
        from_official_config(tmp_path / "config.json")


def test_a_non_clip_l_vit_travels_in_vision_backbone_json(tmp_path: Path) -> None:
    cfg = preset("tiny")
    written, vision = to_official_config(cfg)
    assert vision is not None and written["vit_layers"] == [-2, -9]
    assert vision["vision_backbone"]["image_emb_dim"] == 48
    (tmp_path / "config.json").write_text(json.dumps(written))
    (tmp_path / "vision_backbone.json").write_text(json.dumps(vision))
    assert from_official_config(tmp_path / "config.json") == cfg


def test_connector_sizes_the_official_format_cannot_store_are_refused() -> None:
    cfg = preset("tiny")
    odd = dataclasses.replace(cfg, connector=dataclasses.replace(cfg.connector,
                                                                 projector_hidden=80))
    with pytest.raises(PixmoError, match="field connector.projector_hidden: the official "
                                         "format requires 96, got 80"):
        to_official_config(odd)
    unpadded = dataclasses.replace(cfg, connector=dataclasses.replace(cfg.connector,
                                                                      pad_embed=False))
    assert to_official_config(unpadded)[0]["image_padding_embed"] is None
