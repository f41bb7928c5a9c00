"""molmo/train/config.py: YAML in, validated dataclasses out, every default written back."""

from __future__ import annotations

import pytest
import yaml

from molmo.train.config import LoraConfig, TrainConfig
from molmo.train.loop import main_train
from pixmo.errors import PixmoError
from tests.paths import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
MINIMAL = {"run_dir": "r", "model": {"preset": "tiny", "tokenizer": "tok"},
           "data": {"datasets": [{"name": "d", "source": "shards"}]}}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(path):
    cfg = TrainConfig.from_yaml(path)
    again = TrainConfig.from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert cfg.accumulation(1) * cfg.data.batch_size == cfg.global_batch_size


def test_shipped_configs_exist():
    assert {p.name for p in CONFIGS} >= {"tiny-cpu.yaml", "molmo-1b-fsdp.yaml"}


def test_defaults_are_the_official_recipe_and_all_written_out(tmp_path, capsys):
    cfg = TrainConfig.from_dict(MINIMAL)
    assert (cfg.optim.connector.lr, cfg.optim.vit.lr, cfg.optim.llm.lr) == (2e-4, 6e-6, 2e-5)
    assert (cfg.optim.connector.warmup_steps, cfg.optim.vit.warmup_steps) == (200, 2000)
    assert cfg.optim.betas == (0.9, 0.95) and cfg.optim.eps == 1e-6
    assert cfg.optim.final_lr_fraction == 0.1 and cfg.optim.z_loss == 1e-4
    assert cfg.preprocess.official_mask_quirk is False
    assert cfg.preprocess.conversation_weighting == "root_subsegments"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    assert main_train(str(path), print_config=True) == 0
    printed = capsys.readouterr().out
    for key in ("max_grad_norm: 1.0", "strategy: fsdp", "activation_checkpointing: false",
                "shuffle_block: 128", "final_lr_fraction: 0.1", "official_mask_quirk: false"):
        assert key in printed
    assert TrainConfig.from_dict(yaml.safe_load(printed)) == cfg


@pytest.mark.parametrize("change, message", [
    ({"optimizer": {}}, r"config: unknown keys \['optimizer'\]"),
    ({"optim": {"llm": {"lr": 1e-5, "warmup": 3}}}, r"config.optim.llm: unknown keys"),
    ({"parallel": {"strategy": "zero3"}},
     r"config.parallel.strategy must be one of \('ddp', 'fsdp'\)"),
    ({"model": {"preset": "tiny"}}, "config.model.tokenizer is required"),
    ({"model": {"preset": "tiny", "checkpoint": "x", "tokenizer": "t"}},
     "config.model needs exactly one of preset, checkpoint and llm\\+vision"),
    ({"model": {"checkpoint": "x", "llm": "l", "vision": "v"}},
     "config.model needs exactly one of preset, checkpoint and llm\\+vision"),
    ({"model": {"llm": "l"}}, "config.model needs both llm and vision"),
    ({"model": {"vision": "v", "tokenizer": "t"}}, "config.model needs both llm and vision"),
    ({"model": {"checkpoint": "x", "overrides": {"llm": {"layers": 1}}}},
     "config.model.overrides apply to a preset or parts, not to a checkpoint"),
    ({"model": {"llm": "l", "vision": "v", "overrides": {"vit": {"layers": 1}}}},
     "unknown model part 'vit'"),
    ({"optim": {g: {"lr": 1.0, "warmup_steps": 0, "frozen": True}
                for g in ("connector", "vit", "llm")}}, "config.optim freezes every group"),
    ({"optim": {"final_lr_fraction": 2}}, r"config.optim.final_lr_fraction must be in \[0, 1\]"),
    ({"optim": {"vit": {"lr": -1.0, "warmup_steps": 0}}},
     "config.optim.vit.lr must be >= 0, got -1.0"),
    ({"data": {"datasets": [{"name": "d", "source": "s"}], "mode": "x"}}, "config.data.mode"),
    ({"data": {"datasets": [{"name": "d", "source": "s", "rate": -1}]}},
     r"config.data.datasets\[0\].rate must be >= 0, got -1$"),
    ({"steps": 0}, "config.steps must be >= 1, got 0"),
    ({"steps": "ten"}, "config.steps must be int, got 'ten'"),
    ({"optim": {"llm": {"lr": "1e-5", "warmup_steps": 3}}},
     "config.optim.llm.lr must be float, got '1e-5'"),
    ({"optim": {"betas": [0.9]}}, r"config.optim.betas must be \[float, float\], got \[0.9\]"),
    ({"data": "shards/"}, "config.data must be a mapping, got 'shards/'"),
    ({"data": {"datasets": [{"source": "s"}]}}, r"config.data.datasets\[0\].name is required"),
    ({"lora": {"rank": 0}}, "config.lora.rank must be >= 1, got 0"),
    ({"lora": {"dropout": 1.0}}, r"config.lora.dropout must be in \[0, 1\), got 1.0"),
    ({"lora": {"targets": ["llm.attn", "llm.qkv"]}},
     "config.lora.targets unknown target 'llm.qkv' \\(expected some of llm.attn, llm.mlp, "
     "vision.attn, vision.mlp, connector\\)"),
    ({"lora": {"targets": []}}, "config.lora.targets must name at least one of"),
    ({"lora": {"rank": 8, "scale": 2}}, r"config.lora: unknown keys \['scale'\]"),
    ({"lora": "yes"}, "config.lora must be a mapping or null, got 'yes'"),
])
def test_invalid_configs_name_the_field(tmp_path, change, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, **change}))
    with pytest.raises(PixmoError, match=message) as err:
        TrainConfig.from_yaml(path)
    assert str(path) in str(err.value)


def test_accumulation_is_derived_and_checked():
    cfg = TrainConfig.from_dict({**MINIMAL, "global_batch_size": 32,
                                 "data": {**MINIMAL["data"], "batch_size": 4}})
    assert cfg.accumulation(1) == 8 and cfg.accumulation(4) == 2 and cfg.accumulation(8) == 1
    with pytest.raises(PixmoError, match=r"global_batch_size 32 is not a multiple of "
                                         r"data.batch_size 4 x 3 ranks"):
        cfg.accumulation(3)


def test_lora_section_defaults_and_round_trips():
    assert TrainConfig.from_dict(MINIMAL).lora is None  # full fine-tuning
    cfg = TrainConfig.from_dict({**MINIMAL, "lora": {"rank": 8, "targets": ["llm.attn"]}})
    assert cfg.lora == LoraConfig(rank=8, alpha=32.0, dropout=0.0, targets=("llm.attn",))
    assert TrainConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


def test_model_starts_from_parts_with_the_llms_tokenizer():
    cfg = TrainConfig.from_dict({**MINIMAL, "model": {"llm": "qwen2", "vision": "clip"}})
    assert (cfg.model.preset, cfg.model.tokenizer_dir) == (None, "qwen2")
    assert TrainConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    default = TrainConfig.from_dict({**MINIMAL, "model": {"tokenizer": "tok"}})
    assert default.model.preset == "tiny" and default.model.tokenizer_dir == "tok"


def test_model_overrides_reach_the_preset():
    cfg = TrainConfig.from_dict({**MINIMAL, "model": {
        "preset": "tiny", "tokenizer": "t", "overrides": {"llm": {"layers": 3}}}})
    assert cfg.model.molmo_config().llm.layers == 3
    bad = TrainConfig.from_dict({**MINIMAL, "model": {
        "preset": "tiny", "tokenizer": "t", "overrides": {"llm": {"layer": 3}}}})
    with pytest.raises(PixmoError, match=r"unknown keys \['layer'\]"):
        bad.model.molmo_config()


def test_molmo_cli_prints_the_resolved_config(capsys):
    from molmo.cli import main

    config = REPO / "configs/tiny-cpu.yaml"
    assert main(["train", str(config), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert {"model", "data", "parallel", "checkpoint"} <= set(printed)
    assert main(["eval", str(config), "--checkpoint", "/nonexistent"]) == 2
    assert "no exported model here" in capsys.readouterr().err
